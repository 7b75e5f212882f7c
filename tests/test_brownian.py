"""Brownian paths independent of the grid: the tree's statistics, strong convergence of Euler-Maruyama
against an exact pathwise solution, and the samplers refining one sample with noise='brownian'."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.numerics.brownian import brownian_increment, brownian_value
from diffjax.processes import VPSDE
from diffjax.samplers import chain, euler_maruyama, get_step, langevin, prior_sample, sample
from helpers import mixture_2d, x64


def test_increments_are_independent_normals_with_variance_dt():
    """Over disjoint intervals the increments are N(0, dt) and uncorrelated (8000 paths: the standard
    error of a variance estimate is sqrt(2 / n) = 1.6% of it, of a correlation 1 / sqrt(n) = 0.011)."""
    n = 8000
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(3), i))(jnp.arange(n))
    times = jnp.array([0.0, 0.137, 0.5, 0.9003])
    w = jax.vmap(lambda t: jax.vmap(lambda k: brownian_value(k, t, (), 1.0))(keys))(times)   # (4, n)
    assert np.all(np.asarray(w[0]) == 0.0)
    dw = np.asarray(jnp.diff(w, axis=0))
    for var, dt in zip(dw.var(axis=1), np.diff(np.asarray(times))):
        assert abs(var / dt - 1) < 5 * np.sqrt(2 / n)
    corr = np.corrcoef(dw)
    assert np.max(np.abs(corr - np.eye(3))) < 5 / np.sqrt(n)
    # the value at a time does not depend on which other times are asked for
    again = jax.vmap(lambda k: brownian_value(k, 0.5, (), 1.0))(keys)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(w[2]))


def test_euler_maruyama_converges_strongly_to_the_exact_gbm_path():
    """Geometric Brownian motion dX = mu X dt + s X dW has X_T = X_0 exp((mu - s^2/2) T + s W_T): on
    the tree's W, Euler-Maruyama's pathwise error falls with the grid at strong order 1/2 (ratio
    about 2 per 4x steps; fresh noise per grid would not converge at all)."""
    mu, s, n = 0.5, 0.8, 2000
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(n))
    exact = jnp.exp(mu - s ** 2 / 2 + s * jax.vmap(lambda k: brownian_value(k, 1.0, (1,), 1.0))(keys))[:, 0]

    def em(num):
        ts = jnp.linspace(0.0, 1.0, num + 1)

        def body(x, t):
            dw = brownian_increment(keys, jnp.full((n,), t[0]), jnp.full((n,), t[1]), (1,), 1.0)[:, 0]
            return x + mu * x * (t[1] - t[0]) + s * x * dw, None

        return jax.lax.scan(body, jnp.ones(n), jnp.stack([ts[:-1], ts[1:]], 1))[0]

    errors = [float(jnp.mean(jnp.abs(em(m) - exact))) for m in (16, 64, 256)]
    assert errors[2] < errors[1] < errors[0]
    for coarse, fine in zip(errors, errors[1:]):
        assert 1.5 < coarse / fine < 3.0, errors       # 4^(1/2) = 2


def test_a_stochastic_sampler_refines_the_same_sample():
    """With noise='brownian' the reverse-SDE sample at N steps approaches the one at 1024 steps from
    the same key (the reverse SDE has additive noise, so Euler-Maruyama's strong order is 1: about 4x
    per 4x steps); with independent noise the N-step and 1024-step samples stay O(1) apart."""
    sde, gm = VPSDE(), mixture_2d()
    with x64():
        score = gm.score_fn(sde)
        key = jax.random.PRNGKey(1)
        x_T = prior_sample(sde, key, (400, 2), jnp.float64)

        def run(num, noise):
            ts = jnp.linspace(sde.T, 1e-3, num + 1, dtype=jnp.float64)
            return sample(euler_maruyama(sde), score, key, x_T, ts, denoise=False, noise=noise).x

        ref = run(1024, "brownian")
        err = {m: float(jnp.mean(jnp.linalg.norm(run(m, "brownian") - ref, axis=1))) for m in (16, 64)}
        fresh = float(jnp.mean(jnp.linalg.norm(run(64, "independent") - ref, axis=1)))
    assert err[64] < err[16] / 2.5, err
    assert fresh > 10 * err[64], (fresh, err)
    for name in ("reverse_diffusion", "ancestral_sampling"):
        with x64():
            x = sample(get_step(name, sde), score, key, x_T, jnp.linspace(sde.T, 1e-3, 65, dtype=jnp.float64),
                       denoise=False, noise="brownian").x
        assert float(jnp.mean(jnp.linalg.norm(x - ref, axis=1))) < 0.25 * fresh, name


def test_brownian_noise_refuses_what_it_cannot_serve():
    sde, gm = VPSDE(), mixture_2d()
    x = prior_sample(sde, jax.random.PRNGKey(0), (4, 2))
    ts = jnp.linspace(1.0, 1e-3, 5)
    with pytest.raises(ValueError, match="noise must be one of"):
        sample(euler_maruyama(sde), gm.score_fn(sde), jax.random.PRNGKey(0), x, ts, noise="tree")
    pc = chain(euler_maruyama(sde), langevin(sde, snr=0.16, langevin_steps=2))
    with pytest.raises(TypeError, match="more than one normal per update"):
        sample(pc, gm.score_fn(sde), jax.random.PRNGKey(0), x, ts, noise="brownian")
