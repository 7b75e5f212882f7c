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
