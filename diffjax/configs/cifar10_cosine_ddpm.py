"""The cosine schedule on CIFAR-10 (Nichol & Dhariwal 2021): the DDPM network, eps prediction, batch
128, lr 1e-4, dropout 0.3, 500k steps, the discrete cosine chain (N = 4000, betas clipped at
0.999); ancestral sampling. (The paper's hybrid loss with learned variances is not implemented:
the simple eps loss is its L_simple.)"""

from diffjax.configs.default import get_default


def get_config():
    c = get_default()
    c.sde.name = "cosine"
    c.sde.num_scales = 4000
    t = c.training
    t.loss, t.continuous, t.reduce_mean = "dsm", False, True
    t.n_iters = 500_000
    c.model.name = "ddpm_cifar10"
    c.model.options.dropout = 0.3
    c.optim.lr = 1e-4
    c.model.ema_rate = 0.9999
    s = c.sampling
    s.method, s.predictor, s.corrector, s.num_steps = "pc", "ancestral_sampling", "none", 4000
    return c
