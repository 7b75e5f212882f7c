"""Compile once (issue 20): steps, processes and score functions are values, so calling the samplers,
the adaptive ODE and the likelihood from other JAX code with freshly built steps and new parameters
of the same shapes compiles one program; and everything still works under jit, grad and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import mixture_2d, x64

from diffjax import SubVPSDE, VESDE, VPSDE, guidance, likelihood
from diffjax import processes as P
from diffjax import samplers as S
from diffjax.score import make_score_fn


def mlp_apply(params, x, labels):
    """A tiny eps-network: one hidden layer, time through the labels."""
    h = jnp.tanh(x @ params["w1"] + labels[:, None] / 1000.0 * params["wt"] + params["b1"])
    return h @ params["w2"]


def mlp_params(seed, dtype=jnp.float32):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    return {"w1": 0.5 * jax.random.normal(k[0], (2, 16), dtype), "wt": jax.random.normal(k[1], (16,), dtype),
            "b1": jnp.zeros((16,), dtype), "w2": 0.1 * jax.random.normal(k[2], (16, 2), dtype)}


def test_sample_compiles_once_for_fresh_steps_and_fresh_parameters():
    key, x = jax.random.PRNGKey(0), jnp.ones((8, 2))
    before = S.driver._run.cache_size()
    outs = []
    for seed in range(3):
        sde = VPSDE()  # built anew, as are the step, the grid and the score function
        score_fn = make_score_fn(mlp_apply, mlp_params(seed), sde, labels="score_sde")
        outs.append(S.sample(S.dpmpp_2m(sde), score_fn, key, x, S.log_snr_timesteps(sde, 5)).x)
    assert S.driver._run.cache_size() == before + 1
    assert not np.allclose(outs[0], outs[1])  # the new parameters were used, not compiled-in old ones


def test_ode_sample_and_log_likelihood_compile_once_for_fresh_parameters():
    key, x = jax.random.PRNGKey(0), jnp.ones((4, 2))
    before_ode, before_ll = S.ode._ode_sample.cache_size(), likelihood._log_likelihood.cache_size()
    for seed in range(3):
        sde = VPSDE()
        score_fn = make_score_fn(mlp_apply, mlp_params(seed), sde, labels="score_sde")
        S.ode_sample(sde, score_fn, key, x, rtol=1e-3, atol=1e-3)
        likelihood.log_likelihood(sde, score_fn, key, x, rtol=1e-3, atol=1e-3)
    assert S.ode._ode_sample.cache_size() == before_ode + 1
    assert likelihood._log_likelihood.cache_size() == before_ll + 1


def test_a_mixture_score_and_a_guidance_weight_array_do_not_recompile():
    gm, sde, key, x = mixture_2d(), VESDE(), jax.random.PRNGKey(0), jnp.ones((6, 2))
    ts = S.karras_timesteps(sde, 4)
    before = S.driver._run.cache_size()
    for w in (0.5, 1.0, 2.0):  # arrays: traced, one program
        cond = gm.score_fn(sde)
        score = guidance.guided_score(cond, mixture_2d().score_fn(sde), jnp.asarray(w))
        S.sample(S.ddim(sde), score, key, x, ts)
    assert S.driver._run.cache_size() == before + 1
    S.sample(S.ddim(sde), guidance.guided_score(gm.score_fn(sde), gm.score_fn(sde), 0.0), key, x, ts)
    S.sample(S.ddim(sde), guidance.guided_score(gm.score_fn(sde), gm.score_fn(sde), 0.0), key, x, ts)
    assert S.driver._run.cache_size() == before + 2  # a Python number is static: one program for w = 0


# ----------------------------------------------------------------------------------------------
# steps and processes as values

PROCESS_VARIANTS = {
    "vesde": (VESDE, {}, [{"sigma_min": 0.02}, {"sigma_max": 80.0}, {"N": 500}]),
    "vpsde": (VPSDE, {}, [{"beta_min": 0.2}, {"beta_max": 15.0}, {"N": 500}]),
    "subvpsde": (SubVPSDE, {}, [{"beta_min": 0.2}, {"beta_max": 15.0}, {"N": 500}]),
    "edm": (P.EDM, {}, [{"sigma_min": 0.01}, {"sigma_max": 40.0}]),
    "cosine": (P.CosineVP, {}, [{"s": 0.01}, {"t_max": 0.99}, {"max_beta": 0.99}]),
    "rectified_flow": (P.RectifiedFlow, {}, [{"t_max": 0.99}, {"t_end": 1e-2}]),
    "interpolant": (P.OneSidedInterpolant, {}, [{"alpha": "trig"}, {"gamma": "zero"}, {"gamma_scale": 0.5}]),
    "pfgmpp": (P.PFGMPP, {}, [{"D": 2048.0}, {"prior_method": "beta_prime"}, {"sigma_max": 40.0}]),
}

# every step of samplers.STEPS: (base options, variants that change one hyper-parameter)
STEP_VARIANTS = {
    "euler_maruyama": ({}, [{"epsilon": 0.5}]),
    "reverse_diffusion": ({}, []),
    "ancestral_sampling": ({}, [{"variance": "posterior"}]),
    "langevin": ({}, [{"snr": 0.1}, {"langevin_steps": 2}, {"norms": "batch"}]),
    "annealed_langevin": ({}, [{"snr": 0.1}, {"langevin_steps": 2}]),
    "ode_euler": ({}, []),
    "ode_heun": ({}, []),
    "ode_rk4": ({}, []),
    "ddim": ({}, [{"eta": 0.5}]),
    "edm_heun": ({"num_steps": 4}, [{"num_steps": 8}, {"S_churn": 1.0}, {"S_noise": 0.9}, {"S_tmin": 0.1},
                                    {"S_tmax": 10.0}]),
    "dpmpp_2m": ({}, [{"lower_order_final": True}]),
    "dpmpp_2m_sde": ({}, [{"lower_order_final": True}]),
    "dpmpp_3m": ({}, [{"order": 2}, {"weighting": "reference"}, {"lower_order_final": False}]),
    "dpmpp_3m_sde": ({}, [{"eta": 0.5}, {"order": 2}, {"weighting": "reference"}]),
    "unipc": ({}, [{"order": 2}, {"variant": "bh1"}, {"corrector": False}, {"predictor": "dpmpp"}]),
    "ipndm": ({}, [{"order": 3}]),
}


def test_every_step_is_listed():
    assert set(STEP_VARIANTS) == set(S.STEPS)


@pytest.mark.parametrize("name", sorted(PROCESS_VARIANTS))
def test_processes_are_values(name):
    cls, base, variants = PROCESS_VARIANTS[name]
    a, b = cls(**base), cls(**base)
    assert a == b and hash(a) == hash(b)
    for v in variants:
        other = cls(**{**base, **v})
        assert other != a, v
    # a process with another parameter is another program; an equal one is the same program
    key, x, gm = jax.random.PRNGKey(0), jnp.ones((3, 2)), mixture_2d()

    def score(p):  # PFGM++ has no Gaussian marginals: the exact score of the mixture's means as atoms
        return gm.score_fn(p) if p.kernel == "gaussian" else p.delta_mixture_score(gm.means, gm.weights)

    before = S.driver._run.cache_size()
    S.sample(S.ddim(a), score(a), key, x, S.uniform_timesteps(a, 3))
    S.sample(S.ddim(b), score(b), key, x, S.uniform_timesteps(b, 3))
    other = cls(**{**base, **variants[0]})
    S.sample(S.ddim(other), score(other), key, x, S.uniform_timesteps(other, 3))
    assert S.driver._run.cache_size() == before + 2


@pytest.mark.parametrize("name", sorted(STEP_VARIANTS))
def test_steps_are_values(name):
    base, variants = STEP_VARIANTS[name]
    sde = VPSDE()
    a, b = S.get_step(name, sde, **base), S.get_step(name, VPSDE(), **base)
    assert a == b and hash(a) == hash(b), name
    assert S.get_step(name, VPSDE(beta_max=15.0), **base) != a
    steps = [a] + [S.get_step(name, sde, **{**base, **v}) for v in variants]
    for v, s in zip(variants, steps[1:]):
        assert s != a and hash(s) != hash(a), (name, v)
    key, x, score = jax.random.PRNGKey(0), jnp.ones((3, 2)), mixture_2d().score_fn(sde)
    ts = S.uniform_timesteps(sde, 2)
    before = S.driver._run.cache_size()
    for s in steps + [b]:
        S.sample(s, score, key, x, ts)
    assert S.driver._run.cache_size() == before + len(steps), name  # b reuses a's program


def test_steps_of_different_classes_with_the_same_fields_are_different_programs():
    """jax 0.10 compares the tree structures of two dataclass pytrees with the same fields as equal
    (ODEHeun(sde) and ODERK4(sde)); the compile cache must not hand one the other's program."""
    sde, key = VPSDE(), jax.random.PRNGKey(0)
    x, ts, score = jnp.ones((3, 2)), S.uniform_timesteps(sde, 4), mixture_2d().score_fn(sde)
    heun = S.sample(S.ode_heun(sde), score, key, x, ts).x
    rk4 = S.sample(S.ode_rk4(sde), score, key, x, ts).x
    euler = S.sample(S.ode_euler(sde), score, key, x, ts).x
    assert not np.allclose(heun, rk4) and not np.allclose(heun, euler) and not np.allclose(rk4, euler)


def test_chains_and_custom_steps_are_values():
    sde = VESDE()
    assert S.get_step("pc", sde) == S.chain(S.langevin(sde), S.reverse_diffusion(VESDE()))
    assert S.get_step("pc", sde, snr=0.1) != S.get_step("pc", sde)

    def update(sde, keys, x, state, t, t_next, score_fn):
        return x, state

    assert S.custom_step(update, sde, nfe=0) == S.custom_step(update, VESDE(), nfe=0)
    assert S.custom_step(update, sde, nfe=0) != S.custom_step(update, sde, nfe=0, moves_time=False)


# ----------------------------------------------------------------------------------------------
# jit, grad and vmap around the driver


def test_jit_grad_and_vmap_around_the_driver():
    with x64():
        sde, gm = VPSDE(), mixture_2d()
        ts = S.log_snr_timesteps(sde, 6, dtype=jnp.float64)
        key = jax.random.PRNGKey(1)
        x0 = S.prior_sample(sde, key, (5, 2), jnp.float64)
        params = jax.tree_util.tree_map(lambda v: v.astype(jnp.float64), mlp_params(0))

        def loss_x(x):  # deterministic: the samples' mean square, through DPM-Solver++(2M)
            return jnp.sum(S.sample(S.dpmpp_2m(sde), gm.score_fn(sde), key, x, ts).x ** 2)

        def loss_scale(scale):  # classifier guidance towards component 1 with a traced scale
            log_p = guidance.classifier_log_prob(lambda x, t: gm.component_log_probs(x, sde, t), jnp.ones(5, jnp.int32))
            score = guidance.classifier_guided_score(gm.score_fn(sde), log_p, scale)
            return jnp.sum(S.sample(S.ddim(sde), score, key, x0, ts).x[:, 0])

        def loss_params(p):
            return jnp.sum(S.sample(S.ddim(sde), make_score_fn(mlp_apply, p, sde, labels="score_sde"), key, x0, ts).x ** 2)

        # the user's own jit gives the driver's result
        np.testing.assert_allclose(jax.jit(loss_x)(x0), loss_x(x0), rtol=1e-12)
        # gradients against central finite differences
        g = jax.grad(loss_x)(x0)
        e = jnp.zeros_like(x0).at[2, 1].set(1.0)
        fd = (loss_x(x0 + 1e-6 * e) - loss_x(x0 - 1e-6 * e)) / 2e-6
        np.testing.assert_allclose(g[2, 1], fd, rtol=1e-5)
        scale = jnp.asarray(1.5)
        fd = (loss_scale(scale + 1e-6) - loss_scale(scale - 1e-6)) / 2e-6
        np.testing.assert_allclose(jax.jit(jax.grad(loss_scale))(scale), fd, rtol=1e-5)
        gp = jax.grad(loss_params)(params)
        dp = jax.tree_util.tree_map(jnp.zeros_like, params)
        dp["w2"] = dp["w2"].at[3, 0].set(1.0)
        plus = jax.tree_util.tree_map(lambda p, d: p + 1e-6 * d, params, dp)
        minus = jax.tree_util.tree_map(lambda p, d: p - 1e-6 * d, params, dp)
        np.testing.assert_allclose(gp["w2"][3, 0], (loss_params(plus) - loss_params(minus)) / 2e-6, rtol=1e-5)
        # vmap over keys: each key's result equals the driver called with that key
        keys = jax.random.split(key, 3)
        step = S.dpmpp_2m_sde(sde)
        many = jax.vmap(lambda k: S.sample(step, gm.score_fn(sde), k, x0, ts).x)(keys)
        np.testing.assert_allclose(many[1], S.sample(step, gm.score_fn(sde), keys[1], x0, ts).x, rtol=1e-10)


def test_an_array_passed_twice_is_one_operand():
    """filter_jit passes an array object that occurs in several arguments once (so XLA can share
    the work that depends on it, as for a mixture held by both a score and its divergence), and
    equal values in distinct arrays still give the same result under their own program."""
    from diffjax._jit import partition as _partition, filter_jit

    @filter_jit
    def f(a, b):
        return jnp.sum(jnp.sin(a) * jnp.cos(b))

    a = jnp.linspace(0.0, 1.0, 7)
    b = jnp.array(a)  # equal values, a distinct array
    assert len(_partition(((a, a), {}))[1]) == 1 and len(_partition(((a, b), {}))[1]) == 2
    same, distinct = f(a, a), f(a, b)
    expected = float(np.sum(np.sin(np.asarray(a)) * np.cos(np.asarray(a))))
    np.testing.assert_allclose([float(same), float(distinct)], [expected, expected], rtol=1e-5)
    assert f.cache_size() == 2  # the sharing pattern is part of the program's key
    f(b, b)
    assert f.cache_size() == 2  # same pattern, same program
