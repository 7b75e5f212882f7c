"""Moved: the forward processes live in :mod:`diffjax.processes` since diffjax 0.2."""

raise ImportError("diffjax.sde moved to diffjax.processes in diffjax 0.2: write `from diffjax.processes import VPSDE` "
                  "(every process is also diffjax.VPSDE, diffjax.EDM, ...)")
