"""Time grids: decreasing arrays of n + 1 times from T down to t_end (n updates, ``num_steps``).

Every grid is computed in ``dtype`` (float32 by default; pass ``jnp.float64`` with
``jax_enable_x64`` for float64 samplers; the driver also promotes a float32 grid to the samples'
float64).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import is_traced
from diffjax.processes import SDE

Array = jax.Array
MAX_STEPS = 10 ** 7  # beyond this a grid alone fills gigabytes; no sampler needs it

__all__ = ["uniform_timesteps", "karras_timesteps", "log_snr_timesteps", "quadratic_timesteps", "trailing_timesteps",
           "TIME_GRIDS"]


def _check(sde: SDE, n: int, t_end: float | None, t_max: float | None = None) -> tuple[float, float]:
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_STEPS:
        raise ValueError(f"the number of steps must be an integer in [1, {MAX_STEPS:.0e}]; got {n!r}")
    t_end = sde.t_end if t_end is None else float(t_end)
    t_max = sde.T if t_max is None else float(t_max)
    if not 0 < t_end < sde.T:
        raise ValueError(f"t_end must lie in (0, T) = (0, {sde.T}); got {t_end}")
    if not t_end < t_max <= sde.T * (1 + 1e-6):
        raise ValueError(f"t_max must lie in (t_end, T] = ({t_end}, {sde.T}]; got {t_max}")
    return t_end, t_max


def _dtype(dtype):
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"a time grid's dtype must be floating point; got {dtype}")
    return dtype


def _pin_ends(t: Array, t_max: float, t_end: float) -> Array:
    return t.at[0].set(t_max).at[-1].set(t_end)


def _checked(t: Array) -> Array:
    """``t`` if it is finite and strictly decreasing (when concrete): a grid of too many steps for its
    dtype (float16, bfloat16) has repeated or NaN times, which would silently skip updates."""
    if is_traced(t):
        return t
    d = jnp.diff(t)
    if not bool(jnp.all(jnp.isfinite(t)) & jnp.all(d < 0)):
        raise ValueError(f"a grid of {t.shape[0] - 1} steps in {t.dtype} is not strictly decreasing (its precision "
                         "cannot resolve the steps); use float32 or float64, or fewer steps")
    return t


def uniform_timesteps(sde: SDE, num_steps: int, t_end: float | None = None, dtype=jnp.float32, t_max: float | None = None) -> Array:
    """t_i = T - i (T - t_end) / n (the original's grid). t_end defaults to ``sde.t_end``; every grid
    starts at ``t_max`` (default T) when given, e.g. after a teleport."""
    (t_end, t_max), dtype = _check(sde, num_steps, t_end, t_max), _dtype(dtype)
    return _checked(jnp.linspace(t_max, t_end, num_steps + 1, dtype=dtype))


def quadratic_timesteps(sde: SDE, num_steps: int, t_end: float | None = None, dtype=jnp.float32, t_max: float | None = None) -> Array:
    """t_i = t_end + (T - t_end) (1 - i/n)^2: steps shrink quadratically towards the data (DDIM's 'quad')."""
    (t_end, t_max), dtype = _check(sde, num_steps, t_end, t_max), _dtype(dtype)
    u = 1.0 - jnp.arange(num_steps + 1, dtype=dtype) / num_steps
    return _checked(_pin_ends(t_end + (t_max - t_end) * u**2, t_max, t_end))


def log_snr_timesteps(sde: SDE, num_steps: int, t_end: float | None = None, dtype=jnp.float32, t_max: float | None = None) -> Array:
    """Uniform in lambda = log(a / sigma) from lambda(T) to lambda(t_end) (DPM-Solver's 'logSNR')."""
    (t_end, t_max), dtype = _check(sde, num_steps, t_end, t_max), _dtype(dtype)
    lam = jnp.linspace(sde.log_snr(jnp.asarray(t_max, dtype)), sde.log_snr(jnp.asarray(t_end, dtype)), num_steps + 1)
    return _checked(_pin_ends(sde.t_from_log_snr(lam), t_max, t_end))


def karras_timesteps(sde: SDE, num_steps: int, t_end: float | None = None, rho: float = 7.0, dtype=jnp.float32,
                     t_max: float | None = None) -> Array:
    """EDM's grid: sigma_i = (smax^(1/rho) + i/n (smin^(1/rho) - smax^(1/rho)))^rho in the noise level
    sigma = exp(-lambda) of x / a, between sigma(T) and sigma(t_end), mapped back to t."""
    (t_end, t_max), dtype = _check(sde, num_steps, t_end, t_max), _dtype(dtype)
    if not rho > 0:
        raise ValueError(f"rho must be > 0; got {rho}")
    s_max = jnp.exp(-sde.log_snr(jnp.asarray(t_max, dtype)))
    s_min = jnp.exp(-sde.log_snr(jnp.asarray(t_end, dtype)))
    u = jnp.arange(num_steps + 1, dtype=dtype) / num_steps
    sig = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return _checked(_pin_ends(sde.t_from_log_snr(-jnp.log(sig)), t_max, t_end))


def trailing_timesteps(sde: SDE, num_steps: int, t_end: float | None = None, dtype=jnp.float32,
                       t_max: float | None = None) -> Array:
    """"Trailing" spacing of discrete-time samplers (Lin et al. 2024): the process's N steps
    (``sde.N``) taken every N / n from the last one, k_i = round(N - i N / n) for i < n, as times
    t_max k_i / N, then t_end. It always starts at T (what "leading" and "linspace" spacings of
    DDPM indices miss); on a continuous process it is the uniform grid rounded to the N steps."""
    (t_end, t_max), dtype = _check(sde, num_steps, t_end, t_max), _dtype(dtype)
    big_n = int(getattr(sde, "N", 1000))
    if num_steps > big_n:
        raise ValueError(f"trailing spacing takes at most the process's N = {big_n} steps; got {num_steps}")
    k = np.round(big_n - np.arange(num_steps) * big_n / num_steps)
    ts = jnp.concatenate([jnp.asarray(t_max * k / big_n, dtype), jnp.asarray([t_end], dtype)])
    return _checked(ts)


TIME_GRIDS = {
    "uniform": uniform_timesteps,
    "trailing": trailing_timesteps,
    "quadratic": quadratic_timesteps,
    "log_snr": log_snr_timesteps,
    "karras": karras_timesteps,
}
