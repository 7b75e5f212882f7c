"""Timing shared by the benchmarks: medians of repeated runs after a warm-up (compilation) call."""

import time

import jax
import numpy as np


def median_time(fn, repeats=5):
    """Seconds per call of ``fn`` (median of ``repeats``), after one untimed call that compiles it."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
