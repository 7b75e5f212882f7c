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


def _check(sde: SDE, n: int, eps: float | None) -> float:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the number of steps must be an integer >= 1; got {n!r}")
    eps = sde.sampling_eps if eps is None else float(eps)
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}); got {eps}")
    return eps


def _dtype(dtype):
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"a time grid's dtype must be floating point; got {dtype}")
    return dtype


def _pin_ends(t: Array, sde: SDE, eps: float) -> Array:
    return t.at[0].set(sde.T).at[-1].set(eps)


def uniform_timesteps(sde: SDE, n: int, eps: float | None = None, dtype=jnp.float32) -> Array:
    """t_i = T - i (T - eps) / n (the original's grid). eps defaults to ``sde.sampling_eps``."""
    eps, dtype = _check(sde, n, eps), _dtype(dtype)
    return jnp.linspace(sde.T, eps, n + 1, dtype=dtype)


def quadratic_timesteps(sde: SDE, n: int, eps: float | None = None, dtype=jnp.float32) -> Array:
    """t_i = eps + (T - eps) (1 - i/n)^2: steps shrink quadratically towards the data (DDIM's 'quad')."""
    eps, dtype = _check(sde, n, eps), _dtype(dtype)
    u = 1.0 - jnp.arange(n + 1, dtype=dtype) / n
    return _pin_ends(eps + (sde.T - eps) * u**2, sde, eps)


def log_snr_timesteps(sde: SDE, n: int, eps: float | None = None, dtype=jnp.float32) -> Array:
    """Uniform in lambda = log(a / sigma) from lambda(T) to lambda(eps) (DPM-Solver's 'logSNR')."""
    eps, dtype = _check(sde, n, eps), _dtype(dtype)
    lam = jnp.linspace(sde.log_snr(jnp.asarray(sde.T, dtype)), sde.log_snr(jnp.asarray(eps, dtype)), n + 1)
    return _pin_ends(sde.t_from_log_snr(lam), sde, eps)


def karras_timesteps(sde: SDE, n: int, eps: float | None = None, rho: float = 7.0, dtype=jnp.float32) -> Array:
    """EDM's grid: sigma_i = (smax^(1/rho) + i/n (smin^(1/rho) - smax^(1/rho)))^rho in the noise level
    sigma = exp(-lambda) of x / a, between sigma(T) and sigma(eps), mapped back to t."""
    eps, dtype = _check(sde, n, eps), _dtype(dtype)
    if not rho > 0:
        raise ValueError(f"rho must be > 0; got {rho}")
    s_max = jnp.exp(-sde.log_snr(jnp.asarray(sde.T, dtype)))
    s_min = jnp.exp(-sde.log_snr(jnp.asarray(eps, dtype)))
    u = jnp.arange(n + 1, dtype=dtype) / n
    sig = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return _pin_ends(sde.t_from_log_snr(-jnp.log(sig)), sde, eps)


TIME_GRIDS = {
    "uniform": uniform_timesteps,
    "quadratic": quadratic_timesteps,
    "log_snr": log_snr_timesteps,
    "karras": karras_timesteps,
}
