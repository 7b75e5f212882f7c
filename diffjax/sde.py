"""Forward processes: any Gaussian diffusion x_t = a(t) x0 + sigma(t) z, and PFGM++'s kernel.

A Gaussian process is given by its marginal coefficients: the mean coefficient ``a(t)`` and the
standard deviation ``sigma(t)`` of x(t) | x0 ~ N(a(t) x0, sigma(t)^2 I), with data at t = 0 and
noise at t = T. Everything else follows (Kingma et al. 2021; Karras et al. 2022):

    f(t)   = d log a / dt                          drift coefficient of dx = f x dt + g dw
    g(t)^2 = d sigma^2 / dt - 2 f sigma^2          squared diffusion
    lambda = log(a / sigma)                        half log-SNR, decreasing; t(lambda) its inverse
    reverse SDE     dx = [f x - g^2 s] dt + g dw_bar, or with any noise level eps(t) >= 0:
                    dx = [f x - (g^2 / 2 + eps) s] dt + sqrt(2 eps) dw_bar (same marginals)
    probability-flow ODE  dx/dt = f x - g^2 s / 2

A subclass gives ``marginal_coeffs(t) -> (a, sigma)``; f and g come from automatic
differentiation unless it writes them in closed form (VE, VP, sub-VP, EDM and cosine do), and
t(lambda) comes from bisection unless closed form. :class:`CustomProcess` takes the two functions.

Processes here: :class:`VESDE`, :class:`VPSDE`, :class:`SubVPSDE` (Song et al. 2021),
:class:`EDM` (Karras et al. 2022, sigma(t) = t), :class:`CosineVP` (Nichol & Dhariwal 2021),
:class:`RectifiedFlow` (the linear interpolant a = 1 - t, sigma = t), :class:`OneSidedInterpolant`
(Albergo et al. 2023) and, not Gaussian, :class:`PFGMPP` (Xu et al. 2023).

Processes are frozen dataclasses registered as pytrees: their float hyper-parameters are leaves (so a
process can be passed through ``jax.jit``); integers, names and functions are static.

Shapes: data ``x`` has shape ``(batch, ...)`` of any rank and time ``t`` has shape ``(batch,)``.
Methods named ``*_coeffs`` / ``sigma`` / ``beta`` act elementwise on ``t`` of any shape.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import check_fields
from diffjax._jit import bind

Array = jax.Array
ScoreFn = Callable[..., Array]

__all__ = [
    "SDE",
    "VESDE",
    "VPSDE",
    "SubVPSDE",
    "EDM",
    "CosineVP",
    "RectifiedFlow",
    "OneSidedInterpolant",
    "CustomProcess",
    "PFGMPP",
    "PROCESSES",
    "ReverseSDE",
    "check_epsilon",
    "check_batch_time",
    "expand_to",
]


# ----------------------------------------------------------------------------------------------
# helpers


def expand_to(v: Array, x: Array) -> Array:
    """Reshape per-example values ``v`` of shape (batch,) to broadcast against ``x`` (batch, ...)."""
    v = jnp.asarray(v)
    return jnp.reshape(v, v.shape + (1,) * (jnp.ndim(x) - v.ndim))


def check_batch_time(x: Array, t: Array, x_name: str = "x", T: float = 1.0) -> None:
    """Raise a ValueError unless ``x`` has shape (batch, ...) and ``t`` has shape (batch,), and, when t
    is concrete (not traced), every t lies in [0, T]."""
    x_shape = tuple(jnp.shape(x))
    t_shape = tuple(jnp.shape(t))
    if len(x_shape) < 1:
        raise ValueError(f"{x_name} must have a leading batch dimension, shape (batch, ...); got a scalar")
    if t_shape != (x_shape[0],):
        raise ValueError(
            f"t must have shape (batch,) = ({x_shape[0]},) to match {x_name} of shape {x_shape}; got {t_shape}"
        )
    if not isinstance(t, jax.core.Tracer) and t_shape[0]:
        v = np.asarray(t, np.float64)
        if not (np.all(v >= 0) and np.all(v <= T * (1 + 1e-6))):
            raise ValueError(f"t must lie in [0, T] = [0, {T}]; got values in [{v.min()}, {v.max()}]")


def _concrete_float(v) -> float | None:
    """The value of a concrete scalar, or None for tracers and tree-utility placeholders."""
    if isinstance(v, jax.core.Tracer):
        return None
    try:
        arr = np.asarray(v)
    except (TypeError, ValueError):
        return None
    if arr.dtype == object or arr.size != 1:
        return None
    return float(arr.reshape(()))


def _check_num_steps(n) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"N (number of discrete steps) must be an integer >= 1; got {n!r}")


def _log_expm1(v: Array) -> Array:
    """log(exp(v) - 1) for v > 0, stable for small and large v."""
    return v + jnp.log(-jnp.expm1(-v))


# ----------------------------------------------------------------------------------------------
# base class


def _bisect_decreasing(fn: Callable[[Array], Array], target: Array, lo: float, hi: float, iters: int) -> Array:
    """t in [lo, hi] with fn(t) = target for a decreasing fn, elementwise, by bisection (clipped to the
    ends when target lies outside fn's range)."""
    target = jnp.asarray(target)
    lo_v = jnp.full(target.shape, lo, target.dtype)
    hi_v = jnp.full(target.shape, hi, target.dtype)

    def body(_, bounds):
        l, h = bounds
        m = 0.5 * (l + h)
        above = fn(m) > target  # fn decreasing: the root lies right of m
        return jnp.where(above, m, l), jnp.where(above, h, m)

    l, h = jax.lax.fori_loop(0, iters, body, (lo_v, hi_v))
    return 0.5 * (l + h)


class SDE:
    """A forward process with Gaussian marginals x(t) | x0 ~ N(a(t) x0, sigma(t)^2 I), t in [0, T].

    Subclasses define ``marginal_coeffs(t) -> (a(t), sigma(t))``; every other coefficient has a
    generic definition here (automatic differentiation for f and g, bisection for t(lambda)) that a
    subclass may replace with a closed form. ``discrete_marginal_coeffs`` defaults to the marginals
    at ``discrete_timesteps``; VE, VP and sub-VP override it with their SMLD / DDPM chains.
    """

    N: int = 1000

    # Default lower end of the time grid when sampling (the original's `sampling_eps`).
    sampling_eps: float = 1e-3

    # Gaussian perturbation kernel: the closed-form marginals, Tweedie's formula, stochastic samplers
    # and the likelihood apply. PFGMPP sets it False.
    gaussian = True

    @property
    def T(self) -> float:
        """End time of the forward process (1.0 unless a process says otherwise; EDM's is sigma_max)."""
        return 1.0

    # --- elementwise coefficients ------------------------------------------------------------

    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        """(a(t), sigma(t)), elementwise."""
        raise NotImplementedError

    def marginal_coeffs_and_derivatives(self, t: Array) -> tuple[Array, Array, Array, Array]:
        """(a, sigma, da/dt, dsigma/dt), elementwise, by forward-mode differentiation of the marginals."""
        t = jnp.asarray(t)
        if not jnp.issubdtype(t.dtype, jnp.floating):
            t = t.astype(jnp.float32)
        (a, s), (da, ds) = jax.jvp(self.marginal_coeffs, (t,), (jnp.ones_like(t),))
        return a, s, da, ds

    def drift_diffusion_coeffs(self, t: Array) -> tuple[Array, Array]:
        """(f(t), g(t)) with f = d log a/dt and g^2 = d sigma^2/dt - 2 f sigma^2, elementwise."""
        a, s, da, ds = self.marginal_coeffs_and_derivatives(t)
        f = da / a
        g2 = 2.0 * s * ds - 2.0 * f * s**2
        return f, jnp.sqrt(jnp.maximum(g2, 0.0))

    @property
    def prior_std(self) -> float | Array:
        """Std of the prior N(0, prior_std^2 I) that stands for p_T: sigma(T) (a(T) x0 is neglected)."""
        return self.marginal_coeffs(jnp.asarray(self.T, jnp.float32))[1]

    def log_snr(self, t: Array) -> Array:
        """Half log signal-to-noise ratio lambda(t) = log(a(t) / sigma(t)), elementwise, decreasing in t.

        exp(-lambda) is the noise level of the rescaled process x / a(t) (EDM's sigma); DPM-Solver and
        the EDM sampler step in lambda or in exp(-lambda).
        """
        a, s = self.marginal_coeffs(t)
        return jnp.log(a) - jnp.log(s)

    def t_from_log_snr(self, lam: Array) -> Array:
        """Inverse of :meth:`log_snr`: the time t in [0, T] at which log(a/sigma) = lam, elementwise.

        Generic form: bisection to the dtype's resolution, then one Newton step whose derivative
        carries the gradient with respect to ``lam`` (d t / d lam = 1 / lambda'(t)).
        """
        lam = jnp.asarray(lam)
        if not jnp.issubdtype(lam.dtype, jnp.floating):
            lam = lam.astype(jnp.float32)
        iters = 64 if lam.dtype == jnp.float64 else 40
        t0 = jax.lax.stop_gradient(_bisect_decreasing(self.log_snr, jax.lax.stop_gradient(lam), 0.0, self.T, iters))
        lam0, dlam = jax.jvp(self.log_snr, (t0,), (jnp.ones_like(t0),))
        newton = (lam - jax.lax.stop_gradient(lam)) / jax.lax.stop_gradient(jnp.where(dlam != 0, dlam, -1.0))
        return t0 + newton

    def noise_level(self, t: Array) -> Array:
        """EDM's noise level sigma(t) / a(t) = exp(-lambda(t)) of the rescaled process x / a."""
        return jnp.exp(-self.log_snr(t))

    def t_from_noise_level(self, sigma_hat: Array) -> Array:
        """The time at which sigma(t) / a(t) = sigma_hat (inverse of :meth:`noise_level`)."""
        return self.t_from_log_snr(-jnp.log(jnp.asarray(sigma_hat)))

    def time_labels(self, t: Array, continuous: bool = True) -> Array:
        """The network's time input: 999 t / T (continuous) or the discrete step index (int32)."""
        t = jnp.asarray(t)
        return t * (999.0 / self.T) if continuous else self.timestep_index(t)

    # --- batched API ---------------------------------------------------------------------------

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Drift ``f(t) x`` (shape of x) and diffusion ``g(t)`` (shape (batch,)) of the forward SDE."""
        check_batch_time(x, t, T=self.T)
        f, g = self.drift_diffusion_coeffs(t)
        return expand_to(f, x) * x, g

    def marginal_prob(self, x0: Array, t: Array) -> tuple[Array, Array]:
        """Mean ``a(t) x0`` (shape of x0) and std ``sigma(t)`` (shape (batch,)) of p_t(x | x0)."""
        check_batch_time(x0, t, "x0", T=self.T)
        a, s = self.marginal_coeffs(t)
        return expand_to(a, x0) * x0, s

    def perturb(self, key: Array, x0: Array, t: Array) -> Array:
        """A draw of x(t) | x0, shape of x0: a(t) x0 + sigma(t) z (PFGMPP draws from its kernel)."""
        a, s = self.marginal_coeffs(t)
        z = jax.random.normal(key, jnp.shape(x0), jnp.result_type(x0))
        return expand_to(a, x0) * x0 + expand_to(s, x0) * z

    def prior_example(self, key: Array, shape, dtype=jnp.float32) -> Array:
        """One draw of the prior for an example of ``shape`` (no batch dimension)."""
        return self.prior_std * jax.random.normal(key, tuple(shape), dtype)

    def prior_sampling(self, key: Array, shape, dtype=jnp.float32) -> Array:
        """Draw from the prior N(0, prior_std^2 I) at t = T; ``shape`` is (batch, ...)."""
        shape = tuple(shape)
        if len(shape) < 1:
            raise ValueError(f"shape must be (batch, ...); got {shape}")
        return self.prior_std * jax.random.normal(key, shape, dtype)

    def prior_logp(self, z: Array) -> Array:
        """log N(z; 0, prior_std^2 I), summed over all non-batch dimensions; shape (batch,)."""
        if jnp.ndim(z) < 1:
            raise ValueError("z must have shape (batch, ...); got a scalar")
        d = math.prod(jnp.shape(z)[1:])
        var = jnp.asarray(self.prior_std, dtype=jnp.result_type(z)) ** 2
        sq = jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=1)
        return -0.5 * d * jnp.log(2.0 * jnp.pi * var) - 0.5 * sq / var

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """One step of the forward chain x_{i+1} = x_i + f + G z, by Euler–Maruyama with dt = T/N.

        Returns ``f`` (shape of x) and ``G`` (shape (batch,)). VE and VP override this with the
        SMLD and DDPM chains.
        """
        dt = self.T / self.N
        drift, g = self.sde(x, t)
        return drift * dt, g * math.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False, epsilon=None) -> "ReverseSDE":
        """The reverse-time process driven by ``score_fn(x, t, **cond)``; see :class:`ReverseSDE`."""
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable score_fn(x, t); got {type(score_fn).__name__}")
        return ReverseSDE(self, score_fn, bool(probability_flow), check_epsilon(epsilon))

    # --- discrete schedules --------------------------------------------------------------------

    def timestep_index(self, t: Array) -> Array:
        """Index i = round(t (N - 1) / T) of the discrete step nearest to t (int32, shape of t)."""
        i = jnp.round(jnp.asarray(t) * (self.N - 1) / self.T)
        return jnp.clip(i, 0, self.N - 1).astype(jnp.int32)

    @property
    def discrete_timesteps(self) -> Array:
        """The N times t_i = i T / (N - 1) that the discrete chain's index i stands for."""
        if self.N == 1:
            return jnp.zeros((1,), jnp.float32)
        return jnp.linspace(0.0, self.T, self.N, dtype=jnp.float32)

    def discrete_marginal_coeffs(self) -> tuple[Array, Array]:
        """(a_i, sigma_i), each shape (N,): x_i | x0 ~ N(a_i x0, sigma_i^2 I) in the discrete chain.

        Generic form: the continuous marginals at ``discrete_timesteps``."""
        return self.marginal_coeffs(self.discrete_timesteps)

    @property
    def alphas(self) -> Array:
        """Per-step mean contraction squared, alpha_i = (a_i / a_{i-1})^2 with a_{-1} = 1; shape (N,).

        For VP this is DDPM's 1 - beta_i; for VE it is 1. Langevin correctors use it as their step
        scale.
        """
        a, _ = self.discrete_marginal_coeffs()
        a_prev = jnp.concatenate([jnp.ones((1,), a.dtype), a[:-1]])
        return (a / a_prev) ** 2

    @property
    def alphas_cumprod(self) -> Array:
        """Cumulative product of ``alphas`` = a_i^2; shape (N,)."""
        a, _ = self.discrete_marginal_coeffs()
        return a**2

    @property
    def discrete_step_variances(self) -> Array:
        """Variance b_i^2 added by step i of the Gaussian chain x_i = sqrt(alpha_i) x_{i-1} + b_i z.

        Derived from the marginals: b_i^2 = sigma_i^2 - alpha_i sigma_{i-1}^2 with sigma_{-1} = 0.
        For VP this is DDPM's beta_i, for VE SMLD's sigma_i^2 - sigma_{i-1}^2.
        """
        _, s = self.discrete_marginal_coeffs()
        s_prev = jnp.concatenate([jnp.zeros((1,), s.dtype), s[:-1]])
        return s**2 - self.alphas * s_prev**2

    # --- likelihood weighting -------------------------------------------------------------------

    def likelihood_weight(self, t: Array) -> Array:
        """lambda(t) / sigma(t)^2 = g(t)^2 / sigma(t)^2, the density the importance sampler follows."""
        _, g = self.drift_diffusion_coeffs(t)
        _, s = self.marginal_coeffs(t)
        return (g / s) ** 2

    # g^2 / sigma^2 = d log sigma^2/dt - 2 d log a/dt = -2 d lambda/dt for every Gaussian process
    def _weight_antiderivative(self, t: Array) -> Array:
        return -2.0 * self.log_snr(t)

    def _weight_antiderivative_inverse(self, v: Array) -> Array:
        return self.t_from_log_snr(-0.5 * jnp.asarray(v))

    def sample_importance_time(self, key: Array, shape, eps: float = 1e-5) -> tuple[Array, Array]:
        """Draw t on [eps, T] with density q(t) = (g^2/sigma^2)(t) / Z by inverting its CDF.

        Returns ``(t, Z)`` with ``Z = int_eps^T g^2/sigma^2 dt``. For any h,
        E_{t~U(eps,T)}[g^2/sigma^2 h(t)] = Z / (T - eps) * E_{t~q}[h(t)], which is how the
        likelihood-weighted DSM loss uses it.
        """
        lo = self._weight_antiderivative(jnp.asarray(eps, jnp.float32))
        hi = self._weight_antiderivative(jnp.asarray(self.T, jnp.float32))
        u = jax.random.uniform(key, tuple(shape), jnp.float32)
        t = self._weight_antiderivative_inverse(lo + u * (hi - lo))
        return jnp.clip(t, eps, self.T), hi - lo

    def require_gaussian(self, what: str) -> None:
        """Raise a ValueError naming ``what`` when this process's kernel is not Gaussian."""
        if not self.gaussian:
            raise ValueError(f"{what} assumes a Gaussian perturbation kernel; {type(self).__name__} is not "
                             "Gaussian (use its deterministic denoiser-ODE samplers: edm_heun, ddim, dpmpp_2m, ode_*)")


def check_epsilon(epsilon):
    """Validate the reverse SDE's noise level: None (Anderson's, g^2 / 2), a number >= 0 or a callable
    eps(t) -> array of t's shape."""
    if epsilon is None or callable(epsilon):
        return epsilon
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon >= 0:
        raise ValueError(f"epsilon must be None, a number >= 0 or a function eps(t); got {epsilon!r}")
    return float(epsilon)


# ----------------------------------------------------------------------------------------------
# VE


@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
    """Variance-exploding SDE (SMLD): dx = sqrt(d[sigma^2]/dt) dw, sigma(t) = s_min (s_max/s_min)^t.

    Marginal: x(t) | x0 ~ N(x0, sigma(t)^2 I), following the paper's convention that x(0) already
    carries noise of scale sigma_min. Prior N(0, sigma_max^2 I). Discrete chain: SMLD's geometric
    ``discrete_sigmas`` (increasing, index i <-> t_i = i / (N - 1)).
    """

    sigma_min: float | Array = 0.01
    sigma_max: float | Array = 50.0
    N: int = 1000

    sampling_eps = 1e-5

    def __post_init__(self):
        check_fields(self)
        _check_num_steps(self.N)
        lo, hi = _concrete_float(self.sigma_min), _concrete_float(self.sigma_max)
        if lo is not None and not lo > 0:
            raise ValueError(f"VESDE needs sigma_min > 0; got sigma_min={lo}")
        if lo is not None and hi is not None and not lo < hi:
            raise ValueError(f"VESDE needs sigma_min < sigma_max; got sigma_min={lo}, sigma_max={hi}")

    def sigma(self, t: Array) -> Array:
        """sigma(t) = sigma_min (sigma_max / sigma_min)^t, elementwise."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** jnp.asarray(t)

    def drift_diffusion_coeffs(self, t):
        g = self.sigma(t) * jnp.sqrt(2.0 * jnp.log(self.sigma_max / self.sigma_min))
        return jnp.zeros_like(g), g

    def marginal_coeffs(self, t):
        s = self.sigma(t)
        return jnp.ones_like(s), s

    @property
    def prior_std(self):
        return self.sigma_max

    def log_snr(self, t):
        return -jnp.log(self.sigma(t))

    def time_labels(self, t, continuous=True):
        """sigma(t) (continuous, NCSN++'s input) or the index of the nearest discrete sigma."""
        return self.sigma(t) if continuous else self.timestep_index(t)

    def t_from_log_snr(self, lam):
        return (-jnp.asarray(lam) - jnp.log(self.sigma_min)) / jnp.log(self.sigma_max / self.sigma_min)

    @property
    def discrete_sigmas(self) -> Array:
        """SMLD noise levels exp(linspace(log sigma_min, log sigma_max, N)), increasing; shape (N,)."""
        return jnp.exp(jnp.linspace(jnp.log(self.sigma_min), jnp.log(self.sigma_max), self.N))

    def discrete_marginal_coeffs(self):
        s = self.discrete_sigmas
        return jnp.ones_like(s), s

    def discretize(self, x, t):
        """SMLD chain: f = 0, G = sqrt(sigma_i^2 - sigma_{i-1}^2) with sigma_{-1} = 0."""
        check_batch_time(x, t, T=self.T)
        i = self.timestep_index(t)
        sigmas = self.discrete_sigmas
        sigma = sigmas[i]
        adjacent = jnp.where(i == 0, jnp.zeros_like(sigma), sigmas[jnp.maximum(i - 1, 0)])
        return jnp.zeros_like(x), jnp.sqrt(sigma**2 - adjacent**2)

    # g^2 / sigma^2 = 2 log(sigma_max / sigma_min), a constant: importance sampling is uniform.
    def _weight_antiderivative(self, t):
        return 2.0 * jnp.log(self.sigma_max / self.sigma_min) * t

    def _weight_antiderivative_inverse(self, v):
        return v / (2.0 * jnp.log(self.sigma_max / self.sigma_min))


jax.tree_util.register_dataclass(VESDE, data_fields=["sigma_min", "sigma_max"], meta_fields=["N"])


# ----------------------------------------------------------------------------------------------
# VP family


class _LinearBetaSDE(SDE):
    """Shared schedule of VP and sub-VP: beta(t) = beta_min + t (beta_max - beta_min)."""

    beta_min: float | Array
    beta_max: float | Array

    def __post_init__(self):
        check_fields(self)
        _check_num_steps(self.N)
        lo, hi = _concrete_float(self.beta_min), _concrete_float(self.beta_max)
        name = type(self).__name__
        if lo is not None and not lo > 0:
            raise ValueError(f"{name} needs 0 < beta_min < beta_max; got beta_min={lo}")
        if lo is not None and hi is not None and not lo < hi:
            raise ValueError(f"{name} needs 0 < beta_min < beta_max; got beta_min={lo}, beta_max={hi}")

    def beta(self, t: Array) -> Array:
        """beta(t) = beta_min + t (beta_max - beta_min), elementwise."""
        return self.beta_min + jnp.asarray(t) * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: Array) -> Array:
        """B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2, elementwise."""
        t = jnp.asarray(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def _time_from_integrated_beta(self, b: Array) -> Array:
        # positive root of (d/2) t^2 + beta_min t - b = 0, written without cancellation
        d = self.beta_max - self.beta_min
        return 2.0 * b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * d * b))

    @property
    def discrete_betas(self) -> Array:
        """DDPM's betas linspace(beta_min / N, beta_max / N, N); shape (N,)."""
        return jnp.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

    def _ddpm_alphas_cumprod(self) -> Array:
        return jnp.cumprod(1.0 - self.discrete_betas)


@dataclasses.dataclass(frozen=True)
class VPSDE(_LinearBetaSDE):
    """Variance-preserving SDE (DDPM): dx = -beta(t)/2 x dt + sqrt(beta(t)) dw.

    Marginal: a(t) = exp(-B(t)/2), sigma(t)^2 = 1 - exp(-B(t)), B = int_0^t beta. Prior N(0, I).
    Discrete chain: DDPM's betas, ``alphas = 1 - betas``, ``alphas_cumprod``.
    """

    beta_min: float | Array = 0.1
    beta_max: float | Array = 20.0
    N: int = 1000

    def drift_diffusion_coeffs(self, t):
        b = self.beta(t)
        return -0.5 * b, jnp.sqrt(b)

    def marginal_coeffs(self, t):
        big_b = self.integrated_beta(t)
        return jnp.exp(-0.5 * big_b), jnp.sqrt(-jnp.expm1(-big_b))

    @property
    def prior_std(self):
        return 1.0

    def log_snr(self, t):
        # a^2 / sigma^2 = 1 / (e^B - 1)
        return -0.5 * _log_expm1(self.integrated_beta(t))

    def t_from_log_snr(self, lam):
        return self._time_from_integrated_beta(jax.nn.softplus(-2.0 * jnp.asarray(lam)))

    def discrete_marginal_coeffs(self):
        abar = self._ddpm_alphas_cumprod()
        return jnp.sqrt(abar), jnp.sqrt(1.0 - abar)

    @property
    def alphas(self):
        return 1.0 - self.discrete_betas

    def discretize(self, x, t):
        """DDPM chain: x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z, i.e. f = (sqrt(alpha_i) - 1) x."""
        check_batch_time(x, t, T=self.T)
        beta = self.discrete_betas[self.timestep_index(t)]
        return expand_to(jnp.sqrt(1.0 - beta) - 1.0, x) * x, jnp.sqrt(beta)

    # g^2/sigma^2 = beta / (1 - e^{-B}) = d/dt log(e^B - 1)
    def _weight_antiderivative(self, t):
        return _log_expm1(self.integrated_beta(t))

    def _weight_antiderivative_inverse(self, v):
        return self._time_from_integrated_beta(jax.nn.softplus(v))


jax.tree_util.register_dataclass(VPSDE, data_fields=["beta_min", "beta_max"], meta_fields=["N"])


@dataclasses.dataclass(frozen=True)
class SubVPSDE(_LinearBetaSDE):
    """Sub-VP SDE: dx = -beta(t)/2 x dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dw.

    Marginal: a(t) = exp(-B(t)/2) (as VP), sigma(t) = 1 - exp(-B(t)) (below VP's). Prior N(0, I).
    ``discretize`` is Euler–Maruyama. The discrete chain, which the original lacked, is derived
    from the marginals: it shares VP's mean schedule (DDPM's ``alphas``/``alphas_cumprod``), and
    its per-step noise follows from sigma_i = 1 - alphas_cumprod_i.
    """

    beta_min: float | Array = 0.1
    beta_max: float | Array = 20.0
    N: int = 1000

    def drift_diffusion_coeffs(self, t):
        b = self.beta(t)
        return -0.5 * b, jnp.sqrt(b * -jnp.expm1(-2.0 * self.integrated_beta(t)))

    def marginal_coeffs(self, t):
        big_b = self.integrated_beta(t)
        return jnp.exp(-0.5 * big_b), -jnp.expm1(-big_b)

    @property
    def prior_std(self):
        return 1.0

    def log_snr(self, t):
        # sigma / a = e^{B/2} - e^{-B/2} = 2 sinh(B/2)
        return -jnp.log(2.0 * jnp.sinh(0.5 * self.integrated_beta(t)))

    def t_from_log_snr(self, lam):
        return self._time_from_integrated_beta(2.0 * jnp.arcsinh(0.5 * jnp.exp(-jnp.asarray(lam))))

    def discrete_marginal_coeffs(self):
        abar = self._ddpm_alphas_cumprod()
        return jnp.sqrt(abar), 1.0 - abar

    @property
    def alphas(self):
        return 1.0 - self.discrete_betas

    # g^2/sigma^2 = beta (1 + e^{-B}) / (1 - e^{-B}) = d/dt [2 log(e^B - 1) - B]
    def _weight_antiderivative(self, t):
        big_b = self.integrated_beta(t)
        return 2.0 * _log_expm1(big_b) - big_b

    def _weight_antiderivative_inverse(self, v):
        # (w - 1)^2 / w = e^v with w = e^B; the root w > 1 gives B = log1p(w - 1).
        c = jnp.exp(v)
        big_b = jnp.log1p(0.5 * (c + jnp.sqrt(c * (c + 4.0))))
        return self._time_from_integrated_beta(big_b)


jax.tree_util.register_dataclass(SubVPSDE, data_fields=["beta_min", "beta_max"], meta_fields=["N"])


# ----------------------------------------------------------------------------------------------
# modern processes


def _register(cls, data=(), meta=()):
    jax.tree_util.register_dataclass(cls, data_fields=list(data), meta_fields=list(meta))
    return cls


def _check_time_domain(name: str, sampling_eps: float, t_max: float, upper: float) -> None:
    if not (0 < sampling_eps < t_max <= upper):
        raise ValueError(f"{name} needs 0 < sampling_eps < T <= {upper}; got sampling_eps={sampling_eps}, T={t_max}")


@dataclasses.dataclass(frozen=True)
class EDM(SDE):
    """Karras et al. (2022): a(t) = 1, sigma(t) = t, time is the noise level, t in [sigma_min, sigma_max].

    f = 0, g = sqrt(2 t), lambda = -log t; the probability-flow ODE is dx/dt = (x - D(x, t)) / t.
    Prior N(0, sigma_max^2 I). Networks read EDM's c_noise = log(t) / 4 (:meth:`time_labels`); wrap
    them with the EDM preconditioning through ``prediction="edm"`` in :mod:`diffjax.score`, and
    train with :func:`diffjax.losses.get_edm_loss_fn`.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    N: int = 1000

    def __post_init__(self):
        check_fields(self)
        _check_num_steps(self.N)
        _check_time_domain(type(self).__name__, self.sigma_min, self.sigma_max, float("inf"))

    @property
    def T(self) -> float:
        return float(self.sigma_max)

    @property
    def sampling_eps(self) -> float:
        return float(self.sigma_min)

    def marginal_coeffs(self, t):
        t = jnp.asarray(t)
        return jnp.ones_like(t), t

    def drift_diffusion_coeffs(self, t):
        t = jnp.asarray(t)
        return jnp.zeros_like(t), jnp.sqrt(2.0 * t)

    @property
    def prior_std(self):
        return float(self.sigma_max)

    def log_snr(self, t):
        return -jnp.log(jnp.asarray(t))

    def t_from_log_snr(self, lam):
        return jnp.exp(-jnp.asarray(lam))

    def time_labels(self, t, continuous=True):
        """EDM's c_noise = log(sigma) / 4 (continuous) or the discrete index."""
        return 0.25 * jnp.log(jnp.asarray(t)) if continuous else self.timestep_index(t)


_register(EDM, meta=("sigma_min", "sigma_max", "N"))


@dataclasses.dataclass(frozen=True)
class CosineVP(SDE):
    """Nichol & Dhariwal's cosine schedule as a VP process: with u(t) = (pi / 2) (t + s) / (1 + s),

        alpha_bar(t) = cos^2 u(t) / cos^2 u(0),   a = sqrt(alpha_bar),   sigma = sqrt(1 - alpha_bar),
        f = -(pi / 2) tan u / (1 + s),            g^2 = -2 f.

    alpha_bar(1) = 0 (lambda = -inf, f infinite), so the process ends at T = 0.9946 (DPM-Solver's
    choice for this schedule; lambda(T) = -4.78, a(T) = 0.0084). The discrete chain is the paper's:
    beta_i = min(1 - alpha_bar((i + 1) / N) / alpha_bar(i / N), max_beta), i = 0..N-1 (clipped at
    0.999 so the last steps stay finite).
    """

    s: float = 0.008
    t_max: float = 0.9946
    max_beta: float = 0.999
    N: int = 1000

    def __post_init__(self):
        check_fields(self)
        _check_num_steps(self.N)
        _check_time_domain(type(self).__name__, self.sampling_eps, self.t_max, 1.0)
        if not (self.s >= 0 and 0 < self.max_beta <= 1):
            raise ValueError(f"CosineVP needs s >= 0 and 0 < max_beta <= 1; got s={self.s}, max_beta={self.max_beta}")

    @property
    def T(self) -> float:
        return float(self.t_max)

    def _u(self, t):
        return (0.5 * math.pi) * (jnp.asarray(t) + self.s) / (1.0 + self.s)

    def _alpha_bar(self, t):
        return (jnp.cos(self._u(t)) / math.cos(0.5 * math.pi * self.s / (1.0 + self.s))) ** 2

    def marginal_coeffs(self, t):
        ab = self._alpha_bar(t)
        return jnp.sqrt(ab), jnp.sqrt(1.0 - ab)

    def drift_diffusion_coeffs(self, t):
        f = -(0.5 * math.pi / (1.0 + self.s)) * jnp.tan(self._u(t))
        return f, jnp.sqrt(-2.0 * f)

    def log_snr(self, t):
        ab = self._alpha_bar(t)
        return 0.5 * (jnp.log(ab) - jnp.log1p(-ab))

    def t_from_log_snr(self, lam):
        ab = jax.nn.sigmoid(2.0 * jnp.asarray(lam))
        c0 = math.cos(0.5 * math.pi * self.s / (1.0 + self.s))
        u = jnp.arccos(jnp.clip(jnp.sqrt(ab) * c0, -1.0, 1.0))
        return u * (1.0 + self.s) / (0.5 * math.pi) - self.s

    @property
    def prior_std(self):
        return 1.0

    @property
    def discrete_betas(self) -> Array:
        """The paper's clipped betas, shape (N,)."""
        i = jnp.arange(self.N, dtype=jnp.float32)
        b = 1.0 - self._alpha_bar((i + 1) / self.N) / self._alpha_bar(i / self.N)
        return jnp.minimum(b, self.max_beta)

    def discrete_marginal_coeffs(self):
        abar = jnp.cumprod(1.0 - self.discrete_betas)
        return jnp.sqrt(abar), jnp.sqrt(1.0 - abar)


_register(CosineVP, meta=("s", "t_max", "max_beta", "N"))


@dataclasses.dataclass(frozen=True)
class RectifiedFlow(SDE):
    """The linear interpolant of rectified flow / flow matching, in diffusion time (data at t = 0):

        x_t = (1 - t) x0 + t z,   f = -1 / (1 - t),   g^2 = 2 t / (1 - t),   lambda = log((1 - t) / t).

    The probability-flow velocity is dx/dt = E[z - x0 | x_t] = (x - D) / t, the flow-matching target
    (with the sign of diffusion time). f and g^2 diverge at t = 1, so the process ends at
    T = t_max = 1 - 1e-3 (prior N(0, T^2 I); the signal left there, 1e-3 x0, is below the prior's
    noise). For stochastic sampling use a bounded noise level (``euler_maruyama(sde, epsilon=...)``):
    Anderson's eps = g^2 / 2 diverges at the noise end.
    """

    t_max: float = 1.0 - 1e-3
    sampling_eps: float = 1e-3
    N: int = 1000

    def __post_init__(self):
        check_fields(self)
        _check_num_steps(self.N)
        _check_time_domain(type(self).__name__, self.sampling_eps, self.t_max, 1.0)
        if self.t_max >= 1.0:
            raise ValueError(f"RectifiedFlow needs t_max < 1 (f and g diverge at 1); got {self.t_max}")

    @property
    def T(self) -> float:
        return float(self.t_max)

    def marginal_coeffs(self, t):
        t = jnp.asarray(t)
        return 1.0 - t, t

    def drift_diffusion_coeffs(self, t):
        t = jnp.asarray(t)
        return -1.0 / (1.0 - t), jnp.sqrt(2.0 * t / (1.0 - t))

    def log_snr(self, t):
        t = jnp.asarray(t)
        return jnp.log1p(-t) - jnp.log(t)

    def t_from_log_snr(self, lam):
        return jax.nn.sigmoid(-jnp.asarray(lam))


_register(RectifiedFlow, meta=("t_max", "sampling_eps", "N"))


def _interpolant_alpha_beta(kind: str, s: Array) -> tuple[Array, Array]:
    if kind == "linear":
        return 1.0 - s, s
    return jnp.cos(0.5 * math.pi * s), jnp.sin(0.5 * math.pi * s)


def _interpolant_gamma(kind: str, scale: float, s: Array) -> Array:
    if kind == "zero":
        return jnp.zeros_like(s)
    if kind == "brownian":
        return jnp.sqrt(scale * s * (1.0 - s))
    return scale * s * (1.0 - s)


INTERPOLANT_ALPHAS = ("linear", "trig")
INTERPOLANT_GAMMAS = ("zero", "brownian", "bsquared")


@dataclasses.dataclass(frozen=True)
class OneSidedInterpolant(SDE):
    """A one-sided stochastic interpolant (Albergo, Boffi & Vanden-Eijnden 2023) as a process.

    In the interpolant's time s (noise x_0 ~ N(0, I) at s = 0, data x_1 at s = 1),
    x_s = alpha(s) x_0 + beta(s) x_1 + gamma(s) z; alpha x_0 + gamma z is one Gaussian, so in
    diffusion time t = 1 - s this is the process

        a(t) = beta(1 - t),   sigma(t) = sqrt(alpha(1 - t)^2 + gamma(1 - t)^2).

    ``alpha``: "linear" (alpha = 1 - s, beta = s) or "trig" (alpha = cos(pi s / 2), beta = sin(pi s / 2));
    ``gamma``: "zero", "brownian" sqrt(c s (1 - s)) or "bsquared" c s (1 - s), with c = ``gamma_scale``.
    Linear with gamma = 0 is :class:`RectifiedFlow`. f and g come by automatic differentiation.
    """

    alpha: str = "linear"
    gamma: str = "brownian"
    gamma_scale: float = 1.0
    t_max: float = 1.0 - 1e-3
    sampling_eps: float = 1e-3
    N: int = 1000

    def __post_init__(self):
        check_fields(self)
        _check_num_steps(self.N)
        if self.alpha not in INTERPOLANT_ALPHAS:
            raise ValueError(f"unknown interpolant alpha {self.alpha!r}; expected one of {INTERPOLANT_ALPHAS}")
        if self.gamma not in INTERPOLANT_GAMMAS:
            raise ValueError(f"unknown interpolant gamma {self.gamma!r}; expected one of {INTERPOLANT_GAMMAS}")
        if not self.gamma_scale >= 0:
            raise ValueError(f"gamma_scale must be >= 0; got {self.gamma_scale}")
        _check_time_domain(type(self).__name__, self.sampling_eps, self.t_max, 1.0)
        if self.t_max >= 1.0:
            raise ValueError(f"OneSidedInterpolant needs t_max < 1 (a(1) = 0); got {self.t_max}")

    @property
    def T(self) -> float:
        return float(self.t_max)

    def marginal_coeffs(self, t):
        s = 1.0 - jnp.asarray(t)
        alpha, beta = _interpolant_alpha_beta(self.alpha, s)
        gamma = _interpolant_gamma(self.gamma, self.gamma_scale, s)
        return beta, jnp.sqrt(alpha**2 + gamma**2)


_register(OneSidedInterpolant, meta=("alpha", "gamma", "gamma_scale", "t_max", "sampling_eps", "N"))


_CHECKED_MARGINALS: set = set()


@dataclasses.dataclass(frozen=True)
class CustomProcess(SDE):
    """A Gaussian process from your own ``marginal_fn(t) -> (a(t), sigma(t))`` (elementwise, jax-traceable,
    a > 0, sigma > 0 on (0, T], lambda = log(a / sigma) decreasing). f and g come by automatic
    differentiation, t(lambda) by bisection. ``marginal_fn`` is compared by identity: define it once.

        CustomProcess(lambda t: (jnp.cos(t * jnp.pi / 2), jnp.sin(t * jnp.pi / 2)), T=0.999)
    """

    marginal_fn: Callable[[Array], tuple[Array, Array]]
    t_max: float = 1.0
    sampling_eps: float = 1e-3
    N: int = 1000

    def __post_init__(self):
        check_fields(self)
        _check_num_steps(self.N)
        if not callable(self.marginal_fn):
            raise TypeError(f"marginal_fn must be callable marginal_fn(t) -> (a, sigma); got {type(self.marginal_fn).__name__}")
        _check_time_domain(type(self).__name__, self.sampling_eps, self.t_max, float("inf"))
        key = (self.marginal_fn, self.t_max, self.sampling_eps)
        if key in _CHECKED_MARGINALS:  # pytree unflattening re-runs this: check a function once
            return
        t = np.linspace(self.sampling_eps, self.t_max, 65)
        a, s = (np.asarray(v, np.float64) for v in self.marginal_fn(jnp.asarray(t, jnp.float32)))
        if a.shape != t.shape or s.shape != t.shape:
            raise ValueError(f"marginal_fn(t) must return (a, sigma) of t's shape {t.shape}; got {a.shape}, {s.shape}")
        lam = np.log(a) - np.log(s)
        if not (np.all(a > 0) and np.all(s > 0) and np.all(np.diff(lam) < 0)):
            raise ValueError("marginal_fn must give a > 0, sigma > 0 and a decreasing log(a / sigma) on [sampling_eps, T]")
        _CHECKED_MARGINALS.add(key)

    @property
    def T(self) -> float:
        return float(self.t_max)

    def marginal_coeffs(self, t):
        return self.marginal_fn(jnp.asarray(t))


_register(CustomProcess, meta=("marginal_fn", "t_max", "sampling_eps", "N"))


# ----------------------------------------------------------------------------------------------
# PFGM++


@dataclasses.dataclass(frozen=True)
class PFGMPP(EDM):
    """PFGM++ (Xu et al. 2023): EDM's time (a = 1, t = sigma) with a Student-t perturbation kernel.

    With D extra dimensions and r = sigma sqrt(D), the kernel on the N data dimensions is

        p_r(x | x0) proportional to (||x - x0||^2 + r^2)^(-(N + D) / 2),

    a multivariate Student-t with D degrees of freedom and scale sigma: x - x0 = sigma z / sqrt(chi2_D / D),
    z ~ N(0, I_N) (``prior_method="chi2"``), or equally R u with R^2 / r^2 ~ BetaPrime(N/2, D/2) and u
    uniform on the sphere (``"beta_prime"``, the paper's sampler). D = inf is EDM. N is always read
    from the data's shape, so it cannot be set wrong.

    The network is EDM's denoiser D(x, sigma) and sampling is EDM's ODE dx/dsigma = (x - D) / sigma
    from the heavy-tailed prior at sigma_max. diffjax's samplers take a score function; here
    ``score_fn`` is the EDM-equivalent (D - x) / sigma^2, for which Tweedie's formula returns D and
    the probability-flow drift f x - g^2 s / 2 is the ODE above. So the deterministic steps
    (``edm_heun`` without churn, ``ddim`` with eta = 0, ``dpmpp_2m``, ``ode_*``) and ``ode_sample``
    apply as they are; stochastic steps, the Gaussian closed forms and the probability-flow
    likelihood raise (``gaussian`` is False).
    """

    D: float = 128.0
    prior_method: str = "chi2"
    gaussian = False
    _INFINITE_OK = ("D",)

    def __post_init__(self):
        super().__post_init__()
        if not (self.D > 2):
            raise ValueError(f"PFGMPP needs D > 2 extra dimensions (finite variance), or D = inf for EDM; got D={self.D}")
        if self.prior_method not in ("chi2", "beta_prime"):
            raise ValueError(f"unknown PFGMPP prior_method {self.prior_method!r}; expected 'chi2' or 'beta_prime'")

    def kernel_noise(self, key: Array, shape, sigma: Array, dtype=jnp.float32) -> Array:
        """Student-t kernel noise x - x0 for examples of ``shape`` (batch, ...) at noise levels ``sigma`` (batch,)."""
        shape = tuple(shape)
        n_dim = math.prod(shape[1:])
        k_z, k_r = jax.random.split(key)
        z = jax.random.normal(k_z, shape, dtype)
        if math.isinf(self.D):
            return expand_to(jnp.asarray(sigma, dtype), z) * z
        if self.prior_method == "chi2":
            chi2 = 2.0 * jax.random.gamma(k_r, 0.5 * self.D, (shape[0],), dtype)
            scale = jnp.asarray(sigma, dtype) / jnp.sqrt(chi2 / self.D)
            return expand_to(scale, z) * z
        b = jax.random.beta(k_r, 0.5 * n_dim, 0.5 * self.D, (shape[0],), dtype)
        radius = jnp.asarray(sigma, dtype) * math.sqrt(self.D) * jnp.sqrt(b / (1.0 - b))
        norm = jnp.sqrt(jnp.sum(jnp.reshape(z, (shape[0], -1)) ** 2, axis=1))
        return expand_to(radius / norm, z) * z

    def perturb(self, key, x0, t):
        return x0 + self.kernel_noise(key, jnp.shape(x0), t, jnp.result_type(x0))

    def prior_example(self, key, shape, dtype=jnp.float32):
        sigma = jnp.full((1,), self.sigma_max, dtype)
        return self.kernel_noise(key, (1,) + tuple(shape), sigma, dtype)[0]

    def prior_sampling(self, key, shape, dtype=jnp.float32):
        shape = tuple(shape)
        if len(shape) < 1:
            raise ValueError(f"shape must be (batch, ...); got {shape}")
        return self.kernel_noise(key, shape, jnp.full(shape[:1], self.sigma_max, dtype), dtype)

    def prior_logp(self, z):
        raise ValueError("PFGMPP has no Gaussian prior density here: the probability-flow likelihood needs the "
                         "augmented-space flow, which diffjax does not implement")

    def delta_mixture_score(self, atoms: Array, weights: Array) -> Callable[[Array, Array], Array]:
        """The exact EDM-equivalent score (D* - x) / sigma^2 for data on atoms (K, d) with weights (K,):
        D*(x, sigma) = sum_k w_k mu_k, w_k proportional to pi_k (||x - mu_k||^2 + sigma^2 D)^(-(N + D) / 2)."""
        return bind(_pfgmpp_delta_score, self, jnp.asarray(atoms), jnp.asarray(weights))


_register(PFGMPP, meta=("sigma_min", "sigma_max", "N", "D", "prior_method"))


def _pfgmpp_delta_score(process: PFGMPP, atoms: Array, weights: Array, x: Array, t: Array) -> Array:
    n_dim = x.shape[1]
    sq = jnp.sum((x[:, None, :] - atoms[None]) ** 2, axis=-1)  # (B, K)
    sig2 = expand_to(t, sq) ** 2
    if math.isinf(process.D):
        logw = jnp.log(weights)[None] - 0.5 * sq / sig2
    else:
        logw = jnp.log(weights)[None] - 0.5 * (n_dim + process.D) * jnp.log(sq + sig2 * process.D)
    w = jax.nn.softmax(logw, axis=-1)
    d = w @ atoms
    return (d - x) / expand_to(t, x) ** 2


PROCESSES = {
    "vesde": VESDE,
    "vpsde": VPSDE,
    "subvpsde": SubVPSDE,
    "edm": EDM,
    "cosine": CosineVP,
    "rectified_flow": RectifiedFlow,
    "interpolant": OneSidedInterpolant,
    "pfgmpp": PFGMPP,
}


# ----------------------------------------------------------------------------------------------
# reverse time


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
    """The reverse-time process of ``forward`` driven by ``score_fn(x, t, **cond)``.

    SDE:               dx = [f(t) x - g(t)^2 s(x, t)] dt + g(t) dw_bar   (Anderson, 1982)
    probability flow:  dx = [f(t) x - g(t)^2 s(x, t) / 2] dt               (no diffusion)
    noise level eps:   dx = [f x - (g^2 / 2 + eps(t)) s] dt + sqrt(2 eps(t)) dw_bar

Every eps(t) >= 0 has the same marginals (the Fokker–Planck equation of the flow plus a Langevin
term at zero net probability current); eps = g^2 / 2 is Anderson's SDE, eps = 0 the flow. A bounded
eps is the stochastic interpolants' choice where g^2 diverges at the noise end (rectified flow:
g^2 = 2t / (1 - t)). ``epsilon`` is None (g^2 / 2), a number or a function eps(t).

    ``discretize`` gives the matching reverse step of the forward chain: with (f, G) from
    ``forward.discretize``, rev_f = f - G^2 s (times 1/2 for the flow) and rev_G = G (0 for the flow),
    so that x_{i-1} = x_i - rev_f + rev_G z.
    """

    forward: SDE
    score_fn: ScoreFn
    probability_flow: bool = False
    epsilon: object = None

    @property
    def T(self) -> float:
        return self.forward.T

    @property
    def N(self) -> int:
        return self.forward.N

    def _scale(self) -> float:
        return 0.5 if self.probability_flow else 1.0

    def noise_level(self, t: Array) -> Array:
        """eps(t) of the reverse SDE, shape of t: g^2/2 by default, 0 for the flow."""
        if self.probability_flow:
            return jnp.zeros_like(jnp.asarray(t, jnp.result_type(t, jnp.float32)))
        if self.epsilon is None:
            return 0.5 * self.forward.drift_diffusion_coeffs(t)[1] ** 2
        if callable(self.epsilon):
            return jnp.broadcast_to(jnp.asarray(self.epsilon(t)), jnp.shape(t))
        return jnp.full(jnp.shape(t), self.epsilon, jnp.result_type(t, jnp.float32))

    def sde(self, x: Array, t: Array, **cond) -> tuple[Array, Array]:
        """Reverse drift (shape of x) and diffusion sqrt(2 eps) (shape (batch,)); zero diffusion for the flow."""
        drift, g = self.forward.sde(x, t)
        score = self.score_fn(x, t, **cond)
        if self.epsilon is None or self.probability_flow:
            drift = drift - expand_to(g**2, x) * score * self._scale()
            return drift, (jnp.zeros_like(g) if self.probability_flow else g)
        eps = self.noise_level(t)
        drift = drift - expand_to(0.5 * g**2 + eps, x) * score
        return drift, jnp.sqrt(2.0 * eps)

    def discretize(self, x: Array, t: Array, **cond) -> tuple[Array, Array]:
        """Reverse step coefficients (rev_f, rev_G) of the forward chain; see the class docstring."""
        f, big_g = self.forward.discretize(x, t)
        score = self.score_fn(x, t, **cond)
        rev_f = f - expand_to(big_g**2, x) * score * self._scale()
        return rev_f, (jnp.zeros_like(big_g) if self.probability_flow else big_g)


jax.tree_util.register_dataclass(ReverseSDE, data_fields=["forward"],
                                 meta_fields=["score_fn", "probability_flow", "epsilon"])
