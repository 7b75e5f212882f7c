"""The twisted sequential Monte Carlo sampler (TDS; see :mod:`diffjax.inverse`): asymptotically exact
in the particles, with its effective sample size and an estimate of the evidence log p(y)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import check_int, check_real, is_traced
from diffjax._jit import filter_jit
from diffjax.inverse.methods import _pigdm_r2
from diffjax.inverse.operators import LinearOperator
from diffjax.numerics.arrays import expand_to
from diffjax.processes import SDE
from diffjax.results import NonFiniteError
from diffjax.samplers.base import prior_sample
from diffjax.score import x0_from_score

Array = jax.Array


class SMCResult(NamedTuple):
    """``x`` (K, ...) the particles, ``log_weights`` (K,) normalised (log-sum-exp 0), ``ess`` (n,) the
    effective sample size after each update (before resampling), ``log_evidence`` the estimate of
    log p(y), ``resampled`` (n,) whether each update resampled, ``nfe`` (K,) the score evaluations of
    each particle (one per time; each also takes one VJP), one entry per particle like every result's."""

    x: Array
    log_weights: Array
    ess: Array
    log_evidence: Array
    resampled: Array
    nfe: Array


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
                num_particles: int, *, ess_threshold: float = 0.5, tempered: bool = False,
                check_finite: bool = True) -> SMCResult:
    """The twisted diffusion sampler for one measurement ``y`` (1, *y_shape) (module docstring).

    Particles x_T ~ the prior move by the Euler-Maruyama step of the reverse SDE with the score
    shifted by g^2 dt grad log p~_t(y | x) (the twisted proposal, same variance), and carry the weights
    w = p(x'|x) p~_{t'}(y|x') / (q(x'|x, y) p~_t(y|x)); at the end p~ is replaced by the exact
    likelihood N(y; A x, sigma_y^2 I) of the final state (``sigma_y`` > 0), so the product of weights
    is p(y | x_end) times the proposal ratio: the weighted particles target the model's own chain
    conditioned on y, exactly as ``num_particles`` grows. Resampling (systematic) when the ESS falls
    below ``ess_threshold`` x K. ``tempered``: twist with p~^(a(t)^2) instead (still exact in the
    limit; the untempered twist's gradient blows up near T on a network, see :func:`pigdm_score`).
    One score evaluation and one VJP per particle and update. Outside a jit of yours, NaN/Inf in the
    final particles or the evidence raises :class:`~diffjax.results.NonFiniteError` (``check_finite=False``
    returns them)."""
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
    result = _smc(sde, score_fn, op, y, float(sigma_y), ts, x, k_run, float(ess_threshold), bool(tempered))
    leaves = (result.x, result.log_weights, result.log_evidence)
    if check_finite and not any(is_traced(v) for v in leaves):
        bad = ~np.all(np.isfinite(np.asarray(result.x).reshape(k, -1)), axis=1)
        if bad.any() or not np.isfinite(float(result.log_evidence)):
            raise NonFiniteError(f"twisted_smc: {int(bad.sum())} of {k} particles (and the evidence "
                                 f"{float(result.log_evidence):.4g}) are NaN or Inf: the score or its twist returned "
                                 "NaN/Inf along the way. check_finite=False returns the values anyway")
    return result


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


_smc_jit = filter_jit(_smc_impl)  # arrays traced, the rest (a closure score, floats) static


def _smc(sde, score_fn, op, y, sigma_y, ts, x, key, ess_threshold, tempered) -> SMCResult:
    xs, log_w, ess, log_z, resampled = _smc_jit(sde, score_fn, op, y, sigma_y, ts, x, key, ess_threshold, tempered)
    # the twists and the final likelihood leave out -(m/2) log(2 pi): put it back once (it telescopes)
    log_z = log_z - 0.5 * op.num_measurements() * np.log(2 * np.pi)
    return SMCResult(xs, log_w, ess, log_z, resampled, jnp.full((xs.shape[0],), ts.shape[0], jnp.int32))
