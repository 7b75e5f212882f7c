"""Consistency models: distillation (CD) and training (CT) in ECT's continuous-time form, and
multistep consistency sampling.

A consistency function maps any point x_t of a probability-flow trajectory to its end x_0. Here it is
the student network's denoiser f(x, t) = D_theta(x, t) (:func:`diffjax.distill.common.network_denoiser`),
so a student starts as the diffusion model it is tuned from and the boundary condition holds by
construction: as sigma -> 0 every parameterisation gives D -> x / a (ECT, Geng et al. 2024, trains
with the diffusion model's own preconditioning the same way).

**Loss** (ECT's, with iCT's metric; noise levels sigma^ = sigma / a):

    sigma^_t ~ LogNormal(p_mean, p_std),
    sigma^_r = max(0, sigma^_t (1 - q^-(stage + 1) (1 + k sigmoid(-b sigma^_t)))),  stage = step // stage_steps,
    L = d(f_theta(x_t, t), sg f_theta(x_r, r)) / (sigma^_t - sigma^_r),   d(u, v) = sqrt(||u - v||^2 + c^2) - c,

with x_t = a_t x_0 + sigma_t z. The pair (t, r) closes in as training goes on (the discretisation
curriculum: r / t -> 1 with the stage), so early training is denoising and later training enforces
self-consistency. The target point x_r is

- **consistency training** (``teacher=None``): x_r = a_r x_0 + sigma_r z with the *same* z (an
  unbiased one-sample estimate of the flow, iCT/ECT);
- **consistency distillation** (``teacher`` a denoiser): one Heun step of the teacher's probability
  flow from x_t to r (CD, Song et al. 2023).

Where sigma^_r falls below the process's smallest noise level the target is the data (CT) or the
teacher's denoised estimate (CD). The target network is the student itself under stop-gradient
(iCT: no EMA teacher) with the same dropout key.

**Sampling** (Song et al. 2023, Alg. 1): x_0 = f(x_T, T); for each further time tau: x_0 = f(a_tau x_0 +
sigma_tau z, tau). One network evaluation per step.
"""

from __future__ import annotations

import dataclasses

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._jit import filter_jit
from diffjax._checks import check_int, check_real
from diffjax.distill.common import Denoiser, default_huber_c, score_denoiser, heun_pf_step, lognormal_noise_levels, pseudo_huber
from diffjax.losses import split_batch
from diffjax.numerics.arrays import expand_to
from diffjax.numerics.random import normal_like, per_example_keys
from diffjax.processes import SDE
from diffjax.results import SampleResult, no_nonfinite, raise_if_nonfinite, update_nonfinite
from diffjax.samplers.teleport import GaussianFit, gaussian_teleport

Array = jax.Array

__all__ = ["ect_r", "consistency_loss_fn", "consistency_timesteps", "consistency_sample", "ConsistencySampler"]


def ect_r(sigma_t: Array, stage: Array, q: float = 2.0, k: float = 8.0, b: float = 1.0) -> Array:
    """ECT's mapping function: sigma^_r = max(0, sigma^_t (1 - q^-(stage+1) (1 + k sigmoid(-b sigma^_t)))).
    0 <= r <= t, and r / t -> 1 as the stage grows (stage 0 with q = 2, k = 8: r = 0 below ln 7)."""
    stage = jnp.asarray(stage, jnp.float32)
    ratio = 1.0 - q ** (-(stage + 1.0)) * (1.0 + k * jax.nn.sigmoid(-b * sigma_t))
    return jnp.maximum(sigma_t * ratio, 0.0)


def consistency_loss_fn(sde: SDE, student: Denoiser, *, teacher: Optional[Callable[[Array, Array], Array]] = None,
                        teacher_step: Optional[Callable[[Array, Array, Array], Array]] = None, p_mean: float = -1.1, p_std: float = 2.0, q: float = 2.0, k: float = 8.0, b: float = 1.0,
                        stage_steps: int = 1000, huber_c: Optional[float] = None,
                        rng_kwarg: Optional[str] = None) -> Callable:
    """``loss_fn(key, params, batch, step) -> (loss, metrics)``: consistency training (``teacher`` None)
    or distillation (``teacher(x, t)`` a denoiser, e.g. :func:`~diffjax.distill.common.score_denoiser`
    of the teacher's score, stepped by Heun; or ``teacher_step(x_t, t, r) -> x_r`` any map along the
    teacher's flow, e.g. an exact one, where r = 0 stands for the data), as the module docstring gives.

    ``student(params, x, t, **cond)`` is the student's denoiser; ``stage_steps`` training steps per
    curriculum stage (ECT: 25k at batch 128 on CIFAR-10, 10k in its 1-hour recipe with q = 256);
    ``huber_c`` None is iCT's 0.00054 sqrt(d), 0 the plain norm. ``rng_kwarg``: the network's dropout
    key argument (the same key for both evaluations). Metrics: "loss", "stage", "r_over_t" (mean
    sigma^_r / sigma^_t of the batch). Use with ``make_train_step(..., loss_takes_step=True)``.
    """
    check_int("consistency_loss_fn", "stage_steps", stage_steps, lo=1)
    check_real("consistency_loss_fn", "q", q, lo=1.0, lo_open=True)
    check_real("consistency_loss_fn", "p_std", p_std, lo=0.0, lo_open=True)
    if teacher is not None and teacher_step is not None:
        raise ValueError("consistency_loss_fn takes a teacher denoiser or a teacher_step, not both")
    sigma_min = float(sde.noise_level(jnp.asarray(sde.t_min, jnp.float32)))

    def loss_fn(key, params, batch, step=0):
        x0, cond = split_batch(batch)
        n = x0.shape[0]
        c = default_huber_c(int(np.prod(x0.shape[1:]))) if huber_c is None else float(huber_c)
        k_sigma, k_z, k_model = jax.random.split(key, 3)
        if rng_kwarg is not None:
            cond = {**cond, rng_kwarg: k_model}
        stage = jnp.asarray(step, jnp.int32) // stage_steps
        sh_t = lognormal_noise_levels(k_sigma, n, sde, p_mean, p_std)
        sh_r = ect_r(sh_t, stage, q, k, b)
        at_data = sh_r < sigma_min
        t = sde.t_from_noise_level(sh_t)
        r = jnp.where(at_data, 0.0, sde.t_from_noise_level(jnp.maximum(sh_r, sigma_min)))
        a_t, s_t = sde.marginal_coeffs(t)
        z = jax.random.normal(k_z, x0.shape, x0.dtype)
        x_t = expand_to(a_t, x0) * x0 + expand_to(s_t, x0) * z
        f_t = student(params, x_t, t, **cond)
        r_safe = jnp.where(at_data, t, r)
        if teacher is None and teacher_step is None:
            a_r, s_r = sde.marginal_coeffs(r_safe)
            x_r = expand_to(a_r, x0) * x0 + expand_to(s_r, x0) * z
            at_r = x0
        else:
            step_fn = teacher_step or (lambda x, t_, r_: heun_pf_step(teacher, sde, x, t_, r_))
            x_r = step_fn(x_t, t, r)        # r = 0 where the target is the data: the teacher's end point
            at_r = x_r
        f_r = student(jax.lax.stop_gradient(params), x_r, r_safe, **cond)
        target = jax.lax.stop_gradient(jnp.where(expand_to(at_data, x0), at_r, f_r))
        weight = 1.0 / jnp.maximum(sh_t - jnp.where(at_data, 0.0, sh_r), 1e-6)
        per_example = pseudo_huber(f_t - target, c) * weight
        loss = jnp.mean(per_example)
        return loss, {"loss": loss, "stage": stage.astype(jnp.float32), "r_over_t": jnp.mean(sh_r / sh_t)}

    return loss_fn


def consistency_timesteps(sde: SDE, num_steps: int, sigmas: Optional[Sequence[float]] = None,
                          rho: float = 7.0, t_start: Optional[float] = None) -> np.ndarray:
    """The times of an n-step consistency sampler: ``t_start`` (default T), then n - 1 noise levels
    sigma^ (given, decreasing, or by default the inner points of Karras' rho-grid of n + 1 points
    between the noise level at t_start and the process's smallest sigma^), as times of ``sde``.
    Shape (n,). A t_start below T starts from the Gaussian flow's teleport (:class:`ConsistencySampler`)."""
    check_int("consistency_timesteps", "num_steps", num_steps, lo=1)
    t_start = float(sde.T) if t_start is None else float(t_start)
    if not float(sde.t_min) < t_start <= float(sde.T):
        raise ValueError(f"t_start must lie in (t_min, T] = ({float(sde.t_min):g}, {float(sde.T):g}]; got {t_start}")
    hi = float(sde.noise_level(jnp.asarray(t_start, jnp.float32)))
    lo = float(sde.noise_level(jnp.asarray(sde.t_min, jnp.float32)))
    if sigmas is None:
        u = np.linspace(0.0, 1.0, num_steps + 1)[1:-1]
        sigmas = (hi ** (1 / rho) + u * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    sigmas = np.asarray(sigmas, np.float64).reshape(-1)
    if len(sigmas) != num_steps - 1:
        raise ValueError(f"an {num_steps}-step consistency sampler takes {num_steps - 1} intermediate noise levels; "
                         f"got {len(sigmas)}")
    if np.any(np.diff(sigmas) >= 0) or np.any(sigmas <= lo) or np.any(sigmas >= hi):
        raise ValueError(f"intermediate noise levels must decrease strictly inside ({lo:.4g}, {hi:.4g}); got "
                         f"{sigmas.tolist()}")
    inner = np.asarray(sde.t_from_noise_level(jnp.asarray(sigmas, jnp.float32)), np.float64)
    return np.concatenate([[t_start], inner])


def _consistency_run(sde, f, keys, x_init, ts):
    x0 = f(x_init, jnp.full((x_init.shape[0],), ts[0], x_init.dtype))
    bad = update_nonfinite(no_nonfinite(x0.shape[0]), 0, x0)

    def body(carry, inp):
        x0, bad = carry
        i, t = inp
        a, s = sde.marginal_coeffs(jnp.full((x0.shape[0],), t, x0.dtype))
        z = normal_like(jax.vmap(lambda k: jax.random.fold_in(k, i))(keys), x0)
        x0 = f(expand_to(a, x0) * x0 + expand_to(s, x0) * z, jnp.full((x0.shape[0],), t, x0.dtype))
        return (x0, update_nonfinite(bad, i, x0)), None

    if len(ts) > 1:
        (x0, bad), _ = jax.lax.scan(body, (x0, bad), (jnp.arange(1, len(ts)), ts[1:]))
    return x0, bad


_consistency_run_jit = filter_jit(_consistency_run)


def consistency_sample(sde: SDE, denoise: Callable[[Array, Array], Array], key: Array, x_init: Array,
                       timesteps: Array, *, check_finite: bool = True) -> SampleResult:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1): x_0 = f(x_T, T), then for each
    further time tau of ``timesteps`` (:func:`consistency_timesteps`; timesteps[0] = T)
    x_0 = f(a_tau x_0 + sigma_tau z, tau). ``denoise(x, t)`` is the consistency function (a pytree such
    as ``Partial(student, params)`` keys the compile by value); ``x_init`` (batch, ...) from the prior;
    one key, or one per example. Returns a :class:`SampleResult` with nfe = len(timesteps)."""
    ts = jnp.asarray(timesteps, x_init.dtype).reshape(-1)
    if ts.shape[0] < 1:
        raise ValueError("consistency_sample needs at least one time (T)")
    keys = per_example_keys(key, x_init.shape[0])
    x, bad = _consistency_run_jit(sde, denoise, keys, x_init, ts)
    result = SampleResult(x, jnp.full((x.shape[0],), ts.shape[0], jnp.int32), bad, None)
    raise_if_nonfinite(result, "consistency_sample", check_finite, steps=ts)
    return result


@dataclasses.dataclass(frozen=True)
class ConsistencySampler:
    """A consistency student's n-step sampler as a value, called like the other samplers:
    ``sampler(score_fn, key, x_init) -> SampleResult``; the student's consistency function is the
    denoiser of its score (Tweedie), so a student run samples through the same code as any run.

    With ``timesteps[0] < T`` and ``fit`` (the data's :class:`~diffjax.samplers.GaussianFit`) the prior
    samples are first carried to timesteps[0] by the exact probability flow of the fitted Gaussian
    (teleportation, no network evaluation): the student's first evaluation is then where it was
    trained well. On the digits (a 600-step student) one step from T scores digits-FID 2.79, from
    sigma^ = 5 0.40."""

    sde: SDE
    timesteps: tuple
    fit: Optional[GaussianFit] = None

    def __post_init__(self):
        if self.timesteps[0] < float(self.sde.T) and self.fit is None:
            raise ValueError(f"a consistency sampler that starts at t = {self.timesteps[0]:g} < T needs the data's "
                             "Gaussian fit (fit=) to teleport its prior samples there")

    @property
    def nfe(self) -> int:
        return len(self.timesteps)

    def __call__(self, score_fn, key, x_init, *, check_finite: bool = True) -> SampleResult:
        if self.timesteps[0] < float(self.sde.T):  # the exact Gaussian flow from T: no evaluation
            x_init = gaussian_teleport(self.sde, x_init, self.sde.T, self.timesteps[0], self.fit)
        return consistency_sample(self.sde, score_denoiser(self.sde, score_fn), key, x_init,
                                  jnp.asarray(self.timesteps, jnp.float32), check_finite=check_finite)
