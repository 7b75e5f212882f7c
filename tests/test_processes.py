"""Modern processes (issue 16) against closed forms: EDM, cosine VP, rectified flow, one-sided
interpolants, user-defined (a, sigma) processes and PFGM++; the EDM and flow-matching losses; the
parameterisations; the tunable-noise reverse SDE."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import MixtureCheck, mixture_16d, mixture_2d, x64
from scipy import stats

from diffjax import GaussianMixture, VPSDE, likelihood, losses, score
from diffjax import samplers as S
from diffjax import processes as P

GAUSSIAN = {
    "edm": P.EDM(),
    "cosine": P.CosineVP(),
    "rectified_flow": P.RectifiedFlow(),
    "interpolant_brownian": P.OneSidedInterpolant("linear", "brownian", 0.5),
    "interpolant_trig": P.OneSidedInterpolant("trig", "zero"),
}


def _vp_marginal(t):
    b = 0.1 * t + 0.5 * 19.9 * t**2
    return jnp.exp(-0.5 * b), jnp.sqrt(-jnp.expm1(-b))


CUSTOM_VP = P.CustomProcess(_vp_marginal)


def _times(sde, n=9, dtype=jnp.float64):
    return jnp.linspace(sde.t_end, sde.T, n, dtype=dtype)


@pytest.mark.parametrize("name", sorted(GAUSSIAN))
def test_f_and_g2_follow_their_definitions(name):
    """f = d log a/dt and g^2 = d sigma^2/dt - 2 f sigma^2, against central finite differences of the
    marginals (float64), and lambda's inverse round-trips."""
    sde = GAUSSIAN[name]
    with x64():
        t = _times(sde)
        h = 1e-6 * sde.T
        a_p, s_p = sde.marginal_coeffs(t + h)
        a_m, s_m = sde.marginal_coeffs(t - h)
        a, s = sde.marginal_coeffs(t)
        f_fd = (jnp.log(a_p) - jnp.log(a_m)) / (2 * h)
        g2_fd = (s_p**2 - s_m**2) / (2 * h) - 2 * f_fd * s**2
        f, g = sde.drift_diffusion_coeffs(t)
        np.testing.assert_allclose(f, f_fd, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(g**2, g2_fd, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(sde.t_from_log_snr(sde.log_snr(t)), t, rtol=1e-9, atol=1e-12)
        # the importance weight g^2/sigma^2 integrates to -2 lambda
        lo, hi = sde._weight_antiderivative(t[0]), sde._weight_antiderivative(t[-1])
        grid = sde.t_from_log_snr(jnp.linspace(sde.log_snr(t[0]), sde.log_snr(t[-1]), 20001))  # dense at both ends
        w = sde.likelihood_weight(grid)
        integral = float(jnp.sum(0.5 * (w[1:] + w[:-1]) * jnp.diff(grid)))
        assert abs(integral - float(hi - lo)) < 1e-4 * abs(float(hi - lo)) + 1e-6


def test_closed_forms_of_the_new_processes():
    with x64():
        t = jnp.array([0.1, 0.5, 0.9], jnp.float64)
        a, s = P.RectifiedFlow().marginal_coeffs(t)
        np.testing.assert_allclose(a, 1 - t), np.testing.assert_allclose(s, t)
        # cosine: alpha_bar(t) = cos^2((t+s)/(1+s) pi/2) / cos^2(s/(1+s) pi/2), VP (a^2 + sigma^2 = 1)
        cs = P.CosineVP()
        a, s = cs.marginal_coeffs(t)
        ab = np.cos((np.asarray(t) + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
        np.testing.assert_allclose(a**2, ab, rtol=1e-12)
        np.testing.assert_allclose(a**2 + s**2, 1.0, rtol=1e-12)
        betas = np.asarray(cs.discrete_betas)
        assert betas.max() <= 0.999 + 1e-9 and betas[0] > 0
        # the trig interpolant without gamma is the cosine schedule without offset
        a, s = P.OneSidedInterpolant("trig", "zero").marginal_coeffs(t)
        np.testing.assert_allclose(a, np.cos(np.pi * t / 2)), np.testing.assert_allclose(s, np.sin(np.pi * t / 2))
        # a user-given VP marginal reproduces VPSDE's coefficients
        vp = VPSDE()
        for got, want in zip(CUSTOM_VP.drift_diffusion_coeffs(t), vp.drift_diffusion_coeffs(t)):
            np.testing.assert_allclose(got, want, rtol=1e-10)
        np.testing.assert_allclose(CUSTOM_VP.t_from_log_snr(vp.log_snr(t)), t, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(GAUSSIAN))
def test_forward_marginal_of_a_mixture_is_the_closed_form(name):
    """Perturbing exact mixture samples (sde.perturb) gives the mixture a mu_k, a^2 Sigma_k + sigma^2 I:
    mean and covariance within Monte-Carlo error, at three times."""
    sde, gm = GAUSSIAN[name], mixture_2d()
    n = 40000
    x0 = gm.sample(jax.random.PRNGKey(0), n)
    for i, frac in enumerate((0.05, 0.4, 0.9)):
        t = sde.t_end + frac * (sde.T - sde.t_end)
        xt = np.asarray(sde.perturb(jax.random.PRNGKey(i + 1), x0, jnp.full((n,), t)), np.float64)
        exact = gm.marginal(sde, t)
        mu = np.asarray(exact.weights @ exact.means, np.float64)
        cov = np.cov(np.asarray(exact.sample(jax.random.PRNGKey(99), n), np.float64).T)
        se = np.sqrt(np.diag(cov) / n)
        assert np.all(np.abs(xt.mean(0) - mu) < 5 * se), (name, t)
        np.testing.assert_allclose(np.cov(xt.T), cov, atol=0.05 * np.abs(cov).max())


SAMPLE_CASES = [
    # (process, step name, options, grid, steps): the PF-ODE and the reverse SDE
    ("edm", "dpmpp_2m", {}, "karras", 100),
    ("edm", "euler_maruyama", {}, "karras", 1000),
    ("cosine", "dpmpp_2m", {}, "log_snr", 100),
    ("cosine", "euler_maruyama", {}, "uniform", 1000),
    ("rectified_flow", "ode_heun", {}, "uniform", 100),
    ("rectified_flow", "euler_maruyama", {"epsilon": 0.5}, "uniform", 1000),
    ("interpolant_brownian", "dpmpp_2m", {}, "log_snr", 100),
    ("interpolant_brownian", "euler_maruyama", {"epsilon": 0.5}, "uniform", 1000),
    ("interpolant_trig", "ode_heun", {}, "uniform", 100),
]

_CHECKS = {}


def _checker(dim, n):
    if (dim, n) not in _CHECKS:
        _CHECKS[dim, n] = MixtureCheck(mixture_2d() if dim == 2 else mixture_16d(), n)
    return _CHECKS[dim, n]


# 16-D by default for one ODE and one SDE case, 2-D for all but two; every case under -m slow
_DEFAULT_16D = (("edm", "dpmpp_2m"), ("rectified_flow", "euler_maruyama"))
_SLOW_2D = (("cosine", "euler_maruyama"), ("interpolant_trig", "ode_heun"))
SAMPLE_PARAMS = [pytest.param(case, dim, id=f"{case[0]}-{case[1]}-{dim}",
                              marks=pytest.mark.slow if (dim == 16 and case[:2] not in _DEFAULT_16D)
                              or (dim == 2 and case[:2] in _SLOW_2D) else ())
                 for dim in (2, 16) for case in SAMPLE_CASES]


@pytest.mark.parametrize("case,dim", SAMPLE_PARAMS)
def test_sde_and_ode_reproduce_the_mixture(case, dim):
    """The reverse SDE and the probability-flow ODE with the exact mixture score reproduce the mixture
    (weights, mean, covariance and MMD within their Monte-Carlo floors) in 2-D and 16-D."""
    name, step_name, opts, grid, steps = case
    sde = GAUSSIAN[name]
    n = 2000
    gm = mixture_2d() if dim == 2 else mixture_16d()
    key = jax.random.PRNGKey(3)
    x = S.sample(S.get_step(step_name, sde, **opts), gm.score_fn(sde), key, S.prior_sample(sde, key, (n, dim)),
                 S.TIME_GRIDS[grid](sde, steps)).x
    _checker(dim, n).check(x, f"{name}/{step_name}/{dim}-D")


def test_custom_process_samples_like_vpsde():
    """A process given only by VP's (a, sigma) samples as VPSDE does (same keys, 1e-4)."""
    gm, key = mixture_2d(), jax.random.PRNGKey(0)
    out = []
    for sde in (VPSDE(), CUSTOM_VP):
        x0 = S.prior_sample(sde, key, (256, 2))
        x = S.sample(S.euler_maruyama(sde), gm.score_fn(sde), key, x0, S.uniform_timesteps(sde, 200)).x
        out.append(np.asarray(x))
    np.testing.assert_allclose(out[0], out[1], atol=1e-3)


def test_ddim_on_the_linear_interpolant_is_the_flow_matching_euler_step():
    """O5.2: DDIM (eta = 0) on a = 1 - t, sigma = t equals Euler on the flow-matching ODE with
    u = (x - D) / t, step for step, and ode_euler (f x - g^2 s / 2) is the same step."""
    with x64():
        sde, gm = P.RectifiedFlow(), mixture_2d()
        x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 2)))
        score_fn = gm.score_fn(sde)
        for t, tn in ((0.9, 0.7), (0.5, 0.45), (0.1, 0.02)):
            tb, tnb = jnp.full((64,), t), jnp.full((64,), tn)
            d = S.tweedie_denoise(sde, score_fn, x, tb)
            fm = x + (tn - t) * (x - d) / t
            keys = S.example_keys(jax.random.PRNGKey(0), 64)
            ddim, _ = S.ddim(sde).update(keys, x, (), tb, tnb, score_fn)
            euler, _ = S.ode_euler(sde).update(keys, x, (), tb, tnb, score_fn)
            np.testing.assert_allclose(ddim, fm, atol=1e-10)
            np.testing.assert_allclose(euler, fm, atol=1e-10)


def test_interpolant_velocity_is_the_probability_flow_velocity():
    """O5.1: the interpolant's drift b = (beta'/beta) x + (beta' sigma^2/beta - sigma sigma') s (interpolant
    time s = 1 - t, derivatives by hand for alpha = 1 - s, beta = s, gamma^2 = c s (1 - s)) equals minus
    the probability-flow velocity f x - g^2 s / 2 in diffusion time, and the "velocity" prediction."""
    with x64():
        c = 0.5
        sde, gm = P.OneSidedInterpolant("linear", "brownian", c), mixture_2d()
        x = jnp.asarray(np.random.default_rng(1).normal(size=(32, 2)))
        for t in (0.2, 0.5, 0.8):
            tb = jnp.full((32,), t)
            sc = gm.score(x, sde, tb)
            si = 1.0 - t
            beta, dbeta = si, 1.0
            sig2 = (1 - si) ** 2 + c * si * (1 - si)
            dsig2 = -2 * (1 - si) + c * (1 - 2 * si)  # d sigma^2 / ds
            b = (dbeta / beta) * x + (dbeta * sig2 / beta - 0.5 * dsig2) * sc
            pf = P.probability_flow_drift(sde, gm.score_fn(sde), x, tb)
            np.testing.assert_allclose(b, -pf, rtol=1e-9, atol=1e-9)
            a, s = sde.marginal_coeffs(tb)
            u = score.score_to_output(sc, x, a, s, "velocity", sde=sde, t=tb)
            np.testing.assert_allclose(u, pf, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("epsilon", [0.0, "t", 0.5])
def test_tunable_noise_sde_keeps_the_marginals(epsilon):
    """O5.3: rectified flow (the one-sided linear interpolant), Euler–Maruyama with noise level
    eps in {0, t, 0.5} (eps = 1 - s in interpolant time is t here), 500 steps, n = 2e4: the data
    covariance within 0.1 and mean within 0.05, half the mass in each mode."""
    gm = GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-1.5, 1.5], [1.5, -1.5]]),
                         jnp.stack([0.16 * jnp.eye(2)] * 2))
    sde = P.RectifiedFlow()
    eps = (lambda t: t) if epsilon == "t" else epsilon
    key = jax.random.PRNGKey(5)
    n = 20000
    x = S.sample(S.euler_maruyama(sde, epsilon=eps), gm.score_fn(sde), key, S.prior_sample(sde, key, (n, 2)),
                 S.uniform_timesteps(sde, 500)).x
    x = np.asarray(x, np.float64)
    np.testing.assert_allclose(np.cov(x.T), [[2.41, -2.25], [-2.25, 2.41]], atol=0.1)
    assert np.all(np.abs(x.mean(0)) < 0.05)
    assert abs(np.mean(x[:, 0] > 0) - 0.5) < 0.015


def test_reverse_sde_noise_level():
    sde = P.RectifiedFlow()
    t = jnp.array([0.2, 0.9])
    rev = sde.reverse(lambda x, t: -x)
    np.testing.assert_allclose(rev.noise_level(t), 0.5 * sde.drift_diffusion_coeffs(t)[1] ** 2, rtol=1e-6)
    np.testing.assert_allclose(sde.reverse(lambda x, t: -x, epsilon=0.3).noise_level(t), [0.3, 0.3])
    x = jnp.ones((2, 3))
    drift0, g0 = sde.reverse(lambda x, t: -x, epsilon=0.0).sde(x, t)
    pf, _ = sde.reverse(lambda x, t: -x, probability_flow=True).sde(x, t)
    np.testing.assert_allclose(drift0, pf, rtol=1e-6)
    np.testing.assert_allclose(g0, 0.0)
    with pytest.raises(ValueError, match="epsilon must be"):
        S.euler_maruyama(sde, epsilon=-1.0)


# --- parameterisations -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vp", "edm", "rectified_flow", "cosine"])
def test_conversions_between_predictions_are_exact(name):
    """Every prediction converts to every other and back (float64), and matches its definition on the
    exact mixture: eps = -sigma s, x0 = Tweedie's D, velocity = the probability-flow drift."""
    sde = VPSDE() if name == "vp" else GAUSSIAN[name]
    gm = mixture_2d()
    with x64():
        x = jnp.asarray(np.random.default_rng(2).normal(size=(16, 2)))
        t = jnp.linspace(sde.t_end * 10, sde.T * 0.9, 16, dtype=jnp.float64)
        s_true = gm.score(x, sde, t)
        a, sig = sde.marginal_coeffs(t)
        eps = score.convert_prediction(s_true, x, t, sde, "score", "eps")
        np.testing.assert_allclose(eps, -sig[:, None] * s_true, rtol=1e-10)
        x0 = score.convert_prediction(s_true, x, t, sde, "score", "x0")
        np.testing.assert_allclose(x0, (x + sig[:, None] ** 2 * s_true) / a[:, None], rtol=1e-10)
        vel = score.convert_prediction(s_true, x, t, sde, "score", "velocity")
        np.testing.assert_allclose(vel, P.probability_flow_drift(sde, gm.score_fn(sde), x, t), rtol=1e-8, atol=1e-9)
        for src in score.PREDICTIONS:
            value = score.convert_prediction(s_true, x, t, sde, "score", src)
            for dst in score.PREDICTIONS:
                back = score.convert_prediction(score.convert_prediction(value, x, t, sde, src, dst), x, t, sde, dst, "score")
                np.testing.assert_allclose(back, s_true, rtol=1e-7, atol=1e-8, err_msg=f"{src}->{dst}")


def test_edm_preconditioning_wraps_any_network():
    """prediction="edm": the network sees c_in x / a and c_noise = log(sigma_hat)/4 and
    D = c_skip x / a + c_out F, with Karras et al.'s c_skip, c_out, c_in (sigma_data = 0.5)."""
    seen = {}

    def net(params, x, labels):
        seen["x"], seen["labels"] = x, labels
        return params * x + 0.1

    with x64():
        for sde in (P.EDM(), VPSDE()):
            model = score.make_score_model(net, sde, prediction="edm", sigma_data=0.5)
            x = jnp.asarray(np.random.default_rng(3).normal(size=(8, 2)))
            t = jnp.linspace(sde.t_end * 100, sde.T * 0.5, 8, dtype=jnp.float64)
            s_out = model(jnp.float64(0.7), x, t)
            a, sig = sde.marginal_coeffs(t)
            sh = sig / a
            c_skip, c_out, c_in = 0.25 / (sh**2 + 0.25), sh * 0.5 / jnp.sqrt(sh**2 + 0.25), 1 / jnp.sqrt(sh**2 + 0.25)
            np.testing.assert_allclose(seen["x"], (c_in / a)[:, None] * x, rtol=1e-12)
            np.testing.assert_allclose(seen["labels"], 0.25 * np.log(sh), rtol=1e-12)
            f = 0.7 * seen["x"] + 0.1
            d = c_skip[:, None] * x / a[:, None] + c_out[:, None] * f
            np.testing.assert_allclose(s_out, (a[:, None] * d - x) / sig[:, None] ** 2, rtol=1e-10)


# --- losses ------------------------------------------------------------------------------------


def _loss_gap(loss_fn_of, exact_score, n=4096, reps=8):
    """Mean and standard error of L(perturbed) - L(exact) over common random numbers."""
    diffs = []
    for r in range(reps):
        key = jax.random.PRNGKey(100 + r)
        batch = mixture_2d().sample(jax.random.fold_in(key, 1), n)
        l0, _ = loss_fn_of(exact_score)(key, 0.0, batch)
        l1, _ = loss_fn_of(exact_score)(key, 0.05, batch)
        diffs.append(float(l1 - l0))
    diffs = np.asarray(diffs)
    return diffs.mean(), diffs.std(ddof=1) / math.sqrt(reps)


def _perturbed_model(sde, exact):
    h = jnp.array([1.0, -0.5])

    def model(delta, x, t):
        return exact(x, t) + delta * h / expand(sde, t)

    return model


def expand(sde, t):
    # a perturbation of fixed size in the denoiser's units: sigma^2/a scales the score's effect on D
    a, s = sde.marginal_coeffs(t)
    return (s**2 / a)[:, None]


@pytest.mark.parametrize("kind", ["edm-edm", "edm-vp", "fm-rectified_flow", "fm-cosine", "fm-logit-interpolant"])
def test_losses_are_minimised_by_the_exact_field(kind):
    """O5.4: the Monte-Carlo loss at the exact score is below the loss at a perturbed field, beyond its
    standard error (common random numbers)."""
    loss_name, proc = kind.split("-", 1)
    sde = {"edm": P.EDM(), "vp": VPSDE(), "rectified_flow": P.RectifiedFlow(), "cosine": P.CosineVP(),
           "interpolant": GAUSSIAN["interpolant_brownian"]}[proc.replace("logit-", "")]
    exact = mixture_2d().score_fn(sde)
    model = _perturbed_model(sde, exact)
    if loss_name == "edm":
        fn = losses.get_edm_loss_fn(sde, model)
    else:
        fn = losses.get_flow_matching_loss_fn(sde, model, time_sampling="logit_normal" if "logit" in proc else "uniform")
    mean, se = _loss_gap(lambda _: fn, exact)
    assert mean > 4 * se and mean > 0, (kind, mean, se)


def test_flow_matching_loss_at_the_exact_field_is_the_conditional_variance():
    """For one Gaussian N(m, v I) under rectified flow the exact velocity is linear, and the loss at it
    is E_t tr Cov[z - x0 | x_t] = E_t d v / ((1-t)^2 v + t^2): the Monte-Carlo loss matches the quadrature."""
    v, d = 0.3, 2
    gm = GaussianMixture(jnp.array([1.0]), jnp.array([[0.5, -1.0]]), jnp.array([v * np.eye(2)]))
    sde = P.RectifiedFlow()
    fn = losses.get_flow_matching_loss_fn(sde, lambda p, x, t: gm.score(x, sde, t), reduce_mean=False)
    vals = [float(fn(jax.random.PRNGKey(i), None, gm.sample(jax.random.PRNGKey(1000 + i), 8192))[0]) for i in range(6)]
    t = np.linspace(sde.t_end, sde.T, 200001)
    want = 0.5 * np.trapezoid(d * v / ((1 - t) ** 2 * v + t**2), t) / (sde.T - sde.t_end)
    assert abs(np.mean(vals) - want) < 4 * np.std(vals, ddof=1) / math.sqrt(6) + 1e-3, (np.mean(vals), want)


# --- PFGM++ ------------------------------------------------------------------------------------


@pytest.mark.parametrize("D", [4, 128])
def test_pfgmpp_prior_samplers_agree(D):
    """O4.1: the chi^2 and beta-prime samplers draw the same law (KS test on ||n||), with
    E||n||^2 = sigma^2 N D / (D - 2)."""
    n_dim, n = 2, 100000
    norms = {}
    for method in ("chi2", "beta_prime"):
        proc = P.PFGMPP(D=float(D), prior_method=method, sigma_max=1.0, sigma_min=0.002)
        x = np.asarray(proc.prior_sampling(jax.random.PRNGKey(0 if method == "chi2" else 1), (n, n_dim)), np.float64)
        norms[method] = np.sum(x**2, axis=1)
        want = n_dim * D / (D - 2)
        se = np.std(norms[method]) / math.sqrt(n)
        assert abs(norms[method].mean() - want) < 6 * se, (method, norms[method].mean(), want)
    assert stats.ks_2samp(norms["chi2"], norms["beta_prime"]).pvalue > 0.01
    # the kernel's density (||n||^2 + r^2)^(-(N + D)/2): ||n||^2 / (D sigma^2) ~ (N/D) F(N, D)
    assert stats.kstest(norms["chi2"] / n_dim, stats.f(n_dim, D).cdf).pvalue > 0.01


@pytest.mark.parametrize("D", [4.0, 16.0, 2048.0])
def test_pfgmpp_ode_with_the_exact_denoiser_reproduces_the_atom_weights(D):
    """O4.3: atoms (+-1, 0) with weights (0.7, 0.3); EDM's Heun ODE from PFGM++'s prior at sigma_max = 80
    to 0.002 with the exact delta-mixture denoiser: the fraction near +1 is 0.7 within Monte-Carlo error."""
    with x64():
        proc = P.PFGMPP(D=D)
        atoms, w = jnp.array([[1.0, 0.0], [-1.0, 0.0]]), jnp.array([0.7, 0.3])
        n = 8000
        key = jax.random.PRNGKey(11)
        x0 = S.prior_sample(proc, key, (n, 2), jnp.float64)
        x = S.sample(S.edm_heun(proc), proc.delta_mixture_score(atoms, w), key, x0,
                     S.karras_timesteps(proc, 64, dtype=jnp.float64)).x
        x = np.asarray(x)
        near = np.linalg.norm(x - np.array([1.0, 0.0]), axis=1) < 0.1
        assert np.mean(near | (np.linalg.norm(x + np.array([1.0, 0.0]), axis=1) < 0.1)) > 0.99
        assert abs(near.mean() - 0.7) < 4 * math.sqrt(0.21 / n), near.mean()


def test_pfgmpp_denoiser_tends_to_edms_like_one_over_d():
    """O4.4: the delta-mixture denoiser's gap to the Gaussian-kernel (EDM) denoiser at sigma = 0.8 falls
    like 1/D."""
    with x64():
        atoms, w = jnp.array([[1.0, 0.0], [-1.0, 0.0]]), jnp.array([0.7, 0.3])
        x = jnp.asarray(np.random.default_rng(4).normal(size=(256, 2)))
        t = jnp.full((256,), 0.8)

        def denoiser(D):
            return x + 0.64 * P.PFGMPP(D=D).delta_mixture_score(atoms, w)(x, t)

        edm = denoiser(math.inf)
        gaps = {D: float(jnp.max(jnp.abs(denoiser(D) - edm))) for D in (2048.0, 1e5, 1e7)}
        assert 0.5 < gaps[2048.0] / gaps[1e5] / (1e5 / 2048) < 2
        assert 0.5 < gaps[1e5] / gaps[1e7] / 100 < 2


def test_pfgmpp_edm_loss_is_minimised_by_the_exact_denoiser():
    with x64():
        proc = P.PFGMPP(D=16.0)
        atoms, w = jnp.array([[1.0, 0.0], [-1.0, 0.0]]), jnp.array([0.7, 0.3])
        exact = proc.delta_mixture_score(atoms, w)
        h = jnp.array([1.0, -0.5])

        def model(delta, x, t):
            return exact(x, t) + delta * h / t[:, None] ** 2  # shifts D by delta h

        fn = losses.get_edm_loss_fn(proc, model)
        diffs = []
        for r in range(8):
            key = jax.random.PRNGKey(r)
            idx = jax.random.categorical(jax.random.fold_in(key, 7), jnp.log(w), shape=(4096,))
            batch = atoms[idx]
            diffs.append(float(fn(key, 0.05, batch)[0] - fn(key, 0.0, batch)[0]))
        assert np.mean(diffs) > 4 * np.std(diffs, ddof=1) / math.sqrt(8)


def test_pfgmpp_refuses_what_needs_a_gaussian_kernel():
    proc = P.PFGMPP()
    for build in (lambda: S.euler_maruyama(proc), lambda: S.langevin(proc), lambda: S.ddim(proc, eta=1.0),
                  lambda: S.edm_heun(proc, S_churn=10.0, num_steps=10), lambda: S.dpmpp_2m_sde(proc),
                  lambda: S.get_step("pc", proc)):
        with pytest.raises(ValueError, match="not Gaussian"):
            build()
    for ok in (S.ddim(proc), S.edm_heun(proc), S.dpmpp_2m(proc), S.ode_heun(proc)):
        assert not ok.stochastic
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="not Gaussian"):
        likelihood.log_likelihood(proc, lambda x, t: -x, jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="not Gaussian"):
        mixture_2d().score(x, proc, jnp.ones((4,)))
    with pytest.raises(ValueError, match="not Gaussian"):
        losses.get_dsm_loss_fn(proc, lambda p, x, t: -x)
    with pytest.raises(ValueError, match="D > 2"):
        P.PFGMPP(D=2.0)


# --- values, errors ----------------------------------------------------------------------------


def test_new_processes_are_values_and_compile_once():
    assert P.EDM() == P.EDM() and hash(P.EDM()) == hash(P.EDM()) and P.EDM() != P.EDM(sigma_max=40.0)
    assert P.RectifiedFlow() != P.OneSidedInterpolant("linear", "zero")
    assert P.PFGMPP(D=128.0) != P.PFGMPP(D=2048.0)
    gm = mixture_2d()
    before = S.driver._run.cache_size()
    sde = P.EDM()
    for _ in range(3):
        step = S.dpmpp_2m(P.EDM())
        S.sample(step, gm.score_fn(P.EDM()), jax.random.PRNGKey(0), S.prior_sample(sde, jax.random.PRNGKey(0), (8, 2)),
                 S.karras_timesteps(sde, 5))
    assert S.driver._run.cache_size() == before + 1


def test_bad_process_parameters_say_what_was_expected():
    with pytest.raises(ValueError, match="t_end < T"):
        P.EDM(sigma_min=90.0)
    with pytest.raises(ValueError, match="t_max < 1"):
        P.RectifiedFlow(t_max=1.0)
    with pytest.raises(ValueError, match="unknown interpolant gamma"):
        P.OneSidedInterpolant(gamma="bogus")
    with pytest.raises(ValueError, match="decreasing"):
        P.CustomProcess(lambda t: (jnp.ones_like(t), jnp.ones_like(t)))
    with pytest.raises(ValueError, match="t must lie in"):
        P.EDM().marginal_prob(jnp.zeros((2, 2)), jnp.array([1.0, 81.0]))
    with pytest.raises(ValueError, match="time_sampling"):
        losses.get_flow_matching_loss_fn(P.RectifiedFlow(), lambda p, x, t: x, time_sampling="beta")


@pytest.mark.parametrize("name", ["digits_edm", "digits_cosine", "digits_rf", "digits_pfgmpp", "cifar10_edm_ddpmpp",
                                  "cifar10_pfgmpp_ddpmpp", "cifar10_rf_ddpmpp", "cifar10_cosine_ddpm"])
def test_process_configs_build(name):
    """Every process config loads and builds its process, network, loss and sampler; the digits job
    switches process by an override alone."""
    from diffjax import configs
    from diffjax.run import build

    config = configs.load_config(name)
    sde = build.build_sde(config)
    assert type(sde) is P.PROCESSES[config.sde.name]
    model = build.build_model(config)
    build.build_loss(config, sde, model)
    build.build_sampler(config, sde)
    switched = configs.load_config("digits", ["sde.name='rectified_flow'"])
    assert build.loss_name(switched, build.build_sde(switched)) == "flow_matching"
