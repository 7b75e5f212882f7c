"""The one driver: any step over a time grid, in one ``lax.scan``, with one start-up for every entry point.

:func:`sample`, :func:`diffjax.samplers.sample_with_log_density`,
:func:`diffjax.superposition.superposition_sample` and :func:`diffjax.guidance.inpaint_sample` all
go through :func:`drive`: the inputs are checked once (the step, the score functions, x_init, the
grid, the keys), the step is told its grid's length, the evaluations are counted by one formula
(updates x ``step.nfe`` + ``step.denoise_nfe`` when denoising) and the compiled loop records, per
example, the first update that turned it NaN or Inf (:mod:`diffjax.results`).

Step k folds k into every example's key, so a sample is the same alone or in any batch.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import check_finite_input, describe, is_traced
from diffjax._jit import filter_jit
from diffjax.numerics.arrays import time_dtype
from diffjax.processes import SDE
from diffjax.results import SampleResult, no_nonfinite, raise_if_nonfinite, update_nonfinite
from diffjax.numerics.brownian import BrownianIncrement
from diffjax.samplers.base import Step, fold_keys, per_example_keys, with_num_steps
from diffjax.score import checked_score

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

__all__ = ["sample", "drive", "Drive", "scan_steps", "check_timesteps", "check_x_init", "check_score_fns", "NOISES"]

NOISES = ("independent", "brownian")


def check_timesteps(timesteps: Array, sde: SDE, dtype=None) -> Array:
    """A 1-D, strictly decreasing grid inside (0, T], as ``dtype`` (default: float32, or float64 when
    the grid is float64); raises ValueError otherwise."""
    ts = jnp.asarray(timesteps)
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"timesteps must be a 1-D grid of at least 2 times, T first; got shape {ts.shape}")
    if not jnp.issubdtype(ts.dtype, jnp.floating):
        raise TypeError(f"timesteps must be floating point; got {ts.dtype}")
    if not is_traced(ts) and not is_traced(sde.T):
        v = np.asarray(ts, np.float64)
        if not np.all(np.isfinite(v)):
            raise ValueError("timesteps must be finite; got NaN or Inf")
        if not np.all(np.diff(v) < 0):
            raise ValueError("timesteps must be strictly decreasing (from T towards 0)")
        if v[-1] <= 0 or v[0] > float(sde.T) * (1 + 1e-6):
            raise ValueError(f"timesteps must lie in (0, T] = (0, {float(sde.T)}]; got [{v[-1]}, {v[0]}]; end at t_end > 0")
    return ts.astype(dtype or jnp.result_type(ts.dtype, jnp.float32))


def check_x_init(x_init: Array, name: str = "x_init") -> None:
    """Raise unless ``x_init`` is a floating-point array of shape (batch, *data_dims), batch >= 1,
    with finite values (when concrete)."""
    if not hasattr(x_init, "shape"):
        raise TypeError(f"{name} must be an array of shape (batch, *data_dims); got {describe(x_init)}")
    shape = jnp.shape(x_init)
    if len(shape) < 2:
        raise ValueError(f"{name} must have shape (batch, *data_dims) with at least one data dim; got {shape}")
    if shape[0] < 1:
        raise ValueError(f"{name} must hold at least one example; got shape {shape}")
    if not jnp.issubdtype(jnp.result_type(x_init), jnp.floating):
        raise TypeError(f"{name} must be floating point (float32, float64, bfloat16); got {jnp.result_type(x_init)}")
    check_finite_input(name, x_init)


def check_score_fns(score_fn, num_models: Optional[int]) -> None:
    """One callable, or (a step over several models) a tuple or list of ``num_models`` callables."""
    if num_models is None:
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable score_fn(x, t); got {describe(score_fn)}")
        return
    if not isinstance(score_fn, (tuple, list)) or len(score_fn) != num_models or not all(map(callable, score_fn)):
        raise TypeError(f"this step combines {num_models} models: give a list of {num_models} score functions s(x, t)")


class Drive(NamedTuple):
    """What :func:`drive` returns: the final x, the step's final state, the per-example record of the
    first non-finite update, the evaluations per example (batch,), the grid used, and the path
    (n + 1, batch, ...) when asked for (else None)."""

    x: Array
    state: Any
    nonfinite_step: Array
    nfe: Array
    timesteps: Array
    trajectory: Optional[Array]


def drive(step: Step, score_fn, key: Array, x_init: Array, timesteps: Array, *, denoise: bool = True,
          trajectory: bool = False, callback: Optional[Callable] = None, num_models: Optional[int] = None,
          watch: Optional[Callable] = None, noise: str = "independent") -> Drive:
    """The one start-up and loop behind every sampling entry point (module docstring): check the
    inputs, give every example its key, tell the step its grid's length, run the compiled loop and
    count the evaluations. ``score_fn`` is one callable, or ``num_models`` of them for a step over
    several models; ``watch(state)`` names per-example arrays of the state that count as the
    example's own for the non-finite record (a tracked log-density). ``noise``: "independent" (fresh
    normals per update from the folded keys) or "brownian" (each update's normal is the normalised
    increment of one Brownian path per example, the same whatever the grid:
    :mod:`diffjax.numerics.brownian`)."""
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}; got {noise!r}")
    if not isinstance(step, Step):
        raise TypeError(f"step must be a diffjax.samplers.Step (see get_step); got {type(step).__name__}")
    check_score_fns(score_fn, num_models)
    check_x_init(x_init)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable callback(step, t, x); got {describe(callback)}")
    ts = check_timesteps(timesteps, step.sde, time_dtype(x_init))
    if noise == "brownian" and not is_traced(ts) and float(ts[0]) > float(step.sde.T) * (1 + 1e-6):
        raise ValueError(f"noise='brownian' draws one path on [0, T = {float(step.sde.T)}]; the grid starts at "
                         f"{float(ts[0])}")
    keys = per_example_keys(key, jnp.shape(x_init)[0])
    step = with_num_steps(step, ts.shape[0] - 1)
    x, state, record, path = _run(step, score_fn if num_models is None else tuple(score_fn), bool(denoise),
                                  bool(trajectory), callback, watch, keys, x_init, ts, noise)
    nfe = (ts.shape[0] - 1) * step.nfe + (step.denoise_nfe if denoise else 0)
    return Drive(x, state, record, jnp.full(jnp.shape(x_init)[:1], nfe, jnp.int32), ts, path)


@filter_jit
def _run(step, score_fn, denoise, trajectory, callback, watch, keys, x_init, ts, noise):
    score_fn = tuple(checked_score(s) for s in score_fn) if isinstance(score_fn, tuple) else checked_score(score_fn)
    x, state, record, path = scan_steps(step, score_fn, keys, x_init, ts, watch=watch, trajectory=trajectory,
                                        callback=callback, noise=noise)
    if denoise:
        t_end = jnp.full((x_init.shape[0],), ts[-1], ts.dtype)
        x = step.denoise(x, state, t_end, score_fn).astype(x_init.dtype)
        record = update_nonfinite(record, ts.shape[0] - 1, x)
        if trajectory:
            path = jnp.concatenate([path, x[None]])
    return x, state, record, path


def scan_steps(step, score_fn, keys, x_init, ts, watch=None, trajectory=False, callback=None, noise="independent"):
    """The driver's loop (traced, not jitted): ``step`` over the grid ``ts`` with ``lax.scan``, step k
    folding k into every example's key. Returns (x, the step's final state, the per-example record of
    the first update that made x, or ``watch(state)``, NaN or Inf (-1 if none), the path
    (n + 1, batch, ...) with ``trajectory`` else None). ``callback(k, t_next, x)`` runs on the host
    after every update (``jax.debug.callback``: it costs a device-to-host copy of x per update). The
    carry keeps its dtypes whatever precision a step computes in (float32 coefficients on bfloat16
    samples, float64 times with float64 samples)."""
    n = x_init.shape[0]
    state0 = step.init(x_init)
    carry_types = jax.tree_util.tree_map(lambda v: jnp.result_type(v), (x_init, state0))

    def body(carry, inputs):
        x, state, record = carry
        k, t, t_next = inputs
        t_b = jnp.full((n,), t, ts.dtype)
        t_next_b = jnp.full((n,), t_next, ts.dtype)
        if noise == "brownian":
            step_keys = BrownianIncrement(keys, t_b, t_next_b, step.sde.T)
        else:
            step_keys = fold_keys(keys, k)
        out = step.update(step_keys, x, state, t_b, t_next_b, score_fn)
        if not isinstance(out, tuple) or len(out) != 2:
            raise TypeError(f"{step.name}.update must return (x, state) since diffjax 0.2 (no x_mean); got "
                            f"{len(out) if isinstance(out, tuple) else type(out).__name__} values")
        x, state = jax.tree_util.tree_map(lambda v, d: jnp.asarray(v).astype(d), out, carry_types)
        watched = () if watch is None else jax.tree_util.tree_leaves(watch(state))
        if callback is not None:
            jax.debug.callback(callback, k, t_next, x)
        return (x, state, update_nonfinite(record, k, x, *watched)), (x if trajectory else None)

    steps = jnp.arange(ts.shape[0] - 1)
    (x, state, record), path = jax.lax.scan(body, (x_init, state0, no_nonfinite(n)), (steps, ts[:-1], ts[1:]))
    if trajectory:
        path = jnp.concatenate([x_init[None], path])
    return x, state, record, path


def sample(step: Step, score_fn: ScoreFn, key: Array, x_init: Array, timesteps: Array, *, denoise: bool = True,
           trajectory: bool = False, callback: Optional[Callable] = None, check_finite: bool = True,
           noise: str = "independent") -> SampleResult:
    """Run ``step`` over the grid ``timesteps`` (T first, decreasing to t_end) starting from ``x_init``.

    Args:
      step: a :class:`~diffjax.samplers.Step` (a predictor, a corrector chained with one, DDIM, Heun,
        DPM-Solver, ...).
      score_fn: ``score_fn(x, t) -> score`` with t of shape (batch,).
      key: one PRNG key (example i then uses fold_in(key, i)) or one key per example, shape (batch,).
        Step k folds k into every example's key, so a sample is the same alone or in any batch.
      x_init: samples at timesteps[0], shape (batch, *data_dims) (see :func:`prior_sample`).
      timesteps: shape (n + 1,): n updates, from timesteps[k] to timesteps[k + 1].
      denoise: finish with the step's denoising (Tweedie's estimate E[x0 | x_t_end], one more
        score evaluation).
      trajectory: also return the path, x at every grid time (n + 1, batch, ...) (diffrax's SaveAt(ts)).
      callback: ``callback(k, t_next, x)`` called on the host after every update (k-diffusion's callback).
      check_finite: outside a jit of yours, raise :class:`~diffjax.results.NonFiniteError` when an
        example became NaN or Inf (see :mod:`diffjax.results`).
      noise: "independent" (default: fresh normals per update) or "brownian": every update of a
        stochastic step draws the normalised increment (W(t) - W(t_next)) / sqrt(t - t_next) of one
        Brownian path per example (a virtual Brownian tree, :mod:`diffjax.numerics.brownian`), so the
        same key gives the same path on every grid and a refined grid refines the same sample
        (strong convergence). For steps drawing one normal per update (Euler-Maruyama, reverse
        diffusion, ancestral, DDIM with eta, DPM-Solver++ SDE, EDM's churn); a step that draws more
        (Langevin correctors) raises a one-line error. Costs about 2 x 24 normal draws per update.

    Returns a :class:`~diffjax.results.SampleResult`: ``.x`` (x_init's shape), ``.nfe`` (batch,) score
    evaluations per example, ``.nonfinite_step`` / ``.finite`` per example, ``.trajectory``.

    Compiled once per shapes, dtypes and static values: ``step`` and ``score_fn`` may be built anew
    on every call. A score function's arrays are traced when it is a pytree, e.g.
    ``jax.tree_util.Partial(score_model, params)`` (what :func:`diffjax.score.make_score_fn`
    returns), an Equinox module or a :class:`diffjax.GaussianMixture` score; a plain closure is
    keyed by identity, so a new closure (over new parameters, say) compiles anew.
    """
    run = drive(step, score_fn, key, x_init, timesteps, denoise=denoise, trajectory=trajectory, callback=callback,
                noise=noise, num_models=getattr(step, "num_models", None))
    result = SampleResult(run.x, run.nfe, run.nonfinite_step, run.trajectory)
    raise_if_nonfinite(result, "sample", check_finite, steps=run.timesteps)
    return result
