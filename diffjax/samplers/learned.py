"""Solvers for five to eight evaluations, fitted to the model's own teacher trajectories.

Closed-form rules (DPM-Solver++, UniPC) lose at 5-8 score evaluations to solvers whose few numbers
are fitted to what the model itself does. This module has the pieces, each a pure function or a
value:

* :func:`teacher_trajectories` solves the probability flow tightly (UniPC-3 on a fine log-SNR grid)
  from a few hundred x_T and keeps the states and their denoised values at ``num_points + 1`` times
  (a :class:`Teacher`, saved and loaded as .npz).
* :func:`gits_timesteps`: the coarse grid by dynamic programming over the teacher's times (GITS,
  Chen et al. 2024): the cost of a jump t_i -> t_j is the mean distance between one DDIM step from
  the teacher's x_i (with its recorded denoised value: no new evaluation) and the teacher's x_j, and
  the grid of ``num_steps`` jumps from T to t_end with the least summed cost is exact by DP.
* :func:`ipndm`: the improved pseudo-linear multistep of Zhang & Chen (iPNDM) in the EDM variables
  x^ = x / a, sigma^ = sigma / a, where every Gaussian process's flow is dx^/dsigma^ = (x^ - D) / sigma^:
  Adams-Bashforth weights on the last four slopes with a lower-order warm start; one evaluation
  per update. With ``coeffs`` (num_steps, order) it is the *learned* multistep: each update has its
  own weights.
* :func:`fit_solver`: the grid (LD3, Tong et al. 2024: softmax gaps in log sigma^, differentiated
  through the driver) and, for iPNDM, the per-update weights (initialised at iPNDM's), fitted by
  Adam to the distance between the solver's denoised endpoint and the teacher's. It returns a
  :class:`FittedSolver`: a value (pytree) you can jit, save and load, and call like a sampler.

Why learned multistep weights and not PAS's principal directions or EPD's extra points: a weight on
a slope already computed costs no evaluation and no per-sample decomposition, it contains iPNDM
(the best training-free method here at 5 evaluations) as its initial point, and it corrects both
the order and the direction of each update; with the grid it is (order + 1) numbers per update.

The analytic first step: with ``fit`` (the data's Gaussian fit) the solver maps x_T to its grid's
first interior time by the Gaussian's exact flow (:func:`gaussian_teleport`), saving that
evaluation. NFE: one per update plus the final denoising (Tweedie at t_end).
"""

from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import check_int, describe
from diffjax._io import atomic_savez
from diffjax.numerics.arrays import expand_to, per_example_norm, time_dtype
from diffjax.processes import SDE
from diffjax.results import SampleResult, raise_if_nonfinite
from diffjax.samplers.base import Step, static_field, step_class
from diffjax.samplers.driver import drive, sample
from diffjax.samplers.grids import TIME_GRIDS
from diffjax.samplers.multistep import unipc
from diffjax.samplers.teleport import (
    GaussianFit,
    check_fit,
    gaussian_teleport,
    teleport_t_skip,
)
from diffjax.score import x0_from_score

Array = jax.Array

__all__ = ["Teacher", "teacher_trajectories", "dp_grid", "gits_timesteps", "ipndm", "IPNDM_COEFFS",
           "FittedSolver", "fit_solver", "solver_error"]

# Adams-Bashforth weights on (d_i, d_{i-1}, d_{i-2}, d_{i-3}) by order: iPNDM's table
IPNDM_COEFFS = np.array([[1.0, 0.0, 0.0, 0.0],
                         [3.0 / 2.0, -1.0 / 2.0, 0.0, 0.0],
                         [23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0, 0.0],
                         [55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0]])


# --- the teacher --------------------------------------------------------------------------------

class Teacher(NamedTuple):
    """Tight probability-flow paths: ``ts`` (M + 1,) from T down to t_end, ``xs`` (M + 1, n, ...) the
    states and ``denoised`` (M + 1, n, ...) their denoised values E[x0 | x_t] (the last one is the
    path's answer)."""

    ts: Array
    xs: Array
    denoised: Array

    def save(self, path: str, meta: Optional[dict] = None) -> None:
        """Write an .npz (atomically: a temporary name, then a rename) with ``meta`` (a JSON-able dict:
        how it was made, so a cache can tell whether it fits a request)."""
        import json

        atomic_savez(path, ts=np.asarray(self.ts), xs=np.asarray(self.xs), denoised=np.asarray(self.denoised),
                     meta=np.asarray(json.dumps(meta or {})))

    @staticmethod
    def load_meta(path: str) -> dict:
        """The ``meta`` dict saved with a teacher ({} if none or unreadable)."""
        import json

        try:
            with np.load(path) as f:
                return json.loads(str(f["meta"])) if "meta" in f.files else {}
        except Exception:  # noqa: BLE001 - an unreadable cache is simply not a match
            return {}

    @classmethod
    def load(cls, path: str) -> "Teacher":
        try:
            with np.load(path) as f:
                t = cls(jnp.asarray(f["ts"]), jnp.asarray(f["xs"]), jnp.asarray(f["denoised"]))
        except Exception as e:  # noqa: BLE001 - any unreadable file is not one
            raise ValueError(f"{path} is not a teacher file ({type(e).__name__}); delete it to solve again") from None
        if t.xs.shape != t.denoised.shape or t.xs.shape[0] != t.ts.shape[0]:
            raise ValueError(f"{path}: inconsistent teacher arrays; delete it to solve again")
        return t

    def split(self, n_train: int) -> tuple["Teacher", "Teacher"]:
        """(the first ``n_train`` paths, the rest): fit on one, validate on the other."""
        return (Teacher(self.ts, self.xs[:, :n_train], self.denoised[:, :n_train]),
                Teacher(self.ts, self.xs[:, n_train:], self.denoised[:, n_train:]))


def _denoise(sde: SDE, score_fn, x: Array, t: Array) -> Array:
    a, s = sde.marginal_coeffs(t)
    return x0_from_score(score_fn(x, t), x, a, s)


def teacher_trajectories(sde: SDE, score_fn, key: Array, x_init: Array, *, num_points: int = 128,
                         refine: int = 8, grid: str = "log_snr", t_max: Optional[float] = None,
                         t_end: Optional[float] = None, check_finite: bool = True) -> Teacher:
    """Solve the probability flow from ``x_init`` (n, ...) at ``t_max`` (default T) to ``t_end`` with
    UniPC-3 on ``num_points * refine`` steps of ``grid``, keeping every ``refine``-th state and its
    denoised value (``num_points + 1`` times). Its accuracy is that of the fine solve: check it by
    halving ``refine``. float64 when x_init is float64 (jax_enable_x64). A path that turns NaN/Inf
    raises :class:`~diffjax.results.NonFiniteError` outside a jit of yours (``check_finite=False`` keeps it)."""
    check_int("teacher_trajectories", "num_points", num_points, lo=2)
    check_int("teacher_trajectories", "refine", refine, lo=1)
    if grid not in TIME_GRIDS:
        raise ValueError(f"unknown grid {grid!r}; expected one of {sorted(TIME_GRIDS)}")
    ts = TIME_GRIDS[grid](sde, num_points * refine, t_end, dtype=time_dtype(x_init), t_max=t_max)
    run = drive(unipc(sde, order=3), score_fn, key, x_init, ts, denoise=False, trajectory=True)
    # the library's rule: outside a user's jit one NonFiniteError naming the first bad update; inside a jit
    # (traced) nothing can be raised and NaN paths stay NaN
    raise_if_nonfinite(SampleResult(run.x, run.nfe, run.nonfinite_step, None), "teacher_trajectories",
                       check_finite, steps=ts)
    ts, xs = ts[::refine], run.trajectory[::refine]
    denoised = jax.lax.map(lambda a: _denoise(sde, score_fn, a[0], jnp.full(a[0].shape[:1], a[1], ts.dtype)),
                           (xs, ts))
    return Teacher(ts, xs, denoised.astype(xs.dtype))


# --- the grid by dynamic programming (GITS) -------------------------------------------------------

def dp_grid(cost: np.ndarray, num_steps: int) -> list[int]:
    """The indices 0 = i_0 < i_1 < ... < i_n = M (n = ``num_steps``) minimising the summed
    ``cost[i_k, i_{k+1}]`` of a (M + 1, M + 1) cost matrix (only i < j is read). Exact: dynamic
    programming over (jumps made, index reached), O(n M^2)."""
    cost = np.asarray(cost, np.float64)
    m = cost.shape[0] - 1
    check_int("dp_grid", "num_steps", num_steps, lo=1)
    if num_steps > m:
        raise ValueError(f"dp_grid: {num_steps} steps need at least {num_steps + 1} candidate times; got {m + 1}")
    upper = np.where(np.triu(np.ones_like(cost, bool), 1), cost, np.inf)
    best = np.full(m + 1, np.inf)
    best[0] = 0.0
    parents = []
    for _ in range(num_steps):
        total = best[:, None] + upper          # total[i, j]: arrive at i, then jump to j
        parent = np.argmin(total, axis=0)
        best = total[parent, np.arange(m + 1)]
        parents.append(parent)
    path = [m]
    for parent in reversed(parents):
        path.append(int(parent[path[-1]]))
    return path[::-1]


def _ddim_jump(sde: SDE, x: Array, d: Array, t: Array, t_next: Array) -> Array:
    """One DDIM step (probability flow, data prediction) from x at t with denoised d: in x^ = x / a it
    is x^_next = d + (sigma^_next / sigma^) (x^ - d); ``t``, ``t_next`` scalars."""
    a, s = sde.marginal_coeffs(t)
    a_n, s_n = sde.marginal_coeffs(t_next)
    return a_n * d + (s_n / s) * (x - a * d)


def gits_timesteps(sde: SDE, teacher: Teacher, num_steps: int) -> Array:
    """A grid of ``num_steps`` updates from the teacher's first time to its last, chosen among the
    teacher's times by :func:`dp_grid` on the cost of one DDIM jump (mean ||x_jump - x_teacher|| over
    the paths): the GITS search. Needs no score evaluation (the teacher recorded its denoised values).
    Use it for any one-evaluation step (DDIM, DPM-Solver++, UniPC, iPNDM), as GITS does."""
    ts, xs, ds = teacher
    m = ts.shape[0] - 1

    def row(i):
        jumps = jax.vmap(lambda tj: _ddim_jump(sde, xs[i], ds[i], ts[i], tj))(ts)    # (M + 1, n, ...)
        return jax.vmap(lambda a, b: jnp.mean(per_example_norm(a - b)))(jumps, xs)

    cost = np.asarray(jax.lax.map(row, jnp.arange(m + 1)))
    return ts[np.asarray(dp_grid(cost, num_steps))]


# --- iPNDM and its learned weights ----------------------------------------------------------------

@step_class
class ipndm(Step):
    """iPNDM (Zhang & Chen 2023) in the EDM variables: slopes d_i = (x^_i - D(x_i, t_i)) / sigma^_i and

        x^_{i+1} = x^_i + (sigma^_{i+1} - sigma^_i) sum_k c_{i,k} d_{i-k},   x = a x^,

    with c_i iPNDM's Adams-Bashforth row of order min(i + 1, ``order``) (:data:`IPNDM_COEFFS`), or
    with ``coeffs`` (num_steps, order) each update's own weights (a learned multistep; see
    :func:`fit_solver`). One score evaluation per update."""

    sde: SDE
    order: int = static_field(4)
    coeffs: Optional[Array] = None

    stochastic = False
    name = "ipndm"

    def __post_init__(self):
        if isinstance(self.order, bool) or self.order not in (1, 2, 3, 4):
            raise ValueError(f"ipndm order must be 1..4; got {self.order!r}")
        if self.coeffs is not None and (jnp.ndim(self.coeffs) != 2 or jnp.shape(self.coeffs)[1] != self.order):
            raise ValueError(f"ipndm coeffs must have shape (num_steps, order = {self.order}); got "
                             f"{jnp.shape(self.coeffs)}")
        super().__post_init__()

    def init(self, x):
        return jnp.zeros((self.order,) + x.shape, x.dtype), jnp.zeros((), jnp.int32)

    def weights(self, i: Array) -> Array:
        """The weights (order,) of update i."""
        if self.coeffs is not None:
            return jnp.asarray(self.coeffs)[jnp.minimum(i, jnp.shape(self.coeffs)[0] - 1)]
        table = jnp.asarray(IPNDM_COEFFS[: self.order, : self.order])
        return table[jnp.minimum(i, self.order - 1)]

    def update(self, keys, x, state, t, t_next, score_fn):
        del keys
        slopes, i = state
        a, s = self.sde.marginal_coeffs(t)
        a_n, s_n = self.sde.marginal_coeffs(t_next)
        x_hat, sh, sh_n = x / expand_to(a, x), s / a, s_n / a_n
        d = (x_hat - x0_from_score(score_fn(x, t), x, a, s)) / expand_to(sh, x)
        slopes = jnp.concatenate([d[None].astype(slopes.dtype), slopes[:-1]])
        c = self.weights(i).astype(slopes.dtype)
        slope = jnp.tensordot(c, slopes, axes=1)
        x_next = expand_to(a_n, x) * (x_hat + expand_to(sh_n - sh, x) * slope)
        return x_next, (slopes, i + 1)


# --- the fitted solver --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FittedSolver:
    """A solver fitted to a model: ``step`` (a one-evaluation step; iPNDM with learned ``coeffs``)
    on its own grid ``timesteps`` (num_steps + 1,), optionally starting with the analytic first step
    (``fit``: x_T mapped to ``timesteps[1]`` by the Gaussian's flow). A value: jit it, save it
    (:meth:`save`), load it with the run's process (:meth:`load`).
    ``solver(score_fn, key, x_init) -> SampleResult``."""

    step: Step
    timesteps: Array
    fit: Optional[GaussianFit] = None
    method: str = ""   # the get_step name it was built from ("ipndm", "unipc", ...), for saving

    @property
    def sde(self) -> SDE:
        return self.step.sde

    @property
    def nfe(self) -> int:
        """Score evaluations per sample: one per update (but an analytic first one) and the denoising."""
        return int(jnp.shape(self.timesteps)[0]) - 1 - (self.fit is not None) + 1

    def __call__(self, score_fn, key, x_init, *, check_finite: bool = True):
        ts = jnp.asarray(self.timesteps).astype(time_dtype(x_init))
        step = self.step
        if self.fit is not None:
            x_init = gaussian_teleport(self.sde, x_init, ts[0], ts[1], self.fit)
            ts = ts[1:]
            if isinstance(step, ipndm) and step.coeffs is not None:
                step = dataclasses.replace(step, coeffs=step.coeffs[1:])
        return sample(step, score_fn, key, x_init, ts, denoise=True, check_finite=check_finite)

    def save(self, path: str, meta: Optional[dict] = None) -> None:
        """An .npz with the step's name and order, the grid, the weights, the fit and ``meta`` (a
        JSON-able dict: the fit's report, say)."""
        import json

        arrays = {"method": np.asarray(self.method or self.step.name), "order": np.asarray(getattr(self.step, "order", 0)),
                  "timesteps": np.asarray(self.timesteps), "meta": np.asarray(json.dumps(meta or {}))}
        if isinstance(self.step, ipndm) and self.step.coeffs is not None:
            arrays["coeffs"] = np.asarray(self.step.coeffs)
        if self.fit is not None:
            arrays.update(fit_mean=np.asarray(self.fit.mean), fit_eigvals=np.asarray(self.fit.eigvals),
                          fit_eigvecs=np.asarray(self.fit.eigvecs), fit_residual=np.asarray(self.fit.residual_var))
        atomic_savez(path, **arrays)

    @classmethod
    def load(cls, path: str, sde: SDE) -> "FittedSolver":
        """The solver saved at ``path``, for the process ``sde`` (the run's)."""
        from diffjax.samplers.plan import get_step

        try:
            with np.load(path) as f:
                data = {k: f[k] for k in f.files}
            method, order = str(data["method"]), int(data["order"])
            ts = jnp.asarray(data["timesteps"])
        except Exception as e:  # noqa: BLE001 - any unreadable file is not one
            raise ValueError(f"{path} is not a fitted solver ({type(e).__name__}); fit one with "
                             "`diffjax fit-solver`") from None
        if method == "ipndm":
            step = ipndm(sde, order=order, coeffs=jnp.asarray(data["coeffs"]) if "coeffs" in data else None)
        else:
            step = get_step(method, sde, **({"order": order} if method in ("unipc", "dpmpp_3m") else {}))
        fit = None
        if "fit_mean" in data:
            fit = GaussianFit(data["fit_mean"], data["fit_eigvals"], data["fit_eigvecs"], float(data["fit_residual"]))
        return cls(step, ts, fit, method)


jax.tree_util.register_dataclass(FittedSolver, data_fields=["step", "timesteps", "fit"], meta_fields=["method"])


def solver_error(solver: FittedSolver, score_fn, teacher: Teacher, key: Optional[Array] = None) -> float:
    """Mean ||x_solver - x_teacher|| over the teacher's paths, from the same x_T, both denoised at t_end."""
    key = jax.random.PRNGKey(0) if key is None else key
    x = solver(score_fn, key, teacher.xs[0]).x
    return float(jnp.mean(per_example_norm(x - teacher.denoised[-1])))


def _grid_from_gaps(theta: Array, log_lo: Array, log_hi: Array, sde: SDE, t_max, t_end) -> Array:
    gaps = jax.nn.softmax(theta)
    log_s = log_hi + (log_lo - log_hi) * jnp.concatenate([jnp.zeros((1,), theta.dtype), jnp.cumsum(gaps)])
    ts = sde.t_from_noise_level(jnp.exp(log_s))
    return ts.at[0].set(t_max).at[-1].set(t_end)


def fittable_step(method: str, sde: SDE, order: int = 0) -> Step:
    """The step :func:`fit_solver` fits for ``method``: iPNDM (``order`` default 4), or any
    one-evaluation deterministic step by name; a one-line ValueError for anything else (checked
    before any teacher is computed)."""
    from diffjax.samplers.plan import get_step  # plan imports this module

    if method == "ipndm":
        return ipndm(sde, order=order or 4)
    step = get_step(method, sde, **({"order": order} if order else {}))
    if step.nfe != 1 or step.stochastic:
        raise ValueError(f"fit_solver fits one-evaluation deterministic steps (ipndm, unipc, dpmpp_2m, ddim, ...); "
                         f"{method!r} is not one")
    return step


def fit_solver(sde: SDE, score_fn, teacher: Teacher, nfe: int, *, method: str = "ipndm", order: int = 0,
               analytic_first: Optional[GaussianFit] = None, init: str = "auto", fit_timesteps: bool = True,
               fit_coeffs: bool = True, iters: int = 200, learning_rate: float = 0.02,
               validation: Optional[Teacher] = None, batch_paths: Optional[int] = None,
               verbose: bool = False) -> tuple[FittedSolver, dict]:
    """Fit a solver of ``nfe`` score evaluations (the final denoising included) to ``teacher``.

    ``method``: "ipndm" (grid and per-update weights; ``order`` default 4) or any one-evaluation step
    name of :func:`~diffjax.samplers.get_step` ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc": grid only).
    ``analytic_first``: the data's Gaussian fit, to spend no evaluation on the first update. ``init``:
    the starting grid, "gits" (:func:`gits_timesteps` on the teacher), "teleport" (with
    ``analytic_first``: the teleport rule's t_skip, then log-SNR), a :data:`TIME_GRIDS` name, or
    "auto" (default: whichever of these has the least error on the training paths). The loss is the mean
    ||x_solver - x_teacher|| of the denoised endpoints over the teacher's paths; Adam (learning rate
    cosine-decayed to a tenth) on the gaps in log sigma^ (softmax: monotone by construction) and the
    weights. ``batch_paths``: fit on a fresh random subset of this many paths per iteration (what
    bounds the cost on a network; every 10th iterate is then measured on all training paths); full
    batch (default): every iterate is. The best iterate measured is kept, so the result is never
    worse on the training paths than the start.
    Returns (solver, report) with the initial and final errors (train, and ``validation`` paths if
    given), the seconds taken and the iterations."""
    import optax

    check_int("fit_solver", "nfe", nfe, lo=2)
    check_int("fit_solver", "iters", iters, lo=0)
    if not isinstance(teacher, Teacher):
        raise TypeError(f"fit_solver needs a Teacher (teacher_trajectories); got {describe(teacher)}")
    if analytic_first is not None:
        check_fit(analytic_first)
    num_steps = nfe - 1 + (analytic_first is not None)
    step0 = fittable_step(method, sde, order)
    if method != "ipndm":
        fit_coeffs = False
    ts_all = teacher.ts
    t_max, t_end = ts_all[0], ts_all[-1]

    def init_grid(name):
        if name == "gits":
            return gits_timesteps(sde, teacher, num_steps)
        if name == "teleport":  # the teleport rule's t_skip, then the log-SNR grid below it
            if analytic_first is None:
                return None
            t_skip = teleport_t_skip(sde, analytic_first, None, nfe=nfe)
            if not t_skip < float(t_max):
                return None
            return jnp.concatenate([ts_all[:1], TIME_GRIDS["log_snr"](sde, num_steps - 1, float(t_end), dtype=ts_all.dtype,
                                                                      t_max=t_skip)])
        return TIME_GRIDS[name](sde, num_steps, float(t_end), dtype=ts_all.dtype, t_max=float(t_max))

    if init != "auto" and init != "gits" and init != "teleport" and init not in TIME_GRIDS:
        raise ValueError(f"unknown init {init!r}; expected 'auto', 'gits', 'teleport' or one of {sorted(TIME_GRIDS)}")
    if init == "teleport" and analytic_first is None:
        raise ValueError("init='teleport' needs analytic_first (the data's Gaussian fit)")
    candidates = ["gits", "log_snr", "karras", "teleport"] if init == "auto" else [init]
    c0 = None
    if method == "ipndm":  # row j: iPNDM's weights for the j-th update that evaluates the score
        rows = [IPNDM_COEFFS[min(j, step0.order - 1), : step0.order] for j in range(nfe - 1)]
        if analytic_first is not None:
            rows = [np.zeros(step0.order)] + rows  # the analytic update's row (unused)
        c0 = jnp.asarray(np.stack(rows), ts_all.dtype)
    log_hi, log_lo = jnp.log(sde.noise_level(t_max)), jnp.log(sde.noise_level(t_end))

    def theta_of(ts):
        log_s = jnp.log(sde.noise_level(ts))
        return jnp.log(jnp.maximum(-jnp.diff(log_s), 1e-12) / (log_hi - log_lo))

    def solver_of(params, ts_fixed=None):
        theta, coeffs = params
        ts = _grid_from_gaps(theta, log_lo, log_hi, sde, t_max, t_end) if ts_fixed is None else ts_fixed
        step = dataclasses.replace(step0, coeffs=coeffs) if method == "ipndm" else step0
        return FittedSolver(step, ts, analytic_first, method)

    key = jax.random.PRNGKey(0)
    x_T, target = teacher.xs[0], teacher.denoised[-1]
    n_paths = int(x_T.shape[0])
    batch = n_paths if batch_paths is None else min(check_int("fit_solver", "batch_paths", batch_paths, lo=1), n_paths)

    def loss(params, x, y):
        out = solver_of(params, None if fit_timesteps else ts0)(score_fn, key, x, check_finite=False).x
        return jnp.mean(per_example_norm(out - y))

    # the start: the candidate grid with the least error on the training paths
    starts = {}
    for name in candidates:
        ts = init_grid(name)
        if ts is not None:
            x = solver_of((None, c0), ts)(score_fn, key, x_T, check_finite=False).x
            starts[name] = (float(jnp.mean(per_example_norm(x - target))), ts)
    init = min(starts, key=lambda k: starts[k][0] if np.isfinite(starts[k][0]) else np.inf)
    ts0 = starts[init][1]
    theta0 = theta_of(ts0)

    full_loss = jax.jit(lambda params: loss(params, x_T, target))
    params = (theta0, c0)
    report = {"method": step0.name, "nfe": nfe, "init": init, "analytic_first": analytic_first is not None,
              "init_errors": {k: v[0] for k, v in starts.items()},
              "train_paths": n_paths, "batch_paths": batch, "error_init": float(full_loss(params))}
    if validation is not None:
        report["validation_paths"] = int(validation.xs.shape[1])
        report["validation_error_init"] = solver_error(solver_of(params), score_fn, validation)
    start = time.perf_counter()
    best, best_params = report["error_init"], params
    if (fit_timesteps or fit_coeffs) and iters:
        mask = (jnp.ones_like(theta0) * fit_timesteps, None if c0 is None else jnp.ones_like(c0) * fit_coeffs)
        opt = optax.adam(optax.cosine_decay_schedule(learning_rate, iters, alpha=0.1))
        value_and_grad = jax.jit(jax.value_and_grad(loss))
        state = opt.init(params)
        eval_every = 10
        for k in range(iters):  # a host loop of compiled calls: iters is small
            if batch < n_paths:  # a fresh subset of the paths each iteration (SGD): the cost of one is the batch's
                if k and k % eval_every == 0:  # the iterate on all training paths: keep the best one
                    value = float(full_loss(params))
                    if np.isfinite(value) and value < best:
                        best, best_params = value, params
                idx = jax.random.choice(jax.random.fold_in(key, k), n_paths, (batch,), replace=False)
                value, grads = value_and_grad(params, x_T[idx], target[idx])
            else:
                value, grads = value_and_grad(params, x_T, target)
                value = float(value)
                if np.isfinite(value) and value < best:
                    best, best_params = value, params
            grads = jax.tree_util.tree_map(lambda g, m: jnp.nan_to_num(g) * m, grads, mask)
            updates, state = opt.update(grads, state)
            params = optax.apply_updates(params, updates)
            if verbose and k % 25 == 0:
                print(f"  fit_solver {step0.name} nfe {nfe}: iteration {k}, error {float(value):.5f}")
        last = float(full_loss(params))
        if np.isfinite(last) and last < best:  # the last iterate (minibatches: the only one measured on all paths)
            best, best_params = last, params
        params = best_params
    report["error"] = best
    report["seconds"] = round(time.perf_counter() - start, 2)
    report["iters"] = iters
    solver = solver_of(params)
    if validation is not None:
        report["validation_error"] = solver_error(solver, score_fn, validation)
    return solver, report
