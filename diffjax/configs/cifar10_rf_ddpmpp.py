"""Rectified flow on CIFAR-10 (Liu et al. 2023, 1-rectified flow): the score_sde DDPM++ network
predicting the velocity of x_t = (1 - t) x0 + t z, the flow-matching loss with uniform t, batch 128,
lr 2e-4 as score_sde's VP configs; sampling with the adaptive probability-flow ODE (RK45-like)."""

from diffjax.configs.default import get_default


def get_config():
    c = get_default()
    c.sde.name = "rectified_flow"
    t = c.training
    t.loss, t.reduce_mean, t.time_sampling = "flow_matching", True, "uniform"
    c.model.name = "ddpmpp_cifar10_continuous"
    c.model.options.prediction = "velocity"
    c.model.ema_rate = 0.999999
    c.sampling.method = "ode"
    c.sampling.ode_rtol = 1e-5
    return c
