"""Divergences of batched maps: the exact trace of each example's Jacobian, and Hutchinson's estimate.

One set of names everywhere in diffjax (:data:`DIVERGENCES`): "exact" (d forward-mode products per
evaluation, for low dimension), "rademacher" and "gaussian" (Hutchinson–Skilling: the mean of
v^T J v over probes v with E[v v^T] = I; one product per probe).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["DIVERGENCES", "check_divergence", "divergence", "draw_probes"]

DIVERGENCES = ("exact", "rademacher", "gaussian")


def check_divergence(kind: str, n_probes: int = 1) -> None:
    """Raise a one-line ValueError for an unknown divergence or a probe count that is not an int >= 1."""
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}; expected one of {DIVERGENCES}")
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be an integer >= 1; got {n_probes!r}")


def divergence(fn: Callable[[Array], Array], x: Array, kind: str = "exact",
               probes: Optional[Array] = None) -> tuple[Array, Array]:
    """(fn(x), ∇·fn(x)) for a batched map fn (batch, ...) -> (batch, ...), each example's output
    depending on that example only. ``kind`` "exact": the trace of each example's Jacobian (d
    forward-mode products); "rademacher" / "gaussian": Hutchinson's estimate mean_k v_kᵀ J v_k
    over ``probes`` (n_probes, batch, ...)."""
    if kind != "exact" and probes is not None and probes.shape[0] == 1:  # one probe: a plain JVP
        out, jv = jax.jvp(fn, (x,), (probes[0],))
        return out, jnp.sum((probes[0] * jv).reshape(x.shape[0], -1), axis=1)
    out, jvp = jax.linearize(fn, x)
    if kind == "exact":
        d = math.prod(x.shape[1:])
        basis = jnp.eye(d, dtype=x.dtype).reshape((d, 1) + x.shape[1:])
        cols = jax.vmap(jvp)(jnp.broadcast_to(basis, (d,) + x.shape))  # (d, batch, ...)
        return out, jnp.einsum("ibi->b", cols.reshape(d, x.shape[0], d))
    if probes is None:
        raise ValueError("a Hutchinson divergence needs probes of shape (n_probes, batch, ...)")
    jv = jax.vmap(jvp)(probes)
    return out, jnp.mean(jnp.sum((probes * jv).reshape(probes.shape[0], x.shape[0], -1), axis=2), axis=0)


def draw_probes(keys: Array, x: Array, kind: str, n_probes: int) -> Optional[Array]:
    """Hutchinson probes (n_probes, batch, ...) from per-example keys; None for the exact divergence."""
    if kind == "exact":
        return None
    draw = jax.random.normal if kind == "gaussian" else jax.random.rademacher
    p = jax.vmap(lambda k: draw(k, (n_probes,) + x.shape[1:], x.dtype))(keys)
    return jnp.moveaxis(p, 1, 0)
