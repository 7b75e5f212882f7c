"""The sampler transform form and its composition.

A *step* moves a batch of samples x from time t to t_next (a predictor) or refines it at the
current time (a corrector). It is a value with two pure methods

    init(x) -> state
    update(keys, x, state, t, t_next, score_fn) -> (x, state)

where ``keys`` holds one PRNG key per example (shape (batch,)) and ``t``, ``t_next`` have shape
(batch,). ``chain(a, b)`` runs a then b inside one step; :func:`diffjax.samplers.sample` (the one
driver, :mod:`diffjax.samplers.driver`) runs any step over a decreasing time grid with ``lax.scan``.

A step declares what it is, and the driver and the transforms read only these declarations:

    nfe               score evaluations per update
    moves_time        a predictor (True) or a corrector that stays at t (False)
    stochastic        injects noise (then its process must have a Gaussian kernel)
    forward_noise     its noise has the forward process's own variance g^2 dt (the Itô density
                      estimator's condition)
    needs_grid_length the driver tells it the grid's length (:meth:`Step.with_num_steps`), for a
                      lower order on the last updates
    denoise_nfe       score evaluations of its final denoising (:meth:`Step.denoise`: Tweedie's)

Steps are frozen dataclasses registered as pytrees (:func:`step_class`): the process (and any
arrays, such as the known data of inpainting) are children, hyper-parameters are static. Two steps
built alike are equal and hash alike, so the driver's compile cache (see :mod:`diffjax._jit`) hits
for a step built anew on every call; a step holding new arrays of the same shapes does not
recompile either.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import check_fields, check_int, describe
from diffjax.numerics.random import example_keys, fold_keys, normal_like, per_example_keys
from diffjax.processes import SDE
from diffjax.score import x0_from_score

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

__all__ = ["Step", "Wrapper", "Chain", "FunctionStep", "chain", "custom_step", "step_class", "static_field",
           "with_num_steps", "example_keys", "per_example_keys", "fold_keys", "normal_like", "prior_sample",
           "check_shape", "tweedie_denoise"]


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
    names = {f.name for f in dataclasses.fields(step)}
    for name in names:
        value = getattr(step, name)
        if isinstance(value, type) and issubclass(value, SDE):
            raise TypeError(f"{type(step).__name__}: {name} must be a process instance such as {value.__name__}(); "
                            f"got the class {value.__name__}")
    if "sde" in names and not isinstance(step.sde, SDE):
        raise TypeError(f"{type(step).__name__}: sde must be a diffjax process (VPSDE(), EDM(), ...); "
                        f"got {describe(step.sde)}")


class Step:
    """Base of sampler steps (see the module docstring). A subclass is a :func:`step_class` with a
    field ``sde`` (the process) and implements ``update``, and ``init`` when it carries state."""

    nfe = 1
    moves_time = True
    name = "step"
    stochastic = True        # injects noise; deterministic steps set False
    forward_noise = False    # the noise is the forward process's own g^2 dt (see the module docstring)
    needs_grid_length = False
    denoise_nfe = 1

    def __post_init__(self):
        if self.stochastic and isinstance(getattr(self, "sde", None), SDE):
            self.sde.require_gaussian(f"the stochastic step {self.name}")

    def init(self, x: Array) -> Any:
        return ()

    def with_num_steps(self, n: int) -> "Step":
        """This step told that its grid has ``n`` updates: a step that ``needs_grid_length`` and has no
        ``num_steps`` of its own takes it (the driver calls this); others are unchanged."""
        if self.needs_grid_length and self.num_steps is None:
            return dataclasses.replace(self, num_steps=int(n))
        return self

    def update(self, keys, x, state, t, t_next, score_fn):
        raise NotImplementedError

    def denoise(self, x: Array, state: Any, t: Array, score_fn) -> Array:
        """The driver's final denoising at the grid's last time t (batch,): Tweedie's E[x0 | x_t]."""
        return tweedie_denoise(self.sde, score_fn, x, t)


class Wrapper(Step):
    """Base of steps that wrap another step (a :func:`step_class` with a field ``step``): the process,
    every declaration and the grid length are the wrapped step's."""

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

    @property
    def forward_noise(self) -> bool:
        return self.step.forward_noise

    def with_num_steps(self, n: int) -> "Wrapper":
        return dataclasses.replace(self, step=with_num_steps(self.step, n))


@step_class
class FunctionStep(Step):
    """A step from two functions ``init_fn(x)`` and ``update_fn(sde, keys, x, state, t, t_next, score_fn)``
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
        return self.update_fn(self.sde, keys, x, state, t, t_next, score_fn)


def _no_state(x: Array) -> tuple:
    return ()


def custom_step(update: Callable, sde: SDE, *, init: Callable = _no_state, nfe: int = 1,
                moves_time: bool = True, name: str = "step") -> FunctionStep:
    """A step of your own from ``update(sde, keys, x, state, t, t_next, score_fn) -> (x, state)`` (and
    ``init(x) -> state``, default no state): ``nfe`` score evaluations per update; ``moves_time``
    False for a corrector. Define the functions once (at module level): they key the compile cache by
    identity."""
    if not callable(update) or not callable(init):
        raise TypeError("custom_step needs callable update(sde, keys, x, state, t, t_next, score_fn) and init(x)")
    if not isinstance(sde, SDE):
        raise TypeError(f"custom_step needs a process instance; got {describe(sde)}")
    check_int("custom_step", "nfe", nfe, lo=0)
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

    def with_num_steps(self, n: int) -> "Chain":
        return Chain(tuple(with_num_steps(s, n) for s in self.steps))

    def update(self, keys, x, state, t, t_next, score_fn):
        now = t
        new_state = []
        for j, (s, st) in enumerate(zip(self.steps, state)):
            x, st = s.update(fold_keys(keys, j), x, st, now, t_next, score_fn)
            new_state.append(st)
            if s.moves_time:
                now = t_next
        return x, tuple(new_state)


def with_num_steps(step: Step, n: int) -> Step:
    """``step`` told the length ``n`` of the grid it runs on, where it asks (multistep solvers lower
    their order on the last updates); the driver calls this."""
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
# the prior


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
    keys = per_example_keys(key, shape[0])
    return jax.vmap(lambda k: sde.prior_example(k, shape[1:], dtype))(keys)


def tweedie_denoise(sde: SDE, score_fn: ScoreFn, x: Array, t: Array) -> Array:
    """The denoiser D(x, t) = E[x0 | x_t] = (x + sigma(t)^2 s(x, t)) / a(t) (Tweedie), one score
    evaluation; t of shape (batch,). Used for the final denoising step and by DDIM, EDM and DPM-Solver."""
    a, s = sde.marginal_coeffs(t)
    return x0_from_score(score_fn(x, t), x, a, s)
