"""Superposition on the digits: SuperDiff OR and AND of separately trained models, by class histogram.

    python experiments/superposition_digits.py [--runs runs/superdiff] [--num 250] [--steps 250]

Trains (or reuses, under --runs) five copies of the default digits job that differ only in the
classes they see: ``all`` (0-9, 2000 steps as the default job), ``0to4`` and ``5to9`` (the shipped
configs ``digits_0to4`` / ``digits_5to9``), ``0to6`` and ``3to9`` (1200 steps each: they see fewer
classes, and two CPU cores are slow). Then, with one sampler for every row (Euler–Maruyama on the
reverse SDE, ``--steps`` uniform steps, then Tweedie's denoiser), it draws ``--num`` samples of

- the model trained on all ten classes, and each half alone;
- "random choice": each sample from 0to4 or 5to9 with probability 1/2 (what OR should equal);
- OR(0to4, 5to9), T = 1, and with weights 0.7 / 0.3 (expected: 70 % of samples in 0-4);
- AND(0to6, 3to9): where both densities are equal, expected in the shared classes 3-6;

and classifies every sample with the digits classifier. Printed per row: the class histogram (%),
the share in 0-4, the total-variation distance of the histogram to the target proportions (the
training split's class frequencies of the classes the row should produce) and digits-FID against the
matching training digits. Sample grids go to --figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import configs, data, images, metrics, samplers
from diffjax.run import load_run, run_score_fn, superpose, to_unit_range, train

RUNS = {"all": ("digits", ""), "0to4": ("digits_0to4", ""), "5to9": ("digits_5to9", ""),
        "0to6": ("digits", "0-6"), "3to9": ("digits", "3-9")}


def _train_all(root: str, steps: int, subset_steps: int) -> None:
    for name, (config_name, classes) in RUNS.items():
        overrides = [f"training.n_iters={steps if name == 'all' else subset_steps}", "eval.bpd_num_examples=0"]
        if classes:
            overrides.append(f"data.classes={classes}")
        config = configs.load_config(config_name, overrides)
        t0 = time.perf_counter()
        train(config, os.path.join(root, name), progress=False, log=lambda s: None)
        print(f"trained {name}: {time.perf_counter() - t0:.0f} s", flush=True)


def _em_samples(run, key, num: int, steps: int) -> np.ndarray:
    """One model alone with the rows' sampler (Euler–Maruyama, uniform grid, Tweedie at the end)."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num))
    x0 = jax.vmap(lambda k: samplers.prior_sample(run.sde, k, (1, 8, 8, 1))[0])(keys)
    x = samplers.sample(samplers.euler_maruyama(run.sde), run_score_fn(run), keys, x0,
                        samplers.uniform_timesteps(run.sde, steps)).x
    return np.asarray(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/superdiff", help="the five work directories live here")
    p.add_argument("--train-steps", type=int, default=2000, help="training steps of the model of all ten classes")
    p.add_argument("--subset-steps", type=int, default=1200, help="training steps of each model of some classes")
    p.add_argument("--num", type=int, default=250)
    p.add_argument("--steps", type=int, default=250, help="sampler steps of every row")
    p.add_argument("--figures", default="runs/superdiff/figures")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args()
    _train_all(args.runs, args.train_steps, args.subset_steps)
    runs = {name: load_run(os.path.join(args.runs, name)) for name in RUNS}
    model, params, acc = metrics.digits_classifier(args.runs)
    print(f"digits classifier: {100 * acc:.1f} % test accuracy; {args.num} samples per row, "
          f"Euler–Maruyama with {args.steps} uniform steps")
    levels, labels = data.digits_split("train")
    key = jax.random.PRNGKey(0)

    rows = {}
    t0 = time.perf_counter()
    for name in ("all", "0to4", "5to9"):
        rows[name] = _em_samples(runs[name], key, args.num, args.steps)
    pick = np.asarray(jax.random.bernoulli(jax.random.PRNGKey(7), 0.5, (args.num,)))
    rows["random 0to4|5to9"] = np.where(pick[:, None, None, None], rows["0to4"], rows["5to9"])
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows["OR(0to4, 5to9)"] = superpose([runs["0to4"], runs["5to9"]], key, args.num, "or", num_steps=args.steps)[0]
    t_or = time.perf_counter() - t0
    rows["OR 0.7/0.3"] = superpose([runs["0to4"], runs["5to9"]], key, args.num, "or", weights=[0.7, 0.3],
                                   num_steps=args.steps)[0]
    rows["AND(0to6, 3to9)"] = superpose([runs["0to6"], runs["3to9"]], key, args.num, "and", num_steps=args.steps)[0]
    print(f"time: three single models {t_single:.0f} s, OR of two {t_or:.0f} s (twice the score evaluations)")

    freq = np.bincount(labels, minlength=10) / len(labels)
    targets = {"all": range(10), "0to4": range(5), "5to9": range(5, 10), "random 0to4|5to9": range(10),
               "OR(0to4, 5to9)": range(10), "OR 0.7/0.3": range(10), "AND(0to6, 3to9)": range(3, 7)}

    def target_hist(name):
        t = np.zeros(10)
        idx = list(targets[name])
        t[idx] = freq[idx]
        if name == "OR 0.7/0.3":
            t[:5] *= 0.7 / t[:5].sum()
            t[5:] *= 0.3 / t[5:].sum()
        return t / t.sum()

    print(f"\n{'row':<18}" + "".join(f"{c:>5}" for c in range(10)) + f"{'in 0-4':>8}{'TV':>7}{'floor':>7}{'FID':>7}")
    table = []
    for name, x in rows.items():
        unit = to_unit_range(runs["all"].config, x)
        feats, probs = metrics.digits_features(model, params, unit)
        hist = np.bincount(np.argmax(probs, 1), minlength=10) / len(x)
        ref = np.isin(labels, list(targets[name]))
        ref_feats, _ = metrics.digits_features(model, params, data.levels_to_model(levels[ref].astype(np.float32),
                                                                                 data.DIGITS_LEVELS, (0.0, 1.0)))
        fid = metrics.fid_from_features(feats, ref_feats)
        target = target_hist(name)
        tv = 0.5 * np.abs(hist - target).sum()
        floor = 0.5 * np.sum(np.sqrt(2 * target * (1 - target) / (np.pi * len(x))))  # E TV of an exact sampler
        print(f"{name:<18}" + "".join(f"{100 * h:>5.0f}" for h in hist) + f"{100 * hist[:5].sum():>7.1f}%"
              f"{tv:>7.3f}{floor:>7.3f}{fid:>7.2f}")
        table.append({"row": name, "hist": hist.tolist(), "in_0to4": float(hist[:5].sum()), "tv": float(tv),
                      "tv_floor": float(floor), "fid": float(fid)})
        os.makedirs(args.figures, exist_ok=True)
        fname = name.replace(" ", "_").replace("(", "_").replace(")", "").replace(",", "").replace("|", "_or_")
        fname = fname.replace("/", "_")
        images.write_png(os.path.join(args.figures, f"{fname}.png"), images.image_grid(unit[:100], ncols=10, scale=4))
    print("\nTV: total variation between the class histogram and the target proportions (the training split's\n"
          "class frequencies over the classes the row should produce); floor: the TV an exact sampler has on\n"
          "average with this many samples; FID: digits-FID against those training digits.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
