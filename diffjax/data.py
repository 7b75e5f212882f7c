"""Datasets. The embedded default: scikit-learn's 8x8 handwritten digits (no download, no scikit-learn)."""

from __future__ import annotations

from importlib import resources

import numpy as np

__all__ = ["DIGITS_LEVELS", "load_digits"]

DIGITS_LEVELS = 17  # grey levels 0..16


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits: images uint8 (1797, 8, 8) with values in 0..16 and labels uint8 (1797,) in 0..9.

    The data ship inside the package (``diffjax/_data/digits.npz``; source and licence in the README beside it).
    """
    with resources.files("diffjax").joinpath("_data/digits.npz").open("rb") as f:
        with np.load(f) as data:
            return data["images"].copy(), data["labels"].copy()
