"""The fast deterministic samplers (issue 17): UniPC and DPM-Solver++(3M) at their orders on Gaussian
data against the closed-form flow, Gaussian teleportation, fitted grids, and the usual contracts
(float32 / float64, every grid, batch independence, names, compile once)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import MixtureCheck, mixture_2d, mixture_3d, mixture_moments, x64

from diffjax import GaussianMixture, VPSDE
from diffjax import samplers as S
from diffjax.processes import EDM, RectifiedFlow


def gaussian_setup():
    """methods.md section 2.5: d = 4, mu = (1, -0.5, 0.3, 0), eigenvalues (4, 1, 0.25, 0.01), a random rotation."""
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))
    return S.GaussianFit(jnp.asarray([1.0, -0.5, 0.3, 0.0]), jnp.asarray([4.0, 1.0, 0.25, 0.01]), jnp.asarray(q), 0.0)


def global_order(step, fit, ns=(40, 80, 160)):
    """Fitted slope of the RMS error against the exact Gaussian flow from 1 to 1e-3 (lambda-uniform grid)."""
    sde = step.sde
    x0 = jnp.asarray(np.random.default_rng(1).normal(size=(200, 4)))
    exact = S.gaussian_teleport(sde, x0, 1.0, 1e-3, fit)
    errs = []
    for n in ns:
        x = S.sample(step, S.gaussian_score(sde, fit), jax.random.PRNGKey(0), x0,
                     S.log_snr_timesteps(sde, n, 1e-3, dtype=jnp.float64), denoise=False).x
        errs.append(float(jnp.sqrt(jnp.mean(jnp.sum((x - exact) ** 2, axis=1)))))
    return -np.polyfit(np.log(ns), np.log(errs), 1)[0], errs


ORDERS = [
    # (label, step, minimum fitted order): UniP-p >= p - 0.2, UniPC-p >= min(p + 1, 3) - 0.3 (methods.md O6.1)
    ("dpmpp_3m taylor", lambda sde: S.dpmpp_3m(sde, lower_order_final=False), 2.8),
    ("unipc1", lambda sde: S.unipc(sde, order=1, lower_order_final=False), 1.7),
    ("unipc2 bh2", lambda sde: S.unipc(sde, order=2, lower_order_final=False), 2.7),
    ("unipc3 bh2", lambda sde: S.unipc(sde, order=3, lower_order_final=False), 2.7),
    ("unip3 bh2", lambda sde: S.unipc(sde, order=3, corrector=False, lower_order_final=False), 2.8),
    ("unic after dpmpp 3m", lambda sde: S.unipc(sde, order=3, predictor="dpmpp", lower_order_final=False), 2.7),
    pytest.param("unipc2 bh1", lambda sde: S.unipc(sde, order=2, variant="bh1", lower_order_final=False), 2.7,
                 marks=pytest.mark.slow),
    pytest.param("unipc3 bh1", lambda sde: S.unipc(sde, order=3, variant="bh1", lower_order_final=False), 2.7,
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("label,make,minimum", ORDERS, ids=lambda v: v if isinstance(v, str) else "")
def test_orders_on_gaussian_data(label, make, minimum):
    with x64():
        order, errs = global_order(make(VPSDE()), gaussian_setup())
    assert order >= minimum, (label, order, errs)


def test_reference_3m_weighting_is_second_order_and_taylor_is_third():
    """methods.md 6.2: the published weight phi_3 on D2 gives a second-order method; 2 phi_3 a third."""
    with x64():
        ref, _ = global_order(S.dpmpp_3m(VPSDE(), weighting="reference", lower_order_final=False), gaussian_setup())
        taylor, _ = global_order(S.dpmpp_3m(VPSDE(), lower_order_final=False), gaussian_setup())
    assert 1.8 < ref < 2.4 and taylor > 2.8, (ref, taylor)


def test_identities_with_the_existing_solvers():
    """O6.2: UniP-2 with bh2 (no corrector) is DPM-Solver++(2M); UniP-1 is DDIM; exactly (float64).
    (DPM-Solver++(3M) capped at order 2 is not 2M: it weights D1 by phi_2 = phi_1/h + 1, the
    "taylor" form of the second-order update, where 2M uses -phi_1/2.)"""
    with x64():
        sde, fit = VPSDE(), gaussian_setup()
        x0 = jnp.asarray(np.random.default_rng(2).normal(size=(64, 4)))
        ts = S.log_snr_timesteps(sde, 25, dtype=jnp.float64)
        score = S.gaussian_score(sde, fit)
        run = lambda st: S.sample(st, score, jax.random.PRNGKey(0), x0, ts).x  # noqa: E731
        np.testing.assert_allclose(run(S.unipc(sde, order=2, corrector=False, lower_order_final=False)),
                                   run(S.dpmpp_2m(sde)), atol=1e-12)
        np.testing.assert_allclose(run(S.unipc(sde, order=1, corrector=False)), run(S.ddim(sde)), atol=1e-12)


def test_lower_order_final_is_set_by_the_driver():
    sde = VPSDE()
    step = S.unipc(sde)
    assert step.num_steps is None and S.with_num_steps(step, 7).num_steps == 7
    assert S.with_num_steps(S.unipc(sde, lower_order_final=False), 7).num_steps is None
    assert S.with_num_steps(S.dpmpp_2m(sde, lower_order_final=True), 7).num_steps == 7
    assert S.with_num_steps(S.chain(S.langevin(sde), S.dpmpp_2m_sde(sde, lower_order_final=True)), 5).steps[1].num_steps == 5
    assert S.with_num_steps(S.ddim(sde), 7) == S.ddim(sde)
    with x64():
        fit = gaussian_setup()
        x0 = jnp.asarray(np.random.default_rng(3).normal(size=(32, 4)))
        ts = S.log_snr_timesteps(sde, 5, dtype=jnp.float64)
        a = S.sample(S.unipc(sde), S.gaussian_score(sde, fit), jax.random.PRNGKey(0), x0, ts).x
        b = S.sample(S.unipc(sde, lower_order_final=False), S.gaussian_score(sde, fit), jax.random.PRNGKey(0), x0, ts).x
    assert float(jnp.max(jnp.abs(a - b))) > 1e-6  # the last two updates ran at lower order


# --- teleportation -----------------------------------------------------------------------------


def test_teleport_equals_a_fine_numerical_solve():
    """O2.1: the closed-form Gaussian flow from T to 1e-3 equals UniPC-3 with 2000 lambda-uniform steps on
    the exact Gaussian score (float64, <= 1e-5), for the full covariance and the low-rank form."""
    with x64():
        sde, fit = VPSDE(), gaussian_setup()
        x0 = jnp.asarray(np.random.default_rng(4).normal(size=(256, 4)))
        exact = S.gaussian_teleport(sde, x0, 1.0, 1e-3, fit)
        solved = S.sample(S.unipc(sde), S.gaussian_score(sde, fit), jax.random.PRNGKey(0), x0,
                          S.log_snr_timesteps(sde, 2000, 1e-3, dtype=jnp.float64), denoise=False).x
        assert float(jnp.sqrt(jnp.mean((solved - exact) ** 2))) < 1e-5
        cov = fit.eigvecs @ jnp.diag(fit.eigvals) @ fit.eigvecs.T
        np.testing.assert_allclose(S.gaussian_teleport(sde, x0, 1.0, 1e-3, fit.mean, cov), exact, atol=1e-12)
        traced = jax.jit(lambda c: S.gaussian_teleport(sde, x0, 1.0, 1e-3, fit.mean, c))(cov)  # cov under jit
        np.testing.assert_allclose(traced, exact, atol=1e-10)
        # low rank: the top two eigenpairs and the remainder's variance as an isotropic residual
        lam = jnp.asarray([4.0, 1.0, 0.3, 0.3])
        full = S.GaussianFit(fit.mean, lam, fit.eigvecs, 0.0)
        low = S.GaussianFit(fit.mean, lam[:2], fit.eigvecs[:, :2], 0.3)
        np.testing.assert_allclose(S.gaussian_teleport(sde, x0, 1.0, 0.2, low), S.gaussian_teleport(sde, x0, 1.0, 0.2, full),
                                   atol=1e-12)
        np.testing.assert_allclose(S.gaussian_score(sde, low)(x0, jnp.full((256,), 0.3)),
                                   S.gaussian_score(sde, full)(x0, jnp.full((256,), 0.3)), atol=1e-12)


def test_teleport_composes_and_inverts():
    """O2.3: T -> t1 -> t2 equals T -> t2, and there and back is the identity; images keep their shape."""
    with x64():
        sde, fit = EDM(), gaussian_setup()
        x = jnp.asarray(np.random.default_rng(5).normal(size=(16, 2, 2, 1))) * 80
        one = S.gaussian_teleport(sde, x, 80.0, 0.5, fit)
        two = S.gaussian_teleport(sde, S.gaussian_teleport(sde, x, 80.0, 5.0, fit), 5.0, 0.5, fit)
        assert one.shape == x.shape
        np.testing.assert_allclose(one, two, atol=1e-10)
        np.testing.assert_allclose(S.gaussian_teleport(sde, one, 0.5, 80.0, fit), x, rtol=1e-10, atol=1e-9)


def test_teleported_samples_have_the_gaussian_marginal():
    """O2.2: prior draws teleported to t have covariance a^2 Sigma + sigma^2 I (Monte Carlo, n = 20000)."""
    sde, fit = VPSDE(), gaussian_setup()
    x = S.prior_sample(sde, jax.random.PRNGKey(0), (20000, 4))
    t = 0.3
    out = np.asarray(S.gaussian_teleport(sde, x, 1.0, t, fit), np.float64)
    a, s = (float(v) for v in sde.marginal_coeffs(jnp.asarray(t)))
    cov = np.asarray(fit.eigvecs @ jnp.diag(fit.eigvals) @ fit.eigvecs.T, np.float64)
    np.testing.assert_allclose(np.cov(out.T), a**2 * cov + s**2 * np.eye(4), atol=0.06)


def _mixture64():
    gm = mixture_3d()
    return GaussianMixture(*(jnp.asarray(v, jnp.float64) for v in (gm.weights, gm.means, gm.covs)))


def _moment_fit(gm):
    mu, cov = mixture_moments(gm)
    lam, u = np.linalg.eigh(cov)
    return S.GaussianFit(jnp.asarray(mu), jnp.asarray(lam[::-1].copy()), jnp.asarray(u[:, ::-1].copy()), 0.0)


def test_teleport_then_solve_beats_solving_all_the_way_on_a_mixture():
    """O2.4: on the 3-D mixture (EDM setup, float64, exact score), teleporting with the moment-matched
    Gaussian to the rule's t_skip and re-gridding is no worse than the full solve at the same NFE, and
    the teleport error itself is small when sigma_skip is large."""
    with x64():
        sde, gm = EDM(), _mixture64()
        fit, score = _moment_fit(gm), gm.score_fn(sde)
        x_T = S.prior_sample(sde, jax.random.PRNGKey(1), (500, 3), jnp.float64)
        ref = S.sample(S.unipc(sde), score, jax.random.PRNGKey(0), x_T, S.log_snr_timesteps(sde, 1500, dtype=jnp.float64)).x
        for nfe in (8, 10, 20):
            step = S.dpmpp_2m(sde)
            full = S.sample(step, score, jax.random.PRNGKey(0), x_T, S.karras_timesteps(sde, nfe - 1, dtype=jnp.float64)).x
            res = S.teleport_sample(step, score, jax.random.PRNGKey(0), x_T, nfe - 1, fit,
                                    S.teleport_t_skip(sde, fit, nfe=nfe))
            tele, n = res.x, res.nfe
            assert int(n[0]) == nfe
            e_full = float(jnp.mean(jnp.linalg.norm(full - ref, axis=1)))
            e_tele = float(jnp.mean(jnp.linalg.norm(tele - ref, axis=1)))
            assert e_tele <= e_full, (nfe, e_tele, e_full)


def test_teleport_error_is_small_far_out():
    """The flow of the moment-matched Gaussian from T to sigma_hat = 10 sqrt(lam_max) matches the mixture's
    own flow (a fine numerical solve): below 1e-3 in the variance-preserving frame x a / sqrt(a^2 + sigma^2)
    (methods.md O2.4: teleport error below 1e-3 where a_VP(t_skip) <= 0.1)."""
    with x64():
        sde, gm = EDM(), _mixture64()
        fit, score = _moment_fit(gm), gm.score_fn(sde)
        x_T = S.prior_sample(sde, jax.random.PRNGKey(2), (256, 3), jnp.float64)
        t_skip = S.teleport_t_skip(sde, fit, 10.0)
        true = S.sample(S.unipc(sde), score, jax.random.PRNGKey(0), x_T,
                        S.log_snr_timesteps(sde, 400, t_end=t_skip, dtype=jnp.float64), denoise=False).x
        tele = S.gaussian_teleport(sde, x_T, sde.T, t_skip, fit)
        s_hat = float(sde.noise_level(jnp.asarray(t_skip)))
        a_vp = 1.0 / math.sqrt(1.0 + s_hat**2)
        assert a_vp <= 0.1
        assert a_vp * float(jnp.sqrt(jnp.mean(jnp.sum((true - tele) ** 2, axis=1)))) < 1e-3


# --- fitted grids ------------------------------------------------------------------------------


def test_gaussian_solver_error_matches_monte_carlo():
    """The closed-form expected squared error of a solver on the fitted Gaussian equals a Monte-Carlo
    estimate from prior draws (within 4 standard errors)."""
    with x64():
        sde, fit = EDM(), gaussian_setup()
        step = S.dpmpp_2m(sde)
        ts = S.karras_timesteps(sde, 6, dtype=jnp.float64)
        closed = float(S.gaussian_solver_error(step, ts, fit))
        # x_T from the Gaussian's own marginal at T: N(mu, Sigma + T^2 I) (a = 1)
        z = jax.random.normal(jax.random.PRNGKey(4), (20000, 4), jnp.float64)
        x_T = fit.mean[None] + (z * jnp.sqrt(fit.eigvals + sde.T**2)) @ fit.eigvecs.T
        out = S.sample(step, S.gaussian_score(sde, fit), jax.random.PRNGKey(0), x_T, ts).x
        exact = S.gaussian_teleport(sde, x_T, sde.T, ts[-1], fit)
        a, s = sde.marginal_coeffs(ts[-1:])
        y = (exact - a * fit.mean) @ fit.eigvecs
        exact = fit.mean + (y * (a * fit.eigvals / (a**2 * fit.eigvals + s**2))) @ fit.eigvecs.T
        sq = np.asarray(jnp.sum((out - exact) ** 2, axis=1))
        assert abs(sq.mean() - closed) < 4 * sq.std() / math.sqrt(len(sq)), (sq.mean(), closed)


def test_fitted_grid_beats_karras_on_its_gaussian_and_is_cached():
    with x64():
        sde, fit = EDM(), _moment_fit(_mixture64())
        for n in (5, 9):
            step = S.dpmpp_2m(sde)
            karras = S.karras_timesteps(sde, n, dtype=jnp.float64)
            fitted = S.fitted_timesteps(step, n, fit, iters=150)
            assert fitted.shape == (n + 1,) and bool(jnp.all(jnp.diff(fitted) < 0))
            assert float(fitted[0]) == sde.T and float(fitted[-1]) == sde.t_end
            assert float(S.gaussian_solver_error(step, fitted, fit)) < 0.5 * float(S.gaussian_solver_error(step, karras, fit))
            assert S.fitted_timesteps(step, n, fit, iters=150) is fitted  # cached per (step, n, fit)


# --- contracts ---------------------------------------------------------------------------------

NEW_STEPS = {"unipc": {}, "dpmpp_3m": {}, "dpmpp_3m_sde": {}}


@pytest.mark.parametrize("name", sorted(NEW_STEPS))
def test_new_steps_by_name_in_both_precisions_on_every_grid_and_batch_independent(name):
    sde = VPSDE()
    gm = mixture_2d()
    step = S.get_step(name, sde)
    assert step == S.get_step(name, sde) and hash(step) == hash(S.get_step(name, sde))
    key = jax.random.PRNGKey(0)
    for grid in S.TIME_GRIDS:
        x_init = S.prior_sample(sde, key, (24, 2))
        res = S.sample(step, gm.score_fn(sde), key, x_init, S.TIME_GRIDS[grid](sde, 8))
        x, nfe = res.x, res.nfe
        assert x.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(x))) and int(nfe[0]) == 9, grid
    # batch independence, in float64: XLA vectorises the batch-8 and batch-24 mixture scores
    # differently, and an example between two components at the last, small sigma turns a last-bit
    # change of its component log-densities (of order |x - a mu|^2 / sigma^2) into ~3e-5 in float32
    # after the SDE steps (more on other CPUs); in float64 that is ~1e-12, far below a batch effect
    with x64():
        keys = S.example_keys(key, 24)
        x_init = S.prior_sample(sde, key, (24, 2), jnp.float64)
        for grid in S.TIME_GRIDS:
            ts = S.TIME_GRIDS[grid](sde, 8, dtype=jnp.float64)
            x = S.sample(step, gm.score_fn(sde), key, x_init, ts).x
            res = S.sample(step, gm.score_fn(sde), keys[5:13], x_init[5:13], ts)
            part = res.x
            np.testing.assert_allclose(part, x[5:13], atol=1e-9, err_msg=grid)
            assert x.dtype == jnp.float64 and bool(jnp.all(jnp.isfinite(x)))


def test_unipc_and_3m_reproduce_the_mixture_for_new_processes():
    """UniPC-3 and DPM-Solver++(3M-SDE) sample the 2-D mixture under EDM and rectified flow."""
    gm, n = mixture_2d(), 2000
    check = MixtureCheck(gm, n)
    key = jax.random.PRNGKey(9)
    for sde, step, grid, steps in ((EDM(), S.unipc(EDM()), "karras", 30),
                                   (RectifiedFlow(), S.unipc(RectifiedFlow()), "log_snr", 30),
                                   (VPSDE(), S.dpmpp_3m_sde(VPSDE()), "log_snr", 300)):
        x = S.sample(step, gm.score_fn(sde), key, S.prior_sample(sde, key, (n, 2)), S.TIME_GRIDS[grid](sde, steps)).x
        check.check(x, f"{type(sde).__name__}/{step.name}")


def test_bad_options_say_what_was_expected():
    sde = VPSDE()
    with pytest.raises(ValueError, match="order must be 1..3"):
        S.unipc(sde, order=4)
    with pytest.raises(ValueError, match="variant"):
        S.unipc(sde, variant="bh3")
    with pytest.raises(ValueError, match="weighting"):
        S.dpmpp_3m(sde, weighting="other")
    with pytest.raises(ValueError, match="kappa must be > 0"):
        S.teleport_t_skip(sde, gaussian_setup(), -1.0)
    with pytest.raises(ValueError, match="dimension"):
        S.gaussian_teleport(sde, jnp.zeros((2, 3)), 1.0, 0.5, gaussian_setup())
    with pytest.raises(ValueError, match="t_max must lie in"):
        S.karras_timesteps(sde, 5, t_max=2.0)


def test_run_layer_builds_a_teleporting_sampler_on_a_fitted_grid(tmp_path):
    """sampling.grid = "fitted" and sampling.teleport = "auto": the grid starts at the rule's t_skip, is
    strictly decreasing, and the data's Gaussian is stored with the run (and read back, not refitted)."""
    from diffjax import configs
    from diffjax.run import build

    config = configs.load_config("toy2d", ["sampling.method='unipc'", "sampling.grid='fitted'",
                                           "sampling.teleport='auto'", "sampling.num_steps=5", "sampling.order=3"])
    sde = build.build_sde(config)
    sampler = build.build_sampler(config, sde, str(tmp_path))
    fit = S.GaussianFit.load(str(tmp_path / "gaussian_fit.npz"))
    assert sampler.t_skip == pytest.approx(S.teleport_t_skip(sde, fit, nfe=6))
    ts = np.asarray(sampler.timesteps)
    assert ts[0] == pytest.approx(sampler.t_skip) and np.all(np.diff(ts) < 0) and len(ts) == 6
    res = sampler(S.gaussian_score(sde, fit), jax.random.PRNGKey(0), S.prior_sample(sde, jax.random.PRNGKey(0), (8, 2)))
    x, nfe = res.x, res.nfe
    assert int(nfe[0]) == 6 and bool(jnp.all(jnp.isfinite(x)))
    assert build.build_sampler(config, sde, str(tmp_path)) == sampler  # the stored fit: the same sampler value
    with pytest.raises(ValueError, match="sampling.teleport must be"):
        build.build_sampler(configs.load_config("toy2d", ["sampling.teleport='far'"]), sde)
