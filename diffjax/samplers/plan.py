"""What a sampler option means, in one place: step names, the predictor-corrector pair, the adaptive ODE,
grids (including grids fitted to the data's Gaussian) and teleportation, turned into one value.

    sampler = make_sampler(sde, "unipc", num_steps=9, order=3, teleport="auto", fit=fit)
    result = sampler(score_fn, key, x_init)          # a SampleResult

``make_sampler`` is what a run's ``sampling`` config section and the ``diffjax sample`` flags mean;
:func:`get_step` builds a step by name. The names "pc" (the original predictor-corrector sampler),
"ode" (the adaptive probability flow) and "none" (no corrector) are understood here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Optional, Union

import jax.numpy as jnp
import numpy as np

from diffjax._checks import check_int, check_real
from diffjax.processes import SDE
from diffjax.samplers.base import Step, chain
from diffjax.samplers.driver import NOISES, sample
from diffjax.samplers.fast import ddim, dpmpp_2m, dpmpp_2m_sde, edm_heun
from diffjax.samplers.grids import TIME_GRIDS
from diffjax.samplers.learned import ipndm
from diffjax.samplers.multistep import dpmpp_3m, dpmpp_3m_sde, unipc
from diffjax.samplers.ode import ode_euler, ode_heun, ode_rk4, ode_sample
from diffjax.samplers.predictors import ancestral_sampling, annealed_langevin, euler_maruyama, langevin, reverse_diffusion
from diffjax.samplers.teleport import GaussianFit, fitted_timesteps, gaussian_teleport, teleport_t_skip

__all__ = ["STEPS", "GRIDS", "get_step", "Sampler", "make_sampler", "teleport_kappa"]

STEPS = {cls.__name__: cls for cls in (
    euler_maruyama, reverse_diffusion, ancestral_sampling, langevin, annealed_langevin, ode_euler, ode_heun, ode_rk4,
    ddim, edm_heun, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m, dpmpp_3m_sde, unipc, ipndm)}
"""Every step by its one name (the class's own)."""

GRIDS = (*TIME_GRIDS, "fitted")


def get_step(name: str, sde: SDE, **options) -> Step:
    """The step called ``name`` (see ``STEPS``) for process ``sde``; options go to its constructor.

    "pc" builds the original predictor-corrector sampler: ``predictor`` and ``corrector`` name the
    parts (defaults "reverse_diffusion", "langevin"; corrector "none": the predictor alone),
    ``corrector_first`` (default True) the order, ``snr`` and ``langevin_steps`` go to the corrector.
    """
    if name == "pc":
        predictor = options.pop("predictor", "reverse_diffusion")
        corrector = options.pop("corrector", "langevin")
        corrector_first = options.pop("corrector_first", True)
        p = get_step(predictor, sde)
        if corrector == "none":
            if options:
                raise ValueError(f"the corrector options {sorted(options)} need a corrector; got corrector='none'")
            return p
        c = get_step(corrector, sde, **options)
        if not p.moves_time or c.moves_time:
            raise ValueError(f"'pc' needs a predictor and a corrector; got predictor={predictor!r}, corrector={corrector!r}")
        return chain(c, p) if corrector_first else chain(p, c)
    if name not in STEPS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(STEPS) + ['pc', 'ode']}")
    return STEPS[name](sde, **options)


def teleport_kappa(value) -> Optional[float]:
    """The teleport option: "off" (or "", 0, None) -> None, "auto" -> -1 (the rule of the number of
    evaluations), or a distance kappa > 0 (sigma_skip / sqrt(the data's largest variance))."""
    if value in (None, "", "off", 0, 0.0, False):
        return None
    if value == "auto":
        return -1.0
    try:
        kappa = float(value)
    except (TypeError, ValueError):
        kappa = float("nan")
    if not kappa > 0 or not np.isfinite(kappa):
        raise ValueError(f"sampling.teleport must be 'off', 'auto' or a positive kappa (sigma_skip / "
                         f"sqrt(largest data variance)); got {value!r}")
    return kappa


@dataclasses.dataclass(frozen=True)
class Sampler:
    """How a run draws samples, as a value (compiled once per equal sampler): ``step`` on the grid
    ``timesteps`` (a tuple, computed ahead: fitted grids, teleportation) or on ``num_steps`` updates of
    ``grid``; or the adaptive probability-flow ODE when ``step`` is None. ``fit`` and ``t_skip``:
    teleport x_init from T to t_skip by the data's Gaussian flow first.
    ``sampler(score_fn, key, x_init) -> SampleResult``."""

    sde: SDE
    step: Optional[Step]
    grid: str = "uniform"
    num_steps: int = 1000
    denoise: bool = True
    ode_rtol: float = 1e-5
    timesteps: Optional[tuple] = None
    fit: Any = dataclasses.field(default=None, compare=False)
    t_skip: Optional[float] = None
    fit_digest: str = ""  # stands for ``fit`` in comparisons (its arrays are not hashable)
    noise: str = "independent"

    @property
    def nfe(self) -> Optional[int]:
        """Score evaluations per sample (None for the adaptive ODE, which decides them as it goes)."""
        if self.step is None:
            return None
        return self.num_steps * self.step.nfe + (self.step.denoise_nfe if self.denoise else 0)

    def __call__(self, score_fn, key, x_init):
        if self.step is None:
            return ode_sample(self.sde, score_fn, key, x_init, rtol=self.ode_rtol, atol=self.ode_rtol,
                              denoise=self.denoise)
        if self.timesteps is not None:
            ts = jnp.asarray(self.timesteps, jnp.float32)
        else:
            ts = TIME_GRIDS[self.grid](self.sde, self.num_steps)
        if self.t_skip is not None:
            x_init = gaussian_teleport(self.sde, x_init, self.sde.T, self.t_skip, self.fit)
        return sample(self.step, score_fn, key, x_init, ts, denoise=self.denoise, noise=self.noise)


def make_sampler(sde: SDE, method: str = "dpmpp_2m", *, num_steps: int = 50, grid: str = "log_snr", order: int = 0,
                 predictor: str = "reverse_diffusion", corrector: str = "langevin", snr: float = 0.16,
                 langevin_steps: int = 1, teleport: Union[str, float, None] = None, denoise: bool = True,
                 ode_rtol: float = 1e-5, fit: Union[GaussianFit, Callable[[], GaussianFit], None] = None,
                 noise: str = "independent") -> Sampler:
    """The :class:`Sampler` the options name.

    ``method``: a step name of :data:`STEPS` on ``grid`` (a :data:`~diffjax.samplers.TIME_GRIDS`
    name, or "fitted": fitted to the data's Gaussian, :func:`~diffjax.samplers.fitted_timesteps`)
    with ``num_steps`` updates; "pc" with ``predictor``, ``corrector`` ("none": the predictor
    alone), ``snr`` and ``langevin_steps``; or "ode", the adaptive probability-flow ODE (``ode_rtol``).
    ``order`` (> 0) sets the order of unipc / dpmpp_3m (1-3) or ipndm (1-4). ``teleport`` ("auto" or kappa) teleports to
    t_skip (:func:`~diffjax.samplers.teleport_t_skip`) and lays the grid below it. Fitted grids and
    teleportation need the data's Gaussian ``fit`` (or a function returning it, called only then).
    ``noise``: "independent" or "brownian" (stochastic steps on one Brownian path per example,
    whatever the grid; see :func:`~diffjax.samplers.sample`).
    """
    if noise not in NOISES:
        raise ValueError(f"sampling.noise must be one of {NOISES}; got {noise!r}")
    if method == "ode":
        check_real("make_sampler", "ode_rtol", ode_rtol, lo=0.0, lo_open=True)
        return Sampler(sde, None, ode_rtol=float(ode_rtol), denoise=bool(denoise))
    if grid not in GRIDS:
        raise ValueError(f"unknown sampling.grid {grid!r}; expected one of {sorted(GRIDS)}")
    check_int("make_sampler", "num_steps", num_steps, lo=1)
    kappa = teleport_kappa(teleport)
    if method == "pc":
        step = get_step("pc", sde, predictor=predictor, corrector=corrector,
                        **({} if corrector == "none" else dict(snr=snr, langevin_steps=langevin_steps)))
    elif order:
        if method not in ("unipc", "dpmpp_3m", "ipndm"):
            raise ValueError(f"sampling.order (--order) sets the order of unipc, dpmpp_3m or ipndm; {method!r} has a "
                             "fixed order (set order 0, or drop --order)")
        if order > 3 and method != "ipndm":
            raise ValueError(f"sampling.order of {method} is 1, 2 or 3 (4 is ipndm's); got {order}")
        step = get_step(method, sde, order=order)
    else:
        step = get_step(method, sde)
    if kappa is None and grid != "fitted":
        return Sampler(sde, step, grid, int(num_steps), bool(denoise), noise=noise)
    fit = fit() if callable(fit) else fit
    if not isinstance(fit, GaussianFit):
        raise ValueError("a fitted grid or teleportation needs the data's Gaussian fit (fit=samplers.fit_gaussian(x))")
    nfe = int(num_steps) * step.nfe + int(bool(denoise))
    t_skip = None if kappa is None else teleport_t_skip(sde, fit, None if kappa < 0 else kappa, nfe=nfe)
    if t_skip is not None and t_skip >= sde.T:
        t_skip = None  # the rule says: no teleport at this many evaluations
    t_max = sde.T if t_skip is None else t_skip
    if grid == "fitted":
        ts = fitted_timesteps(step, int(num_steps), fit, t_max=t_max, dtype=jnp.float32)
    else:
        ts = TIME_GRIDS[grid](sde, int(num_steps), t_max=t_max)
    digest = hashlib.sha1(b"".join(np.ascontiguousarray(np.asarray(v, np.float64)).tobytes()
                                   for v in (fit.mean, fit.eigvals, fit.eigvecs, fit.residual_var))).hexdigest()
    return Sampler(sde, step, grid, int(num_steps), bool(denoise), timesteps=tuple(float(v) for v in np.asarray(ts)),
                   fit=fit, t_skip=t_skip, fit_digest=digest, noise=noise)
