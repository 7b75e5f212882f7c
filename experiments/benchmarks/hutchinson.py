"""Hutchinson's divergence with the fitted Gaussian as a control variate, against plain Hutchinson at
equal cost: the spread of the per-example log-likelihood over independent probes.

    python experiments/benchmarks/hutchinson.py [--digits RUN] [--images 8] [--copies 32]

``log_likelihood(..., control=fit)`` estimates div f~ by vᵀ (J - J_G) v + tr J_G, J_G the Jacobian of
the fitted Gaussian's probability-flow drift (closed form): the same network evaluations and probes.
For each example, ``--copies`` independent probes (one per copy, Rademacher unless stated) give
``--copies`` estimates; the table shows the mean over examples of their standard deviation (the
standard error of a one-probe estimate), the variance ratio plain / control, the mean difference to
the exact-divergence value (unbiasedness; its standard error beside it) and the evaluations.

Rows: a 16-D Gaussian and the tests' 16-D mixture (exact scores), and, with ``--digits RUN``, a
trained digits run (its network; the test split dequantised once with a fixed key, so only the
probes vary; bits/dim; the fit is the run's ``gaussian_fit.npz``, made if absent).
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

from diffjax import VPSDE  # noqa: E402
from diffjax.likelihood import dequantize, log_likelihood  # noqa: E402
from diffjax.samplers import fit_gaussian  # noqa: E402


def spread(sde, score_fn, x, copies, fit, divergence="rademacher", scale=1.0, rtol=1e-5):
    """(per-example std over probes, per-example mean, nfe mean, seconds) of log p * scale."""
    n = x.shape[0]
    xs = jnp.repeat(x, copies, axis=0)
    t0 = time.perf_counter()
    r = log_likelihood(sde, score_fn, jax.random.PRNGKey(11), xs, divergence=divergence, control=fit,
                       rtol=rtol, atol=rtol)
    v = np.asarray(r.logp, np.float64).reshape(n, copies) * scale
    return v.std(axis=1, ddof=1), v.mean(axis=1), float(np.mean(r.nfe)), time.perf_counter() - t0


def table_row(name, sde, score_fn, x, copies, fit, exact, scale, unit, rtol=1e-5):
    sd_p, m_p, nfe_p, s_p = spread(sde, score_fn, x, copies, None, scale=scale, rtol=rtol)
    sd_c, m_c, nfe_c, s_c = spread(sde, score_fn, x, copies, fit, scale=scale, rtol=rtol)
    se_c = np.sqrt(np.mean(sd_c**2) / (copies * len(sd_c)))
    print(f"| {name} | {unit} | {np.mean(sd_p):.4f} | {np.mean(sd_c):.4f} | {np.mean(sd_p**2) / np.mean(sd_c**2):.1f} | "
          f"{np.mean(m_c - exact):+.4f} ± {se_c:.4f} | {np.mean(m_p - exact):+.4f} | {nfe_p:.0f} / {nfe_c:.0f} | "
          f"{s_p:.0f} / {s_c:.0f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--digits", default=None, help="a trained digits run (e.g. runs/digits)")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--copies", type=int, default=32)
    args = ap.parse_args()
    from helpers import mixture_16d, rotated_mixture

    print("| data | unit | sd plain | sd control | variance ratio | control - exact | plain - exact | NFE plain / control | s plain / control |")
    print("|---|---|---|---|---|---|---|---|---|")
    sde = VPSDE()
    for name, gm in (("16-D Gaussian (exact score)", rotated_mixture(16, seed=4, k=1)),
                     ("16-D mixture_16d (exact score)", mixture_16d())):
        fit = fit_gaussian(gm.sample(jax.random.PRNGKey(9), 20000))
        a, s = sde.marginal_coeffs(jnp.float32(1e-5))
        x = a * gm.sample(jax.random.PRNGKey(3), args.images)
        exact = np.asarray(log_likelihood(sde, gm.score_fn(sde), jax.random.PRNGKey(0), x, divergence="exact").logp)
        table_row(name, sde, gm.score_fn(sde), x, args.copies, fit, exact, 1.0, "nats")

    if args.digits:
        from diffjax import data
        from diffjax.run.build import data_gaussian_fit, data_range
        from diffjax.run.generate import run_score_fn
        from diffjax.run.load import load_run

        run = load_run(args.digits)
        cfg = run.config
        levels, _ = data.digits_split("test", cfg.data.image_size, cfg.data.classes)
        k = jnp.asarray(levels[:args.images])
        x = dequantize(jax.random.PRNGKey(5), k, data.DIGITS_LEVELS, data_range(cfg))
        fit = data_gaussian_fit(cfg, args.digits)
        score_fn = run_score_fn(run, unconditional=True)
        d = int(np.prod(x.shape[1:]))
        scale = -1.0 / (d * np.log(2.0))             # nats -> bits/dim (the dequantisation offset cancels)
        rtol = float(cfg.eval.bpd_rtol)
        t0 = time.perf_counter()
        exact = np.asarray(log_likelihood(run.sde, score_fn, jax.random.PRNGKey(0), x, divergence="exact",
                                          rtol=rtol, atol=rtol).logp) * scale
        print(f"(digits: exact divergence for {args.images} images took {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        table_row(f"digits run {args.digits}", run.sde, score_fn, x, args.copies, fit, exact, scale, "bits/dim", rtol)


if __name__ == "__main__":
    main()
