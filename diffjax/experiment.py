"""Runs from configs: build what a config names, train with checkpoints and logs, sample, evaluate.

This is what the ``diffjax`` command calls; it works from Python too::

    from diffjax import experiment
    from diffjax.cli import load_config

    config = load_config("digits", ["--config.training.n_iters=200"])
    result = experiment.train(config, "runs/digits")   # checkpoint, samples.png, bits/dim
    images = experiment.load_run("runs/digits")          # a Run: config, sde, model, EMA params

A work directory holds ``checkpoints/`` (orbax: state, config, data position), ``config.json``,
``metrics.jsonl`` (one JSON record per log step), ``tensorboard/`` (event files),
``samples.npz`` + ``samples.png`` and ``results.json``. Only process 0 writes files; every
process runs the same computations, as multi-host JAX needs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import checkpoint, data, guidance, images, losses, metrics, models, parallel, samplers, training
from diffjax.likelihood import bits_per_dim, log_likelihood
from diffjax.sde import SubVPSDE, VESDE, VPSDE

__all__ = [
    "NonFiniteLossError",
    "ConfigMismatchError",
    "Run",
    "evaluate",
    "format_evaluation",
    "build_sde",
    "build_model",
    "build_loader",
    "build_loss",
    "build_optimizer",
    "build_sampler",
    "data_range",
    "data_levels",
    "example_shape",
    "train",
    "restore_state",
    "load_run",
    "generate",
    "to_unit_range",
    "write_samples",
    "evaluate_likelihood",
]

# Keys that may change when a run resumes; any other difference from the saved config is an error.
RESUMABLE_CHANGES = ("training.n_iters", "training.n_jitted_steps", "training.log_freq", "training.snapshot_freq",
                     "training.keep_last", "training.keep_period", "training.max_nonfinite", "sampling.",
                     "eval.", "parallel.", "data.data_dir")


class NonFiniteLossError(RuntimeError):
    """Training stopped after ``training.max_nonfinite`` NaN/Inf losses in a row."""


class ConfigMismatchError(ValueError):
    """The work directory holds a run with a different config."""


# ----------------------------------------------------------------------------------------------
# Builders: config -> objects


def build_sde(config):
    """The process ``config.sde.name`` (vesde | vpsde | subvpsde) with the config's parameters."""
    s = config.sde
    if s.name == "vesde":
        return VESDE(sigma_min=s.sigma_min, sigma_max=s.sigma_max, N=s.num_scales)
    if s.name == "vpsde":
        return VPSDE(beta_min=s.beta_min, beta_max=s.beta_max, N=s.num_scales)
    if s.name == "subvpsde":
        return SubVPSDE(beta_min=s.beta_min, beta_max=s.beta_max, N=s.num_scales)
    raise ValueError(f"unknown sde.name {s.name!r}; expected vesde, vpsde or subvpsde")


def is_toy(config) -> bool:
    return config.data.dataset.startswith("toy:")


def data_range(config) -> tuple[float, float]:
    """(-1, 1) for centred data, else (0, 1); 2-D toys are used as they are (None)."""
    return (-1.0, 1.0) if config.data.centered else (0.0, 1.0)


def data_levels(config) -> Optional[int]:
    """Grey levels of the dataset (17 for digits, 256 for TFDS images), None for continuous toys."""
    if is_toy(config):
        return None
    return data.DIGITS_LEVELS if config.data.dataset == "digits" else 256


def example_shape(config) -> tuple[int, ...]:
    if is_toy(config):
        return (2,)
    return (config.data.image_size, config.data.image_size, config.data.num_channels)


def build_model(config):
    """The network ``config.model.name`` with ``config.model.options``; image networks get ``centered``
    from ``config.data.centered`` unless the options set it."""
    options = dict(config.model.options)
    name = config.model.name
    network = models.PRESETS[name][0] if name in models.PRESETS else name
    if network in models.NETWORKS and "centered" in models.network_options(network) and "centered" not in options:
        options["centered"] = bool(config.data.centered)
    return models.get_model(name, **options)


def build_loader(config, split: str, batch_size: int, *, seed: Optional[int] = None, train: bool = True):
    """This process's loader of ``split`` with ``batch_size`` examples per batch (per process)."""
    d = config.data
    seed = config.seed if seed is None else seed
    shard = dict(shard_index=jax.process_index(), shard_count=jax.process_count())
    if d.dataset == "digits":
        return data.digits_loader(split, batch_size, image_size=d.image_size, seed=seed, data_range=data_range(config),
                                  uniform_dequantization=bool(d.uniform_dequantization and train), **shard)
    if is_toy(config):
        # the "test" split of a toy is a fresh sample from another seed
        return data.toy_loader(d.dataset[4:], batch_size, seed=seed + (0 if split == "train" else 1_000_003), **shard)
    return data.tfds_loader(d.dataset, split, batch_size, data_dir=d.data_dir or None, seed=seed,
                            image_size=d.image_size, random_flip=bool(d.random_flip and train),
                            uniform_dequantization=bool(d.uniform_dequantization and train),
                            data_range=data_range(config), **shard)


def build_loss(config, sde, model):
    """The DSM loss the config asks for (continuous or discrete), with dropout keys for the network."""
    t = config.training
    score_model = models.network_score_model(model, sde, train=True)
    if t.continuous:
        loss = losses.get_dsm_loss_fn(sde, score_model, reduce_mean=t.reduce_mean,
                                      likelihood_weighting=t.likelihood_weighting,
                                      importance_sampling=t.importance_sampling, rng_kwarg="dropout_key")
    else:
        loss = losses.get_discrete_dsm_loss_fn(sde, score_model, reduce_mean=t.reduce_mean, rng_kwarg="dropout_key")
    num_classes = int(getattr(model, "num_classes", 0))
    if t.get("label_dropout", 0.0) > 0:
        if not num_classes:
            raise ValueError("training.label_dropout needs a class-conditional network: set "
                             "model.options.num_classes")
        loss = guidance.with_label_dropout(loss, t.label_dropout, null_label=num_classes)
    return loss


def build_optimizer(config):
    o = config.optim
    return training.make_optimizer(o.lr, o.warmup, o.grad_clip, beta1=o.beta1, eps=o.eps, weight_decay=o.weight_decay)


def build_sampler(config, sde) -> Callable:
    """``sample_fn(score_fn, keys, x_init) -> (x, nfe)`` for ``config.sampling``.

    ``method``: a :func:`diffjax.samplers.get_step` name on the ``grid`` with ``n_steps`` updates;
    "pc" with ``predictor``, ``corrector`` ("none": the predictor alone), ``snr`` and
    ``n_steps_each`` corrector steps; or "ode", the adaptive probability-flow ODE (``ode_rtol``).
    """
    s = config.sampling
    if s.method == "ode":
        return lambda score_fn, keys, x: samplers.ode_sample(sde, score_fn, keys, x, rtol=s.ode_rtol, atol=s.ode_rtol)
    if s.grid not in samplers.TIME_GRIDS:
        raise ValueError(f"unknown sampling.grid {s.grid!r}; expected one of {sorted(samplers.TIME_GRIDS)}")
    if s.method == "pc" and s.corrector == "none":
        step = samplers.get_step(s.predictor, sde)
    elif s.method == "pc":
        step = samplers.get_step("pc", sde, predictor=s.predictor, corrector=s.corrector, snr=s.snr,
                                 n_steps=s.n_steps_each)
    else:
        step = samplers.get_step(s.method, sde)
    ts = samplers.TIME_GRIDS[s.grid](sde, int(s.n_steps))
    return lambda score_fn, keys, x: samplers.sample(step, score_fn, keys, x, ts, denoise=s.noise_removal)


def _init_state(model, optimizer, shape, key):
    k_params, k_train = jax.random.split(key)
    return training.create_train_state(k_train, models.init_params(model, k_params, shape), optimizer)


def _model_batch(batch: dict, conditional: bool) -> dict:
    out = {"x": batch["x"]}
    if conditional:
        out["class_labels"] = batch["label"]
    return out


# ----------------------------------------------------------------------------------------------
# Logging


class MetricLogger:
    """Metrics as JSON lines (``metrics.jsonl``) and TensorBoard event files (tensorboardX), on
    process 0 only (elsewhere every call does nothing)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.path = os.path.join(workdir, "metrics.jsonl")
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:  # pragma: no cover - tensorboardX is a dependency
            self._tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None and "step" in record:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, record["step"])
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


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


def _progress(total: int, initial: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                desc="train", mininterval=1.0)


def train(config, workdir: str, *, progress: bool = True, handle_signals: bool = True,
          finish: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train ``config`` in ``workdir``, resuming from its latest checkpoint if there is one.

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
    main = parallel.is_main_process()
    workdir = os.path.abspath(workdir)
    mesh = parallel.make_mesh(config.parallel.fsdp)
    parallel.check_global_batch(t.batch_size, mesh)
    loader = build_loader(config, "train", t.batch_size // jax.process_count())  # a bad dataset fails before compiling
    sde, model = build_sde(config), build_model(config)
    conditional = bool(getattr(model, "num_classes", 0))
    optimizer = build_optimizer(config)
    step_fn = training.make_train_step(build_loss(config, sde, model), optimizer, ema_rate=config.model.ema_rate,
                                       skip_nonfinite=True)
    init = functools.partial(_init_state, model, optimizer, example_shape(config))
    key0 = jax.random.PRNGKey(config.seed)
    shardings = parallel.state_shardings(jax.eval_shape(init, key0), mesh, config.parallel.fsdp > 1)

    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=t.keep_last,
                                   keep_period=t.keep_period or None)
    current = _json_config(config)
    start = ckpt.latest_step()
    if start is not None:
        diffs = config_differences(ckpt.restore_config(start), current)
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
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(current, f, indent=2)

    n = t.n_jitted_steps
    compiled = parallel.compile_train_step(step_fn, mesh, shardings, n)
    logger = MetricLogger(workdir, enabled=main)
    logger.write({"event": "resume" if start else "start", "step": start, "devices": mesh.size,
                  "processes": jax.process_count(), "time": time.time()})
    stop = _StopFlag(handle_signals)
    bar = _progress(t.n_iters, min(start, t.n_iters), progress and main)
    step, in_a_row, skipped_total = start, 0, 0
    window: dict[str, list] = {}
    last_saved = start if start else None
    tick = time.perf_counter()
    try:
        while step < t.n_iters:
            batches = [_model_batch(next(loader), conditional) for _ in range(n)]
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
    if finish:
        run = Run(config=config, sde=sde, model=model, params=state.ema_params, step=step, mesh=mesh, workdir=workdir)
        result.update(_finish(run, workdir, log))
    return result


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
        x, nfe = generate(run, jax.random.PRNGKey(config.seed + 1), config.sampling.num_samples)
        png = write_samples(run, x, os.path.join(workdir, "samples.npz"))
        out.update(samples=png, sample_nfe=nfe)
        log(f"{len(x)} samples ({config.sampling.method}, {nfe} score evaluations each) -> {png}")
    if config.eval.bpd_num_examples > 0:
        log(f"likelihood of {config.eval.bpd_num_examples} test examples (probability-flow ODE, rtol "
            f"{config.eval.bpd_rtol:g}) ...")
        ev = evaluate_likelihood(run, jax.random.PRNGKey(config.seed + 2), "test", config.eval.bpd_num_examples)
        out["eval"] = ev
        log(format_likelihood(ev))
    if parallel.is_main_process():
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump({"step": run.step, **out}, f, indent=2)
    return out


# ----------------------------------------------------------------------------------------------
# Loading a trained run, sampling and evaluation


@dataclasses.dataclass
class Run:
    """What a trained run needs for sampling and evaluation: its config, process, network, EMA
    parameters, the step they come from and the mesh they live on."""

    config: Any
    sde: Any
    model: Any
    params: Any
    step: int
    mesh: Any
    workdir: str = ""


def restore_state(workdir: str, step: Optional[int] = None, config_overrides=None):
    """(config, state, data_state, step) of ``workdir``'s latest checkpoint (or ``step``): the whole
    train state, replicated over all devices, and the config saved with it (then ``config_overrides``,
    dotted ``key=value`` strings, applied)."""
    import ml_collections

    from diffjax.cli import apply_overrides

    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints in {workdir} (expected {directory}); train first with "
                                f"`diffjax train --workdir {workdir}`")
    ckpt = checkpoint.Checkpointer(directory)
    try:
        saved = ckpt.all_steps()
        if not saved:
            raise checkpoint.CheckpointError(f"no checkpoint in {directory}; train first with "
                                             f"`diffjax train --workdir {workdir}`")
        step = max(saved) if step is None else step
        if step not in saved:
            raise checkpoint.CheckpointError(f"no checkpoint of step {step} in {directory}; saved steps: {sorted(saved)}")
        config = ml_collections.ConfigDict(ckpt.restore_config(step))
        apply_overrides(config, config_overrides or ())
        init = functools.partial(_init_state, build_model(config), build_optimizer(config), example_shape(config))
        abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
        shardings = parallel.state_shardings(abstract, parallel.make_mesh(1))
        state, _, data_state = ckpt.restore(checkpoint.abstract_like(abstract, shardings), step)
    finally:
        ckpt.close()
    return config, state, data_state, int(step)


def load_run(workdir: str, step: Optional[int] = None, config_overrides=None) -> Run:
    """A :class:`Run` with the EMA parameters of ``workdir``'s latest checkpoint (or ``step``); see
    :func:`restore_state`."""
    config, state, _, step = restore_state(workdir, step, config_overrides)
    return Run(config=config, sde=build_sde(config), model=build_model(config), params=state.ema_params, step=step,
               mesh=parallel.make_mesh(1), workdir=workdir)


def _chunks(num: int, batch_size: int, mesh) -> tuple[int, int]:
    """(batch, padded total): batches a multiple of the device count."""
    batch = max(1, min(batch_size, num))
    batch = -(-batch // mesh.size) * mesh.size
    return batch, -(-num // batch) * batch


def generate(run: Run, key, num: int, batch_size: Optional[int] = None, class_labels=None,
             progress: bool = False) -> tuple[np.ndarray, int]:
    """``num`` samples in the model's data range (numpy, float32) and the score evaluations per sample.

    Example i uses the key ``fold_in(key, i)``, so the samples do not depend on ``batch_size``
    (default ``sampling.batch_size``). Class-conditional networks get ``class_labels`` (default
    ``i mod num_classes``, so grid rows run through the classes), guided with weight
    ``sampling.guidance_weight`` (classifier-free guidance). ``progress``: a bar over batches.
    """
    config = run.config
    if not isinstance(num, int) or num < 1:
        raise ValueError(f"the number of samples must be a positive int; got {num!r}")
    batch, total = _chunks(num, batch_size or config.sampling.batch_size, run.mesh)
    sample_fn = build_sampler(config, run.sde)
    score_model = models.network_score_model(run.model, run.sde)
    num_classes = int(getattr(run.model, "num_classes", 0))
    w = float(config.sampling.get("guidance_weight", 0.0))
    if w and not num_classes:
        raise ValueError("sampling.guidance_weight needs a class-conditional network (model.options.num_classes)")
    if num_classes:
        labels = np.arange(total) % num_classes if class_labels is None else np.resize(np.asarray(class_labels), total)
    else:
        labels = np.zeros(total, np.int32)
    sharding = parallel.batch_sharding(run.mesh)

    @functools.partial(jax.jit, out_shardings=(parallel.replicated(run.mesh), parallel.replicated(run.mesh)))
    def draw(params, keys, y):
        def score_fn(x, t):
            if not num_classes:
                return score_model(params, x, t)
            return guidance.classifier_free_guided_score(score_model, params, y, w, null_label=num_classes)(x, t)

        x_init = jax.vmap(lambda k: samplers.prior_sample(run.sde, k, (1, *example_shape(config)))[0])(keys)
        x, nfe = sample_fn(score_fn, keys, x_init)
        return x, jnp.max(nfe)

    all_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(total))
    out, nfe = [], 0
    for i in _progress_range(range(0, total, batch), progress, "sample"):
        keys = jax.device_put(all_keys[i:i + batch], sharding)
        y = jax.device_put(jnp.asarray(labels[i:i + batch], jnp.int32), sharding)
        x, n = draw(run.params, keys, y)
        out.append(np.asarray(x))
        nfe = max(nfe, int(n))
    return np.concatenate(out)[:num].astype(np.float32), nfe


def _progress_range(it, enabled: bool, desc: str):
    if not enabled or not parallel.is_main_process():
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, unit="batch", dynamic_ncols=True)


def to_unit_range(config, x: np.ndarray) -> np.ndarray:
    """Map samples from the model's data range to [0, 1] (clipped)."""
    lo, hi = data_range(config)
    return np.clip((np.asarray(x, np.float32) - lo) / (hi - lo), 0.0, 1.0)


def write_samples(run: Run, x: np.ndarray, path: str) -> str:
    """Write ``path`` (an .npz: ``images`` float32 in [0, 1] (N, H, W, C) for image data, ``samples``
    (N, 2) for 2-D toys) and a PNG grid beside it; returns the PNG's path. Process 0 only."""
    if not path.endswith(".npz"):
        raise ValueError(f"the output file must end in .npz; got {path!r}")
    png = path[:-4] + ".png"
    if not parallel.is_main_process():
        return png
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if is_toy(run.config):
        np.savez(path, samples=np.asarray(x, np.float32))
        images.write_png(png, images.density_image(x))
    else:
        unit = to_unit_range(run.config, x)
        np.savez(path, images=unit)
        images.write_png(png, images.image_grid(unit))
    return png


def _eval_data(config, split: str, num: int):
    """(data, levels or None) of the first ``num`` examples of ``split`` (integer levels for images)."""
    if config.data.dataset == "digits":
        x, _ = data.digits_split(split, config.data.image_size)
        return x[:num], data.DIGITS_LEVELS
    if is_toy(config):
        loader = build_loader(config, split, num, train=False)
        return next(loader)["x"], None
    loader = build_loader(config, split, num, train=False)
    return next(loader)["levels"], 256


def gaussian_baseline(config, split: str, x: np.ndarray) -> Optional[float]:
    """The full-covariance Gaussian fitted to the training split, scored on ``x``: bits/dim for the
    digits (:func:`diffjax.data.fit_gaussian_bits_per_dim`), NLL in nats for toys; None for TFDS."""
    if config.data.dataset == "digits":
        train_levels, _ = data.digits_split("train", config.data.image_size)
        return data.fit_gaussian_bits_per_dim(train_levels, x, data.DIGITS_LEVELS)
    if is_toy(config):
        a = np.asarray(next(build_loader(config, "train", 20_000, train=False))["x"], np.float64)
        m, cov = a.mean(0), np.cov(a, rowvar=False, bias=True)
        r = np.asarray(x, np.float64) - m
        quad = np.einsum("ni,ij,nj->n", r, np.linalg.inv(cov), r)
        return float(np.mean(0.5 * (quad + np.linalg.slogdet(cov)[1] + 2 * math.log(2 * math.pi))))
    return None


def evaluate_likelihood(run: Run, key, split: str = "test", num: Optional[int] = None,
                        batch_size: Optional[int] = None, rtol: Optional[float] = None,
                        num_dequantizations: int = 1) -> dict:
    """Bits/dim (image data) or negative log-likelihood in nats (2-D toys) of the first ``num``
    examples of ``split`` under the EMA model, through the probability-flow ODE (Hutchinson
    divergence, ``eval.bpd_rtol``), with the standard error over examples and the Gaussian baseline
    on the same examples."""
    config = run.config
    num = num or config.eval.bpd_num_examples or 256
    rtol = float(rtol or config.eval.bpd_rtol)
    x, levels = _eval_data(config, split, num)
    num = len(x)
    batch, total = _chunks(num, batch_size or config.eval.batch_size, run.mesh)
    pad = np.concatenate([x, np.repeat(x[-1:], total - num, axis=0)]) if total > num else x
    score_model = models.network_score_model(run.model, run.sde)
    num_classes = int(getattr(run.model, "num_classes", 0))
    lo_hi = data_range(config)
    sharding = parallel.batch_sharding(run.mesh)

    @functools.partial(jax.jit, out_shardings=(parallel.replicated(run.mesh), parallel.replicated(run.mesh)))
    def score_batch(params, keys, xb):
        def score_fn(x_, t):
            if num_classes:  # the unconditional score: the "no class" label
                return score_model(params, x_, t, class_labels=jnp.full((x_.shape[0],), num_classes, jnp.int32))
            return score_model(params, x_, t)

        if levels is None:
            logp, _, nfe = log_likelihood(keys, run.sde, score_fn, xb, rtol=rtol, atol=rtol)
            return -logp, nfe
        return bits_per_dim(keys, run.sde, score_fn, xb, levels=levels, data_range=lo_hi,
                            num_dequantizations=num_dequantizations, rtol=rtol, atol=rtol)

    all_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(total))
    values, nfes = [], []
    for i in range(0, total, batch):
        keys = jax.device_put(all_keys[i:i + batch], sharding)
        xb = jax.device_put(jnp.asarray(pad[i:i + batch], jnp.float32), sharding)
        v, n = score_batch(run.params, keys, xb)
        values.append(np.asarray(v))
        nfes.append(np.asarray(n))
    v = np.concatenate(values)[:num].astype(np.float64)
    return {
        "metric": "bits/dim" if levels is not None else "NLL (nats)",
        "split": split,
        "num_examples": num,
        "value": float(v.mean()),
        "stderr": float(v.std(ddof=1) / math.sqrt(num)) if num > 1 else float("nan"),
        "mean_nfe": float(np.concatenate(nfes)[:num].mean()),
        "gaussian_baseline": gaussian_baseline(config, split, x),
        "step": run.step,
        "rtol": rtol,
    }


def _reference_images(config, split: str, num: int) -> np.ndarray:
    """The first ``num`` examples of an image split in [0, 1], at bin centres (no dequantisation noise)."""
    if config.data.dataset == "digits":
        x, _ = data.digits_split(split, config.data.image_size)
        return data.levels_to_model(x[:num].astype(np.float32), data.DIGITS_LEVELS, (0.0, 1.0))
    loader = build_loader(config, split, min(num, 500), train=False)
    out, n = [], 0
    while n < num:
        levels = np.asarray(next(loader)["levels"], np.float32)
        out.append(data.levels_to_model(levels, 256, (0.0, 1.0)))
        n += len(levels)
    return np.concatenate(out)[:num]


def evaluate(run: Run, key, num: int = 1000, batch_size: Optional[int] = None, inception: Optional[str] = None,
             progress: bool = False) -> dict:
    """Sample ``num`` images from the run and score them against the training split.

    The digits use the digits classifier's features (:func:`diffjax.metrics.digits_classifier`, cached
    in the work directory): digits-FID, digits-KID and digits-IS. Other image datasets need the FID
    InceptionV3 weights (``inception``, see :mod:`diffjax.metrics`). The test split's own values, the
    floor a perfect model would reach with as many examples, are returned beside the samples'.
    """
    config = run.config
    if is_toy(config):
        raise ValueError("evaluate scores images; for a 2-D toy use `diffjax likelihood` (NLL beside a Gaussian)")
    x, nfe = generate(run, key, num, batch_size, progress=progress)
    samples = to_unit_range(config, x)
    if config.data.dataset == "digits":
        cache = os.path.join(run.workdir, "eval") if run.workdir else None  # the classifier is cached per run
        model, params, accuracy = metrics.digits_classifier(cache)
        featurize = functools.partial(metrics.digits_features, model, params)
        kind, extra = "digits", {"classifier_test_accuracy": accuracy}
    else:
        if not inception:
            raise ValueError(f"FID/IS/KID on {config.data.dataset} need the InceptionV3 weights: pass --inception "
                             "FILE.npz (see diffjax.metrics for where to get and how to convert them)")
        variables = metrics.load_inception_params(inception)
        featurize = functools.partial(metrics.inception_features, variables, progress=progress)
        kind, extra = "inception", {}
    train_f, _ = featurize(_reference_images(config, "train", max(num, 2000 if kind == "digits" else num)))
    sample_f, sample_p = featurize(samples)
    test_x = _reference_images(config, "test", num)
    test_f, test_p = featurize(test_x)
    return {"features": kind, "step": run.step, "sampler": config.sampling.method, "nfe": nfe,
            "samples": metrics.evaluate_features(sample_f, sample_p, train_f),
            "test_split": metrics.evaluate_features(test_f, test_p, train_f), **extra}


def format_evaluation(ev: dict) -> str:
    name = "digits-" if ev["features"] == "digits" else ""
    lines = [f"{'':14s} {name + 'FID':>11s} {name + 'KID':>18s} {name + 'IS':>14s}    n"]
    for label, r in (("samples", ev["samples"]), ("test split", ev["test_split"])):
        lines.append(f"{label:14s} {r['fid']:11.3f} {r['kid']:10.4f} ± {r['kid_std']:.4f} "
                     f"{r['is']:7.3f} ± {r['is_std']:.3f} {r['num']:5d}")
    text = "\n".join(lines) + (f"\n(step {ev['step']}, {ev['sampler']} with {ev['nfe']} score evaluations; FID and KID "
                               "against the training split; the test split is the floor)")
    if "classifier_test_accuracy" in ev:
        text += f"\n(digits classifier: {100 * ev['classifier_test_accuracy']:.1f} % test accuracy)"
    return text


def format_likelihood(ev: dict) -> str:
    text = (f"{ev['split']} {ev['metric']}: {ev['value']:.4f} ± {ev['stderr']:.4f} "
            f"({ev['num_examples']} examples, EMA parameters of step {ev['step']}, mean {ev['mean_nfe']:.0f} "
            f"score evaluations)")
    if ev.get("gaussian_baseline") is not None:
        text += (f"\n  full-covariance Gaussian fitted to the training split, same examples: "
                 f"{ev['gaussian_baseline']:.4f}")
    return text
