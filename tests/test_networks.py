"""Score networks: resampling against scipy, parameter counts against the original code, shapes,
init, precision, the score-model plumbing, a few training steps on digits, and input errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.signal import upfirdn

import diffjax
from diffjax import models
from diffjax.data import load_digits
from diffjax.losses import get_dsm_loss_fn
from diffjax.models import resample
from diffjax.training import create_train_state, make_optimizer, make_train_step

K = np.array([1.0, 3.0, 3.0, 1.0])

# Small widths so that compiles stay short on two CPU cores.
TINY = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))


def _jit_init(module, shape, seed=0):
    return models.init_params(module, jax.random.PRNGKey(seed), shape)  # compiled once per (network, shape)


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def _abstract_count(module, size, channels=3) -> int:
    variables = jax.eval_shape(lambda k: models.init_params(module, k, (size, size, channels)), jax.random.PRNGKey(0))
    return _count(variables)


# ----------------------------------------------------------------------------------------------
# FIR resampling against scipy.signal.upfirdn (separable: applied along each spatial axis)


def _scipy_upfirdn_2d(x, h, **kw):
    y = np.apply_along_axis(lambda v: upfirdn(h, v, **kw), 1, x)
    return np.apply_along_axis(lambda v: upfirdn(h, v, **kw), 2, y)


def test_fir_upsample_matches_scipy():
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3))
    ours = np.asarray(resample.upsample_2d(jnp.asarray(x, jnp.float32), K))
    # scipy's full output (length 2*6 - 1 + 4 - 1 = 14) starts one sample earlier than the 'same' output.
    ref = _scipy_upfirdn_2d(x, 2 * K / K.sum(), up=2)[:, 1:13, 1:13]
    assert ours.shape == (2, 12, 12, 3)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_fir_downsample_matches_scipy():
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 2))
    ours = np.asarray(resample.downsample_2d(jnp.asarray(x, jnp.float32), K))
    ref = _scipy_upfirdn_2d(x, K / K.sum(), down=2)[:, 1:5, 1:5]
    assert ours.shape == (2, 4, 4, 2)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_fused_resampling_convolutions():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
    delta = np.zeros((3, 3, 3, 3), np.float32)
    delta[1, 1] = np.eye(3)
    # A centred delta kernel: the fused operations are exactly the FIR resamplers.
    np.testing.assert_array_equal(resample.upsample_conv_2d(x, jnp.asarray(delta)), resample.upsample_2d(x))
    np.testing.assert_array_equal(resample.conv_downsample_2d(x, jnp.asarray(delta)), resample.downsample_2d(x))
    # Any kernel: convolution and FIR filtering commute, so away from the border the fused ops equal
    # resample-then-convolve (up) and convolve-then-resample (down) with a 'SAME' convolution.
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 5)), jnp.float32)

    def conv(v):
        return jax.lax.conv_general_dilated(v, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    up = resample.upsample_conv_2d(x, w)
    assert up.shape == (2, 16, 16, 5)
    np.testing.assert_allclose(up[:, 3:-3, 3:-3], conv(resample.upsample_2d(x))[:, 3:-3, 3:-3], atol=1e-4)
    down = resample.conv_downsample_2d(x, w)
    assert down.shape == (2, 4, 4, 5)
    np.testing.assert_allclose(down[:, 1:-1, 1:-1], resample.downsample_2d(conv(x))[:, 1:-1, 1:-1], atol=1e-4)


def test_naive_resampling():
    x = np.random.default_rng(3).normal(size=(1, 4, 4, 2)).astype(np.float32)
    np.testing.assert_array_equal(resample.naive_upsample_2d(jnp.asarray(x)), x.repeat(2, 1).repeat(2, 2))
    ref = x.reshape(1, 2, 2, 2, 2, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(resample.naive_downsample_2d(jnp.asarray(x)), ref, rtol=1e-6)
    np.testing.assert_allclose(resample.fir_filter(K).sum(), 1.0)
    with pytest.raises(ValueError, match="sums to zero"):
        resample.fir_filter([1, -1])


# ----------------------------------------------------------------------------------------------
# Parameter counts. Reference: ../shared/reference/param_counts.md, measured by building each
# network from the original score_sde configs (yang-song/score_sde_pytorch cb1f359, cross-checked
# with the JAX yang-song/score_sde 0acb9e0; NCSNv2 with ermongroup/ncsnv2 1bcea03). The figures
# are the *trainable* counts: the original also stored the 128 fixed Fourier weights as parameters
# (its "all params" column is 128 higher for the Fourier networks), diffjax does not.

PAPER_COUNTS = [
    ("ncsnpp_cifar10_ve_continuous", 32, 62_758_787),        # ve/cifar10_ncsnpp_continuous.py
    ("ncsnpp_cifar10_ve_continuous_deep", 32, 107_586_947),  # ve/cifar10_ncsnpp_deep_continuous.py
    ("ncsnpp_cifar10_ve", 32, 62_693_251),                   # ve/cifar10_ncsnpp.py
    ("ddpmpp_cifar10_continuous", 32, 61_804_419),           # vp|subvp/cifar10_ddpmpp_continuous.py
    ("ddpmpp_cifar10_continuous_deep", 32, 106_632_579),     # vp|subvp/cifar10_ddpmpp_deep_continuous.py
    ("ddpmpp_cifar10", 32, 61_804_419),                      # vp/cifar10_ddpmpp.py
    ("ddpm_cifar10", 32, 35_218_947),                        # vp/ddpm/cifar10.py
    ("ncsnv2_cifar10", 32, 29_694_083),                      # ve/ncsnv2/cifar10.py (ermongroup/ncsnv2)
    ("ncsnpp_256_ve_continuous", 256, 65_574_421),           # ve/{celebahq,ffhq}_256_ncsnpp_continuous.py
]


@pytest.mark.parametrize("preset,size,expected", PAPER_COUNTS, ids=[p for p, _, _ in PAPER_COUNTS])
def test_parameter_counts_match_the_original(preset, size, expected):
    assert _abstract_count(models.get_model(preset), size) == expected


def test_fourier_weights_are_not_parameters():
    # The original's "all params" for NCSN++ cont. is 62,758,915 = trainable + 128 Fourier weights.
    net = models.get_model("ncsnpp_cifar10_ve_continuous")
    variables = jax.eval_shape(lambda k: models.init_params(net, k, (32, 32, 3)), jax.random.PRNGKey(0))
    assert set(variables) == {"params"}  # no other collection either
    assert _count(variables) + 128 == 62_758_915
    names = {str(p[-1]) for p, _ in jax.tree_util.tree_flatten_with_path(variables)[0]}
    assert not any("W" in n for n in names)


def test_fourier_projection_formula_and_loaded_weights():
    x = jnp.array([0.1, 1.0, 3.0])
    w = tuple(np.random.default_rng(4).normal(size=8) * 16.0)
    layer = models.GaussianFourierProjection(8, weights=w)
    out = layer.apply({}, x)
    proj = 2 * np.pi * np.asarray(x)[:, None] * np.asarray(w, np.float32)[None, :]
    # float32 phases up to ~600 rad carry ~1e-4 absolute error
    np.testing.assert_allclose(out, np.concatenate([np.sin(proj), np.cos(proj)], 1), atol=3e-4)
    assert layer.init(jax.random.PRNGKey(0), x) == {}
    with pytest.raises(ValueError, match="embedding_size"):
        models.GaussianFourierProjection(4, weights=w).apply({}, x)


# ----------------------------------------------------------------------------------------------
# Shapes at 8, 16, 32, 64 (abstract evaluation: no compile)

SHAPE_NETS = {
    "ncsnpp": dict(TINY),
    "ncsnpp_output_skip": dict(TINY, progressive="output_skip", progressive_input="input_skip"),
    "ncsnpp_residual_cat": dict(TINY, progressive="residual", progressive_input="input_skip",
                                progressive_combine="cat", fir=False),
    "ncsnpp_ddpm_blocks": dict(TINY, resblock_type="ddpm", embedding_type="positional", continuous=False),
    "ddpmpp": dict(TINY, fir=False, progressive_input="none", embedding_type="positional"),
}


@pytest.mark.parametrize("size", [8, 16, 32, 64])
@pytest.mark.parametrize("variant", list(SHAPE_NETS) + ["ddpm", "ncsnv2"])
def test_output_shapes(variant, size):
    if variant == "ddpm":
        net = models.DDPM(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    elif variant == "ncsnv2":
        net = models.NCSNv2(nf=8)
    else:
        net = models.NCSNpp(**SHAPE_NETS[variant])
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((2,), jnp.float32)
    variables = jax.eval_shape(lambda k: models.init_params(net, k, (size, size, 3)), jax.random.PRNGKey(0))
    out = jax.eval_shape(net.apply, variables, x, labels)
    assert out.shape == (2, size, size, 3) and out.dtype == jnp.float32


# ----------------------------------------------------------------------------------------------
# Real forward passes on small networks


@pytest.fixture(scope="module")
def tiny_ncsnpp():
    net = models.NCSNpp(**TINY, init_scale=1.0)  # a non-negligible output layer, to see differences
    return net, _jit_init(net, (8, 8, 1))


def test_deterministic_init(tiny_ncsnpp):
    net, params = tiny_ncsnpp
    again = _jit_init(net, (8, 8, 1))
    other = _jit_init(net, (8, 8, 1), seed=1)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(other)))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))


def test_bfloat16_compute_keeps_float32_parameters(tiny_ncsnpp):
    net, params = tiny_ncsnpp
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
    labels = jnp.array([0.02, 0.5, 3.0, 20.0])
    out32 = jax.jit(net.apply)(params, x, labels)
    net16 = net.clone(dtype=jnp.bfloat16)
    params16 = jax.eval_shape(lambda k: models.init_params(net16, k, (8, 8, 1)), jax.random.PRNGKey(0))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params16))
    # Same parameter tree: the same weights run in either precision.
    assert jax.tree_util.tree_structure(params16) == jax.tree_util.tree_structure(params)
    out16 = jax.jit(net16.apply)(params, x, labels)
    assert out16.dtype == jnp.float32
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert 0 < rel < 0.05, rel  # bfloat16 has an 8-bit mantissa: ~0.4 % per op


def test_network_score_model_applies_the_declared_conversion(tiny_ncsnpp):
    net, params = tiny_ncsnpp
    sde = diffjax.VESDE(sigma_max=20.0)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1))
    t = jnp.array([0.1, 0.5, 0.9])
    sigma = np.asarray(sde.sigma(t))
    out = np.asarray(net.apply(params, x, sde.sigma(t)))
    score = models.network_score_model(net, sde)(params, x, t)
    np.testing.assert_allclose(score, out / sigma[:, None, None, None], rtol=1e-5, atol=1e-6)
    fn = diffjax.score.score_fn_from_module(net, params, sde)
    np.testing.assert_allclose(fn(x, t), score, rtol=1e-6)


def test_class_conditional_network_uses_its_labels():
    net = models.NCSNpp(**TINY, init_scale=1.0, num_classes=10)
    params = _jit_init(net, (8, 8, 1))
    x = jnp.tile(jax.random.normal(jax.random.PRNGKey(2), (1, 8, 8, 1)), (3, 1, 1, 1))
    labels = jnp.full((3,), 1.0)
    out = jax.jit(net.apply)(params, x, labels, class_labels=jnp.array([0, 7, 10]))  # 10: "no class"
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        rel = float(jnp.linalg.norm(out[i] - out[j]) / jnp.linalg.norm(out[i]))
        assert rel > 1e-3, (i, j, rel)
    with pytest.raises(ValueError, match="class_labels"):
        net.apply(params, x, labels)
    with pytest.raises(ValueError, match="num_classes=0"):
        models.NCSNpp(**TINY).apply(params, x, labels, class_labels=jnp.zeros((3,), jnp.int32))


@pytest.mark.slow  # compile-bound (two whole networks); their structure is checked by the parameter counts
def test_ddpm_and_ncsnv2_forward():
    for net in (models.DDPM(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,)), models.NCSNv2(nf=8)):
        params = _jit_init(net, (8, 8, 1))
        out = jax.jit(net.apply)(params, jnp.ones((2, 8, 8, 1)), jnp.array([3.0, 7.0]))
        assert out.shape == (2, 8, 8, 1) and bool(jnp.all(jnp.isfinite(out)))
        assert float(jnp.abs(out).max()) > 0


# ----------------------------------------------------------------------------------------------
# A few training steps on digits: the loss on a fixed held-out batch (fixed t and noise) falls.


@pytest.mark.parametrize("name,sde", [("ncsnpp", diffjax.VESDE(sigma_max=20.0)),
                                      pytest.param("ddpmpp_digits8", diffjax.VPSDE(), marks=pytest.mark.slow)])
def test_tiny_network_trains_on_digits(name, sde):
    images, _ = load_digits()
    x = (images.astype(np.float32) / 16.0 * 2.0 - 1.0)[..., None]
    net = models.get_model(name, **TINY, dropout=0.1)
    params = _jit_init(net, (8, 8, 1))
    train_loss = get_dsm_loss_fn(sde, models.network_score_model(net, sde, train=True), reduce_mean=True,
                                 rng_kwarg="dropout_key")
    eval_loss = jax.jit(get_dsm_loss_fn(sde, models.network_score_model(net, sde), reduce_mean=True))
    optimizer = make_optimizer(1e-3, warmup_steps=0)
    state = create_train_state(jax.random.PRNGKey(1), params, optimizer)
    step = jax.jit(make_train_step(train_loss, optimizer, ema_rate=0.9))
    held_out, key = jnp.asarray(x[:256]), jax.random.PRNGKey(7)
    before = float(eval_loss(key, params, held_out)[0])
    rng = np.random.default_rng(0)
    for _ in range(40):
        state, metrics = step(state, jnp.asarray(x[256 + rng.integers(0, len(x) - 256, 32)]))
    after = float(eval_loss(key, state.params, held_out)[0])
    assert np.isfinite(after) and after < 0.7 * before, (before, after)


# ----------------------------------------------------------------------------------------------
# Errors


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="unknown option 'resnet_blocks' for network 'ncsnpp'"):
        models.get_model("ncsnpp_cifar10_ve_continuous", resnet_blocks=2)
    with pytest.raises(ValueError, match="unknown network 'unet'"):
        models.get_model("unet")


@pytest.mark.parametrize("options,match", [
    (dict(resblock_type="resnet"), "unknown resblock_type 'resnet'"),
    (dict(progressive="skip"), "unknown progressive 'skip'"),
    (dict(progressive_input="skip"), "unknown progressive_input 'skip'"),
    (dict(progressive_combine="mul"), "unknown progressive_combine 'mul'"),
    (dict(embedding_type="learned"), "unknown embedding_type 'learned'"),
    (dict(nonlinearity="gelu2"), "unknown nonlinearity 'gelu2'"),
    (dict(embedding_type="fourier", continuous=False), "needs continuous labels"),
    (dict(prediction="noise"), "unknown prediction 'noise'"),
    (dict(prediction="eps", scale_by_sigma=True), "scale_by_sigma applies to prediction='score'"),
    (dict(dtype=jnp.int32), "unknown dtype 'int32'"),
    (dict(dropout=1.5), "dropout must be in"),
    (dict(nf=0), "nf must be a positive int"),
    (dict(ch_mult=(1, 0)), "ch_mult entries must be positive"),
])
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        models.get_model("ncsnpp", **options)


def test_bad_image_sizes_and_channels():
    net = models.NCSNpp(**dict(TINY, ch_mult=(1, 2, 2)))
    with pytest.raises(ValueError, match="image size 6x6 is not divisible by the down-sampling factor 4"):
        jax.eval_shape(lambda k: models.init_params(net, k, (6, 6, 1)), jax.random.PRNGKey(0))
    net = models.NCSNpp(**dict(TINY, nf=30))
    with pytest.raises(ValueError, match="GroupNorm cannot split 30 channels"):
        jax.eval_shape(lambda k: models.init_params(net, k, (8, 8, 1)), jax.random.PRNGKey(0))
    net = models.DDPM(nf=48, ch_mult=(1,), num_res_blocks=1)
    with pytest.raises(ValueError, match="GroupNorm cannot split 48 channels into 32 groups"):
        jax.eval_shape(lambda k: models.init_params(net, k, (8, 8, 1)), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        jax.eval_shape(models.NCSNv2(nf=8).init, jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 1)), jnp.ones((3,)))
    with pytest.raises(ValueError, match="images of shape"):
        jax.eval_shape(models.NCSNv2(nf=8).init, jax.random.PRNGKey(0), jnp.zeros((2, 8, 8)), jnp.ones((2,)))


def test_presets_are_valid_and_digits_presets_fit_8_and_16():
    for name in models.PRESETS:
        models.get_model(name)
    for name, size in [("ncsnpp_digits8", 8), ("ddpmpp_digits8", 8), ("ncsnpp_digits16", 16), ("ddpmpp_digits16", 16)]:
        net = models.get_model(name)
        assert size % net.downsampling_factor == 0
        assert 0 < _abstract_count(net, size, 1) < 5_000_000
    assert math.isclose(models.get_model("ncsnpp_cifar10_ve_continuous").fourier_scale, 16.0)
