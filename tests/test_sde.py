"""Forward processes against closed forms and against simulation of the SDE itself."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import x64
from scipy import integrate, stats

import diffjax
from diffjax import GaussianMixture, SubVPSDE, VESDE, VPSDE

PROCESSES = {
    "ve": VESDE(sigma_min=0.01, sigma_max=50.0, N=1000),
    "vp": VPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "subvp": SubVPSDE(beta_min=0.1, beta_max=20.0, N=1000),
}


def test_eight_cpu_devices():
    assert jax.device_count() == 8


def test_exported_at_top_level():
    assert diffjax.VESDE is VESDE and diffjax.VPSDE is VPSDE and diffjax.SubVPSDE is SubVPSDE


@pytest.mark.parametrize("name", PROCESSES)
def test_marginal_prob_matches_euler_maruyama_simulation(name):
    """Simulate dx = f x dt + g dw from x0 on a 4000-step grid; compare mean/std at three times.

    Tolerance: 5 Monte-Carlo standard errors plus 1% (relative) for the O(dt) bias of the scheme.
    VE starts from x0 + sigma_min z: its marginal is defined with x(0) already carrying sigma_min.
    """
    sde = PROCESSES[name]
    n, steps = 100_000, 4000
    x0 = jnp.array([1.5, -0.5])
    checkpoints = {1000: 0.25, 2000: 0.5, 4000: 1.0}
    dt = 1.0 / steps
    key = jax.random.PRNGKey(0)
    k0, key = jax.random.split(key)
    x = jnp.broadcast_to(x0, (n, 2))
    if name == "ve":
        x = x + sde.sigma_min * jax.random.normal(k0, (n, 2))

    def step(x, inp):
        i, k = inp
        t = jnp.full((n,), i * dt)
        drift, g = sde.sde(x, t)
        x = x + drift * dt + g[:, None] * math.sqrt(dt) * jax.random.normal(k, x.shape)
        return x, None

    start = 0
    for stop, t_check in checkpoints.items():
        keys = jax.random.split(jax.random.fold_in(key, stop), stop - start)
        x, _ = jax.jit(lambda x, idx, ks: jax.lax.scan(step, x, (idx, ks)))(x, jnp.arange(start, stop), keys)
        start = stop
        mean, std = sde.marginal_prob(x0[None], jnp.array([t_check]))
        mean, std = np.asarray(mean[0]), float(std[0])
        emp_mean = np.asarray(x.mean(0))
        emp_std = float(np.sqrt(((np.asarray(x) - emp_mean) ** 2).mean()))
        se_mean = std / math.sqrt(n)
        se_std = std / math.sqrt(2 * 2 * n)
        np.testing.assert_allclose(emp_mean, mean, atol=5 * se_mean + 0.01 * max(std, abs(mean).max()))
        assert abs(emp_std - std) < 5 * se_std + 0.01 * std, (t_check, emp_std, std)


@pytest.mark.parametrize("name", PROCESSES)
def test_marginals_solve_the_moment_equations(name):
    """For a linear SDE, a' = f a and (sigma^2)' = 2 f sigma^2 + g^2 exactly (Fokker–Planck moments)."""
    sde = PROCESSES[name]
    with x64():  # 2 f sigma^2 + g^2 cancels badly in float32 as sigma -> 1
        t = jnp.linspace(0.02, 1.0, 50, dtype=jnp.float64)
        (a, s), (da, ds) = jax.jvp(sde.marginal_coeffs, (t,), (jnp.ones_like(t),))
        f, g = sde.drift_diffusion_coeffs(t)
        np.testing.assert_allclose(da, f * a, rtol=1e-10)
        np.testing.assert_allclose(2 * s * ds, 2 * f * s**2 + g**2, rtol=1e-8)


def test_marginal_closed_forms():
    t = np.array([0.0, 0.3, 1.0])
    ve, vp, svp = PROCESSES["ve"], PROCESSES["vp"], PROCESSES["subvp"]
    np.testing.assert_allclose(ve.marginal_coeffs(t)[1], 0.01 * 5000.0**t, rtol=1e-5)
    big_b = 0.1 * t + 0.5 * 19.9 * t**2
    np.testing.assert_allclose(vp.marginal_coeffs(t)[0], np.exp(-big_b / 2), rtol=1e-5)
    np.testing.assert_allclose(vp.marginal_coeffs(t)[1], np.sqrt(1 - np.exp(-big_b)), rtol=1e-5)
    np.testing.assert_allclose(svp.marginal_coeffs(t)[1], 1 - np.exp(-big_b), rtol=1e-5)
    assert ve.T == vp.T == svp.T == 1.0


@pytest.mark.parametrize("name", PROCESSES)
def test_prior(name):
    sde = PROCESSES[name]
    z = sde.prior_sampling(jax.random.PRNGKey(1), (4000, 2, 3, 3))
    assert z.shape == (4000, 2, 3, 3)
    std = float(sde.prior_std)
    assert abs(float(z.std()) - std) < 0.02 * std
    logp = sde.prior_logp(z[:5])
    expected = stats.norm(scale=std).logpdf(np.asarray(z[:5], np.float64)).reshape(5, -1).sum(1)
    np.testing.assert_allclose(logp, expected, rtol=1e-5)


def test_discretize_matches_smld_and_ddpm_chains():
    x = jnp.array([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.0]])
    t = jnp.array([0.0, 0.5, 1.0])
    idx = np.array([0, 500, 999])  # round(t * 999)
    # SMLD: geometric sigmas, G^2 = sigma_i^2 - sigma_{i-1}^2, sigma_{-1} = 0
    sig = np.geomspace(0.01, 50.0, 1000)
    f, big_g = PROCESSES["ve"].discretize(x, t)
    prev = np.where(idx == 0, 0.0, sig[np.maximum(idx - 1, 0)])
    np.testing.assert_allclose(f, 0.0)
    np.testing.assert_allclose(big_g**2, sig[idx] ** 2 - prev**2, rtol=1e-4)
    # DDPM: betas linspace(0.1/N, 20/N, N), x + f = sqrt(1 - beta_i) x, G = sqrt(beta_i)
    betas = np.linspace(0.1 / 1000, 20.0 / 1000, 1000)
    f, big_g = PROCESSES["vp"].discretize(x, t)
    np.testing.assert_allclose(x + f, np.sqrt(1 - betas[idx])[:, None] * np.asarray(x), rtol=1e-6)
    np.testing.assert_allclose(big_g, np.sqrt(betas[idx]), rtol=1e-5)
    # sub-VP: Euler–Maruyama with dt = 1/N
    f, big_g = PROCESSES["subvp"].discretize(x, t)
    tn = np.asarray(t)
    beta_t = 0.1 + tn * 19.9
    big_b = 0.1 * tn + 0.5 * 19.9 * tn**2
    np.testing.assert_allclose(f, -0.5 * beta_t[:, None] * np.asarray(x) / 1000, rtol=1e-5)
    np.testing.assert_allclose(big_g, np.sqrt(beta_t * (1 - np.exp(-2 * big_b)) / 1000), rtol=1e-4, atol=1e-7)


def test_reverse_steps_match_smld_and_ddpm_updates():
    """One reverse step x_{i-1} = x_i - rev_f + rev_G z has the SMLD / DDPM mean and variance."""
    x = jnp.array([[1.0, -2.0], [0.5, 3.0]])
    t = jnp.array([0.3, 0.8])
    idx = np.round(np.asarray(t) * 999).astype(int)
    score = jnp.array([[0.3, 0.1], [-0.7, 2.0]])

    def score_fn(x_, t_):
        return score

    sig = np.geomspace(0.01, 50.0, 1000)
    dvar = sig[idx] ** 2 - sig[idx - 1] ** 2
    rev_f, rev_g = PROCESSES["ve"].reverse(score_fn).discretize(x, t)
    np.testing.assert_allclose(x - rev_f, np.asarray(x) + dvar[:, None] * np.asarray(score), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rev_g**2, dvar, rtol=1e-4)
    rev_f, rev_g = PROCESSES["ve"].reverse(score_fn, probability_flow=True).discretize(x, t)
    np.testing.assert_allclose(x - rev_f, np.asarray(x) + 0.5 * dvar[:, None] * np.asarray(score), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rev_g, 0.0)

    beta = np.linspace(0.1 / 1000, 20.0 / 1000, 1000)[idx][:, None]
    rev_f, rev_g = PROCESSES["vp"].reverse(score_fn).discretize(x, t)
    expected = (2 - np.sqrt(1 - beta)) * np.asarray(x) + beta * np.asarray(score)
    np.testing.assert_allclose(x - rev_f, expected, rtol=1e-5)
    np.testing.assert_allclose(rev_g**2, beta[:, 0], rtol=1e-5)


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("probability_flow", [False, True])
def test_reverse_process_runs_the_marginals_backwards(name, probability_flow):
    """Gaussian data N(m, v): with the exact score the reverse drift is linear, c1 x + c0, and in
    reverse time tau = T - t the moments must obey d mean/dtau = -(c1 mean + c0) and
    dV/dtau = -2 c1 V + g_rev^2; these must equal -d/dt of the forward marginal's moments."""
    sde = PROCESSES[name]
    m, v = 0.7, 0.3
    gm = GaussianMixture(jnp.ones(1), jnp.array([[m]]), jnp.array([[[v]]]))
    rev = sde.reverse(gm.score_fn(sde), probability_flow=probability_flow)
    t = jnp.linspace(0.05, 1.0, 20)

    def moments(t):
        a, s = sde.marginal_coeffs(t)
        return a * m, a**2 * v + s**2

    (mean, var), (dmean, dvar) = jax.jvp(moments, (t,), (jnp.ones_like(t),))
    d0, g_rev = rev.sde(mean[:, None], t)
    d1, _ = rev.sde(mean[:, None] + 1.0, t)
    c1 = d1[:, 0] - d0[:, 0]
    np.testing.assert_allclose(d0[:, 0], dmean, rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(2 * c1 * var - g_rev**2, dvar, rtol=2e-3, atol=1e-5)
    if probability_flow:
        np.testing.assert_allclose(g_rev, 0.0)


def test_subvp_has_the_discrete_schedule_vp_has():
    """The original crashed running Langevin on sub-VP: it had no `alphas`. Ours derives the chain."""
    vp, svp = PROCESSES["vp"], PROCESSES["subvp"]
    np.testing.assert_allclose(svp.alphas, vp.alphas)
    np.testing.assert_allclose(svp.alphas_cumprod, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-4)
    a, s = svp.discrete_marginal_coeffs()
    np.testing.assert_allclose(s, 1 - a**2, rtol=1e-5, atol=1e-6)
    # b_i^2 = sigma_i^2 - alpha_i sigma_{i-1}^2 = (1 - alpha_i)(1 - alpha_i abar_{i-1}^2), all positive
    alpha = np.asarray(vp.alphas, np.float64)
    abar_prev = np.concatenate([[1.0], np.cumprod(alpha)[:-1]])
    np.testing.assert_allclose(svp.discrete_step_variances, (1 - alpha) * (1 - alpha * abar_prev**2), rtol=2e-3)
    # VP's chain: b_i^2 = beta_i; VE's: sigma_i^2 - sigma_{i-1}^2 and alpha = 1
    np.testing.assert_allclose(vp.discrete_step_variances, vp.discrete_betas, rtol=2e-3)
    np.testing.assert_allclose(PROCESSES["ve"].alphas, 1.0)
    # iterating the derived chain reproduces its marginals (float64)
    b2 = np.asarray(svp.discrete_step_variances, np.float64)
    var = 0.0
    for i in range(1000):
        var = alpha[i] * var + b2[i]
    assert abs(math.sqrt(var) - float(s[-1])) < 1e-4


@pytest.mark.parametrize("name", PROCESSES)
def test_importance_time_sampler_follows_g2_over_sigma2(name):
    """Samples of t follow q(t) proportional to g^2/sigma^2 on [eps, 1]; Z is its integral (scipy quad)."""
    sde = PROCESSES[name]
    eps = 1e-5
    t, z_norm = sde.sample_importance_time(jax.random.PRNGKey(3), (20000,), eps)

    def density(u):  # g^2 / sigma^2 written out independently, in float64
        if name == "ve":
            return 2 * math.log(50.0 / 0.01)
        beta, big_b = 0.1 + 19.9 * u, 0.1 * u + 0.5 * 19.9 * u**2
        if name == "vp":
            return beta / -math.expm1(-big_b)
        return beta * -math.expm1(-2 * big_b) / math.expm1(-big_b) ** 2

    # integrate in log t: the VP/sub-VP weight behaves like 1/t near zero
    def integral(lo, hi):
        return integrate.quad(lambda lu: density(math.exp(lu)) * math.exp(lu), math.log(lo), math.log(hi), limit=200)[0]

    total = integral(eps, 1.0)
    assert abs(float(z_norm) - total) < 1e-3 * total
    grid = np.geomspace(eps, 1.0, 60)
    cdf = np.array([integral(eps, g) for g in grid]) / total
    ks = stats.kstest(np.asarray(t), lambda u: np.interp(u, grid, cdf))
    assert ks.pvalue > 1e-3, ks
    assert float(t.min()) >= eps and float(t.max()) <= 1.0


def test_invalid_parameters_are_rejected():
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        VESDE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="sigma_min > 0"):
        VESDE(sigma_min=0.0)
    with pytest.raises(ValueError, match="0 < beta_min < beta_max"):
        VPSDE(beta_min=0.0)
    with pytest.raises(ValueError, match="0 < beta_min < beta_max"):
        SubVPSDE(beta_min=5.0, beta_max=1.0)
    for bad_n in (0, -3):
        with pytest.raises(ValueError, match="N"):
            VPSDE(N=bad_n)
    for bad_n in (2.5, True):  # not an integer: a TypeError (was a ValueError before issue 27)
        with pytest.raises(TypeError, match="N must be an integer"):
            VPSDE(N=bad_n)


@pytest.mark.parametrize("name", PROCESSES)
def test_wrong_time_shape_is_rejected(name):
    sde = PROCESSES[name]
    x = jnp.zeros((4, 3, 2))
    for bad_t in (jnp.zeros(()), jnp.zeros((4, 1)), jnp.zeros((5,))):
        with pytest.raises(ValueError, match=r"t must have shape \(batch,\) = \(4,\)"):
            sde.marginal_prob(x, bad_t)
        with pytest.raises(ValueError, match="t must have shape"):
            sde.sde(x, bad_t)
        with pytest.raises(ValueError, match="t must have shape"):
            sde.discretize(x, bad_t)
    with pytest.raises(ValueError, match="batch"):
        sde.prior_logp(jnp.zeros(()))


@pytest.mark.parametrize("name", PROCESSES)
def test_processes_are_pytrees(name):
    sde = PROCESSES[name]
    leaves, treedef = jax.tree_util.tree_flatten(sde)
    assert len(leaves) == 2 and jax.tree_util.tree_unflatten(treedef, leaves) == sde
    x = jnp.ones((3, 2, 2))
    t = jnp.array([0.1, 0.5, 0.9])
    mean_j, std_j = jax.jit(lambda s, x, t: s.marginal_prob(x, t))(sde, x, t)
    mean, std = sde.marginal_prob(x, t)
    np.testing.assert_allclose(mean_j, mean, rtol=1e-6)
    np.testing.assert_allclose(std_j, std, rtol=1e-6)
    # a batch of processes under vmap: hyper-parameters are leaves
    stacked = jax.tree_util.tree_map(lambda v: jnp.stack([v, v * 1.5]), sde)
    stds = jax.vmap(lambda s: s.marginal_prob(x, t)[1])(stacked)
    assert stds.shape == (2, 3)
    np.testing.assert_allclose(stds[0], std, rtol=1e-6)


@pytest.mark.parametrize("name", PROCESSES)
def test_log_snr_and_its_inverse(name):
    sde = PROCESSES[name]
    t = jnp.array([1e-5, 1e-3, 0.1, 0.5, 0.9, 1.0])
    a, s = sde.marginal_coeffs(t)
    lam = sde.log_snr(t)
    np.testing.assert_allclose(lam, np.log(np.asarray(a, np.float64) / np.asarray(s, np.float64)), rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(np.asarray(lam)) < 0)
    np.testing.assert_allclose(sde.t_from_log_snr(lam), t, rtol=2e-3, atol=1e-6)
