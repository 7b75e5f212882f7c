"""FIR up- and down-sampling of NHWC images (Karras et al., StyleGAN2), and the plain alternatives.

The FIR operations are ``upfirdn``: insert ``up - 1`` zeros after every pixel, pad, convolve with a
2-D filter, keep every ``down``-th pixel (cf. ``scipy.signal.upfirdn``, applied along both axes). A
1-D filter ``k`` means the separable filter ``outer(k, k)``, normalised to sum to one; NCSN++ uses
``k = (1, 3, 3, 1)``. Each filter is applied per channel (a depthwise convolution), so nothing here
has parameters except the fused convolutions, which take their kernel as an argument.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

__all__ = [
    "fir_filter",
    "upfirdn2d",
    "upsample_2d",
    "downsample_2d",
    "upsample_conv_2d",
    "conv_downsample_2d",
    "naive_upsample_2d",
    "naive_downsample_2d",
]

_DIMS = ("NHWC", "HWIO", "NHWC")


def fir_filter(k: Sequence[float], gain: float = 1.0) -> np.ndarray:
    """The 2-D filter of a 1-D (separable) or 2-D filter ``k``: normalised to sum to ``gain``."""
    f = np.asarray(k, dtype=np.float64)
    if f.ndim == 1:
        f = np.outer(f, f)
    if f.ndim != 2 or f.shape[0] != f.shape[1] or f.size == 0:
        raise ValueError(f"FIR filter must be 1-D or square 2-D; got shape {f.shape}")
    total = f.sum()
    if total == 0:
        raise ValueError("FIR filter sums to zero; it cannot be normalised")
    return f * (gain / total)


def _check_image(x: Array) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (batch, height, width, channels); got {x.shape}")


def upfirdn2d(x: Array, f: np.ndarray, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Array:
    """Zero-insert by ``up``, pad ``pad = (before, after)`` on both spatial axes, convolve with the 2-D
    filter ``f`` (true convolution, 'valid'), keep every ``down``-th pixel. x: (B, H, W, C).

    Output size per axis: (H up + before + after - len(f)) // down + 1.
    """
    _check_image(x)
    if min(pad) < 0:
        raise ValueError(f"upfirdn2d padding must be non-negative; got {pad}")
    channels = x.shape[-1]
    kernel = jnp.asarray(np.ascontiguousarray(f[::-1, ::-1]), x.dtype)  # convolution, not correlation
    kernel = jnp.tile(kernel[:, :, None, None], (1, 1, 1, channels))
    # lhs_dilation inserts up - 1 zeros *between* pixels; upfirdn also puts them after the last one.
    padding = ((pad[0], pad[1] + up - 1),) * 2
    return lax.conv_general_dilated(
        x, kernel, window_strides=(down, down), padding=padding, lhs_dilation=(up, up),
        dimension_numbers=_DIMS, feature_group_count=channels,
    )


def upsample_2d(x: Array, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> Array:
    """FIR upsampling (B, H, W, C) -> (B, factor H, factor W, C); a constant image stays constant
    away from the border (the filter's gain is factor^2 to make up for the inserted zeros)."""
    f = fir_filter(k, gain=factor**2)
    p = f.shape[0] - factor
    return upfirdn2d(x, f, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: Array, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> Array:
    """FIR low-pass filter then keep every ``factor``-th pixel: (B, H, W, C) -> (B, H/factor, W/factor, C)."""
    f = fir_filter(k)
    p = f.shape[0] - factor
    return upfirdn2d(x, f, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(x: Array, w: Array, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> Array:
    """Fused stride-``factor`` transposed convolution with kernel ``w`` (kh, kw, C_in, C_out, odd
    square) followed by FIR filtering, padded once: (B, H, W, C_in) -> (B, factor H, factor W, C_out).

    With a centred delta kernel it equals :func:`upsample_2d` exactly.
    """
    _check_image(x)
    size = w.shape[0]
    f = fir_filter(k, gain=factor**2)
    p = (f.shape[0] - factor) - (size - 1)
    y = lax.conv_general_dilated(
        x, w, window_strides=(1, 1), padding=((size - 1, size - 1),) * 2, lhs_dilation=(factor, factor),
        dimension_numbers=_DIMS,
    )
    return upfirdn2d(y, f, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x: Array, w: Array, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> Array:
    """Fused FIR filtering followed by a stride-``factor`` convolution with kernel ``w`` (kh, kw, C_in,
    C_out), padded once: (B, H, W, C_in) -> (B, H/factor, W/factor, C_out).

    With a centred delta kernel it equals :func:`downsample_2d` exactly.
    """
    _check_image(x)
    size = w.shape[0]
    f = fir_filter(k)
    p = (f.shape[0] - factor) + (size - 1)
    y = upfirdn2d(x, f, pad=((p + 1) // 2, p // 2))
    return lax.conv_general_dilated(y, w, window_strides=(factor, factor), padding="VALID", dimension_numbers=_DIMS)


def naive_upsample_2d(x: Array, factor: int = 2) -> Array:
    """Nearest-neighbour upsampling: every pixel repeated factor x factor times."""
    _check_image(x)
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x: Array, factor: int = 2) -> Array:
    """Average pooling over non-overlapping factor x factor windows."""
    _check_image(x)
    b, h, w, c = x.shape
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
