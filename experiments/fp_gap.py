"""The ODE–SDE gap and the Fokker–Planck regulariser (Deveney et al. 2025; Lai et al. 2023): the same
network trained with DSM plus w x the score Fokker–Planck residual, w in {0, 0.1, 1}, then samples
from the probability-flow ODE (adaptive) and from the reverse SDE (Euler–Maruyama, many steps)
from the same prior draws.

    python experiments/fp_gap.py [--part toys|digits|both] [--out DIR]

Toys (2-D, MLP, VP): sliced Wasserstein-2 between the ODE and SDE samples, and of each to fresh data
(beside the data-to-data floor at the same size), the test NLL (nats, probability-flow ODE) and the
model's relative FP residual (rms |R| / rms |g^2 s| averaged over t; :mod:`diffjax.fokker_planck`).
Digits (the default DDPM++ job, fewer steps): digits-FID of ODE and of SDE samples, test bits/dim
and the relative residual. The regulariser's time weighting is sigma^4/g^4 (the default), computed
on the same x_t as DSM, on ``--toy-fp-examples`` / ``--digits-fp-examples`` examples of each batch.
Runs are kept under --out, so a second call only evaluates.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from diffjax import configs, data
from diffjax.run import evaluate, evaluate_likelihood, generate, load_run, train
from diffjax.run.evaluate import evaluate_fp_residual

WEIGHTS = (0.0, 0.1, 1.0)
TOYS = ("gaussian_mixture", "two_moons", "checkerboard")


def sliced_w2(x: np.ndarray, y: np.ndarray, num_projections: int = 512, seed: int = 0) -> float:
    """Sliced Wasserstein-2 between two equal-size samples: sqrt of the mean over random unit
    directions of the squared 1-D W2 (sorted projections)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = min(len(x), len(y))
    x, y = x[:n], y[:n]
    dirs = np.random.default_rng(seed).normal(size=(num_projections, x.shape[1]))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    px, py = np.sort(x @ dirs.T, axis=0), np.sort(y @ dirs.T, axis=0)
    return float(np.sqrt(np.mean((px - py) ** 2)))


def _samplers(sde_steps: int) -> dict:
    return {"ode": ["sampling.method=ode"],
            "sde": ["sampling.method=euler_maruyama", "sampling.grid=uniform", f"sampling.num_steps={sde_steps}"]}


def _fp_summary(run, num: int) -> dict:
    """The relative residual rms |R| / rms |g^2 s| at each t of FP_TIMES (it is largest at small t)."""
    ev = evaluate_fp_residual(run, jax.random.PRNGKey(7), "test", num)
    return {f"{t:.2f}": r for t, r in zip(ev["t"], ev["relative"])}


def run_toys(args) -> list[dict]:
    rows = []
    for toy in args.toys:
        reference = np.asarray(data.toy_2d(toy, jax.random.PRNGKey(123), args.toy_num))
        floor = sliced_w2(reference, np.asarray(data.toy_2d(toy, jax.random.PRNGKey(456), args.toy_num)))
        for w in args.weights:
            workdir = os.path.join(args.out, f"toy_{toy}_w{w:g}")
            config = configs.load_config("toy2d", [
                f"data.dataset=toy:{toy}", f"training.n_iters={args.toy_steps}", "training.snapshot_freq=100000",
                "sampling.num_samples=0", "eval.bpd_num_examples=0", f"training.fp_weight={w}",
                f"training.fp_num_examples={args.toy_fp_examples}", "training.fp_divergence=exact"])
            t0 = time.perf_counter()
            train(config, workdir, progress=False, log=lambda s: None)
            row = {"part": "toy", "data": toy, "fp_weight": w, "train_s": time.perf_counter() - t0, "floor": floor}
            samples = {}
            for name, overrides in _samplers(args.sde_steps).items():
                run = load_run(workdir, None, overrides)
                samples[name], row[f"{name}_nfe"] = generate(run, jax.random.PRNGKey(0), args.toy_num)
            row["sw_ode_sde"] = sliced_w2(samples["ode"], samples["sde"])
            row["sw_ode_data"] = sliced_w2(samples["ode"], reference)
            row["sw_sde_data"] = sliced_w2(samples["sde"], reference)
            run = load_run(workdir)
            lik = evaluate_likelihood(run, jax.random.PRNGKey(1), "test", args.toy_nll)
            row["nll"], row["nll_se"] = lik["value"], lik["stderr"]
            row["fp_rel"] = _fp_summary(run, 256)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def run_digits(args) -> list[dict]:
    rows = []
    for w in args.weights:
        workdir = os.path.join(args.out, f"digits_w{w:g}")
        config = configs.load_config("digits", [
            f"training.n_iters={args.digits_steps}", "training.snapshot_freq=100000", "sampling.num_samples=0",
            "eval.bpd_num_examples=0", f"training.fp_weight={w}",
            f"training.fp_num_examples={args.digits_fp_examples}"])
        t0 = time.perf_counter()
        train(config, workdir, progress=False, log=lambda s: None)
        row = {"part": "digits", "fp_weight": w, "train_s": time.perf_counter() - t0}
        for name, overrides in _samplers(args.digits_sde_steps).items():
            run = load_run(workdir, None, overrides)
            ev = evaluate(run, jax.random.PRNGKey(0), args.digits_num)
            row[f"fid_{name}"], row[f"{name}_nfe"] = ev["samples"]["fid"], int(ev["nfe"])
            row["floor_fid"] = ev["test_split"]["fid"]
        run = load_run(workdir)
        if args.digits_bpd:
            lik = evaluate_likelihood(run, jax.random.PRNGKey(1), "test", args.digits_bpd)
            row["bpd"], row["bpd_se"] = lik["value"], lik["stderr"]
        if args.digits_fp_eval:
            row["fp_rel"] = _fp_summary(run, args.digits_fp_eval)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def print_tables(rows: list[dict], args) -> None:
    toys = [r for r in rows if r["part"] == "toy"]
    if toys:
        print(f"\n2-D toys (VP, MLP 3x128, {args.toy_steps} steps): sliced W2 of {args.toy_num} samples; ODE adaptive "
              f"(rtol 1e-5), SDE Euler-Maruyama {args.sde_steps} steps, same prior draws")
        print(f"{'data':17s} {'w_FP':>5s} {'train s':>8s} {'SW(ODE,SDE)':>12s} {'SW(ODE,data)':>13s} "
              f"{'SW(SDE,data)':>13s} {'floor':>7s} {'NLL nats':>14s} {'R t=.05':>9s} {'R t=.5':>9s}")
        for r in toys:
            print(f"{r['data']:17s} {r['fp_weight']:5.1f} {r['train_s']:8.0f} {r['sw_ode_sde']:12.4f} "
                  f"{r['sw_ode_data']:13.4f} {r['sw_sde_data']:13.4f} {r['floor']:7.4f} "
                  f"{r['nll']:7.3f}±{r['nll_se']:.3f} {r['fp_rel']['0.05']:9.3g} {r['fp_rel']['0.50']:9.3g}")
    digits = [r for r in rows if r["part"] == "digits"]
    if digits:
        print(f"\ndigits (VP, DDPM++ digits8, {args.digits_steps} steps, FP term on {args.digits_fp_examples} examples "
              f"per batch): digits-FID of {args.digits_num} samples; ODE adaptive, SDE Euler-Maruyama "
              f"{args.digits_sde_steps} steps")
        print(f"{'w_FP':>5s} {'train s':>8s} {'FID ODE':>8s} {'FID SDE':>8s} {'ODE NFE':>8s} {'bits/dim':>14s} "
              f"{'R t=.05':>9s} {'R t=.5':>9s}")
        for r in digits:
            bpd = f"{r['bpd']:.3f}±{r['bpd_se']:.3f}" if "bpd" in r else "n/a"
            fp = (f"{r['fp_rel']['0.05']:9.3g} {r['fp_rel']['0.50']:9.3g}" if "fp_rel" in r
                  else f"{'n/a':>9s} {'n/a':>9s}")
            print(f"{r['fp_weight']:5.1f} {r['train_s']:8.0f} {r['fid_ode']:8.2f} {r['fid_sde']:8.2f} "
                  f"{r['ode_nfe']:8d} {bpd:>14s} {fp}")
        print(f"(test split's own digits-FID with as many examples: {digits[0]['floor_fid']:.2f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", default="both", choices=("toys", "digits", "both"))
    p.add_argument("--out", default="runs/fp_gap")
    p.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS), help="FP weights w (default 0 0.1 1)")
    p.add_argument("--toys", nargs="+", default=list(TOYS), help=f"2-D toys (default {' '.join(TOYS)})")
    p.add_argument("--toy-steps", type=int, default=4000)
    p.add_argument("--toy-num", type=int, default=4000, help="samples per sampler (and data points) on toys")
    p.add_argument("--toy-nll", type=int, default=256, help="test points for the toy NLL")
    p.add_argument("--toy-fp-examples", type=int, default=64)
    p.add_argument("--sde-steps", type=int, default=1000, help="Euler-Maruyama steps on toys")
    p.add_argument("--digits-steps", type=int, default=400)
    p.add_argument("--digits-fp-examples", type=int, default=2)
    p.add_argument("--digits-num", type=int, default=500, help="samples per digits-FID")
    p.add_argument("--digits-sde-steps", type=int, default=250)
    p.add_argument("--digits-bpd", type=int, default=64, help="test examples for bits/dim (0: skip)")
    p.add_argument("--digits-fp-eval", type=int, default=128, help="test examples for the FP residual (0: skip)")
    args = p.parse_args()
    rows = []
    if args.part in ("toys", "both"):
        rows += run_toys(args)
    if args.part in ("digits", "both"):
        rows += run_digits(args)
    os.makedirs(args.out, exist_ok=True)
    tag = "_".join(f"{w:g}" for w in args.weights)
    with open(os.path.join(args.out, f"results_{args.part}_w{tag}.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print_tables(rows, args)
    print("(R t=...: the model's relative score Fokker-Planck residual rms |R| / rms |g^2 s| on test x_t at that t; "
          "0 for the true score)")


if __name__ == "__main__":
    main()
