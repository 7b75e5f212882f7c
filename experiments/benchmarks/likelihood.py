"""Likelihood benchmark: our jitted diffrax solve against the original's design, side by side.

    python experiments/benchmarks/likelihood.py [--quick]

The original (score_sde) integrated the augmented probability-flow ODE [x, int div f~] on the host
with scipy's solve_ivp (RK45), calling a jitted augmented drift at every evaluation. Both designs
get the same analytic score (a 16-D Gaussian mixture, exact score), the same batch, the same
Hutchinson probes (Rademacher) or the exact divergence, and the same rtol = atol. We report wall
time (median of repeats after compilation), compile time, NFE, and the error of log p against the
exact mixture density at t = eps (prior mismatch removed, as in the tests).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))
from helpers import mixture_16d  # noqa: E402

from diffjax import VPSDE  # noqa: E402
from timing import median_time  # noqa: E402
from diffjax.likelihood import log_likelihood  # noqa: E402
from diffjax.samplers import example_keys, probability_flow_drift  # noqa: E402

EPS = 1e-5


def make_augmented_drift(sde, score_fn, batch, dim, probes, divergence):
    """The jitted augmented drift (f~, div f~) of the whole batch, compiled once."""

    @jax.jit
    def aug_drift(y, t):
        tb = jnp.full((batch,), t, jnp.float32)

        def drift(x_):
            return probability_flow_drift(sde, score_fn, x_, tb)

        if divergence == "exact":
            f, jvp = jax.linearize(drift, y)
            cols = jax.vmap(jvp)(jnp.broadcast_to(jnp.eye(dim), (batch, dim, dim)).transpose(1, 0, 2))
            div = jnp.einsum("ibi->b", cols)
        else:
            f, jv = jax.jvp(drift, (y,), (probes,))
            div = jnp.sum(probes * jv, axis=1)
        return f, div

    return aug_drift


def scipy_log_likelihood(sde, aug_drift, x, tol):
    """The original's design: solve_ivp RK45 on the host over the flattened [x, delta] of the batch."""
    from scipy.integrate import solve_ivp

    batch, dim = x.shape
    counter = {"n": 0}

    def rhs(t, state):
        counter["n"] += 1
        f, div = aug_drift(jnp.asarray(state[: batch * dim].reshape(batch, dim), jnp.float32), t)
        return np.concatenate([np.asarray(f, np.float64).ravel(), np.asarray(div, np.float64)])

    y0 = np.concatenate([np.asarray(x, np.float64).ravel(), np.zeros(batch)])
    sol = solve_ivp(rhs, (EPS, sde.T), y0, rtol=tol, atol=tol, method="RK45")
    z = sol.y[: batch * dim, -1].reshape(batch, dim)
    delta = sol.y[batch * dim :, -1]
    logp = np.asarray(sde.prior_logp(jnp.asarray(z, jnp.float32)), np.float64) + delta
    return logp, z, counter["n"]


def run(batch, tols, repeats):
    sde, gm = VPSDE(), mixture_16d()
    score_fn = gm.score_fn(sde)
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a, s = sde.marginal_coeffs(jnp.float32(EPS))
    x = a * gm.sample(k1, batch) + s * jax.random.normal(k2, (batch, 16))
    exact = np.asarray(gm.log_prob(x, sde, jnp.full((batch,), EPS)), np.float64)
    key = jax.random.PRNGKey(1)
    # our probes, so both designs estimate the same integral
    probes = jax.vmap(lambda k: jax.random.rademacher(k, (1, 16), jnp.float32))(example_keys(key, batch))[:, 0]

    def err(logp, z):
        z = jnp.asarray(z, jnp.float32)
        mismatch = np.asarray(gm.log_prob(z, sde, jnp.full((batch,), 1.0)) - sde.prior_logp(z), np.float64)
        return float(np.max(np.abs(np.asarray(logp, np.float64) + mismatch - exact) / np.maximum(np.abs(exact), 1)))

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores; "
          f"16-D mixture, exact score, VP, batch {batch}")
    print(f"{'divergence':<11}{'tol':>7} | {'scipy ms':>9}{'NFE':>6}{'max rel err':>12} | {'ours ms':>8}{'NFE':>6}"
          f"{'max rel err':>12}{'compile s':>10} | {'speed-up':>8} | {'batch ms':>8}{'NFE':>6}{'max rel err':>12} | {'speed-up':>8}")
    print(f"{'':18} original design (host scipy) | ours, per-example step control (default){'':>14}| ours, per_example=False")
    for divergence in ("exact", "rademacher"):
        for tol in tols:
            aug = make_augmented_drift(sde, score_fn, batch, 16, probes, divergence)
            t_scipy = median_time(lambda: scipy_log_likelihood(sde, aug, x, tol)[0], repeats)
            lp_s, z_s, nfe_s = scipy_log_likelihood(sde, aug, x, tol)

            def ours():
                return log_likelihood(key, sde, score_fn, x, divergence=divergence, rtol=tol, atol=tol)

            t0 = time.perf_counter()
            jax.block_until_ready(ours())
            t_compile = time.perf_counter() - t0
            t_ours = median_time(lambda: ours()[0], repeats)
            lp_o, z_o, nfe_o = ours()
            t_batch = median_time(lambda: log_likelihood(key, sde, score_fn, x, divergence=divergence, rtol=tol, atol=tol,
                                                    per_example=False)[0], repeats)
            lp_b, z_b, nfe_b = log_likelihood(key, sde, score_fn, x, divergence=divergence, rtol=tol, atol=tol, per_example=False)
            print(f"{divergence:<11}{tol:>7.0e} | {1e3 * t_scipy:>9.1f}{nfe_s:>6}{err(lp_s, z_s):>12.1e} | "
                  f"{1e3 * t_ours:>8.1f}{int(nfe_o.max()):>6}{err(lp_o, z_o):>12.1e}{t_compile:>10.1f} | "
                  f"{t_scipy / t_ours:>7.1f}x | {1e3 * t_batch:>8.1f}{int(nfe_b[0]):>6}{err(lp_b, z_b):>12.1e} | "
                  f"{t_scipy / t_batch:>7.1f}x")
    print("NFE: scipy counts evaluations of the batched drift; ours is the largest per-example count\n"
          "(each example has its own step control; the batch costs that many batched evaluations).\n"
          "Error: max over the batch of |log p - exact| / max(|exact|, 1); the Hutchinson rows include\n"
          "the probe's variance, identical in both designs.")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        run(16, [1e-3], 2)
    else:
        for batch in (1, 8, 64, 512):
            run(batch, [1e-3, 1e-5], 5)
            print()


if __name__ == "__main__":
    main()
