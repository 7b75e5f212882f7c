"""DDPM (Ho et al. 2020) on CIFAR-10 with the discrete VP chain and ancestral sampling."""

from diffjax.configs.default import get_default


def get_config():
    c = get_default()
    c.sde.name = "vpsde"
    c.training.continuous = False
    c.training.reduce_mean = True
    c.model.name = "ddpm_cifar10"
    c.model.ema_rate = 0.9999
    c.data.centered = True
    c.sampling.method, c.sampling.predictor, c.sampling.corrector = "pc", "ancestral_sampling", "none"
    return c
