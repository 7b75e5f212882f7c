"""The digits job as rectified flow / flow matching: a = 1 - t, sigma = t (T = 1 - 1e-3), a network
predicting the velocity, the flow-matching loss with logit-normal times (Esser et al. 2024) and
DPM-Solver++(2M) on the log-SNR grid (an exponential integrator of the same flow)."""

from diffjax.configs.digits import get_config as digits


def get_config():
    c = digits()
    c.sde.name = "rectified_flow"
    c.training.loss = "flow_matching"
    c.training.time_sampling = "logit_normal"
    c.model.options.prediction = "velocity"
    c.sampling.method, c.sampling.grid = "dpmpp_2m", "log_snr"
    return c
