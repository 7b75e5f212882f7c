"""The sampler transform form, its composition and the one driver that runs any step.

A *step* moves a batch of samples x from time t to t_next (a predictor) or refines it at the
current time (a corrector). It is a pair of pure functions

    init(x) -> state
    update(keys, x, state, t, t_next, score_fn) -> (x, x_mean, state)

where ``keys`` holds one PRNG key per example (shape (batch,)), ``t`` and ``t_next`` have shape
(batch,), and ``x_mean`` is the update without its final injected noise. ``chain(a, b)`` runs a
then b inside one step; :func:`sample` runs any step over a decreasing time grid with
``lax.scan``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.score import x0_from_score
from diffjax.sde import SDE

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

__all__ = ["Step", "chain", "sample", "example_keys", "prior_sample", "fold_keys", "normal_like", "tweedie_denoise",
           "sequenced", "time_dtype"]


@dataclasses.dataclass(frozen=True, eq=False)
class Step:
    """A sampler step: ``init``/``update`` as in the module docstring.

    nfe: score evaluations per update (static). sde: the process it was built for.
    moves_time: True for predictors (x goes from t to t_next), False for correctors (x stays at
    the current time). name: for messages and tables.
    """

    init: Callable[[Array], Any]
    update: Callable[..., tuple[Array, Array, Any]]
    nfe: int
    sde: SDE
    moves_time: bool = True
    name: str = "step"


def stateless_init(x: Array) -> tuple:
    """``init`` of steps that carry nothing from one update to the next."""
    return ()


def chain(*steps: Step) -> Step:
    """Compose steps into one: each update runs them in order, with the keys folded per sub-step.

    A corrector works at the current time: at t when it comes before the predictor, at t_next after
    it. ``chain(corrector, predictor)`` is the original PC sampler's order (correct, then predict);
    ``chain(predictor, corrector)`` predicts first and corrects at the new time. At most one
    predictor per chain.
    """
    if not steps:
        raise ValueError("chain needs at least one step")
    for s in steps:
        if not isinstance(s, Step):
            raise TypeError(f"chain takes diffjax.samplers.Step objects; got {type(s).__name__}")
    movers = [s.name for s in steps if s.moves_time]
    if len(movers) > 1:
        raise ValueError(f"chain takes at most one predictor (a step that moves time); got {movers}")
    sde_types = {type(s.sde).__name__ for s in steps}
    if len(sde_types) > 1:
        raise ValueError(f"chained steps must share one process; got {sorted(sde_types)}")

    def init(x):
        return tuple(s.init(x) for s in steps)

    def update(keys, x, state, t, t_next, score_fn):
        now = t
        x_mean = x
        new_state = []
        for j, (s, st) in enumerate(zip(steps, state)):
            x, x_mean, st = s.update(fold_keys(keys, j), x, st, now, t_next, score_fn)
            new_state.append(st)
            if s.moves_time:
                now = t_next
        return x, x_mean, tuple(new_state)

    return Step(
        init=init,
        update=update,
        nfe=sum(s.nfe for s in steps),
        sde=steps[0].sde,
        moves_time=bool(movers),
        name="+".join(s.name for s in steps),
    )


# ----------------------------------------------------------------------------------------------
# keys and noise


def _is_typed_key(key: Array) -> bool:
    return jax.dtypes.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key) if hasattr(key, "dtype") else False


def _key_batch_ndim(key: Array) -> int:
    """0 for a single key, 1 for a batch of keys (raw uint32 keys carry a trailing (2,) axis)."""
    return jnp.ndim(key) - (0 if _is_typed_key(key) else 1)


def example_keys(key: Array, batch_size: int) -> Array:
    """Per-example keys fold_in(key, i), i = 0..batch_size-1: example i's noise depends on key and i only."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch_size))


def fold_keys(keys: Array, data: int | Array) -> Array:
    """fold_in every per-example key with the same ``data`` (a step or sub-step index)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, data))(keys)


def normal_like(keys: Array, x: Array) -> Array:
    """Standard normal noise of x's shape, each example drawn from its own key."""
    return jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(keys)


def _per_example_keys(key: Array, batch_size: int) -> Array:
    nd = _key_batch_ndim(key)
    if nd == 0:
        return example_keys(key, batch_size)
    if nd == 1:
        if jnp.shape(key)[0] != batch_size:
            raise ValueError(f"got {jnp.shape(key)[0]} per-example keys for a batch of {batch_size}; expected one key or {batch_size}")
        return key
    raise ValueError(f"key must be one PRNG key or one per example; got shape {jnp.shape(key)}")


def prior_sample(sde: SDE, key: Array, shape, dtype=jnp.float32) -> Array:
    """x_T ~ N(0, prior_std^2 I) of ``shape`` (batch, ...), example i drawn from fold_in(key, i)
    (or from ``key[i]`` when given one key per example), so it does not depend on the batch."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be (batch, *data_dims); got {shape}")
    keys = _per_example_keys(key, shape[0])
    return sde.prior_std * jax.vmap(lambda k: jax.random.normal(k, shape[1:], dtype))(keys)


# ----------------------------------------------------------------------------------------------
# the driver


def tweedie_denoise(sde: SDE, score_fn: ScoreFn, x: Array, t: Array) -> Array:
    """The denoiser D(x, t) = E[x0 | x_t] = (x + sigma(t)^2 s(x, t)) / a(t) (Tweedie), one score
    evaluation; t of shape (batch,). Used for the final denoising step and by DDIM, EDM and DPM-Solver."""
    a, s = sde.marginal_coeffs(t)
    return x0_from_score(score_fn(x, t), x, a, s)


class _ByIdentity:
    """Hashable by identity, so functions and steps can be static jit arguments whatever they hold."""

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _ByIdentity) and other.obj is self.obj


def time_dtype(x: Array):
    """The dtype times and step coefficients are computed in for samples ``x``: float64 for float64
    data, float32 otherwise (bfloat16 or float16 samples still step with float32 coefficients)."""
    return jnp.result_type(jnp.asarray(x).dtype, jnp.float32)


def check_timesteps(timesteps: Array, sde: SDE, dtype=None) -> Array:
    """A 1-D, strictly decreasing grid inside (0, T], as ``dtype`` (default: float32, or float64 when
    the grid is float64); raises ValueError otherwise."""
    ts = jnp.asarray(timesteps)
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"timesteps must be a 1-D grid of at least 2 times, T first; got shape {ts.shape}")
    if not jnp.issubdtype(ts.dtype, jnp.floating):
        raise TypeError(f"timesteps must be floating point; got {ts.dtype}")
    if not isinstance(ts, jax.core.Tracer):
        v = np.asarray(ts, np.float64)
        if not np.all(np.isfinite(v)):
            raise ValueError("timesteps must be finite; got NaN or Inf")
        if not np.all(np.diff(v) < 0):
            raise ValueError("timesteps must be strictly decreasing (from T towards 0)")
        if v[-1] <= 0 or v[0] > sde.T * (1 + 1e-6):
            raise ValueError(f"timesteps must lie in (0, T] = (0, {sde.T}]; got [{v[-1]}, {v[0]}]; end at eps > 0")
    return ts.astype(dtype or jnp.result_type(ts.dtype, jnp.float32))


def check_x_init(x_init: Array, name: str = "x_init") -> None:
    """Raise unless ``x_init`` is a floating-point array of shape (batch, *data_dims), batch >= 1."""
    shape = jnp.shape(x_init)
    if len(shape) < 2:
        raise ValueError(f"{name} must have shape (batch, *data_dims) with at least one data dim; got {shape}")
    if shape[0] < 1:
        raise ValueError(f"{name} must hold at least one example; got shape {shape}")
    if not jnp.issubdtype(jnp.result_type(x_init), jnp.floating):
        raise TypeError(f"{name} must be floating point (float32, float64, bfloat16); got {jnp.result_type(x_init)}")


def _after(t: Array, x: Array) -> Array:
    """``t``, made to depend on ``x`` (per example, value unchanged for finite x).

    XLA:CPU runs independent parts of a program concurrently, and jaxlib 0.10's batched LAPACK kernels
    (solve, slogdet, cholesky, eigh, ... on more than ~2e5 flops of matrices) split their batch into
    tasks on the same intra-op thread pool and block until those finish. When as many such kernels
    start at once as the pool has threads (two on a 2-core machine), every thread waits for tasks no
    thread is left to run: the program hangs at 0 % CPU. A score written with ``jnp.linalg`` often
    computes such kernels from t alone, so the score evaluations of one sampler step (a corrector
    and a predictor, Heun's two stages) are independent of each other and can start together.
    Routing t through ``x`` orders every evaluation after the one that produced its input.
    ``0 * x`` is kept by XLA (it is NaN for non-finite x), and its gradient is stopped.
    """
    first = jnp.reshape(x, (jnp.shape(x)[0], -1))[:, 0]
    return t + jax.lax.stop_gradient(first * 0).astype(t.dtype)


def sequenced(score_fn: ScoreFn) -> ScoreFn:
    """``score_fn`` whose evaluations run one after the other, each after its input exists, and whose
    output is checked to have the shape of x (at trace time, so for free).

    The driver, :func:`~diffjax.samplers.ode_sample` and the likelihood wrap the user's score with
    this, so a score with batched linear algebra cannot deadlock XLA:CPU (see :func:`_after`); it
    costs one multiply-add per example and changes no value.
    """

    def score(x, t, *args, **kwargs):
        out = score_fn(x, _after(t, x), *args, **kwargs)
        if jnp.shape(out) != jnp.shape(x):
            raise ValueError(f"score_fn(x, t) returned shape {jnp.shape(out)}; expected the shape of x, {jnp.shape(x)}")
        return out

    return score


def sample(step: Step, score_fn: ScoreFn, key: Array, x_init: Array, timesteps: Array, denoise: bool = True):
    """Run ``step`` over the grid ``timesteps`` (T first, decreasing to eps) starting from ``x_init``.

    Args:
      step: a :class:`Step` (a predictor, a corrector chained with one, DDIM, Heun, DPM-Solver, ...).
      score_fn: ``score_fn(x, t) -> score`` with t of shape (batch,).
      key: one PRNG key (example i then uses fold_in(key, i)) or one key per example, shape (batch,).
        Step k folds k into every example's key, so a sample is the same alone or in any batch.
      x_init: samples at timesteps[0], shape (batch, *data_dims) (see :func:`prior_sample`).
      timesteps: shape (n + 1,): n updates, from timesteps[k] to timesteps[k + 1].
      denoise: finish with Tweedie's estimate E[x0 | x_eps] (one more score evaluation).

    Returns ``(x, nfe)``: samples of x_init's shape and the number of score evaluations (int32).
    The scan is compiled once per shape for a given (step, score_fn) pair of objects.
    """
    if not isinstance(step, Step):
        raise TypeError(f"step must be a diffjax.samplers.Step (see get_step); got {type(step).__name__}")
    if not callable(score_fn):
        raise TypeError("score_fn must be callable score_fn(x, t)")
    check_x_init(x_init)
    ts = check_timesteps(timesteps, step.sde, time_dtype(x_init))
    keys = _per_example_keys(key, jnp.shape(x_init)[0])
    x = _run(_ByIdentity(step), _ByIdentity(score_fn), bool(denoise), keys, x_init, ts)
    nfe = (ts.shape[0] - 1) * step.nfe + int(bool(denoise))
    return x, jnp.asarray(nfe, jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _run(step_box, score_box, denoise, keys, x_init, ts):
    step, score_fn = step_box.obj, sequenced(score_box.obj)
    n = x_init.shape[0]
    state0 = step.init(x_init)
    # the carry keeps its dtypes whatever precision a step computes in (float32 coefficients on
    # bfloat16 samples, float64 times with float64 samples)
    carry_types = jax.tree_util.tree_map(lambda v: jnp.result_type(v), (x_init, state0))

    def body(carry, inputs):
        x, state = carry
        k, t, t_next = inputs
        t_b = jnp.full((n,), t, ts.dtype)
        t_next_b = jnp.full((n,), t_next, ts.dtype)
        x, _, state = step.update(fold_keys(keys, k), x, state, t_b, t_next_b, score_fn)
        return jax.tree_util.tree_map(lambda v, d: jnp.asarray(v).astype(d), (x, state), carry_types), None

    steps = jnp.arange(ts.shape[0] - 1)
    (x, _), _ = jax.lax.scan(body, (x_init, state0), (steps, ts[:-1], ts[1:]))
    if denoise:
        x = tweedie_denoise(step.sde, score_fn, x, jnp.full((n,), ts[-1], ts.dtype)).astype(x_init.dtype)
    return x
