"""The default job: DDPM++ (small) on the embedded 8x8 digits with the VP SDE.

About 5.5 minutes of training on two CPU cores (2000 steps at ~6.6 steps/s), then 100 samples
(DPM-Solver++(2M) SDE, 50 steps) as a PNG grid and the test split's bits/dim (128 examples) beside a
full-covariance Gaussian fitted to the training split: about 7 minutes in all.

The EMA rate is 0.995 rather than the paper's 0.9999: with only 2000 steps a slower average still
carries the early, badly trained weights (at 0.999 the EMA network's noise prediction at t = 0.9 was
50x worse than the raw network's and its samples diverged)."""

from diffjax.configs.default import get_default


def get_config():
    c = get_default()
    c.seed = 0
    t = c.training
    t.batch_size = 64
    t.n_iters = 2000
    t.n_jitted_steps = 1         # a rolled lax.scan of steps runs ~10x slower on XLA:CPU
    t.log_freq = 100
    t.snapshot_freq = 500
    t.reduce_mean = True
    c.sde.name = "vpsde"
    c.model.name = "ddpmpp_digits8"
    c.model.options.dropout = 0.0
    c.model.ema_rate = 0.995
    c.optim.lr = 1e-3
    c.optim.warmup = 100
    d = c.data
    d.dataset = "digits"
    d.image_size = 8
    d.num_channels = 1
    d.random_flip = False
    d.uniform_dequantization = True
    s = c.sampling
    s.method = "dpmpp_2m_sde"
    s.grid = "log_snr"
    s.num_steps = 50
    s.num_samples = 100
    c.eval.bpd_num_examples = 128
    c.eval.bpd_rtol = 1e-4
    return c
