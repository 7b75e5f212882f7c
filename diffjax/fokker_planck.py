"""The score Fokker–Planck residual: how far a score function is from solving the equation that
every true score of the forward process solves (Lai et al. 2023; Deveney et al. 2025).

For the forward SDE dx = f(t) x dt + g(t) dW the marginal densities q_t obey the Fokker–Planck
equation; for the log-density l = log q_t it reads

    d_t l = -d f - f <x, grad l> + g^2 / 2 (lap l + |grad l|^2),

and its gradient in x gives the score residual, zero for the true score s = grad log q_t:

    R(x, t) = d_t s - grad_x [ g^2 / 2 (div s + |s|^2) - f <x, s> ]
            = d_t s - g^2 / 2 grad(div s) - J_s^T (g^2 s - f x) + f s,

with J_s = ds/dx (so grad |s|^2 = 2 J_s^T s and grad <x, s> = s + J_s^T x). d_t s is one
forward-mode product in t; grad_x of the scalar g^2/2 (div s + |s|^2) - f <x, s> is one reverse
pass. grad(div s) is the gradient of a trace: exact (d Jacobian-vector products, for small d) or by
Hutchinson, grad(div s) = E_eps grad_x(eps^T J_s eps) with Rademacher eps. One probe makes R
unbiased but |R|^2 biased (by the probe's variance); two independent probes give the unbiased
<R_eps1, R_eps2> (:func:`fp_residual_sq`).

A score function is ``score_fn(x, t)`` with x (batch, ...) and t (batch,); every example is
assumed to depend on its own row only (no batch statistics), so batched derivatives are
per-example derivatives. Time must enter the score differentiably (continuous-time networks).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import is_traced
from diffjax.numerics.divergence import divergence
from diffjax.score import check_score_inputs
from diffjax.numerics.arrays import expand_to
from diffjax.processes import SDE, check_batch_time

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

__all__ = ["DIVERGENCES", "TIME_WEIGHTINGS", "score_fp_residual", "fp_residual_sq", "fp_time_weight",
           "fp_residual_by_time"]

DIVERGENCES = ("rademacher", "exact")  # Hutchinson with Rademacher probes, or the exact trace
TIME_WEIGHTINGS = ("none", "g4", "sigma4", "sigma4_g4")


def _check(sde, score_fn, x, t, key, divergence) -> None:
    check_score_inputs("the Fokker–Planck residual of dx = f x dt + g dW", sde, score_fn, x)
    check_batch_time(x, t, T=sde.T)
    if not jnp.issubdtype(jnp.result_type(t), jnp.floating):
        raise TypeError(f"t must be floating point (the residual differentiates in t); got {jnp.result_type(t)}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; expected one of {DIVERGENCES}")
    if divergence == "rademacher" and key is None:
        raise ValueError("divergence='rademacher' needs a PRNG key for its probes; pass key=... or use "
                         "divergence='exact'")


def _time_part(sde, score_fn, x, t):
    """(s, d_t s, f, g^2): the score, its time derivative (one JVP in t) and the coefficients."""
    s, ds_dt = jax.jvp(lambda tt: score_fn(x, tt), (t,), (jnp.ones_like(t),))
    f, g = sde.drift_diffusion_coeffs(t)
    f, g2 = f.astype(x.dtype), (g**2).astype(x.dtype)
    return s, ds_dt, f, g2


def _potential_grad(score_fn, x, t, f, g2, probe):
    """grad_x of sum_b [ g^2/2 (div_b + |s_b|^2) - f <x_b, s_b> ]: exact divergence when ``probe`` is
    None, else the Hutchinson estimate probe^T J_s probe (one JVP, which also gives s)."""
    score_at_t = lambda y: score_fn(y, t)  # noqa: E731
    half_g2, fb = expand_to(0.5 * g2, x), expand_to(f, x)

    def potential(y):
        if probe is None:
            s, div = divergence(score_at_t, y, "exact")
        else:
            s, div = divergence(score_at_t, y, "rademacher", probe[None])
        return jnp.sum(0.5 * g2 * div) + jnp.sum(half_g2 * s**2 - fb * y * s)

    return jax.grad(potential)(x)


def score_fp_residual(sde: SDE, score_fn: ScoreFn, x: Array, t: Array, *, key: Optional[Array] = None,
                      divergence: str = "rademacher") -> Array:
    """The score Fokker–Planck residual R(x, t), shape of x (batch, ...):

        R = d_t s - grad_x [ g(t)^2 / 2 (div s + |s|^2) - f(t) <x, s> ],

    zero for the true score of the forward marginals of dx = f x dt + g dW (f, g from
    ``sde.drift_diffusion_coeffs``). Units: score per unit time.

    Args:
      sde: a Gaussian process (VE, VP, sub-VP, EDM, cosine, ...).
      score_fn: ``score_fn(x, t)``, differentiable in x (to third order) and in t.
      x: (batch, *data_dims) floating point; t: (batch,) in [0, T].
      key: PRNG key of the Rademacher probe, keyword-only: needed for ``divergence="rademacher"``,
        none for the exact divergence.
      divergence: "rademacher" (Hutchinson: one Rademacher probe: grad(div s) estimated unbiasedly with one JVP, so R is
        unbiased) or "exact" (d JVPs; for low dimension).
    """
    _check(sde, score_fn, x, t, key, divergence)
    _, time_part, f, g2 = _time_part(sde, score_fn, x, t)
    probe = None if divergence == "exact" else jax.random.rademacher(key, x.shape, x.dtype)
    return time_part - _potential_grad(score_fn, x, t, f, g2, probe)


def fp_residual_sq(sde: SDE, score_fn: ScoreFn, x: Array, t: Array, *, key: Optional[Array] = None,
                   divergence: str = "rademacher") -> Array:
    """Per-example squared norm |R(x, t)|^2 (summed over data dims), shape (batch,).

    With ``divergence="rademacher"`` it is <R_eps1, R_eps2> for two independent Rademacher probes:
    an unbiased estimate of |R|^2 (one probe's |R_eps|^2 would overestimate it by the probe's
    variance); a single value may be negative. With "exact" it is |R|^2 itself.
    """
    _check(sde, score_fn, x, t, key, divergence)
    _, time_part, f, g2 = _time_part(sde, score_fn, x, t)
    n = x.shape[0]
    if divergence == "exact":
        r = time_part - _potential_grad(score_fn, x, t, f, g2, None)
        return jnp.sum((r**2).reshape(n, -1), axis=1)
    probes = jax.random.rademacher(key, (2,) + x.shape, x.dtype)
    grads = jax.vmap(lambda p: _potential_grad(score_fn, x, t, f, g2, p))(probes)
    r1, r2 = time_part - grads[0], time_part - grads[1]
    return jnp.sum((r1 * r2).reshape(n, -1), axis=1)


def fp_time_weight(sde: SDE, t: Array, weighting: str) -> Array:
    """Per-example weight of |R|^2 in a loss, shape of t: "none" (1), "g4" (1/g^4), "sigma4"
    (sigma^4) or "sigma4_g4" (sigma^4/g^4, which puts R on the scale of a score error: near the data
    R ~ (g^2/sigma^2) (s - s_true))."""
    if weighting not in TIME_WEIGHTINGS:
        raise ValueError(f"unknown Fokker–Planck time weighting {weighting!r}; expected one of {TIME_WEIGHTINGS}")
    if weighting == "none":
        return jnp.ones_like(jnp.asarray(t))
    _, sigma = sde.marginal_coeffs(t)
    _, g = sde.drift_diffusion_coeffs(t)
    g4 = jnp.maximum(g**4, jnp.finfo(jnp.result_type(g)).tiny)  # sub-VP's g vanishes at t = 0
    if weighting == "g4":
        return 1.0 / g4
    if weighting == "sigma4":
        return sigma**4
    return sigma**4 / g4


def fp_residual_by_time(sde: SDE, score_fn: ScoreFn, key: Array, x0: Array, ts: Array, *,
                        divergence: str = "rademacher") -> dict:
    """The residual per time, on x_t ~ q_t drawn from data x0 (n, ...) at each t of ``ts`` (m,).

    Returns a dict of (m,) arrays: ``t``; ``rms_residual`` = sqrt(mean_x |R|^2) (unbiased |R|^2
    with Hutchinson; clipped at 0 before the root); ``rms_scale`` = sqrt(mean_x g^4 |s|^2), the
    size of the diffusion term g^2 s that R is compared with; and ``relative`` = their ratio.
    """
    ts = jnp.asarray(ts)
    if ts.ndim != 1 or not jnp.issubdtype(ts.dtype, jnp.floating):
        raise ValueError(f"ts must be a 1-D floating array of times; got shape {ts.shape}, dtype {ts.dtype}")
    if not is_traced(ts) and not np.all(np.isfinite(np.asarray(ts))):
        raise ValueError("ts must be finite times in (0, T]; got NaN or Inf")
    if jnp.ndim(x0) < 2:
        raise ValueError(f"x0 must have shape (n, *data_dims); got {jnp.shape(x0)}")
    n = x0.shape[0]
    _check(sde, score_fn, x0, jnp.full((n,), ts[0] if ts.size else 0.0, ts.dtype), key, divergence)

    def one(args):
        tv, k = args
        k_z, k_p = jax.random.split(k)
        t = jnp.full((n,), tv, ts.dtype)
        xt = sde.perturb(k_z, x0, t).astype(x0.dtype)
        sq = fp_residual_sq(sde, score_fn, xt, t, key=k_p, divergence=divergence)
        _, g = sde.drift_diffusion_coeffs(t)
        s = score_fn(xt, t)
        scale = g**4 * jnp.sum((s**2).reshape(n, -1), axis=1)
        return jnp.sqrt(jnp.maximum(jnp.mean(sq), 0.0)), jnp.sqrt(jnp.mean(scale))

    keys = jax.random.split(key, ts.shape[0])
    rms, scale = jax.lax.map(one, (ts, keys))
    return {"t": ts, "rms_residual": rms, "rms_scale": scale, "relative": rms / scale}
