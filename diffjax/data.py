"""Datasets: the embedded digits (default), 2-D toys, and TFDS datasets through ``data_source``.

Images are kept as integer levels k in {0, ..., levels-1} (uint8) until the last moment and mapped
to the model's range by ``x = lo + (hi - lo) (k + u) / levels``: u ~ U[0, 1) with uniform
dequantisation, u = 1/2 (the bin centre) without. This is the map :func:`diffjax.likelihood.bits_per_dim`
uses, so a model is trained and evaluated on the same scale.

Every loader yields dict batches ``{"x": float32 (B, ...), "label": int32 (B,)}`` (``"levels"``,
the integers, for images) and has ``get_state()`` / ``set_state(state)`` with a JSON-able state, so
a checkpoint can resume the stream exactly.
"""

from __future__ import annotations

import math
import re
from importlib import resources
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DIGITS_LEVELS",
    "TOYS",
    "load_digits",
    "digits_split",
    "levels_to_model",
    "ArraySource",
    "ArrayLoader",
    "digits_loader",
    "toy_2d",
    "toy_loader",
    "tfds_loader",
    "fit_gaussian_bits_per_dim",
]

DIGITS_LEVELS = 17  # grey levels 0..16
DIGITS_TEST_FRACTION = 0.2


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits: images uint8 (1797, 8, 8) with values in 0..16 and labels uint8 (1797,) in 0..9.

    The data ship inside the package (``diffjax/_data/digits.npz``; source and licence in the README beside it).
    """
    with resources.files("diffjax").joinpath("_data/digits.npz").open("rb") as f:
        with np.load(f) as data:
            return data["images"].copy(), data["labels"].copy()


def parse_classes(spec) -> Optional[tuple[int, ...]]:
    """Digit classes from ``"0-4"``, ``"0,2,5-7"``, a sequence of ints, or ``""``/None (all ten: None)."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return None
    try:
        if isinstance(spec, str):
            out = []
            for part in spec.replace(" ", "").split(","):
                lo, _, hi = part.partition("-")
                out.extend(range(int(lo), int(hi or lo) + 1))
        else:
            out = [int(c) for c in spec]
    except (TypeError, ValueError):
        raise ValueError(f"digit classes must look like '0-4' or '0,2,5-7' (digits 0..9); got {spec!r}") from None
    if not out or min(out) < 0 or max(out) > 9:
        raise ValueError(f"digit classes must be digits 0..9, like '0-4' or '0,2,5-7'; got {spec!r}")
    return tuple(sorted(set(out)))


def digits_split(split: str, image_size: int = 8, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """The deterministic train/test split of the digits: 20 % of each class (seeded permutation) is test.

    Returns integer levels uint8 (N, image_size, image_size, 1) (16x16 is the 8x8 image with each
    pixel repeated 2x2, so the 17 levels are kept) and labels int32 (N,). train: 1,438, test: 359.
    ``classes`` (see :func:`parse_classes`) keeps only those digits (the split itself is unchanged).
    """
    if split not in ("train", "test"):
        raise ValueError(f"digits split must be 'train' or 'test'; got {split!r}")
    if image_size not in (8, 16):
        raise ValueError(f"digits image_size must be 8 or 16; got {image_size!r}")
    images, labels = load_digits()
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), bool)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test[idx[: int(round(DIGITS_TEST_FRACTION * len(idx)))]] = True
    keep = test if split == "test" else ~test
    x = images[keep][..., None]
    if image_size == 16:
        x = x.repeat(2, axis=1).repeat(2, axis=2)
    y = labels[keep].astype(np.int32)
    classes = parse_classes(classes)
    if classes is not None:
        mask = np.isin(y, classes)
        x, y = x[mask], y[mask]
    return x, y


def levels_to_model(k, levels: int, data_range=(-1.0, 1.0), u=None):
    """x = lo + (hi - lo) (k + u) / levels; ``u`` None means the bin centre 1/2 (numpy or jax arrays)."""
    lo, hi = data_range
    u = 0.5 if u is None else u
    return lo + (hi - lo) * (k.astype(np.float32) + u) / levels


# ----------------------------------------------------------------------------------------------
# The loader: a global order, read by every process in its own slice


class ArraySource:
    """A random-access source over in-memory arrays: ``read(indices) -> {"data": ..., "label": ...}``."""

    def __init__(self, data: np.ndarray, labels: Optional[np.ndarray] = None):
        self.data, self.labels = data, labels

    def __len__(self) -> int:
        return len(self.data)

    def read(self, indices: np.ndarray) -> dict:
        out = {"data": self.data[indices]}
        if self.labels is not None:
            out["label"] = self.labels[indices]
        return out


class ArrayLoader:
    """Shuffled minibatches of a random-access source, epoch after epoch, with an exactly resumable
    state, the same whatever the number of processes.

    Epoch e visits the examples in the order ``permutation(seed, e)``; the global batch at state
    ``{"epoch": e, "position": p}`` holds the examples ``order[p : p + B]`` (B = ``batch_size`` x
    ``shard_count``, the remainder of an epoch is dropped), and process ``shard_index`` reads rows
    ``[shard_index * batch_size, (shard_index + 1) * batch_size)`` of it: every process reads only
    its own examples. The randomness of a batch (dequantisation noise, flips) is drawn for the whole
    global batch from (seed, epoch, position) and sliced, so the global batch at step k is the same
    examples with the same noise on one process or on many, and a resumed loader continues exactly.

    ``data``: an array (N, ...) or a source with ``__len__`` and ``read(indices) -> {"data", "label"}``
    (:class:`ArraySource`, the TFDS source of :func:`tfds_loader`). Images (``levels`` given) are
    mapped to the model's range (:func:`levels_to_model`); ``batch_size`` is per process.
    """

    def __init__(self, data, labels: Optional[np.ndarray], batch_size: int, *, seed: int = 0,
                 levels: Optional[int] = None, data_range=(-1.0, 1.0), uniform_dequantization: bool = True,
                 random_flip: bool = False, shard_index: int = 0, shard_count: int = 1):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
        if not (isinstance(shard_count, int) and shard_count >= 1 and 0 <= shard_index < shard_count):
            raise ValueError(f"need 0 <= shard_index < shard_count; got {shard_index} of {shard_count}")
        source = data if hasattr(data, "read") else ArraySource(np.asarray(data), labels)
        if len(source) == 0:
            raise ValueError("the dataset is empty (0 examples); expected at least one batch of examples")
        if isinstance(source, ArraySource) and np.issubdtype(source.data.dtype, np.floating) \
                and not np.all(np.isfinite(source.data)):
            raise ValueError("the dataset holds NaN or Inf values; expected finite data")
        global_batch = batch_size * shard_count
        if global_batch > len(source):
            raise ValueError(f"batch of {global_batch} examples is larger than the data ({len(source)} examples)")
        self.source = source
        self.batch_size, self.seed, self.levels = batch_size, seed, levels
        self.data_range, self.uniform_dequantization, self.random_flip = data_range, uniform_dequantization, random_flip
        self.shard_index, self.shard_count = shard_index, shard_count
        self.epoch, self.position = 0, 0
        self._order_epoch, self._order = None, None

    def __len__(self) -> int:
        return len(self.source)

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            self._order_epoch = self.epoch
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.source))
        return self._order

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def set_state(self, state: dict) -> None:
        try:
            self.epoch, self.position = int(state["epoch"]), int(state["position"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"not a loader state: {state!r}; expected {{'epoch': int, 'position': int}}") from None

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        n, global_batch = len(self.source), self.batch_size * self.shard_count
        if self.position + global_batch > n:  # drop the remainder, start the next epoch
            self.epoch, self.position = self.epoch + 1, 0
        mine = slice(self.shard_index * self.batch_size, (self.shard_index + 1) * self.batch_size)
        idx = self._epoch_order()[self.position:self.position + global_batch][mine]
        rng = np.random.default_rng([self.seed, self.epoch, self.position, 1])
        self.position += global_batch
        records = self.source.read(idx)
        x, batch = records["data"], {}
        if self.levels is not None:
            if self.uniform_dequantization:  # drawn for the global batch, then this process's rows
                u = rng.uniform(size=(global_batch, *x.shape[1:])).astype(np.float32)[mine]
            else:
                u = None
            flip = (rng.uniform(size=global_batch) < 0.5)[mine] if self.random_flip else None
            if flip is not None:  # a horizontally flipped image, levels and all
                x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
            batch["levels"] = x
            x = levels_to_model(x, self.levels, self.data_range, u)
        batch["x"] = np.asarray(x, np.float32)
        if "label" in records:
            batch["label"] = np.asarray(records["label"]).astype(np.int32)
        return batch


def digits_loader(split: str, batch_size: int, *, image_size: int = 8, seed: int = 0, data_range=(-1.0, 1.0),
                  uniform_dequantization: bool = True, shard_index: int = 0, shard_count: int = 1,
                  classes=None) -> ArrayLoader:
    """Batches of the digits split (``x`` (B, s, s, 1) in ``data_range``, ``levels``, ``label``),
    only the digits in ``classes`` when given (see :func:`parse_classes`)."""
    x, y = digits_split(split, image_size, classes)
    return ArrayLoader(x, y, batch_size, seed=seed, levels=DIGITS_LEVELS, data_range=data_range,
                       uniform_dequantization=uniform_dequantization, shard_index=shard_index,
                       shard_count=shard_count)


# ----------------------------------------------------------------------------------------------
# 2-D toys

TOYS = ("gaussian_mixture", "two_moons", "checkerboard", "swiss_roll")


def toy_2d(name: str, key: jax.Array, n: int) -> jax.Array:
    """n samples (n, 2) of a 2-D toy, roughly zero-mean with unit scale.

    gaussian_mixture: 8 components on a circle of radius 2, std 0.15; two_moons: two interleaved
    half circles with noise 0.05; checkerboard: uniform on the black squares of a 4x4 board on
    [-2, 2]^2; swiss_roll: a spiral (t cos t, t sin t)/5, t ~ U[1.5 pi, 4.5 pi], noise 0.05.
    """
    k1, k2, k3 = jax.random.split(key, 3)
    if name == "gaussian_mixture":
        c = jax.random.randint(k1, (n,), 0, 8)
        angle = 2 * jnp.pi * c / 8
        centres = 2.0 * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)
        return centres + 0.15 * jax.random.normal(k2, (n, 2))
    if name == "two_moons":
        which = jax.random.bernoulli(k1, 0.5, (n,))
        a = jnp.pi * jax.random.uniform(k2, (n,))
        upper = jnp.stack([jnp.cos(a), jnp.sin(a)], -1)
        lower = jnp.stack([1.0 - jnp.cos(a), 0.5 - jnp.sin(a)], -1)
        pts = jnp.where(which[:, None], upper, lower) - jnp.array([0.5, 0.25])
        return 1.5 * pts + 0.05 * jax.random.normal(k3, (n, 2))
    if name == "checkerboard":
        u = jax.random.uniform(k1, (n, 2), minval=0.0, maxval=1.0)
        cell = jax.random.randint(k2, (n, 2), 0, 4)
        # make the cell black: flip the column parity when row + column is odd
        col = jnp.where((cell[:, 0] + cell[:, 1]) % 2 == 1, (cell[:, 1] + 1) % 4, cell[:, 1])
        return jnp.stack([cell[:, 0] + u[:, 0], col + u[:, 1]], -1) - 2.0
    if name == "swiss_roll":
        t = jnp.pi * (1.5 + 3.0 * jax.random.uniform(k1, (n,)))
        pts = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], -1) / 5.0
        return pts + 0.05 * jax.random.normal(k2, (n, 2))
    raise ValueError(f"unknown 2-D toy {name!r}; expected one of {TOYS}")


def toy_loader(name: str, batch_size: int, *, num_examples: int = 50_000, seed: int = 0,
               shard_index: int = 0, shard_count: int = 1) -> ArrayLoader:
    """Batches ``{"x": (B, 2)}`` from a fixed sample of ``num_examples`` points of the toy ``name``."""
    x = np.asarray(toy_2d(name, jax.random.PRNGKey(seed), num_examples), np.float32)
    return ArrayLoader(x, None, batch_size, seed=seed, shard_index=shard_index, shard_count=shard_count)


# ----------------------------------------------------------------------------------------------
# TFDS through data_source (ArrayRecord, no TensorFlow)


class _TFDSSource:
    """Random access to a TFDS ``data_source``: images (cropped and resized to ``image_size``) and labels."""

    def __init__(self, source, image_key: str, label_key: Optional[str], image_size: Optional[int]):
        self.source, self.image_key, self.label_key, self.image_size = source, image_key, label_key, image_size

    def __len__(self) -> int:
        return len(self.source)

    def _image(self, record) -> np.ndarray:
        image = np.asarray(record[self.image_key])
        if image.ndim == 2:
            image = image[..., None]
        if self.image_size is not None and image.shape[:2] != (self.image_size, self.image_size):
            image = _centre_crop_resize(image, self.image_size)
        return image

    def read(self, indices: np.ndarray) -> dict:
        keys = [int(i) for i in indices]
        try:  # one batched read where the source supports it (ArrayRecord does)
            records = self.source.__getitems__(keys)
        except (AttributeError, TypeError, NotImplementedError):  # e.g. tfds.testing.mock_data's sources
            records = [self.source[k] for k in keys]
        out = {"data": np.stack([self._image(r) for r in records])}
        if self.label_key is not None:
            out["label"] = np.asarray([r[self.label_key] for r in records], np.int32)
        return out


def tfds_loader(name: str, split: str, batch_size: int, *, data_dir: Optional[str] = None, seed: int = 0,
                image_key: str = "image", label_key: Optional[str] = "label", image_size: Optional[int] = None,
                random_flip: bool = True, uniform_dequantization: bool = False, data_range=(-1.0, 1.0),
                shard_index: Optional[int] = None, shard_count: Optional[int] = None) -> ArrayLoader:
    """A TFDS dataset (``cifar10``, ``mnist``, ``celeb_a``, ...) read with ``tfds.data_source`` (ArrayRecord,
    random access, no TensorFlow) by an :class:`ArrayLoader`: a global order per epoch, each process
    (default: this one of ``jax.process_count()``) reading its own slice of every global batch;
    uint8 images mapped to ``data_range`` (256 levels), optional random horizontal flips and uniform
    dequantisation, optional centre crop + resize to ``image_size``. The dataset must already be
    prepared in ``data_dir`` (nothing is downloaded).
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("TFDS datasets need `pip install tensorflow-datasets` (no TensorFlow)") from e
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises many types (not found, not prepared, corrupt); one message for all
        where = data_dir or "the TFDS default data directory"
        first = re.split(r"(?<=[.:])\s", " ".join(str(e).split()), maxsplit=1)[0][:160]
        raise ValueError(f"cannot read TFDS dataset {name!r} (split {split!r}) from {where}: {type(e).__name__}: "
                         f"{first} Prepare it first (`tfds build {name}`); diffjax never downloads") from None
    if len(source) == 0:
        raise ValueError(f"TFDS dataset {name!r} split {split!r} is empty; expected at least one example")
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    return ArrayLoader(_TFDSSource(source, image_key, label_key, image_size), None, batch_size, seed=seed,
                       levels=256, data_range=data_range, uniform_dequantization=uniform_dequantization,
                       random_flip=random_flip, shard_index=shard_index, shard_count=shard_count)


def _centre_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = image[top:top + s, left:left + s].astype(np.float32)
    out = jax.image.resize(crop, (size, size, crop.shape[-1]), "bilinear", antialias=True)
    return np.clip(np.round(np.asarray(out)), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# A baseline for bits/dim


def fit_gaussian_bits_per_dim(train_levels: np.ndarray, test_levels: np.ndarray, levels: int) -> float:
    """Bits/dim of the test split under a full-covariance Gaussian fitted (maximum likelihood) to the
    uniformly dequantised training split, on the unit-bin scale (k + u): the baseline a score model
    should beat. Uses the exact expectation over the dequantisation noise of the test term, so no
    Monte Carlo: E_u[(k + u - m)^T P (k + u - m)] = (k + 1/2 - m)^T P (k + 1/2 - m) + tr(P)/12.
    """
    a = train_levels.reshape(len(train_levels), -1).astype(np.float64) + 0.5
    b = test_levels.reshape(len(test_levels), -1).astype(np.float64) + 0.5
    d = a.shape[1]
    m = a.mean(0)
    cov = np.cov(a, rowvar=False, bias=True) + np.eye(d) / 12.0  # dequantisation noise of the fit
    prec = np.linalg.inv(cov)
    _, logdet = np.linalg.slogdet(cov)
    r = b - m
    quad = np.einsum("ni,ij,nj->n", r, prec, r) + np.trace(prec) / 12.0
    nll = 0.5 * (quad + logdet + d * math.log(2 * math.pi))  # nats per example, density on the k + u scale
    return float(np.mean(nll) / (d * math.log(2)))
