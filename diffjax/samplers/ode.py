"""The probability-flow ODE dx/dt = f(t) x - g(t)^2 s(x, t) / 2: fixed-step Euler, Heun and RK4
steps in t, and adaptive integration inside jit (the batched Runge–Kutta of :mod:`diffjax.numerics`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax._checks import check_real
from diffjax._jit import filter_jit
from diffjax.numerics.arrays import expand_to, time_dtype
from diffjax.numerics.runge_kutta import (BATCHED_METHODS, EVALS_AT_START, EVALS_PER_STEP, check_solve_options,
                                          solve_adaptive, solve_batched)
from diffjax.processes import SDE, check_t_end, probability_flow_drift
from diffjax.results import SampleResult, first_nonfinite, raise_if_nonfinite
from diffjax.samplers.base import Step, step_class, tweedie_denoise
from diffjax.samplers.driver import check_x_init
from diffjax.score import checked_score

Array = jax.Array

__all__ = ["ode_euler", "ode_heun", "ode_rk4", "ode_sample"]


@step_class
class _ProbabilityFlowStep(Step):
    """Shared parts of the fixed-step probability-flow solvers: the process, and no noise."""

    sde: SDE
    stochastic = False

    def drift(self, score_fn, x: Array, t: Array) -> Array:
        return probability_flow_drift(self.sde, score_fn, x, t)


@step_class
class ode_euler(_ProbabilityFlowStep):
    """Explicit Euler on the probability-flow ODE in t (first order, 1 NFE)."""

    name = "ode_euler"

    def update(self, keys, x, state, t, t_next, score_fn):
        return x + self.drift(score_fn, x, t) * expand_to(t_next - t, x), state


@step_class
class ode_heun(_ProbabilityFlowStep):
    """Heun's method (explicit trapezoid) on the probability-flow ODE in t (second order, 2 NFE)."""

    nfe = 2
    name = "ode_heun"

    def update(self, keys, x, state, t, t_next, score_fn):
        dt = expand_to(t_next - t, x)
        d1 = self.drift(score_fn, x, t)
        d2 = self.drift(score_fn, x + d1 * dt, t_next)
        return x + 0.5 * (d1 + d2) * dt, state


@step_class
class ode_rk4(_ProbabilityFlowStep):
    """Classical fourth-order Runge–Kutta on the probability-flow ODE in t (4 NFE)."""

    nfe = 4
    name = "ode_rk4"

    def update(self, keys, x, state, t, t_next, score_fn):
        h = t_next - t
        dt = expand_to(h, x)
        t_mid = t + 0.5 * h
        k1 = self.drift(score_fn, x, t)
        k2 = self.drift(score_fn, x + 0.5 * dt * k1, t_mid)
        k3 = self.drift(score_fn, x + 0.5 * dt * k2, t_mid)
        k4 = self.drift(score_fn, x + dt * k3, t_next)
        return x + dt * (k1 + 2.0 * k2 + 2.0 * k3 + k4) / 6.0, state


def ode_sample(
    sde: SDE,
    score_fn,
    key: Array,
    x_init: Array,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    *,
    t_end: float | None = None,
    method: str = "tsit5",
    denoise: bool = True,
    max_steps: int = 4096,
    per_example: bool = True,
    solver: str = "batched",
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    check_finite: bool = True,
) -> SampleResult:
    """Solve the probability-flow ODE from T down to t_end (default the process's) adaptively, inside jit.

    ``solver="batched"`` (default) integrates the whole batch in one ``lax.while_loop``
    (:func:`diffjax.numerics.runge_kutta.solve_batched`: an embedded Runge–Kutta pair, "tsit5",
    "dopri5" or "bosh3", with the integral controller); an example that meets NaN or Inf stops
    there. ``"diffrax"`` vmaps diffrax's solve (PIDController(rtol, atol, pcoeff, icoeff); "tsit5"
    or "dopri5"). By default each example has its own step-size control, so its result does not
    depend on the batch it is in (the batch runs until its slowest example is done);
    ``per_example=False`` takes common steps for the batch (the original's design: usually fewer
    batched evaluations, but an example's result then depends on its batch). ``key`` is unused
    (the ODE is deterministic); it keeps the signature of :func:`diffjax.samplers.sample`.

    Returns a :class:`~diffjax.results.SampleResult`: ``.x`` (shape of x_init), ``.nfe`` each
    example's score evaluations (batch,) (the batch as a whole costs max(nfe) batched evaluations),
    ``.nonfinite_step``: the attempted step at which an example's solve met NaN/Inf or ran out of
    ``max_steps`` (its x is then NaN), -1 if none; outside a jit of yours such an example raises
    :class:`~diffjax.results.NonFiniteError` unless ``check_finite=False``.
    """
    del key
    if not isinstance(sde, SDE):
        raise TypeError(f"ode_sample(sde, score_fn, key, x_init): sde must be a diffjax process; got "
                        f"{type(sde).__name__}")
    check_x_init(x_init)
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable score_fn(x, t); got {type(score_fn).__name__}")
    t_end = sde.t_end if t_end is None else t_end
    check_solve_options("ode_sample", solver, method, rtol, atol, max_steps)
    check_real("ode_sample", "pcoeff", pcoeff, lo=0.0)
    check_real("ode_sample", "icoeff", icoeff, lo=0.0, lo_open=True)
    check_t_end("ode_sample", sde, t_end)
    x, nfe, failed = _ode_sample(
        score_fn, sde, x_init, float(rtol), float(atol), float(t_end), method, bool(denoise),
        int(max_steps), float(pcoeff), float(icoeff), bool(per_example), solver,
    )
    result = SampleResult(x, nfe, failed)
    raise_if_nonfinite(result, "ode_sample", check_finite, what="adaptive step", max_steps=int(max_steps))
    return result


@filter_jit
def _ode_sample(score_fn, sde, x_init, rtol, atol, t_end, method, denoise, max_steps, pcoeff, icoeff, per_example,
                solver):
    score_fn = checked_score(score_fn)
    t_dtype = time_dtype(x_init)

    if solver == "batched":
        # in tau = -t the flow runs forward from -T to -t_end; t = -tau is exact
        def field(tau, x):
            return -probability_flow_drift(sde, score_fn, x, -tau).astype(x.dtype)

        x, nfe, failed = solve_batched(field, x_init, -sde.T, -t_end, method=method, rtol=rtol, atol=atol,
                                       max_steps=max_steps, per_example=per_example)
        evals_at_start, evals_per_step = 2, BATCHED_METHODS[method][1].tableau.c.shape[0]
    else:
        def field(t, x, args):
            return probability_flow_drift(sde, score_fn, x, jnp.full((x.shape[0],), t, t_dtype)).astype(x.dtype)

        x, nfe, failed = solve_adaptive(field, x_init, None, sde.T, t_end, method=method, rtol=rtol, atol=atol,
                                        max_steps=max_steps, per_example=per_example, pcoeff=pcoeff, icoeff=icoeff)
        evals_at_start, evals_per_step = EVALS_AT_START, EVALS_PER_STEP[method]
    if denoise:
        x = tweedie_denoise(sde, score_fn, x, jnp.full((x.shape[0],), t_end, t_dtype)).astype(x_init.dtype)
        # the denoiser turning a finite x into NaN counts as the step after the solve's last
        failed = jnp.where((failed < 0) & first_nonfinite(x), (nfe - evals_at_start) // evals_per_step, failed)
        nfe = nfe + 1
    return x, nfe, failed
