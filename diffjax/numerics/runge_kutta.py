"""Adaptive Runge-Kutta solves of batched ODEs dy/dt = field(t, y): one batched solve in a
``lax.while_loop`` with step control per example (:func:`solve_batched`), and diffrax's PID-controlled
solve vmapped per example or on the batch as one system (:func:`solve_adaptive`).

``field(t, y)`` takes per-example times t (batch,) (a scalar for :func:`solve_adaptive`) and a pytree
y whose leaves have a leading batch axis. Both return ``(y(t1), nfe, failed)``: evaluations of the
field per example and the attempted step at which an example failed (NaN or Inf met, or max_steps
used up; its y is then NaN), -1 where the solve finished.
"""

from __future__ import annotations

import functools

import diffrax
import jax
import jax.numpy as jnp

from diffjax._checks import check_int, check_real
from diffjax.numerics.arrays import expand_to, time_dtype

Array = jax.Array

__all__ = ["solve_batched", "solve_adaptive", "check_solve_options", "SOLVERS", "ADJOINTS", "DIFFRAX_METHODS",
           "BATCHED_METHODS",
           "EVALS_PER_STEP", "EVALS_AT_START"]

SOLVERS = ("batched", "diffrax")

DIFFRAX_METHODS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}

# Score evaluations of one adaptive solve (diffrax 0.6-0.7, counted in the tests): one at t0 for the
# first-same-as-last stage, then s - 1 per attempted step, accepted or rejected, for an s-stage FSAL
# method (Tsit5, Dopri5: s = 7); the initial step-size selection reuses the evaluation at t0.
EVALS_PER_STEP = {"tsit5": 6, "dopri5": 6}
EVALS_AT_START = 1



ADJOINTS = {"checkpoint": diffrax.RecursiveCheckpointAdjoint, "forward": diffrax.ForwardMode}


def solve_adaptive(field, y0, args, t0, t1, *, method, rtol, atol, max_steps, per_example, pcoeff=0.0, icoeff=1.0,
                   adjoint="checkpoint"):
    """Integrate dy/dt = field(t, y, args) from t0 to t1 with diffrax and a PID controller.

    ``field`` works on a batch: every leaf of ``y0`` and ``args`` has a leading batch axis. With
    ``per_example`` the solve is vmapped over the batch, each example a batch of one with its own
    step-size control; otherwise the batch is one system with one error norm. Derivatives flow
    through the steps: ``adjoint="checkpoint"`` (diffrax's RecursiveCheckpointAdjoint: reverse mode,
    ``jax.grad``) or ``"forward"`` (diffrax's ForwardMode: ``jax.jvp`` and ``jax.jacfwd``). Returns ``(y(t1), nfe, failed)``, each
    of shape (batch,) but y: evaluations of ``field`` per example, and the attempted step at which an
    example's solve failed (NaN or Inf in the field, or ``max_steps`` used up), -1 if it did not;
    a failed example's y(t1) is NaN.
    """
    term = diffrax.ODETerm(field)
    controller = diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=pcoeff, icoeff=icoeff)

    def solve(y, a):
        sol = diffrax.diffeqsolve(
            term, DIFFRAX_METHODS[method](), t0=t0, t1=t1, dt0=None, y0=y, args=a, stepsize_controller=controller,
            saveat=diffrax.SaveAt(t1=True), max_steps=max_steps, adjoint=ADJOINTS[adjoint](),
            throw=False,  # a failure is reported per example below, not as an error from inside the program
        )
        ok = sol.result == diffrax.RESULTS.successful
        y1 = jax.tree_util.tree_map(lambda v: jnp.where(ok, v[0], jnp.nan), sol.ys)
        return y1, sol.stats["num_steps"], ok

    batch = jax.tree_util.tree_leaves(y0)[0].shape[0]
    if per_example:
        one = lambda tree: jax.tree_util.tree_map(lambda v: v[None], tree)  # noqa: E731
        y1, steps, ok = jax.vmap(lambda y, a: solve(one(y), one(a)))(y0, args)
        y1 = jax.tree_util.tree_map(lambda v: v[:, 0], y1)
    else:
        y1, steps, ok = solve(y0, args)
        steps, ok = jnp.full((batch,), steps), jnp.full((batch,), ok)
    failed = jnp.where(ok, -1, steps).astype(jnp.int32)
    return y1, (EVALS_AT_START + EVALS_PER_STEP[method] * steps).astype(jnp.int32), failed


# Embedded explicit Runge–Kutta pairs for :func:`solve_batched`, as (order, diffrax's Butcher tableau);
# all three are first-same-as-last, so an attempted step costs (stages - 1) evaluations.
# fields with more equations than this (networks) run the RK stages in a fori_loop: compiled once


_ROLL_STAGES_ABOVE = 2000
BATCHED_METHODS = {"tsit5": (5, diffrax.Tsit5), "dopri5": (5, diffrax.Dopri5), "bosh3": (3, diffrax.Bosh3)}


def _dtype_of(tree):
    """The dtype step coefficients use for the pytree ``tree`` (its first leaf's, at least float32)."""
    return time_dtype(jax.tree_util.tree_leaves(tree)[0])


def _scaled_rms(tree, ref_a, ref_b, rtol, atol, batch):
    """Per-example RMS of tree / (atol + rtol max(|ref_a|, |ref_b|)) over all leaves; shape (batch,)."""
    num, count = 0.0, 0
    for v, a, b in zip(*(jax.tree_util.tree_leaves(u) for u in (tree, ref_a, ref_b))):
        q = jnp.reshape(v / (atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b))), (batch, -1))
        num, count = num + jnp.sum(q * q, axis=1), count + q.shape[1]
    return jnp.sqrt(num / count)


def _rk_forward(field, y0, t0, t1, method, rtol, atol, max_steps, per_example, roll_stages=False):
    """The adaptive solve of :func:`solve_batched` in one ``lax.while_loop``; returns (y(t1), nfe)."""
    order, solver = BATCHED_METHODS[method]
    tab = solver.tableau
    a_rows = [[float(v) for v in row] for row in tab.a_lower]
    c = [0.0] + [float(v) for v in tab.c]
    b_sol, b_err = [float(v) for v in tab.b_sol], [float(v) for v in tab.b_error]
    stages = len(c)
    a_full = jnp.asarray([[0.0] * stages] + [row + [0.0] * (stages - len(row)) for row in a_rows], _dtype_of(y0))
    c_arr = jnp.asarray(c, _dtype_of(y0))
    leaves = jax.tree_util.tree_leaves(y0)
    batch, dtype = leaves[0].shape[0], time_dtype(leaves[0])
    t0, t1 = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
    span = t1 - t0
    tmap = jax.tree_util.tree_map

    def combine(y, ks, coeffs, h):
        out = y
        for k, w in zip(ks, coeffs):
            if w != 0.0:
                out = tmap(lambda o, kk, w=w: o + (expand_to(h * w, kk) * kk).astype(o.dtype), out, k)
        return out

    def select(mask, new, old):
        return tmap(lambda n_, o_: jnp.where(expand_to(mask, n_), n_, o_), new, old)

    # initial step: Hairer, Norsett & Wanner (II.4), one extra evaluation per example
    k0 = field(jnp.full((batch,), t0, dtype), y0)
    d0, d1 = _scaled_rms(y0, y0, y0, rtol, atol, batch), _scaled_rms(k0, y0, y0, rtol, atol, batch)
    h_try = jnp.minimum(jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6 * span, 0.01 * d0 / jnp.maximum(d1, 1e-30)), span)
    k_try = field(t0 + h_try, combine(y0, [k0], [1.0], h_try))
    d2 = _scaled_rms(tmap(jnp.subtract, k_try, k0), y0, y0, rtol, atol, batch) / h_try
    d12 = jnp.maximum(d1, d2)
    h0 = jnp.where(d12 <= 1e-15, jnp.maximum(1e-6 * span, 1e-3 * h_try), (0.01 / jnp.maximum(d12, 1e-30)) ** (1.0 / order))
    h0 = jnp.minimum(100.0 * h_try, h0)
    if not per_example:
        h0 = jnp.full_like(h0, jnp.min(h0))

    def cond(state):
        return jnp.any(~state[6]) & (state[4] < max_steps)

    def body(state):
        t, y, k1, h, n, nfe, done, failed = state
        h = jnp.where(done, 0.0, jnp.minimum(h, t1 - t))
        if roll_stages:
            # the stages run in a fori_loop, so the field is compiled once in the step (a network is
            # otherwise compiled stages - 1 times); k holds every stage, rows of a_full weight them
            def stage(i, k):
                w = a_full[i]
                yi = tmap(lambda y_, k_: y_ + (expand_to(h, y_) * jnp.tensordot(w.astype(k_.dtype), k_, axes=1)
                                                ).astype(y_.dtype), y, k)
                ki = field(t + c_arr[i] * h, yi)
                return tmap(lambda k_, v: k_.at[i].set(v), k, ki)

            k = tmap(lambda v: jnp.zeros((stages,) + v.shape, v.dtype).at[0].set(v), k1)
            k = jax.lax.fori_loop(1, stages, stage, k)
            y_new = tmap(lambda y_, k_: y_ + (expand_to(h, y_) * jnp.tensordot(jnp.asarray(b_sol, k_.dtype), k_, axes=1)
                                               ).astype(y_.dtype), y, k)  # = the last stage's input (FSAL)
            err_y = tmap(lambda k_: expand_to(h, k_[0]) * jnp.tensordot(jnp.asarray(b_err, k_.dtype), k_, axes=1), k)
            k_last = tmap(lambda k_: k_[-1], k)
        else:
            # unrolled, each stage's input a sum over the nonzero coefficients only: every combination
            # is one elementwise fusion, with no stacked stage buffer to update and contract (which
            # cost as much as a small field's evaluation)
            ks = [k1]
            for i in range(1, stages):
                ks.append(field(t + c[i] * h, combine(y, ks, a_rows[i - 1], h)))
            y_new = combine(y, ks, b_sol, h)  # = the last stage's input (FSAL)
            err_y = combine(tmap(jnp.zeros_like, y), ks, b_err, h)
            k_last = ks[-1]
        err = _scaled_rms(err_y, y, y_new, rtol, atol, batch)
        # NaN or Inf in an example's stages (a score that returned them): that example has failed, at
        # this attempted step; it stops here instead of shrinking its step until max_steps
        bad = ~jnp.isfinite(err) & ~done
        failed = jnp.where(bad, n, failed)
        done = done | bad
        if not per_example:  # one step for the batch, every example within tolerance
            err = jnp.full_like(err, jnp.max(jnp.where(done, 0.0, err)))
        accept = (err <= 1.0) & ~done
        factor = jnp.clip(0.9 * jnp.maximum(err, 1e-10) ** (-1.0 / order), 0.2, 10.0)
        t_new = jnp.where(accept, t + h, t)
        arrived = t1 - t_new <= 1e-6 * span
        t_new = jnp.where(arrived, t1, t_new)
        nfe = nfe + jnp.where(done, 0, stages - 1)
        return (t_new, select(accept, y_new, y), select(accept, k_last, k1), h * factor, n + 1, nfe,
                done | (accept & arrived), failed)

    state = (jnp.full((batch,), t0, dtype), y0, k0, h0, jnp.int32(0), jnp.full((batch,), 2, jnp.int32),
             jnp.zeros((batch,), bool), jnp.full((batch,), -1, jnp.int32))
    _, y1, _, _, n, nfe, done, failed = jax.lax.while_loop(cond, body, state)
    # an example that failed, or ran out of max_steps, returns NaN rather than a silently wrong value
    failed = jnp.where(done, failed, n)
    y1 = tmap(lambda v: jnp.where(expand_to(failed < 0, v), v, jnp.nan), y1)
    return y1, nfe, failed


def solve_batched(field, y0, t0, t1, *, method="tsit5", rtol=1e-5, atol=1e-5, max_steps=4096, per_example=True):
    """Integrate dy/dt = field(t, y) from t0 to t1 > t0 for a batch, in one ``lax.while_loop``.

    ``field(t, y)`` takes per-example times t of shape (batch,) and a pytree y whose leaves have a
    leading batch axis. An embedded Runge–Kutta pair ("tsit5", "dopri5" or "bosh3") with the
    integral controller; the error of example i is the RMS over its components of
    err / (atol + rtol |y|). With ``per_example`` every example keeps its own time and step size,
    all evaluated in one batched call per stage, so an example's result does not depend on its
    batch, and the batch costs its slowest example's steps. Otherwise the batch takes common steps
    accepted when every example's error is within tolerance (the per-example maximum, not an average).

    Unlike a vmapped diffrax solve this has no per-step bookkeeping beyond the stages, which
    dominates on CPU for small states. Reverse-mode gradients (``jax.grad``) are those of the same
    ODE solved with diffrax (discretise-then-optimise, RecursiveCheckpointAdjoint; the batch as one
    system) at the same tolerances, through a custom VJP; the forward value is this solver's. Examples that need more
    than ``max_steps`` attempted steps come back as NaN.

    Returns ``(y(t1), nfe, failed)``, nfe of shape (batch,): evaluations of ``field`` per example (one
    at t0 and one for the initial step size, then stages - 1 per attempted step); failed (batch,): the
    attempted step at which an example met NaN or Inf (it stops there) or ``max_steps`` if it ran out,
    -1 if it finished; a failed example's y(t1) is NaN.
    """
    if method not in BATCHED_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; expected one of {sorted(BATCHED_METHODS)}")
    check_int("solve_batched", "max_steps", max_steps, lo=1)
    opts = (method, float(rtol), float(atol), int(max_steps), bool(per_example))
    t_dtype = time_dtype(jax.tree_util.tree_leaves(y0)[0])
    t0, t1 = jnp.asarray(t0, t_dtype), jnp.asarray(t1, t_dtype)
    batch = jax.tree_util.tree_leaves(y0)[0].shape[0]
    # closed-over arrays (a network's parameters, traced or not) become explicit inputs of the VJP
    converted, consts = jax.closure_convert(field, jnp.full((batch,), t0), y0)
    # a large field (a network) is compiled once per step rather than once per stage
    roll = len(jax.make_jaxpr(converted)(jnp.full((batch,), t0), y0, *consts).eqns) > _ROLL_STAGES_ABOVE
    return _solve_batched(converted, opts + (roll,), consts, y0, t0, t1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _solve_batched(field, opts, consts, y0, t0, t1):
    method, rtol, atol, max_steps, per_example, roll = opts
    return _rk_forward(lambda t, y: field(t, y, *consts), y0, t0, t1, method, rtol, atol, max_steps, per_example, roll)


def _solve_batched_fwd(field, opts, consts, y0, t0, t1):
    return _solve_batched(field, opts, consts, y0, t0, t1), (consts, y0, t0, t1)


def _solve_batched_bwd(field, opts, residuals, cotangents):
    method, rtol, atol, max_steps, _, _ = opts
    consts, y0, t0, t1 = residuals
    ct_y1 = cotangents[0]
    diffrax_method = method if method in DIFFRAX_METHODS else "dopri5"

    def through_diffrax(consts, y0):
        def f(t, y, _):
            n = jax.tree_util.tree_leaves(y)[0].shape[0]
            return field(jnp.full((n,), t, t0.dtype), y, *consts)

        # one system: the converted field is specialised to the whole batch (its closure holds
        # per-example arrays such as probes), so diffrax cannot vmap it example by example
        return solve_adaptive(f, y0, None, t0, t1, method=diffrax_method, rtol=rtol, atol=atol,
                              max_steps=max_steps, per_example=False)

    _, vjp = jax.vjp(lambda c, y: through_diffrax(c, y)[0], consts, y0)
    ct_consts, ct_y0 = vjp(ct_y1)
    return ct_consts, ct_y0, jnp.zeros_like(t0), jnp.zeros_like(t1)


_solve_batched.defvjp(_solve_batched_fwd, _solve_batched_bwd)


def check_solve_options(owner: str, solver: str, method: str, rtol, atol, max_steps) -> None:
    """Raise a one-line error for an unknown solver or method, tolerances that are not numbers > 0, or
    max_steps that is not an integer >= 1; ``owner`` names the entry point in the message."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
    methods = BATCHED_METHODS if solver == "batched" else DIFFRAX_METHODS
    if method not in methods:
        raise ValueError(f"unknown ODE method {method!r} for solver {solver!r}; expected one of {sorted(methods)}")
    for name, value in (("rtol", rtol), ("atol", atol)):
        check_real(owner, name, value)
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be > 0; got rtol={rtol}, atol={atol}")
    check_int(owner, "max_steps", max_steps, lo=1)
