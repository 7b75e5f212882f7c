"""Alone-versus-in-batch comparison of every sampler, importable by the tests and runnable as a
script (the tests run it in a fresh process whose XLA flags forbid fused multiply-add)."""

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import mixture_16d  # noqa: E402

from diffjax import VPSDE  # noqa: E402
from diffjax import samplers as S  # noqa: E402

STEPS = [
    ("euler_maruyama", {}), ("reverse_diffusion", {}), ("ancestral_sampling", {}),
    ("pc", {}), ("pc", {"corrector": "annealed_langevin", "corrector_first": False}),
    ("ode_euler", {}), ("ode_heun", {}), ("ode_rk4", {}), ("ddim", {"eta": 0.5}),
    ("edm_heun", {"S_churn": 10.0, "num_steps": 8}), ("dpmpp_2m", {}), ("dpmpp_2m_sde", {}),
]


def differences(position=3, batch=7):
    """Largest |alone - in batch| per sampler for example ``position`` of a batch of ``batch``."""
    sde, gm = VPSDE(), mixture_16d()

    def score_fn(x, t):
        # examples one at a time, so the score itself cannot depend on the batch size
        out = jax.lax.map(lambda xt: gm.score(xt[0][None], sde, xt[1][None])[0], (x, t))
        return jax.lax.optimization_barrier(out)

    key = jax.random.PRNGKey(3)
    keys = S.example_keys(key, batch)
    x_init = S.prior_sample(sde, key, (batch, 16))
    ts = S.uniform_timesteps(sde, 8)
    out = {}
    for i, (name, opts) in enumerate(STEPS):
        step = S.get_step(name, sde, **opts)
        together, _ = S.sample(step, score_fn, key, x_init, ts)
        alone, _ = S.sample(step, score_fn, keys[position : position + 1], x_init[position : position + 1], ts)
        out[f"{i}:{step.name}"] = float(np.abs(np.asarray(alone[0]) - np.asarray(together[position])).max())
    x_ode, _ = S.ode_sample(sde, score_fn, None, x_init)
    x_ode1, _ = S.ode_sample(sde, score_fn, None, x_init[position : position + 1])
    out["adaptive_ode"] = float(np.abs(np.asarray(x_ode1[0]) - np.asarray(x_ode[position])).max())
    return out


if __name__ == "__main__":
    print(json.dumps(differences()))
