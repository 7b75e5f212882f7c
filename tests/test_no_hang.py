"""A sampler never hangs: the patterns that deadlocked XLA:CPU (issue 14) run in a child process
under a watchdog, at a batch of 4096, so a hang fails this test instead of stalling the suite."""

import os
import subprocess
import sys

import pytest

PATTERNS = ("pc", "two_correctors", "heun", "ode_sample", "log_likelihood")


def test_samplers_with_a_lapack_score_return_at_a_batch_of_4096():
    script = os.path.join(os.path.dirname(__file__), "hang_check.py")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_NUM_CPU_DEVICES", None)  # one device, as a user's notebook has
    env["XLA_FLAGS"] = ""
    try:
        out = subprocess.run([sys.executable, script, "4096"], env=env, capture_output=True, text=True, timeout=400)
    except subprocess.TimeoutExpired as e:
        done = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"a sampler hung (no return in 400 s); returned before the hang:\n{done}")
    assert out.returncode == 0, out.stderr[-3000:]
    returned = [line.split()[0] for line in out.stdout.splitlines() if " returned in " in line]
    assert tuple(returned) == PATTERNS, out.stdout


def test_only_scores_with_blocking_kernels_are_ordered():
    """The ordering that prevents the deadlock (numerics.xla_cpu.order_after) serialises a step's
    independent work, so `checked_score` applies it only to scores whose trace holds LAPACK or FFT
    kernels: the mixture score (eigenpairs precomputed) and a plain network-like map run unordered;
    solve, cholesky inside a nested jit, and an FFT are detected."""
    sys.path.insert(0, os.path.dirname(__file__))
    import jax
    import jax.numpy as jnp
    from hang_check import score_fn as lapack_score
    from helpers import mixture_2d

    from diffjax import VPSDE
    from diffjax.numerics.xla_cpu import needs_ordering

    x, t = jnp.ones((4, 3)), jnp.full((4,), 0.5)
    x2 = jnp.ones((4, 2))
    w = jnp.ones((3, 3))
    assert not needs_ordering(mixture_2d().score_fn(VPSDE()), x2, t)
    assert not needs_ordering(lambda x, t: jnp.tanh(x @ w) * t[:, None], x, t)
    assert needs_ordering(lapack_score, x, t)
    nested = jax.jit(lambda y: jnp.linalg.cholesky(jnp.eye(3) + y[:, :, None] * y[:, None, :]).sum(-1))
    assert needs_ordering(lambda x, t: nested(x) * t[:, None], x, t)
    assert needs_ordering(lambda x, t: jnp.fft.fft(x).real, x, t)
    # a score that cannot be traced raises its own error here (no broad except hides it, diffjax 0.2)
    with pytest.raises(TypeError):
        needs_ordering(lambda x, t: x @ jnp.ones((5, 5)), x, t)


def test_the_ordering_decision_is_traced_once_per_structure():
    """needs_ordering remembers its answer per function and argument shapes: a network is traced
    once more per compile, not at every score call in a step (a second parameter set of the same
    shapes reuses it; a new batch size looks again)."""
    import jax
    import jax.numpy as jnp

    from diffjax.numerics.xla_cpu import needs_ordering

    traces = []

    def score(params, x, t):
        traces.append(x.shape)
        return jnp.tanh(x @ params) * t[:, None]

    for seed in range(3):  # new parameters of the same shapes: no new trace
        params = jax.random.normal(jax.random.PRNGKey(seed), (3, 3))
        assert not needs_ordering(jax.tree_util.Partial(score, params), jnp.ones((4, 3)), jnp.ones((4,)))
    assert traces == [(4, 3)]
    assert not needs_ordering(jax.tree_util.Partial(score, params), jnp.ones((8, 3)), jnp.ones((8,)))
    assert traces == [(4, 3), (8, 3)]
