"""NCSN++ cont. on CIFAR-10 with the VE SDE (Song et al. 2021, table 3: FID 2.38; deep: 2.20)."""

from diffjax.configs.default import get_default


def get_config():
    c = get_default()
    c.sde.name = "vesde"
    c.model.name = "ncsnpp_cifar10_ve_continuous"
    c.model.ema_rate = 0.999
    c.data.centered = False
    c.sampling.method, c.sampling.predictor, c.sampling.corrector = "pc", "reverse_diffusion", "langevin"
    c.sampling.snr = 0.16
    return c
