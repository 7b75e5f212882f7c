"""The ``diffjax`` command and the training driver: end to end on digits (tiny), exact resume after
SIGKILL and SIGTERM in a subprocess, the NaN-guard stop, resume/config checks, PNG files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from diffjax import checkpoint, cli, images, metrics
from diffjax import run as runs
from diffjax.configs import load_config

# A tiny DDPM++ on 8x8 digits: every stage of the real job, small enough for two CPU cores.
TINY_DIGITS = [
    "--config.training.n_iters=20", "--config.training.n_jitted_steps=10", "--config.training.batch_size=16",
    "--config.training.log_freq=10", "--config.training.snapshot_freq=10",
    "--config.model.options.nf=8", "--config.model.options.ch_mult=(1,)", "--config.model.options.num_res_blocks=1",
    "--config.model.options.attn_resolutions=()",
    "--config.sampling.num_samples=16", "--config.sampling.num_steps=4",
    "--config.eval.bpd_num_examples=16", "--config.eval.bpd_rtol=1e-2",
]

TOY = ["--config.training.batch_size=64", "--config.training.n_jitted_steps=10", "--config.training.log_freq=50",
       "--config.training.snapshot_freq=50", "--config.model.options.hidden=(32,32)",
       "--config.sampling.num_samples=0", "--config.eval.bpd_num_examples=0"]


def test_cli_end_to_end_train_sample_likelihood(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    assert cli.main(["train", "--workdir", workdir, "--no-progress", *TINY_DIGITS]) == 0
    out = capsys.readouterr().out
    assert "done: step 20" in out and "test bits/dim:" in out and "full-covariance Gaussian" in out
    assert checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps() == [10, 20]
    results = json.load(open(os.path.join(workdir, "results.json")))
    ev = results["eval"]
    # a 20-step model is poor, but its bound must be a finite positive number of bits; the baseline
    # is the independent closed form on the same 16 test examples
    assert 0 < ev["value"] < 50 and ev["stderr"] > 0 and ev["num_examples"] == 16
    from diffjax import data

    test_levels, _ = data.digits_split("test")
    assert ev["gaussian_baseline"] == pytest.approx(
        data.fit_gaussian_bits_per_dim(data.digits_split("train")[0], test_levels[:16], 17), rel=1e-12)
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in records if "loss" in r] == [10, 20]
    assert all(np.isfinite(r["loss"]) and r["skipped"] == 0 for r in records if "loss" in r)
    assert os.listdir(os.path.join(workdir, "tensorboard"))  # event files

    # sample: npz with float32 images in [0, 1] (N, H, W, C) and a PNG grid beside it
    out_file = str(tmp_path / "s" / "grid.npz")
    assert cli.main(["sample", "--workdir", workdir, "--num", "10", "--sampler", "ddim", "--steps", "3",
                     "--out", out_file]) == 0
    with np.load(out_file) as f:
        x = f["images"]
    assert x.shape == (10, 8, 8, 1) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    png = images.read_png(str(tmp_path / "s" / "grid.png"))
    assert png.ndim == 3 and png.shape[-1] == 1
    # per-example keys: the samples do not depend on the batching (one call of 16, or two of 8)
    out2 = str(tmp_path / "s" / "grid2.npz")
    assert cli.main(["sample", "--workdir", workdir, "--num", "10", "--sampler", "ddim", "--steps", "3",
                     "--batch", "8", "--out", out2]) == 0
    np.testing.assert_allclose(np.load(out2)["images"], x, atol=1e-6)
    # the fast path: UniPC-3 after a teleport; the data's Gaussian is stored with the run (fitted grids
    # are tested in test_fast_samplers.py: their fit costs ~40 s here)
    out3 = str(tmp_path / "s" / "fast.npz")
    assert cli.main(["sample", "--workdir", workdir, "--num", "4", "--sampler", "unipc", "--order", "3",
                     "--steps", "4", "--teleport", "auto", "--out", out3]) == 0
    assert "unipc, 5 score evaluations" in capsys.readouterr().out
    assert np.all(np.isfinite(np.load(out3)["images"]))
    fit = np.load(os.path.join(workdir, "gaussian_fit.npz"))
    np.testing.assert_allclose(fit["mean"], data.levels_to_model(data.digits_split("train")[0], 17).reshape(-1, 64).mean(0),
                               atol=1e-4)  # float32 levels against the float64 fit
    assert cli.main(["sample", "--workdir", workdir, "--num", "4", "--teleport", "far"]) == 2
    # a solver fitted to the run's own paths, stored in the run and found by --solver fitted
    assert cli.main(["sample", "--workdir", workdir, "--num", "4", "--solver", "fitted"]) == 2
    assert "no fitted solver" in capsys.readouterr().err
    assert cli.main(["fit-solver", "--workdir", workdir, "--nfe", "4", "--paths", "16", "--teacher-points", "8",
                     "--refine", "2", "--iters", "3", "--batch-paths", "8"]) == 0
    text = capsys.readouterr().out
    assert "fit-solver: 4 score evaluations; held-out" in text and "kept" in text
    assert os.path.isfile(os.path.join(workdir, "solvers", "ipndm_nfe4.npz"))
    assert os.path.isfile(os.path.join(workdir, "solvers", "teacher_20.npz"))
    out4 = str(tmp_path / "s" / "fitted.npz")
    assert cli.main(["sample", "--workdir", workdir, "--num", "4", "--solver", "fitted", "--out", out4]) == 0
    assert "fitted solver fitted, 4 score evaluations" in capsys.readouterr().out
    assert np.all(np.isfinite(np.load(out4)["images"]))
    assert cli.main(["sample", "--workdir", workdir, "--num", "4", "--solver", "fitted", "--nfe", "6"]) == 2
    assert "no fitted solver of 6 evaluations" in capsys.readouterr().err
    # an inverse problem: DDNM inpainting keeps the observed pixels exactly (noiseless y)
    from diffjax.run.inverse import write_measurement

    truth = data.levels_to_model(data.digits_split("test")[0][:4].astype(np.float32), 17, (0.0, 1.0))
    measured = str(tmp_path / "m" / "inpaint.npz")
    os.makedirs(os.path.dirname(measured))
    y = write_measurement(measured, "inpaint", truth)
    assert cli.main(["sample", "--workdir", workdir, "--inverse", "inpaint", "--measurement", measured,
                     "--method", "ddnm", "--steps", "3"]) == 0
    assert "4 reconstructions (inpaint, ddnm" in capsys.readouterr().out
    rec = np.load(str(tmp_path / "m" / "inpaint_ddnm.npz"))["images"]
    observed = np.load(measured)["mask"] > 0
    np.testing.assert_allclose(rec[:, observed], y[:, observed], atol=1e-5)
    assert cli.main(["sample", "--workdir", workdir, "--inverse", "inpaint"]) == 2
    assert "needs both --inverse KIND and --measurement" in capsys.readouterr().err

    capsys.readouterr()
    assert cli.main(["likelihood", "--workdir", workdir, "--num", "8", "--rtol", "1e-2"]) == 0
    text = capsys.readouterr().out
    assert "test bits/dim:" in text and "±" in text and "(8 examples" in text

    # evaluate: digits-FID/KID/IS of samples beside the test split's own values; the classifier is cached
    assert cli.main(["evaluate", "--workdir", workdir, "--num", "24", "--sampler", "ddim", "--steps", "3",
                     "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "digits-FID" in text and "samples" in text and "test split" in text and "% test accuracy" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith(("samples", "test"))}
    # a 20-step model's samples are far worse than real test digits
    assert float(rows["samples"][1]) > float(rows["test"][2])
    assert os.path.isfile(os.path.join(workdir, "eval", metrics.DIGITS_CLASSIFIER_FILE))
    assert cli.main(["evaluate", "--workdir", str(tmp_path / "missing")]) == 2


def test_train_resume_rejects_a_changed_config_and_continues_a_longer_one(tmp_path):
    workdir = str(tmp_path / "toy")
    config = load_config("toy2d", [*TOY, "--config.training.n_iters=50"])
    result = runs.train(config, workdir, progress=False, log=lambda s: None)
    assert result["step"] == 50
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    changed = load_config("toy2d", [*TOY, "--config.training.n_iters=100", "--config.sde.beta_max=10.0"])
    with pytest.raises(runs.ConfigMismatchError, match=r"sde.beta_max: 20.0 -> 10.0"):
        runs.train(changed, workdir, progress=False, log=lambda s: None)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
    messages = []
    longer = load_config("toy2d", [*TOY, "--config.training.n_iters=100"])
    assert runs.train(longer, workdir, progress=False, log=messages.append)["step"] == 100
    assert any("resuming" in m and "step 50" in m for m in messages)


def test_nonfinite_losses_stop_the_run_and_keep_the_last_checkpoint(tmp_path, capsys):
    workdir = str(tmp_path / "nan")
    # lr = 1e30 sends the parameters to ~1e30 after the first update; every later loss is NaN/Inf
    args = ["train", "--config", "toy2d", "--workdir", workdir, "--no-progress", *TOY,
            "--config.training.n_iters=200", "--config.training.snapshot_freq=10", "--config.training.log_freq=10",
            "--config.training.max_nonfinite=25", "--config.optim.lr=1e30", "--config.optim.warmup=0"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "NaN/Inf losses in a row" in err and "last good checkpoint" in err
    steps = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps()
    # 1 good update, then every update skipped: the stop comes at step 30 (the first 10-step call that
    # ends with >= 25 in a row, here 29), and no checkpoint is written at or after it
    assert steps and max(steps) == 20
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["skipped"] for r in records if "skipped" in r] == [9, 10]
    assert records[-1] == {"event": "nonfinite_stop", "step": 30, "skipped_in_a_row": 29}


def test_cli_errors_are_one_line_and_name_the_problem(tmp_path, capsys):
    assert cli.main(["train", "--workdir", str(tmp_path), "--config.training.nonsense=3"]) == 2
    assert "unknown config key 'training.nonsense'" in capsys.readouterr().err
    assert cli.main(["sample", "--workdir", str(tmp_path / "missing")]) == 2
    assert "no checkpoints in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["sample", "--workdir", str(tmp_path), "--bogus"])
    assert "unrecognised arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["sample", "--workdir", str(tmp_path), "--config.sampling.num_steps=3"])
    config = load_config("toy2d", ["--config.training.n_iters=55", "--config.training.n_jitted_steps=10"])
    with pytest.raises(ValueError, match="training.n_iters must be a positive multiple of training.n_jitted_steps"):
        runs.train(config, str(tmp_path / "x"), progress=False)


# ----------------------------------------------------------------------------------------------
# Exact resume after SIGKILL and SIGTERM (subprocesses on 8 CPU devices)


def _spawn(workdir, n_iters):
    cmd = [sys.executable, "-m", "diffjax.cli", "train", "--config", "toy2d", "--workdir", workdir, "--no-progress",
           *TOY, f"--config.training.n_iters={n_iters}", "--config.training.snapshot_freq=50",
           "--config.model.options.hidden=(256,256,256)"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())


def _wait_for_checkpoint(proc, directory, at_least, timeout=240):
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it could be interrupted:\n{proc.stdout.read()}")
        if os.path.isdir(directory):
            steps = [int(d) for d in os.listdir(directory) if d.isdigit()]
            if steps and max(steps) >= at_least:
                return
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared in time")


def _final_state(workdir, step):
    _, state, data_state, latest = runs.restore_state(workdir)
    assert latest == step
    return state, data_state


def test_killed_and_terminated_runs_resume_bit_identically(tmp_path):
    n_iters = 400
    straight = str(tmp_path / "straight")
    p = _spawn(straight, n_iters)
    assert p.wait(timeout=600) == 0, p.stdout.read()

    broken = str(tmp_path / "broken")
    ckpts = os.path.join(broken, "checkpoints")
    p = _spawn(broken, n_iters)
    _wait_for_checkpoint(p, ckpts, 100)
    p.send_signal(signal.SIGKILL)
    assert p.wait(timeout=60) == -signal.SIGKILL
    # the kill can land inside a save (orbax's folder committed, its digest not yet written: a slower
    # machine hit this); such a step is set aside and the run resumes from the newest complete one
    complete = [int(d) for d in os.listdir(ckpts) if d.isdigit()
                and os.path.isfile(os.path.join(ckpts, d, checkpoint.DIGEST_FILE))]
    cut_short = [int(d) for d in os.listdir(ckpts) if d.isdigit() and int(d) not in complete]
    killed_at = max(complete, default=0)
    assert killed_at < n_iters

    p = _spawn(broken, n_iters)  # resumes from the SIGKILLed run's last complete checkpoint
    _wait_for_checkpoint(p, ckpts, max([killed_at] + cut_short) + 100)
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 0, out
    if killed_at:
        assert f"resuming {os.path.abspath(broken)} from step {killed_at}" in out
    if cut_short:
        assert f"step {cut_short[0]}: the save was cut short" in out
    assert "SIGTERM received: saved step" in out
    termed_at = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
    assert killed_at < termed_at < n_iters

    p = _spawn(broken, n_iters)
    assert p.wait(timeout=600) == 0, p.stdout.read()

    a, data_a = _final_state(straight, n_iters)
    b, data_b = _final_state(broken, n_iters)
    assert data_a == data_b
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------------------------
# PNG files


def test_png_round_trip_and_grid_layout(tmp_path):
    rng = np.random.default_rng(0)
    tiles = rng.uniform(size=(5, 3, 4, 3)).astype(np.float32)
    grid = images.image_grid(tiles, ncols=2, pad=1, scale=1)
    assert grid.shape == (3 * 4 + 1, 2 * 5 + 1, 3)
    np.testing.assert_array_equal(grid[1 + 4:1 + 4 + 3, 1 + 5:1 + 5 + 4], tiles[3])  # row 1, column 1
    assert np.all(grid[0] == 1.0) and np.all(grid[-4:, -5:] == 1.0)  # padding and the empty 6th tile
    path = str(tmp_path / "g.png")
    images.write_png(path, grid)
    back = images.read_png(path)
    np.testing.assert_array_equal(back, np.round(grid * 255).astype(np.uint8))
    big = images.image_grid(tiles[..., :1], ncols=5, scale=3)
    assert big.shape == (3 * (3 + 2), 3 * (5 * 5 + 1), 1)
    dens = images.density_image(np.array([[1.0, 2.0]] * 10 + [[-1.0, -2.0]]), bins=8, extent=4.0)
    # y points up: (x=1, y=2) lands in column 5 and row 1 from the top; it is the darkest pixel
    assert dens.shape == (8, 8, 1) and dens[1, 5, 0] == 0.0 and 0.0 < dens[5, 3, 0] < 1.0
    assert dens[6, 3, 0] == 1.0 and dens[0, 0, 0] == 1.0
    with pytest.raises(ValueError, match=r"\(N, H, W, C\) with C = 1 or 3"):
        images.image_grid(np.zeros((2, 4, 4, 2)))


def test_superpose_two_runs_from_the_command_line(tmp_path, capsys):
    """`diffjax sample --workdir A --workdir B --superpose or|and` on two tiny 2-D toy runs."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for workdir, seed in ((a, 0), (b, 1)):
        assert cli.main(["train", "--config", "toy2d", "--workdir", workdir, "--no-progress", *TOY,
                         "--config.training.n_iters=20", f"--config.seed={seed}"]) == 0
    out = str(tmp_path / "or.npz")
    assert cli.main(["sample", "--workdir", a, "--workdir", b, "--superpose", "or", "--weights", "0.7,0.3",
                     "--steps", "10", "--num", "12", "--out", out]) == 0
    assert "12 samples of OR(" in capsys.readouterr().out
    with np.load(out) as f:
        assert f["samples"].shape == (12, 2) and f["log_q"].shape == (2, 12) and f["kappa"].shape == (2, 12)
        assert np.all(np.isfinite(f["samples"])) and np.allclose(f["kappa"].sum(0), 1.0, atol=1e-5)
    out = str(tmp_path / "and.npz")
    assert cli.main(["sample", "--workdir", a, "--workdir", b, "--superpose", "and", "--steps", "10", "--num", "12",
                     "--out", out]) == 0
    with np.load(out) as f:  # AND: every model's tracked log-density moved by the same amount
        start = f["log_q"][0] - f["log_q"][1]
        assert np.all(np.isfinite(f["samples"])) and np.max(np.abs(start)) < 1e-2
    capsys.readouterr()
    for argv, message in (
        (["--workdir", a, "--superpose", "or"], "two or more runs"),
        (["--workdir", a, "--workdir", b], "needs --superpose or|and"),
        (["--workdir", a, "--workdir", b, "--superpose", "or", "--weights", "1"], "weights must be 2 positive"),
        (["--workdir", a, "--workdir", b, "--superpose", "and", "--temperature", "2"], "takes neither"),
        (["--workdir", a, "--workdir", b, "--superpose", "or", "--sampler", "ddim"], "do not apply"),
        (["--workdir", a, "--weights", "1,2"], "--superpose only"),
    ):
        assert cli.main(["sample", "--num", "2", "--steps", "2", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
