"""A small MLP score network for low-dimensional data (2-D toys, Gaussian-mixture tests)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.layers import GaussianFourierProjection, sinusoidal_embedding

Array = jax.Array

__all__ = ["MLPScoreNet"]

_EMBEDDINGS = ("fourier", "positional")


class MLPScoreNet(nn.Module):
    """MLP with a time embedding added to every hidden layer; input x (batch, d), labels (batch,).

    How it reads time (``embedding_type``): ``"fourier"`` embeds log(label) with Gaussian Fourier
    features (for positive continuous labels: VE's sigma, VP's 999 t, as NCSN++ does with log sigma);
    ``"positional"`` embeds the raw label sinusoidally (DDPM's step index or 999 t).
    What it predicts is declared by ``prediction`` ("eps" by default), which
    :func:`diffjax.score.score_fn_from_module` reads. The output layer starts at zero.
    """

    hidden: Sequence[int] = (128, 128, 128)
    embedding_dim: int = 64
    embedding_type: str = "fourier"
    fourier_scale: float = 1.0
    prediction: str = "eps"

    @nn.compact
    def __call__(self, x: Array, labels: Array) -> Array:
        if x.ndim != 2:
            raise ValueError(f"MLPScoreNet takes x of shape (batch, dim); got {x.shape}")
        if labels.shape != (x.shape[0],):
            raise ValueError(f"labels must have shape ({x.shape[0]},); got {labels.shape}")
        if self.embedding_type == "fourier":
            emb = GaussianFourierProjection(self.embedding_dim // 2, self.fourier_scale)(jnp.log(labels))
        elif self.embedding_type == "positional":
            emb = sinusoidal_embedding(labels, self.embedding_dim)
        else:
            raise ValueError(f"unknown embedding_type {self.embedding_type!r}; expected one of {_EMBEDDINGS}")
        emb = nn.swish(nn.Dense(self.embedding_dim)(emb))
        h = x
        for width in self.hidden:
            h = nn.swish(nn.Dense(width)(h) + nn.Dense(width)(emb))
        return nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros)(h)
