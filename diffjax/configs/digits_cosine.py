"""The digits job with the cosine VP schedule (Nichol & Dhariwal 2021; s = 0.008, T = 0.9946),
eps-prediction and denoising score matching."""

from diffjax.configs.digits import get_config as digits


def get_config():
    c = digits()
    c.sde.name = "cosine"
    c.training.loss = "dsm"
    c.model.options.prediction = "eps"
    return c
