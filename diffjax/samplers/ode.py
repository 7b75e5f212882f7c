"""The probability-flow ODE dx/dt = f(t) x - g(t)^2 s(x, t) / 2: fixed-step Euler, Heun and RK4
steps in t, and adaptive integration with diffrax inside jit."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp

from diffjax._jit import filter_jit
from diffjax.samplers.base import Step, check_x_init, sequenced, step_class, time_dtype, tweedie_denoise
from diffjax.sde import SDE, expand_to

Array = jax.Array

__all__ = ["probability_flow_drift", "ODEEuler", "ODEHeun", "ODERK4", "ode_euler", "ode_heun", "ode_rk4", "ode_sample"]


def probability_flow_drift(sde: SDE, score_fn, x: Array, t: Array) -> Array:
    """f(t) x - g(t)^2 s(x, t) / 2, shape of x; t of shape (batch,)."""
    return sde.reverse(score_fn, probability_flow=True).sde(x, t)[0]


@step_class
class ODEEuler(Step):
    """Explicit Euler on the probability-flow ODE in t (first order, 1 NFE)."""

    sde: SDE
    name = "ode_euler"
    stochastic = False

    def update(self, keys, x, state, t, t_next, score_fn):
        x = x + probability_flow_drift(self.sde, score_fn, x, t) * expand_to(t_next - t, x)
        return x, x, state


@step_class
class ODEHeun(Step):
    """Heun's method (explicit trapezoid) on the probability-flow ODE in t (second order, 2 NFE)."""

    sde: SDE
    nfe = 2
    name = "ode_heun"
    stochastic = False

    def update(self, keys, x, state, t, t_next, score_fn):
        dt = expand_to(t_next - t, x)
        d1 = probability_flow_drift(self.sde, score_fn, x, t)
        d2 = probability_flow_drift(self.sde, score_fn, x + d1 * dt, t_next)
        x = x + 0.5 * (d1 + d2) * dt
        return x, x, state


@step_class
class ODERK4(Step):
    """Classical fourth-order Runge–Kutta on the probability-flow ODE in t (4 NFE)."""

    sde: SDE
    nfe = 4
    name = "ode_rk4"
    stochastic = False

    def update(self, keys, x, state, t, t_next, score_fn):
        sde = self.sde
        h = t_next - t
        dt = expand_to(h, x)
        t_mid = t + 0.5 * h
        k1 = probability_flow_drift(sde, score_fn, x, t)
        k2 = probability_flow_drift(sde, score_fn, x + 0.5 * dt * k1, t_mid)
        k3 = probability_flow_drift(sde, score_fn, x + 0.5 * dt * k2, t_mid)
        k4 = probability_flow_drift(sde, score_fn, x + dt * k3, t_next)
        x = x + dt * (k1 + 2.0 * k2 + 2.0 * k3 + k4) / 6.0
        return x, x, state


ode_euler = ODEEuler
ode_heun = ODEHeun
ode_rk4 = ODERK4


_SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}

# Score evaluations of one adaptive solve (diffrax 0.6-0.7, counted in the tests): one at t0 for the
# first-same-as-last stage, then s - 1 per attempted step, accepted or rejected, for an s-stage FSAL
# method (Tsit5, Dopri5: s = 7); the initial step-size selection reuses the evaluation at t0.
_EVALS_PER_STEP = {"tsit5": 6, "dopri5": 6}
_EVALS_AT_START = 1


def check_solver_options(sde: SDE, rtol: float, atol: float, eps: float, method: str) -> None:
    """Raise a ValueError for tolerances <= 0, eps outside (0, T) or an unknown method."""
    if method not in _SOLVERS:
        raise ValueError(f"unknown ODE method {method!r}; expected one of {sorted(_SOLVERS)}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be > 0; got rtol={rtol}, atol={atol}")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}); got {eps}")


def solve_adaptive(field, y0, args, t0, t1, *, method, rtol, atol, max_steps, per_example, pcoeff=0.0, icoeff=1.0):
    """Integrate dy/dt = field(t, y, args) from t0 to t1 with diffrax and a PID controller.

    ``field`` works on a batch: every leaf of ``y0`` and ``args`` has a leading batch axis. With
    ``per_example`` the solve is vmapped over the batch, each example a batch of one with its own
    step-size control; otherwise the batch is one system with one error norm. Gradients flow
    through the steps (diffrax's RecursiveCheckpointAdjoint). Returns ``(y(t1), nfe)``, nfe of
    shape (batch,): evaluations of ``field`` per example.
    """
    term = diffrax.ODETerm(field)
    controller = diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=pcoeff, icoeff=icoeff)

    def solve(y, a):
        sol = diffrax.diffeqsolve(
            term, _SOLVERS[method](), t0=t0, t1=t1, dt0=None, y0=y, args=a, stepsize_controller=controller,
            saveat=diffrax.SaveAt(t1=True), max_steps=max_steps, adjoint=diffrax.RecursiveCheckpointAdjoint(),
        )
        return jax.tree_util.tree_map(lambda v: v[0], sol.ys), sol.stats["num_steps"]

    batch = jax.tree_util.tree_leaves(y0)[0].shape[0]
    if per_example:
        one = lambda tree: jax.tree_util.tree_map(lambda v: v[None], tree)  # noqa: E731
        y1, steps = jax.vmap(lambda y, a: solve(one(y), one(a)))(y0, args)
        y1 = jax.tree_util.tree_map(lambda v: v[:, 0], y1)
    else:
        y1, steps = solve(y0, args)
        steps = jnp.full((batch,), steps)
    return y1, (_EVALS_AT_START + _EVALS_PER_STEP[method] * steps).astype(jnp.int32)


def ode_sample(
    sde: SDE,
    score_fn,
    key: Array,
    x_init: Array,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    *,
    eps: float | None = None,
    method: str = "tsit5",
    denoise: bool = True,
    max_steps: int = 4096,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    per_example: bool = True,
):
    """Solve the probability-flow ODE from T down to eps adaptively (diffrax, inside jit).

    By default each example is integrated with its own step-size control (the solve is vmapped
    over the batch), so an example's result does not depend on the batch it is in; the batch then
    runs until its slowest example is done. ``per_example=False`` solves the batch as one system
    with one error norm (the original's design): usually fewer batched evaluations, but an
    example's result then depends on its batch. ``method`` is "tsit5"
    or "dopri5"; the controller is diffrax's PIDController(rtol, atol, pcoeff, icoeff) (the defaults
    are the integral controller). ``key`` is unused (the ODE is deterministic); it keeps the
    signature of :func:`diffjax.samplers.sample`.

    Returns ``(x, nfe)``: samples (shape of x_init) and each example's score evaluations, shape
    (batch,). The batch as a whole costs max(nfe) batched evaluations.
    """
    del key
    check_x_init(x_init)
    eps = sde.sampling_eps if eps is None else float(eps)
    check_solver_options(sde, rtol, atol, eps, method)
    return _ode_sample(
        score_fn, sde, x_init, float(rtol), float(atol), eps, method, bool(denoise),
        int(max_steps), float(pcoeff), float(icoeff), bool(per_example),
    )


@filter_jit
def _ode_sample(score_fn, sde, x_init, rtol, atol, eps, method, denoise, max_steps, pcoeff, icoeff, per_example):
    score_fn = sequenced(score_fn)
    t_dtype = time_dtype(x_init)

    def field(t, x, args):
        return probability_flow_drift(sde, score_fn, x, jnp.full((x.shape[0],), t, t_dtype)).astype(x.dtype)

    x, nfe = solve_adaptive(field, x_init, None, sde.T, eps, method=method, rtol=rtol, atol=atol,
                            max_steps=max_steps, per_example=per_example, pcoeff=pcoeff, icoeff=icoeff)
    if denoise:
        x = tweedie_denoise(sde, score_fn, x, jnp.full((x.shape[0],), eps, t_dtype)).astype(x_init.dtype)
        nfe = nfe + 1
    return x, nfe
