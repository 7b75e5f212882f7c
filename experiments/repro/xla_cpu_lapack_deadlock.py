"""Plain-JAX reproduction of the XLA:CPU hang behind issue 14 (no diffjax involved).

jaxlib 0.10.0-0.10.2 split a batched LAPACK call (getrf, potrf, syevd, trsm, ...) into tasks on
XLA:CPU's intra-op thread pool when the batch holds more than ~2e5 flops of matrices, and block in
``BlockingCounter::Wait`` until those tasks finish (``ParallelBatchMap`` in jaxlib/cpu/lapack_kernels.cc,
added in jax commit bfd9e1fbd3). XLA's thunk executor runs independent thunks concurrently on that
same pool. When as many independent LAPACK thunks start at once as the pool has threads (two on a
2-core machine) every worker waits for tasks that no worker is left to run: 0 % CPU, forever.
Upstream stopped parallelising LAPACK in open-source builds after 0.10.2 (jax commit 859992407d,
"Don't try to parallelize LAPACK kernels in opensource builds", jax issue #36927); that release
needs Python >= 3.12. PyAutoFit issue #1530 is the same re-entrancy with FFT thunks.

Below, every scan step evaluates a batched 3x3 solve twice with matrices built from t alone, once
inside a fori_loop: the two LU factorisations do not depend on each other. On a 2-core machine,

    timeout 60 python experiments/repro/xla_cpu_lapack_deadlock.py 8192         # hangs
    timeout 60 python experiments/repro/xla_cpu_lapack_deadlock.py 8192 --fix   # returns in ~1 s

``--fix`` is what diffjax's driver does to every score evaluation (``samplers.sequenced``): the time
input is made to depend on the sample, t + 0 * x, which orders each evaluation after the previous one.
"""

import sys
import time

import jax
import jax.numpy as jnp

n = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
fix = "--fix" in sys.argv
M1 = jnp.eye(3) + 0.3 * jax.random.normal(jax.random.PRNGKey(0), (3, 3, 3))
M2 = M1 + 0.1


def score(x, t, m):
    if fix:
        t = t + 0.0 * x[:, 0]
    c = t[:, None, None, None] * m + jnp.eye(3)  # (n, 3, 3, 3), from t only
    y = jnp.broadcast_to(x[:, None, :], (n, 3, 3))
    return -jnp.linalg.solve(c, y[..., None])[..., 0].sum(1)


@jax.jit
def run(x):
    def body(x, t):
        tb = jnp.full((n,), t)
        x = jax.lax.fori_loop(0, 1, lambda i, x: x + 0.01 * score(x, tb, M1), x)
        return x + 0.01 * score(x, tb, M2), None

    return jax.lax.scan(body, x, jnp.linspace(1.0, 0.1, 20))[0]


t0 = time.time()
run(jnp.ones((n, 3))).block_until_ready()
print(f"batch {n}{' with the fix' if fix else ''}: returned in {time.time() - t0:.2f} s")
