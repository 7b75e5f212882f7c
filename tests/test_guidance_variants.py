"""Guidance variants against closed forms: what classifier-free guidance samples for Gaussian
components (equal and unequal variances; the PF-ODE and the reverse SDE, by quadrature), APG reducing
to CFG, CFG++'s identity with a step-dependent CFG weight, and the guidance interval's band."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from diffjax import GaussianMixture, guidance
from diffjax.processes import EDM, VPSDE
from diffjax.samplers import ddim, euler_maruyama, karras_timesteps, log_snr_timesteps, prior_sample, sample, unipc
from helpers import x64


def gaussian(mu, var):
    return GaussianMixture(jnp.ones(1), jnp.asarray([[mu]]), jnp.asarray([[[var]]]))


def guided_ode(sde, cond, uncond, w, n=4000, steps=200):
    key = jax.random.PRNGKey(0)
    x_T = prior_sample(sde, key, (n, 1), jnp.float64)
    score = guidance.guided_score(cond.score_fn(sde), uncond.score_fn(sde), w)
    return x_T, sample(unipc(sde, order=3), score, key, x_T, karras_timesteps(sde, steps, dtype=jnp.float64)).x


def test_cfg_with_equal_variances_samples_the_shifted_gaussian():
    """Equal covariances: the guided score is exactly the diffused N(mu_u + G (mu_c - mu_u), lam)'s
    (G = 1 + w), so the probability flow maps the prior onto it (deterministic map: checked on the
    sample moments to Monte-Carlo tolerance, 4000 samples)."""
    with x64():
        _, x = guided_ode(EDM(), gaussian(1.0, 0.3), gaussian(0.0, 0.3), 1.0)
    x = np.asarray(x[:, 0])
    assert abs(x.mean() - 2.0) < 4 * np.sqrt(0.3 / len(x))
    assert abs(x.var() / 0.3 - 1) < 4 * np.sqrt(2 / len(x))


def test_cfg_with_unequal_variances_is_not_the_tilted_target():
    """Unequal variances: the guided probability flow is linear in x^ with slope and offset from
    quadrature (C.9: dx^/dsigma = sigma (kappa x^ - l)); its output per x_T is compared with the
    sampler's to 1e-4, and its variance (about lam_u^(1-G) lam_c^G = 0.0625) differs from the
    tilted target's 1 / ((1 - G) / lam_u + G / lam_c) = 0.143."""
    lam_u, lam_c, mu_u, mu_c, G = 1.0, 0.25, 0.0, 1.0, 2.0
    sde = EDM()
    s_T = float(sde.T)

    def log_phi(s):
        return (1 - G) / 2 * np.log(lam_u + s * s) + G / 2 * np.log(lam_c + s * s)

    def ell(s):
        return (1 - G) * mu_u / (lam_u + s * s) + G * mu_c / (lam_c + s * s)

    slope = np.exp(log_phi(0.002) - log_phi(s_T))
    offset = np.exp(log_phi(0.002)) * integrate.quad(lambda s: s * ell(s) * np.exp(-log_phi(s)), 0.002, s_T,
                                                     limit=400, epsabs=1e-13, epsrel=1e-12)[0]
    with x64():
        x_T, x = guided_ode(sde, gaussian(mu_c, lam_c), gaussian(mu_u, lam_u), G - 1.0, n=256, steps=400)
    # the driver ends with Tweedie's denoiser of the *guided* score at sigma = 0.002: apply it to the map too
    s_end = 0.002
    kappa = (1 - G) / (lam_u + s_end ** 2) + G / (lam_c + s_end ** 2)
    x_end = slope * np.asarray(x_T[:, 0]) + offset
    want = x_end + s_end ** 2 * (-(kappa * x_end - ell(s_end)))
    np.testing.assert_allclose(np.asarray(x[:, 0]), want, atol=1e-4)
    assert abs(slope ** 2 * s_T ** 2 - lam_u ** (1 - G) * lam_c ** G) < 1e-3
    tilted = 1 / ((1 - G) / lam_u + G / lam_c)
    assert abs(np.var(np.asarray(x)) - tilted) > 0.05


def test_guided_reverse_sde_samples_its_own_closed_form_not_the_ode_one():
    """The guided reverse SDE (Euler-Maruyama, exact Gaussian scores, G = 2) ends at C.9's
    Var_SDE = int_0^inf (lam_u / (lam_u + u))^(2(1-G)) (lam_c / (lam_c + u))^(2G) du = 0.109375 and
    Mean_SDE = Psi(0) int_0^inf l(u) / Psi(u) du = 1.25 (u = sigma^2, Psi = (lam_u + u)^(1-G) (lam_c + u)^G),
    by quadrature here; not the PF-ODE's 0.0625 nor the tilted target's 0.143 (4000 samples)."""
    lam_u, lam_c, mu_u, mu_c, G = 1.0, 0.25, 0.0, 1.0, 2.0

    def quad(f):
        return sum(integrate.quad(f, a, b, limit=400, epsabs=1e-13, epsrel=1e-11)[0] for a, b in ((0, 1), (1, np.inf)))

    def log_psi(u):
        return (1 - G) * np.log(lam_u + u) + G * np.log(lam_c + u)

    var_sde = quad(lambda u: (lam_u / (lam_u + u)) ** (2 * (1 - G)) * (lam_c / (lam_c + u)) ** (2 * G))
    mean_sde = np.exp(log_psi(0)) * quad(lambda u: ((1 - G) * mu_u / (lam_u + u) + G * mu_c / (lam_c + u))
                                         * np.exp(-log_psi(u)))
    sde, n = VPSDE(), 4000
    with x64():
        key = jax.random.PRNGKey(5)
        score = guidance.guided_score(gaussian(mu_c, lam_c).score_fn(sde), gaussian(mu_u, lam_u).score_fn(sde), G - 1)
        x = sample(euler_maruyama(sde), score, key, prior_sample(sde, key, (n, 1), jnp.float64),
                   log_snr_timesteps(sde, 400, dtype=jnp.float64)).x
    x = np.asarray(x[:, 0])
    assert var_sde == pytest.approx(0.109375, rel=1e-8) and mean_sde == pytest.approx(1.25, rel=1e-8)
    assert abs(x.mean() - mean_sde) < 4 * np.sqrt(var_sde / n) + 0.005
    assert abs(x.var() / var_sde - 1) < 4 * np.sqrt(2 / n) + 0.02


def test_apg_with_eta_one_and_no_clipping_is_cfg():
    sde = VPSDE()
    with x64():
        cond, uncond = gaussian(1.0, 0.3).score_fn(sde), gaussian(0.0, 0.5).score_fn(sde)
        x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 1)))
        t = jnp.linspace(0.1, 0.9, 8)
        np.testing.assert_allclose(guidance.apg_score(sde, cond, uncond, 1.5, eta=1.0)(x, t),
                                   guidance.guided_score(cond, uncond, 1.5)(x, t), rtol=1e-10, atol=1e-10)
        # eta = 0 removes the part of D_c - D_u along D_c: for 1-D data that is all of it
        np.testing.assert_allclose(guidance.apg_score(sde, cond, uncond, 1.5)(x, t), cond(x, t), rtol=1e-10,
                                   atol=1e-10)


def test_cfgpp_is_ddim_with_a_step_dependent_weight():
    """CFG++ with lam equals a DDIM step with classifier-free guidance 1 + w = lam / (1 - e^{-h})."""
    sde = VPSDE()
    with x64():
        cond, uncond = gaussian(1.0, 0.3).score_fn(sde), gaussian(0.0, 0.5).score_fn(sde)
        x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 1)))
        t, t_next = jnp.full((8,), 0.5), jnp.full((8,), 0.42)
        keys = jax.random.split(jax.random.PRNGKey(0), 8)
        got, _ = guidance.cfgpp_ddim(sde, 0.6).update(keys, x, (), t, t_next, (cond, uncond))
        h = float(sde.log_snr(t_next[0]) - sde.log_snr(t[0]))
        w = 0.6 / (1 - np.exp(-h)) - 1
        want, _ = ddim(sde).update(keys, x, (), t, t_next, guidance.guided_score(cond, uncond, w))
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        # it runs through the driver as a step over two models
        res = sample(guidance.cfgpp_ddim(sde, 0.6), (cond, uncond), jax.random.PRNGKey(0), x,
                     jnp.linspace(1.0, 1e-3, 11, dtype=jnp.float64))
        assert int(res.nfe[0]) == 22


def test_guidance_interval_guides_only_inside_its_band():
    sde = EDM()
    cond, uncond = gaussian(1.0, 0.3).score_fn(sde), gaussian(0.0, 0.5).score_fn(sde)
    x = jnp.ones((3, 1))
    t = jnp.array([0.1, 1.0, 10.0])          # sigma^ = t for EDM: below, inside, above (0.28, 5.42]
    got = guidance.guidance_interval(sde, cond, uncond, 1.0, 0.28, 5.42)(x, t)
    cfg = guidance.guided_score(cond, uncond, 1.0)(x, t)
    c = cond(x, t)
    np.testing.assert_allclose(got, jnp.stack([c[0], cfg[1], c[2]]), rtol=1e-6)
    with pytest.raises(ValueError, match="sigma_lo < sigma_hi"):
        guidance.guidance_interval(sde, cond, uncond, 1.0, 2.0, 1.0)


def test_zero_terminal_snr_and_trailing_spacing():
    """The rescaled VP process has a(T) = 0 (to rounding), a(0) = 1 and a variance-preserving marginal;
    a Gaussian's exact score sampled from its prior N(0, I) gives the Gaussian (moments, 4000 samples);
    the trailing grid starts at the process's last step and keeps every N / n-th."""
    from diffjax.processes import zero_terminal_snr
    from diffjax.samplers import trailing_timesteps

    base = VPSDE()
    sde = zero_terminal_snr(base)
    a_T, _ = base.marginal_coeffs(jnp.asarray(1.0))
    a, s = sde.marginal_coeffs(jnp.array([0.0, 0.5, 1.0]))
    assert float(a[0]) == pytest.approx(1.0, abs=1e-6) and abs(float(a[2])) < 1e-6 and float(a_T) > 6e-3
    np.testing.assert_allclose(a ** 2 + s ** 2, 1.0, atol=1e-6)
    ts = trailing_timesteps(base, 10)
    np.testing.assert_allclose(ts[:-1], np.arange(1000, 0, -100) / 1000, atol=1e-7)
    assert float(ts[-1]) == pytest.approx(float(base.t_end))
    with x64():
        g = gaussian(1.0, 0.3)
        key = jax.random.PRNGKey(3)
        x = sample(ddim(sde), g.score_fn(sde), key, jax.random.normal(key, (4000, 1), jnp.float64),
                   jnp.linspace(sde.T, 1e-3, 101, dtype=jnp.float64)).x
    x = np.asarray(x[:, 0])
    assert abs(x.mean() - 1.0) < 4 * np.sqrt(0.3 / 4000) + 0.01 and abs(x.var() / 0.3 - 1) < 0.1
