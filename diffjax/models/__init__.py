"""Flax Linen score networks."""

from diffjax.models.layers import GaussianFourierProjection, sinusoidal_embedding
from diffjax.models.mlp import MLPScoreNet

__all__ = ["GaussianFourierProjection", "MLPScoreNet", "sinusoidal_embedding"]
