"""What the entry points return: named results (pytrees), and the one rule for non-finite values.

Every sampler, density and likelihood entry point returns a result with named fields (``.x``,
``.nfe``, ``.logp`` ...) rather than a tuple, each a pytree that passes through ``jax.jit``,
``vmap`` and ``grad``. ``nfe`` always has one entry per example (shape (batch,)).

Non-finite values, one behaviour everywhere:

1. Concrete inputs are checked on entry: an ``x_init`` or data batch holding NaN or Inf is a
   one-line ValueError naming how many examples.
2. The entry points record, per example, the first step at which its state became NaN or Inf
   (``nonfinite_step``, -1 for an example that stayed finite; ``finite`` is ``nonfinite_step < 0``).
   A fixed-grid sampler counts its updates from 0 (the final denoising is update n); an adaptive
   solve counts its attempted steps.
3. Called outside a ``jax.jit`` of yours (concrete arguments), an entry point whose result has a
   non-finite example raises :class:`NonFiniteError` (a ValueError), one line saying how many
   examples, from which step and where; ``check_finite=False`` returns the result instead.
   Inside your jit nothing can be raised: read ``result.finite`` (or ``nonfinite_step``), e.g.
   ``jnp.all(result.finite)``, or wrap the call in ``jax.experimental.checkify`` yourself.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import is_traced

Array = jax.Array

__all__ = ["NonFiniteError", "SampleResult", "DensityResult", "LikelihoodResult", "BitsResult",
           "SuperpositionResult", "first_nonfinite", "update_nonfinite", "no_nonfinite", "raise_if_nonfinite"]


class NonFiniteError(ValueError):
    """A computation produced NaN or Inf for some examples (see the module docstring)."""


class _Result:
    """Shared behaviour: ``finite``, and a clear error for the tuple unpacking of diffjax 0.1."""

    @property
    def finite(self) -> Array:
        """Per example: True if it stayed finite throughout (shape (batch,))."""
        return self.nonfinite_step < 0

    def __iter__(self):
        names = ", ".join(f".{f.name}" for f in dataclasses.fields(self) if f.name not in ("nonfinite_step",
                                                                                               "trajectory"))
        raise TypeError(f"{type(self).__name__} is not a tuple; read its fields {names} (diffjax 0.2 replaced "
                        "the returned tuples by named results)")


def _result(cls):
    cls = dataclasses.dataclass(frozen=True)(cls)
    jax.tree_util.register_dataclass(cls, data_fields=[f.name for f in dataclasses.fields(cls)], meta_fields=[])
    return cls


@_result
class SampleResult(_Result):
    """``x``: samples (batch, ...); ``nfe``: score evaluations per example (batch,) int32;
    ``nonfinite_step``: per example the first update at which x became NaN/Inf, -1 if none (batch,);
    ``trajectory``: x at every grid time (n + 1, batch, ...) when the sampler was asked for it, else None."""

    x: Array
    nfe: Array
    nonfinite_step: Array
    trajectory: Optional[Array] = None


@_result
class DensityResult(_Result):
    """``x``: samples at the grid's end (batch, ...); ``logp``: the estimated log-density of each at
    that time (batch,), nats; ``nfe`` (batch,); ``nonfinite_step`` (batch,) as :class:`SampleResult`."""

    x: Array
    logp: Array
    nfe: Array
    nonfinite_step: Array


@_result
class LikelihoodResult(_Result):
    """``logp``: log-density of each example (batch,), nats; ``z``: its latent x(T) (shape of x);
    ``nfe``: evaluations of the augmented field per example (batch,); ``nonfinite_step``: the
    attempted step at which the example's solve became NaN/Inf (or ran out of ``max_steps``), -1 if none."""

    logp: Array
    z: Array
    nfe: Array
    nonfinite_step: Array


@_result
class BitsResult(_Result):
    """``bpd``: bits per dimension of each example (batch,); ``nfe`` (batch,), summed over
    dequantisation draws; ``nonfinite_step`` (batch,) of the first draw that failed, -1 if none."""

    bpd: Array
    nfe: Array
    nonfinite_step: Array


@_result
class SuperpositionResult(_Result):
    """``x``: samples (batch, ...); ``logp``: each model's tracked log-density of each sample (M, batch);
    ``kappa``: the last step's weights (M, batch); ``nfe`` (batch,); ``nonfinite_step`` (batch,)."""

    x: Array
    logp: Array
    kappa: Array
    nfe: Array
    nonfinite_step: Array


def first_nonfinite(*arrays: Array) -> Array:
    """Per example, True where any of ``arrays`` (each (batch, ...) or (batch,)) holds NaN or Inf."""
    bad = None
    for a in arrays:
        a = jnp.asarray(a)
        if not jnp.issubdtype(a.dtype, jnp.inexact):
            continue
        b = ~jnp.all(jnp.isfinite(jnp.reshape(a, (a.shape[0], -1))), axis=1)
        bad = b if bad is None else bad | b
    return bad


def update_nonfinite(record: Array, step, *arrays: Array) -> Array:
    """``record`` (batch,) int32 with ``step`` set where an example first turns non-finite in ``arrays``."""
    bad = first_nonfinite(*arrays)
    return jnp.where((record < 0) & bad, jnp.asarray(step, record.dtype), record)


def no_nonfinite(batch: int) -> Array:
    """The record of a batch that has stayed finite: -1 per example."""
    return jnp.full((batch,), -1, jnp.int32)


def raise_if_nonfinite(result, where: str, check: bool, steps: Optional[Array] = None, what: str = "update",
                       max_steps: Optional[int] = None) -> None:
    """Raise :class:`NonFiniteError` (one line) if ``check``, the result is concrete (the call was not
    traced by a jit of the user's) and some example of it is non-finite; ``steps`` (the time grid)
    names the times of a fixed-grid update, ``max_steps`` an adaptive solve's budget."""
    if not check or any(is_traced(v) for v in jax.tree_util.tree_leaves(result)):
        return
    record = np.asarray(result.nonfinite_step)
    bad = record >= 0
    if not bad.any():
        return
    first = int(record[bad].min())
    when = f"{what} {first}"
    if steps is not None and not is_traced(steps):
        steps = np.asarray(steps)
        when += (f" (t {float(steps[first]):.4g} -> {float(steps[first + 1]):.4g})" if first + 1 < len(steps)
                 else " (the final denoising)")
    if max_steps is not None and first >= max_steps:
        raise NonFiniteError(f"{where}: {int(bad.sum())} of {bad.size} examples did not finish within max_steps = "
                             f"{max_steps} (example {int(np.argmax(record == first))}): the score function returned "
                             "NaN/Inf along the way, or the tolerances need more steps; their values are NaN. "
                             "check_finite=False returns the values anyway")
    raise NonFiniteError(f"{where}: {int(bad.sum())} of {bad.size} examples became NaN or Inf, the first at {when} "
                         f"(example {int(np.argmax(record == first))}); the score function returned NaN/Inf there or "
                         "the step diverged. check_finite=False returns the values anyway")
