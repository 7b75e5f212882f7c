"""Sample-quality metrics: FID, KID and Inception Score, on InceptionV3 features or on digits features.

Statistics (numpy, float64):

- Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017):
  ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2}).
- KID (Bińkowski et al. 2018): the unbiased estimate of MMD^2 with the kernel
  k(x, y) = (x.y / d + 1)^3, averaged over random subsets; unbiased, so comparable across sizes.
- Inception Score (Salimans et al. 2016): exp(E_x KL(p(y | x) || p(y))), mean and std over splits.

Networks:

- :class:`InceptionV3`: the FID variant of InceptionV3 (the TF 2015-12-05 graph, as ported by
  pytorch-fid) in Flax: 2048 pooled features and 1008 logits. Its weights are **not** shipped and
  never downloaded: get ``pt_inception-2015-12-05-6726825d.pth`` from the pytorch-fid releases
  (github.com/mseitzer/pytorch-fid/releases, ``fid_weights`` tag) and convert it once, where torch
  is installed (Colab has it), with ``python experiments/convert_inception_weights.py IN.pth OUT.npz``;
  :func:`load_inception_params` reads the npz (torch layout, converted on load).
- The digits metrics use a small clean :class:`diffjax.models.ConvClassifier` trained on the digits
  training split (:func:`digits_classifier`, cached in the work directory): its 32 pooled features
  give a digits-FID/KID and its predictions a digits-IS (at most 10).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.inception import InceptionV3, inception_params_from_torch, load_inception_params

Array = jax.Array

__all__ = [
    "gaussian_stats",
    "frechet_distance",
    "fid_from_features",
    "kid",
    "inception_score",
    "InceptionV3",
    "load_inception_params",
    "inception_params_from_torch",
    "inception_features",
    "digits_classifier",
    "digits_features",
    "evaluate_features",
]


# ----------------------------------------------------------------------------------------------
# Statistics


def _features(name: str, f) -> np.ndarray:
    f = np.asarray(f, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"{name} must be features of shape (N, D) with N >= 2; got {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{name} holds NaN or Inf values")
    return f


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), float64."""
    f = _features("features", features)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    lam, u = np.linalg.eigh((m + m.T) / 2)
    return (u * np.sqrt(np.clip(lam, 0.0, None))) @ u.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^{1/2} S2 S1^{1/2})^{1/2}), by symmetric eigendecompositions
    (the cross term's matrix is symmetric positive semi-definite, so no complex square roots arise)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"means (D,) and covariances (D, D) must agree; got {mu1.shape}, {s1.shape}, {mu2.shape}, "
                         f"{s2.shape}")
    r = _sqrt_psd(s1)
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0.0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * cross)


def fid_from_features(features_a, features_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D)."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


def kid(features_a, features_b, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean, std) over ``num_subsets`` random subsets of the unbiased MMD^2 with k(x, y) = (x.y/d + 1)^3.

    Each subset draws min(subset_size, N, M) examples from each set without replacement. The mean is
    an unbiased estimate of MMD^2 (which is 0 when both sets come from one distribution).
    """
    a, b = _features("features_a", features_a), _features("features_b", features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    out = np.empty(num_subsets)
    for i in range(num_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        out[i] = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
    return float(out.mean()), float(out.std())


def inception_score(probs, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over ``splits`` equal parts of exp(E_x KL(p(y|x) || p(y))), from class probabilities
    (N, K) (rows sum to 1). Between 1 and K."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError(f"probs must be (N, K) rows of class probabilities; got shape {p.shape}")
    if not 1 <= splits <= len(p):
        raise ValueError(f"splits must lie in [1, N = {len(p)}]; got {splits}")
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0, keepdims=True)
        kl = np.sum(part * (np.log(np.clip(part, 1e-30, None)) - np.log(np.clip(py, 1e-30, None))), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


@jax.jit
def _inception_apply(variables, images):
    x = images
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    x = jax.image.resize(x, (x.shape[0], 299, 299, 3), "bilinear")
    return InceptionV3().apply(variables, 2.0 * x - 1.0)


def inception_features(variables, images, batch_size: int = 50, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features (N, 2048) and class probabilities (N, 1008) of images (N, H, W, C), C = 1 or 3,
    in [0, 1]; each image is resized to 299x299 (bilinear) and mapped to [-1, 1] as pytorch-fid does."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, C) with C = 1 or 3, in [0, 1]; got {images.shape}")
    feats, probs = [], []
    for i in _progress(range(0, len(images), batch_size), progress, "inception"):
        f, logits = _inception_apply(variables, jnp.asarray(images[i:i + batch_size]))
        feats.append(np.asarray(f, np.float64))
        probs.append(np.asarray(jax.nn.softmax(logits, axis=-1), np.float64))
    return np.concatenate(feats), np.concatenate(probs)


def _progress(it, enabled, desc):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------
# Digits features


DIGITS_CLASSIFIER_FILE = "digits_classifier.msgpack"


def _digits_model():
    from diffjax.models import ConvClassifier

    # clean (not noise-conditional), on [0, 1] images
    return ConvClassifier(num_classes=10, widths=(16, 32), noise_conditional=False, centered=False)


def _train_digits_classifier(seed: int = 0, steps: int = 600, batch_size: int = 128):
    import optax

    from diffjax import data

    model = _digits_model()
    x, y = data.digits_split("train")
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8, 8, 1)))
    tx = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, key):
        k_idx, k_u = jax.random.split(key)
        idx = jax.random.choice(k_idx, x.shape[0], (batch_size,), replace=False)
        levels = jnp.asarray(x)[idx].astype(jnp.float32)
        images = data.levels_to_model(levels, data.DIGITS_LEVELS, (0.0, 1.0), jax.random.uniform(k_u, levels.shape))

        def loss_fn(p):
            logits = model.apply(p, images)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(y)[idx][:, None], 1))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    key = jax.random.PRNGKey(seed + 1)
    for i in range(steps):
        params, opt_state, _ = step(params, opt_state, jax.random.fold_in(key, i))
    return params


def digits_classifier(workdir: Optional[str] = None, seed: int = 0) -> tuple[Any, Any, float]:
    """(module, variables, test accuracy) of the clean digits classifier, trained on the digits training
    split (600 steps, about 15 s on two CPU cores) and cached in ``workdir/digits_classifier.msgpack`` when a
    work directory is given. Images are (N, 8, 8, 1) in [0, 1]."""
    from flax import serialization

    from diffjax import data

    model = _digits_model()
    path = os.path.join(workdir, DIGITS_CLASSIFIER_FILE) if workdir else None
    template = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
    params = None
    if path and os.path.isfile(path):
        with open(path, "rb") as f:
            try:
                params = serialization.from_bytes(template, f.read())
            except (ValueError, KeyError) as e:
                raise ValueError(f"{path} is not a digits classifier of this version ({e}); move it away to retrain") \
                    from None
    if params is None:
        params = _train_digits_classifier(seed)
        if path:
            try:
                os.makedirs(workdir, exist_ok=True)
                tmp = f"{path}.tmp{os.getpid()}"  # one per process: several hosts may cache at once
                with open(tmp, "wb") as f:
                    f.write(serialization.to_bytes(params))
                os.replace(tmp, path)
            except OSError:  # a read-only run: the classifier is a cache, evaluation goes on without it
                pass
    x, y = data.digits_split("test")
    _, probs = digits_features(model, params, data.levels_to_model(x.astype(np.float32), data.DIGITS_LEVELS, (0.0, 1.0)))
    return model, params, float(np.mean(np.argmax(probs, axis=1) == y))


_FEATURE_FNS: dict = {}


def digits_features(model, params, images) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, 32) and class probabilities (N, 10) of digits (N, 8, 8, 1) or (N, 16, 16, 1) in [0, 1]
    (16x16 images are averaged over 2x2 blocks first)."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != 1 or images.shape[1:3] not in ((8, 8), (16, 16)):
        raise ValueError(f"digits images must be (N, 8, 8, 1) or (N, 16, 16, 1) in [0, 1]; got {images.shape}")
    if images.shape[1] == 16:
        images = images.reshape(-1, 8, 2, 8, 2, 1).mean(axis=(2, 4))
    f = _FEATURE_FNS.get(repr(model))
    if f is None:  # one compiled function per classifier configuration
        f = _FEATURE_FNS[repr(model)] = jax.jit(
            lambda p, x: (model.apply(p, x, features=True), jax.nn.softmax(model.apply(p, x), -1)))
    feats, probs = [], []
    for i in range(0, len(images), 512):
        a, b = f(params, jnp.asarray(images[i:i + 512]))
        feats.append(np.asarray(a, np.float64))
        probs.append(np.asarray(b, np.float64))
    return np.concatenate(feats), np.concatenate(probs)


def evaluate_features(sample_features, sample_probs, reference_features, splits: int = 10,
                      kid_subset: int = 1000) -> dict:
    """FID and KID of samples against reference features, and the samples' IS, as a dict."""
    k_mean, k_std = kid(sample_features, reference_features, subset_size=kid_subset)
    is_mean, is_std = inception_score(sample_probs, splits=min(splits, len(sample_probs)))
    return {"fid": fid_from_features(sample_features, reference_features), "kid": k_mean, "kid_std": k_std,
            "is": is_mean, "is_std": is_std, "num": int(len(sample_features))}
