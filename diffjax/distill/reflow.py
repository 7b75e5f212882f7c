"""Reflow (Liu, Gong & Liu, ICLR 2023): couple noise and data through a teacher's probability flow, then
train a rectified-flow velocity on the straight lines between the coupled pairs; repeating it
(k-rectified flow) straightens the flow until one Euler step is accurate.

diffjax's rectified-flow convention: data at t = 0, noise at t = 1, x_t = (1 - t) x_0 + t z, velocity
v = dx/dt = z - x_0. The teacher may be any process: its pairs are (z, x_0) with z = x_T / sigma(T) the
standardised start of the teacher's probability flow (a(T) ~ 0 for VP and rectified flow) and
x_0 its end.

- :func:`reflow_pairs`: (z, x_0) from any deterministic sampler of the teacher.
- :func:`reflow_loss_fn`: the rectified-flow loss on pairs, E ||(z - x_0) - v(x_t, t)||^2.
- :func:`straightness`: S = int_0^1 E ||(z - x_0) - v(x_t, t)||^2 dt along the model's own flow (0:
  every path is a straight line, so one Euler step is exact).
- :func:`euler_sample`: the k-step Euler sampler of a velocity.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from diffjax._jit import filter_jit
from diffjax._checks import check_int
from diffjax.numerics.arrays import expand_to
from diffjax.processes import SDE
from diffjax.results import SampleResult, no_nonfinite, raise_if_nonfinite, update_nonfinite

Array = jax.Array

__all__ = ["reflow_pairs", "reflow_loss_fn", "straightness", "euler_sample"]


def reflow_pairs(sampler: Callable[[Array], Array], sde: SDE, z: Array) -> tuple[Array, Array]:
    """(z, x_0): ``sampler(x_T) -> x_0`` (a deterministic sampler of the teacher, e.g.
    ``lambda x: S.sample(S.unipc(sde, 3), score_fn, key, x, ts).x``) run from x_T = sigma(T) z.
    z: standard normals (batch, ...)."""
    _, s_T = sde.marginal_coeffs(jnp.asarray(sde.T, jnp.float32))
    return z, sampler(s_T.astype(z.dtype) * z)


def reflow_loss_fn(velocity: Callable[..., Array], *, t_eps: float = 1e-3, rng_kwarg: Optional[str] = None) -> Callable:
    """``loss_fn(key, params, batch) -> (loss, metrics)`` with ``batch = {"x": x_0, "z": z}`` (pairs) and
    ``velocity(params, x, t, **cond)`` the student's velocity: t ~ U(t_eps, 1), x_t = (1 - t) x_0 + t z,
    loss E ||(z - x_0) - v(x_t, t)||^2 (mean over an example's numbers)."""

    def loss_fn(key, params, batch):
        x0, z = batch["x"], batch["z"]
        cond = {k: v for k, v in batch.items() if k not in ("x", "z")}
        k_t, k_model = jax.random.split(key)
        if rng_kwarg is not None:
            cond = {**cond, rng_kwarg: k_model}
        t = jax.random.uniform(k_t, (x0.shape[0],), x0.dtype, t_eps, 1.0)
        xt = expand_to(1.0 - t, x0) * x0 + expand_to(t, x0) * z
        err = velocity(params, xt, t, **cond) - (z - x0)
        loss = jnp.mean(jnp.square(err))
        return loss, {"loss": loss}

    return loss_fn


def _euler(velocity, x, ts):
    n = x.shape[0]

    def body(carry, inp):
        x, bad = carry
        k, t, s = inp
        x = x + (s - t) * velocity(x, jnp.full((n,), t, x.dtype))
        return (x, update_nonfinite(bad, k, x)), None

    (x, bad), _ = jax.lax.scan(body, (x, no_nonfinite(n)), (jnp.arange(ts.shape[0] - 1), ts[:-1], ts[1:]))
    return x, bad


_euler_jit = filter_jit(_euler)


def euler_sample(velocity: Callable[[Array, Array], Array], z: Array, num_steps: int, *, t_start: float = 1.0,
                 check_finite: bool = True) -> SampleResult:
    """k (``num_steps``) uniform Euler steps of dx/dt = v(x, t) from t = ``t_start`` (x = z) to t = 0."""
    check_int("euler_sample", "num_steps", num_steps, lo=1)
    ts = jnp.linspace(t_start, 0.0, num_steps + 1).astype(z.dtype)
    x, bad = _euler_jit(velocity, z, ts)
    result = SampleResult(x, jnp.full((x.shape[0],), num_steps, jnp.int32), bad, None)
    raise_if_nonfinite(result, "euler_sample", check_finite, steps=ts)
    return result


def straightness(velocity: Callable[[Array, Array], Array], z: Array, num_steps: int = 100) -> Array:
    """Straightness of the flow dx/dt = v(x, t) from z (Liu et al. 2023):
    S = int_0^1 E ||(x_1 - x_0) - v(x_t, t)||^2 dt along the flow's own paths (x_1 = z, x_0 its end),
    by ``num_steps`` midpoint (RK2) steps with the integrand at the grid points (trapezoid). Per example,
    shape (batch,); divide by the dimension for a per-number figure."""
    check_int("straightness", "num_steps", num_steps, lo=2)
    ts = jnp.linspace(1.0, 0.0, num_steps + 1).astype(z.dtype)
    n = z.shape[0]

    def body(x, inp):
        t, s = inp
        v = velocity(x, jnp.full((n,), t, x.dtype))
        xm = x + 0.5 * (s - t) * v
        x_new = x + (s - t) * velocity(xm, jnp.full((n,), 0.5 * (t + s), x.dtype))
        return x_new, (x, v)

    x0, (xs, vs) = jax.lax.scan(body, z, (ts[:-1], ts[1:]))
    v_end = velocity(x0, jnp.zeros((n,), z.dtype))
    vs = jnp.concatenate([vs, v_end[None]])
    line = (z - x0)[None]
    sq = jnp.sum(jnp.square(line - vs).reshape(vs.shape[0], n, -1), axis=2)
    h = 1.0 / num_steps
    return h * (0.5 * sq[0] + jnp.sum(sq[1:-1], axis=0) + 0.5 * sq[-1])
