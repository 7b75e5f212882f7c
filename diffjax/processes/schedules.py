"""Modern schedules as processes: EDM's noise-level time, the cosine schedule, rectified flow, one-sided
stochastic interpolants and any marginal of your own (Karras et al. 2022; Nichol & Dhariwal 2021;
Liu et al. 2023; Albergo et al. 2023)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import is_traced
from diffjax.processes.base import SDE, check_num_steps, concrete_float, process_class

Array = jax.Array

__all__ = ["NoiseLevelTime", "EDM", "CosineVP", "RectifiedFlow", "OneSidedInterpolant", "CustomProcess",
           "INTERPOLANT_ALPHAS", "INTERPOLANT_GAMMAS", "check_time_domain", "zero_terminal_snr"]


def check_time_domain(name: str, t_end, t_max, upper: float, open_top: bool = False) -> None:
    """0 < t_end < T <= upper (T < upper with ``open_top``), checked when concrete."""
    lo, hi = concrete_float(t_end), concrete_float(t_max)
    if lo is None or hi is None:
        return
    if open_top and hi >= upper:
        raise ValueError(f"{name} needs t_max < {upper:g} (f and g diverge there); got t_max={hi}")
    if not (0 < lo < hi <= upper):
        raise ValueError(f"{name} needs 0 < t_end < T <= {upper}; got t_end={lo}, T={hi}")


class NoiseLevelTime(SDE):
    """Time is the noise level: a(t) = 1, sigma(t) = t on [sigma_min, sigma_max] (EDM's time, shared by
    PFGM++). f = 0, g = sqrt(2 t), lambda = -log t; the probability flow is dx/dt = (x - D(x, t)) / t.
    Samplers stop at, and losses start at, sigma_min."""

    sigma_min: float
    sigma_max: float
    score_sde_labels = "c_noise"

    def __post_init__(self):
        check_num_steps(self.N)
        check_time_domain(type(self).__name__, self.sigma_min, self.sigma_max, float("inf"))

    @property
    def T(self) -> float:
        return self.sigma_max

    @property
    def t_end(self) -> float:
        return self.sigma_min

    def marginal_coeffs(self, t):
        t = jnp.asarray(t)
        return jnp.ones_like(t), t

    def drift_diffusion_coeffs(self, t):
        t = jnp.asarray(t)
        return jnp.zeros_like(t), jnp.sqrt(2.0 * t)

    @property
    def prior_std(self):
        return self.sigma_max

    def log_snr(self, t):
        return -jnp.log(jnp.asarray(t))

    def t_from_log_snr(self, lam):
        return jnp.exp(-jnp.asarray(lam))


class _InterpolantTime(SDE):
    """The interpolants' time: (0, t_max] with t_max < 1, where f and g diverge; fields ``t_max``,
    ``t_end`` and ``N`` (declared by each process)."""

    def __post_init__(self):
        check_num_steps(self.N)
        check_time_domain(type(self).__name__, self.t_end, self.t_max, 1.0, open_top=True)

    @property
    def T(self) -> float:
        return self.t_max


@process_class
class EDM(NoiseLevelTime):
    """Karras et al. (2022): a(t) = 1, sigma(t) = t, time is the noise level, t in [sigma_min, sigma_max].

    Prior N(0, sigma_max^2 I). Wrap networks with the EDM preconditioning through ``prediction="edm"``
    in :mod:`diffjax.score` (they read c_noise = log(sigma) / 4), and train with
    :func:`diffjax.losses.get_edm_loss_fn`.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    N: int = 1000

    name = "edm"


@process_class
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

    name = "cosine"

    def __post_init__(self):
        check_num_steps(self.N)
        check_time_domain(type(self).__name__, self.t_end, self.t_max, 1.0)
        s, max_beta = concrete_float(self.s), concrete_float(self.max_beta)
        if s is not None and max_beta is not None and not (s >= 0 and 0 < max_beta <= 1):
            raise ValueError(f"CosineVP needs s >= 0 and 0 < max_beta <= 1; got s={s}, max_beta={max_beta}")

    @property
    def T(self) -> float:
        return self.t_max

    def _u(self, t):
        return (0.5 * math.pi) * (jnp.asarray(t) + self.s) / (1.0 + self.s)

    def _cos_u0(self):
        """cos u(0), in float64 for a concrete s (then rounded once, as the schedule always did)."""
        s = concrete_float(self.s)
        return math.cos(0.5 * math.pi * s / (1.0 + s)) if s is not None else jnp.cos(0.5 * math.pi * self.s / (1.0 + self.s))

    def _alpha_bar(self, t):
        return (jnp.cos(self._u(t)) / self._cos_u0()) ** 2

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
        c0 = self._cos_u0()
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




@process_class
class RectifiedFlow(_InterpolantTime):
    """The linear interpolant of rectified flow / flow matching, in diffusion time (data at t = 0):

        x_t = (1 - t) x0 + t z,   f = -1 / (1 - t),   g^2 = 2 t / (1 - t),   lambda = log((1 - t) / t).

    The probability-flow velocity is dx/dt = E[z - x0 | x_t] = (x - D) / t, the flow-matching target
    (with the sign of diffusion time). f and g^2 diverge at t = 1, so the process ends at
    T = t_max = 1 - 1e-3 (prior N(0, T^2 I); the signal left there, 1e-3 x0, is below the prior's
    noise). For stochastic sampling use a bounded noise level (``euler_maruyama(sde, epsilon=...)``):
    Anderson's eps = g^2 / 2 diverges at the noise end.
    """

    t_max: float = 1.0 - 1e-3
    t_end: float = 1e-3
    N: int = 1000

    name = "rectified_flow"

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


@process_class
class OneSidedInterpolant(_InterpolantTime):
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
    t_end: float = 1e-3
    N: int = 1000

    name = "interpolant"

    def __post_init__(self):
        super().__post_init__()
        if self.alpha not in INTERPOLANT_ALPHAS:
            raise ValueError(f"unknown interpolant alpha {self.alpha!r}; expected one of {INTERPOLANT_ALPHAS}")
        if self.gamma not in INTERPOLANT_GAMMAS:
            raise ValueError(f"unknown interpolant gamma {self.gamma!r}; expected one of {INTERPOLANT_GAMMAS}")
        scale = concrete_float(self.gamma_scale)
        if scale is not None and not scale >= 0:
            raise ValueError(f"gamma_scale must be >= 0; got {scale}")

    def marginal_coeffs(self, t):
        s = 1.0 - jnp.asarray(t)
        alpha, beta = _interpolant_alpha_beta(self.alpha, s)
        gamma = _interpolant_gamma(self.gamma, self.gamma_scale, s)
        return beta, jnp.sqrt(alpha**2 + gamma**2)




_CHECKED_MARGINALS: set = set()


@process_class
class CustomProcess(SDE):
    """A Gaussian process from your own marginal: ``marginal_fn(t) -> (a(t), sigma(t))``, or with
    ``params`` (any pytree, e.g. a learned schedule's parameters) ``marginal_fn(t, params)``.
    Elementwise in t, jax-traceable, a > 0, sigma > 0 on (0, T], lambda = log(a / sigma) decreasing.
    f and g come by automatic differentiation, t(lambda) by bisection. ``marginal_fn`` is static
    (compared by identity: define it once); ``params`` are leaves, so the process passes through
    ``jax.jit`` and ``jax.grad`` with respect to them. With concrete parameters the marginal is
    checked once on a grid of [t_end, t_max].

        trig = CustomProcess(lambda t: (jnp.cos(t * jnp.pi / 2), jnp.sin(t * jnp.pi / 2)), t_max=0.999)
    """

    marginal_fn: Callable
    t_max: float = 1.0
    t_end: float = 1e-3
    N: int = 1000
    params: Any = dataclasses.field(default=None, metadata={"leaf": True})

    name = "custom"

    def __post_init__(self):
        check_num_steps(self.N)
        if not callable(self.marginal_fn):
            raise TypeError(f"marginal_fn must be callable marginal_fn(t) -> (a, sigma); got {type(self.marginal_fn).__name__}")
        check_time_domain(type(self).__name__, self.t_end, self.t_max, float("inf"))
        if any(is_traced(v) for v in jax.tree_util.tree_leaves((self.params, self.t_max, self.t_end))):
            return  # inside a trace (a schedule being learned): nothing concrete to check
        if self.params is None:
            key = (self.marginal_fn, float(self.t_max), float(self.t_end))
            if key in _CHECKED_MARGINALS:  # pytree unflattening re-runs this: check a function once
                return
        t = np.linspace(float(self.t_end), float(self.t_max), 65)
        out = self.marginal_coeffs(jnp.asarray(t, jnp.float32))
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ValueError(f"marginal_fn(t) must return a pair (a(t), sigma(t)); got {type(out).__name__}")
        if any(is_traced(v) for v in jax.tree_util.tree_leaves(out)):
            return  # the function closes over traced values
        a, s = (np.asarray(v, np.float64) for v in out)
        if a.shape != t.shape or s.shape != t.shape:
            raise ValueError(f"marginal_fn(t) must return (a, sigma) of t's shape {t.shape}; got {a.shape}, {s.shape}")
        lam = np.log(a) - np.log(s)
        if not (np.all(a > 0) and np.all(s > 0) and np.all(np.diff(lam) < 0)):
            raise ValueError("marginal_fn must give a > 0, sigma > 0 and a decreasing log(a / sigma) on [t_end, t_max]")
        if self.params is None:
            _CHECKED_MARGINALS.add(key)

    @property
    def T(self) -> float:
        return self.t_max

    def marginal_coeffs(self, t):
        if self.params is None:
            return self.marginal_fn(jnp.asarray(t))
        return self.marginal_fn(jnp.asarray(t), self.params)


def _zero_terminal_marginal(t, base):
    a0 = base.marginal_coeffs(jnp.zeros((), jnp.result_type(t, jnp.float32)))[0]
    a_end = base.marginal_coeffs(jnp.asarray(base.T, jnp.result_type(t, jnp.float32)))[0]
    a = (base.marginal_coeffs(t)[0] - a_end) * a0 / (a0 - a_end)
    return a, jnp.sqrt(jnp.maximum(1.0 - a * a, 0.0))


def zero_terminal_snr(base: SDE, t_max: float | None = None) -> CustomProcess:
    """A variance-preserving ``base`` (VP, cosine) rescaled to zero terminal SNR (Lin et al. 2024):
    sqrt(abar) <- (sqrt(abar) - sqrt(abar_T)) sqrt(abar_0) / (sqrt(abar_0) - sqrt(abar_T)), sigma^2 = 1 - a^2,
    so a(T) = 0 and the prior N(0, I) is the exact marginal at T, while a(0) is unchanged. Sampling
    starts at ``t_max`` (default T (1 - 1e-3)) where a > 0: at T itself x holds nothing of x0 and a score
    network's noise prediction is useless (train such processes with v- or x0-prediction)."""
    if not isinstance(base, SDE):
        raise TypeError(f"zero_terminal_snr rescales a diffjax process; got {type(base).__name__}")
    t_max = float(base.T) * (1 - 1e-3) if t_max is None else float(t_max)
    return CustomProcess(_zero_terminal_marginal, t_max=t_max, t_end=float(getattr(base, "t_end", 1e-3)),
                         N=int(getattr(base, "N", 1000)), params=base)
