"""Inverse problems y = A x + sigma_y z with a score model as the prior, and the exact posterior to
measure them against.

**Operators** are values (pytrees) acting on a batch (batch, *x_shape) -> (batch, *y_shape):
:func:`matrix` (any A (m, d) on flattened examples), :func:`inpainting` (y = mask * x),
:func:`downsampling` (average pooling by a factor: super-resolution), :func:`blurring` (circular
convolution, by FFT) and :func:`colorization` (the channel mean). Each has ``apply``, ``adjoint``,
``pinv`` (the Moore-Penrose pseudo-inverse A^+) and ``solve_aat(v, r2, s2)`` =
(r2 A A^T + s2 I)^{-1} v and ``logdet_aat(r2, s2)``, what the methods below need; :func:`dense`
gives the matrix of any of them (for tests and oracles).

**The oracle** (:func:`mixture_posterior`): for a Gaussian-mixture prior sum_k pi_k N(mu_k, S_k)
and a linear A the posterior is the mixture with S_k' = A S_k A^T + sigma_y^2 I, K_k = S_k A^T S_k'^-1,
m_k = mu_k + K_k (y - A mu_k), C_k = S_k - K_k A S_k and weights proportional to
pi_k N(y; A mu_k, S_k'); its normaliser is the evidence p(y).

**Methods** (each composes with the samplers, like :mod:`diffjax.guidance`):

- :func:`pigdm_score` (PiGDM, Song et al. 2023): the score plus grad log p(y | x_t) under
  x0 | x_t ~ N(D(x_t), r_t^2 I), r_t^2 = sigma^2 / (a^2 + sigma^2):
  (dD/dx_t)^T A^T (r_t^2 A A^T + sigma_y^2 I)^{-1} (y - A D), one VJP through the denoiser; a
  posterior score for any step (exact for an N(mu, I) prior).
- :func:`dps` (Chung et al. 2023): any step, then x <- x - zeta grad_x ||y - A D(x)||, with zeta
  = ``scale`` and per-example norms (the code's unsquared norm; the paper's step rule
  zeta' / ||y - A D|| on the squared norm is the same up to the factor 2).
- :func:`ddnm` (Wang et al. 2023): DDIM with the denoised estimate replaced by its range-null
  composition A^+ y + (I - A^+ A) D(x_t) (noiseless y; with sigma_y > 0 it projects onto the noisy y).
- :func:`project` (the seed paper's replacement, for any linear A): after every update the range of
  A is set to the measurement carried to the current time: x <- x + A^+ (a y + sigma A z - A x).
- :func:`red_diff` (Mardani et al. 2024): a point estimate optimised by Adam over the times, the score
  as a regulariser (variational, MAP-like; no backpropagation through the network).
- :func:`twisted_smc` (TDS, Wu et al. 2023): particles moved by Euler-Maruyama of the reverse SDE
  twisted by PiGDM's likelihood, reweighted so that the weights telescope to p(y | x_0), resampled
  when the effective sample size falls below a threshold; asymptotically exact in the particles for
  the model's own discretised chain, with an estimate of the evidence log p(y).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from diffjax._checks import check_int, check_real, describe
from diffjax.mixture import GaussianMixture
from diffjax.numerics.arrays import expand_to, per_example_norm
from diffjax.numerics.random import fold_keys, normal_like
from diffjax.processes import SDE
from diffjax.samplers.base import Step, Wrapper, prior_sample, static_field, step_class
from diffjax.score import x0_from_score

Array = jax.Array

__all__ = ["LinearOperator", "Matrix", "Mask", "Downsample", "Blur", "Colorize", "matrix", "inpainting", "downsampling",
           "blurring", "colorization", "dense", "mixture_posterior",
           "denoiser", "pigdm_score", "dps", "ddnm", "project", "red_diff", "twisted_smc", "SMCResult"]


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

def mixture_posterior(prior: GaussianMixture, A: Array, y: Array, sigma_y: float) -> tuple[GaussianMixture, Array]:
    """(posterior, log p(y)) for the prior ``prior`` (d-dimensional), a matrix ``A`` (m, d) (use
    :func:`dense` for an operator) and one measurement ``y`` (m,) with noise ``sigma_y`` >= 0 (0 needs
    A S_k A^T invertible). The posterior is a :class:`~diffjax.GaussianMixture` (the module docstring)."""
    A, y = jnp.asarray(A), jnp.asarray(y)
    check_real("mixture_posterior", "sigma_y", sigma_y, lo=0.0)
    if A.ndim != 2 or y.shape != (A.shape[0],) or A.shape[1] != prior.means.shape[1]:
        raise ValueError(f"mixture_posterior needs A (m, d = {prior.means.shape[1]}) and y (m,); got A {A.shape}, "
                         f"y {y.shape}")
    m = A.shape[0]

    def component(mu, S):
        Sy = A @ S @ A.T + sigma_y ** 2 * jnp.eye(m, dtype=A.dtype)
        K = jnp.linalg.solve(Sy, A @ S).T
        r = y - A @ mu
        chol = jnp.linalg.cholesky(Sy)
        z = jax.scipy.linalg.solve_triangular(chol, r, lower=True)
        log_n = -0.5 * (z @ z) - jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * m * jnp.log(2 * jnp.pi)
        C = S - K @ A @ S
        return mu + K @ r, 0.5 * (C + C.T), log_n

    means, covs, log_n = jax.vmap(component)(prior.means, prior.covs)
    log_w = jnp.log(prior.weights) + log_n
    log_evidence = jax.nn.logsumexp(log_w)
    return GaussianMixture(jnp.exp(log_w - log_evidence), means, covs), log_evidence


# --- likelihood guidance --------------------------------------------------------------------------------

def denoiser(sde: SDE, score_fn, x: Array, t: Array) -> Array:
    """Tweedie's D(x, t) = E[x0 | x_t = x] from the score."""
    a, s = sde.marginal_coeffs(t)
    return x0_from_score(score_fn(x, t), x, a, s)


def _pigdm_r2(sde, t):
    a, s = sde.marginal_coeffs(t)
    return s ** 2 / (a ** 2 + s ** 2)


def _pigdm(sde, score_fn, op, y, sigma_y, weight, weighting, x, t):
    s, vjp = jax.vjp(lambda z: score_fn(z, t), x)
    a, sig = sde.marginal_coeffs(t)
    d = x0_from_score(s, x, a, sig)
    v = op.adjoint(op.solve_aat(y - op.apply(d), _pigdm_r2(sde, t), sigma_y ** 2))
    # D = (x + sig^2 s) / a: (dD/dx)^T v = (v + sig^2 (ds/dx)^T v) / a
    (js,) = vjp(v * expand_to(sig ** 2, v))
    w = weight * (a ** 2 if weighting == "a2" else 1.0)
    return s + expand_to(w, x) * (v + js) / expand_to(a, x)


def pigdm_score(sde: SDE, score_fn, op: LinearOperator, y: Array, sigma_y: float, weight: float = 1.0,
                weighting: str = "bayes") -> Partial:
    """PiGDM's posterior score s(x, t) + w grad log p~(y | x_t) (module docstring) for ``y`` (batch,
    *y_shape), a score function for any sampler step. ``weighting="bayes"`` with ``weight`` w = 1 is
    the Bayesian term, exact when the prior is N(mu, I). With a network it is unstable at high noise:
    dD/dx = (I + sigma^2 ds/dx) / a divides the network's small departure from -I / sigma^2 by a(t),
    which vanishes at T (on the digits the guided score is 26x the score at t = 0.99). ``"a2"``
    multiplies the term by a(t)^2, the authors' code's a_s a_t on a fine grid: the practical choice
    for networks. Costs one VJP through the score per evaluation."""
    op.check_y(y)
    check_real("pigdm_score", "sigma_y", sigma_y, lo=0.0)
    if weighting not in ("bayes", "a2"):
        raise ValueError(f"pigdm_score weighting must be 'bayes' or 'a2'; got {weighting!r}")
    return Partial(_pigdm, sde, score_fn, op, jnp.asarray(y), float(sigma_y), jnp.asarray(weight), weighting)


@step_class
class _DPS(Wrapper):
    step: Step
    op: LinearOperator
    y: Array
    scale: float = static_field(1.0)

    @property
    def name(self) -> str:
        return f"dps({self.step.name})"

    def init(self, x):
        return self.step.init(x)

    def update(self, keys, x, state, t, t_next, score_fn):
        def residual_norm(z):
            r = self.y - self.op.apply(denoiser(self.sde, score_fn, z, t))
            return jnp.sum(per_example_norm(r))

        grad = jax.grad(residual_norm)(x)
        x_next, state = self.step.update(keys, x, state, t, t_next, score_fn)
        return x_next - self.scale * grad, state


def dps(step: Step, op: LinearOperator, y: Array, scale: float = 0.5) -> Step:
    """DPS: ``step``, then x <- x - scale grad_{x_t} ||y - A D(x_t)|| (per-example norm; the gradient
    at the update's start, through the network). Official scales on FFHQ: 0.3 (SR, deblur), 0.5
    (inpainting), 1 (phase retrieval). One VJP per update beyond the step's evaluations."""
    if not isinstance(step, Step):
        raise TypeError(f"dps wraps a diffjax.samplers.Step; got {describe(step)}")
    op.check_y(y)
    check_real("dps", "scale", scale, lo=0.0)
    return _DPS(step, op, jnp.asarray(y), float(scale))


@step_class
class _DDNM(Step):
    sde: SDE
    op: LinearOperator
    y: Array
    eta: float = static_field(0.85)
    form: str = static_field("ddnm")

    name = "ddnm"
    stochastic = True

    def update(self, keys, x, state, t, t_next, score_fn):
        a, s = self.sde.marginal_coeffs(t)
        a_n, s_n = self.sde.marginal_coeffs(t_next)
        d = denoiser(self.sde, score_fn, x, t)
        x0 = d + self.op.pinv(self.y - self.op.apply(d))
        eps = (x - expand_to(a, x) * d) / expand_to(s, x)
        if self.form == "ddnm":  # the paper's code: sigma' (eta z + sqrt(1 - eta^2) eps^)
            c_z, c_eps = self.eta * s_n, jnp.sqrt(1 - self.eta ** 2) * s_n
        else:  # DDIM-eta proper: c_z = eta sigma' sqrt(1 - e^{-2h}), the rest of sigma'^2 along eps^
            h = jnp.log(a_n / s_n) - jnp.log(a / s)
            c_z = self.eta * s_n * jnp.sqrt(-jnp.expm1(-2 * h))
            c_eps = jnp.sqrt(jnp.maximum(s_n ** 2 - c_z ** 2, 0.0))
        return (expand_to(a_n, x) * x0 + expand_to(c_eps, x) * eps + expand_to(c_z, x) * normal_like(keys, x),
                state)

    def denoise(self, x, state, t, score_fn):
        """The final denoising, range-null composed too: A^+ y + (I - A^+ A) D(x, t_end)."""
        d = denoiser(self.sde, score_fn, x, t)
        return d + self.op.pinv(self.y - self.op.apply(d))


def ddnm(sde: SDE, op: LinearOperator, y: Array, eta: float = 0.85, form: str = "ddnm") -> Step:
    """DDNM: x0|y = A^+ y + (I - A^+ A) D(x_t), then x_next = a' x0|y + sigma' (eta z + sqrt(1 - eta^2)
    eps^) (``form="ddnm"``, the paper's code; eta = 0.85 its default), or the DDIM-eta step of
    DPM-Solver++'s SDE form with x0|y (``form="ddim"``: noise eta sigma' sqrt(1 - e^{-2h}), h the step
    in log-SNR). One evaluation per update; the final denoising is range-null composed too, so the
    result equals A^+ y in the range of A (noiseless y). In the null space the "ddim" form follows
    unconditional DDIM-eta, whose limit is exact for a prior uncorrelated across range and null space;
    the paper's form re-noises from the denoised estimate and is biased even then (measured: the
    null-space variance of an N(0, 0.5 I) prior comes out 0.36 at 200 steps; see the tests)."""
    op.check_y(y)
    check_real("ddnm", "eta", eta, lo=0.0, hi=1.0)
    if form not in ("ddnm", "ddim"):
        raise ValueError(f"ddnm form must be 'ddnm' (the paper's) or 'ddim'; got {form!r}")
    return _DDNM(sde, op, jnp.asarray(y), float(eta), form)


@step_class
class _Project(Wrapper):
    step: Step
    op: LinearOperator
    y: Array

    @property
    def name(self) -> str:
        return f"project({self.step.name})"

    def init(self, x):
        return self.step.init(x)

    def update(self, keys, x, state, t, t_next, score_fn):
        x, state = self.step.update(keys, x, state, t, t_next, score_fn)
        now = t_next if self.step.moves_time else t
        a, s = self.sde.marginal_coeffs(now)
        z = normal_like(fold_keys(keys, 0x1A7F), x)
        y_t = expand_to(a, self.y) * self.y + self.op.apply(expand_to(s, x) * z)
        return x + self.op.pinv(y_t - self.op.apply(x)), state


def project(step: Step, op: LinearOperator, y: Array) -> Step:
    """The seed paper's replacement for any linear A: after each update of ``step`` the range of A
    is replaced by the measurement carried to the current time, x <- x + A^+ (a y + sigma A z - A x)
    (for a mask: the known pixels become a y + sigma z, as :func:`diffjax.guidance.inpaint`)."""
    if not isinstance(step, Step):
        raise TypeError(f"project wraps a diffjax.samplers.Step; got {describe(step)}")
    op.check_y(y)
    return _Project(step, op, jnp.asarray(y))


# --- RED-diff ---------------------------------------------------------------------------------------------

def _red_diff_grad(sde, score_fn, op, y, mu, t, eps, lam, obs_weight):
    """The gradient of RED-diff's loss at mu (batch, ...) for one noise draw eps: the data term's
    obs_weight A^T (A mu - y) / m and the regulariser's w_t (eps^(a mu + sigma eps, t) - eps) / d with
    w_t = lam sigma / a (both terms means over their entries, as the reference code)."""
    a, s = sde.marginal_coeffs(t)
    x_t = expand_to(a, mu) * mu + expand_to(s, mu) * eps
    eps_hat = -expand_to(s, mu) * score_fn(x_t, t)
    m = op.num_measurements()
    d = int(np.prod(mu.shape[1:]))
    data = obs_weight * op.adjoint(op.apply(mu) - y) / m
    return data + expand_to(lam * s / a, mu) * (eps_hat - eps) / d


def red_diff(sde: SDE, score_fn, key: Array, op: LinearOperator, y: Array, timesteps: Array, *,
             learning_rate: float = 0.1, lam: float = 0.25, obs_weight: float = 1.0) -> Array:
    """RED-diff (Mardani et al. 2024): the variational posterior is a point mu, started at A^+ y and
    moved by one Adam step (betas 0.9, 0.99) per time of ``timesteps`` (descending, T first) on

        obs_weight ||y - A mu||^2 / (2m) + lam (sigma / a) <sg(eps^(a mu + sigma eps, t) - eps), mu> / d,

    a fresh eps per time (the score as a regulariser). Returns mu (batch, *x_shape): a MAP-like
    point, not a posterior sample (for a Gaussian prior its fixed point reweights the prior precision
    by E_t[w_t a sigma (a^2 S + sigma^2)^{-1}]: not the posterior mean either). One score evaluation
    per time and no backpropagation through the network."""
    y = jnp.asarray(y)
    op.check_y(y)
    for name, v in (("learning_rate", learning_rate), ("lam", lam), ("obs_weight", obs_weight)):
        check_real("red_diff", name, v, lo=0.0)
    return _red_diff(sde, score_fn, key, op, y, jnp.asarray(timesteps), float(learning_rate), float(lam),
                     float(obs_weight))


@functools.partial(jax.jit, static_argnums=(6, 7, 8))
def _red_diff(sde, score_fn, key, op, y, ts, learning_rate, lam, obs_weight):
    """The compiled loop of :func:`red_diff` (one program per shapes and hyper-parameters)."""
    import optax

    mu = op.pinv(y).astype(ts.dtype if jnp.issubdtype(ts.dtype, jnp.floating) else jnp.float32)
    opt = optax.adam(learning_rate, b1=0.9, b2=0.99)

    def body(carry, inputs):
        mu, state = carry
        i, t = inputs
        eps = jax.random.normal(jax.random.fold_in(key, i), mu.shape, mu.dtype)
        g = _red_diff_grad(sde, score_fn, op, y, mu, jnp.full((mu.shape[0],), t, ts.dtype), eps, lam, obs_weight)
        updates, state = opt.update(g, state)
        return (optax.apply_updates(mu, updates), state), None

    (mu, _), _ = jax.lax.scan(body, (mu, opt.init(mu)), (jnp.arange(ts.shape[0]), ts))
    return mu


# --- twisted SMC ----------------------------------------------------------------------------------------

class SMCResult(NamedTuple):
    """``x`` (K, ...) the particles, ``log_weights`` (K,) normalised (log-sum-exp 0), ``ess`` (n,) the
    effective sample size after each update (before resampling), ``log_evidence`` the estimate of
    log p(y), ``resampled`` (n,) whether each update resampled, ``nfe`` per particle."""

    x: Array
    log_weights: Array
    ess: Array
    log_evidence: Array
    resampled: Array
    nfe: int


def _log_twist(sde, score_fn, op, y, sigma_y, x, t, tempered=False):
    """(log p~_t(y | x) (K,), its gradient (K, ...), the score (K, ...)): PiGDM's Gaussian likelihood."""
    def log_p(z):
        s = score_fn(z, t)
        a, sig = sde.marginal_coeffs(t)
        d = x0_from_score(s, z, a, sig)
        r = y - op.apply(d)
        r2 = _pigdm_r2(sde, t)
        quad = jnp.sum((r * op.solve_aat(r, r2, sigma_y ** 2)).reshape(r.shape[0], -1), axis=1)
        value = -0.5 * quad - 0.5 * op.logdet_aat(r2, sigma_y ** 2)
        if tempered:  # p~^(a^2): still a positive twist (any is exact in the limit), tame where a -> 0
            value = value * a ** 2
        return jnp.sum(value), (value, s)

    (_, (value, s)), grad = jax.value_and_grad(log_p, has_aux=True)(x)
    return value, grad, s


def _log_normal(x, mean, var):
    """log N(x; mean, var I) per example, without the constant (it cancels in the weights)."""
    return -0.5 * jnp.sum(((x - mean) ** 2).reshape(x.shape[0], -1), axis=1) / var


def _systematic(key, log_w):
    k = log_w.shape[0]
    w = jnp.exp(log_w - jax.nn.logsumexp(log_w))
    positions = (jax.random.uniform(key, ()) + jnp.arange(k)) / k
    return jnp.clip(jnp.searchsorted(jnp.cumsum(w), positions), 0, k - 1)


def twisted_smc(sde: SDE, score_fn, key: Array, op: LinearOperator, y: Array, sigma_y: float, timesteps: Array,
                num_particles: int, *, ess_threshold: float = 0.5, tempered: bool = False) -> SMCResult:
    """The twisted diffusion sampler for one measurement ``y`` (1, *y_shape) (module docstring).

    Particles x_T ~ the prior move by the Euler-Maruyama step of the reverse SDE with the score
    shifted by g^2 dt grad log p~_t(y | x) (the twisted proposal, same variance), and carry the weights
    w = p(x'|x) p~_{t'}(y|x') / (q(x'|x, y) p~_t(y|x)); at the end p~ is replaced by the exact
    likelihood N(y; A x, sigma_y^2 I) of the final state (``sigma_y`` > 0), so the product of weights
    is p(y | x_end) times the proposal ratio: the weighted particles target the model's own chain
    conditioned on y, exactly as ``num_particles`` grows. Resampling (systematic) when the ESS falls
    below ``ess_threshold`` x K. ``tempered``: twist with p~^(a(t)^2) instead (still exact in the
    limit; the untempered twist's gradient blows up near T on a network, see :func:`pigdm_score`).
    One score evaluation and one VJP per particle and update."""
    y = jnp.asarray(y)
    op.check_y(y)
    if y.shape[0] != 1:
        raise ValueError(f"twisted_smc samples the posterior of one measurement: y must be (1, ...); got {y.shape}")
    check_real("twisted_smc", "sigma_y", sigma_y, lo=0.0, lo_open=True)
    k = check_int("twisted_smc", "num_particles", num_particles, lo=2)
    check_real("twisted_smc", "ess_threshold", ess_threshold, lo=0.0, hi=1.0)
    ts = jnp.asarray(timesteps)
    x_shape = tuple(op.x_shape)
    dtype = ts.dtype if jnp.issubdtype(ts.dtype, jnp.floating) else jnp.float32
    k_init, k_run = jax.random.split(key)
    x = prior_sample(sde, k_init, (k, *x_shape), dtype)
    return _smc(sde, score_fn, op, y, float(sigma_y), ts, x, k_run, float(ess_threshold), bool(tempered))


def _smc_impl(sde, score_fn, op, y, sigma_y, ts, x, key, ess_threshold, tempered):
    k = x.shape[0]
    t0 = jnp.full((k,), ts[0], ts.dtype)
    log_tw, grad, s = _log_twist(sde, score_fn, op, y, sigma_y, x, t0, tempered)
    log_w = log_tw
    n = ts.shape[0] - 1

    def body(carry, inputs):
        x, log_w, log_tw, grad, s, log_z = carry
        i, t, t_next = inputs
        tb, tnb = jnp.full((k,), t, ts.dtype), jnp.full((k,), t_next, ts.dtype)
        f, g = sde.drift_diffusion_coeffs(tb)
        dt = t_next - t
        var = (g[0] ** 2) * (-dt)
        mean = x + (expand_to(f, x) * x - expand_to(g ** 2, x) * s) * dt
        twisted = mean + var * grad
        x_new = twisted + jnp.sqrt(var) * jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        last = i == n - 1
        log_tw_new, grad_new, s_new = _log_twist(sde, score_fn, op, y, sigma_y, x_new, tnb, tempered)
        exact = -0.5 * jnp.sum(((y - op.apply(x_new)) ** 2).reshape(k, -1), axis=1) / sigma_y ** 2 \
            - 0.5 * op.num_measurements() * jnp.log(sigma_y ** 2)
        log_target = jnp.where(last, exact, log_tw_new)
        incr = _log_normal(x_new, mean, var) - _log_normal(x_new, twisted, var) + log_target - log_tw
        log_w = log_w + incr
        # log Z: the running product of the mean normalised increments
        norm = jax.nn.logsumexp(log_w)
        log_w = log_w - norm
        log_z = log_z + norm
        ess = 1.0 / jnp.sum(jnp.exp(2 * log_w))
        resample = (ess < ess_threshold * k) & ~last
        idx = jnp.where(resample, _systematic(jax.random.fold_in(key, n + i), log_w), jnp.arange(k))
        x_new, log_tw_new, grad_new, s_new = (v[idx] for v in (x_new, log_tw_new, grad_new, s_new))
        log_w = jnp.where(resample, -jnp.log(float(k)), log_w)
        return (x_new, log_w, log_tw_new, grad_new, s_new, log_z), (ess, resample)

    norm0 = jax.nn.logsumexp(log_w)
    carry = (x, log_w - norm0, log_tw, grad, s, norm0 - jnp.log(float(k)))
    (x, log_w, _, _, _, log_z), (ess, resampled) = jax.lax.scan(body, carry, (jnp.arange(n), ts[:-1], ts[1:]))
    return x, log_w, ess, log_z, resampled


_smc_jit = jax.jit(_smc_impl, static_argnums=(4, 8, 9))


def _smc(sde, score_fn, op, y, sigma_y, ts, x, key, ess_threshold, tempered) -> SMCResult:
    xs, log_w, ess, log_z, resampled = _smc_jit(sde, score_fn, op, y, sigma_y, ts, x, key, ess_threshold, tempered)
    # the twists and the final likelihood leave out -(m/2) log(2 pi): put it back once (it telescopes)
    log_z = log_z - 0.5 * op.num_measurements() * np.log(2 * np.pi)
    return SMCResult(xs, log_w, ess, log_z, resampled, int(ts.shape[0]))
