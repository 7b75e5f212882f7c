"""Denoising score matching against its closed-form minimum on Gaussian(-mixture) data."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from diffjax import GaussianMixture, SubVPSDE, VESDE, VPSDE
from diffjax.losses import (
    get_ddpm_loss_fn,
    get_discrete_dsm_loss_fn,
    get_dsm_loss_fn,
    get_smld_loss_fn,
)
from diffjax.score import make_score_model

EPS = 1e-5
MIXTURE = GaussianMixture(
    weights=jnp.array([0.2, 0.5, 0.3]),
    means=jnp.array([[-3.0, 0.0], [2.0, 2.0], [1.0, -2.5]]),
    covs=jnp.array([[[0.5, 0.1], [0.1, 0.3]], [[0.2, 0.0], [0.0, 0.4]], [[0.3, -0.1], [-0.1, 0.3]]]),
)
LAMBDA = np.array([0.25, 1.5])  # eigenvalues of the single-Gaussian case: N(0, diag(LAMBDA))
SINGLE = GaussianMixture(jnp.ones(1), jnp.zeros((1, 2)), jnp.diag(jnp.asarray(LAMBDA))[None])


def exact_score_model(gm, sde):
    def score_model(params, x, t, **cond):
        return gm.score(x, sde, t)

    return score_model


def per_example(loss_fn, key, x, params=None):
    """Each example's loss term under its own key: mean and standard error of the estimator."""
    keys = jax.random.split(key, x.shape[0])
    vals = jax.jit(jax.vmap(lambda k, xi: loss_fn(k, params, xi[None])[0]))(keys, x)
    vals = np.asarray(vals, np.float64)
    return vals.mean(), vals.std() / math.sqrt(len(vals)), vals


def np_coeffs(name, t):
    """(a, sigma, g^2) written out independently of diffjax, float64."""
    t = np.asarray(t, np.float64)
    if name == "ve":
        s = 0.01 * 5000.0**t
        return np.ones_like(t), s, 2 * math.log(5000.0) * s**2
    beta, big_b = 0.1 + 19.9 * t, 0.1 * t + 0.5 * 19.9 * t**2
    a = np.exp(-big_b / 2)
    if name == "vp":
        return a, np.sqrt(-np.expm1(-big_b)), beta
    return a, -np.expm1(-big_b), beta * -np.expm1(-2 * big_b)


SDES = {"ve": VESDE(), "vp": VPSDE(), "subvp": SubVPSDE()}


def mixture_irreducible_loss(key, gm, name, n=40_000):
    """E_t E_{x_t} (1/d) tr Cov(z | x_t): the minimum of the default-weighted, reduce_mean DSM loss.

    By the law of total covariance over the component k: Cov(z | x) = sum_k r_k (I - s^2 C_k^{-1})
    + sum_k r_k m_k m_k^T - m m^T, with m_k = s C_k^{-1}(x - a mu_k) and m = sum_k r_k m_k.
    Written with explicit inverses in numpy (float64), separately from diffjax's mixture code.
    """
    k1, k2, k3 = jax.random.split(key, 3)
    t = np.asarray(jax.random.uniform(k1, (n,), minval=EPS, maxval=1.0), np.float64)
    x0 = np.asarray(gm.sample(k2, n), np.float64)
    a, s, _ = np_coeffs(name, t)
    d = x0.shape[1]
    x = a[:, None] * x0 + s[:, None] * np.asarray(jax.random.normal(k3, (n, d)), np.float64)
    w, mu, cov = (np.asarray(v, np.float64) for v in (gm.weights, gm.means, gm.covs))
    c = a[:, None, None, None] ** 2 * cov[None] + s[:, None, None, None] ** 2 * np.eye(d)  # (n, K, d, d)
    c_inv = np.linalg.inv(c)
    diff = x[:, None, :] - a[:, None, None] * mu[None]
    prec_diff = np.einsum("nkij,nkj->nki", c_inv, diff)
    log_r = np.log(w)[None] - 0.5 * (np.linalg.slogdet(c)[1] + np.einsum("nki,nki->nk", diff, prec_diff))
    r = np.exp(log_r - log_r.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    m_k = s[:, None, None] * prec_diff
    m = np.einsum("nk,nki->ni", r, m_k)
    tr_within = d - s[:, None] ** 2 * np.trace(c_inv, axis1=2, axis2=3)
    tr_cov = np.einsum("nk,nk->n", r, tr_within + (m_k**2).sum(-1)) - (m**2).sum(-1)
    vals = tr_cov / d
    return vals.mean(), vals.std() / math.sqrt(n)


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_dsm_at_the_exact_score_equals_its_irreducible_value(name):
    sde = SDES[name]
    loss_fn = get_dsm_loss_fn(sde, exact_score_model(MIXTURE, sde), reduce_mean=True)
    x = MIXTURE.sample(jax.random.PRNGKey(0), 60_000)
    got, se, _ = per_example(loss_fn, jax.random.PRNGKey(1), x)
    expected, se_exp = mixture_irreducible_loss(jax.random.PRNGKey(2), MIXTURE, name)
    assert abs(got - expected) < 4 * math.hypot(se, se_exp), (got, expected, se, se_exp)
    # and the minimum is well below the trivial level 1 of the zero score
    assert expected < 0.9


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_dsm_single_gaussian_matches_quadrature(name):
    """N(0, diag(lam)): the minimum is (1/(T-eps)) int (1/d) sum_j a^2 lam_j / (a^2 lam_j + s^2) dt."""
    sde = SDES[name]
    loss_fn = get_dsm_loss_fn(sde, exact_score_model(SINGLE, sde), reduce_mean=True)
    got, se, _ = per_example(loss_fn, jax.random.PRNGKey(3), SINGLE.sample(jax.random.PRNGKey(4), 60_000))

    def integrand(t):
        a, s, _ = np_coeffs(name, t)
        return np.mean(a**2 * LAMBDA / (a**2 * LAMBDA + s**2))

    expected = integrate.quad(integrand, EPS, 1.0, limit=200)[0] / (1.0 - EPS)
    assert abs(got - expected) < 4 * se, (got, expected, se)


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_dsm_is_lowest_at_the_exact_score(name):
    sde = SDES[name]
    x = MIXTURE.sample(jax.random.PRNGKey(5), 20_000)
    key = jax.random.PRNGKey(6)  # common random numbers: every candidate sees the same t and z
    exact = MIXTURE.score_fn(sde)

    def loss_of(score):
        fn = get_dsm_loss_fn(sde, lambda p, x, t: score(x, t), reduce_mean=True)
        return float(fn(key, None, x)[0])

    best = loss_of(exact)
    for perturbed in (
        lambda x, t: 1.1 * exact(x, t),
        lambda x, t: 0.9 * exact(x, t),
        lambda x, t: exact(x, t) + 0.05 / sde.marginal_coeffs(t)[1][:, None],
        lambda x, t: exact(x, t) + 0.1 * jnp.roll(exact(x, t), 1, axis=1),
    ):
        assert loss_of(perturbed) > best + 1e-4


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_likelihood_weighting_importance_sampling_keeps_the_mean_and_cuts_the_variance(name):
    """Likelihood-weighted DSM at the exact score of N(0, diag(lam)), whose value is
    (1/(T-eps)) int g^2/s^2 * (1/2) sum_j a^2 lam_j / (a^2 lam_j + s^2) dt (scipy quad in log t).
    Uniform t and importance-sampled t must both hit it; IS must have far lower variance (VP, sub-VP).
    """
    sde = SDES[name]
    model = exact_score_model(SINGLE, sde)
    x = SINGLE.sample(jax.random.PRNGKey(7), 100_000)
    uni = get_dsm_loss_fn(sde, model, likelihood_weighting=True, reduce_mean=False)
    isf = get_dsm_loss_fn(sde, model, likelihood_weighting=True, importance_sampling=True, reduce_mean=False)
    m_u, se_u, v_u = per_example(uni, jax.random.PRNGKey(8), x)
    m_i, se_i, v_i = per_example(isf, jax.random.PRNGKey(9), x)

    def integrand(lu):
        t = math.exp(lu)
        a, s, g2 = np_coeffs(name, t)
        return t * g2 / s**2 * 0.5 * np.sum(a**2 * LAMBDA / (a**2 * LAMBDA + s**2))

    expected = integrate.quad(integrand, math.log(EPS), 0.0, limit=200)[0] / (1.0 - EPS)
    assert abs(m_u - expected) < 4 * se_u, (m_u, expected, se_u)
    assert abs(m_i - expected) < 4 * se_i, (m_i, expected, se_i)
    ratio = v_i.var() / v_u.var()
    print(f"{name}: likelihood-weighted DSM variance, importance / uniform = {ratio:.4f}")
    if name == "ve":  # g^2/s^2 is constant: importance sampling is uniform sampling
        assert 0.8 < ratio < 1.25
    else:
        assert ratio < 0.05


def _discrete_exact_model(sde):
    """Score model of the exact score of the discrete marginals of N(0, diag(LAMBDA))."""
    a_all, s_all = sde.discrete_marginal_coeffs()

    def apply_fn(params, x, labels):
        var = a_all[labels][:, None] ** 2 * jnp.asarray(LAMBDA) + s_all[labels][:, None] ** 2
        return -x / var  # the data mean is zero

    return make_score_model(apply_fn, sde, prediction="score", continuous=False, labels="index")


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_discrete_losses_at_the_exact_score(name):
    """SMLD (VE), DDPM (VP) and the derived sub-VP chain: the minimum of the 1/2-sum reduced loss is
    (1/N) sum_i (1/2) sum_j a_i^2 lam_j / (a_i^2 lam_j + s_i^2), with (a_i, s_i) the chain's
    marginals written out in numpy."""
    sde = SDES[name]
    factory = {"ve": get_smld_loss_fn, "vp": get_ddpm_loss_fn, "subvp": get_discrete_dsm_loss_fn}[name]
    loss_fn = factory(sde, _discrete_exact_model(sde))
    got, se, _ = per_example(loss_fn, jax.random.PRNGKey(10), SINGLE.sample(jax.random.PRNGKey(11), 100_000))
    if name == "ve":
        a_i, s_i = np.ones(1000), np.geomspace(0.01, 50.0, 1000)
    else:
        abar = np.cumprod(1 - np.linspace(0.1 / 1000, 20.0 / 1000, 1000))
        a_i, s_i = np.sqrt(abar), (np.sqrt(1 - abar) if name == "vp" else 1 - abar)
    terms = 0.5 * np.sum(a_i[:, None] ** 2 * LAMBDA / (a_i[:, None] ** 2 * LAMBDA + s_i[:, None] ** 2), axis=1)
    assert abs(got - terms.mean()) < 4 * se, (got, terms.mean(), se)


def test_ddpm_loss_is_the_eps_mse():
    """A network that always predicts eps = c: E ||c - z||^2 / d = 1 + mean(c^2) exactly."""
    sde = VPSDE()
    c = jnp.array([0.5, -1.0, 0.25])
    model = make_score_model(lambda p, x, labels: jnp.broadcast_to(c, x.shape), sde, prediction="eps", continuous=False, labels="index")
    loss_fn = get_ddpm_loss_fn(sde, model, reduce_mean=True)
    got, se, _ = per_example(loss_fn, jax.random.PRNGKey(12), jnp.ones((50_000, 3)))
    assert abs(got - (1 + float(jnp.mean(c**2)))) < 4 * se


def test_loss_is_differentiable_and_jittable():
    sde = VPSDE()
    exact = MIXTURE.score_fn(sde)
    loss_fn = get_dsm_loss_fn(sde, lambda theta, x, t: theta * exact(x, t), reduce_mean=True)
    x = MIXTURE.sample(jax.random.PRNGKey(13), 512)
    key = jax.random.PRNGKey(14)
    grad = jax.jit(jax.grad(lambda th: loss_fn(key, th, x)[0]))(1.3)
    h = 1e-2  # the loss is quadratic in theta: central differences are exact up to rounding
    fd = (loss_fn(key, 1.3 + h, x)[0] - loss_fn(key, 1.3 - h, x)[0]) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-3)
    assert grad > 0  # theta = 1 is the minimiser
    batched = jax.vmap(lambda k: loss_fn(k, 1.0, x)[0])(jax.random.split(key, 4))
    assert batched.shape == (4,) and np.all(np.isfinite(batched))


def test_conditioning_from_a_batch_mapping_reaches_the_model():
    sde = VESDE()
    seen = {}

    def model(params, x, t, *, y, dropout_rng):
        seen["y"], seen["rng"] = y.shape, dropout_rng.shape
        return MIXTURE.score(x, sde, t) + 0.0 * y[:, None]

    loss_fn = get_dsm_loss_fn(sde, model, rng_kwarg="dropout_rng", reduce_mean=False)
    x = MIXTURE.sample(jax.random.PRNGKey(15), 8)
    loss, metrics = loss_fn(jax.random.PRNGKey(16), None, {"x": x, "y": jnp.arange(8.0)})
    assert seen["y"] == (8,) and seen["rng"] == jax.random.PRNGKey(0).shape
    assert float(loss) == float(metrics["loss"]) and math.isfinite(float(loss))


def test_bad_configurations_raise_clear_errors():
    vp, ve = VPSDE(), VESDE()
    model = exact_score_model(MIXTURE, vp)
    with pytest.raises(ValueError, match="likelihood_weighting=True only"):
        get_dsm_loss_fn(vp, model, importance_sampling=True)
    with pytest.raises(TypeError, match="SMLD loss needs a VESDE"):
        get_smld_loss_fn(vp, model)
    with pytest.raises(TypeError, match="DDPM loss needs a VPSDE"):
        get_ddpm_loss_fn(ve, model)
    with pytest.raises(ValueError, match="t_min must lie in"):
        get_dsm_loss_fn(vp, model, t_min=1.0)
    loss_fn = get_dsm_loss_fn(vp, model)
    with pytest.raises(ValueError, match="key 'x'"):
        loss_fn(jax.random.PRNGKey(0), None, {"image": jnp.ones((2, 2))})
