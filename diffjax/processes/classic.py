"""The processes of Song et al. (2021): variance exploding (SMLD), variance preserving (DDPM) and sub-VP."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.numerics.arrays import expand_to
from diffjax.processes.base import SDE, check_batch_time, check_increasing_pair, check_num_steps, log_expm1, process_class

Array = jax.Array

__all__ = ["VESDE", "VPSDE", "SubVPSDE"]


@process_class
class VESDE(SDE):
    """Variance-exploding SDE (SMLD): dx = sqrt(d[sigma^2]/dt) dw, sigma(t) = s_min (s_max/s_min)^t.

    Marginal: x(t) | x0 ~ N(x0, sigma(t)^2 I), following the paper's convention that x(0) already
    carries noise of scale sigma_min. Prior N(0, sigma_max^2 I). Discrete chain: SMLD's geometric
    ``discrete_sigmas`` (increasing, index i <-> t_i = i / (N - 1)).
    """

    sigma_min: float | Array = 0.01
    sigma_max: float | Array = 50.0
    N: int = 1000

    name = "vesde"
    t_end = 1e-5
    t_min = 1e-5
    score_sde_labels = "sigma"

    def __post_init__(self):
        check_num_steps(self.N)
        check_increasing_pair("VESDE", "sigma_min", self.sigma_min, "sigma_max", self.sigma_max)

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




# ----------------------------------------------------------------------------------------------
# VP family


class _LinearBetaSDE(SDE):
    """Shared schedule of VP and sub-VP: beta(t) = beta_min + t (beta_max - beta_min). Samplers stop
    at 1e-3, losses and the likelihood start at 1e-5 (the original's sampling_eps and eps)."""

    beta_min: float | Array
    beta_max: float | Array
    t_min = 1e-5

    def __post_init__(self):
        check_num_steps(self.N)
        check_increasing_pair(type(self).__name__, "beta_min", self.beta_min, "beta_max", self.beta_max)

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


@process_class
class VPSDE(_LinearBetaSDE):
    """Variance-preserving SDE (DDPM): dx = -beta(t)/2 x dt + sqrt(beta(t)) dw.

    Marginal: a(t) = exp(-B(t)/2), sigma(t)^2 = 1 - exp(-B(t)), B = int_0^t beta. Prior N(0, I).
    Discrete chain: DDPM's betas, ``alphas = 1 - betas``, ``alphas_cumprod``.
    """

    beta_min: float | Array = 0.1
    beta_max: float | Array = 20.0
    N: int = 1000

    name = "vpsde"

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
        return -0.5 * log_expm1(self.integrated_beta(t))

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
        return log_expm1(self.integrated_beta(t))

    def _weight_antiderivative_inverse(self, v):
        return self._time_from_integrated_beta(jax.nn.softplus(v))




@process_class
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

    name = "subvpsde"

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
        return 2.0 * log_expm1(big_b) - big_b

    def _weight_antiderivative_inverse(self, v):
        # (w - 1)^2 / w = e^v with w = e^B; the root w > 1 gives B = log1p(w - 1).
        c = jnp.exp(v)
        big_b = jnp.log1p(0.5 * (c + jnp.sqrt(c * (c + 4.0))))
        return self._time_from_integrated_beta(big_b)
