"""Controllable generation: inpainting, colourisation, classifier and classifier-free guidance.

The truths are closed forms of Gaussian mixtures: exact scores, the exact classifier p_t(k | x)
(the mixture's responsibilities) and the exact component scores.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import GaussianMixture, VESDE, VPSDE, data, guidance, models, samplers, training

SDE = VPSDE(beta_min=0.1, beta_max=20.0, N=1000)


def three_blobs() -> GaussianMixture:
    return GaussianMixture(jnp.array([0.5, 0.3, 0.2]),
                           jnp.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]]),
                           jnp.stack([0.2 * jnp.eye(2)] * 3))


def component_score_model(gm: GaussianMixture, sde):
    """score_model(params, x, t, class_labels): the exact score of component y, or of the whole
    mixture for the 'no class' label K (what a perfectly trained label-dropout network learns)."""
    k = gm.num_components
    comps = [GaussianMixture(jnp.ones((1,)), gm.means[i:i + 1], gm.covs[i:i + 1]) for i in range(k)]

    def score_model(params, x, t, class_labels):
        all_scores = jnp.stack([c.score(x, sde, t) for c in comps] + [gm.score(x, sde, t)])  # (K + 1, B, d)
        return jnp.take_along_axis(all_scores, class_labels[None, :, None], 0)[0]

    return score_model


def nearest_component(gm, x):
    return np.asarray(jnp.argmax(gm.responsibilities(x), axis=-1))


# ----------------------------------------------------------------------------------------------
# inpainting and colourisation


@pytest.mark.parametrize("sampler,steps", [("euler_maruyama", 500), ("dpmpp_2m_sde", 50)])
def test_inpainting_keeps_known_values_exactly_and_conditions_the_rest(sampler, steps):
    # two tight blobs on the diagonal: knowing x0 = 2 puts x1 ~ N(2, 0.05), and x0 = -2 puts it near -2.
    # (Replacement is an approximation of conditional sampling; the stochastic samplers get close.)
    gm = GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-2.0, -2.0], [2.0, 2.0]]), jnp.stack([0.05 * jnp.eye(2)] * 2))
    n = 512
    y = jnp.stack([jnp.where(jnp.arange(n) % 2 == 0, 2.0, -2.0), jnp.zeros(n)], axis=1) + 0.0123
    mask = jnp.array([1.0, 0.0])
    step = samplers.get_step(sampler, SDE)
    grid = samplers.log_snr_timesteps(SDE, steps) if sampler == "dpmpp_2m_sde" else samplers.uniform_timesteps(SDE, steps)
    res = guidance.inpaint_sample(step, gm.score_fn(SDE), jax.random.PRNGKey(0), y, mask, grid)
    x, nfe = res.x, res.nfe
    x = np.asarray(x)
    np.testing.assert_array_equal(x[:, 0], np.asarray(y[:, 0]))  # exactly the input
    assert int(nfe[0]) == steps * step.nfe + 1
    top, bottom = x[0::2, 1], x[1::2, 1]
    assert np.all(np.isfinite(x))
    assert abs(top.mean() - 2.0) < 0.15 and abs(bottom.mean() + 2.0) < 0.15, (top.mean(), bottom.mean())
    assert np.mean(top > 0) > 0.98 and np.mean(bottom < 0) > 0.98
    if sampler == "euler_maruyama":
        # the unknown coordinate is denoised at the end: its spread is the blob's (0.22), not more
        assert 0.15 < top.std() < 0.35, top.std()


def test_inpainting_is_batch_independent_and_checks_its_inputs():
    gm = three_blobs()
    y = gm.sample(jax.random.PRNGKey(1), 8)
    mask = jnp.array([0.0, 1.0])
    step = samplers.ddim(SDE)
    grid = samplers.uniform_timesteps(SDE, 10)
    a = guidance.inpaint_sample(step, gm.score_fn(SDE), jax.random.PRNGKey(2), y, mask, grid).x
    keys = samplers.example_keys(jax.random.PRNGKey(2), 8)
    b = guidance.inpaint_sample(step, gm.score_fn(SDE), keys[3:5], y[3:5], mask, grid).x
    np.testing.assert_allclose(np.asarray(a[3:5]), np.asarray(b), atol=1e-5)
    with pytest.raises(ValueError, match="must broadcast to the data's shape"):
        guidance.inpaint_sample(step, gm.score_fn(SDE), jax.random.PRNGKey(2), y, jnp.ones((3,)), grid)
    with pytest.raises(ValueError, match="0 \\(to be sampled\\) and 1 \\(known\\) only"):
        guidance.inpaint_sample(step, gm.score_fn(SDE), jax.random.PRNGKey(2), y, jnp.array([0.5, 1.0]), grid)


def test_colour_basis_and_colourisation_keep_the_grey_image():
    m = guidance.COLOR_BASIS
    np.testing.assert_allclose(m.T @ m, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(m[:, 0], np.full(3, 1 / np.sqrt(3)), atol=1e-12)
    # a Gaussian mixture over 2x2 RGB "images" (12 dims) with coloured components
    d = 12
    means = jnp.stack([jnp.tile(jnp.array([0.8, -0.5, -0.5]), 4), jnp.tile(jnp.array([-0.5, -0.5, 0.8]), 4)])
    gm = GaussianMixture(jnp.array([0.5, 0.5]), means, jnp.stack([0.02 * jnp.eye(d)] * 2))

    def score_fn(x, t):
        return gm.score(x.reshape(x.shape[0], d), SDE, t).reshape(x.shape)

    images = gm.sample(jax.random.PRNGKey(3), 64).reshape(64, 2, 2, 3)
    grey = jnp.mean(images, axis=-1, keepdims=True)
    x = guidance.colorize_sample(samplers.dpmpp_2m(SDE), score_fn, jax.random.PRNGKey(4), grey,
                                 samplers.log_snr_timesteps(SDE, 30)).x
    assert x.shape == (64, 2, 2, 3)
    np.testing.assert_allclose(np.asarray(jnp.mean(x, axis=-1, keepdims=True)), np.asarray(grey), atol=2e-6)
    # both colourings have the same grey image, so the grey channel cannot pick one: each sample must
    # still be close to one of them (grey pixels would be 2.1 away)
    flat = np.asarray(x).reshape(64, d)
    dist = np.min(np.linalg.norm(flat[:, None, :] - np.asarray(means)[None], axis=-1), axis=1)
    assert np.mean(dist < 1.0) > 0.9
    with pytest.raises(ValueError, match=r"\(batch, H, W, 1\) or \(batch, H, W, 3\)"):
        guidance.colorize_sample(samplers.ddim(SDE), score_fn, jax.random.PRNGKey(4), grey[..., 0],
                                 samplers.uniform_timesteps(SDE, 5))


# ----------------------------------------------------------------------------------------------
# classifier guidance and classifier-free guidance


def _guided_sample(score_fn, labels=None, n=2000, key=5):
    step = samplers.dpmpp_2m(SDE)
    x_init = samplers.prior_sample(SDE, jax.random.PRNGKey(key), (n, 2))
    x = samplers.sample(step, score_fn, jax.random.PRNGKey(key), x_init, samplers.log_snr_timesteps(SDE, 40)).x
    return x


def test_exact_classifier_guidance_at_scale_one_samples_the_chosen_components():
    gm = three_blobs()
    n = 2000
    # labels drawn from q = (0.2, 0.3, 0.5), not the mixture's weights (0.5, 0.3, 0.2)
    q = np.array([0.2, 0.3, 0.5])
    labels = jnp.asarray(np.random.default_rng(0).choice(3, size=n, p=q), jnp.int32)

    def logits_fn(x, t):  # the exact classifier of the mixture: log p_t(k | x) up to a constant
        return gm.component_log_probs(x, SDE, t)

    guided = guidance.classifier_guided_score(gm.score_fn(SDE), guidance.classifier_log_prob(logits_fn, labels), 1.0)
    x = _guided_sample(guided, n=n)
    got = nearest_component(gm, x)
    assert np.mean(got == np.asarray(labels)) > 0.99  # each sample lands in its own label's component
    freq = np.bincount(got, minlength=3) / n
    se = np.sqrt(q * (1 - q) / n)
    assert np.all(np.abs(freq - q) < 4 * se + 0.01), (freq, q)
    # scale 0: the unguided mixture, weights (0.5, 0.3, 0.2) within Monte-Carlo error
    plain = guidance.classifier_guided_score(gm.score_fn(SDE), guidance.classifier_log_prob(logits_fn, labels), 0.0)
    freq0 = np.bincount(nearest_component(gm, _guided_sample(plain, n=n)), minlength=3) / n
    w = np.asarray(gm.weights)
    assert np.all(np.abs(freq0 - w) < 4 * np.sqrt(w * (1 - w) / n)), (freq0, w)


def test_classifier_free_guidance_zero_is_conditional_and_matches_classifier_guidance():
    gm = three_blobs()
    score_model = component_score_model(gm, SDE)
    labels = jnp.asarray(np.arange(600) % 3, jnp.int32)
    cond = guidance.classifier_free_guided_score(score_model, None, labels, 0.0, null_label=3)

    def conditional(x, t):
        return score_model(None, x, t, class_labels=labels)

    a, b = _guided_sample(cond, n=600), _guided_sample(conditional, n=600)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # with exact scores, (1 + w) s(x | y) - w s(x) = s(x) + (1 + w) grad log p_t(y | x)
    w = 1.5
    cfg = guidance.classifier_free_guided_score(score_model, None, labels, w, null_label=3)
    log_prob = guidance.classifier_log_prob(lambda x, t: gm.component_log_probs(x, SDE, t), labels)
    cg = guidance.classifier_guided_score(gm.score_fn(SDE), log_prob, 1.0 + w)
    x = gm.sample(jax.random.PRNGKey(6), 600) * 1.3
    t = jnp.linspace(0.05, 0.9, 600)
    np.testing.assert_allclose(np.asarray(cfg(x, t)), np.asarray(cg(x, t)), rtol=2e-4, atol=2e-4)
    two = guidance.guided_score(lambda x, t: score_model(None, x, t, class_labels=labels), gm.score_fn(SDE), w)
    np.testing.assert_allclose(np.asarray(two(x, t)), np.asarray(cfg(x, t)), rtol=1e-5, atol=1e-5)
    x_cfg = _guided_sample(cfg, n=600)
    assert np.mean(nearest_component(gm, x_cfg) == np.asarray(labels)) > 0.99


def test_label_dropout_replaces_labels_at_the_given_rate():
    def loss_fn(key, params, batch):
        frac = jnp.mean((batch["class_labels"] == 10).astype(jnp.float32))
        return frac, {"frac": frac}

    dropped = guidance.with_label_dropout(loss_fn, 0.2, null_label=10)
    batch = {"x": jnp.zeros((4000, 2)), "class_labels": jnp.arange(4000) % 10}
    fracs = [float(dropped(jax.random.PRNGKey(i), None, batch)[0]) for i in range(5)]
    assert abs(np.mean(fracs) - 0.2) < 4 * np.sqrt(0.2 * 0.8 / 20000)
    assert float(guidance.with_label_dropout(loss_fn, 0.0, 10)(jax.random.PRNGKey(0), None, batch)[0]) == 0.0
    with pytest.raises(ValueError, match="labels in the batch under 'class_labels'"):
        dropped(jax.random.PRNGKey(0), None, {"x": jnp.zeros((3, 2))})


def test_classifier_networks_shapes_and_options():
    wrn = models.NoiseConditionalWideResNet(num_classes=10, depth=10, widen=1)
    x = jnp.zeros((2, 8, 8, 3))
    variables = wrn.init(jax.random.PRNGKey(0), x, jnp.array([1.0, 500.0]))
    assert wrn.apply(variables, x, jnp.array([1.0, 500.0])).shape == (2, 10)
    assert wrn.apply(variables, x, jnp.array([1.0, 500.0]), features=True).shape == (2, 64)
    with pytest.raises(ValueError, match="noise-conditional: pass time_labels"):
        wrn.apply(variables, x)
    with pytest.raises(ValueError, match="depth must be 6n \\+ 4"):
        models.NoiseConditionalWideResNet(depth=12).init(jax.random.PRNGKey(0), x, jnp.ones((2,)))
    clean = models.ConvClassifier(widths=(8, 16), noise_conditional=False)
    v = clean.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 1)))
    assert clean.apply(v, jnp.zeros((2, 8, 8, 1)), features=True).shape == (2, 16)


def test_noise_conditional_digits_classifier_beats_chance_at_moderate_t():
    sde = VPSDE()
    net = models.ConvClassifier(widths=(16, 32), embed_dim=32)
    logits_model = models.classifier_logits_model(net, sde)
    loss_fn = guidance.get_classifier_loss_fn(sde, logits_model)
    optimizer = training.make_optimizer(learning_rate=3e-3, warmup_steps=50, grad_clip=1.0)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)))
    state = training.create_train_state(jax.random.PRNGKey(1), params, optimizer)
    step = jax.jit(training.make_train_step(loss_fn, optimizer, ema_rate=0.0))
    loader = data.digits_loader("train", 64, seed=0)
    for _ in range(600):
        b = next(loader)
        state, metrics = step(state, {"x": jnp.asarray(b["x"]), "class_labels": jnp.asarray(b["label"])})
    x, y = data.digits_split("test")
    x = data.levels_to_model(x.astype(np.float32), data.DIGITS_LEVELS)
    accs = {}
    for t in (0.2, 0.4):
        tt = jnp.full((len(y),), t)
        a, s = sde.marginal_coeffs(tt)
        xt = a[:, None, None, None] * x + s[:, None, None, None] * jax.random.normal(jax.random.PRNGKey(2), x.shape)
        pred = np.asarray(jnp.argmax(logits_model(state.params, xt, tt), -1))
        accs[t] = float(np.mean(pred == y))
    # chance is 0.1; with 359 test digits its 99.9 % upper bound is about 0.15. (VP: at t = 0.2 the
    # signal scale a(t) is 0.81 and the noise 0.58; at t = 0.4, 0.44 and 0.90.)
    assert accs[0.2] > 0.6 and accs[0.4] > 0.2, accs
    assert accs[0.2] >= accs[0.4]


def test_classifier_loss_checks_its_inputs():
    with pytest.raises(ValueError, match="need 0 <= t_min < t_max <= T"):
        guidance.get_classifier_loss_fn(VESDE(), lambda p, x, t: x, t_max=2.0)
    loss_fn = guidance.get_classifier_loss_fn(VESDE(), lambda p, x, t: x)
    with pytest.raises(ValueError, match="labels under 'class_labels'"):
        loss_fn(jax.random.PRNGKey(0), None, {"x": jnp.zeros((2, 3))})
