"""Time grids: decreasing arrays of n + 1 times from T down to eps (n updates).

Every grid is computed in ``dtype`` (float32 by default; pass ``jnp.float64`` with
``jax_enable_x64`` for float64 samplers; the driver also promotes a float32 grid to the samples'
float64).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.sde import SDE

Array = jax.Array

__all__ = ["uniform_timesteps", "karras_timesteps", "log_snr_timesteps", "quadratic_timesteps", "TIME_GRIDS"]


def _check(sde: SDE, n: int, eps: float | None, t_max: float | None = None) -> tuple[float, float]:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the number of steps must be an integer >= 1; got {n!r}")
    eps = sde.sampling_eps if eps is None else float(eps)
    t_max = sde.T if t_max is None else float(t_max)
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}); got {eps}")
    if not eps < t_max <= sde.T * (1 + 1e-6):
        raise ValueError(f"t_max must lie in (eps, T] = ({eps}, {sde.T}]; got {t_max}")
    return eps, t_max


def _dtype(dtype):
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"a time grid's dtype must be floating point; got {dtype}")
    return dtype


def _pin_ends(t: Array, t_max: float, eps: float) -> Array:
    return t.at[0].set(t_max).at[-1].set(eps)


def uniform_timesteps(sde: SDE, n: int, eps: float | None = None, dtype=jnp.float32, t_max: float | None = None) -> Array:
    """t_i = T - i (T - eps) / n (the original's grid). eps defaults to ``sde.sampling_eps``; every grid
    starts at ``t_max`` (default T) when given, e.g. after a teleport."""
    (eps, t_max), dtype = _check(sde, n, eps, t_max), _dtype(dtype)
    return jnp.linspace(t_max, eps, n + 1, dtype=dtype)


def quadratic_timesteps(sde: SDE, n: int, eps: float | None = None, dtype=jnp.float32, t_max: float | None = None) -> Array:
    """t_i = eps + (T - eps) (1 - i/n)^2: steps shrink quadratically towards the data (DDIM's 'quad')."""
    (eps, t_max), dtype = _check(sde, n, eps, t_max), _dtype(dtype)
    u = 1.0 - jnp.arange(n + 1, dtype=dtype) / n
    return _pin_ends(eps + (t_max - eps) * u**2, t_max, eps)


def log_snr_timesteps(sde: SDE, n: int, eps: float | None = None, dtype=jnp.float32, t_max: float | None = None) -> Array:
    """Uniform in lambda = log(a / sigma) from lambda(T) to lambda(eps) (DPM-Solver's 'logSNR')."""
    (eps, t_max), dtype = _check(sde, n, eps, t_max), _dtype(dtype)
    lam = jnp.linspace(sde.log_snr(jnp.asarray(t_max, dtype)), sde.log_snr(jnp.asarray(eps, dtype)), n + 1)
    return _pin_ends(sde.t_from_log_snr(lam), t_max, eps)


def karras_timesteps(sde: SDE, n: int, eps: float | None = None, rho: float = 7.0, dtype=jnp.float32,
                     t_max: float | None = None) -> Array:
    """EDM's grid: sigma_i = (smax^(1/rho) + i/n (smin^(1/rho) - smax^(1/rho)))^rho in the noise level
    sigma = exp(-lambda) of x / a, between sigma(T) and sigma(eps), mapped back to t."""
    (eps, t_max), dtype = _check(sde, n, eps, t_max), _dtype(dtype)
    if not rho > 0:
        raise ValueError(f"rho must be > 0; got {rho}")
    s_max = jnp.exp(-sde.log_snr(jnp.asarray(t_max, dtype)))
    s_min = jnp.exp(-sde.log_snr(jnp.asarray(eps, dtype)))
    u = jnp.arange(n + 1, dtype=dtype) / n
    sig = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return _pin_ends(sde.t_from_log_snr(-jnp.log(sig)), t_max, eps)


TIME_GRIDS = {
    "uniform": uniform_timesteps,
    "quadratic": quadratic_timesteps,
    "log_snr": log_snr_timesteps,
    "karras": karras_timesteps,
}
