"""Samplers as composable transforms, one scan driver, and adaptive probability-flow sampling.

    step = chain(langevin(sde, snr=0.16), reverse_diffusion(sde))     # the original PC sampler
    x, nfe = sample(step, score_fn, key, prior_sample(sde, key, shape), uniform_timesteps(sde, 1000))

Steps are values (frozen dataclasses and pytrees): ``ddim(sde, eta=0.5)`` built twice is one step,
and the driver compiles once for both. ``STEPS`` maps names to the step classes.
"""

from __future__ import annotations

from diffjax.samplers.base import (
    Chain,
    FunctionStep,
    Step,
    chain,
    custom_step,
    example_keys,
    prior_sample,
    sample,
    sequenced,
    with_num_steps,
    static_field,
    step_class,
    tweedie_denoise,
)
from diffjax.samplers.multistep import (
    DPMSolverPP3M,
    DPMSolverPP3MSDE,
    UniPC,
    dpmpp_3m,
    dpmpp_3m_sde,
    unipc,
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
from diffjax.samplers.fast import DDIM, DPMSolverPP2M, DPMSolverPP2MSDE, EDMHeun, ddim, dpmpp_2m, dpmpp_2m_sde, edm_heun
from diffjax.samplers.grids import (
    TIME_GRIDS,
    karras_timesteps,
    log_snr_timesteps,
    quadratic_timesteps,
    uniform_timesteps,
)
from diffjax.samplers.ode import ODEEuler, ODEHeun, ODERK4, ode_euler, ode_heun, ode_rk4, ode_sample, probability_flow_drift
from diffjax.samplers.density import (
    ProbabilityFlowDensity,
    TrackedLogDensity,
    injects_forward_noise,
    ito_log_density_increment,
    kernel_log_density_increment,
    probability_flow_density,
    sample_with_log_density,
    track_log_density,
)
from diffjax.samplers.predictors import (
    AncestralSampling,
    AnnealedLangevin,
    EulerMaruyama,
    Langevin,
    ReverseDiffusion,
    ancestral_sampling,
    annealed_langevin,
    euler_maruyama,
    langevin,
    reverse_diffusion,
)

STEPS = {
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "ancestral_sampling": ancestral_sampling,
    "langevin": langevin,
    "annealed_langevin": annealed_langevin,
    "ode_euler": ode_euler,
    "ode_heun": ode_heun,
    "ode_rk4": ode_rk4,
    "ddim": ddim,
    "edm_heun": edm_heun,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_3m": dpmpp_3m,
    "dpmpp_3m_sde": dpmpp_3m_sde,
    "unipc": unipc,
}


def get_step(name: str, sde, **options) -> Step:
    """The step called ``name`` (see ``STEPS``) for process ``sde``; options go to its constructor.

    "pc" builds the original predictor-corrector sampler: ``predictor`` and ``corrector`` name the
    parts (defaults "reverse_diffusion", "langevin"), ``corrector_first`` (default True) the order,
    ``snr`` and ``n_steps`` go to the corrector.
    """
    if name == "pc":
        predictor = options.pop("predictor", "reverse_diffusion")
        corrector = options.pop("corrector", "langevin")
        corrector_first = options.pop("corrector_first", True)
        p = get_step(predictor, sde)
        c = get_step(corrector, sde, **options)
        if not p.moves_time or c.moves_time:
            raise ValueError(f"'pc' needs a predictor and a corrector; got predictor={predictor!r}, corrector={corrector!r}")
        return chain(c, p) if corrector_first else chain(p, c)
    if name not in STEPS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(STEPS) + ['pc']}")
    return STEPS[name](sde, **options)


__all__ = [
    "track_log_density", "TrackedLogDensity", "probability_flow_density", "ProbabilityFlowDensity",
    "sample_with_log_density", "ito_log_density_increment", "kernel_log_density_increment", "injects_forward_noise",
    "Step", "Chain", "FunctionStep", "chain", "custom_step", "step_class", "static_field", "sequenced",
    "sample", "example_keys", "prior_sample", "tweedie_denoise", "get_step", "STEPS",
    "EulerMaruyama", "ReverseDiffusion", "AncestralSampling", "Langevin", "AnnealedLangevin",
    "ODEEuler", "ODEHeun", "ODERK4", "DDIM", "EDMHeun", "DPMSolverPP2M", "DPMSolverPP2MSDE",
    "euler_maruyama", "reverse_diffusion", "ancestral_sampling", "langevin", "annealed_langevin",
    "ode_euler", "ode_heun", "ode_rk4", "ode_sample", "probability_flow_drift",
    "ddim", "edm_heun", "dpmpp_2m", "dpmpp_2m_sde",
    "GaussianFit", "fit_gaussian", "fitted_timesteps", "gaussian_score", "gaussian_solver_error", "gaussian_teleport",
    "teleport_sample", "teleport_t_skip",
    "DPMSolverPP3M", "DPMSolverPP3MSDE", "UniPC", "dpmpp_3m", "dpmpp_3m_sde", "unipc", "with_num_steps",
    "uniform_timesteps", "karras_timesteps", "log_snr_timesteps", "quadratic_timesteps", "TIME_GRIDS",
]
