"""Sampler benchmark: accuracy versus NFE, driver overhead, and the original's host-side designs.

    python experiments/benchmarks/samplers.py [--quick]

1. Error against the exact 2-D Gaussian mixture (VP) at NFE 10, 20, 50, 100, 1000 for every
   sampler: MMD^2 to exact samples (x1e3; the noise floor between two exact sets is printed) and the
   relative covariance error.
2. Overhead: sampler wall time / (NFE x one jitted call of the network alone), for an MLP score
   network on CPU; also against a lax.scan that only calls the network NFE times.
3. Side by side: a host loop (Python loop calling a jitted step) against our scan, and scipy's
   solve_ivp RK45 on the host (the original's ODE sampler) against our adaptive diffrax solve at the
   same tolerances, with the error of each against a tight reference solve.
All times are medians of repeated runs after compilation; ratios are what to compare.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))
from helpers import MixtureCheck, mixture_2d, mmd2, x64  # noqa: E402

from diffjax import VPSDE  # noqa: E402
from timing import median_time  # noqa: E402
from diffjax import samplers as S  # noqa: E402
from diffjax.models import MLPScoreNet  # noqa: E402
from diffjax.losses import get_dsm_loss_fn  # noqa: E402
from diffjax.score import make_score_fn, make_score_model  # noqa: E402
from diffjax.training import create_train_state, make_optimizer, make_train_step  # noqa: E402

SAMPLERS = [
    ("euler_maruyama", {}, "uniform"),
    ("reverse_diffusion", {}, "uniform"),
    ("ancestral_sampling", {}, "uniform"),
    ("pc (annealed)", {"name": "pc", "corrector": "annealed_langevin"}, "uniform"),
    ("ode_euler", {}, "uniform"),
    ("ode_heun", {}, "uniform"),
    ("ode_rk4", {}, "uniform"),
    ("ddim", {}, "log_snr"),
    ("ddim eta=1", {"name": "ddim", "eta": 1.0}, "log_snr"),
    ("edm_heun", {}, "karras"),
    ("dpmpp_2m", {}, "log_snr"),
    ("dpmpp_2m_sde", {}, "log_snr"),
]


def accuracy_table(n_samples, budgets):
    sde, gm = VPSDE(), mixture_2d()
    check = MixtureCheck(gm, n_samples)
    key = jax.random.PRNGKey(0)
    x_init = S.prior_sample(sde, key, (n_samples, 2))
    floor = mmd2(np.asarray(gm.sample(jax.random.PRNGKey(77), n_samples)), check.reference)
    print(f"\n1. Error against the exact mixture (VP, {n_samples} samples): MMD^2 x 1e3 / relative covariance error")
    print(f"   noise floor between two exact sets: MMD^2 x 1e3 = {1e3 * floor:.3f}, covariance error = {check.cov_floor:.3f}")
    print("   " + f"{'sampler':<18}" + "".join(f"{'NFE ' + str(b):>18}" for b in budgets))
    for label, opts, grid in SAMPLERS:
        opts = dict(opts)
        name = opts.pop("name", label)
        step = S.get_step(name, sde, **opts)
        cells = []
        for budget in budgets:
            n_steps = (budget - 1) // step.nfe  # one NFE for the final denoising
            if n_steps < 1:
                cells.append(f"{'-':>18}")
                continue
            res = S.sample(step, gm.score_fn(sde), key, x_init, S.TIME_GRIDS[grid](sde, n_steps))
            x, nfe = res.x, res.nfe
            x = np.asarray(x, np.float64)
            if not np.all(np.isfinite(x)):
                cells.append(f"{'diverged':>18}")
                continue
            cov_err = np.linalg.norm(np.cov(x.T) - check.cov) / np.linalg.norm(check.cov)
            cells.append(f"{1e3 * mmd2(x, check.reference):>9.3f} / {cov_err:<6.3f}")
        print("   " + f"{label:<18}" + "".join(cells))
    for tol in (1e-3, 1e-5):
        res = S.ode_sample(sde, gm.score_fn(sde), key, x_init, rtol=tol, atol=tol)
        x, nfe = res.x, res.nfe
        x = np.asarray(x, np.float64)
        cov_err = np.linalg.norm(np.cov(x.T) - check.cov) / np.linalg.norm(check.cov)
        print(f"   adaptive tsit5 rtol=atol={tol:g}: mean NFE {float(jnp.mean(nfe)):.0f}, "
              f"MMD^2 x 1e3 = {1e3 * mmd2(x, check.reference):.3f}, covariance error {cov_err:.3f}")


def network(batch, width, train_steps=0):
    """An MLP score network on the 2-D mixture: random weights (timing only) or briefly trained."""
    sde = VPSDE()
    net = MLPScoreNet(hidden=(width, width, width))
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.ones((1,)))
    if train_steps:
        model = make_score_model(net.apply, sde, prediction=net.prediction, labels="score_sde")
        tx = make_optimizer(learning_rate=3e-3, warmup_steps=50)
        step = make_train_step(get_dsm_loss_fn(sde, model, reduce_mean=True), tx, ema_rate=0.99)
        data = mixture_2d().sample(jax.random.PRNGKey(4), train_steps * 256).reshape(train_steps, 256, 2)
        state, _ = jax.jit(lambda s, d: jax.lax.scan(step, s, d))(create_train_state(jax.random.PRNGKey(5), params, tx), data)
        params = state.ema_params
    else:
        params = jax.tree_util.tree_map(lambda p: p + 0.01, params)  # a non-zero output layer
    return sde, make_score_fn(net.apply, params, sde, prediction="eps", labels="score_sde")


def overhead(batch, width, n_steps):
    sde, score_fn = network(batch, width)
    key = jax.random.PRNGKey(1)
    x_init = S.prior_sample(sde, key, (batch, 2))
    t = jnp.full((batch,), 0.5)
    one_call = jax.jit(score_fn)
    t_call = median_time(lambda: one_call(x_init, t), repeats=20)

    @jax.jit
    def scan_calls(x):
        def body(x, _):
            return x + 1e-3 * score_fn(x, t), None

        return jax.lax.scan(body, x, None, length=n_steps)[0]

    t_scan = median_time(lambda: scan_calls(x_init))
    print(f"\n2. Overhead, MLP 3x{width} on a batch of {batch} (CPU): one jitted network call {1e3 * t_call:.3f} ms; "
          f"a scan of {n_steps} bare network calls {1e3 * t_scan:.1f} ms")
    print(f"   {'sampler':<18}{'NFE':>6}{'wall ms':>10}{'/ (NFE x call)':>16}{'/ bare scan':>13}")
    for label, opts, grid in [s for s in SAMPLERS if s[0] in ("euler_maruyama", "ode_heun", "ddim", "dpmpp_2m", "dpmpp_2m_sde")]:
        step = S.get_step(label, sde, **opts)
        ts = S.TIME_GRIDS[grid](sde, n_steps // step.nfe)
        wall = median_time(lambda: S.sample(step, score_fn, key, x_init, ts, denoise=False).x)
        nfe = (n_steps // step.nfe) * step.nfe
        print(f"   {label:<18}{nfe:>6}{1e3 * wall:>10.1f}{wall / (nfe * t_call):>16.3f}{wall / t_scan * n_steps / nfe:>13.3f}")


def host_designs(label, sde, score_fn, x_init, n_steps, tol):
    """The original's host-side designs against ours, for one score function and batch."""
    from scipy.integrate import solve_ivp

    batch, dim = x_init.shape
    key = jax.random.PRNGKey(2)
    print(f"\n3. Host-side designs: {label}, batch {batch} x {dim}")

    # (a) Euler-Maruyama: a Python loop calling a jitted step, against one scan
    step = S.euler_maruyama(sde)
    ts = S.uniform_timesteps(sde, n_steps)
    keys = S.example_keys(key, batch)

    @jax.jit
    def one_step(x, k, t, t_next):
        tb, tnb = jnp.full((batch,), t), jnp.full((batch,), t_next)
        return step.update(S.base.fold_keys(keys, k), x, (), tb, tnb, score_fn)[0]

    def host_loop():
        x = x_init
        for k in range(n_steps):
            x = one_step(x, k, ts[k], ts[k + 1])
        return x

    def scan():
        return S.sample(step, score_fn, key, x_init, ts, denoise=False).x

    t_host, t_scan = median_time(host_loop, repeats=3), median_time(scan, repeats=3)
    same = np.allclose(np.asarray(host_loop()), np.asarray(scan()), atol=1e-4)
    print(f"   Euler-Maruyama, {n_steps} steps: host loop {1e3 * t_host:.0f} ms, one scan {1e3 * t_scan:.0f} ms, "
          f"ratio {t_host / t_scan:.2f}x (same samples: {same})")

    # (b) probability-flow ODE: scipy RK45 on the host calling a jitted drift, as the original did
    drift = jax.jit(lambda x, t: S.probability_flow_drift(sde, score_fn, x, jnp.full((batch,), t)))
    counter = {"n": 0}

    def rhs(t, y):
        counter["n"] += 1
        return np.asarray(drift(jnp.asarray(y.reshape(batch, dim), jnp.float32), t), np.float64).ravel()

    def scipy_solve(rtol, method="RK45"):
        counter["n"] = 0
        y0 = np.asarray(x_init, np.float64).ravel()
        sol = solve_ivp(rhs, (sde.T, sde.t_end), y0, rtol=rtol, atol=rtol, method=method)
        return sol.y[:, -1].reshape(batch, dim)

    with x64():  # the reference: our adaptive solve in float64 at rtol = atol = 1e-10
        res = S.ode_sample(sde, score_fn, None, jnp.asarray(x_init, jnp.float64), rtol=1e-10, atol=1e-10,
                           denoise=False, max_steps=100_000)
        ref = res.x
        ref = np.asarray(ref, np.float64)
    t_scipy = median_time(lambda: scipy_solve(tol), repeats=3)
    x_scipy = scipy_solve(tol)
    nfe_scipy = counter["n"]

    def ours():
        return S.ode_sample(sde, score_fn, None, x_init, rtol=tol, atol=tol, denoise=False)

    t0 = time.perf_counter()
    jax.block_until_ready(jax.jit(lambda x: S.ode_sample(sde, score_fn, None, x, rtol=tol, atol=tol, denoise=False).x)(x_init + 0.0))
    t_compile = time.perf_counter() - t0
    t_ours = median_time(lambda: ours().x, repeats=3)
    res = ours()
    x_ours, nfe_ours = res.x, res.nfe

    def err(x):
        return float(np.sqrt(np.mean((np.asarray(x, np.float64) - ref) ** 2)) / np.sqrt(np.mean(ref**2)))

    print(f"   PF-ODE, rtol=atol={tol:g}: scipy RK45 on the host {1e3 * t_scipy:.0f} ms, {nfe_scipy} NFE, "
          f"relative RMS error {err(x_scipy):.1e}")
    print(f"   {'':>27}diffrax Tsit5 in jit {1e3 * t_ours:.0f} ms, NFE {int(nfe_ours.max())} (max over examples), "
          f"relative RMS error {err(x_ours):.1e}; compile {t_compile:.1f} s")
    t_batch = median_time(lambda: S.ode_sample(sde, score_fn, None, x_init, rtol=tol, atol=tol, denoise=False, per_example=False).x, repeats=3)
    res = S.ode_sample(sde, score_fn, None, x_init, rtol=tol, atol=tol, denoise=False, per_example=False)
    x_b, nfe_b = res.x, res.nfe
    print(f"   {'':>27}diffrax Tsit5, one error norm for the batch (per_example=False) {1e3 * t_batch:.0f} ms, "
          f"NFE {int(nfe_b[0])}, relative RMS error {err(x_b):.1e}")
    print(f"   {'':>27}ratio scipy / ours = {t_scipy / t_ours:.1f}x per-example control, {t_scipy / t_batch:.1f}x batch control")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    ap.add_argument("--skip-accuracy", action="store_true", help="timings only")
    args = ap.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores")
    quick = args.quick
    if not args.skip_accuracy:
        accuracy_table(500 if quick else 2000, [10, 20, 50] if quick else [10, 20, 50, 100, 1000])
    overhead(256 if quick else 1024, 128 if quick else 512, 40 if quick else 200)
    sde = VPSDE()
    gm = mixture_2d()
    x_init = S.prior_sample(sde, jax.random.PRNGKey(3), (64 if quick else 256, 2))
    host_designs("exact mixture score (analytic, cheap)", sde, gm.score_fn(sde), x_init, 40 if quick else 200, 1e-5)
    _, net_score = network(256, 128 if quick else 256, train_steps=400)
    host_designs("MLP network (3 x 256, trained 400 steps)", sde, net_score, x_init, 40 if quick else 200, 1e-5)


if __name__ == "__main__":
    main()
