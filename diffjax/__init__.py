"""diffjax: score-based generative modelling through SDEs, in JAX.

Every process is exported here (``diffjax.VPSDE``, ``diffjax.EDM``, ...), beside the Gaussian
mixture oracle and the result types; the rest lives in its module (``diffjax.samplers``,
``diffjax.likelihood``, ``diffjax.losses``, ...)."""

from diffjax import (fokker_planck, likelihood, losses, mixture, numerics, processes, results, samplers, score,
                     superposition)
from diffjax.mixture import GaussianMixture
from diffjax.processes import (EDM, PFGMPP, PROCESSES, SDE, CosineVP, CustomProcess, OneSidedInterpolant,
                               RectifiedFlow, ReverseSDE, SubVPSDE, VESDE, VPSDE)
from diffjax.results import (BitsResult, DensityResult, LikelihoodResult, NonFiniteError, SampleResult,
                             SuperpositionResult)

__version__ = "0.2.0"

__all__ = [
    "SDE", "VESDE", "VPSDE", "SubVPSDE", "EDM", "CosineVP", "RectifiedFlow", "OneSidedInterpolant", "CustomProcess",
    "PFGMPP", "ReverseSDE", "PROCESSES",
    "GaussianMixture",
    "SampleResult", "DensityResult", "LikelihoodResult", "BitsResult", "SuperpositionResult", "NonFiniteError",
    "fokker_planck", "likelihood", "losses", "mixture", "numerics", "processes", "results", "samplers", "score",
    "superposition",
]
