"""An MLP on a 2-D toy (8-Gaussian ring by default; data.dataset = "toy:two_moons", ...) with the VP SDE."""

from diffjax.configs.default import get_default


def get_config():
    c = get_default()
    c.seed = 0
    t = c.training
    t.batch_size = 256
    t.n_iters = 4000
    t.n_jitted_steps = 50
    t.log_freq = 500
    t.snapshot_freq = 2000
    t.reduce_mean = True
    c.sde.name = "vpsde"
    c.model.name = "mlp"
    c.model.options.hidden = (128, 128, 128)
    c.model.ema_rate = 0.999
    c.optim.lr = 1e-3
    c.optim.warmup = 100
    d = c.data
    d.dataset = "toy:gaussian_mixture"
    d.image_size = 0
    d.num_channels = 0
    d.random_flip = False
    s = c.sampling
    s.method = "dpmpp_2m"
    s.grid = "log_snr"
    s.num_steps = 50
    s.num_samples = 2000
    c.eval.bpd_num_examples = 256   # NLL (nats) of fresh points, beside a fitted Gaussian
    c.eval.bpd_rtol = 1e-5
    return c
