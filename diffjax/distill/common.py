"""What every student shares: the denoiser view of a network, the pseudo-Huber metric, noise-level
sampling, and the exact flow map of a Gaussian (the oracle of every distillation test).

Conventions. A process gives x_t = a(t) x0 + sigma(t) z. All students here are read through their
*denoiser* D(x, t) = E[x0 | x_t] = (x + sigma^2 s(x, t)) / a (Tweedie), whatever the network predicts
(eps, x0, v, velocity, EDM): a consistency function, a progressive-distillation student and the
end point of a flow map are all denoisers in this sense. Noise levels are EDM's
sigma^ = sigma / a (:meth:`SDE.noise_level`), in which the probability flow of every Gaussian
process is the same ODE dx^/dsigma^ = (x^ - D) / sigma^ with x^ = x / a.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffjax.numerics.arrays import expand_to
from diffjax.processes import SDE
from diffjax.score import x0_from_score

Array = jax.Array

__all__ = ["Denoiser", "network_denoiser", "score_denoiser", "pseudo_huber", "default_huber_c", "tree_stop_gradient",
           "lognormal_noise_levels", "heun_pf_step", "gaussian_flow_map", "gaussian_denoiser"]

# denoiser(params, x, t, **cond) -> E[x0 | x_t], x (batch, ...), t (batch,)
Denoiser = Callable[..., Array]


def _network_denoiser(score_model, params, x, t, **cond):
    a, s = score_model.sde.marginal_coeffs(t)
    return x0_from_score(score_model(params, x, t, **cond), x, a, s).astype(x.dtype)


def network_denoiser(score_model: Callable[..., Array]) -> Denoiser:
    """``denoiser(params, x, t, **cond)`` from a :class:`diffjax.score.ScoreModel` (or any
    ``score_model(params, x, t, **cond) -> score`` with a ``.sde``): Tweedie's (x + sigma^2 s) / a."""
    return jax.tree_util.Partial(_network_denoiser, score_model)


def _score_denoiser(sde, score_fn, x, t):
    a, s = sde.marginal_coeffs(t)
    return x0_from_score(score_fn(x, t), x, a, s).astype(x.dtype)


def score_denoiser(sde: SDE, score_fn: Callable[[Array, Array], Array]) -> Callable[[Array, Array], Array]:
    """``denoiser(x, t)`` of a teacher given as a score function ``score_fn(x, t)``."""
    return jax.tree_util.Partial(_score_denoiser, sde, score_fn)


def default_huber_c(dim: int) -> float:
    """iCT's pseudo-Huber constant c = 0.00054 sqrt(d) (d = numbers per example; 0.03 on CIFAR-10)."""
    return 0.00054 * float(dim) ** 0.5


def pseudo_huber(diff: Array, c: float) -> Array:
    """sqrt(||diff||^2 + c^2) - c per example (the norm over all of an example's numbers, not
    elementwise); ``c`` = 0 is the plain Euclidean norm. Shape (batch,)."""
    sq = jnp.sum(jnp.square(diff.reshape(diff.shape[0], -1).astype(jnp.float32)), axis=1)
    if c == 0:
        return jnp.sqrt(sq + 1e-20)
    return jnp.sqrt(sq + c * c) - c


def lognormal_noise_levels(key: Array, n: int, sde: SDE, p_mean: float = -1.1, p_std: float = 2.0) -> Array:
    """sigma^ ~ LogNormal(p_mean, p_std) (EDM/iCT/ECT) clipped to the process's range
    [noise_level(t_min), noise_level(T)], shape (n,)."""
    lo = sde.noise_level(jnp.asarray(sde.t_min, jnp.float32))
    hi = sde.noise_level(jnp.asarray(sde.T, jnp.float32))
    return jnp.clip(jnp.exp(p_mean + p_std * jax.random.normal(key, (n,))), lo, hi)


def heun_pf_step(denoise: Callable[[Array, Array], Array], sde: SDE, x: Array, t: Array, t_next: Array) -> Array:
    """One Heun step of the probability flow from t to t_next (both (batch,)), in EDM's coordinates
    x^ = x / a, sigma^ = sigma / a (dx^/dsigma^ = (x^ - D) / sigma^); ``denoise(x, t)`` is the
    teacher's denoiser. Where t_next has sigma^ = 0 (t_next <= 0) the step is Euler's, landing on D.
    Two denoiser evaluations."""
    a, s = sde.marginal_coeffs(t)
    a_n, s_n = sde.marginal_coeffs(jnp.maximum(t_next, 0.0))
    sh = s / a
    sh_n = jnp.where(t_next > 0, s_n / a_n, 0.0)
    xh = x / expand_to(a, x)
    d1 = (xh - denoise(x, t)) / expand_to(sh, x)
    h = expand_to(sh_n - sh, x)
    euler = xh + h * d1
    t_safe = jnp.where(t_next > 0, t_next, t)
    a_safe = jnp.where(t_next > 0, a_n, a)
    d2 = (euler - denoise(expand_to(a_safe, x) * euler, t_safe)) / expand_to(jnp.where(t_next > 0, sh_n, 1.0), x)
    heun = xh + 0.5 * h * (d1 + d2)
    out = jnp.where(expand_to(t_next > 0, x), heun, euler)
    return (expand_to(jnp.where(t_next > 0, a_n, 1.0), x) * out).astype(x.dtype)


def gaussian_denoiser(sde: SDE, mean: Array, var: Array) -> Callable[[Array, Array], Array]:
    """The exact denoiser of data N(mean, diag(var)) under ``sde``: D = mean + var a (x - a mean) / (a^2 var + sigma^2)."""

    def denoise(x, t):
        a, s = sde.marginal_coeffs(t)
        a, s = expand_to(a, x), expand_to(s, x)
        return mean + var * a * (x - a * mean) / (a * a * var + s * s)

    return denoise


def gaussian_flow_map(sde: SDE, mean: Array, var: Array, x: Array, t: Array, r: Array) -> Array:
    """The probability flow's exact map x_t -> x_r for data N(mean, diag(var)) (the flow is linear):
    x_r = a_r mean + (s_r / s_t) (x_t - a_t mean), s_u = sqrt(a_u^2 var + sigma_u^2). With r = 0 (a = 1,
    sigma = 0) it is the exact consistency function f*(x, t). t, r: (batch,)."""
    a_t, sg_t = sde.marginal_coeffs(t)
    a_r, sg_r = sde.marginal_coeffs(jnp.maximum(r, 0.0))
    a_r = jnp.where(r > 0, a_r, 1.0)
    sg_r = jnp.where(r > 0, sg_r, 0.0)
    a_t, sg_t, a_r, sg_r = (expand_to(v, x) for v in (a_t, sg_t, a_r, sg_r))
    s_t = jnp.sqrt(a_t ** 2 * var + sg_t ** 2)
    s_r = jnp.sqrt(a_r ** 2 * var + sg_r ** 2)
    return a_r * mean + s_r / s_t * (x - a_t * mean)


def tree_stop_gradient(tree: Any) -> Any:
    return jax.tree_util.tree_map(jax.lax.stop_gradient, tree)
