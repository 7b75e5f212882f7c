"""Network-output conversions and label maps, against exact Gaussian posteriors; the Gaussian-mixture
oracle against scipy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import GaussianMixture, SubVPSDE, VESDE, VPSDE
from diffjax.models import MLPScoreNet
from diffjax.score import (
    make_score_fn,
    make_score_model,
    score_fn_from_module,
    time_labels,
    x0_from_score,
)

PROCESSES = {"ve": VESDE(N=100), "vp": VPSDE(N=100), "subvp": SubVPSDE(N=100)}

MU = np.array([0.5, -1.0, 2.0])
_L = np.array([[1.0, 0.0, 0.0], [0.4, 0.6, 0.0], [-0.2, 0.3, 0.5]])
SIGMA = _L @ _L.T


def _coeffs_from_labels(name, sde, labels, continuous):
    """What an ideal network knows: (a, sigma) recovered from its labels alone (inverse label map)."""
    if not continuous:
        a_all, s_all = sde.discrete_marginal_coeffs()
        return a_all[labels], s_all[labels]
    if name == "ve":
        t = jnp.log(labels / sde.sigma_min) / jnp.log(sde.sigma_max / sde.sigma_min)
    else:
        t = labels / 999.0
    return sde.marginal_coeffs(t)


def _exact_network(name, sde, prediction, continuous):
    """The Bayes-optimal network for Gaussian data N(MU, SIGMA), via Gaussian conditioning formulas."""
    mu, cov = jnp.asarray(MU, jnp.float32), jnp.asarray(SIGMA, jnp.float32)

    def apply_fn(params, x, labels):
        a, s = _coeffs_from_labels(name, sde, labels, continuous)
        out = []
        for i in range(x.shape[0]):
            c = a[i] ** 2 * cov + s[i] ** 2 * jnp.eye(3)
            resid = jnp.linalg.solve(c, x[i] - a[i] * mu)
            eps = s[i] * resid  # E[z | x] (Cov(z, x) = s I)
            x0 = mu + a[i] * cov @ resid  # E[x0 | x] (Cov(x0, x) = a Sigma)
            r = jnp.sqrt(a[i] ** 2 + s[i] ** 2)
            outputs = {"score": -resid, "eps": eps, "x0": x0, "v": (a[i] / r) * eps - (s[i] / r) * x0}
            out.append(outputs[prediction])
        return jnp.stack(out)

    return apply_fn


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("prediction", ["score", "eps", "x0", "v"])
@pytest.mark.parametrize("continuous", [True, False])
def test_conversions_of_exact_networks_give_the_exact_score(name, prediction, continuous):
    sde = PROCESSES[name]
    score_fn = make_score_fn(_exact_network(name, sde, prediction, continuous), None, sde,
                             prediction=prediction, continuous=continuous,
                             labels="score_sde" if continuous else "index")
    key = jax.random.PRNGKey(0)
    x = 2.0 * jax.random.normal(key, (6, 3))
    t = jnp.array([0.05, 0.2, 0.37, 0.5, 0.81, 1.0])
    got = score_fn(x, t)
    if continuous:
        expected = GaussianMixture(jnp.ones(1), jnp.asarray(MU)[None], jnp.asarray(SIGMA)[None]).score(x, sde, t)
    else:
        idx = np.round(np.asarray(t) * 99).astype(int)
        a_all, s_all = (np.asarray(v, np.float64) for v in sde.discrete_marginal_coeffs())
        expected = []
        for i, k in enumerate(idx):
            c = a_all[k] ** 2 * SIGMA + s_all[k] ** 2 * np.eye(3)
            expected.append(-np.linalg.solve(c, np.asarray(x[i], np.float64) - a_all[k] * MU))
        expected = np.stack(expected)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3 * float(np.abs(expected).max()))


def test_label_maps_follow_the_original():
    t = jnp.array([1e-5, 0.25, 0.5004, 1.0])
    vp, ve, svp = VPSDE(N=1000), VESDE(N=1000), SubVPSDE(N=1000)
    np.testing.assert_allclose(time_labels(vp, t), 999 * np.asarray(t), rtol=1e-6)
    np.testing.assert_allclose(time_labels(svp, t), 999 * np.asarray(t), rtol=1e-6)
    np.testing.assert_array_equal(time_labels(vp, t, "index"), np.round(np.asarray(t) * 999))
    np.testing.assert_allclose(time_labels(ve, t), 0.01 * 5000.0 ** np.asarray(t), rtol=1e-5)
    # VE discrete: index of the nearest discrete sigma in log scale, found by brute force
    sigmas = np.geomspace(0.01, 50.0, 1000)
    tt = np.linspace(0.0, 1.0, 777)
    nearest = np.argmin(np.abs(np.log(sigmas)[None] - np.log(0.01 * 5000.0**tt)[:, None]), axis=1)
    np.testing.assert_array_equal(time_labels(ve, jnp.asarray(tt), "index"), nearest)
    assert time_labels(ve, t, "index").dtype == jnp.int32


def test_scale_by_sigma_divides_the_output_by_sigma():
    sde = VESDE()
    gm = GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-2.0, 0.0], [2.0, 1.0]]), jnp.stack([jnp.eye(2)] * 2))
    t = jnp.array([0.1, 0.6, 0.9])

    def apply_fn(params, x, labels):  # labels = sigma(t): the network predicts sigma * score
        tt = jnp.log(labels / 0.01) / jnp.log(5000.0)
        return labels[:, None] * gm.score(x, sde, tt)

    x = jax.random.normal(jax.random.PRNGKey(1), (3, 2)) * 3
    got = make_score_fn(apply_fn, None, sde, prediction="score", scale_by_sigma=True, labels="score_sde")(x, t)
    np.testing.assert_allclose(got, gm.score(x, sde, t), rtol=1e-4)


def test_conditioning_passes_through_as_keyword_arguments():
    sde = VPSDE()

    def apply_fn(params, x, labels, *, y, shift=0.0):
        return params * x + y[:, None] + shift

    score_fn = make_score_fn(apply_fn, 2.0, sde, prediction="score", labels="score_sde")
    x = jnp.ones((2, 3))
    t = jnp.array([0.5, 0.5])
    np.testing.assert_allclose(score_fn(x, t, y=jnp.array([1.0, -1.0]), shift=0.5), [[3.5] * 3, [1.5] * 3])
    jitted = jax.jit(lambda x, t, y: score_fn(x, t, y=y))
    np.testing.assert_allclose(jitted(x, t, jnp.array([0.0, 1.0])), [[2.0] * 3, [3.0] * 3])


def test_tweedie_denoiser_inverts_the_forward_mean():
    """x0_from_score with the exact score of a point mass (sigma_data -> 0) returns that point."""
    sde = VPSDE()
    x0 = jnp.array([[1.0, -2.0]])
    gm = GaussianMixture(jnp.ones(1), x0, 1e-8 * jnp.eye(2)[None])
    t = jnp.array([0.4])
    xt = sde.marginal_prob(x0, t)[0] + 0.3
    a, s = sde.marginal_coeffs(t)
    np.testing.assert_allclose(x0_from_score(gm.score(xt, sde, t), xt, a, s), x0, atol=1e-4)


def test_any_callable_works_like_an_equinox_model():
    """A callable object holding its own weights (Equinox style): params is the model itself."""

    class Linear:
        def __init__(self, w):
            self.w = w

        def __call__(self, x, label):  # one example
            return self.w * x * label

    sde = VPSDE()
    apply_fn = lambda model, x, labels: jax.vmap(model)(x, labels)  # noqa: E731
    score_fn = make_score_fn(apply_fn, Linear(0.001), sde, prediction="eps", labels="score_sde")
    x = jnp.ones((2, 2))
    t = jnp.array([0.2, 0.9])
    expected = -(0.001 * 999 * np.asarray(t))[:, None] / np.asarray(sde.marginal_coeffs(t)[1])[:, None]
    np.testing.assert_allclose(score_fn(x, t), expected * np.ones((2, 2)), rtol=1e-5)


def test_module_declares_its_prediction():
    sde = VESDE()
    net = MLPScoreNet(hidden=(16,), prediction="eps")
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.ones((1,)))
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)  # non-zero output layer
    x = jnp.ones((3, 2))
    t = jnp.array([0.1, 0.5, 0.9])
    out = net.apply(params, x, sde.sigma(t))
    np.testing.assert_allclose(score_fn_from_module(net, params, sde)(x, t), -out / sde.sigma(t)[:, None], rtol=1e-5)
    with pytest.raises(TypeError, match="declares no `prediction`"):
        score_fn_from_module(object(), params, sde)


def test_bad_inputs_raise_clear_errors():
    sde = VPSDE()
    ident = lambda p, x, labels: x  # noqa: E731
    with pytest.raises(ValueError, match="unknown prediction type 'noise'.*expected one of"):
        make_score_model(ident, sde, prediction="noise", labels="score_sde")
    with pytest.raises(ValueError, match="scale_by_sigma applies to prediction='score'"):
        make_score_model(ident, sde, prediction="eps", scale_by_sigma=True, labels="score_sde")
    with pytest.raises(TypeError, match="sde must be a diffjax process"):
        make_score_model(ident, "vp", labels="score_sde")
    score_fn = make_score_fn(ident, None, sde, labels="score_sde")
    with pytest.raises(ValueError, match=r"t must have shape \(batch,\) = \(2,\)"):
        score_fn(jnp.ones((2, 3)), jnp.ones((3,)))
    bad = make_score_fn(lambda p, x, labels: x[:, :1], None, sde, labels="score_sde")
    with pytest.raises(ValueError, match="network output has shape"):
        bad(jnp.ones((2, 3)), jnp.ones((2,)))
    assert math.isfinite(float(score_fn(jnp.ones((2, 3)), jnp.full((2,), 0.5)).sum()))


@pytest.mark.parametrize("dim, batch", [(2, 4096), (3, 1024), (16, 64), (64, 64)])
def test_mixture_densities_and_score_against_scipy_at_a_users_batch(dim, batch):
    """GaussianMixture's marginal log-density, component log-densities, responsibilities, score and
    divergence against scipy's Gaussian densities (float64, per-example times): the oracle the other
    tests lean on, at the batch sizes users run, in both of its layouts (batch-last below d = 32)."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    from helpers import mixture_2d, mixture_3d, mixture_16d, random_mixture, x64

    gm = {2: mixture_2d, 3: mixture_3d, 16: mixture_16d, 64: lambda: random_mixture(64, 0.075)}[dim]()
    sde = VPSDE()
    rng = np.random.default_rng(dim)
    x = rng.normal(0.0, 2.0, (batch, dim))
    t = rng.uniform(1e-3, 1.0, batch)
    w, m, c = (np.asarray(v, np.float64) for v in (gm.weights, gm.means, gm.covs))
    with x64():
        a, s = (np.asarray(v, np.float64) for v in sde.marginal_coeffs(jnp.asarray(t)))
    # reference: each example's marginal components N(a mu_k, a^2 Sigma_k + s^2 I), one scipy call per (example, k)
    comp = np.empty((batch, len(w)))
    grads = np.empty((batch, len(w), dim))
    for k in range(len(w)):
        for b in range(batch):
            cov = a[b] ** 2 * c[k] + s[b] ** 2 * np.eye(dim)
            comp[b, k] = np.log(w[k]) + multivariate_normal(a[b] * m[k], cov).logpdf(x[b])
            grads[b, k] = -np.linalg.solve(cov, x[b] - a[b] * m[k])
    resp = np.exp(comp - logsumexp(comp, axis=1, keepdims=True))
    score = np.einsum("bk,bkd->bd", resp, grads)
    with x64():
        xj, tj = jnp.asarray(x), jnp.asarray(t)
        gm64 = GaussianMixture(*(jnp.asarray(v) for v in (w, m, c)))
        np.testing.assert_allclose(gm64.log_prob(xj, sde, tj), logsumexp(comp, axis=1), rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(gm64.component_log_probs(xj, sde, tj), comp, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(gm64.responsibilities(xj, sde, tj), resp, atol=1e-10)
        np.testing.assert_allclose(gm64.score(xj, sde, tj), score, rtol=1e-9, atol=1e-9)
        # divergence: the trace of the score's Jacobian by central differences of the reference score
        sub = slice(0, 8)
        h = 1e-5
        fd = np.zeros(8)
        for i in range(dim):
            e = np.zeros(dim)
            e[i] = h
            up, down = (np.asarray(gm64.score(jnp.asarray(x[sub] + sg * e), sde, tj[sub]))[:, i] for sg in (1, -1))
            fd += (up - down) / (2 * h)
        np.testing.assert_allclose(gm64.score_divergence(xj[sub], sde, tj[sub]), fd, rtol=1e-6, atol=1e-5)
