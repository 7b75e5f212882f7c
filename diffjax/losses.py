"""Denoising score matching: the continuous-time loss and the discrete SMLD / DDPM losses.

Every factory returns a pure ``loss_fn(key, params, batch) -> (loss, metrics)``. ``batch`` is an
array x of shape (batch, ...) or a mapping with key ``"x"``; its other entries are passed to the
score model as conditioning keyword arguments (e.g. ``"y"`` for class labels). The score model is
``score_model(params, x, t, **cond)`` (see :func:`diffjax.score.make_score_model`).

Continuous DSM (Song et al. 2021, eq. 7), with x_t = a(t) x0 + sigma(t) z:

    L = E_{t ~ U(t_min, T)} E_{x0, z} [ lambda(t) / sigma(t)^2 * R || sigma(t) s(x_t, t) + z ||^2 ]

where R reduces over the data dimensions: the mean (``reduce_mean=True``, every loss's default) or
half the sum (the original score_sde's choice, which its configs keep). lambda = sigma^2 by default;
lambda = g^2 with ``likelihood_weighting`` (Song, Durkan, Murray & Ermon 2021), whose loss bounds the
negative log-likelihood.

Defaults follow the process: t_min is its ``t_min`` (1e-5 for VE, VP and sub-VP as the original;
EDM's sigma_min), and where time is the noise level (EDM, PFGM++) the DSM loss draws it
log-normally (``time_sampling="auto"``), since t uniform on [0.002, 80] would train almost only at
large noise.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from diffjax import fokker_planck
from diffjax._checks import check_finite_input, check_real
from diffjax.numerics.arrays import expand_to
from diffjax.processes import SDE, VESDE, VPSDE, NoiseLevelTime

Array = jax.Array
LossFn = Callable[[Array, Any, Any], tuple[Array, dict]]

__all__ = [
    "split_batch",
    "get_dsm_loss_fn",
    "get_discrete_dsm_loss_fn",
    "get_smld_loss_fn",
    "get_ddpm_loss_fn",
    "get_edm_loss_fn",
    "get_flow_matching_loss_fn",
    "TIME_SAMPLINGS",
    "DSM_TIME_SAMPLINGS",
]

DSM_TIME_SAMPLINGS = ("auto", "uniform", "log_normal")


def split_batch(batch: Any) -> tuple[Array, dict]:
    """(x, cond) from an array, or from a mapping with key "x" (other keys become conditioning)."""
    if isinstance(batch, Mapping):
        if "x" not in batch:
            raise ValueError(f"a batch mapping needs the data under key 'x'; got keys {sorted(batch)}")
        x, cond = batch["x"], {k: v for k, v in batch.items() if k != "x"}
    else:
        x, cond = batch, {}
    if jnp.ndim(x) < 1:
        raise ValueError("batch must be an array of shape (batch, ...) or a mapping with key 'x'")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"the loss takes floating-point data x of shape (batch, ...) in the model's range; got "
                        f"{jnp.result_type(x)} (map integer pixels to the data range first, e.g. data.levels_to_model)")
    check_finite_input("the batch's data x", x)
    return x, cond


def _reduce(sq: Array, reduce_mean: bool) -> Array:
    flat = jnp.reshape(sq, (sq.shape[0], -1))
    return jnp.mean(flat, axis=1) if reduce_mean else 0.5 * jnp.sum(flat, axis=1)


def _check(sde: SDE, score_model: Callable) -> None:
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a diffjax process (diffjax.processes); got {type(sde).__name__}")
    if not callable(score_model):
        raise TypeError("score_model must be callable score_model(params, x, t, **cond)")


def get_dsm_loss_fn(
    sde: SDE,
    score_model: Callable[..., Array],
    *,
    reduce_mean: bool = True,
    likelihood_weighting: bool = False,
    importance_sampling: bool = False,
    t_min: float | None = None,
    time_sampling: str = "auto",
    p_mean: float = -1.2,
    p_std: float = 1.2,
    rng_kwarg: str | None = None,
    fp_weight: float = 0.0,
    fp_time_weighting: str = "sigma4_g4",
    fp_num_examples: int = 0,
    fp_divergence: str = "rademacher",
) -> LossFn:
    """Continuous-time denoising score-matching loss for any process.

    Args:
      sde: the forward process.
      score_model: ``score_model(params, x, t, **cond) -> score``.
      reduce_mean: mean over data dimensions (True) or half their sum (False, the original's choice).
      likelihood_weighting: lambda(t) = g(t)^2 instead of sigma(t)^2.
      importance_sampling: with likelihood weighting, draw t from q(t) proportional to g^2/sigma^2
        on [t_min, T] and weight each term by Z/(T - t_min) (``SDE.sample_importance_time``). The
        expectation is unchanged; the variance of the estimate drops (most for VP and sub-VP).
      t_min: lower end of the time interval (default the process's ``t_min``: 1e-5 as in the original).
      time_sampling: "uniform" on [t_min, T]; "log_normal", the noise level sigma / a drawn as in EDM
        (ln ~ N(p_mean, p_std^2)), mapped to t and clipped to [t_min, T] (then the loss is
        E_that over those t, a different weighting of the same minimiser); "auto" (default):
        log-normal where time is the noise level (EDM, PFGM++), uniform for every other process.
      rng_kwarg: if set, a fresh PRNG key is passed to the model under this keyword (e.g. for dropout).
      fp_weight: weight w of the Fokker–Planck regulariser (Lai et al. 2023; Deveney et al. 2025),
        L = L_DSM + w E_t[ w_FP(t) R |R(x_t, t)|^2 ] on the same x_t (and t) as the DSM term, R the
        score residual of :mod:`diffjax.fokker_planck` reduced over data dims as the DSM term is.
        0 (the default) computes nothing: the loss is plain DSM, bit for bit.
      fp_time_weighting: w_FP(t), one of :data:`diffjax.fokker_planck.TIME_WEIGHTINGS`.
      fp_num_examples: the regulariser is third-order autodiff; compute it on the first this many
        examples of the batch only (0: all).
      fp_divergence: "rademacher" (two Rademacher probes, the unbiased <R_eps1, R_eps2>) or "exact".

    Returns ``loss_fn(key, params, batch) -> (loss, {"loss": loss})``; loss is the batch mean. With
    ``fp_weight > 0`` the metrics add ``"dsm"`` and ``"fp"`` (the weighted residual term before w).
    """
    _check(sde, score_model)
    sde.require_gaussian("the denoising score-matching loss (use get_edm_loss_fn)")
    if importance_sampling and not likelihood_weighting:
        raise ValueError(
            "importance_sampling=True draws t in proportion to g^2/sigma^2, which matches "
            "likelihood_weighting=True only; set both or neither"
        )
    t_min = sde.t_min if t_min is None else t_min
    check_real("get_dsm_loss_fn", "t_min", t_min)
    if not 0.0 <= t_min < sde.T:
        raise ValueError(f"t_min must lie in [0, T) = [0, {sde.T}); got {t_min}")
    if time_sampling not in DSM_TIME_SAMPLINGS:
        raise ValueError(f"unknown time_sampling {time_sampling!r}; expected one of {DSM_TIME_SAMPLINGS}")
    if time_sampling == "auto":
        time_sampling = "log_normal" if isinstance(sde, NoiseLevelTime) else "uniform"
    if time_sampling == "log_normal" and importance_sampling:
        raise ValueError("importance_sampling draws its own times; it takes time_sampling='uniform' (or 'auto' "
                         "on a process whose time is not the noise level)")
    if isinstance(fp_weight, bool) or not isinstance(fp_weight, (int, float)) or not fp_weight >= 0:
        raise ValueError(f"fp_weight must be a number >= 0; got {fp_weight!r}")
    if fp_time_weighting not in fokker_planck.TIME_WEIGHTINGS:
        raise ValueError(f"unknown fp_time_weighting {fp_time_weighting!r}; expected one of "
                         f"{fokker_planck.TIME_WEIGHTINGS}")
    if isinstance(fp_num_examples, bool) or not isinstance(fp_num_examples, int) or fp_num_examples < 0:
        raise ValueError(f"fp_num_examples must be an integer >= 0 (0: the whole batch); got {fp_num_examples!r}")
    if fp_divergence not in fokker_planck.DIVERGENCES:
        raise ValueError(f"unknown fp_divergence {fp_divergence!r}; expected one of {fokker_planck.DIVERGENCES}")

    def fp_term(key, params, x_t, t, cond):
        n = x_t.shape[0]
        m = min(n, fp_num_examples) if fp_num_examples else n
        sub = {k: v[:m] if jnp.ndim(v) >= 1 and jnp.shape(v)[0] == n else v for k, v in cond.items()}
        k_probe, k_model = jax.random.split(key)
        if rng_kwarg is not None:
            sub = {**sub, rng_kwarg: k_model}
        score_fn = lambda y, s: score_model(params, y, s, **sub)  # noqa: E731
        sq = fokker_planck.fp_residual_sq(sde, score_fn, x_t[:m], t[:m], key=k_probe, divergence=fp_divergence)
        d = math.prod(x_t.shape[1:])
        sq = sq / d if reduce_mean else 0.5 * sq
        return jnp.mean(fokker_planck.fp_time_weight(sde, t[:m], fp_time_weighting) * sq)

    def loss_fn(key: Array, params: Any, batch: Any) -> tuple[Array, dict]:
        x, cond = split_batch(batch)
        cond_fp = cond
        k_t, k_z, k_model = jax.random.split(key, 3)
        n = x.shape[0]
        if importance_sampling:
            t, z_norm = sde.sample_importance_time(k_t, (n,), t_min)
        elif time_sampling == "log_normal":
            sigma_hat = jnp.exp(p_mean + p_std * jax.random.normal(k_t, (n,), jnp.float32))
            t = jnp.clip(sde.t_from_noise_level(sigma_hat), t_min, sde.T)
        else:
            t = jax.random.uniform(k_t, (n,), jnp.float32, t_min, sde.T)
        z = jax.random.normal(k_z, x.shape, x.dtype)
        a, sigma = sde.marginal_coeffs(t)
        x_t = expand_to(a, x) * x + expand_to(sigma, x) * z
        if rng_kwarg is not None:
            cond = {**cond, rng_kwarg: k_model}
        score = score_model(params, x_t, t, **cond)
        per_example = _reduce((score * expand_to(sigma, x) + z) ** 2, reduce_mean)
        if likelihood_weighting:
            if importance_sampling:
                per_example = per_example * (z_norm / (sde.T - t_min))
            else:
                per_example = per_example * sde.likelihood_weight(t)
        loss = jnp.mean(per_example)
        if not fp_weight:
            return loss, {"loss": loss}
        fp = fp_term(jax.random.fold_in(key, 1), params, x_t, t, cond_fp)
        total = loss + fp_weight * fp
        return total, {"loss": total, "dsm": loss, "fp": fp}

    return loss_fn


def get_discrete_dsm_loss_fn(
    sde: SDE,
    score_model: Callable[..., Array],
    *,
    reduce_mean: bool = True,
    rng_kwarg: str | None = None,
) -> LossFn:
    """Discrete-time DSM over the process's chain: i ~ U{0..N-1}, x_i = a_i x0 + sigma_i z,

        L = E_i E [ R || sigma_i s(x_i, t_i) + z ||^2 ],   t_i = i T / (N - 1).

    For VE this is SMLD's loss (NCSN, sigma^2-weighted); for VP it is DDPM's eps-MSE (an eps model
    s = -eps/sigma_i turns the term into ||z - eps||^2). Use a score model built with
    ``continuous=False`` so the network reads the step index.
    """
    _check(sde, score_model)
    sde.require_gaussian("the discrete DSM loss")
    if float(sde.discrete_marginal_coeffs()[1][0]) <= 0:
        raise ValueError(f"{type(sde).__name__}'s discrete chain starts at sigma_0 = 0, where the discrete loss is "
                         "undefined; train it in continuous time (get_dsm_loss_fn)")

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


def get_edm_loss_fn(
    sde: SDE,
    score_model: Callable[..., Array],
    *,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    sigma_data: float = 0.5,
    reduce_mean: bool = True,
    rng_kwarg: str | None = None,
) -> LossFn:
    """EDM's loss (Karras et al. 2022, eq. 8 with Table 1's choices), for any process.

    The noise level of x / a is drawn log-normally, ln sigma_hat ~ N(p_mean, p_std^2), mapped to the
    process's time t(sigma_hat) (clipped to [0, T]; the weight uses the clipped level), and

        L = E [ w(sigma_hat) || D(x_t, t) - x0 ||^2 ],  w = (sigma_hat^2 + sd^2) / (sigma_hat sd)^2,

    with D = (x_t + sigma^2 s) / a the denoiser of the score model and x_t drawn by the process's
    kernel (``sde.perturb``: Gaussian, or PFGM++'s Student-t with r = sigma sqrt(D)). With EDM's
    preconditioning (``prediction="edm"``) the target of the network is unit-variance at every
    sigma. ``reduce_mean``: mean over data dimensions (True, EDM's scale up to a constant) or half their sum.
    """
    _check(sde, score_model)
    if not (p_std > 0 and sigma_data > 0):
        raise ValueError(f"the EDM loss needs p_std > 0 and sigma_data > 0; got p_std={p_std}, sigma_data={sigma_data}")

    def loss_fn(key: Array, params: Any, batch: Any) -> tuple[Array, dict]:
        x, cond = split_batch(batch)
        k_t, k_z, k_model = jax.random.split(key, 3)
        n = x.shape[0]
        sigma_hat = jnp.exp(p_mean + p_std * jax.random.normal(k_t, (n,), jnp.float32))
        t = jnp.clip(sde.t_from_noise_level(sigma_hat), 0.0, sde.T)
        t = jnp.maximum(t, jnp.finfo(jnp.float32).tiny)
        a, sigma = sde.marginal_coeffs(t)
        sigma_hat = sigma / a
        x_t = sde.perturb(k_z, x, t)
        if rng_kwarg is not None:
            cond = {**cond, rng_kwarg: k_model}
        score = score_model(params, x_t, t, **cond)
        denoised = (x_t + expand_to(sigma, x) ** 2 * score) / expand_to(a, x)
        weight = (sigma_hat**2 + sigma_data**2) / (sigma_hat * sigma_data) ** 2
        loss = jnp.mean(weight * _reduce((denoised - x) ** 2, reduce_mean))
        return loss, {"loss": loss}

    return loss_fn


TIME_SAMPLINGS = ("uniform", "logit_normal")


def get_flow_matching_loss_fn(
    sde: SDE,
    score_model: Callable[..., Array],
    *,
    time_sampling: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    t_min: float | None = None,
    reduce_mean: bool = True,
    rng_kwarg: str | None = None,
) -> LossFn:
    """Flow matching / the interpolants' velocity loss, for any Gaussian process:

        L = E_t E [ || u(x_t, t) - (a'(t) x0 + sigma'(t) z) ||^2 ],   x_t = a x0 + sigma z,

    where u = f x - g^2 s / 2 is the probability-flow velocity of the score model (what a network
    with ``prediction="velocity"`` outputs, exactly) and a', sigma' are time derivatives; its
    minimiser is u = E[a' x0 + sigma' z | x_t]. For rectified flow the target is z - x0 (the usual
    x1 - x0 with diffusion time's sign).

    ``time_sampling``: "uniform" on [t_min, T] or "logit_normal" (Esser et al. 2024:
    t = t_min + (T - t_min) sigmoid(m + s n), n ~ N(0, 1)). t_min defaults to the process's.
    """
    _check(sde, score_model)
    sde.require_gaussian("the flow-matching loss")
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"unknown time_sampling {time_sampling!r}; expected one of {TIME_SAMPLINGS}")
    t_min = sde.t_min if t_min is None else t_min
    check_real("get_flow_matching_loss_fn", "t_min", t_min)
    if not 0.0 < t_min < sde.T:
        raise ValueError(f"t_min must lie in (0, T) = (0, {sde.T}); got {t_min}")
    if not logit_std > 0:
        raise ValueError(f"logit_std must be > 0; got {logit_std}")

    def loss_fn(key: Array, params: Any, batch: Any) -> tuple[Array, dict]:
        x, cond = split_batch(batch)
        k_t, k_z, k_model = jax.random.split(key, 3)
        n = x.shape[0]
        if time_sampling == "uniform":
            u = jax.random.uniform(k_t, (n,), jnp.float32)
        else:
            u = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(k_t, (n,), jnp.float32))
        t = t_min + (sde.T - t_min) * u
        a, sigma, da, dsigma = sde.marginal_coeffs_and_derivatives(t)
        z = jax.random.normal(k_z, x.shape, x.dtype)
        x_t = expand_to(a, x) * x + expand_to(sigma, x) * z
        target = expand_to(da, x) * x + expand_to(dsigma, x) * z
        if rng_kwarg is not None:
            cond = {**cond, rng_kwarg: k_model}
        score = score_model(params, x_t, t, **cond)
        f, g = sde.drift_diffusion_coeffs(t)
        velocity = expand_to(f, x) * x_t - expand_to(0.5 * g**2, x) * score
        loss = jnp.mean(_reduce((velocity - target) ** 2, reduce_mean))
        return loss, {"loss": loss}

    return loss_fn
