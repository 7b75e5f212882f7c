"""Time embeddings shared by the score networks."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["GaussianFourierProjection", "sinusoidal_embedding"]


class GaussianFourierProjection(nn.Module):
    """Random Fourier features [sin(2 pi x W), cos(2 pi x W)] of a scalar per example (Tancik et al. 2020).

    W ~ N(0, scale^2), shape (embedding_size,), is fixed: it is drawn from ``seed`` at every call, so
    it is not a parameter, gets no gradient and carries no optimiser state.
    Input (batch,), output (batch, 2 * embedding_size).
    """

    embedding_size: int = 128
    scale: float = 16.0
    seed: int = 0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.scale * jax.random.normal(jax.random.PRNGKey(self.seed), (self.embedding_size,), jnp.float32)
        proj = jnp.asarray(x, jnp.float32)[:, None] * w[None, :] * (2.0 * jnp.pi)
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


def sinusoidal_embedding(positions: Array, dim: int, max_positions: int = 10000) -> Array:
    """Transformer / DDPM sinusoidal embedding of positions (batch,) -> (batch, dim)."""
    if dim < 2:
        raise ValueError(f"sinusoidal embedding needs dim >= 2; got {dim}")
    positions = jnp.asarray(positions, jnp.float32)
    half = dim // 2
    rate = math.log(max_positions) / max(half - 1, 1)
    freqs = jnp.exp(-rate * jnp.arange(half, dtype=jnp.float32))
    args = positions[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb
