"""The digits job with PFGM++ (Xu et al. 2023), D = 128 extra dimensions: EDM's time, network
preconditioning, loss and ODE sampler, with the Student-t perturbation kernel and its heavy-tailed
prior. No bits/dim: the probability-flow likelihood needs the augmented space."""

from diffjax.configs.digits_edm import get_config as digits_edm


def get_config():
    c = digits_edm()
    c.sde.name = "pfgmpp"
    c.sde.pfgmpp_D = 128.0
    c.sampling.method = "edm_heun"
    c.sampling.num_steps = 25            # 50 score evaluations, as the other digits jobs
    c.eval.bpd_num_examples = 0
    return c
