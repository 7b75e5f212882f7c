"""Turning a network into a score function ``score_fn(x, t, **cond) -> array like x``.

A network is any ``apply_fn(params, x, labels, **cond)``: a Flax Linen ``module.apply``, an
Equinox model wrapped as ``lambda m, x, labels: jax.vmap(m)(x, labels)``, or a plain function.
It reads time through *labels*, one of :data:`LABELS` (always named: a network's scale depends on
it), and predicts one of

    "score"  s = grad_x log p_t(x)                      (optionally divided by sigma: NCSN++'s scale_by_sigma)
    "eps"    the noise:   x = a x0 + sigma eps,  s = -eps / sigma
    "x0"     the data:    s = (a x0_hat - x) / sigma^2
    "v"      velocity:    with r = sqrt(a^2 + sigma^2), a' = a/r, sigma' = sigma/r (a unit-variance
             rescaling of x), v = a' eps - sigma' x0; then eps = sigma' x / r + a' v. For VP (r = 1)
             this is Salimans & Ho's v-prediction.
    "velocity"  the probability-flow velocity dx/dt = E[a' x0 + sigma' z | x_t] (a', sigma' the time
             derivatives): flow matching's target, z - x0 for rectified flow. With lambda' = d log(a/sigma)/dt,
             D = (sigma u - sigma' x) / (sigma a lambda').
    "edm"    EDM's preconditioned denoiser (Karras et al. 2022) on the rescaled x / a with noise level
             sigma_hat = sigma / a: the network F sees c_in x / a and c_noise = log(sigma_hat) / 4, and
             D = c_skip x / a + c_out F with c_skip = sd^2 / (sigma_hat^2 + sd^2),
             c_out = sigma_hat sd / sqrt(sigma_hat^2 + sd^2), c_in = 1 / sqrt(sigma_hat^2 + sd^2),
             sd = sigma_data. Any process, any network.

``(a, sigma)`` are the process's marginal coefficients at t (continuous time) or the discrete
chain's at the nearest step (discrete time). :func:`convert_prediction` converts between all of
them (pure functions, for any sampler or loss). :func:`score_from_denoiser` takes a denoiser
written as ``denoiser(x, sigma)`` in EDM's convention (k-diffusion's model interface).

Time labels (:data:`LABELS`), what a network is fed for the time t (batch,):

    "t"          t / T, in (0, 1]: for any process (a good default for networks of your own)
    "c_noise"    log(sigma / a) / 4 = -lambda / 4: EDM's c_noise, bounded (about -2..2) for every process
    "999t"       999 t / T: what the paper's continuous VP / sub-VP networks read
    "sigma"      sigma(t): what the paper's continuous VE networks (NCSN++) read, through log sigma
    "index"      the discrete chain's step index round(t (N - 1) / T) (int32)
    "score_sde"  the original's per-process map: "sigma" for VE, "c_noise" for EDM's time (EDM, PFGM++),
                 "999t" for every other process; what diffjax's own networks read when continuous
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from diffjax._checks import check_finite_input
from diffjax._jit import bind
from diffjax.numerics.arrays import expand_to
from diffjax.numerics.xla_cpu import needs_ordering, order_after
from diffjax.processes import SDE, check_batch_time

Array = jax.Array

PREDICTIONS = ("score", "eps", "x0", "v", "velocity", "edm")

__all__ = [
    "PREDICTIONS",
    "LABELS",
    "time_labels",
    "score_from_denoiser",
    "checked_score",
    "check_score_inputs",
    "model_marginal_coeffs",
    "output_to_score",
    "score_to_output",
    "convert_prediction",
    "edm_preconditioning",
    "x0_from_score",
    "score_from_denoised",
    "ScoreModel",
    "ModuleApply",
    "make_score_model",
    "make_score_fn",
    "score_fn_from_module",
]


def _t_over_T(sde: SDE, t: Array) -> Array:
    return t / sde.T


def _999t(sde: SDE, t: Array) -> Array:
    return t * (999.0 / sde.T)


def _sigma(sde: SDE, t: Array) -> Array:
    return sde.marginal_coeffs(t)[1]


def _c_noise(sde: SDE, t: Array) -> Array:
    return -0.25 * sde.log_snr(t)


def _index(sde: SDE, t: Array) -> Array:
    return sde.timestep_index(t)


def _score_sde(sde: SDE, t: Array) -> Array:
    return LABELS[sde.score_sde_labels](sde, t)


LABELS = {"t": _t_over_T, "c_noise": _c_noise, "999t": _999t, "sigma": _sigma, "index": _index,
          "score_sde": _score_sde}
"""The named time labels (see the module docstring): name -> labels(sde, t)."""

# labels whose values may be 0 or negative, for which a network that takes their log gives NaN
_NOT_POSITIVE = {"c_noise", "index"}


def time_labels(sde: SDE, t: Array, kind: str = "score_sde") -> Array:
    """The time labels ``kind`` (one of :data:`LABELS`) of times ``t`` for process ``sde``."""
    if not isinstance(sde, SDE):
        raise TypeError(f"time_labels takes a diffjax process; got {type(sde).__name__}")
    if kind not in LABELS:
        raise ValueError(f"unknown time labels {kind!r}; expected one of {tuple(LABELS)}")
    return LABELS[kind](sde, jnp.asarray(t))


def _resolved_labels(sde: SDE, kind) -> Optional[str]:
    """The label kind ``kind`` stands for on ``sde`` ("score_sde" resolved), None for a function."""
    if callable(kind):
        return None
    return sde.score_sde_labels if kind == "score_sde" else kind


def _is_flax_module(fn) -> bool:
    """A Flax Linen module (callable, but not as apply(params, ...)); told apart without importing Flax."""
    return any(c.__module__.startswith("flax.") and c.__name__ == "Module" for c in type(fn).__mro__)


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; expected one of {PREDICTIONS}")


def model_marginal_coeffs(sde: SDE, t: Array, continuous: bool = True) -> tuple[Array, Array]:
    """(a, sigma) the network output is converted with: the marginal at t, or the discrete chain's."""
    if continuous:
        return sde.marginal_coeffs(t)
    a, s = sde.discrete_marginal_coeffs()
    i = sde.timestep_index(t)
    return a[i], s[i]


def edm_preconditioning(sigma_hat: Array, sigma_data: float = 0.5) -> tuple[Array, Array, Array, Array]:
    """EDM's (c_skip, c_out, c_in, c_noise) at noise levels ``sigma_hat`` (any shape)."""
    sigma_hat = jnp.asarray(sigma_hat)
    var = sigma_hat**2 + sigma_data**2
    return sigma_data**2 / var, sigma_hat * sigma_data / jnp.sqrt(var), 1.0 / jnp.sqrt(var), 0.25 * jnp.log(sigma_hat)


def _velocity_coeffs(sde: SDE, t: Array) -> tuple[Array, Array, Array, Array]:
    """(a, sigma, d sigma/dt, a d lambda/dt) at t: the velocity conversion's coefficients."""
    a, s, da, ds = sde.marginal_coeffs_and_derivatives(t)
    return a, s, ds, da - a * ds / s


def output_to_score(output: Array, x: Array, a: Array, sigma: Array, prediction: str, *,
                    sde: SDE | None = None, t: Array | None = None, sigma_data: float = 0.5) -> Array:
    """Convert a network output to a score. ``a``, ``sigma``: shape (batch,); ``x``, ``output``: (batch, ...).

    "velocity" needs the process and the time (``sde``, ``t``); "edm" reads ``sigma_data``.
    """
    _check_prediction(prediction)
    if output.shape != x.shape:
        raise ValueError(f"network output has shape {output.shape}; expected the shape of x, {x.shape}")
    ae, se = expand_to(a, x), expand_to(sigma, x)
    if prediction == "score":
        return output
    if prediction == "eps":
        return -output / se
    if prediction == "x0":
        return score_from_denoised(output, x, a, sigma)
    if prediction == "v":
        r = jnp.sqrt(ae**2 + se**2)
        eps = (se / r) * (x / r) + (ae / r) * output
        return -eps / se
    if prediction == "edm":
        c_skip, c_out, _, _ = edm_preconditioning(sigma / a, sigma_data)
        d = expand_to(c_skip, x) * x / ae + expand_to(c_out, x) * output
        return (ae * d - x) / se**2
    if sde is None or t is None:
        raise ValueError("prediction='velocity' needs the process and the time: output_to_score(..., sde=, t=)")
    _, _, ds, a_dlam = _velocity_coeffs(sde, t)
    d = (se * output - expand_to(ds, x) * x) / (se * expand_to(a_dlam, x))
    return (ae * d - x) / se**2


def score_to_output(score: Array, x: Array, a: Array, sigma: Array, prediction: str, *,
                    sde: SDE | None = None, t: Array | None = None, sigma_data: float = 0.5) -> Array:
    """The inverse of :func:`output_to_score`: what a network predicting ``prediction`` outputs for ``score``."""
    _check_prediction(prediction)
    ae, se = expand_to(a, x), expand_to(sigma, x)
    if prediction == "score":
        return score
    eps = -se * score
    d = (x + se**2 * score) / ae
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return d
    if prediction == "v":
        r = jnp.sqrt(ae**2 + se**2)
        return (ae / r) * eps - (se / r) * d
    if prediction == "edm":
        c_skip, c_out, _, _ = edm_preconditioning(sigma / a, sigma_data)
        return (d - expand_to(c_skip, x) * x / ae) / expand_to(c_out, x)
    if sde is None or t is None:
        raise ValueError("prediction='velocity' needs the process and the time: score_to_output(..., sde=, t=)")
    _, _, ds, a_dlam = _velocity_coeffs(sde, t)
    return expand_to(a_dlam, x) * d + expand_to(ds, x) * x / se


def convert_prediction(value: Array, x: Array, t: Array, sde: SDE, source: str, target: str, *,
                       sigma_data: float = 0.5) -> Array:
    """Convert a prediction of kind ``source`` at (x, t) into kind ``target`` (both in ``PREDICTIONS``),
    exactly, through the score: e.g. ``convert_prediction(v, x, t, sde, "velocity", "eps")``."""
    a, sigma = sde.marginal_coeffs(t)
    score = output_to_score(value, x, a, sigma, source, sde=sde, t=t, sigma_data=sigma_data)
    return score_to_output(score, x, a, sigma, target, sde=sde, t=t, sigma_data=sigma_data)


def score_from_denoised(d: Array, x: Array, a: Array, sigma: Array) -> Array:
    """The score (a d - x) / sigma^2 of a denoised estimate ``d`` = E[x0 | x_t] (the inverse of Tweedie's formula)."""
    return (expand_to(a, x) * d - x) / expand_to(sigma, x) ** 2


def x0_from_score(score: Array, x: Array, a: Array, sigma: Array) -> Array:
    """Tweedie's denoised estimate E[x0 | x_t] = (x + sigma^2 s) / a; ``a``, ``sigma``: (batch,)."""
    return (x + expand_to(sigma, x) ** 2 * score) / expand_to(a, x)


@dataclasses.dataclass(frozen=True)
class ScoreModel:
    """``score_model(params, x, t, **cond) -> score`` from a network ``apply_fn(params, x, labels, **cond)``.

    A frozen dataclass: two score models built alike are equal and hash alike, so they key jit
    caches by value. ``apply_fn`` is compared as given (by identity for a plain function; wrap a
    Flax module with :class:`ModuleApply`, which compares by the module's configuration). See
    :func:`make_score_model` for the fields.
    """

    apply_fn: Callable[..., Array]
    sde: SDE
    prediction: str = "eps"
    labels: Any = None
    continuous: bool = True
    scale_by_sigma: bool = False
    sigma_data: float = 0.5

    def __post_init__(self):
        _check_prediction(self.prediction)
        if self.scale_by_sigma and self.prediction != "score":
            raise ValueError(f"scale_by_sigma applies to prediction='score' only; got prediction={self.prediction!r}")
        if not callable(self.apply_fn):
            raise TypeError(f"apply_fn must be callable apply_fn(params, x, labels); got {type(self.apply_fn).__name__}")
        if _is_flax_module(self.apply_fn):
            raise TypeError(f"apply_fn must be the network's apply function, apply_fn(params, x, labels); got the Flax "
                            f"module {type(self.apply_fn).__name__} itself: pass net.apply (or "
                            "models.network_score_model(net, sde))")
        if isinstance(self.sde, type):
            raise TypeError(f"sde must be a process instance such as {self.sde.__name__}(); got the class")
        if not isinstance(self.sde, SDE):
            raise TypeError(f"sde must be a diffjax process (diffjax.processes); got {type(self.sde).__name__}")
        if self.prediction in ("velocity", "edm") and not self.continuous:
            raise ValueError(f"prediction={self.prediction!r} needs continuous time (continuous=True)")
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0; got {self.sigma_data}")
        if self.labels is None:
            raise TypeError("make_score_model needs labels=, how your network reads time: 't' (t / T), 'c_noise' "
                            "(log(sigma / a) / 4), '999t', 'sigma', 'index', 'score_sde' (diffjax.score.LABELS) or a "
                            "function labels(t); diffjax's own networks declare theirs (models.network_score_model)")
        if not callable(self.labels) and self.labels not in LABELS:
            raise ValueError(f"unknown time labels {self.labels!r}; expected one of {tuple(LABELS)} or a function")
        _check_labels_for_network(self.apply_fn, self.sde, self.labels)

    def time_labels(self, t: Array) -> Array:
        """What the network is fed for times t (batch,)."""
        return self.labels(t) if callable(self.labels) else LABELS[self.labels](self.sde, t)

    def __call__(self, params: Any, x: Array, t: Array, **cond) -> Array:
        check_batch_time(x, t, T=self.sde.T)
        a, sigma = model_marginal_coeffs(self.sde, t, self.continuous)
        if self.prediction == "edm":
            # EDM's preconditioning: the network sees c_in x / a
            _, _, c_in, _ = edm_preconditioning(sigma / a, self.sigma_data)
            output = self.apply_fn(params, expand_to(c_in / a, x).astype(x.dtype) * x, self.time_labels(t), **cond)
        else:
            output = self.apply_fn(params, x, self.time_labels(t), **cond)
        if self.prediction == "score" and self.scale_by_sigma:
            return output / expand_to(sigma, x)
        return output_to_score(output, x, a, sigma, self.prediction, sde=self.sde, t=t, sigma_data=self.sigma_data)


def _check_labels_for_network(apply_fn, sde: SDE, labels) -> None:
    """Refuse labels a diffjax network cannot read: one that embeds log(label) (``label_domain`` =
    "positive", the Fourier embedding) fed labels that can be 0 or negative would give NaN."""
    module = getattr(apply_fn, "module", None) or getattr(apply_fn, "__self__", None)
    if getattr(module, "label_domain", None) != "positive":
        return
    kind = _resolved_labels(sde, labels)
    if kind in _NOT_POSITIVE:
        raise ValueError(f"{type(module).__name__} embeds log(label) (embedding_type='fourier') and would be fed "
                         f"{kind!r} labels, which are 0 or negative for {type(sde).__name__} (NaN); use "
                         "embedding_type='positional', or positive labels ('t', '999t', 'sigma')")


@dataclasses.dataclass(frozen=True)
class ModuleApply:
    """``module.apply`` as a value: equal for equal Flax modules (a bound method compares by the
    module's identity, so ``net.apply`` of two equal networks would not key a cache alike).
    ``kwargs`` (a tuple of pairs) are passed to every call, e.g. ``(("train", False),)``."""

    module: Any
    kwargs: tuple = ()

    def __call__(self, params, *args, **kwargs):
        return self.module.apply(params, *args, **dict(self.kwargs), **kwargs)


def make_score_model(
    apply_fn: Callable[..., Array],
    sde: SDE,
    *,
    prediction: str = "eps",
    labels: Any = None,
    continuous: bool = True,
    scale_by_sigma: bool = False,
    sigma_data: float = 0.5,
) -> ScoreModel:
    """A score model ``score_model(params, x, t, **cond) -> score`` from ``apply_fn(params, x, labels, **cond)``.

    Args:
      apply_fn: the network; called as ``apply_fn(params, x, labels, **cond)`` with ``x`` (batch, ...)
        and ``labels`` (batch,). Must return an array of the shape of x.
      sde: the forward process.
      prediction: what the network predicts, one of ``PREDICTIONS``.
      labels: how the network reads time, required: a name in :data:`LABELS` ("t", "c_noise", "999t",
        "sigma", "index", "score_sde") or a function ``labels(t) -> (batch,)``. With
        ``prediction="edm"`` it defaults to EDM's own "c_noise".
      continuous: the process's continuous marginals (True) or its discrete chain's at the nearest step.
      scale_by_sigma: with ``prediction="score"``, divide the output by sigma (NCSN++'s option).
      sigma_data: the data's standard deviation in EDM's preconditioning (``prediction="edm"``).

    Returns a :class:`ScoreModel` (a value: equal when built alike).
    """
    if labels is None and prediction == "edm":
        labels = "c_noise"
    return ScoreModel(apply_fn, sde, prediction, labels, bool(continuous), bool(scale_by_sigma), float(sigma_data))


def make_score_fn(apply_fn: Callable[..., Array], params: Any, sde: SDE, **kwargs) -> Partial:
    """``score_fn(x, t, **cond)`` of a network with parameters ``params``: keyword arguments as
    :func:`make_score_model`.

    It is ``jax.tree_util.Partial(score_model, params)``, a pytree whose leaves are the
    parameters: the samplers, the likelihood and guidance trace them, so new parameters of the same
    shapes and dtypes (every few hundred training steps, say) never recompile. Prefer it to a
    closure ``lambda x, t: score_model(params, x, t)``, which keys the compile cache by identity.
    """
    return Partial(make_score_model(apply_fn, sde, **kwargs), params)


def score_fn_from_module(module: Any, params: Any, sde: SDE, *, continuous: bool | None = None) -> Partial:
    """Score function (a ``Partial``, see :func:`make_score_fn`) of a network that declares its output:
    reads ``module.prediction``, ``module.scale_by_sigma`` (default False) and how it reads time,
    ``module.continuous`` (default True; the ``continuous`` argument overrides it): "score_sde" labels
    when continuous, the step "index" otherwise; and calls ``module.apply(params, x, labels, **cond)``."""
    prediction = getattr(module, "prediction", None)
    if prediction is None:
        raise TypeError(f"{type(module).__name__} declares no `prediction`; use make_score_fn(apply_fn, ..., prediction=...)")
    if continuous is None:
        continuous = bool(getattr(module, "continuous", True))
    return make_score_fn(
        ModuleApply(module),
        params,
        sde,
        prediction=prediction,
        labels="score_sde" if continuous else "index",
        continuous=continuous,
        scale_by_sigma=bool(getattr(module, "scale_by_sigma", False)),
    )


def _denoiser_score(denoiser, sde: SDE, x: Array, t: Array) -> Array:
    a, sigma = sde.marginal_coeffs(t)
    d = denoiser(x / expand_to(a, x), sigma / a)
    return score_from_denoised(d, x, a, sigma)


def score_from_denoiser(denoiser: Callable[[Array, Array], Array], sde: SDE):
    """A score function from a denoiser written as ``denoiser(x, sigma) -> E[x0 | x]`` in EDM's (and
    k-diffusion's) convention: x = x0 + sigma z with noise levels sigma of shape (batch,). For a
    process with a(t) != 1 it is called on the rescaled x / a(t) with sigma(t) / a(t), and

        s(x, t) = (a D(x / a, sigma / a) - x) / sigma^2.

    Returns a pytree (closing over ``denoiser``'s arrays only if it is a pytree itself, e.g. a
    ``Partial`` or an Equinox module)."""
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable denoiser(x, sigma); got {type(denoiser).__name__}")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a diffjax process; got {type(sde).__name__}")
    return bind(_denoiser_score, denoiser, sde)


def checked_score(score_fn: Callable, name: str = "score_fn", per_example: bool = False) -> Callable:
    """``score_fn`` whose output is checked at trace time (for free) to have the shape of x, or with
    ``per_example`` one value per example (a divergence), whose failure on the (batch,) time
    convention is said in one line, and whose evaluations are ordered one after the other where
    XLA:CPU needs it (:mod:`diffjax.numerics.xla_cpu`); ``name`` names the function in errors."""

    def score(x, t, *args, **kwargs):
        if needs_ordering(score_fn, x, t, *args, **kwargs):
            t = order_after(t, x)
        try:
            out = score_fn(x, t, *args, **kwargs)
        except (TypeError, ValueError) as e:
            if "broadcast" not in str(e) and "shape" not in str(e):
                raise
            raise ValueError(f"{name}(x, t) failed with x of shape {jnp.shape(x)} and t of shape {jnp.shape(t)} "
                             f"(one time per example): {' '.join(str(e).split())[:200]}") from e
        if not hasattr(out, "dtype") or not jnp.issubdtype(out.dtype, jnp.floating):
            kind = getattr(out, "dtype", type(out).__name__)
            raise TypeError(f"{name}(x, t) must return a real floating-point array; got {kind}")
        if per_example and jnp.shape(out) != jnp.shape(x)[:1]:
            raise ValueError(f"{name} must return one value per example, shape {jnp.shape(x)[:1]}; "
                             f"got {jnp.shape(out)}")
        if not per_example and jnp.shape(out) != jnp.shape(x):
            raise ValueError(f"{name}(x, t) returned shape {jnp.shape(out)}; expected the shape of x, {jnp.shape(x)}")
        return out

    return score


def check_score_inputs(what: str, sde: SDE, score_fn, x: Array, x_hint: str = "") -> None:
    """The entry checks shared by the likelihood and the Fokker–Planck residual: a process with a
    Gaussian kernel, a callable score, and data x (batch, *data_dims), floating point and finite
    (when concrete); ``what`` names the computation in the kernel's error, ``x_hint`` adds to the dtype's."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a diffjax process (diffjax.processes); got {type(sde).__name__}")
    sde.require_gaussian(what)
    if not callable(score_fn):
        raise TypeError("score_fn must be callable score_fn(x, t)")
    if jnp.ndim(x) < 2:
        raise ValueError(f"x must have shape (batch, *data_dims) with at least one data dim; got {jnp.shape(x)}")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"x must be floating point{x_hint}; got {jnp.result_type(x)}")
    check_finite_input("x", x)
