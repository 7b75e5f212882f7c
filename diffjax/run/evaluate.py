"""Evaluating a trained run: bits/dim (or NLL) beside a fitted Gaussian, and FID / KID / IS."""

from __future__ import annotations

import functools
import math
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from diffjax import data, fokker_planck, metrics, parallel
from diffjax._jit import filter_jit
from diffjax.likelihood import bits_per_dim, log_likelihood
from diffjax.results import NonFiniteError
from diffjax.run.build import build_loader, data_range, is_toy, sampler_name
from diffjax.run.generate import generate, plan_batches, run_score_fn, to_unit_range
from diffjax.run.load import Run

__all__ = ["evaluate_likelihood", "evaluate", "gaussian_baseline", "format_likelihood", "format_evaluation",
           "evaluate_fp_residual", "format_fp_residual", "FP_TIMES"]


def _eval_data(config, split: str, num: int):
    """(data, levels or None) of the first ``num`` examples of ``split`` (integer levels for images)."""
    if config.data.dataset == "digits":
        x, _ = data.digits_split(split, config.data.image_size, config.data.classes)
        return x[:num], data.DIGITS_LEVELS
    loader = build_loader(config, split, num, train=False, sharded=False)  # the same examples on every process
    if is_toy(config):
        return next(loader)["x"], None
    return next(loader)["levels"], 256


def gaussian_baseline(config, split: str, x: np.ndarray) -> Optional[float]:
    """The full-covariance Gaussian fitted to the training split, scored on ``x``: bits/dim for the
    digits (:func:`diffjax.data.fit_gaussian_bits_per_dim`), NLL in nats for toys; None for TFDS."""
    if config.data.dataset == "digits":
        train_levels, _ = data.digits_split("train", config.data.image_size, config.data.classes)
        return data.fit_gaussian_bits_per_dim(train_levels, x, data.DIGITS_LEVELS)
    if is_toy(config):
        a = np.asarray(next(build_loader(config, "train", 20_000, train=False, sharded=False))["x"], np.float64)
        m, cov = a.mean(0), np.cov(a, rowvar=False, bias=True)
        r = np.asarray(x, np.float64) - m
        quad = np.einsum("ni,ij,nj->n", r, np.linalg.inv(cov), r)
        return float(np.mean(0.5 * (quad + np.linalg.slogdet(cov)[1] + 2 * math.log(2 * math.pi))))
    return None


@filter_jit
def _score_batch(sde, score_fn, keys, xb, levels, lo_hi, num_dequantizations, rtol, mesh):
    if levels is None:
        r = log_likelihood(sde, score_fn, keys, xb, rtol=rtol, atol=rtol)
        value = -r.logp
    else:
        r = bits_per_dim(sde, score_fn, keys, xb, levels=levels, data_range=lo_hi,
                         num_dequantizations=num_dequantizations, rtol=rtol, atol=rtol)
        value = r.bpd
    replicated = NamedSharding(mesh, PartitionSpec())
    return tuple(jax.lax.with_sharding_constraint(v, replicated) for v in (value, r.nfe, r.nonfinite_step))


def evaluate_likelihood(run: Run, key, split: str = "test", num: Optional[int] = None,
                        batch_size: Optional[int] = None, rtol: Optional[float] = None,
                        num_dequantizations: int = 1) -> dict:
    """Bits/dim (image data) or negative log-likelihood in nats (2-D toys) of the first ``num``
    examples of ``split`` under the EMA model, through the probability-flow ODE (Hutchinson
    divergence, ``eval.bpd_rtol``), with the standard error over examples and the Gaussian baseline
    on the same examples. A class-conditional network is scored unconditionally (its "no class" label)."""
    config = run.config
    num = num or config.eval.bpd_num_examples or 256
    rtol = float(config.eval.bpd_rtol if rtol is None else rtol)
    x, levels = _eval_data(config, split, num)
    num = len(x)
    batch, total = plan_batches(num, batch_size or config.eval.batch_size, run.mesh)
    pad = np.concatenate([x, np.repeat(x[-1:], total - num, axis=0)]) if total > num else x
    score_fn = run_score_fn(run, unconditional=True)
    sharding = parallel.batch_sharding(run.mesh)
    all_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(total))
    values, nfes, failed = [], [], []
    for i in range(0, total, batch):
        keys = jax.device_put(all_keys[i:i + batch], sharding)
        xb = jax.device_put(jnp.asarray(pad[i:i + batch], jnp.float32), sharding)
        v, n, f = _score_batch(run.sde, score_fn, keys, xb, levels, data_range(config), int(num_dequantizations),
                               rtol, run.mesh)
        values.append(np.asarray(v))
        nfes.append(np.asarray(n))
        failed.append(np.asarray(f))
    v = np.concatenate(values)[:num].astype(np.float64)
    failed = np.concatenate(failed)[:num]
    if np.any(failed >= 0) or not np.all(np.isfinite(v)):
        bad = (failed >= 0) | ~np.isfinite(v)
        raise NonFiniteError(f"the likelihood of {int(bad.sum())} of {num} {split} examples is NaN or Inf (first: "
                             f"example {int(np.argmax(bad))}): the run's score is non-finite along their probability "
                             f"flow, or the solve needed more than its steps at rtol {rtol:g}")
    return {
        "metric": "bits/dim" if levels is not None else "NLL (nats)",
        "split": split,
        "num_examples": num,
        "value": float(v.mean()),
        "stderr": float(v.std(ddof=1) / math.sqrt(num)) if num > 1 else float("nan"),
        "mean_nfe": float(np.concatenate(nfes)[:num].mean()),
        "gaussian_baseline": gaussian_baseline(config, split, x),
        "step": run.step,
        "rtol": rtol,
    }


def _reference_images(config, split: str, num: int) -> np.ndarray:
    """The first ``num`` examples of an image split in [0, 1], at bin centres (no dequantisation noise)."""
    if config.data.dataset == "digits":
        x, _ = data.digits_split(split, config.data.image_size, config.data.classes)
        return data.levels_to_model(x[:num].astype(np.float32), data.DIGITS_LEVELS, (0.0, 1.0))
    loader = build_loader(config, split, min(num, 500), train=False, sharded=False)
    out, n = [], 0
    while n < num:
        levels = np.asarray(next(loader)["levels"], np.float32)
        out.append(data.levels_to_model(levels, 256, (0.0, 1.0)))
        n += len(levels)
    return np.concatenate(out)[:num]


def evaluate(run: Run, key, num: int = 1000, batch_size: Optional[int] = None, inception: Optional[str] = None,
             progress: bool = False) -> dict:
    """Sample ``num`` images from the run and score them against the training split.

    The digits use the digits classifier's features (:func:`diffjax.metrics.digits_classifier`, cached
    in the work directory): digits-FID, digits-KID and digits-IS. Other image datasets need the FID
    InceptionV3 weights (``inception``, see :mod:`diffjax.metrics`). The test split's own values, the
    floor a perfect model would reach with as many examples, are returned beside the samples'.
    """
    config = run.config
    if is_toy(config):
        raise ValueError("evaluate scores images; for a 2-D toy use `diffjax likelihood` (NLL beside a Gaussian)")
    if config.data.dataset != "digits" and not inception:
        raise ValueError(f"FID/IS/KID on {config.data.dataset} need the InceptionV3 weights: pass --inception "
                         "FILE.npz (see diffjax.metrics for where to get and how to convert them)")
    x, nfe = generate(run, key, num, batch_size, progress=progress)
    samples = to_unit_range(config, x)
    if config.data.dataset == "digits":
        cache = os.path.join(run.workdir, "eval") if run.workdir else None  # the classifier is cached per run
        model, params, accuracy = metrics.digits_classifier(cache)
        featurize = functools.partial(metrics.digits_features, model, params)
        kind, extra = "digits", {"classifier_test_accuracy": accuracy}
    else:
        variables = metrics.load_inception_params(inception)
        featurize = functools.partial(metrics.inception_features, variables, progress=progress)
        kind, extra = "inception", {}
    train_f, _ = featurize(_reference_images(config, "train", max(num, 2000 if kind == "digits" else num)))
    sample_f, sample_p = featurize(samples)
    test_f, test_p = featurize(_reference_images(config, "test", num))
    return {"features": kind, "step": run.step, "sampler": sampler_name(config), "nfe": nfe,
            "samples": metrics.evaluate_features(sample_f, sample_p, train_f),
            "test_split": metrics.evaluate_features(test_f, test_p, train_f), **extra}


def format_evaluation(ev: dict) -> str:
    name = "digits-" if ev["features"] == "digits" else ""
    lines = [f"{'':14s} {name + 'FID':>11s} {name + 'KID':>18s} {name + 'IS':>14s}    n"]
    for label, r in (("samples", ev["samples"]), ("test split", ev["test_split"])):
        lines.append(f"{label:14s} {r['fid']:11.3f} {r['kid']:10.4f} ± {r['kid_std']:.4f} "
                     f"{r['is']:7.3f} ± {r['is_std']:.3f} {r['num']:5d}")
    text = "\n".join(lines) + (f"\n(step {ev['step']}, {ev['sampler']} with {ev['nfe']} score evaluations; FID and KID "
                               "against the training split; the test split is the floor)")
    if "classifier_test_accuracy" in ev:
        text += f"\n(digits classifier: {100 * ev['classifier_test_accuracy']:.1f} % test accuracy)"
    return text


def format_likelihood(ev: dict) -> str:
    text = (f"{ev['split']} {ev['metric']}: {ev['value']:.4f} ± {ev['stderr']:.4f} "
            f"({ev['num_examples']} examples, EMA parameters of step {ev['step']}, mean {ev['mean_nfe']:.0f} "
            f"score evaluations)")
    if ev.get("gaussian_baseline") is not None:
        text += (f"\n  full-covariance Gaussian fitted to the training split, same examples: "
                 f"{ev['gaussian_baseline']:.4f}")
    return text


FP_TIMES = (0.01, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9)  # fractions of T


@filter_jit
def _fp_profile(sde, score_fn, key, x0, ts, divergence):
    return fokker_planck.fp_residual_by_time(sde, score_fn, key, x0, ts, divergence=divergence)


def evaluate_fp_residual(run: Run, key, split: str = "test", num: int = 256, times=None,
                         divergence: Optional[str] = None) -> dict:
    """The score Fokker–Planck residual of the EMA model per time (:mod:`diffjax.fokker_planck`):
    at each t of ``times`` (default :data:`FP_TIMES` x T), x_t ~ q_t(. | x0) for the first ``num``
    examples x0 of ``split`` (images at their bin centres), rms |R| over the examples beside rms
    |g^2 s|, the size of the diffusion term R is compared with; ``relative`` is their ratio (0 for
    an exact score). ``divergence``: "exact" (default for d <= 16) or "rademacher" (two probes,
    unbiased |R|^2; default above)."""
    config = run.config
    x, levels = _eval_data(config, split, num)
    x = np.asarray(x, np.float32)
    if levels is not None:
        x = data.levels_to_model(x, levels, data_range(config))
    d = int(np.prod(x.shape[1:]))
    divergence = divergence or ("exact" if d <= 16 else "rademacher")
    ts = np.asarray(FP_TIMES if times is None else times, np.float32) * (1.0 if times is not None else run.sde.T)
    score_fn = run_score_fn(run, unconditional=True)
    out = jax.device_get(_fp_profile(run.sde, score_fn, key, jnp.asarray(x, jnp.float32), jnp.asarray(ts),
                                     divergence))
    return {"split": split, "num_examples": len(x), "divergence": divergence, "step": run.step,
            **{k: [float(v) for v in np.asarray(out[k])] for k in ("t", "rms_residual", "rms_scale", "relative")}}


def format_fp_residual(ev: dict) -> str:
    lines = [f"{'t':>7s} {'rms |R|':>11s} {'rms |g^2 s|':>12s} {'relative':>10s}"]
    for t, r, s, rel in zip(ev["t"], ev["rms_residual"], ev["rms_scale"], ev["relative"]):
        lines.append(f"{t:7.3f} {r:11.4g} {s:12.4g} {rel:10.4g}")
    return "\n".join(lines) + (f"\n(score Fokker–Planck residual R = d_t s - grad[g^2/2 (div s + |s|^2) - f <x, s>] "
                               f"of the EMA model at step {ev['step']}, on x_t from {ev['num_examples']} {ev['split']} "
                               f"examples, {ev['divergence']} divergence; relative = rms |R| / rms |g^2 s|, 0 for "
                               "the true score)")
