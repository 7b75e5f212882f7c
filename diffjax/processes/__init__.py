"""Forward processes: any Gaussian diffusion x_t = a(t) x0 + sigma(t) z, and PFGM++'s kernel.

    from diffjax.processes import VPSDE, EDM, RectifiedFlow
    sde = VPSDE()
    mean, std = sde.marginal_prob(x0, t)        # t of shape (batch,)

:mod:`~diffjax.processes.base` holds the base class :class:`SDE` (everything follows from the
marginal coefficients a(t), sigma(t)) and the registration rule; :mod:`~diffjax.processes.classic`
the 2021 processes (VE, VP, sub-VP); :mod:`~diffjax.processes.schedules` the modern ones (EDM, the
cosine schedule, rectified flow, one-sided interpolants, your own marginal);
:mod:`~diffjax.processes.pfgmpp` PFGM++; :mod:`~diffjax.processes.reverse` the reverse-time process.
``PROCESSES`` maps each class's ``name`` to the class.
"""

from diffjax.processes.base import SDE, check_batch_time, check_epsilon, check_t_end, process_class
from diffjax.processes.classic import VESDE, VPSDE, SubVPSDE
from diffjax.processes.pfgmpp import PFGMPP
from diffjax.processes.reverse import ReverseSDE, probability_flow_drift
from diffjax.processes.schedules import (
    INTERPOLANT_ALPHAS,
    INTERPOLANT_GAMMAS,
    EDM,
    CosineVP,
    CustomProcess,
    NoiseLevelTime,
    OneSidedInterpolant,
    RectifiedFlow,
    zero_terminal_snr,
)

PROCESSES = {cls.name: cls for cls in (VESDE, VPSDE, SubVPSDE, EDM, CosineVP, RectifiedFlow, OneSidedInterpolant,
                                       PFGMPP, CustomProcess)}

__all__ = ["SDE", "VESDE", "VPSDE", "SubVPSDE", "EDM", "CosineVP", "RectifiedFlow", "OneSidedInterpolant",
           "CustomProcess", "PFGMPP", "NoiseLevelTime", "ReverseSDE", "probability_flow_drift", "PROCESSES", "process_class", "check_batch_time", "check_t_end",
           "check_epsilon", "INTERPOLANT_ALPHAS", "INTERPOLANT_GAMMAS", "zero_terminal_snr"]
