"""The default job: DDPM++ (small) on the embedded 8x8 digits with the VP SDE, about 6 minutes of
training on two CPU cores, then a grid of samples and the test split's bits/dim."""

from default import get_default


def get_config():
    c = get_default()
    c.seed = 0
    t = c.training
    t.batch_size = 64
    t.n_iters = 3000
    t.n_jitted_steps = 10
    t.log_freq = 100
    t.snapshot_freq = 1000
    t.reduce_mean = True
    c.sde.name = "vpsde"
    c.model.name = "ddpmpp_digits8"
    c.model.options.dropout = 0.0
    c.model.ema_rate = 0.999
    c.optim.lr = 2e-3
    c.optim.warmup = 200
    d = c.data
    d.dataset = "digits"
    d.image_size = 8
    d.num_channels = 1
    d.random_flip = False
    d.uniform_dequantization = True
    s = c.sampling
    s.method = "dpmpp_2m"
    s.grid = "log_snr"
    s.n_steps = 50
    s.num_samples = 100
    c.eval.bpd_num_examples = 128
    c.eval.bpd_rtol = 1e-4
    return c
