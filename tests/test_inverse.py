"""Inverse problems against closed forms: operators' adjoints and pseudo-inverses, the mixture
posterior against Monte Carlo, PiGDM exact on an N(mu, I) prior, DPS's gradient, DDNM's range, and
the twisted SMC's evidence and posterior as particles grow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import GaussianMixture, inverse
from diffjax.processes import VPSDE
from diffjax.samplers import ddim, log_snr_timesteps, prior_sample, sample, uniform_timesteps
from helpers import rotated_mixture, x64


def operators():
    rng = np.random.default_rng(0)
    return {
        "matrix": (inverse.matrix(jnp.asarray(rng.normal(size=(3, 6)))), (6,)),
        "mask": (inverse.inpainting(jnp.asarray((rng.uniform(size=(4, 4, 2)) > 0.5).astype(np.float64))), (4, 4, 2)),
        "downsample": (inverse.downsampling((4, 6, 3), 2), (4, 6, 3)),
        "colorize": (inverse.colorization((2, 3, 3)), (2, 3, 3)),
        "blur vector": (inverse.blurring((8,), [0.25, 0.5, 0.25]), (8,)),
        "blur image": (inverse.blurring((6, 6, 1), np.outer([1, 2, 1], [1, 2, 1]) / 16.0), (6, 6, 1)),
    }


@pytest.mark.parametrize("name", list(operators()))
def test_operators_pass_the_dot_product_test_and_their_pseudo_inverse_is_moore_penrose(name):
    with x64():
        op, shape = operators()[name]
        rng = np.random.default_rng(1)
        x = jnp.asarray(rng.normal(size=(5, *shape)))
        y = jnp.asarray(rng.normal(size=(5, *op.y_shape)))
        # <A x, y> = <x, A^T y>
        lhs = jnp.sum(op.apply(x) * y, axis=tuple(range(1, y.ndim)))
        rhs = jnp.sum(x * op.adjoint(y), axis=tuple(range(1, x.ndim)))
        np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-10)
        A = np.asarray(inverse.dense(op))
        pinv = np.linalg.pinv(A, rcond=1e-6)
        got = np.asarray(op.pinv(y)).reshape(5, -1)
        np.testing.assert_allclose(got, np.asarray(y).reshape(5, -1) @ pinv.T, atol=1e-8)
        # (r2 A A^T + s2 I)^{-1} v against a dense solve, r2 per example
        r2 = jnp.asarray(rng.uniform(0.1, 2.0, 5))
        v = op.apply(x)  # in the range of A (a mask's unobserved rows stay zero)
        for i in range(5):
            M = float(r2[i]) * A @ A.T + 0.3 * np.eye(A.shape[0])
            want = np.linalg.solve(M, np.asarray(v[i]).ravel())
            np.testing.assert_allclose(np.asarray(op.solve_aat(v, r2, 0.3)[i]).ravel()[np.abs(A).sum(1) > 0],
                                       want[np.abs(A).sum(1) > 0], rtol=1e-8, atol=1e-10)


def test_bad_measurement_shapes_get_one_line_errors():
    op = inverse.matrix(jnp.ones((3, 6)))
    with pytest.raises(ValueError, match=r"measures examples of shape \(3,\); got y of shape \(4,\)"):
        inverse.pigdm_score(VPSDE(), lambda x, t: x, op, jnp.ones((4,)), 0.1)
    with pytest.raises(ValueError, match="divisible by 2"):
        inverse.downsampling((5, 4, 1), 2)
    with pytest.raises(ValueError, match="0 \\(unknown\\) and 1 \\(observed\\)"):
        inverse.inpainting(jnp.array([0.0, 0.5]))
    with pytest.raises(ValueError, match="x_shape"):
        inverse.matrix(jnp.ones((2, 6)), x_shape=(2, 2))


mixture = rotated_mixture


def test_the_mixture_posterior_matches_importance_sampling():
    """The closed-form posterior's weights, mean and covariance against self-normalised importance
    sampling from the prior (400k draws; tolerances several standard errors), and log p(y) against
    the Monte-Carlo mean of the likelihood."""
    with x64():
        gm = mixture(2)
        A = jnp.array([[1.0, 0.5]])
        y, sy = jnp.array([0.7]), 0.4
        post, log_z = inverse.mixture_posterior(gm, A, y, sy)
        x, labels = gm.sample_with_labels(jax.random.PRNGKey(0), 400_000)
        log_lik = -0.5 * ((y - x @ A.T)[:, 0] / sy) ** 2 - np.log(sy * np.sqrt(2 * np.pi))
        w = np.exp(np.asarray(log_lik - jax.nn.logsumexp(log_lik)))
        x, labels = np.asarray(x), np.asarray(labels)
        mc_mean = w @ x
        mc_cov = (x - mc_mean).T @ ((x - mc_mean) * w[:, None])
        mu = np.asarray(post.weights @ post.means)
        cov = sum(float(p) * (np.asarray(c) + np.outer(m - mu, m - mu))
                  for p, m, c in zip(post.weights, np.asarray(post.means), post.covs))
        np.testing.assert_allclose(mc_mean, mu, atol=0.01)
        np.testing.assert_allclose(mc_cov, cov, atol=0.01)
        np.testing.assert_allclose([w[labels == k].sum() for k in range(3)], post.weights, atol=0.005)
        assert float(log_z) == pytest.approx(float(jax.nn.logsumexp(log_lik) - np.log(len(w))), abs=0.01)


def test_pigdm_is_the_exact_posterior_score_for_a_unit_gaussian_prior():
    """For an N(mu, I) prior, x0 | x_t is N(D, r_t^2 I) exactly, so PiGDM's score is the exact score
    of the diffused posterior (C.0): checked against that mixture's own score."""
    sde = VPSDE()
    with x64():
        d = 4
        prior = GaussianMixture(jnp.ones(1), jnp.asarray([[0.3, -0.2, 0.5, 1.0]]), jnp.eye(d)[None])
        op = inverse.matrix(jnp.asarray(np.random.default_rng(3).normal(size=(2, d))))
        y, sy = jnp.array([[0.4, -1.1]]), 0.3
        post, _ = inverse.mixture_posterior(prior, inverse.dense(op), y[0], sy)
        x = jnp.asarray(np.random.default_rng(4).normal(size=(6, d)))
        t = jnp.linspace(0.05, 0.95, 6)
        got = inverse.pigdm_score(sde, prior.score_fn(sde), op, jnp.repeat(y, 6, 0), sy)(x, t)
        np.testing.assert_allclose(got, post.score_fn(sde)(x, t), rtol=1e-9, atol=1e-9)


def test_dps_step_moves_along_the_residual_gradient():
    """For an N(mu, I) prior D(x_t) = r_t^2 (mu + a x_t / sigma^2), so grad_x ||y - A D|| =
    -(a r^2 / sigma^2) A^T r / ||r||: DPS's update is the wrapped step's plus scale times that."""
    sde = VPSDE()
    with x64():
        prior = GaussianMixture(jnp.ones(1), jnp.asarray([[0.3, -0.2, 0.5]]), jnp.eye(3)[None])
        A = jnp.asarray([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])
        op, y = inverse.matrix(A), jnp.array([[0.5, 0.2]] * 4)
        x = jnp.asarray(np.random.default_rng(5).normal(size=(4, 3)))
        t, t_next = jnp.full((4,), 0.6), jnp.full((4,), 0.5)
        score = prior.score_fn(sde)
        keys = jax.random.split(jax.random.PRNGKey(0), 4)
        base, _ = ddim(sde).update(keys, x, (), t, t_next, score)
        moved, _ = inverse.dps(ddim(sde), op, y, scale=0.7).update(keys, x, (), t, t_next, score)
        a, s = sde.marginal_coeffs(t)
        r2 = s ** 2 / (a ** 2 + s ** 2)
        D = r2[:, None] * (prior.means[0] + a[:, None] * x / s[:, None] ** 2)
        r = y - D @ A.T
        grad = -(a * r2 / s ** 2)[:, None] * (r @ A) / jnp.linalg.norm(r, axis=1, keepdims=True)
        np.testing.assert_allclose(moved, base - 0.7 * grad, rtol=1e-9, atol=1e-12)


def test_ddnm_is_exact_in_the_range_and_its_ddim_form_samples_the_null_space():
    """Isotropic prior N(0, c^2 I), a mask, noiseless y: the final samples equal y on the observed
    coordinates; with the DDIM-eta form the unobserved ones have the prior's variance c^2 (the exact
    posterior), while the paper's re-noising form shrinks it (a bias of the method, measured)."""
    sde, c2 = VPSDE(), 0.5
    with x64():
        prior = GaussianMixture(jnp.ones(1), jnp.zeros((1, 4)), c2 * jnp.eye(4)[None])
        op = inverse.inpainting(jnp.array([1.0, 1.0, 0.0, 0.0]))
        y = jnp.tile(jnp.array([[0.8, -0.4, 0.0, 0.0]]), (4000, 1))
        key = jax.random.PRNGKey(2)
        x_T = prior_sample(sde, key, (4000, 4), jnp.float64)
        ts = uniform_timesteps(sde, 200, 1e-4, dtype=jnp.float64)
        var = {}
        for form in ("ddim", "ddnm"):
            x = sample(inverse.ddnm(sde, op, y, eta=0.85, form=form), prior.score_fn(sde), key, x_T, ts).x
            np.testing.assert_allclose(np.asarray(x[:, :2]), np.asarray(y[:, :2]), atol=1e-12)
            var[form] = np.var(np.asarray(x[:, 2:]), axis=0)
    assert np.all(np.abs(var["ddim"] / c2 - 1) < 0.1), var   # 4000 samples: standard error 2.2 %
    assert np.all(var["ddnm"] < 0.85 * c2), var


def test_twisted_smc_estimates_the_evidence_and_converges_to_the_posterior():
    """A 2-D mixture with its exact score, one noisy linear measurement: the evidence estimate is
    close to the closed form log p(y), and the weighted posterior mean's error falls as the
    particles grow (64 -> 1024), reaching the Monte-Carlo scale of 1024 particles."""
    sde = VPSDE()
    with x64():
        gm = mixture(2, seed=1)
        op = inverse.matrix(jnp.asarray([[1.0, -0.6]]))
        y, sy = jnp.array([[0.3]]), 0.25
        post, log_z = inverse.mixture_posterior(gm, inverse.dense(op), y[0], sy)
        mean = np.asarray(post.weights @ post.means)
        ts = log_snr_timesteps(sde, 100, 1e-3, dtype=jnp.float64)
        errors, log_zs = {}, []
        for k in (64, 1024):
            errs = []
            for seed in range(3):
                r = inverse.twisted_smc(sde, gm.score_fn(sde), jax.random.PRNGKey(seed), op, y, sy, ts, k)
                w = np.exp(np.asarray(r.log_weights))
                errs.append(np.linalg.norm(w @ np.asarray(r.x) - mean))
                if k == 1024:
                    log_zs.append(float(r.log_evidence))
            errors[k] = float(np.mean(errs))
    assert abs(np.mean(log_zs) - float(log_z)) < 0.05, (log_zs, float(log_z))
    assert errors[1024] < 0.05 and errors[1024] < errors[64], errors


def test_red_diff_regulariser_gradient_has_its_closed_form_mean():
    """For an N(m, S) prior with the exact score, E_eps[eps^ - eps] = a sigma (a^2 S + sigma^2 I)^{-1}
    (mu - m) (C.5): the mean of RED-diff's gradient over 20000 draws matches it to 4 standard errors;
    and a run ends between the pseudo-inverse start and the prior mean in the null space."""
    sde = VPSDE()
    with x64():
        S_ = np.array([[0.5, 0.2], [0.2, 0.3]])
        m = np.array([0.4, -0.3])
        prior = GaussianMixture(jnp.ones(1), jnp.asarray(m[None]), jnp.asarray(S_[None]))
        op = inverse.matrix(jnp.asarray([[1.0, 0.0]]))
        mu = jnp.tile(jnp.array([[1.0, 1.0]]), (20000, 1))
        y = jnp.tile(jnp.array([[1.0]]), (20000, 1))
        t = jnp.full((20000,), 0.4)
        eps = jax.random.normal(jax.random.PRNGKey(0), mu.shape, jnp.float64)
        g = inverse._red_diff_grad(sde, prior.score_fn(sde), op, y, mu, t, eps, 1.0, 0.0)  # regulariser only
        a, s = (float(v[0]) for v in sde.marginal_coeffs(t))
        want = (s / a) * a * s * np.linalg.solve(a * a * S_ + s * s * np.eye(2), np.array([1.0, 1.0]) - m) / 2
        got, se = np.asarray(g).mean(0), np.asarray(g).std(0) / np.sqrt(20000)
        assert np.all(np.abs(got - want) < 4 * se + 1e-12), (got, want, se)
        out = inverse.red_diff(sde, prior.score_fn(sde), jax.random.PRNGKey(1), op, y[:4],
                               jnp.linspace(1.0, 1e-3, 100, dtype=jnp.float64))
    assert np.all(np.isfinite(np.asarray(out))) and out.shape == (4, 2)
    assert float(jnp.mean(jnp.abs(out[:, 0] - 1.0))) < 0.2   # the measured coordinate stays near y


def test_red_diff_and_twisted_smc_take_a_plain_function_as_the_score():
    """A score given as a plain closure (what ``samplers.sample`` accepts) works here too, compiled once
    per function and shapes (it raised a TypeError: the compile took the closure for an array)."""
    sde = VPSDE()
    prior = GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-1.0, 0.0], [1.0, 0.0]]), jnp.stack([0.1 * jnp.eye(2)] * 2))
    op = inverse.inpainting(jnp.array([1.0, 0.0]))
    y = jnp.array([[0.9, 0.0]])

    def score(x, t):
        return prior.score(x, sde, t)

    ts = uniform_timesteps(sde, 20)
    mu = inverse.red_diff(sde, score, jax.random.PRNGKey(0), op, jnp.repeat(y, 4, 0), ts)
    ref = inverse.red_diff(sde, prior.score_fn(sde), jax.random.PRNGKey(0), op, jnp.repeat(y, 4, 0), ts)
    np.testing.assert_allclose(np.asarray(mu), np.asarray(ref), rtol=1e-5, atol=1e-6)
    out = inverse.twisted_smc(sde, score, jax.random.PRNGKey(1), op, y, 0.05, ts, 16)
    assert out.x.shape == (16, 2) and np.all(np.isfinite(np.asarray(out.x)))


def test_red_diff_and_twisted_smc_follow_the_non_finite_rule():
    """NaN from the score: one NonFiniteError outside a jit, naming red_diff's first bad time;
    check_finite=False returns the values."""
    from diffjax.results import NonFiniteError

    sde = VPSDE()
    op = inverse.inpainting(jnp.array([1.0, 0.0]))
    y = jnp.array([[0.9, 0.0]])

    def nan_score(x, t):
        return jnp.where(t[:, None] < 0.5, jnp.nan, -x)

    ts = uniform_timesteps(sde, 10)
    with pytest.raises(NonFiniteError, match=r"red_diff: 4 of 4 examples became NaN or Inf, the first at time 6 \(t 0.4"):
        inverse.red_diff(sde, nan_score, jax.random.PRNGKey(0), op, jnp.repeat(y, 4, 0), ts)
    assert np.all(np.isnan(np.asarray(inverse.red_diff(sde, nan_score, jax.random.PRNGKey(0), op, jnp.repeat(y, 4, 0),
                                                      ts, check_finite=False))))
    with pytest.raises(NonFiniteError, match="twisted_smc: 8 of 8 particles"):
        inverse.twisted_smc(sde, nan_score, jax.random.PRNGKey(1), op, y, 0.05, ts, 8)


def test_project_keeps_the_measured_range_and_samples_the_rest_from_the_prior():
    """The seed paper's replacement for a mask on a prior with independent coordinates: the measured
    coordinate ends at y (noiseless, up to the final noise level sigma(t_end) ~ 0.01), and the other
    one is untouched by the measurement, so it follows its prior marginal N(mu_1, v_1) (4 standard
    errors on the mean, 10 % on the variance, n = 4000)."""
    sde = VPSDE()
    mu, v = jnp.array([0.3, -0.8]), jnp.array([0.5, 0.2])
    prior = GaussianMixture(jnp.array([1.0]), mu[None], jnp.diag(v)[None])
    op = inverse.inpainting(jnp.array([1.0, 0.0]))
    n = 4000
    y = jnp.tile(jnp.array([[0.7, 0.0]]), (n, 1))
    from diffjax.samplers import euler_maruyama

    x = sample(inverse.project(euler_maruyama(sde), op, y), prior.score_fn(sde), jax.random.PRNGKey(3),
               prior_sample(sde, jax.random.PRNGKey(4), (n, 2)), uniform_timesteps(sde, 200)).x
    x = np.asarray(x, np.float64)
    assert np.max(np.abs(x[:, 0] - 0.7)) < 0.06  # 6 sigma(t_end) ~ 0.01: measured 0.041 over 4000
    assert abs(x[:, 1].mean() - float(mu[1])) < 4 * np.sqrt(float(v[1]) / n)
    assert abs(x[:, 1].var() / float(v[1]) - 1) < 0.1
