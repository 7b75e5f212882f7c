"""The reverse-time process of a forward process: the SDE with any diffusion eps(t), and the probability flow."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.numerics.arrays import expand_to
from diffjax.processes.base import SDE

Array = jax.Array
ScoreFn = Callable[..., Array]

__all__ = ["ReverseSDE", "probability_flow_drift"]


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
    """The reverse-time process of ``forward`` driven by ``score_fn(x, t, **cond)``.

    SDE:               dx = [f(t) x - g(t)^2 s(x, t)] dt + g(t) dw_bar   (Anderson, 1982)
    probability flow:  dx = [f(t) x - g(t)^2 s(x, t) / 2] dt               (no diffusion)
    noise level eps:   dx = [f x - (g^2 / 2 + eps(t)) s] dt + sqrt(2 eps(t)) dw_bar

Every eps(t) >= 0 has the same marginals (the Fokker–Planck equation of the flow plus a Langevin
term at zero net probability current); eps = g^2 / 2 is Anderson's SDE, eps = 0 the flow. A bounded
eps is the stochastic interpolants' choice where g^2 diverges at the noise end (rectified flow:
g^2 = 2t / (1 - t)). ``epsilon`` is None (g^2 / 2), a number or a function eps(t).

    ``discretize`` gives the matching reverse step of the forward chain: with (f, G) from
    ``forward.discretize``, rev_f = f - G^2 s (times 1/2 for the flow) and rev_G = G (0 for the flow),
    so that x_{i-1} = x_i - rev_f + rev_G z.
    """

    forward: SDE
    score_fn: ScoreFn
    probability_flow: bool = False
    epsilon: object = None

    @property
    def T(self) -> float:
        return self.forward.T

    @property
    def N(self) -> int:
        return self.forward.N

    def _scale(self) -> float:
        return 0.5 if self.probability_flow else 1.0

    def noise_level(self, t: Array) -> Array:
        """eps(t) of the reverse SDE, shape of t: g^2/2 by default, 0 for the flow."""
        if self.probability_flow:
            return jnp.zeros_like(jnp.asarray(t, jnp.result_type(t, jnp.float32)))
        if self.epsilon is None:
            return 0.5 * self.forward.drift_diffusion_coeffs(t)[1] ** 2
        if callable(self.epsilon):
            return jnp.broadcast_to(jnp.asarray(self.epsilon(t)), jnp.shape(t))
        return jnp.full(jnp.shape(t), self.epsilon, jnp.result_type(t, jnp.float32))

    def sde(self, x: Array, t: Array, **cond) -> tuple[Array, Array]:
        """Reverse drift (shape of x) and diffusion sqrt(2 eps) (shape (batch,)); zero diffusion for the flow."""
        drift, g = self.forward.sde(x, t)
        score = self.score_fn(x, t, **cond)
        if self.epsilon is None or self.probability_flow:
            drift = drift - expand_to(g**2, x) * score * self._scale()
            return drift, (jnp.zeros_like(g) if self.probability_flow else g)
        eps = self.noise_level(t)
        drift = drift - expand_to(0.5 * g**2 + eps, x) * score
        return drift, jnp.sqrt(2.0 * eps)

    def discretize(self, x: Array, t: Array, **cond) -> tuple[Array, Array]:
        """Reverse step coefficients (rev_f, rev_G) of the forward chain; see the class docstring."""
        f, big_g = self.forward.discretize(x, t)
        score = self.score_fn(x, t, **cond)
        rev_f = f - expand_to(big_g**2, x) * score * self._scale()
        return rev_f, (jnp.zeros_like(big_g) if self.probability_flow else big_g)


jax.tree_util.register_dataclass(ReverseSDE, data_fields=["forward"],
                                 meta_fields=["score_fn", "probability_flow", "epsilon"])


def probability_flow_drift(sde: SDE, score_fn: ScoreFn, x: Array, t: Array) -> Array:
    """The probability-flow velocity f(t) x - g(t)^2 s(x, t) / 2, shape of x; t of shape (batch,)."""
    return sde.reverse(score_fn, probability_flow=True).sde(x, t)[0]
