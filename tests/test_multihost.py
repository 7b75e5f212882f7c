"""Multi-host for real (issue 19): the ``diffjax`` command in several processes on localhost (a free
port, gloo collectives, each process with its own CPU devices), every process under a watchdog.

Tolerance. Data-parallel training all-reduces the gradient over the devices; on 2 processes x 2
devices the partial sums meet in another order than on 1 process x 4 devices, so float32 sums
differ in the last bits (relative 1e-7 per reduction) and Adam carries that into the parameters.
Measured after 20 steps: parameters differ by at most 3e-8 in absolute value (6e-5 relative, on
entries near zero), hence rtol 1e-4 with atol 1e-6; the per-step losses, where the only difference
is the order of the mean over the global batch, by 2.5e-8 relative, hence rtol 1e-5.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from diffjax.run import restore_state

pytestmark = pytest.mark.xdist_group("subprocess-heavy")

TOY = ["--config", "toy2d", "--no-progress", "--config.training.n_jitted_steps=5", "--config.training.log_freq=5",
       "--config.training.snapshot_freq=10", "--config.training.batch_size=64", "--config.model.options.hidden=(64,64)",
       "--config.sampling.num_samples=0", "--config.eval.bpd_num_examples=0"]
STEPS = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONWARNINGS")}
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), TF_CPP_MIN_LOG_LEVEL="2")
    return env


def start(processes: int, devices: int, argv: list) -> list:
    """Start ``diffjax ARGV`` in ``processes`` processes with ``devices`` CPU devices each."""
    dist = ["--distributed", "--coordinator", f"localhost:{_free_port()}", "--num-processes", str(processes)]
    return [subprocess.Popen([sys.executable, "-m", "diffjax.cli", *argv, *dist, "--process-id", str(i)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(devices))
            for i in range(processes)] if processes > 1 else \
        [subprocess.Popen([sys.executable, "-m", "diffjax.cli", *argv], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=_env(devices))]


def finish(procs: list, timeout: float = 300) -> list:
    """Wait for every process (killing all on the watchdog's timeout); (returncode, stdout, stderr) each."""
    deadline, out = time.time() + timeout, []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"processes still running after {timeout} s (hang)")
        out.append((p.returncode, stdout, stderr))
    return out


def run(processes: int, devices: int, argv: list, timeout: float = 300) -> list:
    results = finish(start(processes, devices, argv), timeout)
    for rc, stdout, stderr in results:
        assert rc == 0, f"exit status {rc}\n{stdout[-2000:]}\n{stderr[-4000:]}"
    return results


def losses(workdir: str) -> np.ndarray:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return np.array([r["loss"] for r in map(json.loads, f) if "loss" in r])


def params(workdir: str):
    _, state, data_state, step = restore_state(workdir)
    return jax.tree_util.tree_leaves(jax.device_get(state.params)), data_state, step


def assert_same_training(a: str, b: str, rtol: float = 1e-4):
    la, lb = losses(a), losses(b)
    assert la.shape == lb.shape and len(la) > 0
    np.testing.assert_allclose(la, lb, rtol=1e-5)  # the same global batches, step by step
    (pa, da, sa), (pb, db, sb) = params(a), params(b)
    assert sa == sb and da == db
    for x, y in zip(pa, pb):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """1 process x 4 devices, 20 steps uninterrupted."""
    workdir = str(tmp_path_factory.mktemp("mh") / "one_by_four")
    run(1, 4, ["train", *TOY, "--workdir", workdir, "--steps", str(STEPS)])
    return workdir


def test_two_processes_train_a_toy_like_one_process_and_evaluate_once(reference, tmp_path):
    workdir = str(tmp_path / "two_by_two")
    argv = ["train", *TOY, "--workdir", workdir, "--steps", str(STEPS), "--config.sampling.num_samples=64",
            "--config.sampling.num_steps=8", "--config.eval.bpd_num_examples=16", "--config.eval.bpd_rtol=1e-3"]
    results = run(2, 2, argv)
    assert all("done: step 20" in out for _, out, _ in results)
    assert sorted(os.listdir(workdir)).count("results.json") == 1
    with open(os.path.join(workdir, "results.json")) as f:
        ev = json.load(f)["eval"]
    assert ev["num_examples"] == 16 and np.isfinite(ev["value"])
    with np.load(os.path.join(workdir, "samples.npz")) as f:
        assert f["samples"].shape == (64, 2)
    assert_same_training(workdir, reference)


# 2x2 -> 1x4 by default; the reverse direction under -m slow (the default run's time budget)
@pytest.mark.parametrize("first,then", [((2, 2), (1, 4)), pytest.param((1, 4), (2, 2), marks=pytest.mark.slow)],
                         ids=["2x2-then-1x4", "1x4-then-2x2"])
def test_a_run_resumes_on_another_topology(reference, tmp_path, first, then):
    workdir = str(tmp_path / "moved")
    run(*first, ["train", *TOY, "--workdir", workdir, "--steps", str(STEPS // 2)])
    results = run(*then, ["train", *TOY, "--workdir", workdir, "--steps", str(STEPS)])
    assert any(f"from step {STEPS // 2}" in out for _, out, _ in results)
    assert_same_training(workdir, reference)


def test_two_processes_sample_and_score_like_one(reference, tmp_path):
    one, two = str(tmp_path / "one.npz"), str(tmp_path / "two.npz")
    sample = ["sample", "--workdir", reference, "--num", "24", "--sampler", "dpmpp_2m", "--steps", "6"]
    run(1, 4, [*sample, "--out", one])
    run(2, 2, [*sample, "--out", two])
    with np.load(one) as a, np.load(two) as b:
        np.testing.assert_array_equal(a["samples"], b["samples"])  # per example: bit-exact
    like = ["likelihood", "--workdir", reference, "--num", "12", "--rtol", "1e-3"]
    def nll(out):
        return [line for line in out.splitlines() if line.startswith("test NLL")]

    (_, a_out, _), = run(1, 4, like)
    outs = run(2, 2, like)
    assert len(nll(a_out)) == 1 and all(nll(out) == nll(a_out) for _, out, _ in outs), (a_out, outs)


@pytest.mark.slow  # 90 s on two cores; the toy run above covers the same phases by default
def test_two_processes_train_the_digits_to_the_end(tmp_path):
    workdir = str(tmp_path / "digits")
    argv = ["train", "--config", "digits", "--workdir", workdir, "--steps", "4", "--no-progress",
            "--config.model.options.nf=8", "--config.model.options.ch_mult=(1,)",
            "--config.model.options.num_res_blocks=1", "--config.model.options.attn_resolutions=()",
            "--config.training.batch_size=16", "--config.sampling.num_samples=8", "--config.sampling.num_steps=4",
            "--config.eval.bpd_num_examples=8", "--config.eval.bpd_rtol=1e-2"]
    results = run(2, 2, argv, timeout=400)
    assert all("done: step 4" in out and "test bits/dim:" in out for _, out, _ in results)
    assert sorted(os.listdir(workdir)).count("results.json") == 1
    with open(os.path.join(workdir, "results.json")) as f:
        assert 0 < json.load(f)["eval"]["value"] < 50


def test_a_dead_process_stops_the_other_and_a_restart_resumes(tmp_path):
    workdir = str(tmp_path / "killed")
    argv = ["train", *TOY, "--workdir", workdir, "--steps", "100000", "--config.training.snapshot_freq=10",
            "--peer-timeout", "10"]
    procs = start(2, 2, argv)
    ckpts = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 240
    while not (os.path.isdir(ckpts) and any(d.isdigit() for d in os.listdir(ckpts))):
        assert time.time() < deadline and all(p.poll() is None for p in procs), "no checkpoint appeared"
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    (rc0, _, err0), (rc1, _, _) = finish(procs, timeout=90)
    assert rc1 == -signal.SIGKILL
    assert rc0 not in (0, None) and time.time() - killed_at < 60, rc0
    reason = [line for line in err0.splitlines() if line.startswith("diffjax: error:")]
    assert len(reason) == 1 and "process 1 of 2 sent no heartbeat" in reason[0], err0[-3000:]
    saved = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
    results = run(2, 2, ["train", *TOY, "--workdir", workdir, "--steps", str(saved + 10)])
    assert any(f"from step {saved}" in out for _, out, _ in results)
    assert all(f"done: step {saved + 10}" in out for _, out, _ in results)
