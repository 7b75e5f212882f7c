"""The sampler transform form, its composition and the one driver that runs any step.

A *step* moves a batch of samples x from time t to t_next (a predictor) or refines it at the
current time (a corrector). It is a value with two pure methods

    init(x) -> state
    update(keys, x, state, t, t_next, score_fn) -> (x, x_mean, state)

where ``keys`` holds one PRNG key per example (shape (batch,)), ``t`` and ``t_next`` have shape
(batch,), and ``x_mean`` is the update without its final injected noise. ``chain(a, b)`` runs a
then b inside one step; :func:`sample` runs any step over a decreasing time grid with
``lax.scan``.

Steps are frozen dataclasses registered as pytrees: the process (and any arrays, such as the known
data of inpainting) are children, hyper-parameters are static. Two steps built alike are equal and
hash alike, so the driver's compile cache (see :mod:`diffjax._jit`) hits for a step built anew on
every call; a step holding new arrays of the same shapes does not recompile either.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import check_fields, check_finite_input, describe
from diffjax._jit import _partition, filter_jit
from diffjax.results import SampleResult, no_nonfinite, raise_if_nonfinite, update_nonfinite
from diffjax.score import x0_from_score
from diffjax.sde import SDE

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

__all__ = ["Step", "Wrapper", "Chain", "FunctionStep", "chain", "custom_step", "step_class", "static_field", "sample",
           "example_keys", "prior_sample", "fold_keys", "normal_like", "tweedie_denoise", "sequenced", "time_dtype",
           "with_num_steps"]


def static_field(default=dataclasses.MISSING, **kwargs):
    """A hyper-parameter of a step: part of its pytree structure (compared by value), never traced."""
    return dataclasses.field(default=default, metadata={"static": True}, **kwargs)


def step_class(cls):
    """Decorator: ``cls`` as a frozen dataclass and a pytree whose :func:`static_field` fields are
    static and whose other fields (the process, arrays, inner steps) are children. Its hyper-parameters
    are checked against their declared types before its own ``__post_init__`` runs (a string where a
    number belongs, a non-finite number, a process class instead of an instance: one-line errors)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    own = cls.__post_init__
    if not getattr(own, "_fields_checked_first", False):
        @functools.wraps(own)
        def __post_init__(self):
            _check_step_fields(self)
            own(self)

        __post_init__._fields_checked_first = True
        cls.__post_init__ = __post_init__
    fields = dataclasses.fields(cls)
    jax.tree_util.register_dataclass(
        cls,
        data_fields=[f.name for f in fields if not f.metadata.get("static")],
        meta_fields=[f.name for f in fields if f.metadata.get("static")],
    )
    return cls


def _check_step_fields(step) -> None:
    check_fields(step)
    for f in dataclasses.fields(step):
        value = getattr(step, f.name)
        if isinstance(value, type) and issubclass(value, SDE):
            raise TypeError(f"{type(step).__name__}: {f.name} must be a process instance such as {value.__name__}(); "
                            f"got the class {value.__name__}")
    sde = getattr(step, "sde", None) if "sde" in {f.name for f in dataclasses.fields(step)} else None
    if sde is not None and not isinstance(sde, SDE):
        raise TypeError(f"{type(step).__name__}: sde must be a diffjax process (VPSDE(), EDM(), ...); "
                        f"got {describe(sde)}")


class Step:
    """Base of sampler steps (see the module docstring). A subclass is a :func:`step_class` with a
    field ``sde`` (the process) and implements ``update``, and ``init`` when it carries state.

    Attributes: ``nfe`` (score evaluations per update), ``moves_time`` (True for predictors, False
    for correctors that stay at the current time) and ``name`` (for messages and tables).
    """

    nfe = 1
    moves_time = True
    name = "step"
    # injects noise (needs a Gaussian perturbation kernel); deterministic steps set False
    stochastic = True

    def __post_init__(self):
        sde = getattr(self, "sde", None)
        if self.stochastic and isinstance(sde, SDE):
            sde.require_gaussian(f"the stochastic step {self.name}")

    def init(self, x: Array) -> Any:
        return ()

    def with_num_steps(self, n: int) -> "Step":
        """This step told that its grid has ``n`` updates: multistep steps with ``lower_order_final``
        and no ``num_steps`` of their own take it (the driver calls this); others are unchanged."""
        if getattr(self, "lower_order_final", False) and getattr(self, "num_steps", 0) is None:
            return dataclasses.replace(self, num_steps=int(n))
        return self

    def update(self, keys, x, state, t, t_next, score_fn):
        raise NotImplementedError


class Wrapper(Step):
    """Base of steps that wrap another step (a :func:`step_class` with a field ``step``): the process,
    NFE, whether time moves, whether noise is injected and the grid length are the wrapped step's."""

    def __post_init__(self):
        if not isinstance(self.step, Step):
            raise TypeError(f"{type(self).__name__} wraps a diffjax.samplers.Step; got {type(self.step).__name__}")

    @property
    def sde(self) -> SDE:
        return self.step.sde

    @property
    def nfe(self) -> int:
        return self.step.nfe

    @property
    def moves_time(self) -> bool:
        return self.step.moves_time

    @property
    def stochastic(self) -> bool:
        return self.step.stochastic

    def with_num_steps(self, n: int) -> "Wrapper":
        return dataclasses.replace(self, step=with_num_steps(self.step, n))


@step_class
class FunctionStep(Step):
    """A step from two functions ``init_fn(x)`` and ``update_fn(keys, x, state, t, t_next, score_fn)``
    (see :func:`custom_step`). The functions are static, compared by identity: define them once."""

    sde: SDE
    init_fn: Callable = static_field()
    update_fn: Callable = static_field()
    nfe: int = static_field(1)
    moves_time: bool = static_field(True)
    name: str = static_field("step")
    stochastic = False  # the user's own step: not second-guessed

    def init(self, x):
        return self.init_fn(x)

    def update(self, keys, x, state, t, t_next, score_fn):
        return self.update_fn(keys, x, state, t, t_next, score_fn)


def stateless_init(x: Array) -> tuple:
    """``init`` of steps that carry nothing from one update to the next."""
    return ()


def custom_step(update: Callable, sde: SDE, *, init: Callable = stateless_init, nfe: int = 1,
                moves_time: bool = True, name: str = "step") -> FunctionStep:
    """A step of your own from ``update(keys, x, state, t, t_next, score_fn) -> (x, x_mean, state)``
    (and ``init(x) -> state``): ``nfe`` score evaluations per update; ``moves_time`` False for a
    corrector. Define the functions once (at module level): they key the compile cache by identity."""
    if not callable(update) or not callable(init):
        raise TypeError("custom_step needs callable update(keys, x, state, t, t_next, score_fn) and init(x)")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a diffjax process; got {type(sde).__name__}")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 0:
        raise ValueError(f"nfe must be an integer >= 0; got {nfe!r}")
    return FunctionStep(sde, init, update, nfe, bool(moves_time), str(name))


@step_class
class Chain(Step):
    """Steps run in order inside one update, with the keys folded per sub-step (see :func:`chain`)."""

    steps: tuple
    stochastic = False  # each chained step checked itself

    def __post_init__(self):
        if not self.steps:
            raise ValueError("chain needs at least one step")
        for s in self.steps:
            if not isinstance(s, Step):
                raise TypeError(f"chain takes diffjax.samplers.Step objects; got {type(s).__name__}")
        movers = [s.name for s in self.steps if s.moves_time]
        if len(movers) > 1:
            raise ValueError(f"chain takes at most one predictor (a step that moves time); got {movers}")
        sde_types = {type(s.sde).__name__ for s in self.steps}
        if len(sde_types) > 1:
            raise ValueError(f"chained steps must share one process; got {sorted(sde_types)}")

    @property
    def sde(self) -> SDE:
        return self.steps[0].sde

    @property
    def nfe(self) -> int:
        return sum(s.nfe for s in self.steps)

    @property
    def moves_time(self) -> bool:
        return any(s.moves_time for s in self.steps)

    @property
    def name(self) -> str:
        return "+".join(s.name for s in self.steps)

    def init(self, x):
        return tuple(s.init(x) for s in self.steps)

    def update(self, keys, x, state, t, t_next, score_fn):
        now = t
        x_mean = x
        new_state = []
        for j, (s, st) in enumerate(zip(self.steps, state)):
            x, x_mean, st = s.update(fold_keys(keys, j), x, st, now, t_next, score_fn)
            new_state.append(st)
            if s.moves_time:
                now = t_next
        return x, x_mean, tuple(new_state)


def with_num_steps(step: Step, n: int) -> Step:
    """``step`` told the length ``n`` of the grid it runs on, where it asks (multistep solvers lower
    their order on the last updates, ``lower_order_final``); the driver calls this."""
    if isinstance(step, Chain):
        return Chain(tuple(with_num_steps(s, n) for s in step.steps))
    return step.with_num_steps(n)


def chain(*steps: Step) -> Chain:
    """Compose steps into one: each update runs them in order, with the keys folded per sub-step.

    A corrector works at the current time: at t when it comes before the predictor, at t_next after
    it. ``chain(corrector, predictor)`` is the original PC sampler's order (correct, then predict);
    ``chain(predictor, corrector)`` predicts first and corrects at the new time. At most one
    predictor per chain.
    """
    return Chain(tuple(steps))


# ----------------------------------------------------------------------------------------------
# keys and noise


def _is_typed_key(key: Array) -> bool:
    return jax.dtypes.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key) if hasattr(key, "dtype") else False


def _key_batch_ndim(key: Array) -> int:
    """0 for a single key, 1 for a batch of keys (raw uint32 keys carry a trailing (2,) axis)."""
    return jnp.ndim(key) - (0 if _is_typed_key(key) else 1)


@functools.partial(jax.jit, static_argnums=1)
def example_keys(key: Array, batch_size: int) -> Array:
    """Per-example keys fold_in(key, i), i = 0..batch_size-1: example i's noise depends on key and i only.

    Compiled once per batch size: run eagerly, the vmapped fold_in cost about 2 ms of dispatch per
    call, more than a whole two-dimensional likelihood solve."""
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


def check_shape(shape) -> tuple:
    """``shape`` as a tuple (batch, *data_dims) of positive ints; a one-line error for an int or a short one."""
    if isinstance(shape, (int, np.integer)) or not isinstance(shape, (tuple, list)):
        raise TypeError(f"shape must be a tuple (batch, *data_dims), e.g. (512, 2); got {describe(shape)}")
    if len(shape) < 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
                                 for v in shape):
        raise ValueError(f"shape must be (batch, *data_dims) of positive integers, e.g. (512, 2); got {tuple(shape)}")
    return tuple(int(v) for v in shape)


def prior_sample(sde: SDE, key: Array, shape, dtype=jnp.float32) -> Array:
    """x_T from the process's prior (N(0, prior_std^2 I), or PFGM++'s heavy-tailed one) of ``shape``
    (batch, ...), example i drawn from fold_in(key, i)
    (or from ``key[i]`` when given one key per example), so it does not depend on the batch."""
    shape = check_shape(shape)
    if not isinstance(sde, SDE):
        raise TypeError(f"prior_sample(sde, key, shape) takes a process instance first; got {describe(sde)}")
    keys = _per_example_keys(key, shape[0])
    return jax.vmap(lambda k: sde.prior_example(k, shape[1:], dtype))(keys)


# ----------------------------------------------------------------------------------------------
# the driver


def tweedie_denoise(sde: SDE, score_fn: ScoreFn, x: Array, t: Array) -> Array:
    """The denoiser D(x, t) = E[x0 | x_t] = (x + sigma(t)^2 s(x, t)) / a(t) (Tweedie), one score
    evaluation; t of shape (batch,). Used for the final denoising step and by DDIM, EDM and DPM-Solver."""
    a, s = sde.marginal_coeffs(t)
    return x0_from_score(score_fn(x, t), x, a, s)


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
    """Raise unless ``x_init`` is a floating-point array of shape (batch, *data_dims), batch >= 1,
    with finite values (when concrete)."""
    shape = jnp.shape(x_init)
    if len(shape) < 2:
        raise ValueError(f"{name} must have shape (batch, *data_dims) with at least one data dim; got {shape}")
    if shape[0] < 1:
        raise ValueError(f"{name} must hold at least one example; got shape {shape}")
    if not jnp.issubdtype(jnp.result_type(x_init), jnp.floating):
        raise TypeError(f"{name} must be floating point (float32, float64, bfloat16); got {jnp.result_type(x_init)}")
    check_finite_input(name, x_init)


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


# primitives that lower to LAPACK (or ducc FFT) kernels which block on XLA:CPU's intra-op pool
_BLOCKING_PRIMITIVES = frozenset({
    "cholesky", "lu", "lu_pivots_to_permutation", "eigh", "eig", "qr", "geqrf", "geqp3", "householder_product",
    "svd", "triangular_solve", "schur", "hessenberg", "tridiagonal", "tridiagonal_solve", "fft",
})


def _uses_blocking_kernels(jaxpr) -> bool:
    """Whether a jaxpr (sub-jaxprs of jit, cond, scan, custom derivatives included) holds a primitive
    of :data:`_BLOCKING_PRIMITIVES`."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in _BLOCKING_PRIMITIVES:
            return True
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns") and _uses_blocking_kernels(inner):
                    return True
    return False


_ORDERING_CACHE: "collections.OrderedDict" = collections.OrderedDict()


def needs_ordering(fn, *args, **kwargs) -> bool:
    """Whether ``fn(*args, **kwargs)`` computes batched linear algebra or FFTs, the kernels that can
    deadlock XLA:CPU when independent ones start together (see :func:`_after`). Traced once more to
    look (no compilation); any failure to trace answers True, the safe side.

    The answer is remembered per function structure and argument shapes (as filter_jit keys its
    programs: array leaves by shape and dtype, everything else by value), so a network is traced
    once more per compile, not once per score call in it."""
    try:
        static, arrays = _partition((fn, args, kwargs))
        key = (static, tuple((jnp.shape(a), jnp.result_type(a)) for a in arrays))
        hash(key)
    except Exception:  # noqa: BLE001 - an unhashable static part: look without remembering
        key = None
    if key is not None and key in _ORDERING_CACHE:
        _ORDERING_CACHE.move_to_end(key)
        return _ORDERING_CACHE[key]
    try:
        answer = _uses_blocking_kernels(jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args).jaxpr)
    except Exception:  # noqa: BLE001 - e.g. a function that cannot be traced twice: keep the ordering
        answer = True
    if key is not None:
        _ORDERING_CACHE[key] = answer
        if len(_ORDERING_CACHE) > 32:  # small: a closure in the key keeps what it captured alive
            _ORDERING_CACHE.popitem(last=False)
    return answer


def sequenced(score_fn: ScoreFn, name: str = "score_fn", per_example: bool = False) -> ScoreFn:
    """``score_fn`` whose evaluations run one after the other, each after its input exists, when it
    uses batched linear algebra, and whose output is checked to have the shape of x (at trace time,
    so for free), or with ``per_example`` to have one value per example, shape (batch,) (a
    divergence); ``name`` names the function in that error.

    The driver, :func:`~diffjax.samplers.ode_sample` and the likelihood wrap the user's score with
    this, so a score with batched linear algebra cannot deadlock XLA:CPU (see :func:`_after`); it
    costs one multiply-add per example and changes no value. A score without such kernels (a
    network, a mixture with precomputed eigenpairs) is left unordered: ordering serialises the
    independent parts of a step, which XLA:CPU otherwise runs on its threads at once, and cost a
    two-core machine about half the speed of a likelihood solve.
    """

    def score(x, t, *args, **kwargs):
        if needs_ordering(score_fn, x, t, *args, **kwargs):
            t = _after(t, x)
        out = score_fn(x, t, *args, **kwargs)
        if per_example and jnp.shape(out) != jnp.shape(x)[:1]:
            raise ValueError(f"{name} must return one value per example, shape {jnp.shape(x)[:1]}; "
                             f"got {jnp.shape(out)}")
        if not per_example and jnp.shape(out) != jnp.shape(x):
            raise ValueError(f"{name}(x, t) returned shape {jnp.shape(out)}; expected the shape of x, {jnp.shape(x)}")
        return out

    return score


def sample(step: Step, score_fn: ScoreFn, key: Array, x_init: Array, timesteps: Array, denoise: bool = True, *,
           check_finite: bool = True) -> SampleResult:
    """Run ``step`` over the grid ``timesteps`` (T first, decreasing to eps) starting from ``x_init``.

    Args:
      step: a :class:`Step` (a predictor, a corrector chained with one, DDIM, Heun, DPM-Solver, ...).
      score_fn: ``score_fn(x, t) -> score`` with t of shape (batch,).
      key: one PRNG key (example i then uses fold_in(key, i)) or one key per example, shape (batch,).
        Step k folds k into every example's key, so a sample is the same alone or in any batch.
      x_init: samples at timesteps[0], shape (batch, *data_dims) (see :func:`prior_sample`).
      timesteps: shape (n + 1,): n updates, from timesteps[k] to timesteps[k + 1].
      denoise: finish with Tweedie's estimate E[x0 | x_eps] (one more score evaluation).
      check_finite: outside a jit of yours, raise :class:`~diffjax.results.NonFiniteError` when an
        example became NaN or Inf (see :mod:`diffjax.results`).

    Returns a :class:`~diffjax.results.SampleResult`: ``.x`` (x_init's shape), ``.nfe`` (batch,) score
    evaluations per example, ``.nonfinite_step`` / ``.finite`` per example.

    Compiled once per shapes, dtypes and static values: ``step`` and ``score_fn`` may be built anew
    on every call. A score function's arrays are traced when it is a pytree, e.g.
    ``jax.tree_util.Partial(score_model, params)`` (what :func:`diffjax.score.make_score_fn`
    returns), an Equinox module or a :class:`diffjax.GaussianMixture` score; a plain closure is
    keyed by identity, so a new closure (over new parameters, say) compiles anew.
    """
    if not isinstance(step, Step):
        raise TypeError(f"step must be a diffjax.samplers.Step (see get_step); got {type(step).__name__}")
    if not callable(score_fn):
        raise TypeError("score_fn must be callable score_fn(x, t)")
    check_x_init(x_init)
    ts = check_timesteps(timesteps, step.sde, time_dtype(x_init))
    keys = _per_example_keys(key, jnp.shape(x_init)[0])
    step = with_num_steps(step, ts.shape[0] - 1)
    x, record = _run(step, score_fn, bool(denoise), keys, x_init, ts)
    nfe = (ts.shape[0] - 1) * step.nfe + int(bool(denoise))
    result = SampleResult(x, jnp.full(jnp.shape(x_init)[:1], nfe, jnp.int32), record)
    raise_if_nonfinite(result, "sample", check_finite, steps=ts)
    return result


@filter_jit
def _run(step, score_fn, denoise, keys, x_init, ts):
    score_fn = sequenced(score_fn)
    x, _, record = scan_steps(step, score_fn, keys, x_init, ts)
    if denoise:
        n = x_init.shape[0]
        x = tweedie_denoise(step.sde, score_fn, x, jnp.full((n,), ts[-1], ts.dtype)).astype(x_init.dtype)
        record = update_nonfinite(record, ts.shape[0] - 1, x)
    return x, record


def scan_steps(step, score_fn, keys, x_init, ts, watch=None):
    """The driver's loop (traced, not jitted): ``step`` over the grid ``ts`` with ``lax.scan``, step k
    folding k into every example's key; returns (x, the step's final state, the per-example record of
    the first update that made x, or ``watch(state)`` (per-example arrays), NaN or Inf, -1 if none).
    The carry keeps its dtypes whatever precision a step computes in (float32 coefficients on
    bfloat16 samples, float64 times with float64 samples)."""
    n = x_init.shape[0]
    state0 = step.init(x_init)
    carry_types = jax.tree_util.tree_map(lambda v: jnp.result_type(v), (x_init, state0))

    def body(carry, inputs):
        x, state, record = carry
        k, t, t_next = inputs
        t_b = jnp.full((n,), t, ts.dtype)
        t_next_b = jnp.full((n,), t_next, ts.dtype)
        x, _, state = step.update(fold_keys(keys, k), x, state, t_b, t_next_b, score_fn)
        x, state = jax.tree_util.tree_map(lambda v, d: jnp.asarray(v).astype(d), (x, state), carry_types)
        watched = () if watch is None else jax.tree_util.tree_leaves(watch(state))
        return (x, state, update_nonfinite(record, k, x, *watched)), None

    steps = jnp.arange(ts.shape[0] - 1)
    (x, state, record), _ = jax.lax.scan(body, (x_init, state0, no_nonfinite(n)), (steps, ts[:-1], ts[1:]))
    return x, state, record
