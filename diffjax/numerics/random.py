"""Per-example randomness: one PRNG key per example, so an example's draws do not depend on its batch.

Example i of a batch draws from fold_in(key, i) (:func:`example_keys`), and a loop folds its step
index into every example's key (:func:`fold_keys`); a batch of keys given by the caller is used as it is.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from diffjax._checks import describe
from diffjax.numerics.brownian import BrownianIncrement

Array = jax.Array

__all__ = ["example_keys", "fold_keys", "normal_like", "per_example_keys"]


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
    if isinstance(keys, BrownianIncrement):
        raise TypeError("this step draws more than one normal per update, which noise='brownian' does not support "
                        "(it gives one Brownian increment per update); use noise='independent'")
    return jax.vmap(lambda k: jax.random.fold_in(k, data))(keys)


def normal_like(keys: Array, x: Array) -> Array:
    """Standard normal noise of x's shape, each example drawn from its own key (or, given a
    :class:`~diffjax.numerics.brownian.BrownianIncrement`, the normalised increment of its path)."""
    if isinstance(keys, BrownianIncrement):
        return keys.normal(x)
    return jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(keys)


def per_example_keys(key: Array, batch_size: int) -> Array:
    """One key per example: ``example_keys(key, batch_size)`` for a single key, or ``key`` itself when
    it already holds ``batch_size`` keys; a one-line error otherwise."""
    if key is None or not hasattr(key, "dtype"):
        raise TypeError(f"key must be a PRNG key (jax.random.PRNGKey(0) or jax.random.key(0)) or one per example; "
                        f"got {describe(key)}")
    nd = _key_batch_ndim(key)
    if nd == 0:
        return example_keys(key, batch_size)
    if nd == 1:
        if jnp.shape(key)[0] != batch_size:
            raise ValueError(f"got {jnp.shape(key)[0]} per-example keys for a batch of {batch_size}; expected one key or {batch_size}")
        return key
    raise ValueError(f"key must be one PRNG key or one per example; got shape {jnp.shape(key)}")
