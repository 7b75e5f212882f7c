"""Time-dependent (noise-conditional) classifiers for classifier guidance, and a clean digits classifier.

- :class:`NoiseConditionalWideResNet`: the paper's classifier for CIFAR-10 (App. I.1), a Wide-ResNet
  (depth 6n + 4, widen factor k; WRN-28-10 by default) whose residual blocks add a projection of the
  time embedding, with group normalisation in place of batch normalisation (so a batch of mixed noise
  levels is normalised per example).
- :class:`ConvClassifier`: a small CNN for 8x8 / 16x16 digits, noise-conditional when given time
  labels (classifier guidance) and a plain classifier without them (the digits-FID features).

Both are called as ``module.apply(variables, x, time_labels=None, train=False)`` with x (B, H, W, C)
and time labels (B,) as for the score networks (``diffjax.score.time_labels``), and return logits
(B, num_classes); ``features=True`` returns the pooled penultimate features (B, F) instead.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.layers import group_norm_groups, sinusoidal_embedding

Array = jax.Array

__all__ = ["NoiseConditionalWideResNet", "ConvClassifier", "classifier_logits_model"]


def _time_embedding(time_labels: Array, dim: int, dtype) -> Array:
    emb = sinusoidal_embedding(time_labels, dim)
    emb = nn.Dense(dim * 2, dtype=dtype, name="time_dense_0")(emb)
    return nn.Dense(dim * 2, dtype=dtype, name="time_dense_1")(nn.silu(emb))


class _Block(nn.Module):
    features: int
    stride: int = 1
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb, train):
        norm = lambda name: nn.GroupNorm(group_norm_groups(x.shape[-1] if name == "norm_0" else self.features),  # noqa: E731
                                         dtype=self.dtype, name=name)
        h = nn.silu(norm("norm_0")(x))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = nn.Conv(self.features, (1, 1), strides=self.stride, use_bias=False, dtype=self.dtype,
                               name="shortcut")(h)
        h = nn.Conv(self.features, (3, 3), strides=self.stride, padding=1, dtype=self.dtype, name="conv_0")(h)
        if temb is not None:
            h = h + nn.Dense(self.features, dtype=self.dtype, name="time_proj")(nn.silu(temb))[:, None, None, :]
        h = nn.silu(nn.GroupNorm(group_norm_groups(self.features), dtype=self.dtype, name="norm_1")(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.features, (3, 3), padding=1, dtype=self.dtype, name="conv_1")(h)
        return shortcut + h


def _check(owner: str, x: Array, time_labels: Optional[Array], conditional: bool) -> None:
    if x.ndim != 4:
        raise ValueError(f"{owner} takes images (B, H, W, C); got shape {x.shape}")
    if conditional and (time_labels is None or jnp.shape(time_labels) != (x.shape[0],)):
        raise ValueError(f"{owner} is noise-conditional: pass time_labels of shape ({x.shape[0]},); got "
                         f"{None if time_labels is None else jnp.shape(time_labels)}")
    if not conditional and time_labels is not None:
        raise ValueError(f"{owner} was built with noise_conditional=False and takes no time_labels")


def _embed_and_stem(module, x, time_labels, features):
    """(time embedding or None, the stem convolution of the (centred) input), inside ``module``'s scope."""
    _check(type(module).__name__, x, time_labels, module.noise_conditional)
    temb = _time_embedding(time_labels, module.embed_dim, module.dtype) if module.noise_conditional else None
    h = x if module.centered else 2.0 * x - 1.0
    return temb, nn.Conv(features, (3, 3), padding=1, dtype=module.dtype, name="stem")(h.astype(module.dtype))


def _head(module, h, features):
    """Group norm, SiLU, global mean; the pooled features, or the logits of a dense layer."""
    h = nn.silu(nn.GroupNorm(group_norm_groups(h.shape[-1]), dtype=module.dtype, name="norm_out")(h))
    h = jnp.mean(h, axis=(1, 2)).astype(jnp.float32)
    if features:
        return h
    return nn.Dense(module.num_classes, name="logits")(h)


class NoiseConditionalWideResNet(nn.Module):
    """Wide-ResNet-(depth)-(widen) with a time embedding added in every block (the paper's classifier)."""

    num_classes: int = 10
    depth: int = 28
    widen: int = 10
    dropout: float = 0.0
    embed_dim: int = 128
    noise_conditional: bool = True
    centered: bool = True
    continuous: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, time_labels: Optional[Array] = None, train: bool = False,
                 features: bool = False) -> Array:
        if (self.depth - 4) % 6 or self.depth < 10:
            raise ValueError(f"Wide-ResNet depth must be 6n + 4 with n >= 1; got {self.depth}")
        n = (self.depth - 4) // 6
        temb, h = _embed_and_stem(self, x, time_labels, 16)
        for g, width in enumerate((16 * self.widen, 32 * self.widen, 64 * self.widen)):
            for i in range(n):
                stride = 2 if (g > 0 and i == 0 and h.shape[1] > 1) else 1
                h = _Block(width, stride, self.dropout, self.dtype, name=f"group_{g}_block_{i}")(h, temb, train)
        return _head(self, h, features)


class ConvClassifier(nn.Module):
    """A small CNN for digits: ``widths`` stages of two 3x3 residual blocks, 2x average pooling between
    stages, global mean, dense logits. Noise-conditional (time embedding in every block) by default."""

    num_classes: int = 10
    widths: Sequence[int] = (32, 64)
    embed_dim: int = 64
    dropout: float = 0.0
    noise_conditional: bool = True
    centered: bool = True
    continuous: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, time_labels: Optional[Array] = None, train: bool = False,
                 features: bool = False) -> Array:
        temb, h = _embed_and_stem(self, x, time_labels, self.widths[0])
        for s, width in enumerate(self.widths):
            if s > 0 and h.shape[1] > 2:
                h = nn.avg_pool(h, (2, 2), (2, 2))
            for i in range(2):
                h = _Block(width, 1, self.dropout, self.dtype, name=f"stage_{s}_block_{i}")(h, temb, train)
        return _head(self, h, features)


def classifier_logits_model(module: nn.Module, sde, *, train: bool = False):
    """``logits_model(params, x, t, **kw) -> (B, num_classes)`` of a noise-conditional classifier, reading
    time as the score networks do (``module.continuous``), for
    :func:`diffjax.guidance.get_classifier_loss_fn` and :func:`diffjax.guidance.classifier_log_prob`.
    With ``train=True`` it takes ``dropout_key``."""
    from diffjax.score import time_labels

    continuous = bool(getattr(module, "continuous", True))

    def logits_model(params, x, t, dropout_key=None):
        labels = time_labels(sde, t, "score_sde" if continuous else "index")
        rngs = {"dropout": dropout_key} if (train and dropout_key is not None) else None
        return module.apply(params, x, labels, train=train, rngs=rngs)

    return logits_model
