"""diffjax's core used as a user would: a network of one's own (a plain function, and an Equinox model),
one's own training loop under jax.jit and jax.grad, and diffjax only for the maths: every process
with its documented time labels and loss, sampled back to a 2-D toy within a stated distance of the data.

The distance is the energy distance E|X - Y| - (E|X - X'| + E|Y - Y'|) / 2 between 2000 samples and
2000 fresh data points. Measured here: two independent draws of the data give 0.0006 on average (at
most 0.0016 over five pairs); the mixture with its two weights swapped 0.11, N(0, I) 0.17, an
untrained network 162; the trained ones 0.001-0.006. A process passes below 0.015.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import diffjax
from diffjax import losses, samplers
from diffjax.score import make_score_fn, make_score_model

DATA = diffjax.GaussianMixture(jnp.array([0.4, 0.6]), jnp.array([[-1.5, 0.0], [1.5, 0.5]]),
                               jnp.stack([0.15 * jnp.eye(2), jnp.array([[0.2, 0.05], [0.05, 0.1]])]))
THRESHOLD = 0.015


def energy_distance(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

    def mean_dist(a, b):
        return float(np.mean(np.linalg.norm(a[:, None] - b[None], axis=-1)))

    return mean_dist(x, y) - 0.5 * (mean_dist(x, x) + mean_dist(y, y))


def init_mlp(key, width=64):
    """A plain-function network: a dict of arrays."""
    sizes = [(2 + 16, width), (width, width), (width, 2)]
    keys = jax.random.split(key, len(sizes))
    return [{"w": jax.random.normal(k, s) / math.sqrt(s[0]), "b": jnp.zeros(s[1])} for k, s in zip(keys, sizes)]


def mlp(params, x, labels):
    """apply_fn(params, x, labels): the time labels (batch,) through 8 sinusoidal features."""
    freqs = jnp.exp(jnp.linspace(0.0, 3.0, 8))
    emb = jnp.concatenate([jnp.sin(labels[:, None] * freqs), jnp.cos(labels[:, None] * freqs)], axis=1)
    h = jnp.concatenate([x, emb], axis=1)
    for layer in params[:-1]:
        h = jax.nn.silu(h @ layer["w"] + layer["b"])
    return h @ params[-1]["w"] + params[-1]["b"]


def _marginal(t):  # a schedule of one's own for CustomProcess: a trigonometric interpolation
    return jnp.cos(0.5 * jnp.pi * t), jnp.sin(0.5 * jnp.pi * t)


# process -> (prediction, labels, loss factory, sampler step, grid)
SETUPS = {
    "vp": (diffjax.VPSDE(), "eps", "t", "dsm", "dpmpp_2m", "log_snr"),
    "ve": (diffjax.VESDE(sigma_max=8.0), "eps", "c_noise", "dsm", "dpmpp_2m", "log_snr"),
    "subvp": (diffjax.SubVPSDE(), "eps", "t", "dsm", "dpmpp_2m", "log_snr"),
    "edm": (diffjax.EDM(sigma_max=20.0), "edm", "c_noise", "edm", "dpmpp_2m", "karras"),
    "cosine": (diffjax.CosineVP(), "eps", "t", "dsm", "dpmpp_2m", "log_snr"),
    "rectified_flow": (diffjax.RectifiedFlow(), "velocity", "t", "flow_matching", "dpmpp_2m", "log_snr"),
    "interpolant": (diffjax.OneSidedInterpolant(), "velocity", "t", "flow_matching", "dpmpp_2m", "log_snr"),
    "custom": (diffjax.CustomProcess(_marginal, t_max=0.995), "eps", "t", "dsm", "dpmpp_2m", "log_snr"),
    "pfgmpp": (diffjax.PFGMPP(D=64.0, sigma_max=20.0), "edm", "c_noise", "edm", "edm_heun", "karras"),
}


def make_loss(kind, sde, score_model):
    if kind == "dsm":
        return losses.get_dsm_loss_fn(sde, score_model)
    if kind == "edm":
        return losses.get_edm_loss_fn(sde, score_model, sigma_data=1.0)
    return losses.get_flow_matching_loss_fn(sde, score_model)


def train(loss_fn, params, steps=1500, batch=256, seed=0):
    """One's own loop: optax, jax.jit and jax.grad around diffjax's pure loss."""
    opt = optax.adam(optax.cosine_decay_schedule(3e-3, steps))
    state = opt.init(params)

    @jax.jit
    def step(params, state, key):
        k_data, k_loss = jax.random.split(key)
        x = DATA.sample(k_data, batch)
        grads = jax.grad(lambda p: loss_fn(k_loss, p, x)[0])(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for key in jax.random.split(jax.random.PRNGKey(seed), steps):
        params, state = step(params, state, key)
    return params


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_a_plain_function_network_learns_the_toy_with_every_process(name):
    sde, prediction, labels, loss_kind, sampler, grid = SETUPS[name]
    score_model = make_score_model(mlp, sde, prediction=prediction, labels=labels, sigma_data=1.0)
    params = train(make_loss(loss_kind, sde, score_model), init_mlp(jax.random.PRNGKey(1)))
    score_fn = make_score_fn(mlp, params, sde, prediction=prediction, labels=labels, sigma_data=1.0)
    key = jax.random.PRNGKey(2)
    x_init = samplers.prior_sample(sde, key, (2000, 2))
    steps = 9 if sampler == "edm_heun" else 18
    x = samplers.sample(samplers.get_step(sampler, sde), score_fn, key, x_init,
                        samplers.TIME_GRIDS[grid](sde, steps)).x
    dist = energy_distance(x, DATA.sample(jax.random.PRNGKey(3), 2000))
    print(f"{name}: energy distance {dist:.4f}")
    assert dist < THRESHOLD, (name, dist)


def test_an_equinox_model_trains_and_samples_with_its_own_loop():
    """The Equinox recipe of the README: the model is the params (eqx.filter_grad and filter_jit in
    one's own loop), and diffjax receives it inside a score function, apply_fn(model, x, labels)."""
    eqx = pytest.importorskip("equinox")

    class Net(eqx.Module):
        layers: list

        def __init__(self, key):
            k = jax.random.split(key, 3)
            self.layers = [eqx.nn.Linear(2 + 16, 64, key=k[0]), eqx.nn.Linear(64, 64, key=k[1]),
                           eqx.nn.Linear(64, 2, key=k[2])]

        def __call__(self, x, label):  # one example: x (2,), label ()
            freqs = jnp.exp(jnp.linspace(0.0, 3.0, 8))
            h = jnp.concatenate([x, jnp.sin(label * freqs), jnp.cos(label * freqs)])
            for layer in self.layers[:-1]:
                h = jax.nn.silu(layer(h))
            return self.layers[-1](h)

    def apply_fn(model, x, labels):
        return jax.vmap(model)(x, labels)

    sde = diffjax.VPSDE()
    score_model = make_score_model(apply_fn, sde, prediction="eps", labels="t")
    loss_fn = losses.get_dsm_loss_fn(sde, score_model)
    model = Net(jax.random.PRNGKey(1))
    opt = optax.adam(optax.cosine_decay_schedule(3e-3, 1500))
    state = opt.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state, key):
        k_data, k_loss = jax.random.split(key)
        grads = eqx.filter_grad(lambda m: loss_fn(k_loss, m, DATA.sample(k_data, 256))[0])(model)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state

    for key in jax.random.split(jax.random.PRNGKey(0), 1500):
        model, state = step(model, state, key)
    score_fn = make_score_fn(apply_fn, model, sde, prediction="eps", labels="t")
    key = jax.random.PRNGKey(2)
    x = samplers.sample(samplers.dpmpp_2m(sde), score_fn, key, samplers.prior_sample(sde, key, (2000, 2)),
                        samplers.log_snr_timesteps(sde, 18)).x
    dist = energy_distance(x, DATA.sample(jax.random.PRNGKey(3), 2000))
    print(f"equinox: energy distance {dist:.4f}")
    assert dist < THRESHOLD, dist


def test_vmap_over_seeds_and_grad_through_the_sampler_of_a_user_network():
    """jax.vmap over keys and jax.grad with respect to the network's parameters, through the driver."""
    sde = diffjax.VPSDE()
    params = init_mlp(jax.random.PRNGKey(4))
    x_init = samplers.prior_sample(sde, jax.random.PRNGKey(5), (64, 2))
    ts = samplers.log_snr_timesteps(sde, 6)

    def mean_sample(params, key):
        score_fn = make_score_fn(mlp, params, sde, prediction="eps", labels="t")
        return jnp.mean(samplers.sample(samplers.ddim(sde, eta=1.0), score_fn, key, x_init, ts).x, axis=0)

    keys = jax.random.split(jax.random.PRNGKey(6), 3)
    batched = jax.jit(jax.vmap(mean_sample, in_axes=(None, 0)))(params, keys)
    np.testing.assert_allclose(batched[1], mean_sample(params, keys[1]), rtol=1e-5, atol=1e-5)
    grads = jax.grad(lambda p: jnp.sum(mean_sample(p, keys[0]) ** 2))(params)
    # against a central difference along one parameter
    eps = 1e-2
    bump = jax.tree_util.tree_map(jnp.zeros_like, params)
    bump[-1]["b"] = bump[-1]["b"].at[0].set(eps)
    plus = jax.tree_util.tree_map(jnp.add, params, bump)
    minus = jax.tree_util.tree_map(jnp.subtract, params, bump)
    f = lambda p: float(jnp.sum(mean_sample(p, keys[0]) ** 2))  # noqa: E731
    np.testing.assert_allclose(float(grads[-1]["b"][0]), (f(plus) - f(minus)) / (2 * eps), rtol=2e-2, atol=1e-4)
