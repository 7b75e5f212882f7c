"""Five to eight evaluations: solvers fitted to the model's own trajectories against the best
training-free ones, side by side, on held-out paths.

    python experiments/benchmarks/fitted.py [--quick] [--json out.json] [--figure docs/fitted/mixtures.png]
    python experiments/benchmarks/fitted.py --digits runs/digits [--num 1000]   # digits-FID of a trained run

Mixtures (EDM process, float64, the exact mixture score): the 3-D mixture of the NFE benchmark
(experiments/benchmarks/nfe.py), the tests' 2-D mixture and a 16-D anisotropic mixture of 5 components
(eigenvalues spread over 0.01-1). The teacher: 400 paths from the prior, UniPC-3 on 2048 log-SNR
steps, 129 times kept; 200 paths fit, the other 200 measure (mean ||x - x_teacher|| of the denoised
endpoints). Training-free rows: DPM-Solver++(3M), UniPC-3 and iPNDM on the Karras, log-SNR,
Gaussian-fitted and GITS (dynamic programming on the teacher) grids, with teleportation by the
default rule where it helps; the analytic first step with iPNDM on GITS. Fitted rows: the grid of
UniPC-3 (LD3-style), and iPNDM's grid and per-update weights, with and without the analytic first
step. NFE counts every score evaluation, the final denoising included.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
from helpers import mixture_2d, mixture_3d, mixture_moments  # noqa: E402

from diffjax import GaussianMixture  # noqa: E402
from diffjax import samplers as S  # noqa: E402
from diffjax.processes import EDM  # noqa: E402
from diffjax.samplers.learned import FittedSolver, fit_solver, gits_timesteps, solver_error  # noqa: E402

NFES = (4, 5, 6, 8, 10)


def as64(gm: GaussianMixture) -> GaussianMixture:
    return GaussianMixture(*(jnp.asarray(v, jnp.float64) for v in (gm.weights, gm.means, gm.covs)))


def mixture_16d() -> GaussianMixture:
    rng = np.random.default_rng(16)
    d, k = 16, 5
    covs = []
    for _ in range(k):
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        covs.append(q @ np.diag(np.exp(rng.uniform(np.log(0.01), 0.0, d))) @ q.T)
    w = rng.uniform(0.5, 1.5, k)
    return GaussianMixture(jnp.asarray(w / w.sum()), jnp.asarray(rng.normal(0, 1.0, (k, d))), jnp.asarray(np.stack(covs)))


def moment_fit(gm: GaussianMixture) -> S.GaussianFit:
    mu, cov = mixture_moments(gm)
    lam, u = np.linalg.eigh(np.asarray(cov))
    return S.GaussianFit(jnp.asarray(mu), jnp.asarray(lam[::-1].copy()), jnp.asarray(u[:, ::-1].copy()), 0.0)


def training_free(sde, score, teacher, held_out, fit, nfe):
    """{row name: held-out error} of the training-free solvers at ``nfe`` evaluations."""
    t_end, n = float(teacher.ts[-1]), nfe - 1
    steps = {"dpmpp_3m": S.dpmpp_3m(sde), "unipc3": S.unipc(sde, order=3), "ipndm": S.ipndm(sde)}
    out = {}
    for name, step in steps.items():
        for grid in ("karras", "log_snr", "fitted", "gits"):
            if grid == "gits":
                ts = gits_timesteps(sde, teacher, n)
            elif grid == "fitted":
                ts = S.fitted_timesteps(step, n, fit, t_end=t_end)
            else:
                ts = S.TIME_GRIDS[grid](sde, n, t_end, dtype=jnp.float64)
            out[f"{name} / {grid}"] = solver_error(FittedSolver(step, ts), score, held_out)
        # teleportation by the default rule, on the log-SNR grid below t_skip
        t_skip = S.teleport_t_skip(sde, fit, None, nfe=nfe)
        if t_skip < sde.T:
            ts = jnp.concatenate([jnp.array([sde.T]), S.log_snr_timesteps(sde, n, t_end, dtype=jnp.float64,
                                                                              t_max=t_skip)])
            out[f"{name} / log_snr + teleport"] = solver_error(FittedSolver(step, ts, fit), score, held_out)
    solver, _ = fit_solver(sde, score, teacher, nfe, analytic_first=fit, iters=0)
    out["ipndm / gits + analytic first"] = solver_error(solver, score, held_out)
    return out


def fitted(sde, score, train, held_out, fit, nfe, iters):
    out, seconds = {}, {}
    for label, kw in (("fitted grid: unipc3", dict(method="unipc", order=3)),
                      ("fitted grid + weights: ipndm", dict()),
                      ("fitted ipndm + analytic first", dict(analytic_first=fit))):
        solver, report = fit_solver(sde, score, train, nfe, iters=iters, validation=held_out, **kw)
        out[label], seconds[label] = report["validation_error"], report["seconds"]
    return out, seconds


def mixture_table(name, gm, iters, paths=400) -> dict:
    sde = EDM()
    score, fit = gm.score_fn(sde), moment_fit(gm)
    d = gm.means.shape[1]
    key = jax.random.PRNGKey(0)
    x_T = S.prior_sample(sde, key, (paths, d), jnp.float64)
    t0 = time.perf_counter()
    teacher = S.teacher_trajectories(sde, score, key, x_T, num_points=128, refine=16)
    coarse = S.teacher_trajectories(sde, score, key, x_T, num_points=128, refine=8)
    acc = float(jnp.mean(jnp.linalg.norm(teacher.denoised[-1] - coarse.denoised[-1], axis=1)))
    train, held_out = teacher.split(paths // 2)
    print(f"\n== {name} (d = {d}), EDM, float64: teacher of {paths} paths in {time.perf_counter() - t0:.0f} s, "
          f"accurate to {acc:.1e} (2048 vs 1024 steps); held-out mean |x - x_teacher|")
    rows = {}
    for nfe in NFES:
        free = training_free(sde, score, train, held_out, fit, nfe)
        fit_rows, seconds = fitted(sde, score, train, held_out, fit, nfe, iters)
        best_free = min(free, key=free.get)
        best_fit = min(fit_rows, key=fit_rows.get)
        rows[nfe] = {"training_free": free, "fitted": fit_rows, "fit_seconds": seconds}
        print(f"NFE {nfe:2d}: best training-free {free[best_free]:.4f} ({best_free}); "
              f"UniPC-3/log-SNR {free['unipc3 / log_snr']:.4f}; iPNDM/GITS {free['ipndm / gits']:.4f} | "
              + "; ".join(f"{k} {v:.4f}" for k, v in fit_rows.items())
              + f" | best fitted {fit_rows[best_fit]:.4f}: {free[best_free] / fit_rows[best_fit]:.1f}x better "
              f"(fits {max(seconds.values()):.0f} s)", flush=True)
    return rows


DIGITS_FREE = [("ddim", "log_snr", "off"), ("dpmpp_3m", "log_snr", "off"), ("dpmpp_3m", "karras", "off"),
               ("unipc", "log_snr", "off"), ("unipc", "karras", "off"), ("unipc", "log_snr", "auto"),
               ("ipndm", "log_snr", "off"), ("ipndm", "karras", "off")]
DIGITS_FID = [("ddim", "log_snr", "off"), ("dpmpp_3m", "log_snr", "off"), ("unipc", "log_snr", "off"),
              ("unipc", "log_snr", "auto"), ("ipndm", "log_snr", "off")]


def digits_table(workdir: str, num: int, nfes=(4, 5, 6, 8, 10), paths: int = 256, fitted_only: bool = False) -> None:
    """On a trained run, per NFE: the held-out path error (mean ||x - x_teacher|| over the 64 teacher
    paths the fit does not see) of every training-free combination, the GITS grid and the fitted
    solver; and digits-FID (KID x1e3) of 1000 samples for a few of them and the fitted solver, beside
    the converged probability flow (adaptive, rtol 1e-5) and the test split's own floor."""
    from diffjax.run import evaluate, load_run
    from diffjax.run.build import data_gaussian_fit
    from diffjax.run.fit import fit_run_solver, run_teacher
    from diffjax.run.generate import run_score_fn

    run = load_run(workdir)
    sde, score = run.sde, run_score_fn(run)
    teacher = run_teacher(run, jax.random.PRNGKey(0), paths, 64, 8)
    train, held_out = teacher.split(paths - paths // 4)
    fit = data_gaussian_fit(run.config, run.workdir)
    t_end, t_max = float(teacher.ts[-1]), float(teacher.ts[0])
    if not fitted_only:
        ev = evaluate(load_run(workdir, sampling=dict(method="ode")), jax.random.PRNGKey(1), num)
        print(f"digits-FID of {num} samples from {workdir}: converged probability flow (adaptive, {ev['nfe']} "
              f"evaluations) {ev['samples']['fid']:.3f} (KID x1e3 {1e3 * ev['samples']['kid']:.1f}); the test split's "
              f"own {ev['test_split']['fid']:.3f}")
    for nfe in nfes:
        errors = {}
        for method, grid, teleport in DIGITS_FREE:
            step = S.get_step(method, sde, **({"order": 3} if method == "unipc" else {}))
            if teleport == "auto":
                t_skip = S.teleport_t_skip(sde, fit, None, nfe=nfe)
                ts = jnp.concatenate([jnp.array([t_max]), S.log_snr_timesteps(sde, nfe - 1, t_end, t_max=t_skip)])
                solver = FittedSolver(step, ts, fit)
            else:
                solver = FittedSolver(step, S.TIME_GRIDS[grid](sde, nfe - 1, t_end, t_max=t_max))
            errors[f"{method}/{grid}{' +teleport' if teleport == 'auto' else ''}"] = solver_error(solver, score, held_out)
        errors["unipc/gits"] = solver_error(FittedSolver(S.unipc(sde, order=3), gits_timesteps(sde, train, nfe - 1)),
                                            score, held_out)
        t0 = time.perf_counter()
        solver, report, path = fit_run_solver(run, jax.random.PRNGKey(0), nfe, paths=paths, log=lambda m: None)
        fit_s = time.perf_counter() - t0
        errors["fitted ipndm"] = report["validation_error"]
        best = min((k for k in errors if k != "fitted ipndm"), key=errors.get)
        print(f"\nNFE {nfe}: held-out path error; fitted {errors['fitted ipndm']:.3f} (start "
              f"{report['validation_error_init']:.3f} from the {report['init']} grid, fit {fit_s:.0f} s); best "
              f"training-free {errors[best]:.3f} ({best}); fit-solver kept: {report['chosen']}")
        print("  " + "; ".join(f"{k} {v:.3f}" for k, v in errors.items() if k != "fitted ipndm"))
        cells = []
        for method, grid, teleport in ([] if fitted_only else DIGITS_FID):
            sampling = dict(method=method, grid=grid, num_steps=nfe - 1, teleport=teleport,
                            order=3 if method == "unipc" else 0)
            r = evaluate(load_run(workdir, sampling=sampling), jax.random.PRNGKey(1), num)
            cells.append((f"{method}/{grid}{' +teleport' if teleport == 'auto' else ''}", r["samples"], r["nfe"]))
        r = evaluate(load_run(workdir, sampling=dict(solver=path)), jax.random.PRNGKey(1), num)
        cells.append(("fit-solver's", r["samples"], r["nfe"]))
        print("  digits-FID (KID x1e3): " + "; ".join(f"{k} {v['fid']:.3f} ({1e3 * v['kid']:.1f}) @{n}"
                                                      for k, v, n in cells), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--digits", default=None, help="a trained digits run: its digits-FID per NFE instead")
    p.add_argument("--num", type=int, default=1000, help="samples per digits evaluation")
    p.add_argument("--quick", action="store_true", help="the 3-D mixture only, 100 iterations")
    p.add_argument("--iters", type=int, default=400)
    p.add_argument("--fitted-only", action="store_true", help="--digits: only the fitted rows (and path errors)")
    p.add_argument("--json", default=None)
    p.add_argument("--figure", default=None, help="a PNG of the held-out error against NFE (mixtures)")
    args = p.parse_args()
    if args.digits:
        digits_table(args.digits, args.num, fitted_only=args.fitted_only)
        return
    mixtures = [("3-D mixture (nfe.py's)", as64(mixture_3d()))]
    if not args.quick:
        mixtures += [("2-D mixture", as64(mixture_2d())), ("16-D anisotropic mixture", mixture_16d())]
    results = {name: mixture_table(name, gm, 100 if args.quick else args.iters) for name, gm in mixtures}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.figure:
        error_figure(results, args.figure)


def error_figure(results: dict, path: str) -> None:
    """Held-out error against NFE, one panel per mixture: every training-free combination (grey), the
    best of them, and the best fitted solver."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), squeeze=False)
    for ax, (name, rows) in zip(axes[0], results.items()):
        nfes = sorted(rows)
        combos = sorted({c for n in nfes for c in rows[n]["training_free"]})
        for c in combos:
            ax.plot(nfes, [rows[n]["training_free"].get(c, np.nan) for n in nfes], color="0.8", lw=0.8)
        ax.plot(nfes, [min(rows[n]["training_free"].values()) for n in nfes], "o-", color="C0",
                label="best training-free")
        ax.plot(nfes, [min(rows[n]["fitted"].values()) for n in nfes], "s-", color="C3", label="best fitted")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out mean |x - x_teacher|")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"figure -> {path}")


if __name__ == "__main__":
    main()
