"""Superposition of trained diffusion models: SuperDiff OR (the mixture) and AND (equal densities).

Skreta, Atanackovic, Bose, Tong, Neklyudov, "The Superposition of Diffusion Models Using the Itô
Density Estimator" (ICLR 2025). M models of one process give scores s_1..s_M of their marginals
q_1..q_M. Each sampler step combines them into s̄ = Σ_i κ_i s_i with per-example weights κ (M, batch):

**OR** samples the mixture Σ_i w_i q_i. Its score is exactly Σ_i κ_i s_i with
κ = softmax_i(log q_i + log w_i) (the mixture-score identity), so κ = softmax_i(T ℓ_i + log w_i)
with the log-densities ℓ_i tracked along the path by the Itô density estimator
(:mod:`diffjax.samplers.density`); T = 1 is the mixture, a larger temperature T sharpens the choice
(the CIFAR code used T = 1e6, a hard argmax).

**AND** samples where the models' densities are equal: κ (Σ κ = 1) is chosen each step so that every
model's log-density changes by the same amount. On the SDE path, with the step's own noise z
(the same z in κ and in the step; reverse time τ, Δ = t - t_next, u_j = -f x + g² s_j),

    d ℓ_i = Σ_j A_ij κ_j + b_i,   A_ij = Δ <u_j, s_i>,   b_i = d f Δ + <g √Δ z + (f x - ½ g² s_i) Δ, s_i>,

and [A -1; 1ᵀ 0][κ; c] = [-b; 1] is solved per example (c is the common increment). On the
probability-flow path u = f x - ½ g² s̄, dℓ_i/dt = -∇·v_i - <s_i, v_i - u> with v_i = f x - ½ g² s_i,
which needs divergences. κ is unbounded (ill-conditioned early, when the scores agree) and is not
clipped: clipping it to [0, 1] (as one third-party port does) breaks the equal-density property.

:func:`superposition_sample` runs either over a time grid (Euler–Maruyama with the forward noise for
the SDE, Heun for the ODE). :func:`mixture_score` is the pure OR combinator for models whose
log-densities are known in closed form; :func:`or_weights`, :func:`and_weights` and
:func:`combine_scores` are the per-step pieces for samplers of your own.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import check_real, is_traced
from diffjax._jit import bind
from diffjax.numerics.arrays import expand_to, time_dtype
from diffjax.numerics.divergence import check_divergence, divergence, draw_probes
from diffjax.numerics.random import normal_like
from diffjax.processes import SDE
from diffjax.results import SuperpositionResult, raise_if_nonfinite
from diffjax.samplers.base import Step, static_field, step_class
from diffjax.samplers.density import ito_log_density_increment
from diffjax.samplers.driver import check_x_init, drive
from diffjax.score import x0_from_score

Array = jax.Array

__all__ = ["MODES", "or_weights", "and_weights", "combine_scores", "mixture_score", "superpose", "superposition_sample"]

MODES = ("or", "and")


def _dot(u: Array, v: Array, data_ndim: int) -> Array:
    """<u, v> over the trailing ``data_ndim`` axes (broadcasting the leading ones)."""
    return jnp.sum(u * v, axis=tuple(range(-data_ndim, 0)))


def or_weights(log_q: Array, log_weights: Optional[Array] = None, temperature: float = 1.0) -> Array:
    """OR weights κ = softmax_i(T ℓ_i + log w_i) over models; log_q (M, batch) -> κ (M, batch).
    With T = 1 and exact ℓ_i = log q_i, Σ κ_i s_i is exactly the score of the mixture Σ w_i q_i."""
    logits = temperature * log_q
    if log_weights is not None:
        logits = logits + jnp.reshape(log_weights, (-1, 1))
    return jax.nn.softmax(logits, axis=0)


def and_weights(a: Array, r: Array) -> Array:
    """κ (M, batch) with Σ_j κ_j = 1 and (A κ)_i - c = r_i for all i (one common c), per example.

    ``a`` (batch, M, M), ``r`` (M, batch): the bordered system [A -1; 1ᵀ 0][κ; c] = [r; 1]. Two models
    are solved in closed form, more with a batched linear solve. Near-singular systems (the models
    agree) give large κ, by design of the method; an exactly singular one gives κ = 1/M."""
    m = a.shape[-1]
    if m == 2:
        # κ = (k, 1 - k): [(A00 - A01) - (A10 - A11)] k = r0 - r1 - A01 + A11
        den = (a[:, 0, 0] - a[:, 0, 1]) - (a[:, 1, 0] - a[:, 1, 1])
        num = r[0] - r[1] - a[:, 0, 1] + a[:, 1, 1]
        ok = jnp.abs(den) > 0
        k = jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.5)
        return jnp.stack([k, 1.0 - k])
    batch = a.shape[0]
    top = jnp.concatenate([a, -jnp.ones((batch, m, 1), a.dtype)], axis=2)
    bottom = jnp.concatenate([jnp.ones((batch, 1, m), a.dtype), jnp.zeros((batch, 1, 1), a.dtype)], axis=2)
    rhs = jnp.concatenate([r.T, jnp.ones((batch, 1), a.dtype)], axis=1)
    sol = jnp.linalg.solve(jnp.concatenate([top, bottom], axis=1), rhs[..., None])[..., 0]
    kappa = sol[:, :m].T
    return jnp.where(jnp.all(jnp.isfinite(kappa), axis=0, keepdims=True), kappa, 1.0 / m)


def combine_scores(scores: Array, kappa: Array) -> Array:
    """s̄ = Σ_i κ_i s_i; scores (M, batch, ...), κ (M, batch) -> (batch, ...)."""
    return jnp.sum(jnp.reshape(kappa, kappa.shape + (1,) * (scores.ndim - 2)) * scores, axis=0)


def _mixture_score(score_fns, log_density_fns, log_weights, temperature, x, t):
    scores = jnp.stack([s(x, t) for s in score_fns])
    log_q = jnp.stack([lq(x, t) for lq in log_density_fns])
    return combine_scores(scores, or_weights(log_q, log_weights, temperature))


def mixture_score(score_fns: Sequence, log_density_fns: Sequence, weights: Optional[Sequence[float]] = None,
                  temperature: float = 1.0):
    """The OR combinator for models with known log-densities: a score function

        s̄(x, t) = Σ_i softmax_i(T log q_i(x, t) + log w_i) s_i(x, t),

    the exact score of Σ_i w_i q_i when T = 1 (weights normalised). ``score_fns`` and
    ``log_density_fns`` are callables (x, t) -> (batch, ...) and (batch,). Returns a pytree
    (:func:`diffjax._jit.bind`) usable with every sampler and under jit."""
    score_fns, log_density_fns = tuple(score_fns), tuple(log_density_fns)
    if len(score_fns) < 1 or len(score_fns) != len(log_density_fns):
        raise ValueError(f"mixture_score needs one log-density per score function; got {len(score_fns)} scores and "
                         f"{len(log_density_fns)} log-densities")
    log_w = _log_weights(weights, len(score_fns))
    return bind(_mixture_score, score_fns, log_density_fns, log_w, _check_temperature(temperature))


def _check_temperature(temperature):
    """A positive finite temperature as a float32 array (traced: a new value does not recompile)."""
    if not is_traced(temperature):
        try:
            check_real("superposition", "temperature", temperature, lo=0.0, lo_open=True)
        except (TypeError, ValueError):
            raise ValueError(f"temperature must be a positive number (1: the mixture); got {temperature!r}") from None
    return jnp.asarray(temperature, jnp.float32)


def _log_weights(weights, m: int) -> Optional[Array]:
    """log(w / sum w) (m,) of the OR weights, checked when concrete; traced weights (learned) pass as they are."""
    if weights is None:
        return None
    w = jnp.asarray(weights, jnp.float32)
    if w.shape != (m,):
        raise ValueError(f"weights must be {m} positive numbers, one per model; got shape {w.shape}")
    if is_traced(w):
        return jnp.log(w / jnp.sum(w))
    v = np.asarray(weights, np.float64)
    if not np.all(np.isfinite(v)) or not np.all(v > 0):
        raise ValueError(f"weights must be {m} positive numbers, one per model; got {list(v)}")
    return jnp.asarray(np.log(v / v.sum()), jnp.float32)


def _kappa_sde(mode, sde, x, scores, ell, z, t, t_next, log_w, temperature):
    if mode == "or":
        return or_weights(ell, log_w, temperature)
    f, g = sde.drift_diffusion_coeffs(t)
    dtau = t - t_next
    d = math.prod(x.shape[1:])
    fx = expand_to(f, x) * x
    g2 = expand_to(g**2, x)
    u = -fx + g2 * scores                                          # (M, batch, ...) each model's reverse drift
    nd = x.ndim - 1
    a = jnp.moveaxis(_dot(u[None, :], scores[:, None], nd), -1, 0) * dtau[:, None, None]   # (batch, M_i, M_j)
    noise = expand_to(g * jnp.sqrt(dtau), x) * z
    b = d * f * dtau + _dot(noise + (fx - 0.5 * g2 * scores) * expand_to(dtau, x), scores, nd)  # (M, batch)
    return and_weights(a, -b)


def _ode_field(mode, sde, score_fns, x, ell, t, probes, div_kind, log_w, temperature):
    """(u, dℓ/dt, κ, scores) on the probability-flow path: u = f x - ½ g² s̄ and
    dℓ_i/dt = -∇·v_i - <s_i, v_i - u> with v_i = f x - ½ g² s_i, ∇·v_i = d f - ½ g² ∇·s_i."""
    outs = [divergence(lambda y, s=s: s(y, t), x, div_kind, probes) for s in score_fns]
    scores = jnp.stack([o[0] for o in outs])                       # (M, batch, ...)
    div_s = jnp.stack([o[1] for o in outs])                        # (M, batch)
    f, g = sde.drift_diffusion_coeffs(t)
    nd, d = x.ndim - 1, math.prod(x.shape[1:])
    half_g2 = 0.5 * g**2
    v = expand_to(f, x) * x - expand_to(half_g2, x) * scores
    div_v = d * f - half_g2 * div_s
    if mode == "or":
        kappa = or_weights(ell, log_w, temperature)
    else:
        a = jnp.moveaxis(_dot(scores[:, None], v[None, :], nd), -1, 0)    # (batch, M_i, M_j) = <s_i, v_j>
        kappa = and_weights(a, div_v + _dot(scores, v, nd))
    u = combine_scores(v, kappa)
    dell = -div_v - _dot(scores, v - u[None], nd)
    return u, dell, kappa, scores


@step_class
class _Superposition(Step):
    """One SuperDiff update over M models (see :func:`superpose`); the driver hands its ``update`` the
    tuple of the M score functions. State: (ℓ (M, batch), κ (M, batch))."""

    sde: SDE
    log_weights: Optional[Array]
    temperature: Any
    log_q_init: Optional[Array]
    num_models: int = static_field(2)
    mode: str = static_field("or")
    ode: bool = static_field(False)
    divergence: str = static_field("rademacher")
    n_probes: int = static_field(1)

    @property
    def name(self) -> str:
        return f"superpose({self.mode}, {self.num_models} models{', ode' if self.ode else ''})"

    @property
    def stochastic(self) -> bool:
        return not self.ode

    @property
    def nfe(self) -> int:
        return self.num_models * (2 if self.ode else 1)

    @property
    def denoise_nfe(self) -> int:
        return self.num_models

    def init(self, x):
        tdt = time_dtype(x)
        ell0 = self.log_q_init
        if ell0 is None:
            ell0 = jnp.broadcast_to(self.sde.prior_logp(jnp.asarray(x, tdt)), (self.num_models, x.shape[0]))
        return jnp.asarray(ell0, tdt), jnp.full((self.num_models, x.shape[0]), 1.0 / self.num_models, tdt)

    @staticmethod
    def log_density(state) -> Array:
        return state[0].T  # per example first (batch, M): what the driver watches for NaN

    def _scores(self, score_fns, x, t):
        return jnp.stack([s(x, t) for s in score_fns]).astype(t.dtype)

    def update(self, keys, x, state, t, t_next, score_fns):
        ell, _ = state
        x = x.astype(t.dtype)
        sde, log_w, temperature = self.sde, self.log_weights, self.temperature
        if self.ode:
            probes = draw_probes(keys, x, self.divergence, self.n_probes)
            h = t_next - t
            args = (self.mode, sde, score_fns)
            u1, d1, kappa, _ = _ode_field(*args, x, ell, t, probes, self.divergence, log_w, temperature)
            x_e, ell_e = x + expand_to(h, x) * u1, ell + h * d1
            u2, d2, _, _ = _ode_field(*args, x_e, ell_e, t_next, probes, self.divergence, log_w, temperature)
            return x + expand_to(0.5 * h, x) * (u1 + u2), (ell + 0.5 * h * (d1 + d2), kappa)
        scores = self._scores(score_fns, x, t)
        z = normal_like(keys, x).astype(t.dtype)
        kappa = _kappa_sde(self.mode, sde, x, scores, ell, z, t, t_next, log_w, temperature)
        f, g = sde.drift_diffusion_coeffs(t)
        dtau = expand_to(t - t_next, x)
        drift = -expand_to(f, x) * x + expand_to(g**2, x) * combine_scores(scores, kappa)
        x_next = x + drift * dtau + expand_to(g, x) * jnp.sqrt(dtau) * z
        ell = ell + jax.vmap(lambda s: ito_log_density_increment(sde, x, x_next, s, t, t_next))(scores)
        return x_next, (ell, kappa)

    def denoise(self, x, state, t, score_fns):
        """Tweedie's denoiser of s̄ with the last step's weights (OR: from the final log-densities)."""
        ell, kappa = state
        k_end = or_weights(ell, self.log_weights, self.temperature) if self.mode == "or" else kappa
        a, s = self.sde.marginal_coeffs(t)
        return x0_from_score(combine_scores(self._scores(score_fns, x, t), k_end), x.astype(t.dtype), a, s)


def superpose(sde: SDE, num_models: int, mode: str = "or", *, weights: Optional[Sequence[float]] = None,
              temperature: float = 1.0, ode: bool = False, divergence: str = "rademacher", n_probes: int = 1,
              log_q_init: Optional[Array] = None) -> Step:
    """The SuperDiff step over ``num_models`` models of ``sde`` (module docstring): run it with
    :func:`diffjax.samplers.sample` (or the driver) given a list of the models' score functions.
    OR with ``weights`` (default equal; an array may be traced) and ``temperature``; AND takes neither.
    ``ode``: Heun on the probability flow with divergences (``divergence``, ``n_probes``) instead of
    Euler–Maruyama with the Itô estimator. ``log_q_init`` (M, batch): the models' log-densities at
    x_init (default every model's prior density)."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a diffjax process; got {type(sde).__name__}")
    sde.require_gaussian("superposition (the Itô density estimator)")
    if isinstance(num_models, bool) or not isinstance(num_models, int) or num_models < 2:
        raise TypeError(f"superposition combines at least two models; got num_models={num_models!r}")
    if mode not in MODES:
        raise ValueError(f"unknown superposition mode {mode!r}; expected one of {MODES}")
    check_divergence(divergence, n_probes)
    if mode == "and" and weights is not None:
        raise ValueError("weights are the OR mixture's; AND takes none")
    return _Superposition(sde, _log_weights(weights, num_models), _check_temperature(temperature), log_q_init,
                          num_models, mode, bool(ode), divergence, int(n_probes))


def superposition_sample(sde: SDE, score_fns: Sequence, key: Array, x_init: Array, timesteps: Array, *,
                         mode: str = "or", weights: Optional[Sequence[float]] = None, temperature: float = 1.0,
                         ode: bool = False, divergence: str = "rademacher", n_probes: int = 1,
                         log_q_init: Optional[Array] = None, denoise: bool = True,
                         check_finite: bool = True) -> SuperpositionResult:
    """Sample the superposition of M >= 2 models of one process (module docstring): :func:`superpose`
    run by the driver.

    Args:
      sde: the process all models were trained for.
      score_fns: M score functions ``s_i(x, t)`` (pytrees, e.g. ``Partial(score_model, params)``, compile once).
      key, x_init, timesteps: as :func:`diffjax.samplers.sample` (x_init ~ the prior, grid T -> t_end).
      mode: "or" (the mixture Σ w_i q_i) or "and" (where the densities are equal).
      weights: OR's mixture weights w_i (default equal); temperature: OR's T (1: the mixture). Both
        may be arrays (traced: changed or differentiated without recompiling).
      ode: False (Euler–Maruyama with the forward noise; the Itô estimator tracks ℓ_i, M NFE per step)
        or True (Heun on the probability flow with divergences, 2 M NFE per step and d
        Jacobian-vector products each for ``divergence="exact"``, ``n_probes`` for Hutchinson).
      log_q_init: log q_i,T(x_init) (M, batch); default every model's prior density (equal for all).
      denoise: finish with Tweedie's denoiser of s̄ (weights from the last step), M more NFE.

    Returns a :class:`~diffjax.results.SuperpositionResult`: ``.x`` samples (shape of x_init),
    ``.logp`` the tracked log q_i of each sample at timesteps[-1] (M, batch), ``.kappa`` the last
    step's κ (M, batch), ``.nfe`` the score evaluations per sample (batch,) and ``.nonfinite_step``
    (batch,) as :func:`~diffjax.samplers.sample`'s; non-finite examples raise outside a jit of yours
    unless ``check_finite=False``.
    """
    if not isinstance(score_fns, (list, tuple)) or len(score_fns) < 2 or not all(callable(s) for s in score_fns):
        raise TypeError("score_fns must be a list or tuple of at least two score functions s(x, t)")
    m = len(score_fns)
    check_x_init(x_init)
    if log_q_init is not None and jnp.shape(log_q_init) != (m, jnp.shape(x_init)[0]):
        raise ValueError(f"log_q_init must have shape (M, batch) = {(m, jnp.shape(x_init)[0])}; got {jnp.shape(log_q_init)}")
    if log_q_init is not None and not is_traced(log_q_init) and not np.all(np.isfinite(np.asarray(log_q_init))):
        raise ValueError("log_q_init must be finite (log-densities of the models at x_init)")
    step = superpose(sde, m, mode, weights=weights, temperature=temperature, ode=ode, divergence=divergence,
                     n_probes=n_probes, log_q_init=log_q_init)
    run = drive(step, tuple(score_fns), key, x_init, timesteps, denoise=denoise, num_models=m,
                watch=type(step).log_density)
    ell, kappa = run.state
    result = SuperpositionResult(run.x, ell, kappa, run.nfe, run.nonfinite_step)
    raise_if_nonfinite(result, "superposition_sample", check_finite, steps=run.timesteps)
    return result
