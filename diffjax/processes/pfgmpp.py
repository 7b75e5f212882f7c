"""PFGM++ (Xu et al. 2023): EDM's noise-level time with a Student-t perturbation kernel."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from diffjax._jit import bind
from diffjax.numerics.arrays import expand_to
from diffjax.processes.base import process_class
from diffjax.processes.schedules import NoiseLevelTime

Array = jax.Array

__all__ = ["PFGMPP"]


@process_class
class PFGMPP(NoiseLevelTime):
    """PFGM++ (Xu et al. 2023): EDM's time (a = 1, t = sigma) with a Student-t perturbation kernel.

    With D extra dimensions and r = sigma sqrt(D), the kernel on the N data dimensions is

        p_r(x | x0) proportional to (||x - x0||^2 + r^2)^(-(N + D) / 2),

    a multivariate Student-t with D degrees of freedom and scale sigma: x - x0 = sigma z / sqrt(chi2_D / D),
    z ~ N(0, I_N) (``prior_method="chi2"``), or equally R u with R^2 / r^2 ~ BetaPrime(N/2, D/2) and u
    uniform on the sphere (``"beta_prime"``, the paper's sampler). D = inf is EDM. N is always read
    from the data's shape, so it cannot be set wrong.

    The network is EDM's denoiser D(x, sigma) and sampling is EDM's ODE dx/dsigma = (x - D) / sigma
    from the heavy-tailed prior at sigma_max. diffjax's samplers take a score function; here
    ``score_fn`` is the EDM-equivalent (D - x) / sigma^2, for which Tweedie's formula returns D and
    the probability-flow drift f x - g^2 s / 2 is the ODE above. So the deterministic steps
    (``edm_heun`` without churn, ``ddim`` with eta = 0, ``dpmpp_2m``, ``ode_*``) and ``ode_sample``
    apply as they are; stochastic steps, the Gaussian closed forms and the probability-flow
    likelihood raise (its ``kernel`` is "student_t").
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    N: int = 1000
    D: float = dataclasses.field(default=128.0, metadata={"static": True})  # inf or finite: decides the kernel's form
    prior_method: str = "chi2"

    name = "pfgmpp"
    kernel = "student_t"
    _INFINITE_OK = ("D",)

    def __post_init__(self):
        super().__post_init__()
        if not (self.D > 2):
            raise ValueError(f"PFGMPP needs D > 2 extra dimensions (finite variance), or D = inf for EDM; got D={self.D}")
        if self.prior_method not in ("chi2", "beta_prime"):
            raise ValueError(f"unknown PFGMPP prior_method {self.prior_method!r}; expected 'chi2' or 'beta_prime'")

    def kernel_noise(self, key: Array, shape, sigma: Array, dtype=jnp.float32) -> Array:
        """Student-t kernel noise x - x0 for examples of ``shape`` (batch, ...) at noise levels ``sigma`` (batch,)."""
        shape = tuple(shape)
        n_dim = math.prod(shape[1:])
        k_z, k_r = jax.random.split(key)
        z = jax.random.normal(k_z, shape, dtype)
        if math.isinf(self.D):
            return expand_to(jnp.asarray(sigma, dtype), z) * z
        if self.prior_method == "chi2":
            chi2 = 2.0 * jax.random.gamma(k_r, 0.5 * self.D, (shape[0],), dtype)
            scale = jnp.asarray(sigma, dtype) / jnp.sqrt(chi2 / self.D)
            return expand_to(scale, z) * z
        b = jax.random.beta(k_r, 0.5 * n_dim, 0.5 * self.D, (shape[0],), dtype)
        radius = jnp.asarray(sigma, dtype) * math.sqrt(self.D) * jnp.sqrt(b / (1.0 - b))
        norm = jnp.sqrt(jnp.sum(jnp.reshape(z, (shape[0], -1)) ** 2, axis=1))
        return expand_to(radius / norm, z) * z

    def perturb(self, key, x0, t):
        return x0 + self.kernel_noise(key, jnp.shape(x0), t, jnp.result_type(x0))

    def prior_example(self, key, shape, dtype=jnp.float32):
        sigma = jnp.full((1,), self.sigma_max, dtype)
        return self.kernel_noise(key, (1,) + tuple(shape), sigma, dtype)[0]

    def prior_sampling(self, key, shape, dtype=jnp.float32):
        shape = tuple(shape)
        if len(shape) < 1:
            raise ValueError(f"shape must be (batch, ...); got {shape}")
        return self.kernel_noise(key, shape, jnp.full(shape[:1], self.sigma_max, dtype), dtype)

    def prior_logp(self, z):
        raise ValueError("PFGMPP has no Gaussian prior density here: the probability-flow likelihood needs the "
                         "augmented-space flow, which diffjax does not implement")

    def delta_mixture_score(self, atoms: Array, weights: Array) -> Callable[[Array, Array], Array]:
        """The exact EDM-equivalent score (D* - x) / sigma^2 for data on atoms (K, d) with weights (K,):
        D*(x, sigma) = sum_k w_k mu_k, w_k proportional to pi_k (||x - mu_k||^2 + sigma^2 D)^(-(N + D) / 2)."""
        return bind(_pfgmpp_delta_score, self, jnp.asarray(atoms), jnp.asarray(weights))




def _pfgmpp_delta_score(process: PFGMPP, atoms: Array, weights: Array, x: Array, t: Array) -> Array:
    n_dim = x.shape[1]
    sq = jnp.sum((x[:, None, :] - atoms[None]) ** 2, axis=-1)  # (B, K)
    sig2 = expand_to(t, sq) ** 2
    if math.isinf(process.D):
        logw = jnp.log(weights)[None] - 0.5 * sq / sig2
    else:
        logw = jnp.log(weights)[None] - 0.5 * (n_dim + process.D) * jnp.log(sq + sig2 * process.D)
    w = jax.nn.softmax(logw, axis=-1)
    d = w @ atoms
    return (d - x) / expand_to(t, x) ** 2
