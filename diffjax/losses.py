"""Denoising score matching: the continuous-time loss and the discrete SMLD / DDPM losses.

Every factory returns a pure ``loss_fn(key, params, batch) -> (loss, metrics)``. ``batch`` is an
array x of shape (batch, ...) or a mapping with key ``"x"``; its other entries are passed to the
score model as conditioning keyword arguments (e.g. ``"y"`` for class labels). The score model is
``score_model(params, x, t, **cond)`` (see :func:`diffjax.score.make_score_model`).

Continuous DSM (Song et al. 2021, eq. 7), with x_t = a(t) x0 + sigma(t) z:

    L = E_{t ~ U(eps, T)} E_{x0, z} [ lambda(t) / sigma(t)^2 * R || sigma(t) s(x_t, t) + z ||^2 ]

where R reduces over the data dimensions: the mean (``reduce_mean=True``) or half the sum (the
original's default). lambda = sigma^2 by default; lambda = g^2 with ``likelihood_weighting``
(Song, Durkan, Murray & Ermon 2021), whose loss bounds the negative log-likelihood.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from diffjax.sde import SDE, VESDE, VPSDE, expand_to

Array = jax.Array
LossFn = Callable[[Array, Any, Any], tuple[Array, dict]]

__all__ = [
    "split_batch",
    "get_dsm_loss_fn",
    "get_discrete_dsm_loss_fn",
    "get_smld_loss_fn",
    "get_ddpm_loss_fn",
]


def split_batch(batch: Any) -> tuple[Array, dict]:
    """(x, cond) from an array, or from a mapping with key "x" (other keys become conditioning)."""
    if isinstance(batch, Mapping):
        if "x" not in batch:
            raise ValueError(f"a batch mapping needs the data under key 'x'; got keys {sorted(batch)}")
        return batch["x"], {k: v for k, v in batch.items() if k != "x"}
    if jnp.ndim(batch) < 1:
        raise ValueError("batch must be an array of shape (batch, ...) or a mapping with key 'x'")
    return batch, {}


def _reduce(sq: Array, reduce_mean: bool) -> Array:
    flat = jnp.reshape(sq, (sq.shape[0], -1))
    return jnp.mean(flat, axis=1) if reduce_mean else 0.5 * jnp.sum(flat, axis=1)


def _check(sde: SDE, score_model: Callable) -> None:
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a diffjax process (VESDE, VPSDE, SubVPSDE); got {type(sde).__name__}")
    if not callable(score_model):
        raise TypeError("score_model must be callable score_model(params, x, t, **cond)")


def get_dsm_loss_fn(
    sde: SDE,
    score_model: Callable[..., Array],
    *,
    reduce_mean: bool = False,
    likelihood_weighting: bool = False,
    importance_sampling: bool = False,
    eps: float = 1e-5,
    rng_kwarg: str | None = None,
) -> LossFn:
    """Continuous-time denoising score-matching loss for any process.

    Args:
      sde: the forward process.
      score_model: ``score_model(params, x, t, **cond) -> score``.
      reduce_mean: mean over data dimensions (True) or half their sum (False, the original's default).
      likelihood_weighting: lambda(t) = g(t)^2 instead of sigma(t)^2.
      importance_sampling: with likelihood weighting, draw t from q(t) proportional to g^2/sigma^2
        on [eps, T] and weight each term by Z/(T - eps) (``SDE.sample_importance_time``). The
        expectation is unchanged; the variance of the estimate drops (most for VP and sub-VP).
      eps: lower end of the time interval (1e-5 as in the original).
      rng_kwarg: if set, a fresh PRNG key is passed to the model under this keyword (e.g. for dropout).

    Returns ``loss_fn(key, params, batch) -> (loss, {"loss": loss})``; loss is the batch mean.
    """
    _check(sde, score_model)
    if importance_sampling and not likelihood_weighting:
        raise ValueError(
            "importance_sampling=True draws t in proportion to g^2/sigma^2, which matches "
            "likelihood_weighting=True only; set both or neither"
        )
    if not 0.0 <= eps < sde.T:
        raise ValueError(f"eps must lie in [0, T) = [0, {sde.T}); got {eps}")

    def loss_fn(key: Array, params: Any, batch: Any) -> tuple[Array, dict]:
        x, cond = split_batch(batch)
        k_t, k_z, k_model = jax.random.split(key, 3)
        n = x.shape[0]
        if importance_sampling:
            t, z_norm = sde.sample_importance_time(k_t, (n,), eps)
        else:
            t = jax.random.uniform(k_t, (n,), jnp.float32, eps, sde.T)
        z = jax.random.normal(k_z, x.shape, x.dtype)
        a, sigma = sde.marginal_coeffs(t)
        x_t = expand_to(a, x) * x + expand_to(sigma, x) * z
        if rng_kwarg is not None:
            cond = {**cond, rng_kwarg: k_model}
        score = score_model(params, x_t, t, **cond)
        per_example = _reduce((score * expand_to(sigma, x) + z) ** 2, reduce_mean)
        if likelihood_weighting:
            if importance_sampling:
                per_example = per_example * (z_norm / (sde.T - eps))
            else:
                per_example = per_example * sde.likelihood_weight(t)
        loss = jnp.mean(per_example)
        return loss, {"loss": loss}

    return loss_fn


def get_discrete_dsm_loss_fn(
    sde: SDE,
    score_model: Callable[..., Array],
    *,
    reduce_mean: bool = False,
    rng_kwarg: str | None = None,
) -> LossFn:
    """Discrete-time DSM over the process's chain: i ~ U{0..N-1}, x_i = a_i x0 + sigma_i z,

        L = E_i E [ R || sigma_i s(x_i, t_i) + z ||^2 ],   t_i = i T / (N - 1).

    For VE this is SMLD's loss (NCSN, sigma^2-weighted); for VP it is DDPM's eps-MSE (an eps model
    s = -eps/sigma_i turns the term into ||z - eps||^2). Use a score model built with
    ``continuous=False`` so the network reads the step index.
    """
    _check(sde, score_model)

    def loss_fn(key: Array, params: Any, batch: Any) -> tuple[Array, dict]:
        x, cond = split_batch(batch)
        k_i, k_z, k_model = jax.random.split(key, 3)
        n = x.shape[0]
        idx = jax.random.randint(k_i, (n,), 0, sde.N)
        t = sde.discrete_timesteps[idx]
        a_all, s_all = sde.discrete_marginal_coeffs()
        a, sigma = a_all[idx], s_all[idx]
        z = jax.random.normal(k_z, x.shape, x.dtype)
        x_t = expand_to(a, x) * x + expand_to(sigma, x) * z
        if rng_kwarg is not None:
            cond = {**cond, rng_kwarg: k_model}
        score = score_model(params, x_t, t, **cond)
        loss = jnp.mean(_reduce((score * expand_to(sigma, x) + z) ** 2, reduce_mean))
        return loss, {"loss": loss}

    return loss_fn


def get_smld_loss_fn(sde: VESDE, score_model: Callable[..., Array], **kwargs) -> LossFn:
    """SMLD (NCSN) loss: :func:`get_discrete_dsm_loss_fn` on a VESDE's noise levels."""
    if not isinstance(sde, VESDE):
        raise TypeError(f"the SMLD loss needs a VESDE; got {type(sde).__name__}")
    return get_discrete_dsm_loss_fn(sde, score_model, **kwargs)


def get_ddpm_loss_fn(sde: VPSDE, score_model: Callable[..., Array], **kwargs) -> LossFn:
    """DDPM loss: :func:`get_discrete_dsm_loss_fn` on a VPSDE's DDPM chain."""
    if not isinstance(sde, VPSDE):
        raise TypeError(f"the DDPM loss needs a VPSDE; got {type(sde).__name__}")
    return get_discrete_dsm_loss_fn(sde, score_model, **kwargs)
