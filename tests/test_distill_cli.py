"""``diffjax distill``: students are runs (consistency and progressive, sampled with --steps), bad
requests get one line, and a distillation killed by SIGKILL resumes bit-identically; autoguidance of a
run by a shorter one (the same toy teacher)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from diffjax import cli
from diffjax import run as runs

TOY = ["--config.training.batch_size=64", "--config.training.n_jitted_steps=10", "--config.training.log_freq=50",
       "--config.training.snapshot_freq=50", "--config.model.options.hidden=(32,32)",
       "--config.sampling.num_samples=0", "--config.eval.bpd_num_examples=0"]

pytestmark = pytest.mark.xdist_group("distill_cli")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("teacher") / "run")
    assert cli.main(["train", "--config", "toy2d", "--workdir", workdir, "--no-progress", *TOY,
                     "--config.training.n_iters=50"]) == 0
    return workdir


def test_consistency_and_progressive_students_are_runs_sampled_with_steps(teacher, tmp_path, capsys):
    cd = str(tmp_path / "cd")
    assert cli.main(["distill", "--teacher", teacher, "--workdir", cd, "--iters", "8", "--no-progress",
                     "--config.distill.stage_steps=4"]) == 0
    assert "consistency student in" in capsys.readouterr().out
    run = runs.load_run(cd)
    assert run.config.distill.method == "consistency" and run.step == 8
    for steps in (1, 2):
        out = str(tmp_path / f"cd{steps}.npz")
        assert cli.main(["sample", "--workdir", cd, "--steps", str(steps), "--num", "10", "--out", out]) == 0
        assert f"consistency student, {steps} step" in capsys.readouterr().out
        x = np.load(out)["samples"]
        assert x.shape[0] == 10 and np.all(np.isfinite(x))

    pd = str(tmp_path / "pd")
    assert cli.main(["distill", "--teacher", teacher, "--workdir", pd, "--method", "progressive", "--start-steps", "4",
                     "--iters", "4", "--no-progress"]) == 0
    assert {"distill.json", "steps_1", "steps_2", "steps_4"} <= set(os.listdir(pd))
    assert runs.load_run(os.path.join(pd, "steps_2")).config.distill.teacher == os.path.join(pd, "steps_4")
    out = str(tmp_path / "pd2.npz")
    assert cli.main(["sample", "--workdir", pd, "--steps", "2", "--num", "8", "--out", out]) == 0
    assert "progressive student, 2 steps" in capsys.readouterr().out
    # bad requests: one line each, nothing written
    assert cli.main(["sample", "--workdir", pd, "--steps", "3", "--num", "8", "--out", str(tmp_path / "x.npz")]) == 2
    assert "has students of [4, 2, 1] steps; got --steps 3" in capsys.readouterr().err
    assert cli.main(["distill", "--teacher", cd, "--workdir", str(tmp_path / "s2"), "--iters", "4"]) == 2
    assert "is itself a student" in capsys.readouterr().err
    assert cli.main(["distill", "--teacher", teacher, "--workdir", str(tmp_path / "s3"), "--method", "progressive",
                     "--start-steps", "6"]) == 2
    assert "power of two" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.npz") and not os.path.exists(tmp_path / "s2")


def _spawn(teacher, workdir, iters, *extra):
    cmd = [sys.executable, "-m", "diffjax.cli", "distill", "--teacher", teacher, "--workdir", workdir, "--iters",
           str(iters), "--no-progress", "--config.distill.stage_steps=50", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())


def test_a_killed_distillation_resumes_bit_identically(teacher, tmp_path):
    iters = 400   # checkpoints every 100 steps
    straight = str(tmp_path / "straight")
    p = _spawn(teacher, straight, iters)
    assert p.wait(timeout=600) == 0, p.stdout.read()

    broken = str(tmp_path / "broken")
    ckpts = os.path.join(broken, "checkpoints")
    p = _spawn(teacher, broken, iters)
    start = time.time()
    while time.time() - start < 300:
        if p.poll() is not None:
            raise AssertionError(f"the distillation ended before it could be killed:\n{p.stdout.read()}")
        if os.path.isdir(ckpts) and any(d.isdigit() and int(d) >= 100 and os.path.exists(
                os.path.join(ckpts, d, "diffjax_digest.json")) for d in os.listdir(ckpts)):
            break   # a checkpoint committed with its digest
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    assert p.wait(timeout=60) == -signal.SIGKILL
    killed_at = max(int(d) for d in os.listdir(ckpts) if d.isdigit() and os.path.exists(
        os.path.join(ckpts, d, "diffjax_digest.json")))
    assert killed_at < iters
    # a kill can land inside a later save: --restore-intact resumes from the newest committed step
    p = _spawn(teacher, broken, iters, "--restore-intact")
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out
    assert f"from step {killed_at}" in out
    a, b = runs.restore_state(straight)[1], runs.restore_state(broken)[1]
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_autoguidance_by_a_shorter_run(teacher, tmp_path, capsys):
    """`sample --guide RUN --guidance w`: (1 + w) s - w s_guide; w = 0 is the run alone, and a guide of
    another network is refused in one line."""
    guide = str(tmp_path / "guide")
    assert cli.main(["train", "--config", "toy2d", "--workdir", guide, "--no-progress", *TOY,
                     "--config.training.n_iters=10"]) == 0
    outs = {}
    for name, flags in (("plain", []), ("w0", ["--guide", guide, "--guidance", "0"]),
                        ("w1", ["--guide", guide, "--guidance", "1.0"])):
        out = str(tmp_path / f"{name}.npz")
        assert cli.main(["sample", "--workdir", teacher, "--num", "16", "--sampler", "ddim", "--steps", "8",
                         "--out", out, *flags]) == 0
        outs[name] = np.load(out)["samples"]
    assert "autoguided by" in capsys.readouterr().out
    np.testing.assert_allclose(outs["w0"], outs["plain"], atol=1e-5)
    assert np.all(np.isfinite(outs["w1"])) and np.abs(outs["w1"] - outs["plain"]).max() > 1e-3
    other = str(tmp_path / "other")
    assert cli.main(["train", "--config", "toy2d", "--workdir", other, "--no-progress", *TOY,
                     "--config.training.n_iters=10", "--config.model.options.hidden=(16,16)"]) == 0
    capsys.readouterr()
    assert cli.main(["sample", "--workdir", teacher, "--num", "4", "--guide", other, "--guidance", "1",
                     "--out", str(tmp_path / "bad.npz")]) == 2
    assert "has another model" in capsys.readouterr().err and not os.path.exists(tmp_path / "bad.npz")
