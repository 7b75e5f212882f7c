"""One and two steps: distilled students against the teacher's own probability flow, on Gaussian
mixtures whose score is exact (so a student's error is the distillation's, not the teacher's).

    python experiments/benchmarks/distill.py [--dims 2 8] [--iters 4000] [--json out.json]
    python experiments/benchmarks/distill.py --digits runs/digits --students runs/digits_cd runs/digits_pd

Mixtures: 2-D (the tests' two components) and 8-D (three rotated anisotropic components). The
teacher is the mixture's exact score; its rows are the probability flow at 1, 2, 4 and 10
evaluations with the best training-free solver of diffjax (UniPC-3 on the log-SNR grid, with and
without Gaussian teleportation by the default rule; the best of them per NFE). Students (MLPs of
3 x 256, trained from scratch for ``--iters`` steps of batch 512, Adam 1e-3 with cosine decay, EMA 0.999):

- CD: consistency distillation, ECT's continuous-time schedule, the teacher's Heun step (EDM process);
- CT: consistency training from data samples (same schedule, no teacher);
- PD: progressive distillation 16 -> 8 -> 4 -> 2 -> 1 DDIM steps (the first teacher: 32 DDIM steps of
  the exact score), ``--iters`` / 4 steps per halving;
- reflow: 2-rectified flow on 20 000 pairs from the exact rectified-flow teacher (UniPC-3, 40 steps),
  sampled with 1, 2, 4 Euler steps;
- MeanFlow: the average-velocity flow map trained from data, 1, 2, 4 jumps.

Scores: energy distance to 4000 exact samples with its Monte-Carlo floor (two exact sets of 4000),
and the largest error of the per-mode weights (each sample assigned to its most responsible
component). Every sampler evaluated on the same 4000 prior draws.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))
from helpers import mixture_2d, mixture_moments, rotated_mixture  # noqa: E402
from inverse import energy_distance  # noqa: E402

from diffjax import GaussianMixture, distill, models, training  # noqa: E402
from diffjax import samplers as S  # noqa: E402
from diffjax.processes import EDM, RectifiedFlow  # noqa: E402
from diffjax.score import make_score_model  # noqa: E402

N_EVAL = 4000


def as64(gm):
    return GaussianMixture(*(jnp.asarray(v, jnp.float64) for v in (gm.weights, gm.means, gm.covs)))


def mode_error(gm, x):
    resp = np.asarray(gm.responsibilities(jnp.asarray(x)))
    counts = np.bincount(resp.argmax(1), minlength=len(gm.weights)) / len(x)
    return float(np.max(np.abs(counts - np.asarray(gm.weights))))


def scores(gm, x, exact):
    x = np.asarray(x, np.float64)
    if not np.all(np.isfinite(x)):
        return {"energy": float("nan"), "modes": float("nan")}
    return {"energy": energy_distance(x, exact), "modes": mode_error(gm, x)}


def moment_fit(gm):
    mu, cov = mixture_moments(gm)
    lam, u = np.linalg.eigh(np.asarray(cov))
    return S.GaussianFit(jnp.asarray(mu), jnp.asarray(lam[::-1].copy()), jnp.asarray(u[:, ::-1].copy()), 0.0)


def teacher_rows(sde, gm, z, exact):
    """The teacher's probability flow at 1, 2, 4, 10 NFE: best of UniPC-3 with/without teleportation."""
    score, fit = gm.score_fn(sde), moment_fit(gm)
    x_T = z * sde.prior_std
    out = {}
    for nfe in (1, 2, 4, 10):
        cands = {}
        step = S.unipc(sde, order=3)
        if nfe >= 2:
            ts = S.log_snr_timesteps(sde, nfe - 1, dtype=jnp.float64)
            cands["unipc3"] = S.FittedSolver(step, ts)(score, jax.random.PRNGKey(0), x_T).x
        if nfe >= 2:
            t_skip = S.teleport_t_skip(sde, fit, None, nfe=nfe)
            ts = jnp.concatenate([jnp.array([sde.T]), S.log_snr_timesteps(sde, nfe - 1, dtype=jnp.float64,
                                                                          t_max=t_skip)])
            cands["unipc3 + teleport"] = S.FittedSolver(step, ts, fit)(score, jax.random.PRNGKey(0), x_T).x
        else:   # one evaluation: the Gaussian's flow to t_skip, then Tweedie's denoiser there (kappa swept)
            for kappa in (0.5, 1.0, 2.0, 4.0):
                t_skip = S.teleport_t_skip(sde, fit, kappa)
                x = S.gaussian_teleport(sde, x_T, jnp.asarray(sde.T, jnp.float64), jnp.asarray(t_skip, jnp.float64), fit)
                cands[f"teleport (kappa {kappa}) + denoise"] = S.tweedie_denoise(
                    sde, score, x, jnp.full((x.shape[0],), t_skip, jnp.float64))
        res = {k: scores(gm, v, exact) for k, v in cands.items()}
        best = min(res, key=lambda k: res[k]["energy"])
        out[nfe] = {"solver": best, **res[best]}
    return out


def fit(loss_fn, params, batch_fn, iters, lr=1e-3, takes_step=False, chunk=200, seed=0):
    """Adam with cosine decay, EMA 0.999; ``batch_fn(key) -> batch``; returns the EMA params."""
    sched = optax.cosine_decay_schedule(lr, iters)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sched))
    step_fn = training.make_train_step(loss_fn, opt, ema_rate=0.999, loss_takes_step=takes_step)
    state = training.create_train_state(jax.random.PRNGKey(seed), params, opt)

    @jax.jit
    def run(state, key):
        def body(st, k):
            st, m = step_fn(st, batch_fn(k))
            return st, m["loss"]
        return jax.lax.scan(body, state, jax.random.split(key, chunk))

    key = jax.random.PRNGKey(seed + 1)
    for i in range(max(1, iters // chunk)):
        key, k = jax.random.split(key)
        state, losses = run(state, k)
    return state.ema_params, float(jnp.mean(losses))


def _score_of(sde, denoise):
    return jax.tree_util.Partial(_denoiser_score, sde, denoise)


def _denoiser_score(sde, denoise, x, t):
    a, s = sde.marginal_coeffs(t)
    return (a[:, None] * denoise(x, t) - x) / (s ** 2)[:, None]


def mlp_denoiser(sde, prediction="edm"):
    net = models.MLPScoreNet(hidden=(256, 256, 256), prediction=prediction)
    # EDM's preconditioning; the Fourier time embedding reads log(sigma)
    return net, distill.network_denoiser(make_score_model(net.apply, sde, prediction=prediction, labels="sigma"))


def students(gm, z, exact, iters):
    d = gm.dim
    out = {}
    data_batch = lambda k: {"x": gm.sample(k, 512)}  # noqa: E731
    sde = EDM()
    x_T = z * sde.prior_std

    # the students start as the teacher, as they do from a trained model (ECT, PD): an MLP regressed
    # onto the exact denoiser with EDM's noise distribution and weighting (iters / 2 steps)
    net, student = mlp_denoiser(sde)
    teacher = distill.score_denoiser(sde, gm.score_fn(sde))

    def regression(key, params, batch):
        x0 = batch["x"]
        k_s, k_z = jax.random.split(key)
        sigma = jnp.exp(-1.2 + 1.2 * jax.random.normal(k_s, (x0.shape[0],), x0.dtype))
        xt = x0 + sigma[:, None] * jax.random.normal(k_z, x0.shape, x0.dtype)
        w = (sigma ** 2 + 0.25) / (0.5 * sigma) ** 2
        loss = jnp.mean(w[:, None] * (student(params, xt, sigma) - teacher(xt, sigma)) ** 2)
        return loss, {"loss": loss}

    t0 = time.perf_counter()
    init, _ = fit(regression, models.init_params(net, jax.random.PRNGKey(1), (d,)), data_batch, iters // 2)
    init_seconds = time.perf_counter() - t0
    out["teacher MLP (UniPC-3)"] = {"seconds": init_seconds, "rows": {n: scores(
        gm, S.FittedSolver(S.unipc(sde, order=3), S.log_snr_timesteps(sde, n - 1, dtype=jnp.float64))(
            _score_of(sde, jax.tree_util.Partial(student, init)), jax.random.PRNGKey(0), x_T).x, exact)
        for n in (2, 4)}}
    for name, kw in (("CD", dict(teacher=teacher)), ("CT", {})):
        t0 = time.perf_counter()
        params = init
        loss_fn = distill.consistency_loss_fn(sde, student, stage_steps=max(iters // 8, 1), **kw)
        params, _ = fit(loss_fn, params, data_batch, iters, takes_step=True)
        f = jax.tree_util.Partial(student, params)
        row = {}
        for n in (1, 2, 4):
            x = distill.consistency_sample(sde, f, jax.random.PRNGKey(5), x_T, distill.consistency_timesteps(sde, n)).x
            row[n] = scores(gm, x, exact)
        out[name] = {"rows": row, "seconds": time.perf_counter() - t0}

    # progressive distillation 16 -> 1
    t0 = time.perf_counter()
    params = init
    teacher_fn, row, n = teacher, {}, 16
    while n >= 1:
        loss_fn = distill.progressive_loss_fn(sde, student, teacher_fn, n)
        params, _ = fit(loss_fn, params, data_batch, max(iters // 4, 200), lr=3e-4)
        teacher_fn = jax.tree_util.Partial(student, params)
        if n in (1, 2, 4):
            row[n] = scores(gm, distill.ddim_student_sample(sde, teacher_fn, x_T, n).x, exact)
        n //= 2
    out["PD"] = {"rows": row, "seconds": time.perf_counter() - t0}

    # reflow on pairs from the exact rectified-flow teacher
    t0 = time.perf_counter()
    rf = RectifiedFlow()
    score_rf = gm.score_fn(rf)
    z_pairs = jax.random.normal(jax.random.PRNGKey(7), (20_000, d), jnp.float64)
    ts = S.log_snr_timesteps(rf, 40, dtype=jnp.float64)
    zp, xp = distill.reflow_pairs(lambda x: S.FittedSolver(S.unipc(rf, order=3), ts)(score_rf, jax.random.PRNGKey(0), x).x,
                                  rf, z_pairs)
    vnet = models.MLPScoreNet(hidden=(256, 256, 256), embedding_type="positional")
    velocity = lambda p, x, t: vnet.apply(p, x, 1000.0 * t)  # noqa: E731
    params = vnet.init(jax.random.PRNGKey(3), zp[:2], jnp.ones(2))
    pair_batch = lambda k: (lambda i: {"x": xp[i], "z": zp[i]})(jax.random.randint(k, (512,), 0, xp.shape[0]))  # noqa: E731
    params, _ = fit(distill.reflow_loss_fn(velocity), params, pair_batch, iters)
    v = jax.tree_util.Partial(velocity, params)
    out["reflow"] = {"rows": {n: scores(gm, distill.euler_sample(v, z, n).x, exact) for n in (1, 2, 4)},
                     "straightness": float(jnp.mean(distill.straightness(v, z[:1000], 100))) / d,
                     "seconds": time.perf_counter() - t0}

    # MeanFlow from data
    t0 = time.perf_counter()
    mnet = models.MLPFlowMap(hidden=(256, 256, 256))
    params = mnet.init(jax.random.PRNGKey(4), z[:2], jnp.ones(2), jnp.zeros(2))
    params, _ = fit(distill.meanflow_loss_fn(mnet.apply), params, data_batch, iters)
    u = jax.tree_util.Partial(lambda p, zz, r, t: mnet.apply(p, zz, t, t - r), params)
    out["MeanFlow"] = {"rows": {n: scores(gm, distill.meanflow_sample(u, z, n).x, exact) for n in (1, 2, 4)},
                       "seconds": time.perf_counter() - t0}
    return out


def digits_table(teacher: str, students: list, num: int) -> None:
    """digits-FID and KID (x1e3) of ``num`` samples: the teacher with UniPC-3 + teleportation at 5, 10
    and 20 evaluations, each student at 1, 2 and 4 steps (the progressive distillation's own students;
    a consistency student from T and from the Gaussian teleport), and the test split's floor."""
    from diffjax.run import evaluate, load_run
    from diffjax.run.distill import resolve_student

    def cell(run):
        t0 = time.perf_counter()
        ev = evaluate(run, jax.random.PRNGKey(1), num)
        return ev, time.perf_counter() - t0

    print(f"\n== digits: digits-FID (KID x1e3) of {num} samples")
    for nfe in (5, 10, 20):
        ev, sec = cell(load_run(teacher, sampling=dict(method="unipc", order=3, grid="log_snr", num_steps=nfe - 1,
                                                       teleport="auto")))
        print(f"teacher, UniPC-3 + teleport, {ev['nfe']:2d} NFE: {ev['samples']['fid']:.3f} "
              f"({1e3 * ev['samples']['kid']:.1f})   [{sec:.0f} s]; test split's own {ev['test_split']['fid']:.3f} "
              f"({1e3 * ev['test_split']['kid']:.1f})")
    for workdir in students:
        for n in (1, 2, 4):
            try:
                path = resolve_student(workdir, n)
            except ValueError:
                continue
            method = load_run(path).config.distill.method
            # a consistency student from T, and from the Gaussian teleport (its default since issue 32)
            for teleport in (("off", "auto") if method == "consistency" else ("off",)):
                ev, sec = cell(load_run(path, sampling=dict(num_steps=n, teleport=teleport)))
                print(f"{workdir} ({method}{', teleport ' + teleport if method == 'consistency' else ''}), {n} "
                      f"step{'s' if n > 1 else ' '}: {ev['samples']['fid']:.3f} ({1e3 * ev['samples']['kid']:.1f})"
                      f"   [{sec:.0f} s]")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 8])
    p.add_argument("--iters", type=int, default=4000)
    p.add_argument("--json", default="")
    p.add_argument("--digits", default="", help="a trained digits run (the teacher)")
    p.add_argument("--students", nargs="*", default=[], help="student work directories of --digits")
    p.add_argument("--num", type=int, default=1000)
    args = p.parse_args()
    if args.digits:
        digits_table(args.digits, args.students, args.num)
        return
    report = {}
    for d in args.dims:
        gm = as64(mixture_2d() if d == 2 else rotated_mixture(d, seed=3))
        exact = np.asarray(gm.sample(jax.random.PRNGKey(100), N_EVAL))
        floor = energy_distance(np.asarray(gm.sample(jax.random.PRNGKey(101), N_EVAL)), exact)
        z = jax.random.normal(jax.random.PRNGKey(11), (N_EVAL, d), jnp.float64)
        t0 = time.perf_counter()
        teach = teacher_rows(EDM(), gm, z, exact)
        stud = students(gm, z, exact, args.iters)
        report[d] = {"floor": floor, "teacher": teach, "students": stud}
        print(f"\n== {d}-D mixture ({len(gm.weights)} components), exact score; energy distance (floor {floor:.4f}) "
              f"| largest per-mode weight error; {time.perf_counter() - t0:.0f} s")
        print(f"{'':28s}" + "".join(f"{f'{n} NFE':>20s}" for n in (1, 2, 4, 10)))
        print(f"{'teacher PF (best free)':28s}" + "".join(
            f"{teach[n]['energy']:>12.4f} | {teach[n]['modes']:.3f}" for n in (1, 2, 4, 10)))
        for name, s in stud.items():
            extra = f"  (straightness/d {s['straightness']:.4f})" if "straightness" in s else ""
            label = f"{name} ({s['seconds']:.0f} s)"
            print(f"{label:28s}"
                  + "".join(f"{s['rows'][n]['energy']:>12.4f} | {s['rows'][n]['modes']:.3f}" if n in s["rows"]
                            else f"{'':>20s}" for n in (1, 2, 4)) + extra)
        print("teacher solvers: " + ", ".join(f"{n}: {teach[n]['solver']}" for n in (1, 2, 4, 10)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=float)


if __name__ == "__main__":
    main()
