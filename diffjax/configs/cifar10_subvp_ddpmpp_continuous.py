"""DDPM++ cont. on CIFAR-10 with the sub-VP SDE."""

from diffjax.configs.cifar10_vp_ddpmpp_continuous import get_config as _base


def get_config():
    c = _base()
    c.sde.name = "subvpsde"
    return c
