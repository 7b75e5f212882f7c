"""diffjax: score-based generative modelling through SDEs, in JAX."""

from diffjax import fokker_planck, likelihood, losses, mixture, samplers, score, sde, superposition
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
    "fokker_planck",
    "likelihood",
    "losses",
    "mixture",
    "samplers",
    "score",
    "sde",
    "superposition",
]
