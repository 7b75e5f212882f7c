"""A small MLP score network for low-dimensional data (2-D toys, Gaussian-mixture tests)."""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models import _common
from diffjax.models.layers import GaussianFourierProjection, sinusoidal_embedding

Array = jax.Array

__all__ = ["MLPScoreNet", "MLPFlowMap"]

_EMBEDDINGS = ("fourier", "positional")


class MLPScoreNet(nn.Module):
    """MLP with a time embedding added to every hidden layer; input x (batch, d), labels (batch,).

    How it reads time (``embedding_type``): ``"fourier"`` embeds log(label) with Gaussian Fourier
    features (for positive continuous labels: VE's sigma, VP's 999 t, as NCSN++ does with log sigma);
    ``"positional"`` embeds the raw label sinusoidally (DDPM's step index or 999 t).
    What it predicts is declared by ``prediction`` ("eps" by default), whether its labels are
    continuous by ``continuous``; :func:`diffjax.score.score_fn_from_module` reads both. With
    ``num_classes`` > 0 a class embedding (label ``num_classes`` = no class) joins the time
    embedding. The output layer starts at zero.
    """

    hidden: Sequence[int] = (128, 128, 128)
    embedding_dim: int = 64
    embedding_type: str = "fourier"
    fourier_scale: float = 1.0
    num_classes: int = 0
    prediction: str = "eps"
    scale_by_sigma: bool = False
    continuous: bool = True
    dtype: object = jnp.float32
    param_dtype: object = jnp.float32

    def __post_init__(self):
        owner = type(self).__name__
        object.__setattr__(self, "hidden", _common.as_int_tuple(owner, "hidden", self.hidden))
        _common.check_positive(owner, "embedding_dim", self.embedding_dim)
        _common.check_choice(owner, "embedding_type", self.embedding_type, _EMBEDDINGS)
        _common.check_num_classes(owner, self.num_classes)
        _common.check_output_options(self)
        super().__post_init__()

    @property
    def label_domain(self) -> str:
        """"positive" when the time embedding takes log(label) (Fourier), else "any"."""
        return "positive" if self.embedding_type == "fourier" else "any"

    @nn.compact
    def __call__(self, x: Array, labels: Array, class_labels: Optional[Array] = None, train: bool = False) -> Array:
        del train  # no dropout
        if x.ndim != 2:
            raise ValueError(f"MLPScoreNet takes x of shape (batch, dim); got {x.shape}")
        if labels.shape != (x.shape[0],):
            raise ValueError(f"labels must have shape ({x.shape[0]},); got {labels.shape}")
        if self.embedding_type == "fourier":
            emb = GaussianFourierProjection(self.embedding_dim // 2, self.fourier_scale)(jnp.log(labels))
        else:
            emb = sinusoidal_embedding(labels, self.embedding_dim)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        emb = nn.swish(nn.Dense(self.embedding_dim, **kw)(emb))
        cemb = _common.class_embedding("MLPScoreNet", self.num_classes, class_labels, x.shape[0],
                                       self.embedding_dim, self.dtype, self.param_dtype)
        if cemb is not None:
            emb = emb + cemb
        h = x.astype(self.dtype)
        for width in self.hidden:
            h = nn.swish(nn.Dense(width, **kw)(h) + nn.Dense(width, **kw)(emb))
        return nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros, **kw)(h).astype(jnp.float32)


class MLPFlowMap(nn.Module):
    """An MLP of two times for flow maps (MeanFlow's average velocity u(z, r, t)): called as
    ``net.apply(params, z, t, h)`` with h = t - r, each time embedded sinusoidally (of 1000 t and
    1000 h, so [0, 1] spans the embedding's frequencies) and added to every hidden layer. Output like
    z, from a zero-initialised last layer."""

    hidden: Sequence[int] = (256, 256, 256)
    embedding_dim: int = 64
    dtype: object = jnp.float32
    param_dtype: object = jnp.float32

    @nn.compact
    def __call__(self, z: Array, t: Array, h: Array) -> Array:
        if z.ndim != 2:
            raise ValueError(f"MLPFlowMap takes z of shape (batch, dim); got {z.shape}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        emb = jnp.concatenate([sinusoidal_embedding(1000.0 * t, self.embedding_dim),
                               sinusoidal_embedding(1000.0 * h, self.embedding_dim)], axis=-1)
        emb = nn.swish(nn.Dense(self.embedding_dim, **kw)(emb.astype(self.dtype)))
        x = z.astype(self.dtype)
        for width in self.hidden:
            x = nn.swish(nn.Dense(width, **kw)(x) + nn.Dense(width, **kw)(emb))
        return nn.Dense(z.shape[-1], kernel_init=nn.initializers.zeros, **kw)(x).astype(z.dtype)
