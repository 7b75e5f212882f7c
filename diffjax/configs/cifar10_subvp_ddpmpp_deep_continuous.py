"""DDPM++ cont. deep on CIFAR-10 with the sub-VP SDE (Song et al. 2021: 2.99 bits/dim with likelihood
weighting and importance sampling, table 2)."""

from diffjax.configs.cifar10_vp_ddpmpp_continuous import get_config as _base


def get_config():
    c = _base()
    c.sde.name = "subvpsde"
    c.model.name = "ddpmpp_cifar10_continuous_deep"
    c.training.n_iters = 950_001
    return c
