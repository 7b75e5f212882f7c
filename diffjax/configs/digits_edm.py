"""The digits job with EDM (Karras et al. 2022): sigma(t) = t in [0.002, 80], the preconditioned
denoiser (sigma_data = 0.71, the std of the dequantised digits in [-1, 1]), EDM's log-normal loss
(P_mean -1.2, P_std 1.2) and DPM-Solver++(2M) on the Karras grid."""

from diffjax.configs.digits import get_config as digits


def get_config():
    c = digits()
    c.sde.name = "edm"
    c.sde.sigma_min, c.sde.sigma_max = 0.002, 80.0
    c.sde.sigma_data = 0.71
    c.training.loss = "edm"
    c.model.options.prediction = "edm"
    c.sampling.method, c.sampling.grid = "dpmpp_2m", "karras"
    return c
