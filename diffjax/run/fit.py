"""Solvers fitted to a trained run's own trajectories, stored with the run.

    solver, report, path = fit_run_solver(load_run("runs/digits"), jax.random.PRNGKey(0), nfe=5)

The teacher (tight probability-flow paths from ``paths`` prior draws, :func:`diffjax.samplers.learned.
teacher_trajectories`) is cached as ``WORKDIR/solvers/teacher_STEP.npz`` and reused while the request
matches; the fitted solver goes to ``WORKDIR/solvers/METHOD_nfeN.npz`` with its report, where
``diffjax sample --solver fitted`` (config ``sampling.solver = "fitted"``) finds it. A quarter of the
paths is held out: the report gives the fitted solver's error on them beside its training-free
starting point and UniPC-3 on the log-SNR grid at the same number of evaluations.
"""

from __future__ import annotations

import glob
import os
import re
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp

from diffjax import samplers
from diffjax._checks import check_int
from diffjax.run import files
from diffjax.run.build import data_gaussian_fit, example_shape
from diffjax.run.generate import run_score_fn
from diffjax.run.load import Run
from diffjax.samplers.learned import (FittedSolver, Teacher, fit_solver, fittable_step, solver_error,
                                      teacher_trajectories)

__all__ = ["SOLVERS_DIR", "solver_path", "find_fitted_solver", "load_fitted_solver", "run_teacher", "fit_run_solver"]

SOLVERS_DIR = "solvers"
_NAME = re.compile(r"^([a-z0-9_]+)_nfe(\d+)\.npz$")


def solver_path(workdir: str, method: str, nfe: int) -> str:
    return os.path.join(workdir, SOLVERS_DIR, f"{method}_nfe{nfe}.npz")


def find_fitted_solver(workdir: str, nfe: int = 0) -> str:
    """The path of the run's fitted solver of ``nfe`` evaluations (0: the only one there); a one-line
    error naming what there is otherwise."""
    found = sorted(p for p in glob.glob(os.path.join(workdir, SOLVERS_DIR, "*_nfe*.npz"))
                   if _NAME.match(os.path.basename(p)))
    if nfe:
        found = [p for p in found if int(_NAME.match(os.path.basename(p)).group(2)) == nfe]
    hint = f"fit one with `diffjax fit-solver --workdir {workdir} --nfe {nfe or 5}`"
    if not found:
        raise FileNotFoundError(f"no fitted solver{f' of {nfe} evaluations' if nfe else ''} in "
                                f"{os.path.join(workdir, SOLVERS_DIR)}; {hint}")
    if len(found) > 1:
        names = ", ".join(os.path.basename(p) for p in found)
        raise ValueError(f"{workdir} has several fitted solvers ({names}); choose one with --nfe N or "
                         "--solver PATH.npz")
    return found[0]


def load_fitted_solver(workdir: str, solver: str, nfe: int, sde) -> FittedSolver:
    """``solver`` "fitted" (the run's, by :func:`find_fitted_solver`) or the path of a solver .npz."""
    path = find_fitted_solver(workdir, nfe) if solver == "fitted" else solver
    if solver != "fitted" and not os.path.isfile(path):
        raise FileNotFoundError(f"sampling.solver: no fitted solver at {path!r}; expected 'fitted' (the run's, "
                                "from `diffjax fit-solver`) or the path of a solver's .npz")
    fitted = FittedSolver.load(path, sde)
    if solver != "fitted" and nfe and fitted.nfe != nfe:
        raise ValueError(f"{path} is a solver of {fitted.nfe} evaluations; --nfe asked for {nfe}")
    return fitted


def run_teacher(run: Run, key, paths: int, num_points: int, refine: int, *, log=None) -> Teacher:
    """The run's teacher for this request, from the cache ``WORKDIR/solvers/teacher_STEP.npz`` when it
    was made with the same paths, grid and key, else solved now (and cached when the run is writable)."""
    log = log or _stderr
    meta = {"step": run.step, "paths": paths, "num_points": num_points, "refine": refine,
            "key": [int(v) for v in jax.random.key_data(key).ravel()] if jax.dtypes.issubdtype(
                key.dtype, jax.dtypes.prng_key) else [int(v) for v in jnp.ravel(key)]}
    path = os.path.join(run.workdir, SOLVERS_DIR, f"teacher_{run.step}.npz") if run.workdir else ""
    if path and os.path.isfile(path) and Teacher.load_meta(path) == meta:
        try:
            return Teacher.load(path)
        except ValueError as e:
            log(f"diffjax: {e}; solving the teacher again")
    x_T = samplers.prior_sample(run.sde, key, (paths, *example_shape(run.config)))
    start = time.perf_counter()
    teacher = teacher_trajectories(run.sde, run_score_fn(run), key, x_T, num_points=num_points, refine=refine)
    jax.block_until_ready(teacher.xs)
    log(f"teacher: {paths} paths, UniPC-3 on {num_points * refine} log-SNR steps, kept {num_points + 1} times "
        f"({time.perf_counter() - start:.1f} s)")
    if path and jax.process_index() == 0:
        try:
            files.check_output_path(path, ".npz", "the teacher cache")
            teacher.save(path, meta)
        except (OSError, ValueError):  # a read-only run: the teacher is a cache
            pass
    return teacher


def fit_run_solver(run: Run, key, nfe: int, method: str = "ipndm", *, paths: int = 256, num_points: int = 64,
                   refine: int = 8, iters: int = 100, learning_rate: float = 0.1, batch_paths: int = 64,
                   analytic_first: str = "on", out: Optional[str] = None, log=None) -> tuple[FittedSolver, dict, str]:
    """Fit a ``method`` solver of ``nfe`` evaluations to the run's teacher and store it.

    ``analytic_first``: "on" (default: the first update by the data's Gaussian flow, which won on the
    digits and every mixture we measured), "off", or "auto" (fit both, keep the one with the smaller
    held-out error; twice the time). Each of ``iters`` Adam iterations differentiates the solver on
    ``batch_paths`` of the teacher's training paths (on the digits network about 1 s each on two CPU
    cores). Returns (solver, report, the path written). ``out`` defaults to :func:`solver_path`;
    checked before any work."""
    log = log or _stderr
    check_int("fit-solver", "nfe", nfe, lo=2, hi=1000)
    check_int("fit-solver", "paths", paths, lo=8, hi=65536)
    if analytic_first not in ("auto", "on", "off"):
        raise ValueError(f"analytic_first must be auto, on or off; got {analytic_first!r}")
    fittable_step(method, run.sde)  # an unknown or unfittable method is refused before the teacher is computed
    out = out or solver_path(run.workdir, method, nfe)
    files.check_output_path(out, ".npz", "the fitted solver", siblings=(".json",))
    teacher = run_teacher(run, key, paths, num_points, refine, log=log)
    n_train = paths - max(paths // 4, 1)
    train_set, held_out = teacher.split(n_train)
    score = run_score_fn(run)
    fit = data_gaussian_fit(run.config, run.workdir, log=log) if analytic_first != "off" else None
    choices = {"auto": (True, False), "on": (True,), "off": (False,)}[analytic_first]
    best = None
    for afs in choices:
        solver, report = fit_solver(run.sde, score, train_set, nfe, method=method, iters=iters,
                                    learning_rate=learning_rate, analytic_first=fit if afs else None,
                                    validation=held_out, batch_paths=batch_paths)
        log(f"fit {method} at {nfe} evaluations{' (analytic first step)' if afs else ''}: held-out error "
            f"{report['validation_error_init']:.4g} -> {report['validation_error']:.4g} ({report['seconds']:.0f} s)")
        if best is None or report["validation_error"] < best[1]["validation_error"]:
            best = (solver, report)
    solver, report = best
    # the training-free solvers it must beat, on the same held-out paths; the best of all is kept
    t_end, t_max = float(teacher.ts[-1]), float(teacher.ts[0])
    unipc = samplers.unipc(run.sde, order=3)
    free = {"unipc3_log_snr": FittedSolver(unipc, samplers.log_snr_timesteps(run.sde, nfe - 1, t_end, t_max=t_max),
                                           None, "unipc")}
    fit = fit if fit is not None else data_gaussian_fit(run.config, run.workdir, log=log)
    t_skip = samplers.teleport_t_skip(run.sde, fit, None, nfe=nfe)
    if t_skip < t_max:
        free["unipc3_log_snr_teleport"] = FittedSolver(
            unipc, jnp.concatenate([jnp.array([t_max]),
                                    samplers.log_snr_timesteps(run.sde, nfe - 1, t_end, t_max=t_skip)]), fit, "unipc")
    report["chosen"] = f"fitted {method}"
    for name, candidate in free.items():
        report[f"validation_error_{name}"] = err = solver_error(candidate, score, held_out)
        if err < report["validation_error"]:
            solver, report["chosen"] = candidate, f"{name} (training-free: it beat the fit on held-out paths)"
    report["validation_error_chosen"] = min(report["validation_error"],
                                            *(report[f"validation_error_{k}"] for k in free))
    report.update(step=run.step, teacher_paths=paths, teacher_points=num_points, teacher_refine=refine)
    if jax.process_index() == 0:
        solver.save(out, report)
        files.write_json(out[:-4] + ".json", {**report, files.OUTPUT_KEY: run.step})
    return solver, report, out


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)
