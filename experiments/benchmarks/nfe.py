"""Error versus score evaluations for the deterministic samplers, on an anisotropic 3-D Gaussian mixture
in the EDM setup (issue 17's protocol).

    python experiments/benchmarks/nfe.py [--n 2000] [--quick] [--figure nfe.png]
    python experiments/benchmarks/nfe.py --digits runs/digits [--num 1000]   # digits-FID vs NFE of a trained run

Setup: EDM process (a = 1, sigma = t from 80 to 0.002), float64, the exact mixture score, x_T from
the prior; error = mean ||x - x_ref|| over the points, against a tight solve of the probability-flow
ODE from the same x_T (UniPC-3 with 4000 log-SNR steps; its own accuracy, against 2000 steps, is
printed), both finished with the exact Tweedie denoiser at 0.002. NFE counts every score evaluation,
the final denoising one included. Teleportation maps x_T to t_skip with the mixture's moment-matched
Gaussian (kappa = sigma_skip / sqrt(lam_max)) and lays the grid over [t_skip, 0.002].
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
from helpers import mixture_3d, mixture_moments  # noqa: E402

from diffjax import GaussianMixture  # noqa: E402
from diffjax import samplers as S  # noqa: E402
from diffjax.processes import EDM  # noqa: E402

NFES = (5, 6, 8, 10, 15, 20, 50)
SAMPLERS = {
    # name: (constructor, score evaluations per update)
    "ddim": (lambda sde: S.ddim(sde), 1),
    "edm_heun": (lambda sde: S.edm_heun(sde), 2),
    "dpmpp_2m": (lambda sde: S.dpmpp_2m(sde), 1),
    "dpmpp_3m": (lambda sde: S.dpmpp_3m(sde), 1),
    "dpmpp_3m_ref": (lambda sde: S.dpmpp_3m(sde, weighting="reference"), 1),
    "unipc2_bh2": (lambda sde: S.unipc(sde, order=2), 1),
    "unipc3_bh1": (lambda sde: S.unipc(sde, order=3, variant="bh1"), 1),
    "unipc3_bh2": (lambda sde: S.unipc(sde, order=3), 1),
}
GRIDS = ("karras", "log_snr", "fitted")


def mixture64() -> GaussianMixture:
    gm = mixture_3d()
    return GaussianMixture(*(jnp.asarray(v, jnp.float64) for v in (gm.weights, gm.means, gm.covs)))


def moment_fit(gm: GaussianMixture) -> S.GaussianFit:
    mu, cov = mixture_moments(gm)
    lam, u = np.linalg.eigh(cov)
    return S.GaussianFit(jnp.asarray(mu), jnp.asarray(lam[::-1].copy()), jnp.asarray(u[:, ::-1].copy()), 0.0)


def run(step, score_fn, x_T, n_updates, grid, fit, t_skip):
    sde = step.sde
    t_max = sde.T if t_skip is None else t_skip
    if grid == "fitted":
        ts = S.fitted_timesteps(step, n_updates, fit, t_max=t_max)
    else:
        ts = S.TIME_GRIDS[grid](sde, n_updates, dtype=jnp.float64, t_max=t_max)
    x = x_T if t_skip is None else S.gaussian_teleport(sde, x_T, sde.T, t_skip, fit)
    res = S.sample(step, score_fn, jax.random.PRNGKey(0), x, ts)
    out, nfe = res.x, res.nfe
    return out, int(nfe[0])


DIGITS_SAMPLERS = [("ddim", 0, "log_snr"), ("dpmpp_2m", 0, "log_snr"), ("dpmpp_3m", 3, "log_snr"),
                   ("unipc", 3, "log_snr"), ("unipc", 3, "fitted")]


def digits_sweep(workdir: str, num: int, nfes=(10, 20)) -> None:
    """digits-FID (KID x1e3) of a trained run's samples for DDIM, DPM-Solver++(2M/3M) and UniPC-3 at
    each NFE, with and without teleportation (the default kappa rule), side by side."""
    from diffjax.run import evaluate, load_run

    print(f"digits-FID (KID x1e3) of {num} samples from {workdir}, against the training split")
    header = f"{'sampler':22s}" + "".join(f"{f'{n} NFE':>16s}{f'{n} NFE teleport':>22s}" for n in nfes)
    print(header)
    floor = None
    for method, order, grid in DIGITS_SAMPLERS:
        cells = []
        for nfe in nfes:
            for teleport in ("off", "auto"):
                overrides = [f"sampling.method={method!r}", f"sampling.grid={grid!r}", f"sampling.num_steps={nfe - 1}",
                             f"sampling.order={order}", f"sampling.teleport={teleport!r}"]
                ev = evaluate(load_run(workdir, None, overrides), jax.random.PRNGKey(0), num)
                floor = ev["test_split"]["fid"]
                r = ev["samples"]
                cells.append(f"{r['fid']:8.3f} ({1e3 * r['kid']:4.1f})")
        label = f"{method}{order or ''} / {grid}"
        print(f"{label:22s}" + "".join(f"{c:>16s}" if i % 2 == 0 else f"{c:>22s}" for i, c in enumerate(cells)), flush=True)
    print(f"(the test split's own digits-FID with as many examples: {floor:.3f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--digits", default=None, help="a trained digits run: sweep its digits-FID instead")
    p.add_argument("--num", type=int, default=1000, help="samples per digits evaluation")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--quick", action="store_true", help="fewer samplers and grids")
    p.add_argument("--kappas", default="1.5,2,3,5,auto", help="teleport sigma_skip / sqrt(lam_max) to try "
                   "(auto: the default rule, diffjax.samplers.teleport.default_kappa of the NFE)")
    p.add_argument("--figure", default=None, help="write an error-vs-NFE figure (PNG)")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="only draw --figure from a --json file of an earlier run")
    args = p.parse_args()
    if args.plot:
        with open(args.plot) as f:
            saved = json.load(f)
        plot(saved["rows"], saved["reference_accuracy"], args.figure or "nfe.png")
        return
    if args.digits:
        digits_sweep(args.digits, args.num)
        return
    sde, gm = EDM(), mixture64()
    fit = moment_fit(gm)
    score_fn = gm.score_fn(sde)
    x_T = S.prior_sample(sde, jax.random.PRNGKey(1), (args.n, 3), jnp.float64)
    ref_step = S.unipc(sde, order=3)
    t0 = time.perf_counter()
    ref = S.sample(ref_step, score_fn, jax.random.PRNGKey(0), x_T, S.log_snr_timesteps(sde, 4000, dtype=jnp.float64)).x
    ref2 = S.sample(ref_step, score_fn, jax.random.PRNGKey(0), x_T, S.log_snr_timesteps(sde, 2000, dtype=jnp.float64)).x
    ref_acc = float(jnp.mean(jnp.linalg.norm(ref - ref2, axis=1)))
    print(f"reference: UniPC-3, 4000 log-SNR steps; mean |ref(4000) - ref(2000)| = {ref_acc:.1e} "
          f"({time.perf_counter() - t0:.0f} s)")
    lam_max = float(fit.eigvals[0])
    kappas = [k if k == "auto" else float(k) for k in args.kappas.split(",")]
    print(f"data: sqrt(lam_max) = {lam_max ** 0.5:.3f}; teleport sigma_skip = kappa sqrt(lam_max) for kappa in {kappas}")
    samplers = ["dpmpp_2m", "dpmpp_3m", "unipc3_bh2"] if args.quick else list(SAMPLERS)
    grids = ("karras", "fitted") if args.quick else GRIDS
    rows = []
    for name, grid, teleport in itertools.product(samplers, grids, [None] + kappas):
        make, per = SAMPLERS[name]
        step = make(sde)
        for nfe_target in NFES:
            n_updates = (nfe_target - 1) // per
            if n_updates < 1:
                continue
            t_skip = (None if teleport is None else
                      S.teleport_t_skip(sde, fit, None if teleport == "auto" else teleport, nfe=nfe_target))
            x, nfe = run(step, score_fn, x_T, n_updates, grid, fit, t_skip)
            err = float(jnp.mean(jnp.linalg.norm(x - ref, axis=1)))
            rows.append({"sampler": name, "grid": grid, "kappa": teleport, "nfe": nfe, "target": nfe_target, "error": err})
        print(f"{name:13s} {grid:8s} teleport {'off' if teleport is None else f'kappa={teleport}':9s} " +
              " ".join(f"{r['error']:.4f}@{r['nfe']}" for r in rows if r["sampler"] == name and r["grid"] == grid
                       and r["kappa"] == teleport), flush=True)
    print("\nbest per NFE (error, sampler / grid / teleport):")
    for target in NFES:
        cands = [r for r in rows if r["target"] == target and r["nfe"] <= target]
        if not cands:
            continue
        best = min(cands, key=lambda r: r["error"])
        base = min((r for r in cands if r["kappa"] is None and r["grid"] == "karras" and r["sampler"] == "dpmpp_2m"),
                   key=lambda r: r["error"], default=None)
        tele = "no teleport" if best["kappa"] is None else f"teleport kappa {best['kappa']}"
        print(f"  NFE {target:3d}: {best['error']:.4f}  {best['sampler']} / {best['grid']} / {tele}"
              + (f"   (dpmpp_2m / karras: {base['error']:.4f}, ratio {base['error'] / best['error']:.1f}x)" if base else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"reference_accuracy": ref_acc, "rows": rows}, f, indent=1)
    if args.figure:
        plot(rows, ref_acc, args.figure)


GOALS = {10: 0.15, 20: 0.025, 50: 0.0015}  # issue 17's goal column
CURVES = [("dpmpp_2m", "karras", None, "dpmpp_2m / karras (before)", "k", "--"),
          ("unipc3_bh2", "karras", None, "UniPC-3 / karras", "tab:blue", "-"),
          ("unipc3_bh2", "fitted", None, "UniPC-3 / fitted", "tab:green", "-"),
          ("unipc3_bh2", "fitted", "auto", "UniPC-3 / fitted + teleport (rule)", "tab:red", "-"),
          ("dpmpp_3m", "fitted", "auto", "DPM-Solver++(3M) / fitted + teleport (rule)", "tab:orange", "-"),
          ("edm_heun", "karras", None, "EDM Heun / karras", "tab:gray", ":")]


def plot(rows, ref_acc, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, grid, teleport, label, color, style in CURVES:
        pts = [(r["nfe"], r["error"]) for r in rows if r["sampler"] == name and r["grid"] == grid and r["kappa"] == teleport]
        if pts:
            ax.loglog(*zip(*sorted(pts)), marker="o", color=color, ls=style, label=label)
    ax.scatter(list(GOALS), list(GOALS.values()), marker="*", s=150, color="purple", zorder=5, label="issue 17 goals")
    ax.set_xlabel("score evaluations (with the final denoise)")
    ax.set_ylabel("mean |x - x_ref|")
    ax.set_title(f"3-D mixture, EDM setup, float64 (reference accurate to {ref_acc:.0e})")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"figure -> {path}")


if __name__ == "__main__":
    main()
