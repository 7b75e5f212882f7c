"""Multistep exponential integrators of order 3: DPM-Solver++(3M) (and 3M-SDE) and UniPC.

All work in data prediction: with the denoiser m = D(x, t) = E[x0 | x_t] and lambda = log(a / sigma),
the probability-flow ODE's exact solution from s to t is

    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda D dlambda,

and a multistep method approximates D along lambda by the stored denoised values of earlier steps
(one score evaluation per step). Steps carry their history in their state and count their own
updates, so they warm up with lower orders; with ``lower_order_final`` the last steps lower the
order again (order min(p, steps left)), which the driver makes possible by telling the step its
grid length (:meth:`with_num_steps`).

- DPM-Solver++(3M) (Lu et al. 2022): ``weighting="taylor"`` (default) uses the Taylor-consistent
  weight 2 phi_3 on the second difference, which is third order (measured in the tests); the
  reference implementations (dpm-solver, diffusers, k-diffusion) weight it phi_3, which makes the
  method second order (``weighting="reference"`` reproduces them).
- UniPC (Zhao et al. 2023): the UniP-p predictor and the UniC corrector, which corrects x_t with the
  evaluation at the predicted point that the next step needs anyway (no extra evaluation); B(h) of
  ``variant`` "bh1" (B = -h) or "bh2" (B = e^{-h} - 1); UniPC-p has order p + 1.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from diffjax.numerics.arrays import expand_to
from diffjax.numerics.linear import solve_small
from diffjax.processes import SDE
from diffjax.samplers.base import Step, normal_like, static_field, step_class, tweedie_denoise

Array = jax.Array

__all__ = ["dpmpp_3m", "dpmpp_3m_sde", "unipc"]


def _history_init(x: Array, size: int):
    """(denoised history (size, *x.shape), lambda history (size, batch), updates done (int32 scalar))."""
    return (jnp.zeros((size,) + x.shape, x.dtype), jnp.zeros((size, x.shape[0]), x.dtype), jnp.zeros((), jnp.int32))


def _push(hist: Array, value: Array) -> Array:
    return jnp.concatenate([value[None].astype(hist.dtype), hist[:-1]], axis=0)


def _effective_order(order: int, i: Array, num_steps: Optional[int], lower_order_final: bool) -> Array:
    """min(order, i + 1) while warming up; and min(., num_steps - i) at the end with lower_order_final."""
    p = jnp.minimum(order, i + 1)
    if lower_order_final and num_steps:
        p = jnp.minimum(p, jnp.maximum(num_steps - i, 1))
    return p


class _Multistep(Step):
    """Shared parts: a grid length the driver can fill in (for ``lower_order_final``), and the validity checks."""

    stochastic = False

    @property
    def needs_grid_length(self) -> bool:
        return self.lower_order_final

    def _check(self, name: str, max_order: int) -> None:
        if isinstance(self.order, bool) or self.order not in range(1, max_order + 1):
            raise ValueError(f"{name} order must be 1..{max_order}; got {self.order!r}")
        if self.num_steps is not None and (not isinstance(self.num_steps, int) or self.num_steps < 1):
            raise ValueError(f"num_steps must be a positive int or None; got {self.num_steps!r}")


def _dpm3_terms(m: Array, hist_m: Array, r0: Array, r1: Array, p: Array, taylor: bool):
    """(D1, D2) of DPM-Solver++(3M) for the current order p (1, 2 or 3); zeros where unused."""
    d1_0 = (m - hist_m[0]) / expand_to(r0, m)
    d1_1 = (hist_m[0] - hist_m[1]) / expand_to(r1, m)
    third = expand_to(p >= 3, m)
    second = expand_to(p >= 2, m)
    d1 = jnp.where(third, d1_0 + expand_to(r0 / (r0 + r1), m) * (d1_0 - d1_1), d1_0)
    d2 = (d1_0 - d1_1) / expand_to(r0 + r1, m)
    d1 = jnp.where(second, d1, 0.0)
    d2 = jnp.where(third, d2 * (2.0 if taylor else 1.0), 0.0)
    return d1, d2


def _gaps(sde: SDE, t: Array, t_next: Array, hist_lam: Array):
    """(h, lambda_t, r0, r1): step in lambda and the previous gaps over it (1 where not yet defined)."""
    lam = sde.log_snr(t)
    h = sde.log_snr(t_next) - lam
    h0, h1 = lam - hist_lam[0], hist_lam[0] - hist_lam[1]
    safe = lambda v: jnp.where(v != 0, v, 1.0)  # noqa: E731 - before the history exists
    return h, lam, safe(h0) / h, safe(h1) / h


@step_class
class dpmpp_3m(_Multistep):
    """DPM-Solver++(3M), one score evaluation per step: with h = lambda_next - lambda_t,
    phi1 = e^{-h} - 1, phi2 = phi1 / h + 1, phi3 = phi2 / h - 1/2, r0, r1 the previous lambda gaps
    over h and m0, m1, m2 the current and two previous denoised values,

        D1_0 = (m0 - m1) / r0,  D1_1 = (m1 - m2) / r1,
        D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1) / (r0 + r1),
        x_next = (sigma_next / sigma_t) x - a_next phi1 m0 + a_next phi2 D1 - c a_next phi3 D2,

    c = 2 (``weighting="taylor"``, third order) or 1 (``"reference"``, the published code's weight,
    second order). Warm-up: first order, then second (D2 = 0), then third. ``order`` caps it.
    """

    sde: SDE
    order: int = static_field(3)
    weighting: str = static_field("taylor")
    lower_order_final: bool = static_field(True)
    num_steps: Optional[int] = static_field(None)

    def __post_init__(self):
        self._check("dpmpp_3m", 3)
        if self.weighting not in ("taylor", "reference"):
            raise ValueError(f"unknown dpmpp_3m weighting {self.weighting!r}; expected 'taylor' or 'reference'")
        super().__post_init__()

    @property
    def name(self) -> str:
        return "dpmpp_3m" + ("" if self.weighting == "taylor" else "(reference)")

    def init(self, x):
        return _history_init(x, 2)

    def update(self, keys, x, state, t, t_next, score_fn):
        return _dpmpp3_update(self, 0.0, keys, x, state, t, t_next, score_fn)


def _dpmpp3_update(step, eta: float, keys, x, state, t, t_next, score_fn):
    """The update of DPM-Solver++(3M) (eta = 0) and 3M-SDE (see :class:`dpmpp_3m_sde`)."""
    hist_m, hist_lam, i = state
    sde = step.sde
    _, s_t = sde.marginal_coeffs(t)
    a_n, s_n = sde.marginal_coeffs(t_next)
    h, lam, r0, r1 = _gaps(sde, t, t_next, hist_lam)
    p = _effective_order(step.order, i, step.num_steps, step.lower_order_final)
    m = tweedie_denoise(sde, score_fn, x, t)
    h_eta = (1.0 + eta) * h
    phi1 = jnp.expm1(-h_eta)
    phi2 = phi1 / h_eta + 1.0
    phi3 = phi2 / h_eta - 0.5
    d1, d2 = _dpm3_terms(m, hist_m, r0, r1, p, step.weighting == "taylor")
    ratio = s_n / s_t if eta == 0 else s_n / s_t * jnp.exp(-eta * h)
    x_mean = (expand_to(ratio, x) * x - expand_to(a_n * phi1, x) * m + expand_to(a_n * phi2, x) * d1
              - expand_to(a_n * phi3, x) * d2)
    new_state = (_push(hist_m, m), _push(hist_lam, lam), i + 1)
    if eta == 0:
        return x_mean, new_state
    noise = expand_to(s_n * jnp.sqrt(-jnp.expm1(-2.0 * eta * h)), x) * normal_like(keys, x)
    return x_mean + noise, new_state


@step_class
class dpmpp_3m_sde(_Multistep):
    """Stochastic DPM-Solver++(3M-SDE): with h_eta = (1 + eta) h,

        x_next = (sigma_next / sigma_t) e^{-eta h} x + a_next (1 - e^{-h_eta}) m0
                 + a_next [phi2 D1 - c phi3 D2](h_eta) + sigma_next sqrt(1 - e^{-2 eta h}) z,

    the multistep terms of :class:`dpmpp_3m` with the phis at h_eta (k-diffusion's form, c = 2
    for ``weighting="taylor"``). eta = 0 is DPM-Solver++(3M); eta = 1 (default) injects the
    posterior noise of the reverse SDE.
    """

    sde: SDE
    eta: float = static_field(1.0)
    order: int = static_field(3)
    weighting: str = static_field("taylor")
    lower_order_final: bool = static_field(True)
    num_steps: Optional[int] = static_field(None)

    def __post_init__(self):
        self._check("dpmpp_3m_sde", 3)
        if not self.eta >= 0:
            raise ValueError(f"dpmpp_3m_sde needs eta >= 0; got {self.eta}")
        if self.weighting not in ("taylor", "reference"):
            raise ValueError(f"unknown dpmpp_3m_sde weighting {self.weighting!r}; expected 'taylor' or 'reference'")
        Step.__post_init__(self)

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    @property
    def forward_noise(self) -> bool:
        return float(self.eta) == 1.0

    @property
    def name(self) -> str:
        return f"dpmpp_3m_sde(eta={self.eta:g})"

    def init(self, x):
        return _history_init(x, 2)

    def update(self, keys, x, state, t, t_next, score_fn):
        return _dpmpp3_update(self, self.eta, keys, x, state, t, t_next, score_fn)


# ----------------------------------------------------------------------------------------------
# UniPC


def _unipc_coeffs(h: Array, rks: list[Array], order: int, variant: str):
    """(h phi_1, B(h), rho_predictor (order - 1 values), rho_corrector (order values)) for UniPC of a
    static ``order`` with ratios rks = [r_1, ..., r_{order-1}] (r_order = 1 is appended)."""
    hh = -h
    h_phi_1 = jnp.expm1(hh)
    big_b = hh if variant == "bh1" else h_phi_1
    rks = list(rks) + [jnp.ones_like(h)]
    h_phi_k = h_phi_1 / hh - 1.0
    factorial = 1
    rows, b = [], []
    for k in range(1, order + 1):
        rows.append([r ** (k - 1) for r in rks])
        b.append(h_phi_k * factorial / big_b)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    if order == 1:
        rho_p = []
    elif order == 2:
        rho_p = [jnp.full_like(h, 0.5)]
    else:
        rho_p = solve_small([row[: order - 1] for row in rows[: order - 1]], b[: order - 1])
    rho_c = [jnp.full_like(h, 0.5)] if order == 1 else solve_small(rows, b)
    return h_phi_1, big_b, rho_p, rho_c


def _select(p: Array, options: list[list[Array]], size: int, like: Array) -> list[Array]:
    """Coefficient list of length ``size`` for the dynamic order p (1-based index into ``options``),
    padded with zeros."""
    out = []
    for j in range(size):
        v = jnp.zeros_like(like)
        for o, coeffs in enumerate(options, start=1):
            if j < len(coeffs):
                v = jnp.where(p == o, coeffs[j], v)
        out.append(v)
    return out


@step_class
class unipc(_Multistep):
    """UniPC (Zhao et al. 2023), data prediction, one score evaluation per step.

    At t the step evaluates m_t = D(x_t, t) at the predicted x_t; the UniC corrector (``corrector``)
    first corrects x_t with it,

        x_t^c = (sigma_t / sigma_s) x_s - a_t h phi_1 m_s - a_t B(h) [sum_{k<p} rho^C_k D_k + rho^C_p (m_t - m_s)],

    and the UniP-p predictor then steps from x_t^c (with m_t) to the next time,

        x_next = (sigma_next / sigma_t) x_t^c - a_next h phi_1 m_t - a_next B(h) sum_{k<p} rho^P_k D_k,

    with D_k = (m_{-k} - m_0) / r_k, r_k the earlier lambda gaps over h, and rho solving UniPC's
    linear systems (rho^P = 1/2 at p = 2, rho^C = 1/2 at p = 1). UniP-2 with bh2 is DPM-Solver++(2M);
    UniPC-p has order p + 1. The last update is not corrected (its evaluation would be extra).
    ``predictor="dpmpp"`` puts UniC after DPM-Solver++'s multistep predictor of the same order (the
    (3M) update with the Taylor-consistent weights) instead of UniP.
    """

    sde: SDE
    order: int = static_field(3)
    variant: str = static_field("bh2")
    corrector: bool = static_field(True)
    predictor: str = static_field("unip")
    lower_order_final: bool = static_field(True)
    num_steps: Optional[int] = static_field(None)

    def __post_init__(self):
        self._check("unipc", 3)
        if self.variant not in ("bh1", "bh2"):
            raise ValueError(f"unknown unipc variant {self.variant!r}; expected 'bh1' or 'bh2'")
        if self.predictor not in ("unip", "dpmpp"):
            raise ValueError(f"unknown unipc predictor {self.predictor!r}; expected 'unip' or 'dpmpp'")
        super().__post_init__()

    @property
    def name(self) -> str:
        return f"unipc{self.order}({self.variant}{'' if self.corrector else ', no corrector'})"

    def init(self, x):
        m, lam, i = _history_init(x, 3)
        return (jnp.zeros_like(x), jnp.ones(x.shape[:1], x.dtype), m, lam, i)

    def _weights(self, h, r, p, available):
        """(h phi_1, B, rho^P (2,), rho^C (3,)) at the dynamic order p, from r = [r_1, r_2] of which
        ``available`` exist; the others are replaced by distinct placeholders (-2, -3) so that every
        order's small system stays regular (no NaN, not even in the gradient of an unused branch)."""
        r = [jnp.where(available >= k, r[k - 1], -(k + 1.0)) for k in (1, 2)]
        options = [_unipc_coeffs(h, r[: o - 1], o, self.variant) for o in range(1, self.order + 1)]
        h_phi_1, big_b = options[0][0], options[0][1]
        rho_p = _select(p, [o[2] for o in options], 2, h)
        rho_c = _select(p, [o[3] for o in options], 3, h)
        return h_phi_1, big_b, rho_p, rho_c

    def update(self, keys, x, state, t, t_next, score_fn):
        x_prev, t_prev, hist_m, hist_lam, i = state
        sde = self.sde
        m = tweedie_denoise(sde, score_fn, x, t)
        lam = sde.log_snr(t)
        safe = lambda v: jnp.where(v != 0, v, 1.0)  # noqa: E731 - gaps before the history exists

        if self.corrector:
            # correct the previous update (from x_prev at lambda_{-1} to t) with m at the predicted x
            h_c = lam - hist_lam[0]
            p_c = _effective_order(self.order, i - 1, self.num_steps, self.lower_order_final)
            r_c = [safe(hist_lam[k] - hist_lam[0]) / safe(h_c) for k in (1, 2)]
            h_phi_1, big_b, _, rho_c = self._weights(safe(h_c), r_c, p_c, i - 1)
            d_c = [(hist_m[k] - hist_m[0]) / expand_to(r_c[k - 1], x) for k in (1, 2)]
            _, s_prev = sde.marginal_coeffs(t_prev)
            a_t, s_t = sde.marginal_coeffs(t)
            # rho^C_1..rho^C_{p-1} weigh D_1, D_2; the last one, rho^C_p, weighs m_t - m_s (chosen per
            # example as scalars, so the update combines each array once)
            w1 = jnp.where(p_c >= 2, rho_c[0], 0.0)
            w2 = jnp.where(p_c == 3, rho_c[1], 0.0)
            rho_last = jnp.where(p_c == 1, rho_c[0], jnp.where(p_c == 2, rho_c[1], rho_c[2]))
            corr = expand_to(w1, x) * d_c[0] + expand_to(w2, x) * d_c[1]
            x_c = (expand_to(s_t / s_prev, x) * x_prev - expand_to(a_t * h_phi_1, x) * hist_m[0]
                   - expand_to(a_t * big_b, x) * (corr + expand_to(rho_last, x) * (m - hist_m[0])))
            x = jnp.where(i > 0, x_c, x)

        _, s_t = sde.marginal_coeffs(t)
        a_n, s_n = sde.marginal_coeffs(t_next)
        h = sde.log_snr(t_next) - lam
        p = _effective_order(self.order, i, self.num_steps, self.lower_order_final)
        r = [safe(hist_lam[k - 1] - lam) / h for k in (1, 2)]
        if self.predictor == "dpmpp":
            phi1 = jnp.expm1(-h)
            phi2 = phi1 / h + 1.0
            phi3 = phi2 / h - 0.5
            r1 = safe(hist_lam[0] - hist_lam[1]) / h
            d1, d2 = _dpm3_terms(m, hist_m, -r[0], r1, p, True)
            x_next = (expand_to(s_n / s_t, x) * x - expand_to(a_n * phi1, x) * m + expand_to(a_n * phi2, x) * d1
                      - expand_to(a_n * phi3, x) * d2)
            return x_next, (x, t, _push(hist_m, m), _push(hist_lam, lam), i + 1)
        h_phi_1, big_b, rho_p, _ = self._weights(h, r, p, i)
        d = [(hist_m[k - 1] - m) / expand_to(r[k - 1], x) for k in (1, 2)]
        pred = expand_to(rho_p[0], x) * d[0] + expand_to(rho_p[1], x) * d[1]
        pred = jnp.where(expand_to(p >= 2, x), pred, 0.0)
        x_next = expand_to(s_n / s_t, x) * x - expand_to(a_n * h_phi_1, x) * m - expand_to(a_n * big_b, x) * pred
        return x_next, (x, t, _push(hist_m, m), _push(hist_lam, lam), i + 1)
