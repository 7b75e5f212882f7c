"""Statistics shared by the tests: exact mixture moments, two-sample distances and noise floors."""

import contextlib
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import GaussianMixture


def x64():
    """Run a block in float64 (jax.enable_x64 is new; older JAX has jax.experimental.enable_x64)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64

    return enable_x64()


def mixture_2d() -> GaussianMixture:
    return GaussianMixture(
        jnp.array([0.3, 0.7]),
        jnp.array([[-2.0, 0.0], [1.5, 1.0]]),
        jnp.stack([0.3 * jnp.eye(2), jnp.array([[0.4, 0.1], [0.1, 0.2]])]),
    )


def rotated_mixture(d: int, seed: int = 0, k: int = 3) -> GaussianMixture:
    """k anisotropic components in d dimensions: rotated covariances with eigenvalues in [0.05, 0.5],
    means ~ N(0, 1.5^2), weights uniform in [0.5, 1.5] normalised (float64 under x64)."""
    rng = np.random.default_rng(seed)
    covs = []
    for _ in range(k):
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        covs.append(q @ np.diag(rng.uniform(0.05, 0.5, d)) @ q.T)
    w = rng.uniform(0.5, 1.5, k)
    return GaussianMixture(jnp.asarray(w / w.sum()), jnp.asarray(rng.normal(0, 1.5, (k, d))), jnp.asarray(np.stack(covs)))


def mixture_3d() -> GaussianMixture:
    """Anisotropic 3-D mixture: unequal weights, rotated covariances with eigenvalues in [0.05, 0.4]."""
    rng = np.random.default_rng(0)
    covs = []
    for _ in range(3):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        covs.append(q @ np.diag(rng.uniform(0.05, 0.4, 3)) @ q.T)
    return GaussianMixture(jnp.array([0.5, 0.3, 0.2]), jnp.asarray(rng.normal(0, 1.5, (3, 3)), jnp.float32),
                           jnp.asarray(np.stack(covs), jnp.float32))


def random_mixture(d: int, spread: float) -> GaussianMixture:
    """Three components in d dimensions: means 2 N(0, I), covariances A A^T + 0.1 I with A of entries
    spread N(0, 1) (fixed keys, so the same mixture every time)."""
    means = 2.0 * jax.random.normal(jax.random.PRNGKey(42), (3, d))
    a = spread * jax.random.normal(jax.random.PRNGKey(1), (3, d, d))
    covs = jnp.einsum("kij,klj->kil", a, a) + 0.1 * jnp.eye(d)
    return GaussianMixture(jnp.array([0.2, 0.3, 0.5]), means, covs)


def mixture_16d() -> GaussianMixture:
    return random_mixture(16, 0.15)


def mixture_moments(gm: GaussianMixture):
    """Exact mean and covariance: mu = sum pi mu_k, C = sum pi (Sigma_k + mu_k mu_k^T) - mu mu^T."""
    w, m, c = (np.asarray(v, np.float64) for v in (gm.weights, gm.means, gm.covs))
    mu = w @ m
    cov = np.einsum("k,kij->ij", w, c + np.einsum("ki,kj->kij", m, m)) - np.outer(mu, mu)
    return mu, cov


def mmd2(x, y):
    """Unbiased squared MMD with a Gaussian kernel of bandwidth^2 = median squared distance of y."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

    def sq(a, b):
        return (a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T

    dyy = sq(y, y)
    bw = np.median(dyy[np.triu_indices(len(y), 1)])
    kxx, kyy, kxy = np.exp(-sq(x, x) / bw), np.exp(-dyy / bw), np.exp(-sq(x, y) / bw)
    n, m = len(x), len(y)
    np.fill_diagonal(kxx, 0.0)
    np.fill_diagonal(kyy, 0.0)
    return kxx.sum() / (n * (n - 1)) + kyy.sum() / (m * (m - 1)) - 2 * kxy.mean()


class MixtureCheck:
    """Compares samples with a mixture: moments, component weights and MMD, each against its
    Monte-Carlo noise floor measured on exact samples of the same size."""

    def __init__(self, gm: GaussianMixture, n: int, repeats: int = 40):
        self.gm, self.n = gm, n
        self.mu, self.cov = mixture_moments(gm)
        self.reference = np.asarray(gm.sample(jax.random.PRNGKey(1000), n))
        nulls, cov_errs = [], []
        for r in range(repeats):
            exact = np.asarray(gm.sample(jax.random.PRNGKey(2000 + r), n))
            nulls.append(mmd2(exact, self.reference))
            cov_errs.append(self._cov_err(exact))
        self.mmd_threshold = float(np.mean(nulls) + 5 * np.std(nulls))
        self.cov_floor = float(np.mean(cov_errs))

    def _cov_err(self, x):
        return np.linalg.norm(np.cov(np.asarray(x, np.float64).T) - self.cov) / np.linalg.norm(self.cov)

    def check(self, x, label=""):
        x = np.asarray(x, np.float64)
        assert x.shape == (self.n, self.mu.shape[0]) and np.all(np.isfinite(x)), label
        diff = x.mean(0) - self.mu
        t2 = self.n * diff @ np.linalg.solve(self.cov, diff)  # ~ chi^2_d for exact samples
        d = len(self.mu)
        assert t2 < d + 6 * math.sqrt(2 * d) + 10, f"{label}: mean off, Hotelling T^2 = {t2:.1f} (d = {d})"
        cov_err = self._cov_err(x)
        assert cov_err < 2.5 * self.cov_floor, f"{label}: covariance off by {cov_err:.4f} (floor {self.cov_floor:.4f})"
        resp = np.asarray(self.gm.responsibilities(jnp.asarray(x, jnp.float32)), np.float64)
        w_hat, w_se = resp.mean(0), resp.std(0) / math.sqrt(self.n) + 1e-4
        w = np.asarray(self.gm.weights)
        assert np.all(np.abs(w_hat - w) < 5 * w_se), f"{label}: weights {w_hat} vs {w}"
        m = mmd2(x, self.reference)
        assert m < self.mmd_threshold, f"{label}: MMD^2 {m:.2e} above the noise floor {self.mmd_threshold:.2e}"
        return {"t2": t2, "cov_err": cov_err, "weights": w_hat, "mmd2": m}


@contextlib.contextmanager
def read_only_copy(src: str, where: str):
    """A copy of the folder ``src`` inside ``where``/read_only, in a place nobody may write: a read-only
    tmpfs when this process may mount one (root), else the copy with its write permissions removed
    (which binds every user but root). Yields the read-only folder holding the copy (``None`` as
    ``src`` copies nothing); skips the test when neither works."""
    import shutil
    import subprocess

    import pytest

    target = os.path.join(where, "read_only")
    os.makedirs(target, exist_ok=True)
    mounted = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", target],
                                 capture_output=True).returncode == 0
        if not mounted:
            pytest.skip("running as root without permission to mount a read-only tmpfs")
    if src is not None:
        shutil.copytree(src, os.path.join(target, os.path.basename(src)))
    try:
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", target], check=True, capture_output=True)
        else:
            for d, dirs, files in os.walk(target):
                for name in dirs + files:
                    p = os.path.join(d, name)
                    os.chmod(p, os.stat(p).st_mode & ~0o222)
            os.chmod(target, os.stat(target).st_mode & ~0o222)
        yield target
    finally:
        if mounted:
            subprocess.run(["umount", "-l", target], capture_output=True)
        else:
            for d, dirs, files in os.walk(target):
                os.chmod(d, os.stat(d).st_mode | 0o200)
