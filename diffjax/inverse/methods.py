"""The exact mixture posterior and the posterior-sampling methods (see :mod:`diffjax.inverse`): PiGDM,
DPS, DDNM, the seed paper's projection generalised to any A, and RED-diff."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from diffjax._checks import check_real, describe
from diffjax._jit import filter_jit
from diffjax.inverse.operators import LinearOperator
from diffjax.mixture import GaussianMixture
from diffjax.numerics.arrays import expand_to, per_example_norm
from diffjax.numerics.random import fold_keys, normal_like
from diffjax.processes import SDE
from diffjax.results import (
    SampleResult,
    no_nonfinite,
    raise_if_nonfinite,
    update_nonfinite,
)
from diffjax.samplers.base import Step, Wrapper, static_field, step_class
from diffjax.score import x0_from_score

Array = jax.Array


def mixture_posterior(prior: GaussianMixture, A: Array, y: Array, sigma_y: float) -> tuple[GaussianMixture, Array]:
    """(posterior, log p(y)) for the prior ``prior`` (d-dimensional), a matrix ``A`` (m, d) (use
    :func:`dense` for an operator) and one measurement ``y`` (m,) with noise ``sigma_y`` >= 0 (0 needs
    A S_k A^T invertible). The posterior is a :class:`~diffjax.GaussianMixture` (the module docstring)."""
    A, y = jnp.asarray(A), jnp.asarray(y)
    check_real("mixture_posterior", "sigma_y", sigma_y, lo=0.0)
    if A.ndim != 2 or y.shape != (A.shape[0],) or A.shape[1] != prior.means.shape[1]:
        raise ValueError(f"mixture_posterior needs A (m, d = {prior.means.shape[1]}) and y (m,); got A {A.shape}, "
                         f"y {y.shape}")
    m = A.shape[0]

    def component(mu, S):
        Sy = A @ S @ A.T + sigma_y ** 2 * jnp.eye(m, dtype=A.dtype)
        K = jnp.linalg.solve(Sy, A @ S).T
        r = y - A @ mu
        chol = jnp.linalg.cholesky(Sy)
        z = jax.scipy.linalg.solve_triangular(chol, r, lower=True)
        log_n = -0.5 * (z @ z) - jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * m * jnp.log(2 * jnp.pi)
        C = S - K @ A @ S
        return mu + K @ r, 0.5 * (C + C.T), log_n

    means, covs, log_n = jax.vmap(component)(prior.means, prior.covs)
    log_w = jnp.log(prior.weights) + log_n
    log_evidence = jax.nn.logsumexp(log_w)
    return GaussianMixture(jnp.exp(log_w - log_evidence), means, covs), log_evidence


# --- likelihood guidance --------------------------------------------------------------------------------

def denoiser(sde: SDE, score_fn, x: Array, t: Array) -> Array:
    """Tweedie's D(x, t) = E[x0 | x_t = x] from the score."""
    a, s = sde.marginal_coeffs(t)
    return x0_from_score(score_fn(x, t), x, a, s)


def _pigdm_r2(sde, t):
    a, s = sde.marginal_coeffs(t)
    return s ** 2 / (a ** 2 + s ** 2)


def _pigdm(sde, score_fn, op, y, sigma_y, weight, weighting, x, t):
    s, vjp = jax.vjp(lambda z: score_fn(z, t), x)
    a, sig = sde.marginal_coeffs(t)
    d = x0_from_score(s, x, a, sig)
    v = op.adjoint(op.solve_aat(y - op.apply(d), _pigdm_r2(sde, t), sigma_y ** 2))
    # D = (x + sig^2 s) / a: (dD/dx)^T v = (v + sig^2 (ds/dx)^T v) / a
    (js,) = vjp(v * expand_to(sig ** 2, v))
    w = weight * (a ** 2 if weighting == "a2" else 1.0)
    return s + expand_to(w, x) * (v + js) / expand_to(a, x)


def pigdm_score(sde: SDE, score_fn, op: LinearOperator, y: Array, sigma_y: float, weight: float = 1.0,
                weighting: str = "bayes") -> Partial:
    """PiGDM's posterior score s(x, t) + w grad log p~(y | x_t) (module docstring) for ``y`` (batch,
    *y_shape), a score function for any sampler step. ``weighting="bayes"`` with ``weight`` w = 1 is
    the Bayesian term, exact when the prior is N(mu, I). With a network it is unstable at high noise:
    dD/dx = (I + sigma^2 ds/dx) / a divides the network's small departure from -I / sigma^2 by a(t),
    which vanishes at T (on the digits the guided score is 26x the score at t = 0.99). ``"a2"``
    multiplies the term by a(t)^2, the authors' code's a_s a_t on a fine grid: the practical choice
    for networks. Costs one VJP through the score per evaluation."""
    op.check_y(y)
    check_real("pigdm_score", "sigma_y", sigma_y, lo=0.0)
    if weighting not in ("bayes", "a2"):
        raise ValueError(f"pigdm_score weighting must be 'bayes' or 'a2'; got {weighting!r}")
    return Partial(_pigdm, sde, score_fn, op, jnp.asarray(y), float(sigma_y), jnp.asarray(weight), weighting)


@step_class
class _DPS(Wrapper):
    step: Step
    op: LinearOperator
    y: Array
    scale: float = static_field(1.0)

    @property
    def name(self) -> str:
        return f"dps({self.step.name})"

    def init(self, x):
        return self.step.init(x)

    def update(self, keys, x, state, t, t_next, score_fn):
        def residual_norm(z):
            r = self.y - self.op.apply(denoiser(self.sde, score_fn, z, t))
            return jnp.sum(per_example_norm(r))

        grad = jax.grad(residual_norm)(x)
        x_next, state = self.step.update(keys, x, state, t, t_next, score_fn)
        return x_next - self.scale * grad, state


def dps(step: Step, op: LinearOperator, y: Array, scale: float = 0.5) -> Step:
    """DPS: ``step``, then x <- x - scale grad_{x_t} ||y - A D(x_t)|| (per-example norm; the gradient
    at the update's start, through the network). Official scales on FFHQ: 0.3 (SR, deblur), 0.5
    (inpainting), 1 (phase retrieval). One VJP per update beyond the step's evaluations."""
    if not isinstance(step, Step):
        raise TypeError(f"dps wraps a diffjax.samplers.Step; got {describe(step)}")
    op.check_y(y)
    check_real("dps", "scale", scale, lo=0.0)
    return _DPS(step, op, jnp.asarray(y), float(scale))


@step_class
class _DDNM(Step):
    sde: SDE
    op: LinearOperator
    y: Array
    eta: float = static_field(0.85)
    form: str = static_field("ddnm")

    name = "ddnm"
    stochastic = True

    def update(self, keys, x, state, t, t_next, score_fn):
        a, s = self.sde.marginal_coeffs(t)
        a_n, s_n = self.sde.marginal_coeffs(t_next)
        d = denoiser(self.sde, score_fn, x, t)
        x0 = d + self.op.pinv(self.y - self.op.apply(d))
        eps = (x - expand_to(a, x) * d) / expand_to(s, x)
        if self.form == "ddnm":  # the paper's code: sigma' (eta z + sqrt(1 - eta^2) eps^)
            c_z, c_eps = self.eta * s_n, jnp.sqrt(1 - self.eta ** 2) * s_n
        else:  # DDIM-eta proper: c_z = eta sigma' sqrt(1 - e^{-2h}), the rest of sigma'^2 along eps^
            h = jnp.log(a_n / s_n) - jnp.log(a / s)
            c_z = self.eta * s_n * jnp.sqrt(-jnp.expm1(-2 * h))
            c_eps = jnp.sqrt(jnp.maximum(s_n ** 2 - c_z ** 2, 0.0))
        return (expand_to(a_n, x) * x0 + expand_to(c_eps, x) * eps + expand_to(c_z, x) * normal_like(keys, x),
                state)

    def denoise(self, x, state, t, score_fn):
        """The final denoising, range-null composed too: A^+ y + (I - A^+ A) D(x, t_end)."""
        d = denoiser(self.sde, score_fn, x, t)
        return d + self.op.pinv(self.y - self.op.apply(d))


def ddnm(sde: SDE, op: LinearOperator, y: Array, eta: float = 0.85, form: str = "ddnm") -> Step:
    """DDNM: x0|y = A^+ y + (I - A^+ A) D(x_t), then x_next = a' x0|y + sigma' (eta z + sqrt(1 - eta^2)
    eps^) (``form="ddnm"``, the paper's code; eta = 0.85 its default), or the DDIM-eta step of
    DPM-Solver++'s SDE form with x0|y (``form="ddim"``: noise eta sigma' sqrt(1 - e^{-2h}), h the step
    in log-SNR). One evaluation per update; the final denoising is range-null composed too, so the
    result equals A^+ y in the range of A (noiseless y). In the null space the "ddim" form follows
    unconditional DDIM-eta, whose limit is exact for a prior uncorrelated across range and null space;
    the paper's form re-noises from the denoised estimate and is biased even then (measured: the
    null-space variance of an N(0, 0.5 I) prior comes out 0.36 at 200 steps; see the tests)."""
    op.check_y(y)
    check_real("ddnm", "eta", eta, lo=0.0, hi=1.0)
    if form not in ("ddnm", "ddim"):
        raise ValueError(f"ddnm form must be 'ddnm' (the paper's) or 'ddim'; got {form!r}")
    return _DDNM(sde, op, jnp.asarray(y), float(eta), form)


@step_class
class _Project(Wrapper):
    step: Step
    op: LinearOperator
    y: Array

    @property
    def name(self) -> str:
        return f"project({self.step.name})"

    def init(self, x):
        return self.step.init(x)

    def update(self, keys, x, state, t, t_next, score_fn):
        x, state = self.step.update(keys, x, state, t, t_next, score_fn)
        now = t_next if self.step.moves_time else t
        a, s = self.sde.marginal_coeffs(now)
        z = normal_like(fold_keys(keys, 0x1A7F), x)
        y_t = expand_to(a, self.y) * self.y + self.op.apply(expand_to(s, x) * z)
        return x + self.op.pinv(y_t - self.op.apply(x)), state


def project(step: Step, op: LinearOperator, y: Array) -> Step:
    """The seed paper's replacement for any linear A: after each update of ``step`` the range of A
    is replaced by the measurement carried to the current time, x <- x + A^+ (a y + sigma A z - A x)
    (for a mask: the known pixels become a y + sigma z, as :func:`diffjax.guidance.inpaint`)."""
    if not isinstance(step, Step):
        raise TypeError(f"project wraps a diffjax.samplers.Step; got {describe(step)}")
    op.check_y(y)
    return _Project(step, op, jnp.asarray(y))


# --- RED-diff ---------------------------------------------------------------------------------------------

def _red_diff_grad(sde, score_fn, op, y, mu, t, eps, lam, obs_weight):
    """The gradient of RED-diff's loss at mu (batch, ...) for one noise draw eps: the data term's
    obs_weight A^T (A mu - y) / m and the regulariser's w_t (eps^(a mu + sigma eps, t) - eps) / d with
    w_t = lam sigma / a (both terms means over their entries, as the reference code)."""
    a, s = sde.marginal_coeffs(t)
    x_t = expand_to(a, mu) * mu + expand_to(s, mu) * eps
    eps_hat = -expand_to(s, mu) * score_fn(x_t, t)
    m = op.num_measurements()
    d = int(np.prod(mu.shape[1:]))
    data = obs_weight * op.adjoint(op.apply(mu) - y) / m
    return data + expand_to(lam * s / a, mu) * (eps_hat - eps) / d


def red_diff(sde: SDE, score_fn, key: Array, op: LinearOperator, y: Array, timesteps: Array, *,
             learning_rate: float = 0.1, lam: float = 0.25, obs_weight: float = 1.0,
             check_finite: bool = True) -> Array:
    """RED-diff (Mardani et al. 2024): the variational posterior is a point mu, started at A^+ y and
    moved by one Adam step (betas 0.9, 0.99) per time of ``timesteps`` (descending, T first) on

        obs_weight ||y - A mu||^2 / (2m) + lam (sigma / a) <sg(eps^(a mu + sigma eps, t) - eps), mu> / d,

    a fresh eps per time (the score as a regulariser). Returns mu (batch, *x_shape): a MAP-like
    point, not a posterior sample (for a Gaussian prior its fixed point reweights the prior precision
    by E_t[w_t a sigma (a^2 S + sigma^2)^{-1}]: not the posterior mean either). One score evaluation
    per time and no backpropagation through the network. Outside a jit of yours an example that turns
    NaN/Inf raises :class:`~diffjax.results.NonFiniteError` naming the first time (``check_finite=False``
    returns the values)."""
    y = jnp.asarray(y)
    op.check_y(y)
    for name, v in (("learning_rate", learning_rate), ("lam", lam), ("obs_weight", obs_weight)):
        check_real("red_diff", name, v, lo=0.0)
    ts = jnp.asarray(timesteps)
    mu, record = _red_diff(sde, score_fn, key, op, y, ts, float(learning_rate), float(lam), float(obs_weight))
    raise_if_nonfinite(SampleResult(mu, jnp.full(mu.shape[:1], ts.shape[0], jnp.int32), record, None), "red_diff",
                       check_finite, steps=ts, what="time")
    return mu


@filter_jit
def _red_diff(sde, score_fn, key, op, y, ts, learning_rate, lam, obs_weight):
    """The compiled loop of :func:`red_diff` (one program per shapes and hyper-parameters; a score
    given as a plain closure keys the compile by identity, as everywhere in diffjax)."""
    import optax

    mu = op.pinv(y).astype(ts.dtype if jnp.issubdtype(ts.dtype, jnp.floating) else jnp.float32)
    opt = optax.adam(learning_rate, b1=0.9, b2=0.99)

    def body(carry, inputs):
        mu, state, bad = carry
        i, t = inputs
        eps = jax.random.normal(jax.random.fold_in(key, i), mu.shape, mu.dtype)
        g = _red_diff_grad(sde, score_fn, op, y, mu, jnp.full((mu.shape[0],), t, ts.dtype), eps, lam, obs_weight)
        updates, state = opt.update(g, state)
        mu = optax.apply_updates(mu, updates)
        return (mu, state, update_nonfinite(bad, i, mu)), None

    carry = (mu, opt.init(mu), no_nonfinite(mu.shape[0]))
    (mu, _, bad), _ = jax.lax.scan(body, carry, (jnp.arange(ts.shape[0]), ts))
    return mu, bad


# --- twisted SMC ----------------------------------------------------------------------------------------
