"""The base of every forward process: a Gaussian diffusion given by its marginal x_t = a(t) x0 + sigma(t) z.

A process is given by its marginal coefficients: the mean coefficient ``a(t)`` and the standard
deviation ``sigma(t)`` of x(t) | x0 ~ N(a(t) x0, sigma(t)^2 I), with data at t = 0 and noise at
t = T. Everything else follows (Kingma et al. 2021; Karras et al. 2022):

    f(t)   = d log a / dt                          drift coefficient of dx = f x dt + g dw
    g(t)^2 = d sigma^2 / dt - 2 f sigma^2          squared diffusion
    lambda = log(a / sigma)                        half log-SNR, decreasing; t(lambda) its inverse
    reverse SDE     dx = [f x - g^2 s] dt + g dw_bar, or with any diffusion eps(t) >= 0:
                    dx = [f x - (g^2 / 2 + eps) s] dt + sqrt(2 eps) dw_bar (same marginals)
    probability-flow ODE  dx/dt = f x - g^2 s / 2

A subclass gives ``marginal_coeffs(t) -> (a, sigma)``; f and g come from automatic differentiation
unless it writes them in closed form, and t(lambda) from bisection unless closed form.

Every process is a frozen dataclass registered as a pytree by :func:`process_class`, one rule for
all: fields declared ``float`` (or ``Array``) are leaves, so a process passes through ``jax.jit``,
``grad`` and ``vmap`` and a schedule can be learned; integers, strings and functions are static.
Each class has a ``name`` (its key in :data:`diffjax.processes.PROCESSES`) and declares its
perturbation ``kernel`` ("gaussian", or PFGM++'s "student_t"), the capability every consumer that
needs Gaussian marginals checks through :meth:`SDE.require_gaussian`.

Shapes: data ``x`` has shape ``(batch, ...)`` of any rank and time ``t`` has shape ``(batch,)``.
Methods named ``*_coeffs`` / ``sigma`` / ``beta`` act elementwise on ``t`` of any shape.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import _kinds, check_fields, check_int, check_real, is_traced
from diffjax.numerics.arrays import bisect_decreasing, expand_to

if TYPE_CHECKING:
    from diffjax.processes.reverse import ReverseSDE

Array = jax.Array
ScoreFn = Callable[..., Array]

__all__ = ["SDE", "process_class", "check_batch_time", "check_epsilon", "check_t_end", "concrete_float"]


def process_class(cls):
    """Decorator: ``cls`` as a frozen dataclass and a pytree, by one rule: fields declared ``float`` or
    ``Array`` (and fields marked ``metadata={"leaf": True}``) are leaves; the rest (``N``, names,
    functions, and numbers that decide control flow, marked ``metadata={"static": True}``) are static.
    Fields are checked against their declarations before ``__post_init__``."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    data, meta, reals = [], [], []
    for f in dataclasses.fields(cls):
        kinds = _kinds(f.type)
        is_leaf = f.metadata.get("leaf", False) or (("real" in kinds or "array" in kinds) and "int" not in kinds
                                                     and not f.metadata.get("static", False))
        (data if is_leaf else meta).append(f.name)
        if "real" in kinds:
            reals.append(f.name)
    own = cls.__post_init__ if hasattr(cls, "__post_init__") else None

    def __post_init__(self):
        for name in reals:  # EDM(sigma_max=80) holds 80.0: a number field is a float whatever was typed
            value = getattr(self, name)
            if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
                object.__setattr__(self, name, float(value))
        check_fields(self)
        if own is not None:
            own(self)

    cls.__post_init__ = __post_init__
    jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)
    return cls


def check_batch_time(x: Array, t: Array, x_name: str = "x", T: float = 1.0) -> None:
    """Raise a ValueError unless ``x`` has shape (batch, ...) and ``t`` has shape (batch,), and, when t
    is concrete (not traced), every t lies in [0, T]."""
    x_shape = tuple(jnp.shape(x))
    t_shape = tuple(jnp.shape(t))
    if len(x_shape) < 1:
        raise ValueError(f"{x_name} must have a leading batch dimension, shape (batch, ...); got a scalar")
    if t_shape != (x_shape[0],):
        raise ValueError(
            f"t must have shape (batch,) = ({x_shape[0]},) to match {x_name} of shape {x_shape}; got {t_shape} "
            "(diffjax passes one time per example)"
        )
    if not is_traced(t) and not is_traced(T) and t_shape[0]:
        v = np.asarray(t, np.float64)
        if not (np.all(v >= 0) and np.all(v <= float(T) * (1 + 1e-6))):
            raise ValueError(f"t must lie in [0, T] = [0, {float(T)}]; got values in [{v.min()}, {v.max()}]")


def check_t_end(owner: str, sde: "SDE", t_end) -> None:
    """Raise a one-line error unless ``t_end`` (where a path ends at the data side) is a number in (0, T)."""
    check_real(owner, "t_end", t_end)
    if not is_traced(t_end) and not is_traced(sde.T) and not 0 < t_end < sde.T:
        raise ValueError(f"{owner}: t_end must lie in (0, T) = (0, {float(sde.T)}); got {t_end}")


def check_increasing_pair(owner: str, lo_name: str, lo, hi_name: str, hi) -> None:
    """0 < lo < hi for a process's two schedule ends (checked when concrete), one line naming them."""
    rule = f"0 < {lo_name} < {hi_name}"
    lo_v, hi_v = concrete_float(lo), concrete_float(hi)
    if lo_v is not None and not lo_v > 0:
        raise ValueError(f"{owner} needs {lo_name} > 0 ({rule}); got {lo_name}={lo_v}")
    if lo_v is not None and hi_v is not None and not lo_v < hi_v:
        raise ValueError(f"{owner} needs {rule}; got {lo_name}={lo_v}, {hi_name}={hi_v}")


def concrete_float(v) -> float | None:
    """The value of a concrete scalar, or None for tracers and tree-utility placeholders."""
    if is_traced(v):
        return None
    try:
        arr = np.asarray(v)
    except (TypeError, ValueError):
        return None
    if arr.dtype == object or arr.size != 1:
        return None
    return float(arr.reshape(()))


def check_num_steps(n) -> None:
    """N (the discrete chain's length) must be an integer >= 1."""
    check_int("the process", "N (number of discrete steps)", n, lo=1)


def log_expm1(v: Array) -> Array:
    """log(exp(v) - 1) for v > 0, stable for small and large v."""
    return v + jnp.log(-jnp.expm1(-v))


class SDE:
    """A forward process with Gaussian marginals x(t) | x0 ~ N(a(t) x0, sigma(t)^2 I), t in [0, T].

    Subclasses define ``marginal_coeffs(t) -> (a(t), sigma(t))``; every other coefficient has a
    generic definition here (automatic differentiation for f and g, bisection for t(lambda)) that a
    subclass may replace with a closed form. ``discrete_marginal_coeffs`` defaults to the marginals
    at ``discrete_timesteps``; VE, VP and sub-VP override it with their SMLD / DDPM chains.

    Times a process names: ``T`` (its end, where the prior stands), ``t_end`` (where samplers stop:
    the original's ``sampling_eps``) and ``t_min`` (the smallest time losses train at and the
    likelihood evaluates data at).
    """

    N: int = 1000
    name = "process"

    # where samplers stop by default (the original's sampling_eps)
    t_end: float = 1e-3

    # the perturbation kernel: "gaussian" (closed-form marginals, Tweedie's formula, stochastic
    # samplers, the likelihood) or PFGM++'s "student_t"
    kernel = "gaussian"

    # the time labels the original score_sde fed networks of this process (diffjax.score.LABELS)
    score_sde_labels = "999t"

    @property
    def T(self) -> float:
        """End time of the forward process (1.0 unless a process says otherwise; EDM's is sigma_max)."""
        return 1.0

    @property
    def t_min(self) -> float:
        """The smallest time the process is trained and evaluated at: the losses' lower limit and the
        likelihood's data time (the original's eps = 1e-5 for VE, VP and sub-VP; EDM's sigma_min)."""
        return self.t_end

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
        t0 = jax.lax.stop_gradient(bisect_decreasing(self.log_snr, jax.lax.stop_gradient(lam), 0.0, self.T, iters))
        lam0, dlam = jax.jvp(self.log_snr, (t0,), (jnp.ones_like(t0),))
        newton = (lam - jax.lax.stop_gradient(lam)) / jax.lax.stop_gradient(jnp.where(dlam != 0, dlam, -1.0))
        return t0 + newton

    def noise_level(self, t: Array) -> Array:
        """EDM's noise level sigma(t) / a(t) = exp(-lambda(t)) of the rescaled process x / a."""
        return jnp.exp(-self.log_snr(t))

    def t_from_noise_level(self, sigma_hat: Array) -> Array:
        """The time at which sigma(t) / a(t) = sigma_hat (inverse of :meth:`noise_level`)."""
        return self.t_from_log_snr(-jnp.log(jnp.asarray(sigma_hat)))

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
        return drift * dt, g * jnp.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False, epsilon=None) -> "ReverseSDE":
        """The reverse-time process driven by ``score_fn(x, t, **cond)``; see :class:`ReverseSDE`."""
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable score_fn(x, t); got {type(score_fn).__name__}")
        from diffjax.processes.reverse import ReverseSDE

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

    def sample_importance_time(self, key: Array, shape, t_min: float | None = None) -> tuple[Array, Array]:
        """Draw t on [t_min, T] (default the process's :attr:`t_min`) with density
        q(t) = (g^2/sigma^2)(t) / Z by inverting its CDF.

        Returns ``(t, Z)`` with ``Z = int_{t_min}^T g^2/sigma^2 dt``. For any h,
        E_{t~U(t_min,T)}[g^2/sigma^2 h(t)] = Z / (T - t_min) * E_{t~q}[h(t)], which is how the
        likelihood-weighted DSM loss uses it.
        """
        t_min = self.t_min if t_min is None else t_min
        lo = self._weight_antiderivative(jnp.asarray(t_min, jnp.float32))
        hi = self._weight_antiderivative(jnp.asarray(self.T, jnp.float32))
        u = jax.random.uniform(key, tuple(shape), jnp.float32)
        t = self._weight_antiderivative_inverse(lo + u * (hi - lo))
        return jnp.clip(t, t_min, self.T), hi - lo

    def require_gaussian(self, what: str) -> None:
        """Raise a ValueError naming ``what`` when this process's kernel is not Gaussian (the one place
        the capability is checked: stochastic steps, the likelihood, the DSM loss and the Gaussian
        closed forms call it)."""
        if self.kernel != "gaussian":
            raise ValueError(f"{what} assumes a Gaussian perturbation kernel; {type(self).__name__}'s is {self.kernel}, "
                             "not Gaussian (use its deterministic denoiser-ODE samplers: edm_heun, ddim, dpmpp_2m, ode_*)")


def check_epsilon(epsilon):
    """Validate the reverse SDE's diffusion eps(t): None (Anderson's, g^2 / 2), a number >= 0 or a callable
    eps(t) -> array of t's shape."""
    if epsilon is None or callable(epsilon):
        return epsilon
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon >= 0 \
            or not math.isfinite(epsilon):
        raise ValueError(f"epsilon must be None, a finite number >= 0 or a function eps(t); got {epsilon!r}")
    return float(epsilon)
