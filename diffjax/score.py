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

``(a, sigma)`` are the process's marginal coefficients at t (continuous time) or the discrete
chain's at the nearest step (discrete time).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from diffjax.sde import SDE, VESDE, SubVPSDE, VPSDE, check_batch_time, expand_to

Array = jax.Array

PREDICTIONS = ("score", "eps", "x0", "v")

__all__ = [
    "PREDICTIONS",
    "time_labels",
    "model_marginal_coeffs",
    "output_to_score",
    "eps_from_score",
    "x0_from_score",
    "ScoreModel",
    "ModuleApply",
    "make_score_model",
    "make_score_fn",
    "score_fn_from_module",
]


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; expected one of {PREDICTIONS}")


def time_labels(sde: SDE, t: Array, continuous: bool = True) -> Array:
    """The network's time input for time ``t`` (the original score_sde's label maps).

    - VP / sub-VP, continuous: 999 t (float)
    - VP / sub-VP, discrete:   round(t (N - 1)) (int32), the DDPM step index
    - VE, continuous:          sigma(t) (float)
    - VE, discrete:            the index (int32) of the discrete sigma nearest to sigma(t) in log
                               scale, i.e. round(t (N - 1)) into the increasing ``discrete_sigmas``
    """
    t = jnp.asarray(t)
    if isinstance(sde, VESDE):
        return sde.sigma(t) if continuous else sde.timestep_index(t)
    if isinstance(sde, (VPSDE, SubVPSDE)):
        return t * 999.0 if continuous else sde.timestep_index(t)
    raise TypeError(
        f"no default time labels for process {type(sde).__name__}; pass label_fn=... to make_score_model"
    )


def model_marginal_coeffs(sde: SDE, t: Array, continuous: bool = True) -> tuple[Array, Array]:
    """(a, sigma) the network output is converted with: the marginal at t, or the discrete chain's."""
    if continuous:
        return sde.marginal_coeffs(t)
    a, s = sde.discrete_marginal_coeffs()
    i = sde.timestep_index(t)
    return a[i], s[i]


def output_to_score(output: Array, x: Array, a: Array, sigma: Array, prediction: str) -> Array:
    """Convert a network output to a score. ``a``, ``sigma``: shape (batch,); ``x``, ``output``: (batch, ...)."""
    _check_prediction(prediction)
    if output.shape != x.shape:
        raise ValueError(f"network output has shape {output.shape}; expected the shape of x, {x.shape}")
    a, sigma = expand_to(a, x), expand_to(sigma, x)
    if prediction == "score":
        return output
    if prediction == "eps":
        return -output / sigma
    if prediction == "x0":
        return (a * output - x) / sigma**2
    r = jnp.sqrt(a**2 + sigma**2)
    eps = (sigma / r) * (x / r) + (a / r) * output
    return -eps / sigma


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

    def __post_init__(self):
        _check_prediction(self.prediction)
        if self.scale_by_sigma and self.prediction != "score":
            raise ValueError(f"scale_by_sigma applies to prediction='score' only; got prediction={self.prediction!r}")
        if not callable(self.apply_fn):
            raise TypeError(f"apply_fn must be callable apply_fn(params, x, labels); got {type(self.apply_fn).__name__}")
        if not isinstance(self.sde, SDE):
            raise TypeError(f"sde must be a diffjax process (VESDE, VPSDE, SubVPSDE); got {type(self.sde).__name__}")
        if self.label_fn is None:
            time_labels(self.sde, jnp.zeros((1,)), self.continuous)  # fail now, not at trace time

    def __call__(self, params: Any, x: Array, t: Array, **cond) -> Array:
        check_batch_time(x, t)
        labels = self.label_fn(t) if self.label_fn is not None else time_labels(self.sde, t, self.continuous)
        output = self.apply_fn(params, x, labels, **cond)
        a, sigma = model_marginal_coeffs(self.sde, t, self.continuous)
        if self.prediction == "score" and self.scale_by_sigma:
            return output / expand_to(sigma, x)
        return output_to_score(output, x, a, sigma, self.prediction)


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

    Returns a :class:`ScoreModel` (a value: equal when built alike).
    """
    return ScoreModel(apply_fn, sde, prediction, bool(continuous), bool(scale_by_sigma), label_fn)


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
