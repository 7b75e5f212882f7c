"""DDPM++ cont. on CIFAR-10 with the VP SDE (Song et al. 2021, table 3)."""

from diffjax.configs.default import get_default


def get_config():
    c = get_default()
    c.sde.name = "vpsde"
    c.training.reduce_mean = True
    c.model.name = "ddpmpp_cifar10_continuous"
    c.model.ema_rate = 0.9999
    c.data.centered = True
    c.sampling.method, c.sampling.predictor, c.sampling.corrector = "pc", "euler_maruyama", "none"
    return c
