"""Measurement operators as values (see :mod:`diffjax.inverse`): a matrix, inpainting masks, average-pool
downsampling, colourisation and circular blur, with adjoints, pseudo-inverses and the solves the
methods need."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import check_int, describe

Array = jax.Array


class LinearOperator:
    """A measurement operator on a batch (batch, *x_shape); see the module docstring."""

    def check(self, x: Array, what: str = "x") -> None:
        """A one-line error unless ``x`` is (batch, *x_shape)."""
        expected = tuple(self.x_shape)
        if tuple(jnp.shape(x)[1:]) != expected:
            raise ValueError(f"{type(self).__name__} acts on examples of shape {expected}; got {what} of shape "
                             f"{tuple(jnp.shape(x))} (expected (batch, {', '.join(map(str, expected))}))")

    def check_y(self, y: Array) -> None:
        expected = tuple(self.y_shape)
        if jnp.ndim(y) != len(expected) + 1 or tuple(jnp.shape(y)[1:]) != expected:
            raise ValueError(f"{type(self).__name__} measures examples of shape {expected}; got y of shape "
                             f"{tuple(jnp.shape(y))} (expected (batch, {', '.join(map(str, expected))}))")

    def __call__(self, x: Array) -> Array:
        return self.apply(x)


def _operator(data=(), meta=()):
    def wrap(cls):
        cls = dataclasses.dataclass(frozen=True)(cls)
        jax.tree_util.register_dataclass(cls, data_fields=list(data), meta_fields=list(meta))
        return cls
    return wrap


def _r2(r2, like):
    """r2 (batch,) or a scalar, shaped to broadcast against ``like`` (batch, ...)."""
    r2 = jnp.asarray(r2)
    return r2 if r2.ndim == 0 else r2.reshape((-1,) + (1,) * (jnp.ndim(like) - 1))


@_operator(data=("A", "U", "e", "pinv_A"), meta=("x_shape",))
class Matrix(LinearOperator):
    """y = A x for a matrix A (m, d) on examples flattened to d = prod(x_shape); build with
    :func:`matrix`. U, e: the eigenpairs of A A^T; pinv_A: A^+ (d, m)."""

    A: Array
    U: Array
    e: Array
    pinv_A: Array
    x_shape: tuple

    @property
    def y_shape(self):
        return (self.A.shape[0],)

    def apply(self, x):
        return x.reshape(x.shape[0], -1) @ self.A.T

    def adjoint(self, y):
        return (y @ self.A).reshape((y.shape[0], *self.x_shape))

    def pinv(self, y):
        return (y @ self.pinv_A.T).reshape((y.shape[0], *self.x_shape))

    def solve_aat(self, v, r2, s2):
        """(r2 A A^T + s2 I)^{-1} v per example; r2 (batch,) or a scalar, s2 a scalar."""
        return ((v @ self.U) / (_r2(r2, v) * self.e + s2)) @ self.U.T

    def logdet_aat(self, r2, s2):
        r2 = jnp.asarray(r2)
        return jnp.sum(jnp.log((r2[..., None] if r2.ndim else r2) * self.e + s2), axis=-1)

    def num_measurements(self) -> int:
        return int(self.A.shape[0])


def matrix(A, x_shape: Optional[tuple] = None) -> Matrix:
    """The operator y = A x for A (m, d), on examples of ``x_shape`` (default (d,))."""
    A = jnp.asarray(A)
    if A.ndim != 2 or not jnp.issubdtype(A.dtype, jnp.floating):
        raise ValueError(f"matrix needs a floating-point (m, d) array; got {describe(A)}")
    if not bool(jnp.all(jnp.isfinite(A))):
        raise ValueError("matrix: A holds NaN or Inf")
    x_shape = (A.shape[1],) if x_shape is None else tuple(x_shape)
    if int(np.prod(x_shape)) != A.shape[1]:
        raise ValueError(f"matrix: x_shape {x_shape} has {int(np.prod(x_shape))} entries; A has {A.shape[1]} columns")
    e, U = jnp.linalg.eigh(A @ A.T)
    return Matrix(A, U, jnp.maximum(e, 0.0), jnp.linalg.pinv(A), x_shape)


@_operator(data=("mask",))
class Mask(LinearOperator):
    """Inpainting: y = mask * x (y has x's shape, zero where unobserved); build with :func:`inpainting`."""

    mask: Array

    @property
    def x_shape(self):
        return tuple(self.mask.shape)

    y_shape = x_shape

    def apply(self, x):
        return x * self.mask.astype(x.dtype)

    def adjoint(self, y):
        return self.apply(y)

    def pinv(self, y):
        return self.apply(y)

    def solve_aat(self, v, r2, s2):
        return jnp.where(self.mask > 0, v / (_r2(r2, v) + s2), 0.0)

    def logdet_aat(self, r2, s2):
        return jnp.sum(self.mask) * jnp.log(jnp.asarray(r2) + s2)

    def num_measurements(self):
        return jnp.sum(self.mask)  # an array: the mask may be traced


def inpainting(mask) -> Mask:
    """The inpainting operator of a 0/1 ``mask`` of one example's shape (1: observed)."""
    mask = jnp.asarray(mask)
    if mask.ndim < 1 or not bool(jnp.all((mask == 0) | (mask == 1))):
        raise ValueError(f"inpainting needs a mask of 0 (unknown) and 1 (observed) of one example's shape; got "
                         f"{describe(mask)}")
    return Mask(mask.astype(jnp.float32))


@_operator(meta=("x_shape", "factor"))
class Downsample(LinearOperator):
    """Super-resolution: average pooling of (H, W, C) images by ``factor`` each way; A A^T = I / f^2,
    A^+ = nearest upsampling. Build with :func:`downsampling`."""

    x_shape: tuple
    factor: int

    @property
    def y_shape(self):
        h, w, c = self.x_shape
        return (h // self.factor, w // self.factor, c)

    def apply(self, x):
        (h, w, c), f = self.x_shape, self.factor
        return x.reshape(x.shape[0], h // f, f, w // f, f, c).mean(axis=(2, 4))

    def pinv(self, y):
        return jnp.repeat(jnp.repeat(y, self.factor, axis=1), self.factor, axis=2)

    def adjoint(self, y):
        return self.pinv(y) / self.factor ** 2

    def solve_aat(self, v, r2, s2):
        return v / (_r2(r2, v) / self.factor ** 2 + s2)

    def logdet_aat(self, r2, s2):
        return int(np.prod(self.y_shape)) * jnp.log(jnp.asarray(r2) / self.factor ** 2 + s2)

    def num_measurements(self) -> int:
        return int(np.prod(self.y_shape))


def downsampling(x_shape, factor: int = 2) -> Downsample:
    """Average pooling of (H, W, C) images by ``factor`` (H and W divisible by it)."""
    check_int("downsampling", "factor", factor, lo=1)
    x_shape = tuple(x_shape)
    if len(x_shape) != 3 or x_shape[0] % factor or x_shape[1] % factor:
        raise ValueError(f"downsampling needs images (H, W, C) with H and W divisible by {factor}; got {x_shape}")
    return Downsample(x_shape, int(factor))


@_operator(meta=("x_shape",))
class Colorize(LinearOperator):
    """Colourisation: y = the channel mean of (H, W, C) images, (H, W, 1); A A^T = I / C, A^+ = the grey
    value in every channel. Build with :func:`colorization`."""

    x_shape: tuple

    @property
    def y_shape(self):
        return (*self.x_shape[:2], 1)

    def apply(self, x):
        return x.mean(axis=-1, keepdims=True)

    def pinv(self, y):
        return jnp.repeat(y, self.x_shape[-1], axis=-1)

    def adjoint(self, y):
        return self.pinv(y) / self.x_shape[-1]

    def solve_aat(self, v, r2, s2):
        return v / (_r2(r2, v) / self.x_shape[-1] + s2)

    def logdet_aat(self, r2, s2):
        return int(np.prod(self.y_shape)) * jnp.log(jnp.asarray(r2) / self.x_shape[-1] + s2)

    def num_measurements(self) -> int:
        return int(np.prod(self.y_shape))


def colorization(x_shape) -> Colorize:
    x_shape = tuple(x_shape)
    if len(x_shape) != 3:
        raise ValueError(f"colorization needs images (H, W, C); got {x_shape}")
    return Colorize(x_shape)


@_operator(data=("spectrum", "keep"), meta=("x_shape",))
class Blur(LinearOperator):
    """Deblurring: circular convolution over the spatial axes (every axis of a vector example (d,);
    H and W of an image (H, W, C), each channel alike), by FFT; ``spectrum`` is the kernel's, ``keep``
    where A^+ inverts it (elsewhere A^+ is zero). Build with :func:`blurring`."""

    spectrum: Array
    keep: Array
    x_shape: tuple

    y_shape = property(lambda self: self.x_shape)

    def _axes(self):
        return (1,) if len(self.x_shape) == 1 else (1, 2)

    def _filter(self, x, spec):
        spec = spec if len(self.x_shape) == 1 else spec[..., None]
        out = jnp.fft.ifftn(jnp.fft.fftn(x, axes=self._axes()) * spec, axes=self._axes())
        return jnp.real(out).astype(x.dtype)

    def apply(self, x):
        return self._filter(x, self.spectrum)

    def adjoint(self, y):
        return self._filter(y, jnp.conj(self.spectrum))

    def pinv(self, y):
        return self._filter(y, jnp.where(self.keep, 1.0 / jnp.where(self.keep, self.spectrum, 1.0), 0.0))

    def solve_aat(self, v, r2, s2):
        k2 = jnp.abs(self.spectrum) ** 2
        k2 = k2 if len(self.x_shape) == 1 else k2[..., None]
        out = jnp.fft.ifftn(jnp.fft.fftn(v, axes=self._axes()) / (_r2(r2, v) * k2 + s2), axes=self._axes())
        return jnp.real(out).astype(v.dtype)

    def logdet_aat(self, r2, s2):
        k2 = jnp.abs(self.spectrum) ** 2
        channels = 1 if len(self.x_shape) == 1 else self.x_shape[-1]
        r2 = jnp.asarray(r2)
        r2 = r2.reshape((-1,) + (1,) * k2.ndim) if r2.ndim else r2
        return channels * jnp.sum(jnp.log(r2 * k2 + s2), axis=tuple(range(-k2.ndim, 0)))

    def num_measurements(self) -> int:
        return int(np.prod(self.x_shape))


def blurring(x_shape, kernel, cutoff: float = 1e-3) -> Blur:
    """Circular convolution of examples of ``x_shape`` with ``kernel`` (centred; one axis for vectors
    (d,), two for images (H, W, C)); A^+ inverts the spectrum where |K| > ``cutoff`` x its largest."""
    x_shape = tuple(x_shape)
    spatial = x_shape if len(x_shape) == 1 else x_shape[:2]
    kernel = np.asarray(kernel, np.float64)
    if kernel.ndim != len(spatial) or any(k > s for k, s in zip(kernel.shape, spatial)):
        raise ValueError(f"blurring needs a kernel of {len(spatial)} axes no larger than {spatial}; got {kernel.shape}")
    full = np.zeros(spatial)
    full[tuple(slice(0, k) for k in kernel.shape)] = kernel
    full = np.roll(full, [-(k // 2) for k in kernel.shape], axis=tuple(range(len(spatial))))
    spectrum = np.fft.fftn(full)
    mag = np.abs(spectrum)
    return Blur(jnp.asarray(spectrum), jnp.asarray(mag > cutoff * mag.max()), x_shape)


def dense(op: LinearOperator, dtype=None) -> Array:
    """The matrix (m, d) of ``op`` on flattened examples (by applying it to the identity); float64
    when jax_enable_x64 is on (default dtype)."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    d = int(np.prod(op.x_shape))
    eye = jnp.eye(d, dtype=dtype).reshape((d, *op.x_shape))
    return op.apply(eye).reshape(d, -1).T


# --- the exact posterior of a Gaussian mixture ------------------------------------------------------
