"""FID, KID and IS against independent computations and closed forms; the FID InceptionV3's shapes and
weight conversion; the digits classifier behind the digits metrics."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.special

from diffjax import data, metrics


def _random_psd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_matches_scipy_sqrtm_and_the_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_psd(rng, d), _random_psd(rng, d)
    # the usual formula with a non-symmetric matrix square root (scipy), computed independently
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    # diagonal covariances: sum (mu1 - mu2)^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(closed, rel=1e-10)
    # a set against itself: about zero (rounding only)
    f = rng.normal(size=(500, 16))
    assert abs(metrics.fid_from_features(f, f)) < 1e-8
    with pytest.raises(ValueError, match=r"features of shape \(N, D\)"):
        metrics.fid_from_features(f[:, 0], f)


def test_kid_is_unbiased_on_zero_mean_gaussians():
    # for zero-mean Gaussians and k = (x.y/d + 1)^3 the odd moments vanish, so
    # MMD^2 = 3/d^2 (tr S1^2 + tr S2^2 - 2 tr S1 S2) = 3/d^2 ||S1 - S2||_F^2
    rng = np.random.default_rng(1)
    d, n, reps = 4, 200, 60
    s2 = np.diag([1.6, 1.6, 1.0, 1.0])
    truth = 3 / d**2 * np.sum((np.eye(d) - s2) ** 2)
    same, diff, biased = [], [], []
    for r in range(reps):
        x = rng.normal(size=(n, d))
        y = rng.normal(size=(n, d))
        z = rng.normal(size=(n, d)) @ np.sqrt(s2)
        same.append(metrics.kid(x, y, num_subsets=1, subset_size=n, seed=r)[0])
        diff.append(metrics.kid(x, z, num_subsets=1, subset_size=n, seed=r)[0])
        k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731 - the biased V-statistic, for contrast
        biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
    for values, target in ((same, 0.0), (diff, truth)):
        mean, se = np.mean(values), np.std(values) / np.sqrt(reps)
        assert abs(mean - target) < 4 * se, (mean, target, se)
    # the test has the power to see a bias of the size the V-statistic has
    assert np.mean(biased) > 4 * np.std(biased) / np.sqrt(reps)


def test_inception_score_matches_an_independent_computation_and_its_bounds():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(400, 7)) * 2
    p = scipy.special.softmax(logits, axis=1)
    parts = np.split(p, 4)
    expected = [np.exp(np.mean(np.sum(scipy.special.rel_entr(q, q.mean(0, keepdims=True)), axis=1))) for q in parts]
    mean, std = metrics.inception_score(p, splits=4)
    assert mean == pytest.approx(np.mean(expected), rel=1e-10) and std == pytest.approx(np.std(expected), rel=1e-8)
    assert metrics.inception_score(np.full((50, 10), 0.1), splits=1)[0] == pytest.approx(1.0)
    assert metrics.inception_score(np.eye(10)[np.arange(50) % 10], splits=1)[0] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="rows of class probabilities"):
        metrics.inception_score(logits)


def _torch_layout(variables):
    """pytorch-fid's state dict from Flax parameters, written independently of the converter."""
    out = {}
    names = {"kernel": ("conv", "weight"), "scale": ("bn", "weight"), "bias": ("bn", "bias"),
             "mean": ("bn", "running_mean"), "var": ("bn", "running_var")}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, prefix + [k])
            elif prefix == ["fc"]:
                out[f"fc.{'weight' if k == 'kernel' else 'bias'}"] = np.asarray(v).T if k == "kernel" else np.asarray(v)
            else:
                arr = np.asarray(v)
                out[".".join(prefix + list(names[k]))] = arr.transpose(3, 2, 0, 1) if k == "kernel" else arr

    walk(jax.tree_util.tree_map(np.asarray, variables["params"]), [])
    return out


def test_inception_v3_torch_weight_conversion(tmp_path):
    """The converter maps pytorch-fid's state dict onto the Flax InceptionV3 exactly. The network's
    shapes come from tracing (no compile); the weights are random arrays of those shapes."""
    net = metrics.InceptionV3()
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3)))
    # the InceptionV3 graph has 94 conv + batch-norm units (and one fc layer)
    kernels = [p for p in jax.tree_util.tree_leaves_with_path(shapes) if jax.tree_util.keystr(p[0]).endswith("['kernel']")]
    assert len(kernels) == 95
    pooled, logits = jax.eval_shape(net.apply, shapes, jax.ShapeDtypeStruct((2, 75, 75, 3), jnp.float32))
    assert pooled.shape == (2, 2048) and logits.shape == (2, 1008)
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
    state = _torch_layout(variables)
    state["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0)
    path = str(tmp_path / "inception.npz")
    np.savez(path, **state)
    loaded = metrics.load_inception_params(path)
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    del state["Mixed_7c.branch_pool.conv.weight"]
    np.savez(path, **state)
    with pytest.raises(ValueError, match="does not hold the FID InceptionV3 weights: missing"):
        metrics.load_inception_params(path)
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        metrics.load_inception_params(str(tmp_path / "absent.npz"))


@pytest.mark.slow
def test_inception_v3_forward_pass():
    net = metrics.InceptionV3()
    variables = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3)))
    pooled, logits = net.apply(variables, jax.random.uniform(jax.random.PRNGKey(1), (2, 75, 75, 3), minval=-1.0))
    assert pooled.shape == (2, 2048) and logits.shape == (2, 1008)
    assert np.all(np.asarray(pooled) >= 0)  # pooled ReLU outputs
    assert np.all(np.isfinite(np.asarray(logits)))


def test_digits_classifier_features_separate_digits_from_noise(tmp_path):
    model, params, accuracy = metrics.digits_classifier(str(tmp_path))
    assert accuracy > 0.9  # chance is 0.1
    assert os.path.isfile(tmp_path / metrics.DIGITS_CLASSIFIER_FILE)
    assert metrics.digits_classifier(str(tmp_path))[2] == accuracy  # loaded from the cache
    unit = lambda k: data.levels_to_model(k.astype(np.float32), data.DIGITS_LEVELS, (0.0, 1.0))  # noqa: E731
    train_f, _ = metrics.digits_features(model, params, unit(data.digits_split("train")[0]))
    test_x = unit(data.digits_split("test")[0])
    test_f, test_p = metrics.digits_features(model, params, test_x)
    noise_f, noise_p = metrics.digits_features(model, params, np.random.default_rng(0).uniform(size=test_x.shape))
    real = metrics.evaluate_features(test_f, test_p, train_f)
    fake = metrics.evaluate_features(noise_f, noise_p, train_f)
    assert real["is"] > 8.0 and fake["is"] < real["is"]
    assert fake["fid"] > 10 * real["fid"] and fake["kid"] > 10 * abs(real["kid"])
    up = test_x.repeat(2, axis=1).repeat(2, axis=2)  # 16x16 digits are averaged back to 8x8
    np.testing.assert_allclose(metrics.digits_features(model, params, up)[0], test_f, rtol=1e-5, atol=1e-5)
