"""Per-example array helpers: a batch is an array (batch, ...) and per-example values have shape (batch,)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["expand_to", "flat", "per_example_dot", "per_example_norm", "per_example_sum", "bisect_decreasing",
           "time_dtype"]


def expand_to(v: Array, x: Array) -> Array:
    """Reshape per-example values ``v`` of shape (batch,) to broadcast against ``x`` (batch, ...)."""
    v = jnp.asarray(v)
    return jnp.reshape(v, v.shape + (1,) * (jnp.ndim(x) - v.ndim))


def flat(v: Array) -> Array:
    """``v`` (batch, ...) as (batch, d)."""
    return jnp.reshape(v, (jnp.shape(v)[0], -1))


def per_example_sum(v: Array) -> Array:
    """The sum over each example's entries, shape (batch,)."""
    return jnp.sum(flat(v), axis=1)


def per_example_dot(u: Array, v: Array) -> Array:
    """Per-example inner products <u_i, v_i>, shape (batch,)."""
    return jnp.sum(flat(u) * flat(v), axis=1)


def per_example_norm(v: Array) -> Array:
    """Per-example Euclidean norms ||v_i||, shape (batch,)."""
    return jnp.sqrt(jnp.sum(flat(v) ** 2, axis=1))


def bisect_decreasing(fn: Callable[[Array], Array], target: Array, lo: float, hi: float, iters: int) -> Array:
    """t in [lo, hi] with fn(t) = target for a decreasing fn, elementwise, by ``iters`` bisections
    (clipped to the ends when target lies outside fn's range)."""
    target = jnp.asarray(target)
    lo_v = jnp.full(target.shape, lo, target.dtype)
    hi_v = jnp.full(target.shape, hi, target.dtype)

    def body(_, bounds):
        left, right = bounds
        mid = 0.5 * (left + right)
        above = fn(mid) > target  # fn decreasing: the root lies right of mid
        return jnp.where(above, mid, left), jnp.where(above, right, mid)

    left, right = jax.lax.fori_loop(0, iters, body, (lo_v, hi_v))
    return 0.5 * (left + right)


def time_dtype(x: Array):
    """The dtype times and step coefficients are computed in for values ``x``: float64 for float64
    data, float32 otherwise (bfloat16 or float16 data still step with float32 coefficients)."""
    return jnp.result_type(jnp.asarray(x).dtype, jnp.float32)
