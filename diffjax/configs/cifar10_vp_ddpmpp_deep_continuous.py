"""DDPM++ cont. deep on CIFAR-10 with the VP SDE."""

from diffjax.configs.cifar10_vp_ddpmpp_continuous import get_config as _base


def get_config():
    c = _base()
    c.model.name = "ddpmpp_cifar10_continuous_deep"
    c.training.n_iters = 950_001
    return c
