"""Building blocks of the score networks: time embeddings, initialisers, normalisation, attention,
residual blocks and resampling layers (NCSN++/DDPM++, DDPM, NCSNv2).

Conventions shared by every layer: images are NHWC; parameters are created in ``param_dtype``
(float32) and the arithmetic runs in ``dtype`` (float32, or bfloat16 on TPU/GPU); normalisation
statistics and attention softmaxes are computed in float32 whatever ``dtype`` is.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models import resample

Array = jax.Array
Dtype = Any

__all__ = [
    "GaussianFourierProjection",
    "sinusoidal_embedding",
    "default_init",
    "ncsn_kernel_init",
    "ACTIVATIONS",
    "get_activation",
    "group_norm_groups",
    "GroupNorm",
    "conv3x3",
    "conv1x1",
    "ncsn_conv",
    "NIN",
    "AttnBlock",
    "Combine",
    "Upsample",
    "Downsample",
    "FIRConv",
    "ResnetBlockDDPM",
    "ResnetBlockBigGAN",
    "InstanceNormPlus",
]


# --------------------------------------------------------------------------------------------
# Time embeddings


class GaussianFourierProjection(nn.Module):
    """Random Fourier features [sin(2 pi x W), cos(2 pi x W)] of a scalar per example (Tancik et al. 2020).

    W ~ N(0, scale^2), shape (embedding_size,), is fixed: drawn from ``seed`` at every call, so it is
    not a parameter, gets no gradient and carries no optimiser state. ``weights`` (a tuple of
    ``embedding_size`` floats) replaces the draw, e.g. with the W stored in an original score_sde
    checkpoint (``params['GaussianFourierProjection_0']['W']``).
    Input (batch,), output (batch, 2 * embedding_size), float32.
    """

    embedding_size: int = 128
    scale: float = 16.0
    seed: int = 0
    weights: Optional[tuple] = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.weights is not None:
            if len(self.weights) != self.embedding_size:
                raise ValueError(
                    f"weights has {len(self.weights)} entries; expected embedding_size={self.embedding_size}"
                )
            w = jnp.asarray(self.weights, jnp.float32)
        else:
            w = self.scale * jax.random.normal(jax.random.PRNGKey(self.seed), (self.embedding_size,), jnp.float32)
        proj = jnp.asarray(x, jnp.float32)[:, None] * w[None, :] * (2.0 * jnp.pi)
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


def sinusoidal_embedding(positions: Array, dim: int, max_positions: int = 10000) -> Array:
    """Transformer / DDPM sinusoidal embedding of positions (batch,) -> (batch, dim):
    [sin(p w_j), cos(p w_j)] with w_j = max_positions^(-j / (dim/2 - 1)), zero-padded for odd dim."""
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


# --------------------------------------------------------------------------------------------
# Initialisers and activations


def default_init(scale: float = 1.0) -> Callable:
    """DDPM's initialiser: variance scaling, fan_avg, uniform. ``scale = 0`` means 1e-10 (a
    near-zero but not exactly zero layer, as in the original, so gradients still flow into it)."""
    return nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")


def ncsn_kernel_init(scale: float = 1.0) -> Callable:
    """PyTorch's default convolution initialiser, used by NCSN/NCSNv2: U(-b, b), b = sqrt(scale / fan_in)."""
    return nn.initializers.variance_scaling((1e-10 if scale == 0 else scale) / 3.0, "fan_in", "uniform")


def _ncsn_bias_init(fan_in: int) -> Callable:
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "swish": nn.swish,
    "silu": nn.swish,
    "relu": nn.relu,
    "elu": nn.elu,
    "lrelu": lambda x: nn.leaky_relu(x, negative_slope=0.2),
}


def get_activation(name: str) -> Callable[[Array], Array]:
    """The activation called ``name`` (one of ``ACTIVATIONS``)."""
    try:
        return ACTIVATIONS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown nonlinearity {name!r}; expected one of {tuple(ACTIVATIONS)}") from None


# --------------------------------------------------------------------------------------------
# Normalisation


def group_norm_groups(channels: int, groups: Optional[int] = None) -> int:
    """Number of GroupNorm groups: ``groups`` if given (DDPM: 32), else NCSN++'s min(C // 4, 32).

    Raises a ValueError when the channels cannot be split evenly into that many groups.
    """
    g = groups if groups is not None else min(channels // 4, 32)
    if g < 1 or channels % g:
        rule = f"{groups} groups" if groups is not None else "min(C // 4, 32) groups"
        raise ValueError(
            f"GroupNorm cannot split {channels} channels into {rule} ({g}); choose nf and ch_mult so "
            "every channel count is a multiple of 4 (and of 32 when >= 128)"
        )
    return g


class GroupNorm(nn.Module):
    """GroupNorm with ``group_norm_groups(C, groups)`` groups, learnt scale and bias; statistics in float32."""

    groups: Optional[int] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        g = group_norm_groups(x.shape[-1], self.groups)
        return nn.GroupNorm(num_groups=g, epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype)(x)


class InstanceNormPlus(nn.Module):
    """InstanceNorm++ (Song & Ermon 2019): instance normalisation that keeps the channel means' spread,

        h = gamma (x - mu_c) / s_c + gamma alpha (mu_c - mean(mu)) / std(mu) + beta,

    with mu_c, s_c the per-channel spatial mean and std. alpha, gamma ~ 1 + N(0, 0.02^2), beta = 0.
    """

    bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]

        def near_one(key, shape, dtype=jnp.float32):
            return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)

        xf = x.astype(jnp.float32)
        means = jnp.mean(xf, axis=(1, 2))
        spread = (means - means.mean(-1, keepdims=True)) / jnp.sqrt(means.var(-1, keepdims=True) + 1e-5)
        h = (xf - means[:, None, None, :]) / jnp.sqrt(jnp.var(xf, axis=(1, 2), keepdims=True) + 1e-5)
        alpha = self.param("alpha", near_one, (c,), self.param_dtype)
        gamma = self.param("gamma", near_one, (c,), self.param_dtype)
        h = (h + spread[:, None, None, :] * alpha) * gamma
        if self.bias:
            h = h + self.param("beta", nn.initializers.zeros, (c,), self.param_dtype)
        return h.astype(self.dtype)


# --------------------------------------------------------------------------------------------
# Convolutions


def conv3x3(features: int, *, stride: int = 1, init_scale: float = 1.0, use_bias: bool = True,
            dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, name: Optional[str] = None) -> nn.Conv:
    """3x3 'SAME' convolution with DDPM initialisation (zero bias)."""
    return nn.Conv(features, (3, 3), strides=(stride, stride), padding="SAME", use_bias=use_bias,
                   kernel_init=default_init(init_scale), bias_init=nn.initializers.zeros,
                   dtype=dtype, param_dtype=param_dtype, name=name)


def conv1x1(features: int, *, init_scale: float = 1.0, dtype: Dtype = jnp.float32,
            param_dtype: Dtype = jnp.float32, name: Optional[str] = None) -> nn.Conv:
    """1x1 convolution with DDPM initialisation (zero bias)."""
    return nn.Conv(features, (1, 1), kernel_init=default_init(init_scale), bias_init=nn.initializers.zeros,
                   dtype=dtype, param_dtype=param_dtype, name=name)


def ncsn_conv(features: int, in_features: int, *, kernel: int = 3, dilation: int = 1, use_bias: bool = True,
              dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> nn.Conv:
    """'SAME' convolution with PyTorch's initialisation (NCSN, NCSNv2), optionally dilated."""
    return nn.Conv(features, (kernel, kernel), padding="SAME", kernel_dilation=(dilation, dilation),
                   use_bias=use_bias, kernel_init=ncsn_kernel_init(),
                   bias_init=_ncsn_bias_init(kernel * kernel * in_features), dtype=dtype, param_dtype=param_dtype)


class NIN(nn.Module):
    """Network-in-network: a dense layer over the channel axis, (..., C) -> (..., features)."""

    features: int
    init_scale: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return nn.Dense(self.features, kernel_init=default_init(self.init_scale), dtype=self.dtype,
                        param_dtype=self.param_dtype)(x)


class FIRConv(nn.Module):
    """Convolution fused with FIR upsampling (``up``) or downsampling (``down``) by 2 (StyleGAN2), or a
    plain 'SAME' convolution; kernel (k, k, C_in, features) with DDPM initialisation, zero bias."""

    features: int
    kernel: int = 3
    up: bool = False
    down: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.up and self.down:
            raise ValueError("FIRConv: up and down are exclusive")
        w = self.param("kernel", default_init(), (self.kernel, self.kernel, x.shape[-1], self.features),
                       self.param_dtype)
        x = x.astype(self.dtype)
        w = w.astype(self.dtype)
        if self.up:
            y = resample.upsample_conv_2d(x, w, self.fir_kernel)
        elif self.down:
            y = resample.conv_downsample_2d(x, w, self.fir_kernel)
        else:
            y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype).astype(self.dtype)
        return y


# --------------------------------------------------------------------------------------------
# Attention, skip combination, resampling


class AttnBlock(nn.Module):
    """Spatial self-attention over all H*W positions with one head, as in DDPM:

        out = x + NIN(softmax(q k^T / sqrt(C)) v),   q, k, v = NIN(GroupNorm(x)),

    divided by sqrt(2) when ``skip_rescale``. The output projection starts near zero (``init_scale``).
    """

    skip_rescale: bool = False
    init_scale: float = 0.0
    groups: Optional[int] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, hgt, wid, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = GroupNorm(self.groups, **kw)(x)
        q, k, v = (NIN(c, **kw)(h).reshape(b, hgt * wid, c) for _ in range(3))
        logits = jnp.einsum("bnc,bmc->bnm", q, k, preferred_element_type=jnp.float32) * (c**-0.5)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        h = jnp.einsum("bnm,bmc->bnc", weights, v).reshape(b, hgt, wid, c)
        h = NIN(c, init_scale=self.init_scale, **kw)(h)
        out = x + h
        return out / np.sqrt(2.0) if self.skip_rescale else out


class Combine(nn.Module):
    """Merge a skip ``x`` into ``y``: a 1x1 convolution of x to y's channels, then concatenate ('cat') or add ('sum')."""

    method: str = "cat"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        h = conv1x1(y.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype)(x)
        if self.method == "cat":
            return jnp.concatenate([h, y], axis=-1)
        if self.method == "sum":
            return h + y
        raise ValueError(f"unknown combine method {self.method!r}; expected 'cat' or 'sum'")


class _Resample(nn.Module):
    """Shared fields of :class:`Upsample` and :class:`Downsample` (FIR or plain, with or without a convolution)."""

    out_ch: Optional[int] = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _resample(self, x: Array, up: bool) -> Array:
        out_ch = self.out_ch or x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.fir:
            if self.with_conv:
                return FIRConv(out_ch, up=up, down=not up, fir_kernel=self.fir_kernel, **kw)(x)
            return (resample.upsample_2d if up else resample.downsample_2d)(x, self.fir_kernel)
        if up:
            h = resample.naive_upsample_2d(x)
            return conv3x3(out_ch, **kw)(h) if self.with_conv else h
        return conv3x3(out_ch, stride=2, **kw)(x) if self.with_conv else resample.naive_downsample_2d(x)


class Upsample(_Resample):
    """x2 upsampling: FIR (``fir``) or nearest-neighbour, with or without a 3x3 convolution to ``out_ch``."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return self._resample(x, up=True)


class Downsample(_Resample):
    """/2 downsampling: FIR (``fir``) or plain (stride-2 3x3 convolution, or 2x2 average pooling)."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return self._resample(x, up=False)


# --------------------------------------------------------------------------------------------
# Residual blocks


def _residual_body(h: Array, temb: Optional[Array], out_ch: int, act, kw, *, dropout: float, train: bool,
                   init_scale: float, groups: Optional[int] = None) -> Array:
    """conv, + Dense(act(temb)), GN-act-dropout-conv (near-zero init): the body both residual blocks share.
    Modules are created in the calling block's scope."""
    h = conv3x3(out_ch, **kw)(h)
    if temb is not None:
        h = h + nn.Dense(out_ch, kernel_init=default_init(), **kw)(act(temb))[:, None, None, :]
    h = act(GroupNorm(groups, **kw)(h))
    h = nn.Dropout(dropout)(h, deterministic=not train)
    return conv3x3(out_ch, init_scale=init_scale, **kw)(h)


def _skip_sum(x: Array, h: Array, skip_rescale: bool) -> Array:
    return (x + h) / np.sqrt(2.0) if skip_rescale else x + h


class ResnetBlockDDPM(nn.Module):
    """DDPM's residual block: GN-act-conv, + Dense(act(temb)), GN-act-dropout-conv (near-zero init),
    a NIN (or 3x3 ``conv_shortcut``) on the skip when channels change; sum divided by sqrt(2) when
    ``skip_rescale`` (DDPM++). ``groups=32`` is DDPM's GroupNorm, ``None`` NCSN++'s min(C // 4, 32)."""

    out_ch: Optional[int] = None
    nonlinearity: str = "swish"
    dropout: float = 0.1
    conv_shortcut: bool = False
    skip_rescale: bool = False
    init_scale: float = 0.0
    groups: Optional[int] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = False) -> Array:
        act = get_activation(self.nonlinearity)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        out_ch = self.out_ch or c
        h = act(GroupNorm(self.groups, **kw)(x))
        h = _residual_body(h, temb, out_ch, act, kw, dropout=self.dropout, train=train,
                           init_scale=self.init_scale, groups=self.groups)
        if c != out_ch:
            x = conv3x3(out_ch, **kw)(x) if self.conv_shortcut else NIN(out_ch, **kw)(x)
        return _skip_sum(x, h, self.skip_rescale)


class ResnetBlockBigGAN(nn.Module):
    """BigGAN-style residual block of NCSN++/DDPM++: GN-act, optional x2 ``up`` / /2 ``down`` of both
    paths (FIR or naive), conv, + Dense(act(temb)), GN-act-dropout-conv (near-zero init); a 1x1
    convolution on the skip when channels or resolution change; sum divided by sqrt(2) when ``skip_rescale``."""

    out_ch: Optional[int] = None
    up: bool = False
    down: bool = False
    nonlinearity: str = "swish"
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = False) -> Array:
        act = get_activation(self.nonlinearity)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        out_ch = self.out_ch or c
        h = act(GroupNorm(**kw)(x))
        if self.up:
            up = (lambda v: resample.upsample_2d(v, self.fir_kernel)) if self.fir else resample.naive_upsample_2d
            h, x = up(h), up(x)
        elif self.down:
            down = (lambda v: resample.downsample_2d(v, self.fir_kernel)) if self.fir else resample.naive_downsample_2d
            h, x = down(h), down(x)
        h = _residual_body(h, temb, out_ch, act, kw, dropout=self.dropout, train=train, init_scale=self.init_scale)
        if c != out_ch or self.up or self.down:
            x = conv1x1(out_ch, **kw)(x)
        return _skip_sum(x, h, self.skip_rescale)
