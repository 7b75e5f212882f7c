"""Numerics without diffusion words: per-example array helpers, batched adaptive Runge-Kutta solves,
divergences (exact and Hutchinson), small batched linear solves, and the XLA:CPU workaround.

Everything above this layer (processes, score, losses, samplers, likelihood) imports from here;
nothing here imports from them."""

from diffjax.numerics import arrays
from diffjax.numerics.arrays import bisect_decreasing, expand_to, flat, per_example_dot, per_example_norm

__all__ = ["arrays", "expand_to", "flat", "per_example_dot", "per_example_norm", "bisect_decreasing"]
