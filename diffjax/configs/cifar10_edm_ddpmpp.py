"""EDM's CIFAR-10 unconditional setup (Karras et al. 2022, config F, VP architecture): DDPM++ with the
EDM preconditioning (sigma_data 0.5), the log-normal loss, batch 512, lr 1e-3, dropout 0.13, 200 Mimg
(390k steps); sampling with EDM's Heun sampler, 18 steps (35 NFE) on the Karras grid."""

from diffjax.configs.default import get_default


def get_config():
    c = get_default()
    c.sde.name = "edm"
    c.sde.sigma_min, c.sde.sigma_max, c.sde.sigma_data = 0.002, 80.0, 0.5
    t = c.training
    t.loss, t.reduce_mean = "edm", True
    t.batch_size, t.n_iters = 512, 390_625
    c.model.name = "ddpmpp_cifar10_continuous"
    c.model.options.prediction = "edm"
    c.model.options.dropout = 0.13
    c.model.ema_rate = 0.99993           # EMA half-life 0.5 Mimg at batch 512
    c.optim.lr, c.optim.warmup = 1e-3, 19_531   # 10 Mimg ramp-up
    c.data.random_flip = True
    s = c.sampling
    s.method, s.grid, s.num_steps = "edm_heun", "karras", 18
    return c
