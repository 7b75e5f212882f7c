"""Atomic file writes and the mark of diffjax's outputs, below every other module (the run layer's
:mod:`diffjax.run.files` builds on these; the core's few savers use them directly)."""

from __future__ import annotations

import os
import tempfile
from typing import Callable

import numpy as np

__all__ = ["OUTPUT_KEY", "atomic_write", "atomic_savez"]

# an array stored in every .npz that diffjax writes, so a rerun may replace its own output and
# never a file of the user's
OUTPUT_KEY = "diffjax_output"


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` writes a temporary file beside ``path``, which then replaces ``path`` in one rename:
    readers see the old file or the whole new one, never half of it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(path) + ".", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_savez(path: str, **arrays) -> None:
    """``np.savez`` of ``arrays`` at ``path`` through :func:`atomic_write`, marked with :data:`OUTPUT_KEY`."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays, **{OUTPUT_KEY: np.asarray(0)} if OUTPUT_KEY not in arrays else {})

    atomic_write(path, write)
