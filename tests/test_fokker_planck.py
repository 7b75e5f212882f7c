"""The score Fokker–Planck residual (diffjax.fokker_planck) against the exact mixture score, its
Hutchinson estimate's unbiasedness, the regularised DSM loss, and `diffjax evaluate --fp-residual`."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import mixture_2d, mixture_3d, x64

from diffjax import cli, losses
from diffjax.fokker_planck import fp_residual_by_time, fp_residual_sq, fp_time_weight, score_fp_residual
from diffjax.processes import PFGMPP, SubVPSDE, VESDE, VPSDE

PROCESSES = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}


def _perturbation(x):
    """h = (sin x2, cos x1) + x exp(-|x|^2) (methods.md 3.5), for x of shape (n, 2)."""
    return jnp.stack([jnp.sin(x[:, 1]), jnp.cos(x[:, 0])], 1) + x * jnp.exp(-jnp.sum(x**2, 1, keepdims=True))


def _marginal_points(gm, sde, t, seed=0):
    a, s = sde.marginal_coeffs(t)
    x0 = gm.sample(jax.random.PRNGKey(seed), t.shape[0])
    return a[:, None] * x0 + s[:, None] * jax.random.normal(jax.random.PRNGKey(seed + 1), x0.shape, x0.dtype)


@jax.jit
def _rms(r):
    return jnp.sqrt(jnp.mean(jnp.sum(r**2, axis=1)))


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_exact_mixture_score_has_zero_residual_and_a_perturbation_a_linear_one(name):
    with x64():
        sde, gm = PROCESSES[name](), mixture_2d()
        score = gm.score_fn(sde)
        t = jnp.linspace(0.02, 0.95, 64)  # a different t per example: the derivatives are per example
        x = _marginal_points(gm, sde, t)
        assert x.dtype == jnp.float64

        @jax.jit
        def residual(eps):
            return score_fp_residual(sde, lambda y, s: score(y, s) + eps * _perturbation(y), x, t, divergence="exact")

        _, g = sde.drift_diffusion_coeffs(t)
        scale = float(_rms(g[:, None] ** 2 * score(x, t)))
        exact = float(_rms(residual(0.0)))
        assert exact / scale < 1e-10, f"{name}: exact score's residual {exact:.2e} vs |g^2 s| {scale:.2e}"
        r2, r3 = float(_rms(residual(1e-2))), float(_rms(residual(1e-3)))
        assert r2 > 100 * exact and r2 > 1e-3 * scale
        assert 8 < r2 / r3 < 12, f"{name}: R(1e-2) / R(1e-3) = {r2 / r3:.3f}"


def test_hutchinson_squared_norm_is_unbiased_and_one_probe_is_not():
    with x64():
        sde, gm = VPSDE(), mixture_3d()
        gm = type(gm)(*(jnp.asarray(v, jnp.float64) for v in (gm.weights, gm.means, gm.covs)))
        base = gm.score_fn(sde)

        def score(y, s):  # a non-conservative error, so R != 0 and the divergence's gradient is non-trivial
            return base(y, s) + 0.3 * jnp.sin(y[:, [1, 2, 0]] * y[:, [2, 0, 1]]) + 0.2 * y**2

        t = jnp.array([0.1, 0.3, 0.6, 0.9])
        x = _marginal_points(gm, sde, t, seed=3)
        exact, direct = jax.jit(lambda: (fp_residual_sq(sde, score, x, t, divergence="exact"), jnp.sum(
            score_fp_residual(sde, score, x, t, divergence="exact") ** 2, axis=1)))()
        np.testing.assert_allclose(exact, direct, rtol=1e-12)
        keys = jax.random.split(jax.random.PRNGKey(0), 1500)
        pairs, single = jax.jit(jax.vmap(lambda k: (  # (K, n) each
            fp_residual_sq(sde, score, x, t, key=k), jnp.sum(score_fp_residual(sde, score, x, t, key=k) ** 2, axis=1))))(keys)
        mean, se = np.mean(pairs, 0), np.std(pairs, 0) / np.sqrt(len(keys))
        assert np.all(np.abs(mean - exact) < 5 * se + 1e-9 * exact), (mean, exact, se)
        assert np.all(se > 0) and np.all(se < 0.2 * exact)  # the test has power
        # one probe overestimates |R|^2 by the probe's variance
        bias = np.mean(single, 0) - exact
        assert np.all(bias > 5 * np.std(single, 0) / np.sqrt(len(keys)))


def test_residual_by_time_of_the_exact_score_is_at_rounding_level():
    with x64():
        sde, gm = SubVPSDE(), mixture_2d()
        x0 = gm.sample(jax.random.PRNGKey(0), 128)
        out = jax.jit(lambda k: fp_residual_by_time(sde, gm.score_fn(sde), k, x0, jnp.array([0.05, 0.5, 0.9]),
                                                    divergence="exact"))(jax.random.PRNGKey(1))
        assert out["relative"].shape == (3,) and np.all(np.asarray(out["rms_scale"]) > 0)
        assert np.all(np.asarray(out["relative"]) < 1e-10)


def _tiny_score_model(params, x, t, scale=None):
    """A pure-JAX score model with time input: tanh([x, t] W1 + b1) W2 - x (scaled by a per-example label)."""
    h = jnp.tanh(jnp.concatenate([x, t[:, None]], 1) @ params["w1"] + params["b1"])
    out = h @ params["w2"] - x
    return out if scale is None else out * scale[:, None]


def _tiny_params():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {"w1": jax.random.normal(k1, (3, 16)), "b1": jnp.zeros(16), "w2": 0.3 * jax.random.normal(k2, (16, 2))}


def test_regularised_loss_reuses_dsm_samples_and_weight_zero_is_plain_dsm():
    sde, params = VPSDE(), _tiny_params()
    batch = {"x": jax.random.normal(jax.random.PRNGKey(1), (32, 2)), "scale": jnp.linspace(0.5, 1.5, 32)}
    key = jax.random.PRNGKey(2)
    plain = losses.get_dsm_loss_fn(sde, _tiny_score_model, reduce_mean=True)
    off = losses.get_dsm_loss_fn(sde, _tiny_score_model, reduce_mean=True, fp_weight=0.0, fp_num_examples=4)
    (l0, _), (l1, m1) = plain(key, params, batch), off(key, params, batch)
    assert float(l0) == float(l1) and set(m1) == {"loss"}
    for divergence in ("rademacher", "exact"):
        reg = losses.get_dsm_loss_fn(sde, _tiny_score_model, reduce_mean=True, fp_weight=0.5, fp_num_examples=8,
                                     fp_divergence=divergence)
        (loss, metrics), grads = jax.jit(jax.value_and_grad(reg, argnums=1, has_aux=True))(key, params, batch)
        assert float(metrics["dsm"]) == pytest.approx(float(l0), rel=1e-6)  # the same x_t and t as plain DSM
        assert float(loss) == pytest.approx(float(metrics["dsm"] + 0.5 * metrics["fp"]), rel=1e-6)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
        assert float(jnp.sum(jnp.abs(grads["w1"]))) > 0
    # the time weighting: sigma^4 / g^4 by default, positive and finite for sub-VP's g(0) = 0 too
    w = fp_time_weight(SubVPSDE(), jnp.array([0.0, 1e-5, 0.5]), "sigma4_g4")
    assert np.all(np.isfinite(np.asarray(w))) and np.all(np.asarray(w) >= 0)


def test_bad_inputs_raise_one_line_errors():
    sde, x, t = VPSDE(), jnp.zeros((4, 2)), jnp.full((4,), 0.5)
    score = lambda y, s: -y  # noqa: E731
    cases = [
        (ValueError, lambda: score_fp_residual(sde, score, x, t, divergence="trace")),
        (ValueError, lambda: score_fp_residual(sde, score, x, t)),  # hutchinson needs a key
        (ValueError, lambda: score_fp_residual(sde, score, x, t[:3], divergence="exact")),
        (ValueError, lambda: score_fp_residual(sde, score, jnp.zeros((4,)), t, divergence="exact")),
        (TypeError, lambda: score_fp_residual("vp", score, x, t, divergence="exact")),
        (TypeError, lambda: score_fp_residual(sde, None, x, t, divergence="exact")),
        (ValueError, lambda: score_fp_residual(PFGMPP(), score, x, t, divergence="exact")),
        (ValueError, lambda: fp_time_weight(sde, t, "sigma2")),
        (ValueError, lambda: losses.get_dsm_loss_fn(sde, _tiny_score_model, fp_weight=-1.0)),
        (ValueError, lambda: losses.get_dsm_loss_fn(sde, _tiny_score_model, fp_weight=1.0, fp_time_weighting="x")),
        (ValueError, lambda: losses.get_dsm_loss_fn(sde, _tiny_score_model, fp_weight=1.0, fp_num_examples=-2)),
        (ValueError, lambda: losses.get_dsm_loss_fn(sde, _tiny_score_model, fp_weight=1.0, fp_divergence="x")),
    ]
    for error, call in cases:
        with pytest.raises(error) as info:
            call()
        assert "\n" not in str(info.value), str(info.value)


def test_config_train_and_cli_fp_residual(tmp_path, capsys):
    from diffjax.configs import load_config
    from diffjax.run import build_loss, build_model, build_sde

    from diffjax.configs import with_defaults

    saved = load_config("toy2d").to_dict()  # a run saved before the fp_* keys existed loads with them off
    for k in [k for k in saved["training"] if k.startswith("fp_")]:
        del saved["training"][k]
    assert with_defaults(saved)["training"]["fp_weight"] == 0.0
    edm = load_config("digits_edm", ["training.fp_weight=0.1"])
    with pytest.raises(ValueError, match="continuous DSM loss only"):
        build_loss(edm, build_sde(edm), build_model(edm))
    workdir = str(tmp_path / "toy")
    args = ["train", "--config", "toy2d", "--workdir", workdir, "--no-progress", "--config.training.n_iters=20",
            "--config.training.n_jitted_steps=10", "--config.training.batch_size=32", "--config.training.log_freq=10",
            "--config.training.snapshot_freq=20", "--config.model.options.hidden=(16,16)",
            "--config.sampling.num_samples=0", "--config.eval.bpd_num_examples=0", "--config.training.fp_weight=0.1",
            "--config.training.fp_num_examples=8", "--config.training.fp_divergence=exact"]
    assert cli.main(args) == 0
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert all(np.isfinite(r["fp"]) and np.isfinite(r["dsm"]) for r in records if "loss" in r)
    capsys.readouterr()
    assert cli.main(["evaluate", "--workdir", workdir, "--fp-residual", "--num", "32"]) == 0
    out = capsys.readouterr().out
    assert "relative" in out and "fp_residual_20.json" in out
    ev = json.load(open(os.path.join(workdir, "eval", "fp_residual_20.json")))
    assert ev["divergence"] == "exact" and len(ev["t"]) == len(ev["relative"]) == 8
    assert all(np.isfinite(v) and v > 0 for v in ev["relative"])
