"""NCSNv2 (Song & Ermon, NeurIPS 2020): a RefineNet with dilated residual blocks and InstanceNorm++,
for images below 96 px (the CIFAR-10 / CelebA-64 network, 29,694,083 parameters at nf = 128).

It follows the authors' code (ermongroup/ncsnv2): the third refine block has nf features, where
score_sde's JAX port has 2 nf (33,970,563 parameters). Fusion upsamples with ``jax.image.resize``
(half-pixel centres; the PyTorch code aligns corners), which changes outputs but no parameter.

The network is not time-conditional: with ``scale_by_sigma`` (the default) its output is divided by
the noise level sigma_i of the step, which :func:`diffjax.score.score_fn_from_module` does.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models import _common
from diffjax.models.layers import InstanceNormPlus, get_activation, ncsn_conv
from diffjax.models.resample import naive_downsample_2d

Array = jax.Array

__all__ = ["NCSNv2"]

INTERPOLATIONS = ("bilinear", "nearest")


def _conv(x: Array, features: int, kw: dict, *, kernel: int = 3, dilation: int = 1, use_bias: bool = True) -> Array:
    return ncsn_conv(features, x.shape[-1], kernel=kernel, dilation=dilation, use_bias=use_bias, **kw)(x)


class _ResidualBlock(nn.Module):
    features: int
    nonlinearity: str
    down: bool = False
    dilation: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        act = get_activation(self.nonlinearity)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d, out = self.dilation, self.features
        h = act(InstanceNormPlus(**kw)(x))
        if self.down:
            h = act(InstanceNormPlus(**kw)(_conv(h, x.shape[-1], kw, dilation=d)))
            if d > 1:  # the dilated "down" blocks keep the resolution
                h = _conv(h, out, kw, dilation=d)
                skip = _conv(x, out, kw, dilation=d)
            else:
                h = naive_downsample_2d(_conv(h, out, kw))
                skip = naive_downsample_2d(_conv(x, out, kw, kernel=1))
        else:
            if out == x.shape[-1]:
                skip = x
            else:
                skip = _conv(x, out, kw, dilation=d) if d > 1 else _conv(x, out, kw, kernel=1)
            h = act(InstanceNormPlus(**kw)(_conv(h, out, kw, dilation=d)))
            h = _conv(h, out, kw, dilation=d)
        return h + skip


class _RCU(nn.Module):
    """Residual conv unit: n_blocks x (n_stages x (act, conv without bias) + skip)."""

    features: int
    n_blocks: int
    nonlinearity: str
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        act = get_activation(self.nonlinearity)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for _ in range(self.n_blocks):
            skip = x
            for _ in range(2):
                x = _conv(act(x), self.features, kw, use_bias=False)
            x = x + skip
        return x


class _RefineBlock(nn.Module):
    """RefineNet block: RCUs per input, multi-resolution fusion (3x3 conv + resize + sum), chained
    residual pooling (2 x (5x5 max-pool, conv)), output RCUs (3 for the last block)."""

    output_shape: tuple
    features: int
    nonlinearity: str
    interpolation: str = "bilinear"
    start: bool = False
    end: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, xs: Sequence[Array]) -> Array:
        act = get_activation(self.nonlinearity)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        hs = [_RCU(x.shape[-1], 2, self.nonlinearity, **kw)(x) for x in xs]
        if self.start:
            h = hs[0]
        else:
            method = "bilinear" if self.interpolation == "bilinear" else "nearest"
            h = 0.0
            for x in hs:
                y = _conv(x, self.features, kw)
                h = h + jax.image.resize(y, (y.shape[0], *self.output_shape, y.shape[-1]), method)
        h = act(h)
        path = h
        for _ in range(2):
            path = nn.max_pool(path, (5, 5), strides=(1, 1), padding="SAME")
            path = _conv(path, self.features, kw, use_bias=False)
            h = path + h
        return _RCU(self.features, 3 if self.end else 1, self.nonlinearity, **kw)(h)


class NCSNv2(nn.Module):
    """NCSNv2 RefineNet. x (B, H, W, C), time_labels (B,) (ignored: the network is unconditional)
    -> (B, H, W, C) float32. H and W must be even. Declares ``prediction="score"``,
    ``scale_by_sigma=True`` and discrete labels (``continuous=False``)."""

    nf: int = 128
    nonlinearity: str = "elu"
    interpolation: str = "bilinear"
    centered: bool = True
    prediction: str = "score"
    scale_by_sigma: bool = True
    continuous: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        owner = type(self).__name__
        _common.check_positive(owner, "nf", self.nf)
        get_activation(self.nonlinearity)
        _common.check_choice(owner, "interpolation", self.interpolation, INTERPOLATIONS)
        _common.check_output_options(self)
        super().__post_init__()

    downsampling_factor = 2

    @nn.compact
    def __call__(self, x: Array, time_labels: Array, class_labels: Optional[Array] = None,
                 train: bool = False) -> Array:
        owner = type(self).__name__
        _common.check_inputs(owner, x, time_labels, self.downsampling_factor)
        if class_labels is not None:
            raise ValueError(f"{owner} is not class-conditional and takes no class_labels")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        nf, act_name = self.nf, self.nonlinearity
        act = get_activation(act_name)

        def res(features, down=False, dilation=1):
            return _ResidualBlock(features, act_name, down, dilation, **kw)

        h = x.astype(self.dtype)
        if not self.centered:
            h = 2.0 * h - 1.0
        h = _conv(h, nf, kw)
        h = res(nf)(h)
        layer1 = res(nf)(h)
        layer2 = res(2 * nf)(res(2 * nf, down=True)(layer1))
        layer3 = res(2 * nf, dilation=2)(res(2 * nf, down=True, dilation=2)(layer2))
        layer4 = res(2 * nf, dilation=4)(res(2 * nf, down=True, dilation=4)(layer3))

        def refine(layer, features, **options):
            return _RefineBlock(tuple(layer.shape[1:3]), features, act_name, self.interpolation, **options, **kw)

        ref = refine(layer4, 2 * nf, start=True)([layer4])
        ref = refine(layer3, 2 * nf)([layer3, ref])
        ref = refine(layer2, nf)([layer2, ref])  # nf as in ermongroup/ncsnv2 (score_sde's JAX port has 2 nf)
        ref = refine(layer1, nf, end=True)([layer1, ref])
        h = _conv(act(InstanceNormPlus(**kw)(ref)), x.shape[-1], kw)
        return h.astype(jnp.float32)
