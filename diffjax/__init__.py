"""diffjax: score-based generative modelling through SDEs, in JAX."""

from diffjax import likelihood, losses, mixture, samplers, score, sde
from diffjax.mixture import GaussianMixture
from diffjax.sde import SDE, ReverseSDE, SubVPSDE, VESDE, VPSDE

__version__ = "0.1.0"

__all__ = [
    "SDE",
    "VESDE",
    "VPSDE",
    "SubVPSDE",
    "ReverseSDE",
    "GaussianMixture",
    "likelihood",
    "losses",
    "mixture",
    "samplers",
    "score",
    "sde",
]
