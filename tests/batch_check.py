"""Alone-versus-in-batch comparison of every sampler, importable by the tests and runnable as a
script (``python tests/batch_check.py`` prints the differences as JSON)."""

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
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


def per_example_score(gm, sde):
    """The mixture's score computed one example at a time, so the score itself cannot depend on the
    batch size (the samplers' own arithmetic is what is compared)."""

    def score_fn(x, t):
        out = jax.lax.map(lambda xt: gm.score(xt[0][None], sde, xt[1][None])[0], (x, t))
        return jax.lax.optimization_barrier(out)

    return score_fn


def random_bits(position=3, batch=7, steps=8):
    """The raw random bits (uint32) that example ``position`` draws at every step, in a batch of
    ``batch`` and alone: integer arithmetic (threefry), so equal bit for bit on every machine."""
    key = jax.random.PRNGKey(3)
    keys = S.example_keys(key, batch)

    def bits(ks):
        return jnp.stack([jax.vmap(lambda k: jax.random.bits(k, (16,)))(S.base.fold_keys(ks, i)) for i in range(steps)])

    return np.asarray(bits(keys)[:, position]), np.asarray(bits(keys[position:position + 1])[:, 0])


def differences(position=3, batch=7, dtype=jnp.float32, steps=STEPS):
    """Per sampler: (largest |alone - in batch|, largest |x|) for example ``position`` of a batch of
    ``batch``, and (key "other_key") the difference the example's neighbour's key makes."""
    sde, gm = VPSDE(), mixture_16d()
    score_fn = per_example_score(gm, sde)
    key = jax.random.PRNGKey(3)
    keys = S.example_keys(key, batch)
    x_init = S.prior_sample(sde, key, (batch, 16), dtype)
    ts = S.uniform_timesteps(sde, 8, dtype=dtype)
    alone_init = x_init[position:position + 1]
    out = {}
    for i, (name, opts) in enumerate(steps):
        step = S.get_step(name, sde, **opts)
        together = S.sample(step, score_fn, key, x_init, ts).x
        alone = S.sample(step, score_fn, keys[position:position + 1], alone_init, ts).x
        diff = float(np.abs(np.asarray(alone[0], np.float64) - np.asarray(together[position], np.float64)).max())
        out[f"{i}:{step.name}"] = (diff, float(np.abs(np.asarray(together[position])).max()))
        if name == "euler_maruyama":  # the same start with the neighbour's noise: what a key mix-up looks like
            res = S.sample(step, score_fn, keys[position + 1:position + 2], alone_init, ts)
            other = res.x
            out["other_key"] = (float(np.abs(np.asarray(other[0]) - np.asarray(alone[0])).max()), 0.0)
    x_ode = S.ode_sample(sde, score_fn, None, x_init).x
    x_ode1 = S.ode_sample(sde, score_fn, None, alone_init).x
    out["adaptive_ode"] = (float(np.abs(np.asarray(x_ode1[0]) - np.asarray(x_ode[position])).max()),
                           float(np.abs(np.asarray(x_ode[position])).max()))
    return out


if __name__ == "__main__":
    print(json.dumps(differences()))
