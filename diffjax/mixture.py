"""Gaussian mixtures: data whose every forward marginal, score and log-density is known exactly.

For data x0 ~ sum_k pi_k N(mu_k, Sigma_k) and a process with marginal coefficients (a(t), sigma(t)),
the marginal at time t is again a mixture,

    p_t = sum_k pi_k N(a mu_k, C_k(t)),     C_k(t) = a(t)^2 Sigma_k + sigma(t)^2 I,

so the exact score grad log p_t, the exact log-density and exact samples are available at any t.
They are the ground truth of the test-suite and an analytic score for trying samplers.
Covariances are handled in each component's eigenbasis (Sigma_k = U diag(lam) U^T), where C_k is
diagonal: a(t)^2 lam + sigma(t)^2.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import check_int, is_traced
from diffjax._jit import Bound, bind
from diffjax.processes import SDE, check_batch_time

Array = jax.Array

__all__ = ["GaussianMixture"]


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """A mixture of K Gaussians in d dimensions: weights (K,), means (K, d), covariances (K, d, d)."""

    weights: Array
    means: Array
    covs: Array
    # (eigenvalues (K, d), eigenvectors (K, d, d)) of covs: computed once from concrete covariances
    # and carried as data, so a traced mixture (inside a compiled sampler) does not decompose again
    eig: tuple | None = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self):
        fields = (self.weights, self.means, self.covs)
        for name, v in zip(("weights", "means", "covs"), fields):
            if isinstance(v, (bool, int, float, complex, np.number, np.bool_)):
                raise TypeError(f"GaussianMixture: {name} must be an array ({name} (K,), means (K, d), covs (K, d, d)); "
                                f"got the number {v!r}")
            if isinstance(v, (jax.Array, np.ndarray)) and not is_traced(v) and not jnp.issubdtype(v.dtype, jnp.floating):
                raise TypeError(f"GaussianMixture: {name} must be floating point; got {v.dtype} (use "
                                "jnp.asarray(..., jnp.float32))")
        if not all(isinstance(v, (jax.Array, np.ndarray, list, tuple)) for v in fields):
            return  # tree-utility placeholders pass through unchecked
        w, m, c = (np.shape(v) for v in fields)
        if len(w) != 1 or len(m) != 2 or len(c) != 3 or m[0] != w[0] or c != (w[0], m[1], m[1]):
            raise ValueError(
                f"GaussianMixture needs weights (K,), means (K, d), covs (K, d, d); got {w}, {m}, {c}"
            )
        if self.eig is not None and not any(is_traced(v) for v in jax.tree_util.tree_leaves(self.eig)):
            lam, u = self.eig
            if np.shape(lam) != (w[0], m[1]) or np.shape(u) != c or not (
                    np.all(np.isfinite(lam)) and np.all(np.isfinite(u)) and np.all(np.asarray(lam) >= 0)):
                raise ValueError("GaussianMixture: eig must be the covariances' (eigenvalues >= 0 (K, d), eigenvectors "
                                 "(K, d, d)), finite; leave it None to compute them")
        if self.eig is None and not any(is_traced(v) for v in fields):
            w, mu, cov = (np.asarray(v, np.float64) for v in fields)
            if not all(np.all(np.isfinite(v)) for v in (w, mu, cov)):
                raise ValueError("GaussianMixture: weights, means and covs must be finite; got NaN or Inf")
            if np.any(w < 0) or abs(w.sum() - 1.0) > 1e-5:
                raise ValueError(f"GaussianMixture: weights must be >= 0 and sum to 1; got {np.round(w, 6).tolist()} "
                                 f"(sum {w.sum():.6g})")
            if not np.allclose(cov, np.swapaxes(cov, 1, 2), rtol=1e-5, atol=1e-8):
                raise ValueError("GaussianMixture: every covariance must be symmetric")
            lam, u = np.linalg.eigh(cov)
            floor = -1e-6 * np.maximum(np.abs(lam).max(axis=1), 1e-30)
            if np.any(lam.min(axis=1) < floor):
                k = int(np.argmin(lam.min(axis=1) - floor))
                raise ValueError(f"GaussianMixture: covariance {k} is not positive semi-definite (smallest eigenvalue "
                                 f"{lam[k].min():.3g})")
            dtype = jnp.asarray(self.covs).dtype  # float64 mixtures keep float64 eigenpairs
            object.__setattr__(self, "eig", (jnp.asarray(np.maximum(lam, 0.0), dtype), jnp.asarray(u, dtype)))

    @property
    def num_components(self) -> int:
        return jnp.shape(self.weights)[0]

    @property
    def dim(self) -> int:
        return jnp.shape(self.means)[1]

    def _check_x(self, x: Array) -> None:
        if jnp.ndim(x) != 2 or jnp.shape(x)[1] != self.dim:
            raise ValueError(f"x must have shape (batch, {self.dim}); got {jnp.shape(x)}")

    # --- sampling ----------------------------------------------------------------------------

    def sample_with_labels(self, key: Array, n: int) -> tuple[Array, Array]:
        """n exact samples (n, d) and their component labels (n,)."""
        check_int("GaussianMixture.sample", "n", n, lo=1)
        k_c, k_z = jax.random.split(key)
        labels = jax.random.categorical(k_c, jnp.log(self.weights), shape=(n,))
        chol = jnp.linalg.cholesky(self.covs)
        z = jax.random.normal(k_z, (n, self.dim))
        x = self.means[labels] + jnp.einsum("nij,nj->ni", chol[labels], z)
        return x, labels

    def sample(self, key: Array, n: int) -> Array:
        """n exact samples, shape (n, d)."""
        return self.sample_with_labels(key, n)[0]

    def marginal(self, sde: SDE, t: float) -> "GaussianMixture":
        """The mixture p_t at one time t (scalar)."""
        a, s = sde.marginal_coeffs(jnp.asarray(t, jnp.float32))
        covs = a**2 * self.covs + s**2 * jnp.eye(self.dim)
        return GaussianMixture(self.weights, a * self.means, covs)

    # --- densities and scores at per-example times ---------------------------------------------

    @property
    def _batch_last(self) -> bool:
        return self.dim < 32

    def _components(self, x: Array, a: Array, s: Array) -> tuple[Array, Array, Array]:
        """Per example and component: log pi_k N(x; a mu_k, C_k), C_k^{-1}(x - a mu_k) and C_k's
        eigenvalues, of shapes (K, B), (K, d, B), (K, d, B) below 32 dimensions (batch-last) and
        (B, K), (B, K, d), (B, K, d) from 32 on; ``_axes`` gives the component and dimension axes.

        Batch-last keeps XLA:CPU's elementwise loops along the batch where d and K are a few (the
        score at d = 3, batch 1024: 18 us against 130 us batch-first). From d = 32 on the batch-first
        layout is as fast, and its Jacobian-vector products cheaper (the exact divergence at d = 64,
        batch 64: 2.6 ms against 9.3 ms batch-last)."""
        lam, u = self.eig if self.eig is not None else jnp.linalg.eigh(self.covs)  # (K, d), (K, d, d)
        lam, u = lam.astype(x.dtype), u.astype(x.dtype)
        if self._batch_last:
            a, s = a[None, None, :], s[None, None, :]
            var = a**2 * lam[:, :, None] + s**2
            diff = x.T[None] - a * self.means[:, :, None]
            proj = jnp.einsum("kji,kjb->kib", u, diff)  # U_k^T (x - a mu_k)
            prec_diff = jnp.einsum("kij,kjb->kib", u, proj / var)
            log_w = jnp.log(self.weights)[:, None]
        else:
            a, s = a[:, None, None], s[:, None, None]
            var = a**2 * lam[None] + s**2
            diff = x[:, None, :] - a * self.means[None]
            proj = jnp.einsum("kji,bkj->bki", u, diff)
            prec_diff = jnp.einsum("kij,bkj->bki", u, proj / var)
            log_w = jnp.log(self.weights)[None]
        _, dax = self._axes
        log_det = jnp.sum(jnp.log(var), axis=dax)
        maha = jnp.sum(proj**2 / var, axis=dax)
        log_comp = log_w - 0.5 * (self.dim * math.log(2 * math.pi) + log_det + maha)
        return log_comp, prec_diff, var

    @property
    def _axes(self) -> tuple[int, int]:
        """(component axis, dimension axis) of ``_components``' outputs."""
        return (0, 1) if self._batch_last else (1, 2)

    def _batch_first(self, v: Array) -> Array:
        """A (K, B) array of the batch-last layout as (B, K); a batch-first (B, K) one unchanged."""
        return v.T if self._batch_last else v

    def _score(self, log_comp: Array, prec_diff: Array, out: str = "bd") -> tuple[Array, Array]:
        """Responsibilities (in ``_components``' layout) and the score -sum_k r_k C_k^{-1}(x - a mu_k),
        (B, d) for ``out="bd"``, (d, B) for "db". One contraction either way: a reduction over K
        followed by a transpose costs XLA:CPU 3x more at d = 3."""
        resp = jax.nn.softmax(log_comp, axis=self._axes[0])
        return resp, -jnp.einsum(("kb,kdb->" if self._batch_last else "bk,bkd->") + out, resp, prec_diff)

    def _coeffs(self, sde: SDE | None, x: Array, t: Array | None) -> tuple[Array, Array]:
        self._check_x(x)
        n = x.shape[0]
        if sde is None:
            return jnp.ones((n,)), jnp.zeros((n,))
        check_batch_time(x, t, T=sde.T)
        sde.require_gaussian("GaussianMixture's closed-form marginals")
        return sde.marginal_coeffs(t)

    def log_prob(self, x: Array, sde: SDE | None = None, t: Array | None = None) -> Array:
        """log p(x) (B,) of the data, or of the marginal p_t when ``sde`` and ``t`` (B,) are given."""
        log_comp, _, _ = self._components(x, *self._coeffs(sde, x, t))
        return jax.nn.logsumexp(log_comp, axis=self._axes[0])

    def component_log_probs(self, x: Array, sde: SDE | None = None, t: Array | None = None) -> Array:
        """log pi_k N(x; a mu_k, a^2 Sigma_k + sigma^2 I) (B, K): the joint log-densities of example and
        component, i.e. the exact classifier's logits (log p_t(k | x) up to a per-example constant)."""
        log_comp, _, _ = self._components(x, *self._coeffs(sde, x, t))
        return self._batch_first(log_comp)

    def responsibilities(self, x: Array, sde: SDE | None = None, t: Array | None = None) -> Array:
        """Posterior component probabilities p(k | x_t) (B, K): the exact classifier of the mixture."""
        log_comp, _, _ = self._components(x, *self._coeffs(sde, x, t))
        return self._batch_first(jax.nn.softmax(log_comp, axis=self._axes[0]))

    def score(self, x: Array, sde: SDE | None = None, t: Array | None = None) -> Array:
        """grad_x log p(x) (B, d) of the data, or of p_t when ``sde`` and ``t`` (B,) are given."""
        log_comp, prec_diff, _ = self._components(x, *self._coeffs(sde, x, t))
        return self._score(log_comp, prec_diff)[1]

    def score_divergence(self, x: Array, sde: SDE | None = None, t: Array | None = None) -> Array:
        """The divergence (Laplacian of log p) ∇·s(x) (B,) in closed form, at the cost of one score.

        With responsibilities r_k, precisions P_k = C_k^{-1} and g_k = -P_k (x - a mu_k), the score's
        Jacobian is sum_k r_k (g_k g_k^T - P_k) - s s^T, so

            ∇·s = sum_k r_k (|g_k|^2 - tr P_k) - |s|^2,

        each term diagonal in C_k's eigenbasis. The exact divergence by automatic differentiation
        costs d Jacobian-vector products instead (see :func:`diffjax.likelihood.log_likelihood`).
        """
        log_comp, prec_diff, var = self._components(x, *self._coeffs(sde, x, t))
        kax, dax = self._axes
        resp, score = self._score(log_comp, prec_diff, "db" if self._batch_last else "bd")
        # (the score's dimension axis is kax too: (d, B) batch-last, (B, d) batch-first)
        return (jnp.sum(resp * (jnp.sum(prec_diff**2, axis=dax) - jnp.sum(1.0 / var, axis=dax)), axis=kax)
                - jnp.sum(score**2, axis=kax))

    def score_divergence_fn(self, sde: SDE) -> Bound:
        """``div_fn(x, t)`` = ∇·s of the process's marginals (B,), for ``log_likelihood(divergence=...)``."""
        return bind(_mixture_score_divergence, self, sde)

    def score_fn(self, sde: SDE) -> Bound:
        """The exact score of the process's marginals, ``score_fn(x, t)``: a pytree whose leaves are
        the mixture's arrays (see :func:`diffjax._jit.bind`), so samplers compile once for it."""
        return bind(_mixture_score, self, sde)


jax.tree_util.register_dataclass(GaussianMixture, data_fields=["weights", "means", "covs", "eig"], meta_fields=[])


def _mixture_score(mixture: GaussianMixture, sde: SDE, x: Array, t: Array) -> Array:
    return mixture.score(x, sde, t)


def _mixture_score_divergence(mixture: GaussianMixture, sde: SDE, x: Array, t: Array) -> Array:
    return mixture.score_divergence(x, sde, t)
