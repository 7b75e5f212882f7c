"""NCSN++ cont. deep on CIFAR-10 with the VE SDE (Song et al. 2021: FID 2.20, IS 9.89)."""

from diffjax.configs.cifar10_ve_ncsnpp_continuous import get_config as _base


def get_config():
    c = _base()
    c.model.name = "ncsnpp_cifar10_ve_continuous_deep"
    c.training.n_iters = 950_001
    return c
