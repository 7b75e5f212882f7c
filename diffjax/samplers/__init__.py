"""Samplers as composable transforms, one scan driver, and adaptive probability-flow sampling.

    step = chain(langevin(sde, snr=0.16), reverse_diffusion(sde))     # the original PC sampler
    result = sample(step, score_fn, key, prior_sample(sde, key, shape), uniform_timesteps(sde, 1000))
    result.x, result.nfe

Steps are values (frozen dataclasses and pytrees): ``ddim(sde, eta=0.5)`` built twice is one step,
and the driver compiles once for both. Each step has one name, the one ``get_step`` takes
(``STEPS`` maps names to them); :mod:`~diffjax.samplers.plan` turns a run's sampler options into one
callable value.
"""

from __future__ import annotations

from diffjax.numerics.random import example_keys
from diffjax.samplers.base import (Step, chain, custom_step, prior_sample, static_field, step_class, tweedie_denoise,
                                   with_num_steps)
from diffjax.samplers.density import probability_flow_density, sample_with_log_density, track_log_density
from diffjax.samplers.driver import drive, sample
from diffjax.samplers.fast import ddim, dpmpp_2m, dpmpp_2m_sde, edm_heun
from diffjax.samplers.grids import (
    TIME_GRIDS,
    karras_timesteps,
    log_snr_timesteps,
    quadratic_timesteps,
    trailing_timesteps,
    uniform_timesteps,
)
from diffjax.samplers.learned import (
    IPNDM_COEFFS,
    FittedSolver,
    Teacher,
    dp_grid,
    fit_solver,
    gits_timesteps,
    ipndm,
    solver_error,
    teacher_trajectories,
)
from diffjax.samplers.multistep import dpmpp_3m, dpmpp_3m_sde, unipc
from diffjax.samplers.ode import ode_euler, ode_heun, ode_rk4, ode_sample
from diffjax.samplers.plan import STEPS, Sampler, get_step, make_sampler
from diffjax.samplers.predictors import (
    ancestral_sampling,
    annealed_langevin,
    euler_maruyama,
    langevin,
    reverse_diffusion,
)
from diffjax.samplers.teleport import (
    GaussianFit,
    fit_gaussian,
    fitted_timesteps,
    gaussian_score,
    gaussian_solver_error,
    gaussian_teleport,
    teleport_sample,
    teleport_t_skip,
)

__all__ = [
    "Step", "chain", "custom_step", "step_class", "static_field", "sample", "drive", "example_keys", "prior_sample",
    "tweedie_denoise", "with_num_steps", "get_step", "STEPS", "Sampler", "make_sampler",
    "euler_maruyama", "reverse_diffusion", "ancestral_sampling", "langevin", "annealed_langevin",
    "ode_euler", "ode_heun", "ode_rk4", "ode_sample", "ddim", "edm_heun", "dpmpp_2m", "dpmpp_2m_sde",
    "dpmpp_3m", "dpmpp_3m_sde", "unipc", "ipndm", "IPNDM_COEFFS",
    "Teacher", "teacher_trajectories", "dp_grid", "gits_timesteps", "FittedSolver", "fit_solver", "solver_error",
    "track_log_density", "probability_flow_density", "sample_with_log_density",
    "GaussianFit", "fit_gaussian", "fitted_timesteps", "gaussian_score", "gaussian_solver_error", "gaussian_teleport",
    "teleport_sample", "teleport_t_skip",
    "uniform_timesteps", "karras_timesteps", "log_snr_timesteps", "quadratic_timesteps", "trailing_timesteps", "TIME_GRIDS",
]
