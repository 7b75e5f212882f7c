"""The Itô density estimator, the probability-flow density and superposition (SuperDiff OR / AND),
checked against the exact log-densities of Gaussian mixtures (methods.md section 1.7)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import GaussianMixture, VPSDE, samplers
from diffjax.superposition import mixture_score, superposition_sample

SDE = VPSDE()
EPS = 1e-3
N_PATHS = 4000


def _pair():
    """The "up" and "down" mixtures: weights (1/2, 1/2), means (±1.5, ±1.5), covariance 0.16 I."""
    cov = jnp.stack([0.16 * jnp.eye(2)] * 2)
    up = GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-1.5, 1.5], [1.5, 1.5]]), cov)
    down = GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-1.5, -1.5], [1.5, -1.5]]), cov)
    return up, down


def _start(n=N_PATHS):
    x = samplers.prior_sample(SDE, jax.random.PRNGKey(0), (n, 2))
    return x, jnp.full((n,), SDE.T)


def _grid(n_steps):
    return jnp.linspace(SDE.T, EPS, n_steps + 1)


def _ito_errors(gm, n_steps, step="euler_maruyama", form="euler", n=N_PATHS, control=None, secant=None):
    """Estimated minus exact log q_eps at the end of each reverse-SDE path (started at the exact log q_T)."""
    x0, t0 = _start(n)
    res = samplers.sample_with_log_density(
                                           samplers.get_step(step, SDE), gm.score_fn(SDE), jax.random.PRNGKey(1), x0, _grid(n_steps), form=form,
                                           control=control, secant=secant, log_q_init=gm.log_prob(x0, SDE, t0))
    x, log_q, nfe = res.x, res.logp, res.nfe
    assert int(nfe[0]) == n_steps  # the estimator reuses the step's score: no extra evaluation
    return np.asarray(log_q - gm.log_prob(x, SDE, jnp.full((n,), EPS)), np.float64)


def test_ito_estimator_bias_falls_like_1_over_n_and_spread_like_n_to_minus_half():
    up, _ = _pair()
    coarse, fine = _ito_errors(up, 100), _ito_errors(up, 1000)
    # O1.2: mean +0.457 / +0.036, sd 1.32 / 0.385 (N = 100 / 1000); the mean's MC error is sd / sqrt(n)
    assert abs(fine.mean()) < 0.1 and 0.3 < fine.std() < 0.5, (fine.mean(), fine.std())
    assert 0.3 < coarse.mean() < 0.6, coarse.mean()
    assert 5 < coarse.mean() / fine.mean() < 20                  # bias ~ 1/N: x10 steps -> /10
    assert 2.5 < coarse.std() / fine.std() < 4.2                 # spread ~ N^-1/2: sqrt(10) = 3.16


@pytest.mark.parametrize("step,form", [("reverse_diffusion", "kernel"),
                                       pytest.param("reverse_diffusion", "euler", marks=pytest.mark.slow),
                                       ("euler_maruyama", "kernel")])
def test_ito_estimator_forms_and_steps(step, form):
    up, _ = _pair()
    err = _ito_errors(up, 1000, step, form)
    assert abs(err.mean()) < 0.1 and 0.3 < err.std() < 0.5, (err.mean(), err.std())


@pytest.mark.slow
def test_ito_estimator_at_ten_thousand_steps():
    up, _ = _pair()
    err = _ito_errors(up, 10_000, n=2000)
    # O1.2: mean +0.0013, sd 0.124 at N = 10000
    assert abs(err.mean()) < 0.02 and 0.09 < err.std() < 0.16, (err.mean(), err.std())


def test_gaussian_control_removes_most_of_the_ito_spread():
    """track_log_density(..., control=fit): the second-order term with the fitted Gaussian's Hessian.
    For Gaussian data (one component) the fit is the data's law and the per-path error nearly
    vanishes; for the "up" mixture it removes most of the spread, at the same evaluations (measured:
    rms 0.395 -> 0.005 and 0.393 -> 0.087 nats, the bias within 0.005 of zero)."""
    gauss = GaussianMixture(jnp.array([1.0]), jnp.array([[0.5, -0.3]]), jnp.array([[[0.3, 0.1], [0.1, 0.2]]]))
    for gm, most in ((gauss, 0.1), (_pair()[0], 0.5)):
        fit = samplers.fit_gaussian(gm.sample(jax.random.PRNGKey(5), 100_000))
        plain = _ito_errors(gm, 1000, n=2000)
        ctl = _ito_errors(gm, 1000, n=2000, control=fit)
        rms = lambda e: float(np.sqrt(np.mean(e**2)))  # noqa: E731
        print(f"{gm.num_components} component(s): rms {rms(plain):.3f} -> {rms(ctl):.3f}, "
              f"bias {plain.mean():+.3f} -> {ctl.mean():+.3f}")
        assert rms(ctl) < most * rms(plain), (rms(ctl), rms(plain))
        assert abs(ctl.mean()) < 0.05
    with pytest.raises(ValueError, match="corrects the 'euler' form"):
        samplers.track_log_density(samplers.get_step("euler_maruyama", SDE), "kernel", fit)
    with pytest.raises(TypeError, match="control must be a GaussianFit"):
        samplers.track_log_density(samplers.get_step("euler_maruyama", SDE), "euler", (0.0, 1.0))


def test_secant_hessian_from_the_paths_own_scores_cuts_the_ito_spread():
    """secant=0.7: the score's Jacobian estimated from the path's own secant pairs (no fit, no extra
    evaluation) in the second-order term; with a fit, on top of the Gaussian's Hessian. The samples
    are those of the plain step; the per-path error falls well below the plain estimator's."""
    up, _ = _pair()
    fit = samplers.fit_gaussian(up.sample(jax.random.PRNGKey(5), 100_000))
    rms = lambda e: float(np.sqrt(np.mean(e**2)))  # noqa: E731
    plain = _ito_errors(up, 1000, n=2000)
    secant = _ito_errors(up, 1000, n=2000, secant=0.7)
    both = _ito_errors(up, 1000, n=2000, control=fit, secant=0.7)
    print(f"rms plain {rms(plain):.3f}, secant {rms(secant):.3f}, secant + Gaussian {rms(both):.3f}; bias "
          f"{plain.mean():+.3f} {secant.mean():+.3f} {both.mean():+.3f}")
    assert rms(secant) < 0.2 * rms(plain) and rms(both) < 0.2 * rms(plain)  # measured 0.08x, 0.05x
    assert abs(secant.mean()) < 0.05 and abs(both.mean()) < 0.05
    step = samplers.get_step("euler_maruyama", SDE)
    x0, _ = _start(64)
    a = samplers.sample_with_log_density(step, up.score_fn(SDE), jax.random.PRNGKey(1), x0, _grid(50))
    b = samplers.sample_with_log_density(step, up.score_fn(SDE), jax.random.PRNGKey(1), x0, _grid(50), secant=0.7)
    np.testing.assert_array_equal(np.asarray(a.x), np.asarray(b.x))
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        samplers.track_log_density(step, secant=1.5)
    with pytest.raises(ValueError, match="secant Hessian corrects the 'euler' form"):
        samplers.track_log_density(step, "kernel", secant=0.7)


def test_tracking_leaves_the_samples_unchanged():
    up, _ = _pair()
    x0, _ = _start(64)
    step = samplers.dpmpp_2m_sde(SDE)
    tracked = samplers.sample_with_log_density(step, up.score_fn(SDE), jax.random.PRNGKey(3), x0, _grid(20)).x
    plain = samplers.sample(step, up.score_fn(SDE), jax.random.PRNGKey(3), x0, _grid(20), denoise=False).x
    np.testing.assert_array_equal(np.asarray(tracked), np.asarray(plain))


@pytest.mark.parametrize("step", [
    samplers.langevin(SDE), samplers.get_step("pc", SDE), samplers.ddim(SDE, eta=0.5), samplers.ddim(SDE),
    samplers.ode_heun(SDE), samplers.euler_maruyama(SDE, epsilon=0.5), samplers.dpmpp_3m_sde(SDE, eta=0.5),
], ids=lambda s: s.name)
def test_steps_without_the_forward_noise_are_refused(step):
    with pytest.raises(ValueError, match="Itô density estimator is wrong|correctors or several"):
        samplers.track_log_density(step)


def test_steps_with_the_forward_noise_are_accepted():
    for step in (samplers.ddim(SDE, eta=1.0), samplers.ancestral_sampling(SDE), samplers.dpmpp_3m_sde(SDE),
                 samplers.reverse_diffusion(SDE), samplers.euler_maruyama(SDE)):
        assert step.forward_noise
        samplers.track_log_density(step, "kernel")
    with pytest.raises(ValueError, match="density form"):
        samplers.track_log_density(samplers.euler_maruyama(SDE), "midpoint")


def _pf_errors(gm, n_steps, divergence="exact", n=200):
    x0, t0 = _start(n)
    res = samplers.sample_with_log_density(
                                           samplers.probability_flow_density(SDE, divergence=divergence), gm.score_fn(SDE), jax.random.PRNGKey(2), x0,
                                           _grid(n_steps), log_q_init=gm.log_prob(x0, SDE, t0))
    x, log_q, nfe = res.x, res.logp, res.nfe
    assert int(nfe[0]) == 2 * n_steps
    return np.asarray(log_q - gm.log_prob(x, SDE, jnp.full((n,), EPS)), np.float64)


def test_probability_flow_density_is_second_order_and_exact_in_the_limit():
    up, _ = _pair()
    e50, e200 = np.abs(_pf_errors(up, 50)).max(), np.abs(_pf_errors(up, 200)).max()
    # O1.3: max |err| 3.2e-2 / 2.1e-3 for N = 50 / 200 (Heun, exact divergence)
    assert e200 < 5e-3 and e50 / e200 > 8, (e50, e200)
    hutch = _pf_errors(up, 200, "rademacher", n=400)
    assert abs(hutch.mean()) < 4 * hutch.std() / np.sqrt(hutch.size) + 5e-3  # unbiased up to the solver error


# ----------------------------------------------------------------------------------------------
# superposition


def test_mixture_score_identity():
    """O1.1: Σ softmax(log q_i + log w_i) s_i is the score of the mixture of all components."""
    up, down = _pair()
    combined = GaussianMixture(jnp.concatenate([0.7 * up.weights, 0.3 * down.weights]),
                               jnp.concatenate([up.means, down.means]), jnp.concatenate([up.covs, down.covs]))
    score = mixture_score([up.score_fn(SDE), down.score_fn(SDE)],
                          [lambda x, t: up.log_prob(x, SDE, t), lambda x, t: down.log_prob(x, SDE, t)],
                          weights=[0.7, 0.3])
    x = 2.5 * jax.random.normal(jax.random.PRNGKey(4), (256, 2))
    for t in (0.01, 0.3, 0.9):
        tb = jnp.full((256,), t)
        np.testing.assert_allclose(np.asarray(jax.jit(score)(x, tb)), np.asarray(combined.score(x, SDE, tb)),
                                   rtol=1e-4, atol=1e-5)


def _superpose(mode, n=N_PATHS, n_steps=1000, **kw):
    up, down = _pair()
    x0, t0 = _start(n)
    log_q0 = jnp.stack([up.log_prob(x0, SDE, t0), down.log_prob(x0, SDE, t0)])
    res = superposition_sample(SDE, [up.score_fn(SDE), down.score_fn(SDE)], jax.random.PRNGKey(1),
                               x0, _grid(n_steps), mode=mode, log_q_init=log_q0, denoise=False, **kw)
    x, log_q, nfe = res.x, res.logp, res.nfe
    return up, down, np.asarray(x), log_q0, log_q, int(nfe[0])


@pytest.mark.parametrize("weights,expected", [(None, 0.5), ([0.7, 0.3], 0.7)])
def test_or_samples_the_mixture_in_the_right_proportions(weights, expected):
    _, _, x, _, _, nfe = _superpose("or", weights=weights)
    tol = 3 * np.sqrt(expected * (1 - expected) / len(x))       # O1.4: 0.505 and 0.694 measured
    assert abs(np.mean(x[:, 1] > 0) - expected) < tol
    assert abs(np.mean(np.abs(x[:, 0])) - 1.5) < 0.03 and nfe == 2000


def test_and_samples_the_equal_density_set():
    up, down, x, log_q0, log_q, _ = _superpose("and")
    # O1.5: the set where q_up = q_down is y = 0, at x = ±1.5
    assert np.mean(np.abs(x[:, 1])) < 0.01 and abs(np.mean(np.abs(x[:, 0])) - 1.5) < 0.03
    te = jnp.full((len(x),), EPS)
    exact_gap = np.asarray(up.log_prob(jnp.asarray(x), SDE, te) - down.log_prob(jnp.asarray(x), SDE, te))
    assert np.median(np.abs(exact_gap - np.asarray(log_q0[0] - log_q0[1]))) < 1e-2        # O1.5b
    drift = np.abs(np.asarray((log_q[0] - log_q[1]) - (log_q0[0] - log_q0[1])))
    assert drift.max() < 1e-3                                                             # O1.6 (float32)


@pytest.mark.parametrize("mode", [pytest.param("or", marks=pytest.mark.slow), "and"])
def test_superposition_on_the_probability_flow(mode):
    up, down, x, _, log_q, nfe = _superpose(mode, n=1000, n_steps=200, ode=True, divergence="exact")
    assert nfe == 800
    if mode == "or":
        assert abs(np.mean(x[:, 1] > 0) - 0.5) < 3 * np.sqrt(0.25 / len(x))
    else:
        assert np.mean(np.abs(x[:, 1])) < 0.01
    # the tracked log-densities are the models' own (Prop. 5 along the combined path)
    te = jnp.full((len(x),), EPS)
    for i, gm in enumerate((up, down)):
        err = np.asarray(log_q[i] - gm.log_prob(jnp.asarray(x), SDE, te))
        assert np.median(np.abs(err)) < 0.02, (mode, i, np.median(np.abs(err)))


def test_and_with_three_models_keeps_equal_increments():
    up, down = _pair()
    right = GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[1.5, 1.5], [1.5, -1.5]]), up.covs)
    x0, t0 = _start(512)
    fns = [up.score_fn(SDE), down.score_fn(SDE), right.score_fn(SDE)]
    log_q0 = jnp.stack([g.log_prob(x0, SDE, t0) for g in (up, down, right)])
    res = superposition_sample(SDE, fns, jax.random.PRNGKey(5), x0, _grid(400), mode="and",
                               log_q_init=log_q0, denoise=False)
    x, log_q, kappa = res.x, res.logp, res.kappa
    inc = np.asarray(log_q - log_q0)
    assert np.max(np.abs(inc - inc[:1])) < 1e-3
    np.testing.assert_allclose(np.asarray(kappa).sum(0), 1.0, atol=1e-4)
    # q_up = q_down on y = 0 and q_up = q_right on y = x (equidistant from (-1.5, 1.5) and (1.5, -1.5)):
    # all three are equal only at the origin
    assert np.max(np.median(np.abs(np.asarray(x)), axis=0)) < 0.05


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="xor"), "unknown superposition mode"),
    (dict(weights=[1.0, -1.0]), "weights must be 2 positive"),
    (dict(weights=[1.0, 2.0, 3.0]), "weights must be 2 positive"),
    (dict(temperature=0.0), "temperature must be a positive"),
    (dict(mode="and", weights=[1.0, 1.0]), "AND takes none"),
    (dict(divergence="trace"), "unknown divergence"),
])
def test_superposition_bad_input(kwargs, match):
    up, down = _pair()
    x0, _ = _start(8)
    with pytest.raises(ValueError, match=match):
        superposition_sample(SDE, [up.score_fn(SDE), down.score_fn(SDE)], jax.random.PRNGKey(0), x0, _grid(4), **kwargs)
    with pytest.raises(TypeError, match="at least two score functions"):
        superposition_sample(SDE, [up.score_fn(SDE)], jax.random.PRNGKey(0), x0, _grid(4))


def test_float64_paths_keep_float64_and_and_is_exact_to_rounding():
    from helpers import x64

    with x64():
        up, down = (GaussianMixture(g.weights.astype(jnp.float64), g.means.astype(jnp.float64),
                                    g.covs.astype(jnp.float64)) for g in _pair())
        n = 2000
        x0 = samplers.prior_sample(SDE, jax.random.PRNGKey(0), (n, 2), jnp.float64)
        t0 = jnp.full((n,), SDE.T, jnp.float64)
        ts = jnp.linspace(SDE.T, EPS, 401, dtype=jnp.float64)
        res = samplers.sample_with_log_density(samplers.euler_maruyama(SDE), up.score_fn(SDE),
                                               jax.random.PRNGKey(1), x0, ts, log_q_init=up.log_prob(x0, SDE, t0))
        x, log_q = res.x, res.logp
        assert x.dtype == log_q.dtype == jnp.float64
        err = np.asarray(log_q - up.log_prob(x, SDE, jnp.full((n,), EPS, jnp.float64)))
        assert 0.0 < err.mean() < 0.2 and 0.45 < err.std() < 0.75  # N = 400: bias ~0.11, sd ~1.32 / 2
        log_q0 = jnp.stack([up.log_prob(x0, SDE, t0), down.log_prob(x0, SDE, t0)])
        res = superposition_sample(SDE, [up.score_fn(SDE), down.score_fn(SDE)], jax.random.PRNGKey(1), x0,
                                   ts, mode="and", log_q_init=log_q0, denoise=False)
        x, log_q = res.x, res.logp
        assert x.dtype == log_q.dtype == jnp.float64
        # O1.6 in float64: the estimated log-density difference is constant to rounding (8e-14 measured there)
        assert float(jnp.max(jnp.abs((log_q[0] - log_q[1]) - (log_q0[0] - log_q0[1])))) < 1e-10
