"""Fast modern samplers, written for any process through its (a(t), sigma(t)) and
lambda(t) = log(a / sigma):

- DDIM with eta (Song, Meng & Ermon 2021),
- the EDM Heun sampler with stochastic churn (Karras et al. 2022, Alg. 2),
- DPM-Solver++(2M) and its stochastic variant 2M-SDE (Lu et al. 2022, "DPM-Solver++").

All use the denoiser D(x, t) = E[x0 | x_t] = (x + sigma^2 s) / a (Tweedie, `tweedie_denoise`). For any such process
the probability-flow ODE reads dx/dt = (sigma'/sigma) x + lambda' a D, whose exact solution from t
to s is x_s = (sigma_s / sigma_t) x_t + sigma_s int_{lambda_t}^{lambda_s} e^lambda D dlambda; DDIM
and DPM-Solver approximate the integral. The EDM sampler works on x / a with noise level
exp(-lambda) (EDM's sigma).
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from diffjax.numerics.arrays import expand_to
from diffjax.processes import SDE
from diffjax.samplers.base import Step, normal_like, static_field, step_class, tweedie_denoise

Array = jax.Array

__all__ = ["ddim", "edm_heun", "dpmpp_2m", "dpmpp_2m_sde"]


@step_class
class ddim(Step):
    """DDIM: with D = D(x, t) and eps_hat = (x - a_t D) / sigma_t,

        x_next = a_next D + sqrt(sigma_next^2 - c^2) eps_hat + c z,
        c = eta sigma_next sqrt(1 - exp(-2 (lambda_next - lambda_t))).

    eta = 0 is deterministic DDIM (a first-order PF-ODE solver); eta = 1 is ancestral sampling with
    the posterior variance. For VP this is exactly Song et al.'s sigma_t(eta).
    """

    sde: SDE
    eta: float = static_field(0.0)

    def __post_init__(self):
        if not self.eta >= 0:
            raise ValueError(f"ddim needs eta >= 0; got {self.eta}")
        super().__post_init__()

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    @property
    def forward_noise(self) -> bool:
        return float(self.eta) == 1.0  # ancestral sampling with the posterior variance

    @property
    def name(self) -> str:
        return f"ddim(eta={self.eta:g})"

    def update(self, keys, x, state, t, t_next, score_fn):
        sde = self.sde
        a_t, s_t = sde.marginal_coeffs(t)
        a_n, s_n = sde.marginal_coeffs(t_next)
        h = sde.log_snr(t_next) - sde.log_snr(t)
        d = tweedie_denoise(sde, score_fn, x, t)
        eps_hat = (x - expand_to(a_t, x) * d) / expand_to(s_t, x)
        c = self.eta * s_n * jnp.sqrt(-jnp.expm1(-2.0 * h))
        x_mean = expand_to(a_n, x) * d + expand_to(jnp.sqrt(jnp.maximum(s_n**2 - c**2, 0.0)), x) * eps_hat
        if self.eta == 0:
            return x_mean, state
        return x_mean + expand_to(c, x) * normal_like(keys, x), state


@step_class
class edm_heun(Step):
    """EDM's stochastic Heun sampler (Karras et al. 2022, Alg. 2) on y = x / a with noise level
    sigma_hat = exp(-lambda): churn raises sigma_hat to sigma_hat (1 + gamma), with
    gamma = min(S_churn / num_steps, sqrt(2) - 1) where S_tmin <= sigma_hat <= S_tmax, adding noise
    of std sqrt(sigma_up^2 - sigma_hat^2) S_noise; then a Heun step of dy/dsigma = (y - D) / sigma.
    With S_churn = 0 it is the deterministic second-order EDM sampler (2 NFE per step).
    Pair it with :func:`karras_timesteps`. With S_churn > 0 the driver tells it the grid's number of
    steps (``num_steps``, or give it yourself).
    """

    sde: SDE
    num_steps: Optional[int] = static_field(None)
    S_churn: float = static_field(0.0)
    S_tmin: float = static_field(0.0)
    S_tmax: float = static_field(float("inf"))
    S_noise: float = static_field(1.0)
    nfe = 2

    def __post_init__(self):
        if not (self.S_churn >= 0 and self.S_noise >= 0):
            raise ValueError(f"edm_heun needs S_churn >= 0 and S_noise >= 0; got {self.S_churn}, {self.S_noise}")
        if self.num_steps is not None and (isinstance(self.num_steps, bool) or self.num_steps < 1):
            raise ValueError(f"edm_heun needs num_steps >= 1 (or None: the grid's); got {self.num_steps!r}")
        super().__post_init__()

    @property
    def stochastic(self) -> bool:
        return self.S_churn > 0

    @property
    def needs_grid_length(self) -> bool:
        return self.S_churn > 0  # gamma = min(S_churn / num_steps, sqrt(2) - 1)

    @property
    def name(self) -> str:
        return "edm_heun" + (f"(churn={self.S_churn:g})" if self.S_churn else "")

    def _slope(self, y, sigma_hat, score_fn):
        sde = self.sde
        t = sde.t_from_log_snr(-jnp.log(sigma_hat))
        a, _ = sde.marginal_coeffs(t)
        d = tweedie_denoise(sde, score_fn, y * expand_to(a, y), t)
        return (y - d) / expand_to(sigma_hat, y)

    def update(self, keys, x, state, t, t_next, score_fn):
        sde = self.sde
        if self.S_churn > 0 and self.num_steps is None:
            raise ValueError("edm_heun with S_churn > 0 needs num_steps (the driver gives it the grid's)")
        gamma_max = min(self.S_churn / self.num_steps, math.sqrt(2.0) - 1.0) if self.S_churn > 0 else 0.0
        a_t, _ = sde.marginal_coeffs(t)
        a_n, _ = sde.marginal_coeffs(t_next)
        sig = jnp.exp(-sde.log_snr(t))
        sig_next = jnp.exp(-sde.log_snr(t_next))
        y = x / expand_to(a_t, x)
        if gamma_max > 0:
            gamma = jnp.where((sig >= self.S_tmin) & (sig <= self.S_tmax), gamma_max, 0.0)
            sig_up = sig * (1.0 + gamma)
            noise = expand_to(jnp.sqrt(sig_up**2 - sig**2) * self.S_noise, y) * normal_like(keys, y)
            y, sig = y + noise, sig_up
        dsig = expand_to(sig_next - sig, y)
        d1 = self._slope(y, sig, score_fn)
        y_euler = y + dsig * d1
        d2 = self._slope(y_euler, sig_next, score_fn)
        x = (y + dsig * 0.5 * (d1 + d2)) * expand_to(a_n, y)
        return x, state


def _multistep_init(x: Array):
    """State of the multistep solvers: previous denoised, previous step in lambda, updates done."""
    return (jnp.zeros_like(x), jnp.zeros(x.shape[:1], x.dtype), jnp.zeros((), jnp.int32))


def _second_order_correction(step, d, state, h):
    """(1/(2r)) (D - D_prev) with r = h_prev / h, or 0 on the first step (then first order), and on the
    last one with ``lower_order_final``."""
    d_prev, h_prev, count = state
    use = count > 0
    if step.lower_order_final and step.num_steps:
        use = use & (count < step.num_steps - 1)
    r = h_prev / h
    corr = (d - d_prev) / expand_to(2.0 * jnp.where(use, r, 1.0), d)
    return jnp.where(use, corr, jnp.zeros_like(corr))


def _dpmpp_2m_update(step, keys, x, state, t, t_next, score_fn, noise: bool):
    """DPM-Solver++(2M) (``noise`` False) or its 2M-SDE variant (True), one denoiser evaluation."""
    sde = step.sde
    _, s_t = sde.marginal_coeffs(t)
    a_n, s_n = sde.marginal_coeffs(t_next)
    h = sde.log_snr(t_next) - sde.log_snr(t)
    d = tweedie_denoise(sde, score_fn, x, t)
    d_eff = d + _second_order_correction(step, d, state, h)
    new_state = (d, h, state[2] + 1)
    if not noise:
        return expand_to(s_n / s_t, x) * x - expand_to(a_n * jnp.expm1(-h), x) * d_eff, new_state
    one_minus = -jnp.expm1(-2.0 * h)
    x_mean = expand_to(s_n / s_t * jnp.exp(-h), x) * x + expand_to(a_n * one_minus, x) * d_eff
    return x_mean + expand_to(s_n * jnp.sqrt(one_minus), x) * normal_like(keys, x), new_state


class _DPMSolverPP2MBase(Step):
    """Shared parts of the (2M) steps: the multistep history and the grid length for ``lower_order_final``."""

    @property
    def needs_grid_length(self) -> bool:
        return self.lower_order_final

    def init(self, x):
        return _multistep_init(x)


@step_class
class dpmpp_2m(_DPMSolverPP2MBase):
    """DPM-Solver++(2M), data prediction, one NFE per step: with h = lambda_next - lambda_t,

        x_next = (sigma_next / sigma_t) x - a_next expm1(-h) [D + (1/(2r)) (D - D_prev)],

    r = h_prev / h; the first step is first order (DDIM), and with ``lower_order_final`` the last one
    too (the driver tells the step its grid length)."""

    sde: SDE
    lower_order_final: bool = static_field(False)
    num_steps: Optional[int] = static_field(None)
    name = "dpmpp_2m"
    stochastic = False

    def update(self, keys, x, state, t, t_next, score_fn):
        return _dpmpp_2m_update(self, keys, x, state, t, t_next, score_fn, noise=False)


@step_class
class dpmpp_2m_sde(_DPMSolverPP2MBase):
    """Stochastic DPM-Solver++(2M-SDE), midpoint form: with h = lambda_next - lambda_t,

        x_next = (sigma_next / sigma_t) e^{-h} x + a_next (1 - e^{-2h}) [D + (1/(2r)) (D - D_prev)]
                 + sigma_next sqrt(1 - e^{-2h}) z,

    the first-order SDE-DPM-Solver++ update plus the multistep correction (``lower_order_final`` as
    :class:`dpmpp_2m`)."""

    sde: SDE
    lower_order_final: bool = static_field(False)
    num_steps: Optional[int] = static_field(None)
    name = "dpmpp_2m_sde"
    forward_noise = True

    def update(self, keys, x, state, t, t_next, score_fn):
        return _dpmpp_2m_update(self, keys, x, state, t, t_next, score_fn, noise=True)
