"""MeanFlow (Geng, Deng, Bai, Kolter & He 2025): a flow map learned directly, as the *average* velocity
over an interval, trained from data with no teacher and no curriculum.

Chosen over shortcut models because its target is an exact identity of the flow (no bootstrap
through the model's own two half steps, no EMA target, no grid of step sizes), one Jacobian-vector
product that JAX gives at about the cost of a second forward pass, and it holds for any interval
(r, t) rather than the powers of two shortcut models train on; the two are the same object with
time reversed (s*(x, tau, d) = -u*(x, 1 - tau - d, 1 - tau)).

Rectified-flow convention (data at t = 0): z_t = (1 - t) x + t eps, v = eps - x.

    u(z_t, r, t) = 1 / (t - r) int_r^t v(z_tau, tau) dtau,       z_r = z_t - (t - r) u(z_t, r, t)

Differentiating (t - r) u = int_r^t v in t gives the MeanFlow identity
u = v - (t - r) d/dt u, with d/dt u = v . d_z u + d_t u along the flow. Training target:
u_tgt = sg(v - (t - r) JVP(u_theta, (z, r, t), (v, 0, 1))); loss ||u_theta - u_tgt||^2 divided by
sg(||u_theta - u_tgt||^2 + 0.01) (adaptive weighting, p = 1). t, r ~ logit-normal(-0.4, 1) (t the
larger); for a fraction ``flow_fraction`` (0.75) of the batch r = t, which is flow matching.

The network is ``u_net(params, z, t, h)`` with h = t - r (so h = 0 is the instantaneous velocity).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from diffjax._jit import filter_jit
from diffjax._checks import check_int, check_real
from diffjax.numerics.arrays import expand_to
from diffjax.results import SampleResult, no_nonfinite, raise_if_nonfinite, update_nonfinite

Array = jax.Array

__all__ = ["meanflow_target", "meanflow_loss_fn", "meanflow_sample"]


def meanflow_target(u_fn: Callable[[Array, Array, Array], Array], z: Array, r: Array, t: Array,
                    v: Array) -> tuple[Array, Array]:
    """(u, u_tgt) at (z, r, t) for the instantaneous velocity v: u = u_fn(z, r, t) and
    u_tgt = v - (t - r) (v . d_z u + d_t u), the latter by one ``jax.jvp`` with tangents (v, 0, 1);
    u_tgt is *not* stop-gradiented here. r, t: (batch,)."""
    u, dudt = jax.jvp(u_fn, (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))
    return u, v - expand_to(t - r, z) * dudt


def _logit_normal(key, n, mean, std, dtype):
    return jax.nn.sigmoid(mean + std * jax.random.normal(key, (n,), dtype))


def meanflow_loss_fn(u_net: Callable[..., Array], *, flow_fraction: float = 0.75, p_mean: float = -0.4,
                     p_std: float = 1.0, adaptive_p: float = 1.0, norm_eps: float = 0.01,
                     rng_kwarg: Optional[str] = None) -> Callable:
    """``loss_fn(key, params, batch) -> (loss, metrics)`` for ``u_net(params, z, t, h, **cond)`` on data
    batches ``{"x": x}``, as the module docstring gives. Metrics: "loss" (the weighted loss), "mse"
    (the unweighted ||u - u_tgt||^2 per number)."""
    check_real("meanflow_loss_fn", "flow_fraction", flow_fraction, lo=0.0, hi=1.0)
    check_real("meanflow_loss_fn", "p_std", p_std, lo=0.0, lo_open=True)

    def loss_fn(key, params, batch):
        x = batch["x"]
        cond = {k: v for k, v in batch.items() if k != "x"}
        n = x.shape[0]
        k_t, k_r, k_same, k_eps, k_model = jax.random.split(key, 5)
        if rng_kwarg is not None:
            cond = {**cond, rng_kwarg: k_model}
        a = _logit_normal(k_t, n, p_mean, p_std, x.dtype)
        b = _logit_normal(k_r, n, p_mean, p_std, x.dtype)
        t, r = jnp.maximum(a, b), jnp.minimum(a, b)
        r = jnp.where(jax.random.uniform(k_same, (n,)) < flow_fraction, t, r)
        eps = jax.random.normal(k_eps, x.shape, x.dtype)
        z = expand_to(1.0 - t, x) * x + expand_to(t, x) * eps
        v = eps - x
        u, u_tgt = meanflow_target(lambda zz, rr, tt: u_net(params, zz, tt, tt - rr, **cond), z, r, t, v)
        sq = jnp.sum(jnp.square(u - jax.lax.stop_gradient(u_tgt)).reshape(n, -1), axis=1)
        w = jax.lax.stop_gradient(1.0 / (sq + norm_eps) ** adaptive_p)
        loss = jnp.mean(w * sq)
        return loss, {"loss": loss, "mse": jnp.mean(sq) / (x.size // n)}

    return loss_fn


def _mf_run(u_fn, z, ts):
    n = z.shape[0]

    def body(carry, inp):
        z, bad = carry
        k, t, r = inp
        tt, rr = jnp.full((n,), t, z.dtype), jnp.full((n,), r, z.dtype)
        z = z - (t - r) * u_fn(z, rr, tt)
        return (z, update_nonfinite(bad, k, z)), None

    (z, bad), _ = jax.lax.scan(body, (z, no_nonfinite(n)), (jnp.arange(ts.shape[0] - 1), ts[:-1], ts[1:]))
    return z, bad


_mf_run_jit = filter_jit(_mf_run)


def meanflow_sample(u_fn: Callable[[Array, Array, Array], Array], z: Array, num_steps: int = 1, *,
                    check_finite: bool = True) -> SampleResult:
    """k (``num_steps``) jumps z_r = z_t - (t - r) u(z_t, r, t) on a uniform grid from t = 1 (z, standard
    normal) to 0; ``u_fn(z, r, t)`` (a pytree such as ``Partial`` keys the compile by value)."""
    check_int("meanflow_sample", "num_steps", num_steps, lo=1)
    ts = jnp.linspace(1.0, 0.0, num_steps + 1).astype(z.dtype)
    x, bad = _mf_run_jit(u_fn, z, ts)
    result = SampleResult(x, jnp.full((x.shape[0],), num_steps, jnp.int32), bad, None)
    raise_if_nonfinite(result, "meanflow_sample", check_finite, steps=ts)
    return result
