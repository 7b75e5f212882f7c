"""Forward diffusion processes: VE, VP and sub-VP SDEs (Song et al., ICLR 2021).

Every process here is a linear SDE

    dx = f(t) x dt + g(t) dw,          t in [0, T], T = 1,

whose transition from clean data x0 is Gaussian,

    x(t) | x0 ~ N(a(t) x0, sigma(t)^2 I),

with mean coefficient ``a(t)`` and standard deviation ``sigma(t)`` in closed form. Processes are
frozen dataclasses registered as pytrees: their float hyper-parameters are leaves (so a process can
be passed through ``jax.jit``), the number of discrete steps ``N`` is a static field.

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

Array = jax.Array
ScoreFn = Callable[..., Array]

__all__ = [
    "SDE",
    "VESDE",
    "VPSDE",
    "SubVPSDE",
    "ReverseSDE",
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


class SDE:
    """A linear forward SDE dx = f(t) x dt + g(t) dw with Gaussian marginals.

    Subclasses define ``drift_diffusion_coeffs(t) -> (f(t), g(t))``,
    ``marginal_coeffs(t) -> (a(t), sigma(t))``, ``prior_std``, ``discrete_marginal_coeffs()``,
    and the antiderivative of the likelihood weighting (see ``sample_importance_time``).
    """

    N: int

    # Default lower end of the time grid when sampling (the original's `sampling_eps`).
    sampling_eps: float = 1e-3

    @property
    def T(self) -> float:
        """End time of the forward process (always 1.0)."""
        return 1.0

    # --- elementwise coefficients ------------------------------------------------------------

    def drift_diffusion_coeffs(self, t: Array) -> tuple[Array, Array]:
        raise NotImplementedError

    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        raise NotImplementedError

    @property
    def prior_std(self) -> float | Array:
        raise NotImplementedError

    def log_snr(self, t: Array) -> Array:
        """Half log signal-to-noise ratio lambda(t) = log(a(t) / sigma(t)), elementwise, decreasing in t.

        exp(-lambda) is the noise level of the rescaled process x / a(t) (EDM's sigma); DPM-Solver and
        the EDM sampler step in lambda or in exp(-lambda).
        """
        a, s = self.marginal_coeffs(t)
        return jnp.log(a) - jnp.log(s)

    def t_from_log_snr(self, lam: Array) -> Array:
        """Inverse of :meth:`log_snr`: the time t at which log(a/sigma) = lam, elementwise."""
        raise NotImplementedError

    # --- batched API ---------------------------------------------------------------------------

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Drift ``f(t) x`` (shape of x) and diffusion ``g(t)`` (shape (batch,)) of the forward SDE."""
        check_batch_time(x, t)
        f, g = self.drift_diffusion_coeffs(t)
        return expand_to(f, x) * x, g

    def marginal_prob(self, x0: Array, t: Array) -> tuple[Array, Array]:
        """Mean ``a(t) x0`` (shape of x0) and std ``sigma(t)`` (shape (batch,)) of p_t(x | x0)."""
        check_batch_time(x0, t, "x0")
        a, s = self.marginal_coeffs(t)
        return expand_to(a, x0) * x0, s

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

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time process driven by ``score_fn(x, t, **cond)``; see :class:`ReverseSDE`."""
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable score_fn(x, t); got {type(score_fn).__name__}")
        return ReverseSDE(self, score_fn, bool(probability_flow))

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
        """(a_i, sigma_i), each shape (N,): x_i | x0 ~ N(a_i x0, sigma_i^2 I) in the discrete chain."""
        raise NotImplementedError

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

    def _weight_antiderivative(self, t: Array) -> Array:
        raise NotImplementedError

    def _weight_antiderivative_inverse(self, v: Array) -> Array:
        raise NotImplementedError

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
        check_batch_time(x, t)
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
        check_batch_time(x, t)
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
# reverse time


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
    """The reverse-time process of ``forward`` driven by ``score_fn(x, t, **cond)``.

    SDE:               dx = [f(t) x - g(t)^2 s(x, t)] dt + g(t) dw_bar   (Anderson, 1982)
    probability flow:  dx = [f(t) x - g(t)^2 s(x, t) / 2] dt               (no diffusion)

    ``discretize`` gives the matching reverse step of the forward chain: with (f, G) from
    ``forward.discretize``, rev_f = f - G^2 s (times 1/2 for the flow) and rev_G = G (0 for the flow),
    so that x_{i-1} = x_i - rev_f + rev_G z.
    """

    forward: SDE
    score_fn: ScoreFn
    probability_flow: bool = False

    @property
    def T(self) -> float:
        return self.forward.T

    @property
    def N(self) -> int:
        return self.forward.N

    def _scale(self) -> float:
        return 0.5 if self.probability_flow else 1.0

    def sde(self, x: Array, t: Array, **cond) -> tuple[Array, Array]:
        """Reverse drift (shape of x) and diffusion (shape (batch,)); zero diffusion for the flow."""
        drift, g = self.forward.sde(x, t)
        score = self.score_fn(x, t, **cond)
        drift = drift - expand_to(g**2, x) * score * self._scale()
        return drift, (jnp.zeros_like(g) if self.probability_flow else g)

    def discretize(self, x: Array, t: Array, **cond) -> tuple[Array, Array]:
        """Reverse step coefficients (rev_f, rev_G) of the forward chain; see the class docstring."""
        f, big_g = self.forward.discretize(x, t)
        score = self.score_fn(x, t, **cond)
        rev_f = f - expand_to(big_g**2, x) * score * self._scale()
        return rev_f, (jnp.zeros_like(big_g) if self.probability_flow else big_g)


jax.tree_util.register_dataclass(ReverseSDE, data_fields=["forward"], meta_fields=["score_fn", "probability_flow"])
