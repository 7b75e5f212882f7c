"""One- and two-step students against the exact flow of a Gaussian (the probability flow of Gaussian
data is linear, so every method's fixed point is known in closed form): consistency, progressive
distillation, reflow and MeanFlow (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffjax import distill as D
from diffjax.processes import VPSDE, RectifiedFlow
from helpers import x64

MU, VAR = np.array([0.7, -0.4]), np.array([0.3, 1.6])   # float64 inside x64 blocks


def _exact_consistency(sde, theta, x, t):
    """f*(x, t) + theta g(t): the exact consistency function, perturbed by a parameter along
    g = sigma^ / (1 + sigma^) (zero at the boundary, so only self-consistency can see it)."""
    sh = sde.noise_level(t)[:, None]
    return D.gaussian_flow_map(sde, MU, VAR, x, t, jnp.zeros_like(t)) + theta * sh / (1.0 + sh)


def test_ect_mapping_function_closes_in_with_the_stage():
    t = jnp.geomspace(1e-3, 80.0, 200)
    r0 = D.ect_r(t, 0)
    assert np.all(r0 >= 0) and np.all(r0 <= t)
    assert np.all(r0[t < np.log(7.0) - 1e-3] == 0) and np.all(r0[t > np.log(7.0) + 1e-3] > 0)
    ratios = [float(jnp.mean(D.ect_r(t[t > 0.1], s) / t[t > 0.1])) for s in (1, 4, 10)]
    assert ratios[0] < ratios[1] < ratios[2] and ratios[2] > 0.99


def _consistency_case(kind):
    sde = VPSDE()
    student = lambda th, x, t: _exact_consistency(sde, th, x, t)  # noqa: E731
    if kind == "exact":       # CD with the exact flow map as the teacher's step
        return sde, D.consistency_loss_fn(sde, student, stage_steps=1, teacher_step=lambda x, t, r: D.gaussian_flow_map(
            sde, MU, VAR, x, t, r))
    if kind == "heun":        # CD with a Heun step of the exact denoiser
        return sde, D.consistency_loss_fn(sde, student, stage_steps=1, teacher=D.gaussian_denoiser(sde, MU, VAR))
    return sde, D.consistency_loss_fn(sde, student, stage_steps=1, huber_c=10.0)   # CT, ~ squared metric


@pytest.mark.parametrize("kind", ["exact", "heun", "ct"])
def test_consistency_loss_is_zero_at_the_exact_function_and_moves_a_perturbed_one_towards_it(kind):
    with x64():
        sde, loss_fn = _consistency_case(kind)
        x0 = MU + jnp.sqrt(VAR) * jax.random.normal(jax.random.PRNGKey(0), (4096, 2), jnp.float64)
        theta0 = jnp.zeros(2, jnp.float64)
        key = jax.random.PRNGKey(1)
        stage = 5 if kind == "heun" else 1     # Heun's error over a step of the teacher falls as (t - r)^2 (stage 5: r ~ 0.97 t)
        loss = lambda th: loss_fn(key, th, {"x": x0}, stage)[0]  # noqa: E731
        if kind == "exact":
            assert float(loss(theta0)) < 1e-9                      # zero loss at f* (float64 roundoff)
        if kind == "heun":
            assert float(loss(theta0)) < 0.02 * float(loss(theta0 + 0.3))   # Heun's O(dt^3) against a perturbed f
        grad = np.asarray(jax.grad(loss)(theta0 + 0.3))
        assert np.all(grad > 0)                                    # a descent step moves theta back to 0, f*
        if kind != "ct":
            assert np.linalg.norm(np.asarray(jax.grad(loss)(theta0))) < 0.05 * np.linalg.norm(grad)


def test_consistency_sampling_with_the_exact_function_is_exact_for_any_steps():
    with x64():
        sde = VPSDE()
        f = jax.tree_util.Partial(_exact_consistency, sde, jnp.zeros(2, jnp.float64))
        z = jax.random.normal(jax.random.PRNGKey(2), (40_000, 2), jnp.float64)
        for n in (1, 2, 4):
            ts = D.consistency_timesteps(sde, n)
            out = D.consistency_sample(sde, f, jax.random.PRNGKey(3), z, ts)
            assert np.all(np.asarray(out.nfe) == n)
            x = np.asarray(out.x)
            # from x_T ~ N(0, I) the VP flow at T carries a(T)^2 var ~ 2e-9 of the data: exact to MC error
            np.testing.assert_allclose(x.mean(0), MU, atol=4 * np.sqrt(VAR.max() / len(x)))
            np.testing.assert_allclose(x.var(0), VAR, rtol=0.03)


def test_a_teleported_consistency_sampler_is_exact_for_gaussian_data():
    """ConsistencySampler from t_start < T: the prior samples go to t_start by the fitted Gaussian's
    exact flow (no evaluation), then the student; with the exact consistency function (handed over as
    the score whose Tweedie denoiser it is) and the exact fit, samples are N(MU, VAR) for any steps."""
    from diffjax.samplers import GaussianFit, teleport_t_skip

    with x64():
        sde = VPSDE()
        f = jax.tree_util.Partial(_exact_consistency, sde, jnp.zeros(2, jnp.float64))

        def score(x, t):   # Tweedie: f = (x + sigma^2 s) / a  <=>  s = (a f - x) / sigma^2
            a, sig = sde.marginal_coeffs(t)
            return (a[:, None] * f(x, t) - x) / sig[:, None] ** 2

        fit = GaussianFit(jnp.asarray(MU), jnp.asarray(VAR), jnp.eye(2, dtype=jnp.float64), 0.0)
        t_start = teleport_t_skip(sde, fit, 3.0)
        assert 0.3 < t_start < 0.9
        z = jax.random.normal(jax.random.PRNGKey(2), (40_000, 2), jnp.float64)
        for n in (1, 2):
            ts = D.consistency_timesteps(sde, n, t_start=t_start)
            assert ts[0] == t_start and np.all(np.diff(ts) < 0)
            out = D.ConsistencySampler(sde, tuple(float(v) for v in ts), fit)(score, jax.random.PRNGKey(3), z)
            assert np.all(np.asarray(out.nfe) == n)
            x = np.asarray(out.x)
            np.testing.assert_allclose(x.mean(0), MU, atol=4 * np.sqrt(VAR.max() / len(x)))
            np.testing.assert_allclose(x.var(0), VAR, rtol=0.03)
        with pytest.raises(ValueError, match="needs the data's Gaussian fit"):
            D.ConsistencySampler(sde, (t_start,))
        with pytest.raises(ValueError, match="t_start must lie in"):
            D.consistency_timesteps(sde, 1, t_start=2.0)


def test_heun_teacher_step_against_the_exact_gaussian_flow():
    with x64():
        sde = VPSDE()
        x = jax.random.normal(jax.random.PRNGKey(4), (64, 2), jnp.float64)
        t = jnp.full((64,), 0.5)
        errors = []
        for gap in (0.02, 0.01, 0.005):
            r = t - gap
            exact = D.gaussian_flow_map(sde, MU, VAR, x, t, r)
            heun = D.heun_pf_step(D.gaussian_denoiser(sde, MU, VAR), sde, x, t, r)
            errors.append(float(jnp.max(jnp.abs(heun - exact))))
        assert errors[-1] < 1e-5
        assert errors[0] / errors[1] > 6 and errors[1] / errors[2] > 6     # third order per step
        to_data = D.heun_pf_step(D.gaussian_denoiser(sde, MU, VAR), sde, x, t, jnp.zeros(64))
        np.testing.assert_allclose(to_data, D.gaussian_denoiser(sde, MU, VAR)(x, t), atol=1e-12)


def test_progressive_student_step_reproduces_two_teacher_steps():
    """The x-target is exact: one student DDIM step with D = x~ lands on the teacher's two-step point;
    and a linear student fitted with the loss reproduces the exact Gaussian teacher's two-step map."""
    with x64():
        sde = VPSDE()
        teacher = D.gaussian_denoiser(sde, MU, VAR)

        def student(theta, x, t):          # affine per coordinate: D = alpha x + beta
            return theta[0] * x + theta[1]

        loss_fn = D.progressive_loss_fn(sde, student, teacher, num_steps=1)
        x0 = MU + jnp.sqrt(VAR) * jax.random.normal(jax.random.PRNGKey(5), (2048, 2), jnp.float64)
        opt = optax.adam(0.05)
        theta = jnp.stack([jnp.ones(2), jnp.zeros(2)]).astype(jnp.float64)
        state = opt.init(theta)

        @jax.jit
        def update(theta, state, key):
            g = jax.grad(lambda th: loss_fn(key, th, {"x": x0})[0])(theta)
            upd, state = opt.update(g, state)
            return optax.apply_updates(theta, upd), state

        for i in range(600):
            theta, state = update(theta, state, jax.random.PRNGKey(100 + i))
        z = jax.random.normal(jax.random.PRNGKey(6), (512, 2), jnp.float64)
        one = D.ddim_student_sample(sde, jax.tree_util.Partial(student, theta), z, 1).x
        two = D.ddim_student_sample(sde, teacher, z, 2).x
        assert float(jnp.max(jnp.abs(one - two))) < 5e-3
        # the loss at the fitted student is ~0 (the target is a deterministic linear function of z_t)
        assert float(loss_fn(jax.random.PRNGKey(7), theta, {"x": x0})[0]) < 1e-5


def _rf_velocity_1(x, t):
    """The exact 1-rectified-flow velocity of N(MU, VAR): v = dx/dt along x_t = Psi_{0->t}."""
    s = jnp.sqrt((1 - t)[:, None] ** 2 * VAR + t[:, None] ** 2)
    ds = ((t[:, None] - (1 - t)[:, None] * VAR)) / s
    return -MU + ds / s * (x - (1 - t)[:, None] * MU)


def _rf_velocity_2(x, t):
    """The 2-rectified flow of N(MU, VAR): straight lines from z to MU + sqrt(VAR) z."""
    m = (1 - t)[:, None] * jnp.sqrt(VAR) + t[:, None]
    return (1 - jnp.sqrt(VAR)) * (x - (1 - t)[:, None] * MU) / m - MU


def test_reflow_pairs_and_straightness_of_the_gaussian_rectified_flows():
    with x64():
        z = jax.random.normal(jax.random.PRNGKey(8), (2000, 2), jnp.float64)
        sde = RectifiedFlow()

        def sampler(x):                           # an accurate ODE solve of the exact 1-RF velocity
            return D.euler_sample(lambda y, t: _rf_velocity_1(y, t), x, 8000, t_start=sde.T).x

        zz, x0 = D.reflow_pairs(sampler, sde, z)
        # the exact flow map of N(MU, VAR) from x_T = T z at rectified flow's T = 1 - 1e-3 (standardise by
        # the marginal at T, then the Gaussian OT map); Euler is first order: max error 3.1e-3 at 2000 steps,
        # 7.7e-4 at 8000 (float64)
        T = sde.T
        s_T = jnp.sqrt((1 - T) ** 2 * VAR + T ** 2)
        np.testing.assert_allclose(x0, MU + jnp.sqrt(VAR) * (T * zz - (1 - T) * MU) / s_T, atol=1.5e-3)
        s1 = D.straightness(_rf_velocity_1, z, 400)
        s2 = D.straightness(_rf_velocity_2, z, 400)
        # closed form (Liu et al.; mean terms cancel): sum_i int_0^1 (1 - c_i - ds_i/dt)^2 dt, c_i = sqrt(var_i),
        # s_i(t) = sqrt((1 - t)^2 var_i + t^2); E z^2 = 1 per coordinate
        tt = np.linspace(0, 1, 200001)
        exact = 0.0
        for v in np.asarray(VAR):
            s = np.sqrt((1 - tt) ** 2 * v + tt ** 2)
            exact += np.trapezoid((1 - np.sqrt(v) - (tt - (1 - tt) * v) / s) ** 2, tt)
        assert exact > 0.01                                         # 1-RF is not straight ...
        assert abs(float(jnp.mean(s1)) - exact) < 0.06 * exact      # MC error of 2000 paths: ~3% (chi-square)
        assert float(jnp.max(s2)) < 1e-8                            # ... 2-RF is exactly straight
        # one Euler step of 2-RF is the exact map
        np.testing.assert_allclose(D.euler_sample(_rf_velocity_2, z, 1).x, MU + jnp.sqrt(VAR) * z, atol=1e-12)


def test_reflow_loss_is_zero_at_the_straight_velocity_of_its_pairs():
    with x64():
        z = jax.random.normal(jax.random.PRNGKey(9), (512, 2), jnp.float64)
        x0 = MU + jnp.sqrt(VAR) * z
        loss_fn = D.reflow_loss_fn(lambda p, x, t: _rf_velocity_2(x, t))
        assert float(loss_fn(jax.random.PRNGKey(0), None, {"x": x0, "z": z})[0]) < 1e-20
        loss_1 = D.reflow_loss_fn(lambda p, x, t: _rf_velocity_1(x, t))
        assert float(loss_1(jax.random.PRNGKey(0), None, {"x": x0, "z": z})[0]) > 1e-3


def _u_exact(z, r, t):
    """MeanFlow's exact average velocity of N(MU, VAR) under rectified flow."""
    sde = RectifiedFlow()
    return (z - D.gaussian_flow_map(sde, MU, VAR, z, t, r)) / (t - r)[:, None]


def test_meanflow_identity_holds_for_the_exact_average_velocity():
    with x64():
        n = 256
        k1, k2, k3 = jax.random.split(jax.random.PRNGKey(10), 3)
        a, b = jax.random.uniform(k1, (n,), jnp.float64, 0.05, 0.95), jax.random.uniform(k2, (n,), jnp.float64, 0.05, 0.95)
        t, r = jnp.maximum(a, b) + 0.01, jnp.minimum(a, b)
        x = MU + jnp.sqrt(VAR) * jax.random.normal(k3, (n, 2), jnp.float64)
        eps = jax.random.normal(jax.random.PRNGKey(11), (n, 2), jnp.float64)
        z = (1 - t)[:, None] * x + t[:, None] * eps
        # the conditional velocity eps - x averages to the marginal v*; the identity holds with v*
        v_star = _rf_velocity_1(z, t)
        u, u_tgt = D.meanflow_target(_u_exact, z, r, t, v_star)
        np.testing.assert_allclose(u_tgt, u, atol=1e-9)
        # the 1-D number of the reference (mu 0.7, var 0.3, z 0.4, r 0.2, t 0.9): u* = -0.4804055769
        sde = RectifiedFlow()
        one = (0.4 - D.gaussian_flow_map(sde, 0.7, 0.3, jnp.array([[0.4]]), jnp.array([0.9]), jnp.array([0.2]))) / 0.7
        assert abs(float(one[0, 0]) + 0.4804055769) < 1e-9
        # one step from noise is the exact map
        out = D.meanflow_sample(jax.tree_util.Partial(_u_exact), eps, 1).x
        np.testing.assert_allclose(out, MU + jnp.sqrt(VAR) * eps, atol=1e-9)


def test_meanflow_loss_trains_an_mlp_towards_the_exact_flow():
    """A small MLPFlowMap trained briefly on 2-D Gaussian data: its instantaneous velocity u(z, t, t)
    approaches the exact v* and its one-step samples' mean the data's (the variance of one-step samples
    needs far longer training: experiments/benchmarks/distill.py trains 3000 steps)."""
    from diffjax.models import MLPFlowMap

    net = MLPFlowMap(hidden=(64, 64), embedding_dim=32)
    mu, var = jnp.asarray(MU, jnp.float32), jnp.asarray(VAR, jnp.float32)
    x = mu + jnp.sqrt(var) * jax.random.normal(jax.random.PRNGKey(12), (4096, 2))
    params = net.init(jax.random.PRNGKey(0), x[:2], jnp.ones(2), jnp.zeros(2))
    loss_fn = D.meanflow_loss_fn(net.apply)
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def update(params, state, key):
        kb, kl = jax.random.split(key)
        batch = {"x": x[jax.random.randint(kb, (256,), 0, x.shape[0])]}
        g = jax.grad(lambda p: loss_fn(kl, p, batch)[0])(params)
        upd, state = opt.update(g, state)
        return optax.apply_updates(params, upd), state

    for i in range(800):
        params, state = update(params, state, jax.random.PRNGKey(i))
    z = jax.random.normal(jax.random.PRNGKey(13), (4000, 2))
    t = jnp.linspace(0.2, 0.8, 4000)
    zt = (1 - t)[:, None] * (mu + jnp.sqrt(var) * jax.random.normal(jax.random.PRNGKey(14), (4000, 2))) + t[:, None] * z
    s = jnp.sqrt((1 - t)[:, None] ** 2 * var + t[:, None] ** 2)
    v_star = -mu + ((t[:, None] - (1 - t)[:, None] * var) / s) / s * (zt - (1 - t)[:, None] * mu)
    u_inst = net.apply(params, zt, t, jnp.zeros_like(t))
    rel = float(jnp.sqrt(jnp.mean((u_inst - v_star) ** 2) / jnp.mean(v_star ** 2)))
    assert rel < 0.25
    out = np.asarray(D.meanflow_sample(jax.tree_util.Partial(lambda p, zz, r, tt: net.apply(p, zz, tt, tt - r), params),
                                       z, 1).x)
    np.testing.assert_allclose(out.mean(0), MU, atol=0.15)
