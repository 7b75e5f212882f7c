"""Brownian paths that do not depend on the time grid: a virtual Brownian tree per example.

A stochastic sampler that draws fresh normal noise per update gives a different path for every grid,
so refining the grid (N -> 2N updates) does not refine *the same* sample, and strong convergence
cannot be measured. Here W(t) on [0, T] is a function of (key, t): W(T) = sqrt(T) z_root, and each
midpoint of a dyadic interval [l, r] is drawn from the Brownian bridge,

    W(m) = (W(l) + W(r)) / 2 + sqrt((r - l) / 4) z_node,        m = (l + r) / 2,

with z_node = N(0, I) from fold_in(key, node) (node: the heap index of the interval). A query descends
``depth`` levels towards t and ends with the bridge from the final interval to t itself (its normal
drawn from the leaf and t's bits). So W at a time is the same whatever grid asks for it, increments
over disjoint intervals are independent N(0, (t1 - t0) I), and a grid of N and one of 2N updates on
the same key see one path (Li et al. 2020's virtual Brownian tree; diffrax has one for its own
solvers). The cost: ``depth`` normal draws of x's shape per query.

:class:`BrownianIncrement` carries (keys, t, t_next) to a step's noise draw: ``normal_like`` of one
returns the normalised increment (W(t) - W(t_next)) / sqrt(t - t_next), so every step that draws one
normal per update runs on the tree unchanged (the driver's ``noise="brownian"``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["brownian_value", "brownian_increment", "BrownianIncrement", "DEFAULT_DEPTH"]

DEFAULT_DEPTH = 24  # intervals of T / 2^24: below float32's resolution of t


def _node_key(key: Array, node: Array) -> Array:
    return jax.random.fold_in(key, node)


def brownian_value(key: Array, t: Array, shape: tuple, T: float, dtype=jnp.float32, depth: int = DEFAULT_DEPTH) -> Array:
    """W(t) of ``shape`` for one example's ``key`` (a scalar t in [0, T]); see the module docstring."""
    t = jnp.clip(jnp.asarray(t, dtype), 0.0, T)
    lo, hi = jnp.zeros((), dtype), jnp.asarray(T, dtype)
    w_lo = jnp.zeros(shape, dtype)
    w_hi = jnp.sqrt(hi) * jax.random.normal(_node_key(key, 0), shape, dtype)

    def level(carry, _):
        lo, hi, w_lo, w_hi, node = carry
        mid = (lo + hi) / 2
        w_mid = (w_lo + w_hi) / 2 + jnp.sqrt((hi - lo) / 4) * jax.random.normal(_node_key(key, node), shape, dtype)
        right = t >= mid
        lo, w_lo = jnp.where(right, mid, lo), jnp.where(right, w_mid, w_lo)
        hi, w_hi = jnp.where(right, hi, mid), jnp.where(right, w_hi, w_mid)
        return (lo, hi, w_lo, w_hi, 2 * node + right.astype(node.dtype)), None

    (lo, hi, w_lo, w_hi, node), _ = jax.lax.scan(level, (lo, hi, w_lo, w_hi, jnp.ones((), jnp.uint32)), None,
                                                 length=depth)
    width = hi - lo
    u = jnp.where(width > 0, (t - lo) / jnp.where(width > 0, width, 1), 0)
    bits = jax.lax.bitcast_convert_type(t.astype(jnp.float32), jnp.uint32)
    z = jax.random.normal(jax.random.fold_in(_node_key(key, node), bits), shape, dtype)
    return w_lo + u * (w_hi - w_lo) + jnp.sqrt(jnp.maximum(width * u * (1 - u), 0)) * z


def brownian_increment(keys: Array, t0: Array, t1: Array, shape: tuple, T: float, dtype=jnp.float32,
                       depth: int = DEFAULT_DEPTH) -> Array:
    """W(t1) - W(t0) per example: ``keys`` (batch,), t0 and t1 (batch,); shape (batch, *shape)."""
    value = jax.vmap(lambda k, t: brownian_value(k, t, shape, T, dtype, depth))
    return value(keys, t1) - value(keys, t0)


class BrownianIncrement(NamedTuple):
    """What a step receives as ``keys`` under the driver's ``noise="brownian"``: the run's per-example
    keys (not folded with the step), the update's times (batch,) and the tree's span T. A step's
    ``normal_like(keys, x)`` then returns (W(t) - W(t_next)) / sqrt(t - t_next): standard normal,
    and the same path for every grid."""

    keys: Array
    t: Array
    t_next: Array
    T: float
    depth: int = DEFAULT_DEPTH

    def normal(self, x: Array) -> Array:
        dtype = jnp.result_type(x.dtype, jnp.float32) if x.dtype != jnp.float64 else jnp.float64
        dw = brownian_increment(self.keys, self.t_next, self.t, x.shape[1:], self.T, dtype, self.depth)
        dt = (self.t - self.t_next).astype(dtype)
        return (dw / jnp.sqrt(dt).reshape((-1,) + (1,) * (x.ndim - 1))).astype(x.dtype)

