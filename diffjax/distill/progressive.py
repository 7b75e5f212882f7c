"""Progressive distillation (Salimans & Ho, ICLR 2022): a student of N DDIM steps is trained so that each
of its steps lands where two DDIM steps of its teacher (2N steps) land; the student then becomes the
teacher, and the number of steps halves again.

**Grid.** The N-step grid is uniform in log-SNR from T to the process's t_min, and its last step goes
to the data itself (sigma = 0: the output is the denoiser's estimate), so N steps cost exactly N
evaluations. The 2N-step teacher grid is the same grid with the log-SNR midpoints added, so the
halvings nest.

**Target.** For a student interval t -> s and the teacher's midpoint u, with z_t = a_t x + sigma_t eps,
the teacher takes DDIM steps t -> u -> s to z_s^T, and the student's x-target is the denoised
estimate whose single DDIM step from z_t reaches z_s^T:

    x~ = (z_s^T - (sigma_s / sigma_t) z_t) / (a_s - (sigma_s / sigma_t) a_t)         (x~ = z_s^T when sigma_s = 0)

Loss: w(t) ||D_theta(z_t, t) - x~||^2 with the paper's "SNR truncation" w = max(1, a_t^2 / sigma_t^2).
DDIM: z_s = a_s D + sigma_s (z_t - a_t D) / sigma_t.
"""

from __future__ import annotations

import dataclasses

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._jit import filter_jit
from diffjax._checks import check_int
from diffjax.distill.common import Denoiser, score_denoiser
from diffjax.losses import split_batch
from diffjax.numerics.arrays import expand_to
from diffjax.processes import SDE
from diffjax.results import SampleResult, no_nonfinite, raise_if_nonfinite, update_nonfinite

Array = jax.Array

__all__ = ["progressive_timesteps", "ddim_to", "progressive_loss_fn", "ddim_student_sample", "DDIMStudentSampler"]


def progressive_timesteps(sde: SDE, num_steps: int) -> np.ndarray:
    """The N-step grid: N + 1 times uniform in log-SNR from T to t_min, with the last replaced by 0,
    which here stands for the data (sigma = 0). Shape (N + 1,), float64."""
    check_int("progressive_timesteps", "num_steps", num_steps, lo=1)
    lam_hi = float(sde.log_snr(jnp.asarray(sde.t_min, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)))
    lam_lo = float(sde.log_snr(jnp.asarray(sde.T, jnp.float32)))
    lams = np.linspace(lam_lo, lam_hi, num_steps + 1)
    ts = np.asarray(sde.t_from_log_snr(jnp.asarray(lams, jnp.float32)), np.float64)
    ts[0] = float(sde.T)
    ts[-1] = 0.0
    return ts


def _midpoints(sde: SDE, ts: Array) -> Array:
    """Log-SNR midpoints of a progressive grid's intervals (the last one's between t and t_min)."""
    lo = jnp.maximum(ts[1:], sde.t_min)
    lam = 0.5 * (sde.log_snr(ts[:-1]) + sde.log_snr(lo))
    return sde.t_from_log_snr(lam)


def _coeffs(sde: SDE, t: Array):
    a, s = sde.marginal_coeffs(jnp.maximum(t, 1e-30))
    data = t <= 0
    return jnp.where(data, 1.0, a), jnp.where(data, 0.0, s)


def ddim_to(sde: SDE, d: Array, x: Array, t: Array, s: Array) -> Array:
    """One DDIM step from x at t to s given the denoised estimate d: a_s d + sigma_s (x - a_t d) / sigma_t;
    s <= 0 stands for the data (the step returns d). t, s: (batch,)."""
    a_t, s_t = sde.marginal_coeffs(t)
    a_s, s_s = _coeffs(sde, s)
    a_t, s_t, a_s, s_s = (expand_to(v, x) for v in (a_t, s_t, a_s, s_s))
    return (a_s * d + s_s * (x - a_t * d) / s_t).astype(x.dtype)


def progressive_loss_fn(sde: SDE, student: Denoiser, teacher: Callable[[Array, Array], Array], num_steps: int, *,
                        rng_kwarg: Optional[str] = None) -> Callable:
    """``loss_fn(key, params, batch) -> (loss, metrics)`` training an N-step (``num_steps``) DDIM
    student ``student(params, x, t, **cond)`` (a denoiser) on the 2N-step teacher ``teacher(x, t)``
    (a denoiser: the original model's, or the previous student's with its params bound), as the
    module docstring gives. An interval of the grid is drawn uniformly per example."""
    ts = jnp.asarray(progressive_timesteps(sde, num_steps), jnp.float32)
    mids = _midpoints(sde, ts)

    def loss_fn(key, params, batch):
        x0, cond = split_batch(batch)
        n = x0.shape[0]
        k_i, k_z, k_model = jax.random.split(key, 3)
        if rng_kwarg is not None:
            cond = {**cond, rng_kwarg: k_model}
        i = jax.random.randint(k_i, (n,), 0, num_steps)
        t, u, s = ts[i], mids[i], ts[i + 1]
        a_t, s_t = sde.marginal_coeffs(t)
        z_t = expand_to(a_t, x0) * x0 + expand_to(s_t, x0) * jax.random.normal(k_z, x0.shape, x0.dtype)
        z_u = ddim_to(sde, teacher(z_t, t), z_t, t, u)
        z_s = ddim_to(sde, teacher(z_u, u), z_u, u, s)
        a_s, s_s = _coeffs(sde, s)
        ratio = expand_to(s_s / s_t, x0)
        x_target = (z_s - ratio * z_t) / (expand_to(a_s, x0) - ratio * expand_to(a_t, x0))
        x_target = jax.lax.stop_gradient(x_target)
        d = student(params, z_t, t, **cond)
        w = jnp.maximum(1.0, (a_t / s_t) ** 2)
        per_example = w * jnp.mean(jnp.square(d - x_target).reshape(n, -1), axis=1)
        loss = jnp.mean(per_example)
        return loss, {"loss": loss}

    return loss_fn


def _ddim_run(sde, denoise, x, ts):
    n = x.shape[0]

    def body(carry, inp):
        x, bad = carry
        k, t, s = inp
        tt, ss = jnp.full((n,), t, x.dtype), jnp.full((n,), s, x.dtype)
        x = ddim_to(sde, denoise(x, tt), x, tt, ss)
        return (x, update_nonfinite(bad, k, x)), None

    (x, bad), _ = jax.lax.scan(body, (x, no_nonfinite(n)), (jnp.arange(ts.shape[0] - 1), ts[:-1], ts[1:]))
    return x, bad


_ddim_run_jit = filter_jit(_ddim_run)


def ddim_student_sample(sde: SDE, denoise: Callable[[Array, Array], Array], x_init: Array, num_steps: int, *,
                        timesteps: Optional[Array] = None, check_finite: bool = True) -> SampleResult:
    """N DDIM steps of a progressive student ``denoise(x, t)`` over :func:`progressive_timesteps`
    (or ``timesteps``, N + 1 of them, the last 0 for the data): exactly N evaluations, no noise."""
    ts = progressive_timesteps(sde, num_steps) if timesteps is None else timesteps
    ts = jnp.asarray(ts, x_init.dtype)
    if ts.shape != (num_steps + 1,):
        raise ValueError(f"{num_steps} DDIM steps take {num_steps + 1} times; got {ts.shape}")
    x, bad = _ddim_run_jit(sde, denoise, x_init, ts)
    result = SampleResult(x, jnp.full((x.shape[0],), num_steps, jnp.int32), bad, None)
    raise_if_nonfinite(result, "ddim_student_sample", check_finite, steps=ts)
    return result


@dataclasses.dataclass(frozen=True)
class DDIMStudentSampler:
    """A progressive student's N-step DDIM sampler as a value: ``sampler(score_fn, key, x_init) ->
    SampleResult`` (the key is unused: no noise)."""

    sde: SDE
    timesteps: tuple   # progressive_timesteps(sde, N), computed outside any jit

    @property
    def nfe(self) -> int:
        return len(self.timesteps) - 1

    def __call__(self, score_fn, key, x_init, *, check_finite: bool = True) -> SampleResult:
        del key
        return ddim_student_sample(self.sde, score_denoiser(self.sde, score_fn), x_init, self.nfe,
                                   timesteps=jnp.asarray(self.timesteps, jnp.float32), check_finite=check_finite)
