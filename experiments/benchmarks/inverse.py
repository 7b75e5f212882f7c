"""Inverse problems against the exact posterior: each method's bias, measured.

    python experiments/benchmarks/inverse.py [--quick] [--n 2000]
    python experiments/benchmarks/inverse.py --digits runs/digits [--num 200]   # PSNR and class accuracy

Mixtures of 3 anisotropic components (eigenvalues 0.05-0.5, means ~ N(0, 1.5^2)) in d = 2, 8 and 32
with their exact scores (VP process, float64). Measurements y = A x* + sigma_y z of one x* from the
prior: inpainting the first half of the coordinates, a random 4 x d matrix (2 x d in d = 2), and a
3-tap blur (d >= 8), all with sigma_y = 0.05. The exact posterior is a mixture in closed form
(diffjax.inverse.mixture_posterior). Every method draws n posterior samples at matched score
evaluations (20, 50, 100 updates): PiGDM's posterior score with DPM-Solver++(2M) SDE (stochastic)
and with the Euler-Maruyama step, DPS (ancestral step, scale 0.5 on ||y - A D||), DDNM (the paper's
form and the DDIM-eta form, eta 0.85), the seed paper's projection generalised to A (Euler-
Maruyama), RED-diff (one point estimate per example, each from its own noise draws: a MAP-like
estimate, so its covariance and energy columns show that it is not a posterior sampler), and the
twisted SMC with 256 and 1024 particles (one measurement: its weighted particles are resampled to n). Columns: the posterior-mean error |E x - m| / sqrt(tr C), the relative covariance
error |Cov - C|_F / |C|_F, the total-variation distance of the component weights (samples assigned by
the posterior's responsibilities), and the energy distance to exact posterior samples beside its
Monte-Carlo floor (two exact sets of n).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
from helpers import rotated_mixture  # noqa: E402

from diffjax import GaussianMixture, inverse  # noqa: E402
from diffjax import samplers as S  # noqa: E402
from diffjax.processes import VPSDE  # noqa: E402


mixture = rotated_mixture


def energy_distance(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

    def mean_dist(a, b):
        return np.mean(np.sqrt(np.maximum((a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2 * a @ b.T, 0)))

    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


def problems(d, sigma_y=0.05):
    rng = np.random.default_rng(100 + d)
    mask = np.zeros(d)
    mask[: d // 2] = 1.0
    out = {"inpaint half": inverse.inpainting(jnp.asarray(mask)),
           f"random {min(4, d)}x{d}": inverse.matrix(jnp.asarray(rng.normal(size=(min(4, d), d)) / np.sqrt(d)))}
    if d >= 8:
        out["blur 3-tap"] = inverse.blurring((d,), [0.25, 0.5, 0.25])
    return out, sigma_y


def oracle_matrix(op):
    """The dense A with the rows that measure something (a mask's unobserved rows are zero)."""
    A = np.asarray(inverse.dense(op))
    return A[np.abs(A).sum(1) > 0]


def scores(x, post: GaussianMixture, exact, floor):
    x = np.asarray(x, np.float64)
    w, m, c = (np.asarray(v) for v in (post.weights, post.means, post.covs))
    mean = w @ m
    cov = sum(wk * (ck + np.outer(mk - mean, mk - mean)) for wk, mk, ck in zip(w, m, c))
    resp = np.asarray(post.responsibilities(jnp.asarray(x)))
    return {"mean": np.linalg.norm(x.mean(0) - mean) / np.sqrt(np.trace(cov)),
            "cov": np.linalg.norm(np.cov(x.T) - cov) / np.linalg.norm(cov),
            "weights_tv": 0.5 * np.abs(resp.mean(0) - w).sum(),
            "energy": energy_distance(x, exact), "floor": floor}


def methods(sde, op, y, sigma_y):
    return {
        "PiGDM + DPM-Solver++(2M) SDE": lambda score: (S.dpmpp_2m_sde(sde), inverse.pigdm_score(sde, score, op, y, sigma_y)),
        "PiGDM + Euler-Maruyama": lambda score: (S.euler_maruyama(sde), inverse.pigdm_score(sde, score, op, y, sigma_y)),
        "DPS (ancestral, scale 0.5)": lambda score: (inverse.dps(S.ancestral_sampling(sde), op, y, 0.5), score),
        "DDNM (paper's form)": lambda score: (inverse.ddnm(sde, op, y), score),
        "DDNM (DDIM-eta form)": lambda score: (inverse.ddnm(sde, op, y, form="ddim"), score),
        "projection (Euler-Maruyama)": lambda score: (inverse.project(S.euler_maruyama(sde), op, y), score),
    }


def mixture_tables(dims, n, budgets):
    sde = VPSDE()
    for d in dims:
        gm = mixture(d)
        score = gm.score_fn(sde)
        ops, sigma_y = problems(d)
        for name, op in ops.items():
            key = jax.random.PRNGKey(d)
            x_star = gm.sample(key, 1)
            y1 = op.apply(x_star) + sigma_y * jax.random.normal(jax.random.fold_in(key, 1), (1, *op.y_shape))
            A = oracle_matrix(op)
            y_rows = np.asarray(y1).reshape(-1)[np.abs(np.asarray(inverse.dense(op))).sum(1) > 0]
            post, log_z = inverse.mixture_posterior(gm, jnp.asarray(A), jnp.asarray(y_rows), sigma_y)
            exact = np.asarray(post.sample(jax.random.PRNGKey(7), n))
            floor = energy_distance(np.asarray(post.sample(jax.random.PRNGKey(8), n)), exact)
            print(f"\n== d = {d}, {name}, sigma_y = {sigma_y}: posterior weights {np.round(np.asarray(post.weights), 3)}, "
                  f"log p(y) = {float(log_z):.3f}; energy-distance floor {floor:.2e} (n = {n})")
            print(f"{'method':34s}{'NFE':>5s}{'mean err':>10s}{'cov err':>9s}{'weights TV':>11s}{'energy':>10s}")
            y = jnp.repeat(y1, n, axis=0)
            x_T = S.prior_sample(sde, key, (n, d), jnp.float64)
            for label, make in methods(sde, op, y, sigma_y).items():
                for steps in budgets:
                    step, s_fn = make(score)
                    ts = S.uniform_timesteps(sde, steps, 1e-3, dtype=jnp.float64)
                    x = S.sample(step, s_fn, key, x_T, ts).x
                    r = scores(x, post, exact, floor)
                    print(f"{label:34s}{steps + 1:5d}{r['mean']:10.4f}{r['cov']:9.3f}{r['weights_tv']:11.3f}"
                          f"{r['energy']:10.2e}", flush=True)
            for steps in budgets:   # RED-diff: a point estimate per example (its spread is not a posterior's)
                ts = S.uniform_timesteps(sde, steps, 1e-3, dtype=jnp.float64)
                r = scores(inverse.red_diff(sde, score, key, op, y, ts), post, exact, floor)
                print(f"{'RED-diff (point estimates)':34s}{steps:5d}{r['mean']:10.4f}{r['cov']:9.3f}"
                      f"{r['weights_tv']:11.3f}{r['energy']:10.2e}", flush=True)
            for particles in (256, 1024):
                steps = budgets[-1]
                t0 = time.perf_counter()
                r_smc = inverse.twisted_smc(sde, score, key, op, y1, sigma_y,
                                            S.uniform_timesteps(sde, steps, 1e-3, dtype=jnp.float64), particles)
                w = np.exp(np.asarray(r_smc.log_weights))
                idx = np.random.default_rng(0).choice(particles, n, p=w / w.sum())
                r = scores(np.asarray(r_smc.x)[idx], post, exact, floor)
                print(f"{f'twisted SMC, {particles} particles':34s}{steps + 1:5d}{r['mean']:10.4f}{r['cov']:9.3f}"
                      f"{r['weights_tv']:11.3f}{r['energy']:10.2e}   log p(y) estimate {float(r_smc.log_evidence):.3f}, "
                      f"min ESS {float(np.min(r_smc.ess)):.0f}, {time.perf_counter() - t0:.0f} s", flush=True)


def digits_table(workdir: str, num: int, picture_dir: str) -> None:
    """Inpainting (left half, centre square) and 2x super-resolution of the first ``num`` test digits
    (sigma_y = 0.02 in [0, 1] units) by every method: PSNR against the truth and the digits classifier's
    accuracy on the reconstructions (the truth's own accuracy and the pseudo-inverse A^+ y's beside
    them); a picture per problem (rows: truth, A^+ y, each method)."""
    import tempfile

    from diffjax import data, images, metrics
    from diffjax.run import load_run
    from diffjax.run.inverse import METHODS, operator_for, reconstruct, write_measurement

    run = load_run(workdir)
    levels, labels = data.digits_split("test", run.config.data.image_size)
    truth = data.levels_to_model(levels[:num].astype(np.float32), data.DIGITS_LEVELS, (0.0, 1.0))
    labels = np.asarray(labels[:num])
    model, params, acc = metrics.digits_classifier(os.path.join(workdir, "eval"))

    def accuracy(x):
        _, probs = metrics.digits_features(model, params, x)
        return float(np.mean(np.argmax(probs, axis=1) == labels))

    def psnr(x):
        mse = np.mean((np.asarray(x, np.float64) - truth) ** 2, axis=(1, 2, 3))
        return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-12))))

    shape = truth.shape[1:]
    centre = np.ones(shape, np.float32)
    centre[2:6, 2:6] = 0.0
    problems_ = [("inpaint left half", "inpaint", None), ("inpaint centre square", "inpaint", centre),
                 ("super-resolution 2x", "superres", None)]
    print(f"{num} test digits; digits classifier accuracy on the truth: {accuracy(truth):.3f} "
          f"({100 * acc:.1f} % on the whole test split)")
    os.makedirs(picture_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for label, kind, mask in problems_:
            path = os.path.join(tmp, f"{kind}.npz")
            y = write_measurement(path, kind, truth, sigma_y=0.02, mask=mask)
            op = operator_for(kind, shape, mask)
            naive = np.clip(np.asarray(op.pinv(jnp.asarray(y))), 0, 1)
            rows = [truth[:8], naive[:8]]
            print(f"\n== {label} (sigma_y = 0.02)\n{'method':12s}{'PSNR dB':>9s}{'accuracy':>10s}{'passes':>8s}{'s':>6s}")
            print(f"{'A^+ y':12s}{psnr(naive):9.2f}{accuracy(naive):10.3f}{0:8d}")
            for method in METHODS:
                t0 = time.perf_counter()
                x, nfe, _ = reconstruct(run, jax.random.PRNGKey(0), path, method, particles=16)
                rows.append(x[:8])
                print(f"{method:12s}{psnr(x):9.2f}{accuracy(x):10.3f}{nfe:8d}{time.perf_counter() - t0:6.0f}",
                      flush=True)
            grid = images.image_grid(np.concatenate(rows), ncols=8)
            out = os.path.join(picture_dir, f"digits_{kind}{'_centre' if mask is not None else ''}.png")
            images.write_png(out, grid)
            print(f"picture -> {out} (rows: truth, A^+ y, {', '.join(METHODS)})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="d = 2 and 8, 20 and 100 updates")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--digits", default=None, help="a trained digits run: its reconstructions instead")
    p.add_argument("--num", type=int, default=64, help="test digits per problem")
    p.add_argument("--pictures", default="docs/inverse")
    args = p.parse_args()
    if args.digits:
        digits_table(args.digits, args.num, args.pictures)
        return
    dims, budgets = ((2, 8), (20, 100)) if args.quick else ((2, 8, 32), (20, 50, 100))
    mixture_tables(dims, args.n, budgets)


if __name__ == "__main__":
    main()
