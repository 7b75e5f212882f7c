"""Turning a network into a score function ``score_fn(x, t, **cond) -> array like x``.

A network is any ``apply_fn(params, x, labels, **cond)``: a Flax Linen ``module.apply``, an
Equinox model wrapped as ``lambda m, x, labels: jax.vmap(m)(x, labels)``, or a plain function.
It reads time through *labels* (the original score_sde's maps) and predicts one of

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
them (pure functions, for any sampler or loss).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from diffjax.sde import SDE, check_batch_time, expand_to

Array = jax.Array

PREDICTIONS = ("score", "eps", "x0", "v", "velocity", "edm")

__all__ = [
    "PREDICTIONS",
    "time_labels",
    "model_marginal_coeffs",
    "output_to_score",
    "score_to_output",
    "convert_prediction",
    "edm_preconditioning",
    "eps_from_score",
    "x0_from_score",
    "ScoreModel",
    "ModuleApply",
    "make_score_model",
    "make_score_fn",
    "score_fn_from_module",
]


def _is_flax_module(fn) -> bool:
    """A Flax Linen module (callable, but not as apply(params, ...)); told apart without importing Flax."""
    return any(c.__module__.startswith("flax.") and c.__name__ == "Module" for c in type(fn).__mro__)


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; expected one of {PREDICTIONS}")


def time_labels(sde: SDE, t: Array, continuous: bool = True) -> Array:
    """The network's time input for time ``t``: the process's own map (:meth:`SDE.time_labels`).

    - VP / sub-VP / cosine / interpolants, continuous: 999 t / T (float); EDM and PFGM++: log(t) / 4
    - discrete: the step index round(t (N - 1) / T) (int32)
    - VE, continuous: sigma(t) (float), NCSN++'s input
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"no default time labels for {type(sde).__name__}; pass label_fn=... to make_score_model")
    return sde.time_labels(jnp.asarray(t), continuous)


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
        return (ae * output - x) / se**2
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


def eps_from_score(score: Array, sigma: Array) -> Array:
    """eps_hat = -sigma s (shape of score); ``sigma`` has shape (batch,)."""
    return -expand_to(sigma, score) * score


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
    continuous: bool = True
    scale_by_sigma: bool = False
    label_fn: Optional[Callable[[Array], Array]] = None
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
            raise TypeError(f"sde must be a diffjax process (diffjax.sde.PROCESSES); got {type(self.sde).__name__}")
        if self.prediction in ("velocity", "edm") and not self.continuous:
            raise ValueError(f"prediction={self.prediction!r} needs continuous time (continuous=True)")
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0; got {self.sigma_data}")
        if self.label_fn is None:
            time_labels(self.sde, jnp.ones((1,)) * self.sde.sampling_eps, self.continuous)  # fail now, not at trace time

    def __call__(self, params: Any, x: Array, t: Array, **cond) -> Array:
        check_batch_time(x, t, T=self.sde.T)
        a, sigma = model_marginal_coeffs(self.sde, t, self.continuous)
        if self.prediction == "edm":
            # EDM's preconditioning: the network sees c_in x / a and c_noise (unless label_fn says otherwise)
            _, _, c_in, c_noise = edm_preconditioning(sigma / a, self.sigma_data)
            labels = self.label_fn(t) if self.label_fn is not None else c_noise
            output = self.apply_fn(params, expand_to(c_in / a, x).astype(x.dtype) * x, labels, **cond)
        else:
            labels = self.label_fn(t) if self.label_fn is not None else time_labels(self.sde, t, self.continuous)
            output = self.apply_fn(params, x, labels, **cond)
        if self.prediction == "score" and self.scale_by_sigma:
            return output / expand_to(sigma, x)
        return output_to_score(output, x, a, sigma, self.prediction, sde=self.sde, t=t, sigma_data=self.sigma_data)


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
    continuous: bool = True,
    scale_by_sigma: bool = False,
    label_fn: Callable[[Array], Array] | None = None,
    sigma_data: float = 0.5,
) -> ScoreModel:
    """A score model ``score_model(params, x, t, **cond) -> score`` from ``apply_fn(params, x, labels, **cond)``.

    Args:
      apply_fn: the network; called as ``apply_fn(params, x, labels, **cond)`` with ``x`` (batch, ...)
        and ``labels`` (batch,) from :func:`time_labels` (or ``label_fn(t)``). Must return an array
        of the shape of x.
      sde: the forward process.
      prediction: what the network predicts, one of ``PREDICTIONS``.
      continuous: continuous-time labels and marginals, or the discrete chain's.
      scale_by_sigma: with ``prediction="score"``, divide the output by sigma (NCSN++'s option).
      label_fn: overrides the label map, ``label_fn(t) -> labels``.
      sigma_data: the data's standard deviation in EDM's preconditioning (``prediction="edm"``).

    Returns a :class:`ScoreModel` (a value: equal when built alike).
    """
    return ScoreModel(apply_fn, sde, prediction, bool(continuous), bool(scale_by_sigma), label_fn, float(sigma_data))


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
    ``module.continuous`` (default True; the ``continuous`` argument overrides it), and calls
    ``module.apply(params, x, labels, **cond)``."""
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
        continuous=continuous,
        scale_by_sigma=bool(getattr(module, "scale_by_sigma", False)),
    )
