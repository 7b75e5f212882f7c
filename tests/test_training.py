"""Optimiser, EMA and train step; the MLP learns the exact score of a 2-D mixture."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffjax import GaussianMixture, VPSDE
from diffjax.losses import get_dsm_loss_fn
from diffjax.models import MLPScoreNet
from diffjax.score import make_score_model
from diffjax.training import (
    TrainState,
    create_train_state,
    ema_update,
    make_optimizer,
    make_train_step,
    warmup_schedule,
)


def test_warmup_schedule_is_linear_then_flat():
    sched = warmup_schedule(2e-4, 5000)
    np.testing.assert_allclose([sched(k) for k in (0, 999, 4999, 5000, 10**6)],
                               [2e-4 / 5000, 2e-4 * 1000 / 5000, 2e-4, 2e-4, 2e-4], rtol=1e-6)
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        warmup_schedule(0.0)


def test_optimizer_is_clipped_adam_written_out_in_numpy():
    """Two updates with gradients of norm 10 and 0.5: clipping to norm 1 then Adam, by hand."""
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    tx = make_optimizer(learning_rate=lr, warmup_steps=0, grad_clip=1.0)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    grads = [np.array([6.0, 8.0, 0.0]), np.array([0.3, 0.0, -0.4])]
    m = v = np.zeros(3)
    for k, g in enumerate(grads, start=1):
        upd, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        g = g * min(1.0, 1.0 / np.linalg.norm(g))
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        expected = -lr * (m / (1 - b1**k)) / (np.sqrt(v / (1 - b2**k)) + eps)
        np.testing.assert_allclose(upd["w"], expected, rtol=1e-5, atol=1e-9)


def test_ema_follows_its_closed_form():
    """With parameters held fixed at p, ema_n = p + prod_k decay_k (ema_0 - p)."""
    tx = optax.set_to_zero()  # parameters never move
    loss_fn = lambda key, params, batch: (jnp.sum(params["w"] * batch), {})  # noqa: E731
    p = {"w": jnp.array([1.0, -2.0])}
    for warmup in (False, True):
        state = create_train_state(jax.random.PRNGKey(0), p, tx)
        state = state.replace(ema_params={"w": jnp.array([5.0, 5.0])})
        step = jax.jit(make_train_step(loss_fn, tx, ema_rate=0.9, ema_warmup=warmup))
        for _ in range(7):
            state, _ = step(state, jnp.ones(2))
        decays = [min(0.9, (1 + k) / (10 + k)) if warmup else 0.9 for k in range(7)]
        expected = np.array([1.0, -2.0]) + np.prod(decays) * (np.array([5.0, 5.0]) - np.array([1.0, -2.0]))
        np.testing.assert_allclose(state.ema_params["w"], expected, rtol=1e-5)
    np.testing.assert_allclose(ema_update({"a": 1.0}, {"a": 3.0}, 0.25)["a"], 2.5)


def test_train_step_is_pure_and_donatable():
    sde = VPSDE()
    net = MLPScoreNet(hidden=(16,))
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.ones((1,)))
    loss_fn = get_dsm_loss_fn(sde, make_score_model(net.apply, sde, prediction=net.prediction, labels="score_sde"),
                              reduce_mean=False)
    tx = make_optimizer(learning_rate=1e-3, warmup_steps=10)
    step = make_train_step(loss_fn, tx, learning_rate_fn=warmup_schedule(1e-3, 10))
    state = create_train_state(jax.random.PRNGKey(1), params, tx)
    batch = jnp.ones((8, 2))
    s1, m1 = jax.jit(step)(state, batch)
    s1b, m1b = jax.jit(step)(state, batch)  # same input, same output: no hidden state
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), s1, s1b))
    assert int(s1.step) == 1 and not np.array_equal(s1.key, state.key)
    assert set(m1) == {"loss", "grad_norm", "learning_rate"}
    np.testing.assert_allclose(m1["learning_rate"], 1e-4, rtol=1e-6)
    donated = jax.jit(step, donate_argnums=0)
    s2, _ = donated(jax.tree_util.tree_map(jnp.copy, state), batch)
    np.testing.assert_allclose(s2.params["params"]["Dense_0"]["kernel"], s1.params["params"]["Dense_0"]["kernel"])
    assert isinstance(s2, TrainState)


def test_mlp_learns_the_exact_score_of_a_mixture():
    """400 steps on a 2-D mixture: the loss falls and the EMA network's score is within 5 % (relative
    squared error) of the exact score at moderate t; the zero score would be at 100 %."""
    gm = GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-2.0, 0.0], [1.5, 1.0]]),
                         jnp.stack([0.3 * jnp.eye(2), jnp.array([[0.4, 0.1], [0.1, 0.2]])]))
    sde = VPSDE()
    net = MLPScoreNet(hidden=(128, 128, 128))
    model = make_score_model(net.apply, sde, prediction=net.prediction, labels="score_sde")
    loss_fn = get_dsm_loss_fn(sde, model, reduce_mean=True)
    tx = make_optimizer(learning_rate=3e-3, warmup_steps=50)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.ones((1,)))
    state = create_train_state(jax.random.PRNGKey(1), params, tx)
    train_step = make_train_step(loss_fn, tx, ema_rate=0.99)
    data = gm.sample(jax.random.PRNGKey(2), 400 * 256).reshape(400, 256, 2)

    @jax.jit
    def run(state, data):
        return jax.lax.scan(train_step, state, data)

    state, metrics = run(state, data)
    losses = np.asarray(metrics["loss"])
    assert losses[-50:].mean() < 0.7 * losses[:50].mean(), (losses[:50].mean(), losses[-50:].mean())
    for t_eval in (0.3, 0.5):
        t = jnp.full((4000,), t_eval)
        x0 = gm.sample(jax.random.PRNGKey(3), 4000)
        mean, std = sde.marginal_prob(x0, t)
        xt = mean + std[:, None] * jax.random.normal(jax.random.PRNGKey(4), x0.shape)
        exact = gm.score(xt, sde, t)
        rel = float(jnp.sum((model(state.ema_params, xt, t) - exact) ** 2) / jnp.sum(exact**2))
        assert rel < 0.05, (t_eval, rel)
