"""Inverse problems on a trained image run: measurement files, and reconstructions by any method of
:mod:`diffjax.inverse`.

    write_measurement("m.npz", "inpaint", clean_images, sigma_y=0.0)       # images in [0, 1]
    x, nfe = reconstruct(load_run("runs/digits"), key, "m.npz", "pigdm")   # (N, H, W, C) in [0, 1]

A measurement file (.npz) holds ``y`` (N, *y_shape) in image units ([0, 1], like the images),
``kind`` (inpaint, superres, deblur, colorize), ``sigma_y`` (the noise std in image units), and for
inpainting the ``mask`` (H, W, C), 1 where observed. The operators: inpaint (the mask; default the
left half unknown), superres (2x average pooling), deblur (a 3x3 binomial blur, circular), colorize
(the channel mean; RGB runs only). The model's data scale is (hi - lo) x + lo with (lo, hi) its data
range, so y maps to (hi - lo) y + lo A(1) and sigma_y to (hi - lo) sigma_y.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import inverse, samplers
from diffjax._checks import check_int, check_real
from diffjax.run import files
from diffjax.run.build import data_range, example_shape, is_toy
from diffjax.run.generate import run_score_fn
from diffjax.run.load import Run

__all__ = ["KINDS", "METHODS", "operator_for", "write_measurement", "read_measurement", "reconstruct"]

KINDS = ("inpaint", "superres", "deblur", "colorize")
# method: (default updates, what it is)
METHODS = {"pigdm": 50, "dps": 200, "ddnm": 100, "project": 200, "reddiff": 100, "smc": 100}
BLUR_KERNEL = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0


def default_mask(x_shape) -> np.ndarray:
    """The left half of every image unknown (0), the right half observed (1)."""
    mask = np.ones(x_shape, np.float32)
    mask[:, : x_shape[1] // 2] = 0.0
    return mask


def operator_for(kind: str, x_shape, mask: Optional[np.ndarray] = None) -> inverse.LinearOperator:
    """The operator of a measurement ``kind`` on images of ``x_shape`` (H, W, C)."""
    if kind not in KINDS:
        raise ValueError(f"unknown inverse problem {kind!r}; expected one of {KINDS}")
    if kind == "inpaint":
        mask = default_mask(x_shape) if mask is None else np.asarray(mask, np.float32)
        if mask.shape != tuple(x_shape):
            raise ValueError(f"the inpainting mask has shape {mask.shape}; the run's images are {tuple(x_shape)}")
        return inverse.inpainting(jnp.asarray(mask))
    if kind == "superres":
        return inverse.downsampling(x_shape, 2)
    if kind == "deblur":
        return inverse.blurring(x_shape, BLUR_KERNEL)
    if x_shape[-1] != 3:
        raise ValueError(f"colorize needs RGB images (C = 3); this run's images have {x_shape[-1]} channel(s)")
    return inverse.colorization(x_shape)


def write_measurement(path: str, kind: str, images: np.ndarray, sigma_y: float = 0.0, seed: int = 0,
                      mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Measure clean ``images`` (N, H, W, C) in [0, 1] with the operator of ``kind`` and noise
    ``sigma_y``; write the measurement file (atomically) and return y."""
    images = np.asarray(images, np.float64)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C) in [0, 1]; got shape {images.shape}")
    check_real("write_measurement", "sigma_y", sigma_y, lo=0.0)
    files.check_output_path(path, ".npz", "the measurement file")
    op = operator_for(kind, images.shape[1:], mask)
    y = np.asarray(op.apply(jnp.asarray(images)))
    y = y + sigma_y * np.random.default_rng(seed).normal(size=y.shape)
    arrays = {"y": y.astype(np.float32), "kind": np.asarray(kind), "sigma_y": np.asarray(float(sigma_y)),
              files.OUTPUT_KEY: np.asarray(0)}
    if kind == "inpaint":
        arrays["mask"] = np.asarray(op.mask, np.float32)

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    files.atomic_write(path, write)
    return y


def read_measurement(path: str) -> dict:
    """The measurement file's arrays, checked: ``y``, ``kind``, ``sigma_y``, ``mask`` (inpainting)."""
    try:
        with np.load(path) as f:
            data = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"no measurement file at {path!r}") from None
    except Exception as e:  # noqa: BLE001 - anything unreadable is not a measurement
        raise ValueError(f"{path} is not a measurement file ({type(e).__name__}); write one with "
                         "diffjax.run.inverse.write_measurement") from None
    if "y" not in data:
        raise ValueError(f"{path} has no array 'y' (the measurements, (N, ...) in image units [0, 1])")
    data["kind"] = str(data.get("kind", ""))
    data["sigma_y"] = float(data.get("sigma_y", 0.0))
    if not np.all(np.isfinite(data["y"])):
        raise ValueError(f"{path}: y holds NaN or Inf")
    return data


def reconstruct(run: Run, key, measurement: str, method: str, *, kind: Optional[str] = None,
                num_steps: Optional[int] = None, particles: int = 64, scale: float = 0.5,
                batch_size: Optional[int] = None) -> tuple[np.ndarray, int, str]:
    """Reconstructions (N, H, W, C) in [0, 1] of the measurements in the file ``measurement`` by
    ``method`` (:data:`METHODS`) with ``num_steps`` updates (default per method); returns (images,
    score evaluations per image, the problem's kind). ``particles``: SMC's per measurement (it
    returns one particle drawn by the final weights); ``scale``: DPS's step size."""
    if is_toy(run.config):
        raise ValueError("inverse problems here are on image runs; for vectors use diffjax.inverse directly")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    data = read_measurement(measurement)
    kind = kind or data["kind"]
    if data["kind"] and kind != data["kind"]:
        raise ValueError(f"{measurement} is a {data['kind']!r} measurement; --inverse says {kind!r}")
    shape = example_shape(run.config)
    op = operator_for(kind, shape, data.get("mask"))
    y_img = jnp.asarray(data["y"], jnp.float32)
    op.check_y(y_img)
    lo, hi = data_range(run.config)
    y = (hi - lo) * y_img + lo * op.apply(jnp.ones((1, *shape), jnp.float32))
    sigma_y = (hi - lo) * data["sigma_y"]
    steps = check_int("reconstruct", "num_steps", num_steps, lo=1, hi=10 ** 5) if num_steps else METHODS[method]
    sde, score = run.sde, run_score_fn(run)
    n = y.shape[0]
    batch = min(n, batch_size or 64)
    out, nfe = [], 0
    for start in range(0, n, batch):
        yb = y[start:start + batch]
        kb = jax.random.fold_in(key, start)
        x, nfe = _solve(sde, score, kb, op, yb, sigma_y, method, steps, particles, scale, shape)
        out.append(np.asarray(x))
    x = np.concatenate(out)
    x01 = np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    return x01, nfe, kind


def _solve(sde, score, key, op, y, sigma_y, method, steps, particles, scale, shape):
    b = y.shape[0]
    x_T = samplers.prior_sample(sde, key, (b, *shape))
    uniform = samplers.uniform_timesteps(sde, steps)
    if method == "pigdm":
        s = inverse.pigdm_score(sde, score, op, y, max(sigma_y, 1e-3), weighting="a2")
        r = samplers.sample(samplers.dpmpp_2m_sde(sde), s, key, x_T, samplers.log_snr_timesteps(sde, steps))
        return r.x, int(r.nfe[0]) * 2  # one VJP per evaluation: counted as a second evaluation
    if method == "dps":
        r = samplers.sample(inverse.dps(samplers.get_step("euler_maruyama", sde), op, y, scale), score, key, x_T,
                            uniform)
        return r.x, int(r.nfe[0]) * 2
    if method == "ddnm":
        r = samplers.sample(inverse.ddnm(sde, op, y), score, key, x_T, uniform)
        return r.x, int(r.nfe[0])
    if method == "project":
        r = samplers.sample(inverse.project(samplers.euler_maruyama(sde), op, y), score, key, x_T, uniform)
        return r.x, int(r.nfe[0])
    if method == "reddiff":
        return inverse.red_diff(sde, score, key, op, y, uniform), steps
    xs = []
    for i in range(b):  # SMC: one measurement at a time, its particles as the batch
        r = inverse.twisted_smc(sde, score, jax.random.fold_in(key, i), op, y[i:i + 1], max(sigma_y, 1e-2), uniform,
                                particles, tempered=True)
        j = jax.random.categorical(jax.random.fold_in(key, b + i), r.log_weights)
        xs.append(r.x[j])
    return jnp.stack(xs), 2 * steps * particles


def output_path(measurement: str, method: str) -> str:
    """Where the reconstructions go: beside the measurement, FILE_METHOD.npz."""
    base = measurement[:-4] if measurement.endswith(".npz") else measurement
    return f"{base}_{method}.npz"
