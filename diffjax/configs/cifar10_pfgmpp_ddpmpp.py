"""PFGM++ on CIFAR-10 (Xu et al. 2023): EDM's setup (cifar10_edm_ddpmpp) with D = 2048 extra
dimensions, the Student-t kernel and its prior; FID 1.91 reported (EDM 1.98). Sampling: EDM's Heun
ODE, 18 steps (35 NFE)."""

from diffjax.configs.cifar10_edm_ddpmpp import get_config as edm


def get_config():
    c = edm()
    c.sde.name = "pfgmpp"
    c.sde.pfgmpp_D = 2048.0
    return c
