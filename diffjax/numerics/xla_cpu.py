"""The XLA:CPU deadlock workaround, in one place and on only where the deadlock exists.

XLA:CPU runs independent parts of a program concurrently, and jaxlib 0.10's batched LAPACK kernels
(solve, slogdet, cholesky, eigh, ... on more than ~2e5 flops of matrices) and its FFTs split their
batch into tasks on the same intra-op thread pool and block until those finish. When as many such
kernels start at once as the pool has threads (two on a 2-core machine), every thread waits for
tasks no thread is left to run: the program hangs at 0 % CPU. A score written with ``jnp.linalg``
often computes such kernels from t alone, so the score evaluations of one sampler step (a
corrector and a predictor, Heun's two stages) are independent of each other and can start together.
``tests/hang_check.py`` (and ``experiments/repro/xla_cpu_lapack_deadlock.py``) reproduce it: batch 3000, a 3-D mixture
score through ``linalg.solve``, the predictor-corrector sampler never returns without the workaround.

The workaround routes t through x (:func:`order_after`), so every evaluation starts after the one
that produced its input. It costs one multiply-add per example, but serialises a step's independent
parts (which halved a two-core machine's speed when it was always on), so it is applied only where
needed: on the CPU backend, for jaxlib versions in :data:`AFFECTED_JAXLIB`, and for functions whose
traced program holds such a kernel (:func:`needs_ordering`, by the public primitives of
``jax.lax.linalg`` and ``jax.lax.fft``).
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffjax._jit import partition

Array = jax.Array

__all__ = ["AFFECTED_JAXLIB", "workaround_active", "needs_ordering", "order_after", "BLOCKING_PRIMITIVES"]

# (first, last) jaxlib versions, inclusive, in which the deadlock was reproduced
AFFECTED_JAXLIB = ((0, 10, 0), (0, 10, 2))


def _blocking_primitives() -> frozenset:
    linalg = jax.lax.linalg
    names = ("cholesky_p", "cholesky_update_p", "eig_p", "eigh_p", "hessenberg_p", "householder_product_p", "lu_p",
             "lu_pivots_to_permutation_p", "ormqr_p", "qr_p", "schur_p", "svd_p", "triangular_solve_p",
             "tridiagonal_p", "tridiagonal_solve_p")
    found = {getattr(linalg, n) for n in names if hasattr(linalg, n)}
    if hasattr(jax.lax, "fft_p"):
        found.add(jax.lax.fft_p)
    return frozenset(found)


BLOCKING_PRIMITIVES = _blocking_primitives()
"""The primitives that lower to LAPACK or ducc FFT kernels blocking on XLA:CPU's intra-op pool."""


def _version(text: str) -> tuple:
    out = []
    for part in text.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _affected_jaxlib() -> bool:
    import jaxlib

    lo, hi = AFFECTED_JAXLIB
    return lo <= _version(jaxlib.__version__) <= hi


def workaround_active() -> bool:
    """Whether the ordering is applied: the default backend is the CPU and jaxlib is an affected version."""
    return jax.default_backend() == "cpu" and _affected_jaxlib()


def order_after(t: Array, x: Array) -> Array:
    """``t``, made to depend on ``x`` (per example, value unchanged for finite x): an evaluation taking
    (x, t) then starts after whatever produced x. ``0 * x`` is kept by XLA (it is NaN for non-finite
    x) and its gradient is stopped."""
    first = jnp.reshape(x, (jnp.shape(x)[0], -1))[:, 0]
    return t + jax.lax.stop_gradient(first * 0).astype(t.dtype)


def _holds_blocking(jaxpr) -> bool:
    """Whether a jaxpr (sub-jaxprs of jit, cond, scan, custom derivatives included) holds a primitive
    of :data:`BLOCKING_PRIMITIVES`."""
    for eqn in jaxpr.eqns:
        if eqn.primitive in BLOCKING_PRIMITIVES:
            return True
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns") and _holds_blocking(inner):
                    return True
    return False


_ANSWERS: "collections.OrderedDict" = collections.OrderedDict()


def needs_ordering(fn: Callable, *args: Any, **kwargs: Any) -> bool:
    """Whether ``fn(*args, **kwargs)`` must be ordered: the workaround is active and the function's
    program computes batched linear algebra or FFTs. The function is traced once more to look (no
    compilation); the answer is remembered per function structure and argument shapes, so a network
    is looked at once per compile."""
    if not workaround_active():
        return False
    static, arrays = partition((fn, args, kwargs))
    key = (static, tuple((jnp.shape(a), jnp.result_type(a)) for a in arrays))
    try:
        hash(key)
    except TypeError:  # an unhashable static part: look without remembering
        key = None
    if key is not None and key in _ANSWERS:
        _ANSWERS.move_to_end(key)
        return _ANSWERS[key]
    answer = _holds_blocking(jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args).jaxpr)
    if key is not None:
        _ANSWERS[key] = answer
        if len(_ANSWERS) > 32:  # small: a closure in the key keeps what it captured alive
            _ANSWERS.popitem(last=False)
    return answer
