"""Sampler patterns that deadlocked XLA:CPU with jaxlib 0.10 (issue 14), run as a script so the test
can watch it from outside: the score is a Gaussian mixture written the common way, with batched
``jnp.linalg.solve`` and ``slogdet`` (LAPACK), and each pattern evaluates it more than once per step.
Prints one line per pattern as it returns."""

import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.scipy.special import logsumexp  # noqa: E402

from diffjax import VPSDE  # noqa: E402
from diffjax import samplers as S  # noqa: E402
from diffjax.likelihood import log_likelihood  # noqa: E402

K, D = 3, 3
rng = np.random.default_rng(1)
WEIGHTS = jnp.asarray([0.5, 0.3, 0.2], jnp.float32)
MEANS = jnp.asarray(rng.normal(0, 1.5, (K, D)), jnp.float32)
A = rng.normal(0, 1, (K, D, D))
COVS = jnp.asarray(A @ A.transpose(0, 2, 1) * 0.1 + 0.05 * np.eye(D), jnp.float32)
SDE = VPSDE()


def log_density(x, a, s):
    c = a**2 * COVS + s**2 * jnp.eye(D)
    diff = x[None] - a * MEANS
    sol = jnp.linalg.solve(c, diff[..., None])[..., 0]
    _, logdet = jnp.linalg.slogdet(c)
    return logsumexp(jnp.log(WEIGHTS) - 0.5 * (jnp.sum(diff * sol, -1) + logdet + D * jnp.log(2 * jnp.pi)))


def score_fn(x, t):
    a, s = SDE.marginal_coeffs(t)
    return jax.vmap(jax.grad(log_density))(x, a, s)


def main(n):
    key = jax.random.PRNGKey(7)
    x0 = S.prior_sample(SDE, key, (n, D))
    ts = jnp.linspace(1.0, 1e-3, 21)
    patterns = {
        "pc": lambda: S.sample(S.chain(S.langevin(SDE, snr=0.16), S.reverse_diffusion(SDE)), score_fn, key, x0, ts,
                               denoise=False).x,
        "two_correctors": lambda: S.sample(S.chain(S.annealed_langevin(SDE), S.annealed_langevin(SDE),
                                                   S.euler_maruyama(SDE)), score_fn, key, x0, ts).x,
        "heun": lambda: S.sample(S.ode_heun(SDE), score_fn, key, x0, ts).x,
        "ode_sample": lambda: S.ode_sample(SDE, score_fn, key, x0, rtol=1e-3, atol=1e-3).x,
        "log_likelihood": lambda: log_likelihood(SDE, score_fn, key, x0[:1024], rtol=1e-3, atol=1e-3).logp,
    }
    for name, run in patterns.items():
        t0 = time.time()
        out = run()
        out.block_until_ready()
        assert bool(jnp.all(jnp.isfinite(out))), name
        print(f"{name} returned in {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4096)
