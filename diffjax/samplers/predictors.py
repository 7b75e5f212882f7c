"""The original's predictors and correctors, written for any time grid and per-example step sizes.

Predictors move x from t to t_next (< t); correctors refine x at the current time t.
Transition notation between s = t_next and t: the forward process maps x_s to
x_t = sqrt(alpha) x_s + b z with alpha = (a_t / a_s)^2 and b^2 = sigma_t^2 - alpha sigma_s^2
(for VE: alpha = 1, b^2 = sigma_t^2 - sigma_s^2; for VP on the DDPM grid: b^2 = beta).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from diffjax.numerics.arrays import expand_to, per_example_norm
from diffjax.processes import SDE, VESDE, check_epsilon
from diffjax.samplers.base import Step, fold_keys, normal_like, static_field, step_class

Array = jax.Array

__all__ = [
    "euler_maruyama",
    "reverse_diffusion",
    "ancestral_sampling",
    "langevin",
    "annealed_langevin",
    "transition_coeffs",
    "LANGEVIN_NORMS",
]


def transition_coeffs(sde: SDE, t: Array, t_next: Array) -> tuple[Array, Array, Array, Array]:
    """(alpha, b^2, sigma_t, sigma_next) of the forward transition from t_next to t; shapes (batch,)."""
    a_t, s_t = sde.marginal_coeffs(t)
    a_s, s_s = sde.marginal_coeffs(t_next)
    alpha = (a_t / a_s) ** 2
    b2 = jnp.maximum(s_t**2 - alpha * s_s**2, 0.0)
    return alpha, b2, s_t, s_s


@step_class
class euler_maruyama(Step):
    """Euler–Maruyama on the reverse SDE with the grid's dt = t_next - t (the original used -1/N):

        x_mean = x + [f x - g^2 s] dt,   x = x_mean + g sqrt(-dt) z.

    ``epsilon`` sets the reverse SDE's noise level (see :class:`diffjax.processes.ReverseSDE`): None is
    Anderson's (eps = g^2 / 2, the update above), a number or a function eps(t) gives
    x_mean = x + [f x - (g^2/2 + eps) s] dt, x = x_mean + sqrt(2 eps (-dt)) z, which keeps the
    marginals for every eps >= 0 (eps = 0: Euler on the probability flow). The stochastic
    interpolants' choice for rectified flow, where g^2 / 2 = t / (1 - t) diverges at the noise end,
    is a bounded eps (a constant, or eps(t) = c t, which also vanishes at the data end where the
    score is large).
    """

    sde: SDE
    epsilon: object = static_field(None)

    def __post_init__(self):
        object.__setattr__(self, "epsilon", check_epsilon(self.epsilon))
        super().__post_init__()

    @property
    def name(self) -> str:
        return "euler_maruyama" + ("" if self.epsilon is None else f"(epsilon={getattr(self.epsilon, '__name__', self.epsilon)})")

    @property
    def forward_noise(self) -> bool:
        return self.epsilon is None  # Anderson's noise g^2 dt; another epsilon is not the forward process's

    def update(self, keys, x, state, t, t_next, score_fn):
        drift, g = self.sde.reverse(score_fn, epsilon=self.epsilon).sde(x, t)
        dt = expand_to(t_next - t, x)
        return x + drift * dt + expand_to(g, x) * jnp.sqrt(-dt) * normal_like(keys, x), state


@step_class
class reverse_diffusion(Step):
    """Reverse of the forward transition on the grid (the original's reverse-diffusion predictor):

        x_mean = (2 - sqrt(alpha)) x + b^2 s,   x = x_mean + b z.

    For VE this is SMLD's update; for VP on the DDPM grid it is the original's DDPM update.
    """

    sde: SDE
    name = "reverse_diffusion"
    forward_noise = True

    def update(self, keys, x, state, t, t_next, score_fn):
        alpha, b2, _, _ = transition_coeffs(self.sde, t, t_next)
        x_mean = expand_to(2.0 - jnp.sqrt(alpha), x) * x + expand_to(b2, x) * score_fn(x, t)
        return x_mean + expand_to(jnp.sqrt(b2), x) * normal_like(keys, x), state


@step_class
class ancestral_sampling(Step):
    """Ancestral sampling: x_mean = (x + b^2 s) / sqrt(alpha) = E[x_{t_next} | x_t] (Tweedie on one
    Gaussian transition), then noise of variance

        "posterior": b^2 sigma_next^2 / sigma_t^2  (the original's VE choice; exact for point masses)
        "step":      b^2                           (DDPM's sigma^2 = beta; the original's VP choice)

    ``variance=None`` takes the original's choice: posterior for VE, step for VP and sub-VP.
    """

    sde: SDE
    variance: Optional[str] = static_field(None)
    name = "ancestral_sampling"
    forward_noise = True

    def __post_init__(self):
        super().__post_init__()
        if self.variance is None:
            object.__setattr__(self, "variance", "posterior" if isinstance(self.sde, VESDE) else "step")
        if self.variance not in ("posterior", "step"):
            raise ValueError(f"unknown ancestral variance {self.variance!r}; expected 'posterior' or 'step'")

    def update(self, keys, x, state, t, t_next, score_fn):
        alpha, b2, s_t, s_s = transition_coeffs(self.sde, t, t_next)
        x_mean = (x + expand_to(b2, x) * score_fn(x, t)) / expand_to(jnp.sqrt(alpha), x)
        var = b2 * (s_s / s_t) ** 2 if self.variance == "posterior" else b2
        return x_mean + expand_to(jnp.sqrt(var), x) * normal_like(keys, x), state


def _langevin_loop(keys, x, t, score_fn, langevin_steps, step_size_fn):
    def body(k, x):
        grad = score_fn(x, t)
        z = normal_like(fold_keys(keys, k), x)
        eps = step_size_fn(grad, z)
        return (x + expand_to(eps, x) * grad + expand_to(jnp.sqrt(2.0 * eps), x) * z).astype(x.dtype)

    return jax.lax.fori_loop(0, langevin_steps, body, x)


def _check_corrector(name: str, snr, langevin_steps) -> None:
    if isinstance(langevin_steps, bool) or not isinstance(langevin_steps, int) or langevin_steps < 1 or not snr > 0:
        raise ValueError(f"{name} needs langevin_steps >= 1 and snr > 0; got langevin_steps={langevin_steps}, snr={snr}")


LANGEVIN_NORMS = ("expected", "batch", "per_example")


@step_class
class annealed_langevin(Step):
    """Annealed Langevin dynamics (NCSN): eps = 2 alpha_i (snr sigma(t))^2 with the marginal std
    sigma(t), ``langevin_steps`` times at the current time: x <- x + eps s + sqrt(2 eps) z."""

    sde: SDE
    snr: float = static_field(0.16)
    langevin_steps: int = static_field(1)
    moves_time = False
    name = "annealed_langevin"

    def __post_init__(self):
        super().__post_init__()
        _check_corrector("annealed_langevin", self.snr, self.langevin_steps)

    @property
    def nfe(self) -> int:
        return self.langevin_steps

    def update(self, keys, x, state, t, t_next, score_fn):
        alpha = self.sde.alphas[self.sde.timestep_index(t)]
        _, sigma = self.sde.marginal_coeffs(t)
        eps = 2.0 * alpha * (self.snr * sigma) ** 2
        return _langevin_loop(keys, x, t, score_fn, self.langevin_steps, lambda grad, z: eps), state


@step_class
class langevin(Step):
    """Langevin corrector with a target signal-to-noise ratio (Song et al. 2021, Alg. 4):

        eps = 2 alpha_i (snr ||z|| / ||s||)^2,   x <- x + eps s + sqrt(2 eps) z,

    repeated ``langevin_steps`` times at the current time; alpha_i is the process's discrete ``alphas`` at
    the nearest step (1 for VE). ``norms`` says where ||z|| and ||s|| come from:

    - ``"expected"`` (default): their expectations, ||z||^2 = d and ||s||^2 = d / sigma(t)^2, the
      score's squared norm when noise dominates the marginal (by Stam's inequality the Fisher
      information of p_t is at most d / sigma(t)^2, so this step is never larger than the rule aims
      for). Then eps = 2 alpha_i (snr sigma(t))^2 depends on t only: each sample is independent
      of its batch and the step is unadjusted Langevin with a fixed step, whose stationary law is
      p_t up to O(eps) in every dimension. This is the step of :class:`annealed_langevin`.
    - ``"batch"``: the original's, the norms averaged over the batch (over all devices under
      sharding). Right in any dimension for large batches, but every sample depends on the others.
    - ``"per_example"``: each example's own norms. The step then depends on the position: an
      unadjusted Langevin chain with step eps(x) has stationary law proportional to p_t / eps(x),
      here p_t ||s||^2, which is far from p_t when ||s|| does not concentrate (d of a few: a
      2-D or 3-D mixture comes out with wrong weights and covariances); close to the original for
      images, where d is in the thousands.
    """

    sde: SDE
    snr: float = static_field(0.16)
    langevin_steps: int = static_field(1)
    norms: str = static_field("expected")
    moves_time = False

    def __post_init__(self):
        super().__post_init__()
        _check_corrector("langevin", self.snr, self.langevin_steps)
        if self.norms not in LANGEVIN_NORMS:
            raise ValueError(f"unknown langevin norms {self.norms!r}; expected one of {LANGEVIN_NORMS}")

    @property
    def nfe(self) -> int:
        return self.langevin_steps

    @property
    def name(self) -> str:
        return "langevin" if self.norms == "expected" else f"langevin({self.norms})"

    def update(self, keys, x, state, t, t_next, score_fn):
        if self.norms == "expected":
            return annealed_langevin(self.sde, self.snr, self.langevin_steps).update(keys, x, state, t, t_next,
                                                                                     score_fn)
        alpha = self.sde.alphas[self.sde.timestep_index(t)]

        def step_size(grad, z):
            z_norm, s_norm = per_example_norm(z), per_example_norm(grad)
            if self.norms == "batch":
                z_norm, s_norm = jnp.mean(z_norm), jnp.mean(s_norm)
            ratio = z_norm / jnp.maximum(s_norm, 1e-20)
            return 2.0 * alpha * (self.snr * ratio) ** 2

        return _langevin_loop(keys, x, t, score_fn, self.langevin_steps, step_size), state
