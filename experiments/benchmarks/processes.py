"""Processes side by side on the digits: the same network trained for the same number of steps (so the
same wall-clock, printed) as VP (the default job), EDM, cosine VP, rectified flow and PFGM++, then
sample quality (digits-FID, KID, IS from the digits classifier's features, against the training
split) at 10, 20 and 50 score evaluations with each process's best deterministic sampler, and
bits/dim where the likelihood is defined.

    python experiments/benchmarks/processes.py [--steps 1000] [--num 1000] [--out DIR]

The test split's own digits-FID (the floor a perfect model reaches with as many examples) is printed
beside. Runs are kept under --out, so a second call only evaluates.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax

from diffjax import configs
from diffjax.run import evaluate, evaluate_likelihood, load_run, train

PROCESSES = [
    # (label, config, samplers to try at each NFE: (step name, grid, NFE per step))
    ("VP (default)", "digits", [("dpmpp_2m", "log_snr", 1)]),
    ("EDM", "digits_edm", [("dpmpp_2m", "karras", 1), ("edm_heun", "karras", 2)]),
    ("cosine VP", "digits_cosine", [("dpmpp_2m", "log_snr", 1)]),
    ("rectified flow", "digits_rf", [("dpmpp_2m", "log_snr", 1), ("ode_heun", "uniform", 2)]),
    ("PFGM++ (D=128)", "digits_pfgmpp", [("dpmpp_2m", "karras", 1), ("edm_heun", "karras", 2)]),
]
NFES = (10, 20, 50)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000, help="training steps of every process")
    p.add_argument("--num", type=int, default=1000, help="samples per evaluation")
    p.add_argument("--bpd", type=int, default=128, help="test examples for bits/dim (0: skip)")
    p.add_argument("--out", default="runs/benchmark_processes")
    p.add_argument("--only", default=None, help="comma-separated config names to run")
    args = p.parse_args()
    rows = []
    for label, name, candidates in PROCESSES:
        if args.only and name not in args.only.split(","):
            continue
        workdir = os.path.join(args.out, name)
        config = configs.load_config(name, [f"training.n_iters={args.steps}", "training.snapshot_freq=500",
                                            "sampling.num_samples=0", "eval.bpd_num_examples=0"])
        t0 = time.perf_counter()
        train(config, workdir, progress=False, log=lambda s: None)
        train_s = time.perf_counter() - t0
        row = {"process": label, "config": name, "train_s": train_s}
        for nfe in NFES:
            best = None
            for method, grid, per_step in candidates:
                n_steps = max(1, (nfe - 1) // per_step)  # + 1 for the final denoising step
                run = load_run(workdir, None, [f"sampling.method={method}", f"sampling.grid={grid}",
                                               f"sampling.num_steps={n_steps}"])
                ev = evaluate(run, jax.random.PRNGKey(0), args.num)
                r = {"sampler": f"{method}/{grid}", "nfe": int(ev["nfe"]), **ev["samples"]}
                row.setdefault("floor_fid", ev["test_split"]["fid"])
                if best is None or r["fid"] < best["fid"]:
                    best = r
            row[f"nfe{nfe}"] = best
        if args.bpd and configs.load_config(name).eval.get("bpd_num_examples", 0):
            lik = evaluate_likelihood(load_run(workdir), jax.random.PRNGKey(1), "test", args.bpd)
            row["bpd"], row["bpd_se"] = lik["value"], lik["stderr"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(f"\n{args.steps} training steps each; digits-FID (KID x1e3, IS) of {args.num} samples, best sampler per cell")
    print(f"{'process':16s} {'train s':>8s} " + " ".join(f"{f'{n} NFE':>28s}" for n in NFES) + f" {'bits/dim':>14s}")
    for row in rows:
        cells = []
        for n in NFES:
            b = row[f"nfe{n}"]
            cells.append(f"{b['fid']:6.2f} ({1e3 * b['kid']:5.1f}, {b['is']:4.2f}) {b['sampler'].split('/')[0][:8]:>8s}")
        bpd = f"{row['bpd']:.3f}±{row['bpd_se']:.3f}" if "bpd" in row else "n/a"
        print(f"{row['process']:16s} {row['train_s']:8.0f} " + " ".join(f"{c:>28s}" for c in cells) + f" {bpd:>14s}")
    if rows:
        print(f"(test split's own digits-FID with as many examples: {rows[0]['floor_fid']:.2f})")


if __name__ == "__main__":
    main()
