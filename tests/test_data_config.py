"""Data pipelines (digits, toys, TFDS through data_source with mocked data) and configs."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from diffjax import data
from diffjax.configs import load_config


def test_digits_split_is_deterministic_disjoint_and_stratified():
    tr, ytr = data.digits_split("train")
    te, yte = data.digits_split("test")
    assert tr.shape == (1438, 8, 8, 1) and te.shape == (359, 8, 8, 1) and tr.dtype == np.uint8
    assert tr.max() == 16 and tr.min() == 0
    np.testing.assert_array_equal(data.digits_split("test")[0], te)
    train_rows = {r.tobytes() for r in tr.reshape(len(tr), -1)}
    images, _ = data.load_digits()
    # every image is in exactly one split (duplicates in the raw data aside)
    assert len(tr) + len(te) == len(images)
    counts = np.bincount(yte, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38
    big, _ = data.digits_split("test", image_size=16)
    np.testing.assert_array_equal(big[:, ::2, ::2], te)
    assert len(train_rows) > 1300
    with pytest.raises(ValueError, match="split must be"):
        data.digits_split("valid")


def test_digit_classes_select_a_subset_of_the_same_split():
    assert data.parse_classes("0-4") == (0, 1, 2, 3, 4) and data.parse_classes("7,0,2-3") == (0, 2, 3, 7)
    assert data.parse_classes("") is None and data.parse_classes([5, 9]) == (5, 9)
    tr, ytr = data.digits_split("train")
    low, ylow = data.digits_split("train", classes="0-4")
    high, yhigh = data.digits_split("train", classes="5-9")
    assert set(ylow) == {0, 1, 2, 3, 4} and set(yhigh) == {5, 6, 7, 8, 9} and len(low) + len(high) == len(tr)
    np.testing.assert_array_equal(low, tr[ytr < 5])
    loader = data.digits_loader("train", 32, classes="3")
    assert set(np.asarray(next(loader)["label"]).tolist()) == {3}
    for bad in ("a-b", "0-10", "-1"):
        with pytest.raises(ValueError, match="digit classes"):
            data.parse_classes(bad)
    from diffjax.run import build_loader

    with pytest.raises(ValueError, match="data.classes .* data.dataset=digits only"):
        build_loader(load_config("toy2d", ["--config.data.classes=0-4"]), "train", 8)
    assert load_config("digits_0to4").data.classes == "0-4" and load_config("digits_5to9").data.classes == "5-9"


def test_levels_map_matches_bits_per_dim_and_dequantisation():
    k = np.array([0, 8, 16], np.uint8)
    np.testing.assert_allclose(data.levels_to_model(k, 17), -1 + 2 * (k + 0.5) / 17)
    loader = data.digits_loader("train", 32, seed=3)
    b = next(loader)
    x, lv = b["x"], b["levels"]
    lo = -1 + 2 * lv / 17
    assert np.all(x >= lo) and np.all(x < lo + 2 / 17) and b["label"].shape == (32,)


def test_array_loader_resumes_exactly():
    a = data.digits_loader("train", 64, seed=1)
    first = [next(a) for _ in range(30)]  # crosses an epoch boundary (1438 / 64 = 22 batches)
    b = data.digits_loader("train", 64, seed=1)
    for _ in range(12):
        next(b)
    state = b.get_state()
    c = data.digits_loader("train", 64, seed=1)
    c.set_state(state)
    for want in first[12:]:
        got = next(c)
        np.testing.assert_array_equal(got["x"], want["x"])
        np.testing.assert_array_equal(got["label"], want["label"])


def test_per_host_shards_partition_the_global_batch():
    """Process i of n reads rows [i B/n, (i+1) B/n) of the same global batch, dequantisation noise included:
    the global batch at every step is the same for 1, 2 or 4 processes."""
    full = data.digits_loader("train", 64, seed=5)
    for n in (2, 4):
        parts = [data.digits_loader("train", 64 // n, seed=5, shard_index=i, shard_count=n) for i in range(n)]
        for _ in range(25):  # across an epoch boundary (1438 examples, 22 batches of 64)
            want = next(full)
            got = [next(p) for p in parts]
            for k in ("levels", "x", "label"):
                np.testing.assert_array_equal(np.concatenate([g[k] for g in got]), want[k])
        full = data.digits_loader("train", 64, seed=5)


@pytest.mark.parametrize("name", data.TOYS)
def test_toys(name):
    x = np.asarray(data.toy_2d(name, jax.random.PRNGKey(0), 4000))
    assert x.shape == (4000, 2) and np.all(np.isfinite(x))
    assert np.all(np.abs(x.mean(0)) < 0.5) and np.all((x.std(0) > 0.3) & (x.std(0) < 2.5))
    if name == "checkerboard":  # only the black squares: floor(x + 2) has even parity sum
        cells = np.floor(x + 2).astype(int)
        assert np.all((cells.sum(1) % 2) == 0)


def test_gaussian_baseline_bits_per_dim_matches_monte_carlo():
    tr, _ = data.digits_split("train")
    te, _ = data.digits_split("test")
    bpd = data.fit_gaussian_bits_per_dim(tr, te, 17)
    # Monte Carlo over the dequantisation noise with scipy's density as the independent reference.
    from scipy.stats import multivariate_normal
    rng = np.random.default_rng(0)
    a = tr.reshape(len(tr), -1) + 0.5
    cov = np.cov(a, rowvar=False, bias=True) + np.eye(64) / 12
    dist = multivariate_normal(a.mean(0), cov)
    draws = [-dist.logpdf(te.reshape(len(te), -1) + rng.uniform(size=(len(te), 64))).mean() for _ in range(20)]
    mc = np.mean(draws) / (64 * math.log(2))
    assert abs(bpd - mc) < 3 * np.std(draws) / math.sqrt(20) / (64 * math.log(2)) + 1e-3
    assert 0 < bpd < math.log2(17)  # beats the uniform distribution over the 17 levels


def test_tfds_loader_with_mock_data_and_no_tensorflow():
    tfds = pytest.importorskip("tensorflow_datasets")
    import sys
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        loader = data.tfds_loader("mnist", "train", 8, seed=0, label_key="label", random_flip=True,
                                  uniform_dequantization=True)
        first = [next(loader) for _ in range(3)]
        state = loader.get_state()
        b = first[0]
        assert b["x"].shape == (8, 28, 28, 1) and b["x"].dtype == np.float32 and b["label"].shape == (8,)
        assert b["x"].min() >= -1 and b["x"].max() <= 1
        lo = -1 + 2 * b["levels"].astype(np.float32) / 256
        assert np.all(b["x"] >= lo - 1e-6) and np.all(b["x"] <= lo + 2 / 256 + 1e-6)
        nxt = next(loader)
        again = data.tfds_loader("mnist", "train", 8, seed=0, label_key="label", random_flip=True,
                                 uniform_dequantization=True)
        again.set_state(state)
        np.testing.assert_array_equal(next(again)["x"], nxt["x"])
        halves = [next(data.tfds_loader("mnist", "train", 4, seed=0, shard_index=i, shard_count=2, random_flip=True,
                                        uniform_dequantization=True)) for i in range(2)]
        whole = next(data.tfds_loader("mnist", "train", 8, seed=0, random_flip=True, uniform_dequantization=True))
        for k in ("levels", "x", "label"):  # two processes read the two halves of one global batch
            np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), whole[k])
    assert "tensorflow" not in sys.modules


def test_configs_load_and_reject_unknown_keys():
    c = load_config("digits", ["--config.training.n_iters=20", "--config.sde.name=vesde",
                               "--config.model.options.nf=16"])
    assert c.training.n_iters == 20 and c.sde.name == "vesde" and c.model.options.nf == 16
    for name in ["toy2d", "cifar10_ve_ncsnpp_continuous", "cifar10_ve_ncsnpp_deep_continuous",
                 "cifar10_vp_ddpmpp_continuous", "cifar10_vp_ddpmpp_deep_continuous",
                 "cifar10_subvp_ddpmpp_continuous", "cifar10_subvp_ddpmpp_deep_continuous", "cifar10_vp_ddpm"]:
        cfg = load_config(name)
        assert cfg.training.batch_size > 0
    with pytest.raises(ValueError, match="unknown config key 'training.n_iter'"):
        load_config("digits", ["--config.training.n_iter=5"])
    with pytest.raises(ValueError, match="unknown config key 'trainig'"):
        load_config("digits", ["--config.trainig.n_iters=5"])
    with pytest.raises(ValueError, match="unknown option 'width' for network 'ncsnpp'"):
        load_config("digits", ["--config.model.options.width=5"])
    with pytest.raises(ValueError, match="takes True or False"):
        load_config("digits", ["--config.data.random_flip=maybe"])
    with pytest.raises(ValueError, match="unknown config 'mnist_big'"):
        load_config("mnist_big")
