"""Training a config in a work directory: the loop, checkpoints, resumption, signals, the NaN guard.

A work directory holds ``checkpoints/`` (orbax: state, config, data position), ``config.json``,
``metrics.jsonl`` and ``tensorboard/`` (see :mod:`diffjax.run.logging`), ``training_curves.png``,
``samples.npz`` + ``samples.png`` and ``results.json``. Only process 0 writes files; every process
runs the same computations, as multi-host JAX needs.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from typing import Any, Callable

import jax
import numpy as np

from diffjax import checkpoint, parallel, training
from diffjax.run import files
from diffjax.run.build import (
    build_loader,
    build_loss,
    build_model,
    build_optimizer,
    build_sde,
    example_shape,
    init_state,
    model_batch,
)
from diffjax.run.evaluate import evaluate_likelihood, format_likelihood
from diffjax.run.generate import generate, write_samples
from diffjax.configs import validate, with_defaults
from diffjax.run.load import Run
from diffjax.run.logging import MetricLogger, plot_training_curves, progress_bar

__all__ = ["train", "NonFiniteLossError", "ConfigMismatchError", "RESUMABLE_CHANGES", "config_differences"]

# Keys that may change when a run resumes; any other difference from the saved config is an error.
RESUMABLE_CHANGES = ("training.n_iters", "training.n_jitted_steps", "training.log_freq", "training.snapshot_freq",
                     "training.keep_last", "training.keep_period", "training.max_nonfinite", "sampling.",
                     "eval.", "parallel.", "data.data_dir")


class NonFiniteLossError(RuntimeError):
    """Training stopped after ``training.max_nonfinite`` NaN/Inf losses in a row."""


class ConfigMismatchError(ValueError):
    """The work directory holds a run with a different config."""


class _StopFlag:
    """Set by SIGTERM (and SIGINT) while training; the loop saves and returns."""

    def __init__(self, enabled: bool):
        self.signal = None
        self._previous = {}
        if enabled:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except ValueError:  # not the main thread: signals cannot be caught here
                    pass

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------------------------
# Training


def _flat(tree: Any, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _json_config(config) -> dict:
    return json.loads(json.dumps(config.to_dict()))


def config_differences(saved: dict, current: dict) -> list[str]:
    """``key: saved -> current`` for every key that differs and may not change on resume."""
    a, b = _flat(saved), _flat(current)
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE_CHANGES):
            continue
        if a.get(key, "<missing>") != b.get(key, "<missing>"):
            out.append(f"{key}: {a.get(key, '<missing>')!r} -> {b.get(key, '<missing>')!r}")
    return out


def _check_multiples(t) -> None:
    n = t.n_jitted_steps
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"training.n_jitted_steps must be a positive int; got {n!r}")
    for name in ("n_iters", "log_freq", "snapshot_freq"):
        v = t[name]
        if not isinstance(v, int) or v < 1 or v % n:
            raise ValueError(f"training.{name} must be a positive multiple of training.n_jitted_steps ({n}); got {v!r}")
    if t.max_nonfinite < 1:
        raise ValueError(f"training.max_nonfinite must be >= 1; got {t.max_nonfinite!r}")


def train(config, workdir: str, *, progress: bool = True, handle_signals: bool = True,
          finish: bool = True, restore_intact: bool = False, log: Callable[[str], None] = print) -> dict:
    """Train ``config`` in ``workdir``, resuming from its latest checkpoint if there is one.

    ``workdir`` must be new, empty or a run (:func:`diffjax.run.files.claim_workdir`): a directory of
    other files is refused before anything is written. The latest checkpoint must verify against its
    digest; with ``restore_intact`` a corrupt latest step is moved to ``WORKDIR/corrupt_checkpoints/``
    (kept, not deleted) and training resumes from the newest intact one, said in the log.

    Checkpoints every ``training.snapshot_freq`` steps, at the end and on SIGTERM/SIGINT (then
    returns early with ``result["stopped"]`` naming the signal). A NaN/Inf loss skips its update;
    ``training.max_nonfinite`` in a row raise :class:`NonFiniteLossError` without saving, so the
    last good checkpoint stays the latest. Resuming a run with a config that differs in anything
    but :data:`RESUMABLE_CHANGES` raises :class:`ConfigMismatchError`.

    With ``finish`` the end of training writes ``samples.npz``/``samples.png``
    (``sampling.num_samples`` > 0) and evaluates the test split (``eval.bpd_num_examples`` > 0):
    bits/dim (images) or negative log-likelihood (toys) beside a full-covariance Gaussian
    baseline, saved in ``results.json``. Returns the results as a dict.
    """
    t = config.training
    _check_multiples(t)
    validate(config)
    main = parallel.is_main_process()
    if not isinstance(workdir, str) or not workdir:
        raise ValueError(f"--workdir is empty; give a directory (new or of this run); got {workdir!r}")
    workdir = os.path.abspath(workdir)
    files.claim_workdir(workdir, write=False)  # a folder of the user's files is refused before anything else
    checkpoint.check_layout(os.path.join(workdir, "checkpoints"))
    mesh = parallel.make_mesh(config.parallel.fsdp)
    parallel.check_global_batch(t.batch_size, mesh)
    loader = build_loader(config, "train", t.batch_size // jax.process_count())  # a bad dataset fails before compiling
    sde, model = build_sde(config), build_model(config)
    if finish and config.eval.bpd_num_examples > 0 and sde.kernel != "gaussian":
        raise ValueError(f"eval.bpd_num_examples must be 0 for {type(sde).__name__}: its likelihood is not "
                         "the Gaussian probability flow's (set --config.eval.bpd_num_examples=0)")
    conditional = bool(getattr(model, "num_classes", 0))
    optimizer = build_optimizer(config)
    if config.distill.method:  # a student (diffjax.run.distill): its teacher's loss, from its teacher's weights
        from diffjax.run.distill import build_distill_loss, teacher_params

        teacher = teacher_params(config)
        step_fn = training.make_train_step(build_distill_loss(config, sde, model, teacher), optimizer,
                                           ema_rate=config.model.ema_rate, skip_nonfinite=True, loss_takes_step=True)
        init = functools.partial(_student_state, teacher, optimizer)
    else:
        step_fn = training.make_train_step(build_loss(config, sde, model), optimizer, ema_rate=config.model.ema_rate,
                                           skip_nonfinite=True)
        init = functools.partial(init_state, model, optimizer, example_shape(config))
    key0 = jax.random.PRNGKey(config.seed)
    shardings = parallel.state_shardings(jax.eval_shape(init, key0), mesh, config.parallel.fsdp > 1)

    marker = _claim(workdir, main)  # the first file written: the run's marker
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=t.keep_last,
                                   keep_period=t.keep_period or None, digests_from=marker.get("digests_from", 0))
    current = _json_config(config)
    _set_aside_cut_short(ckpt, workdir, main, log)
    start = ckpt.latest_step()
    if start is not None and restore_intact:
        start = _fall_back_to_intact(ckpt, workdir, main, log)
    if start is not None:
        diffs = config_differences(with_defaults(ckpt.restore_config(start)), current)
        if diffs:
            raise ConfigMismatchError(f"{workdir} holds a run with another config ({'; '.join(diffs)}); "
                                      "use a new --workdir, or the saved config to resume")
        abstract = jax.eval_shape(init, key0)
        state, _, data_state = ckpt.restore(checkpoint.abstract_like(abstract, shardings), start)
        loader.set_state(data_state)
        log(f"resuming {workdir} from step {start}")
    else:
        start = 0
        state = jax.jit(init, out_shardings=shardings)(key0)
    if main:
        files.write_json(os.path.join(workdir, "config.json"), current)

    n = t.n_jitted_steps
    compiled = parallel.compile_train_step(step_fn, mesh, shardings, n)
    logger = MetricLogger(workdir, enabled=main)
    logger.write({"event": "resume" if start else "start", "step": start, "devices": mesh.size,
                  "processes": jax.process_count(), "time": time.time()})
    stop = _StopFlag(handle_signals)
    bar = progress_bar(t.n_iters, min(start, t.n_iters), progress)
    step, in_a_row, skipped_total = start, 0, 0
    window: dict[str, list] = {}
    last_saved = start if start else None
    tick = time.perf_counter()
    try:
        while step < t.n_iters:
            batches = [model_batch(next(loader), conditional) for _ in range(n)]
            batch = batches[0] if n == 1 else jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches)
            state, metrics = compiled(state, parallel.global_batch(batch, mesh, leading=int(n > 1)))
            step += n
            metrics = {k: np.atleast_1d(np.asarray(v, np.float64)) for k, v in jax.device_get(metrics).items()}
            for s in metrics["skipped"]:
                in_a_row = in_a_row + 1 if s else 0
            skipped_total += int(metrics["skipped"].sum())
            for k, v in metrics.items():
                window.setdefault(k, []).extend(v.tolist())
            if bar is not None:
                bar.update(n)
            if in_a_row >= t.max_nonfinite:
                logger.write({"event": "nonfinite_stop", "step": step, "skipped_in_a_row": in_a_row})
                where = f"step {last_saved} in {ckpt.directory}" if last_saved else "none was written"
                raise NonFiniteLossError(
                    f"training stopped at step {step}: {in_a_row} NaN/Inf losses in a row (training.max_nonfinite = "
                    f"{t.max_nonfinite}); the updates were skipped and nothing was saved, so the last good checkpoint "
                    f"({where}) is intact. Lower optim.lr or raise optim.warmup, then resume or start afresh")
            if step % t.log_freq == 0:
                now = time.perf_counter()
                record = _summarise(window, step, now - tick)
                record["skipped_total"] = skipped_total
                logger.write(record)
                if bar is not None:
                    bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
                window, tick = {}, now
            if step % t.snapshot_freq == 0 or step >= t.n_iters or stop.signal:
                ckpt.save(step, state, current, loader.get_state())
                last_saved = step
            if stop.signal:
                log(f"\n{stop.signal} received: saved step {step} in {ckpt.directory}; run the same command to resume")
                logger.write({"event": "signal", "signal": stop.signal, "step": step})
                return {"step": step, "stopped": stop.signal, "workdir": workdir}
        if last_saved != step and step > 0:
            ckpt.save(step, state, current, loader.get_state())
    finally:
        stop.restore()
        if bar is not None:
            bar.close()
        ckpt.close()
        logger.close()

    result = {"step": step, "stopped": None, "workdir": workdir, "skipped_total": skipped_total}
    curves = plot_training_curves(workdir) if main else None
    if curves:
        result["training_curves"] = curves
    if finish:
        run = Run(config=config, sde=sde, model=model, params=state.ema_params, step=step, mesh=mesh, workdir=workdir)
        result.update(_finish(run, workdir, log))
    return result


def _student_state(teacher_params, optimizer, key):
    """A student's first state: the teacher's EMA weights, a fresh optimiser."""
    _, k_train = jax.random.split(key)
    return training.create_train_state(k_train, jax.tree_util.tree_map(lambda v: v.copy(), teacher_params), optimizer)


def _claim(workdir: str, main: bool) -> dict:
    """The work directory made or checked as a run (:func:`files.claim_workdir`) by process 0, before any
    file is written; the other processes wait for it and read the marker it wrote."""
    if jax.process_count() == 1:
        return files.claim_workdir(workdir)
    from jax.experimental import multihost_utils

    error = None
    if main:
        try:
            files.claim_workdir(workdir)
        except ValueError as e:
            error = e
    failed = multihost_utils.process_allgather(np.asarray(error is not None))
    if np.any(failed):
        raise error or ValueError(f"process 0 refused --workdir {workdir} (see its message)")
    return files.read_marker(workdir) or {}


def _move_steps_aside(ckpt, steps, aside: str, main: bool, why: str) -> None:
    """Process 0 moves each of ``steps``' folders into ``aside`` (never overwriting: a taken name gains
    "_"); every process waits before (each has listed the steps from the same files) and after it.
    ``why`` starts the error when ``aside`` is a file. Every process calls it, with or without steps."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"diffjax: steps listed before moving to {os.path.basename(aside)}")
    if main and steps:
        if os.path.lexists(aside) and not os.path.isdir(aside):
            raise checkpoint.CheckpointError(f"{why} {aside}, which is a file; move it away")
        os.makedirs(aside, exist_ok=True)
        for s in steps:
            target = os.path.join(aside, str(s))
            while os.path.exists(target):
                target += "_"
            os.replace(ckpt.step_directory(s), target)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"diffjax: checkpoints moved to {os.path.basename(aside)}")


def _set_aside_cut_short(ckpt, workdir: str, main: bool, log) -> None:
    """Move steps whose save was cut short by a kill (their save marker is there, their digest is not)
    to WORKDIR/incomplete_checkpoints/ and say so; remove save markers of complete or absent steps.
    Such a step was never committed by diffjax, so resuming from the step before it is what a resume
    after a kill means; nothing is deleted. A step whose digest went missing *without* the marker is
    not touched here: restoring it raises CheckpointError (``--restore-intact`` falls back)."""
    cut = ckpt.cut_short_steps()
    stale = ckpt.stale_markers()
    _move_steps_aside(ckpt, cut, os.path.join(workdir, "incomplete_checkpoints"), main,
                      f"step {cut[0] if cut else ''}'s save was cut short and is moved to")
    if main:  # the markers of the steps moved, and those left by kills outside a save's folder
        for path in stale + [ckpt.saving_marker(s) for s in cut]:
            os.remove(path)
    if cut:
        ckpt.reload()
        log(f"step{'s' if len(cut) > 1 else ''} {', '.join(map(str, sorted(cut)))}: the save was cut short (the "
            f"process was stopped while saving); moved to {os.path.join(workdir, 'incomplete_checkpoints')}")


def _fall_back_to_intact(ckpt, workdir: str, main: bool, log) -> int:
    """The newest step that verifies; newer corrupt steps moved to WORKDIR/corrupt_checkpoints/ (process 0)."""
    good, bad = ckpt.intact_steps()
    if not good:
        raise checkpoint.CheckpointError(f"--restore-intact: no checkpoint in {ckpt.directory} is intact "
                                         f"({len(bad)} failed their digest); the files were left as they are: "
                                         "move the directory away to start afresh")
    newest = good[0]
    moved = [s for s in bad if s > newest]
    _move_steps_aside(ckpt, moved, os.path.join(workdir, "corrupt_checkpoints"), main,
                      "--restore-intact moves corrupt steps to")
    if moved:
        ckpt.reload()
        log(f"--restore-intact: step{'s' if len(moved) > 1 else ''} {', '.join(map(str, sorted(moved)))} failed "
            f"{'their' if len(moved) > 1 else 'its'} digest and {'were' if len(moved) > 1 else 'was'} moved to "
            f"{os.path.join(workdir, 'corrupt_checkpoints')}; resuming from step {newest}")
    return newest


def _summarise(window: dict, step: int, seconds: float) -> dict:
    record = {"step": step}
    good = np.asarray(window.get("skipped", [])) == 0
    for k, v in window.items():
        v = np.asarray(v)
        if k == "skipped":
            record["skipped"] = int(v.sum())
            continue
        v = v[good] if len(v) == len(good) and good.any() else v
        record[k] = float(np.mean(v))
    steps = len(window.get("loss", []))
    record["steps_per_sec"] = steps / seconds if seconds > 0 else float("nan")
    record["time"] = time.time()
    return record


def _finish(run: "Run", workdir: str, log: Callable[[str], None]) -> dict:
    config, out = run.config, {}
    if config.sampling.num_samples > 0:
        x, nfe = generate(run, jax.random.PRNGKey(config.seed + 1), config.sampling.num_samples, check_finite=False)
        png = write_samples(run, x, os.path.join(workdir, "samples.npz"))
        bad = int(np.sum(~np.all(np.isfinite(x.reshape(len(x), -1)), axis=1)))
        out.update(samples=png, sample_nfe=nfe, nonfinite_samples=bad)
        log(f"{len(x)} samples ({config.sampling.method}, {nfe} score evaluations each) -> {png}"
            + (f"; warning: {bad} of them are NaN or Inf" if bad else ""))
    if config.eval.bpd_num_examples > 0:
        log(f"likelihood of {config.eval.bpd_num_examples} test examples (probability-flow ODE, rtol "
            f"{config.eval.bpd_rtol:g}) ...")
        ev = evaluate_likelihood(run, jax.random.PRNGKey(config.seed + 2), "test", config.eval.bpd_num_examples)
        out["eval"] = ev
        log(format_likelihood(ev))
    if parallel.is_main_process():
        files.write_json(os.path.join(workdir, "results.json"), {"step": run.step, **out})
    return out


