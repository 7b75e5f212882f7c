"""Samples from a trained run: drawn batch by batch on the run's mesh, written as .npz and a PNG."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from jax.tree_util import Partial

from diffjax import guidance, images, models, parallel, samplers, superposition
from diffjax._jit import bind, filter_jit
from diffjax.results import NonFiniteError
from diffjax.run import files
from diffjax.run.build import build_sampler, data_range, example_shape, is_toy, sampler_name
from diffjax.run.load import Run
from diffjax.run.logging import progress_range

__all__ = ["plan_batches", "run_score_fn", "load_guide", "generate", "superpose", "to_unit_range", "write_samples"]


def plan_batches(num: int, batch_size: int, mesh) -> tuple[int, int]:
    """(batch, padded total) for ``num`` examples: batches a multiple of the device count."""
    batch = max(1, min(batch_size, num))
    batch = -(-batch // mesh.size) * mesh.size
    return batch, -(-num // batch) * batch


def run_score_fn(run: Run, labels=None, guidance_weight: float = 0.0, unconditional: bool = False, guide=None):
    """The score function of the run's network with its EMA parameters, as a pytree of them (so a
    sampler compiles once for any parameters of the run): unconditional, conditional on ``labels``
    with classifier-free guidance ``guidance_weight``, or (``unconditional``) the "no class" label of
    a class-conditional network. With ``guide`` (a weaker :class:`Run` of the same process and
    network, :func:`load_guide`), autoguidance of an unconditional run: (1 + w) s - w s_guide."""
    score_model = models.network_score_model(run.model, run.sde, sigma_data=float(run.config.sde.get("sigma_data", 0.5)))
    num_classes = int(getattr(run.model, "num_classes", 0))
    if guide is not None:
        if num_classes:
            raise ValueError("autoguidance (sampling.guide) is for unconditional runs here; a class-conditional run "
                             "is guided by its own 'no class' label (sampling.guidance_weight alone)")
        guide_model = models.network_score_model(guide.model, guide.sde,
                                                 sigma_data=float(guide.config.sde.get("sigma_data", 0.5)))
        return guidance.autoguided_score(Partial(score_model, run.params), Partial(guide_model, guide.params),
                                         guidance_weight)
    if not num_classes:
        if guidance_weight:
            raise ValueError("sampling.guidance_weight needs a class-conditional network (model.options.num_classes), "
                             "or a guide run for autoguidance (sampling.guide, --guide)")
        return Partial(score_model, run.params)
    if unconditional:
        return bind(_no_class_score, score_model, run.params, num_classes)
    return guidance.classifier_free_guided_score(score_model, run.params, labels, guidance_weight,
                                                 null_label=num_classes)


def load_guide(run: Run):
    """The run named by ``sampling.guide`` (None when empty), refused unless it has the run's process
    and network (autoguidance guides a model by a weaker version of itself)."""
    path = run.config.sampling.get("guide", "")
    if not path:
        return None
    from diffjax.run.load import load_run

    guide = load_run(path)
    for section in ("sde", "model", "data"):
        a, b = run.config[section].to_dict(), guide.config[section].to_dict()
        a.pop("ema_rate", None), b.pop("ema_rate", None)
        if a != b:
            raise ValueError(f"the guide {path} has another {section} than {run.workdir or 'the run'}; autoguidance needs "
                             "a weaker model of the same process, network and data (e.g. the same config, trained shorter)")
    return guide


def _no_class_score(score_model, params, null_label, x, t):
    return score_model(params, x, t, class_labels=jnp.full((x.shape[0],), null_label, jnp.int32))


@filter_jit
def _draw(sampler, score_fn, keys, shape, mesh):
    x_init = jax.vmap(lambda k: samplers.prior_sample(sampler.sde, k, (1, *shape))[0])(keys)
    r = sampler(score_fn, keys, x_init)
    replicated = NamedSharding(mesh, PartitionSpec())
    return (jax.lax.with_sharding_constraint(r.x, replicated), jnp.max(r.nfe),
            jax.lax.with_sharding_constraint(r.nonfinite_step, replicated))


def generate(run: Run, key, num: int, batch_size: Optional[int] = None, class_labels=None,
             progress: bool = False, check_finite: bool = True) -> tuple[np.ndarray, int]:
    """``num`` samples in the model's data range (numpy, float32) and the score evaluations per sample.

    Example i uses the key ``fold_in(key, i)``, so the samples do not depend on ``batch_size``
    (default ``sampling.batch_size``). Class-conditional networks get ``class_labels`` (default
    ``i mod num_classes``, so grid rows run through the classes), guided with weight
    ``sampling.guidance_weight`` (classifier-free guidance). ``progress``: a bar over batches.
    Samples that came out NaN or Inf raise :class:`~diffjax.results.NonFiniteError` (one line, how
    many), unless ``check_finite=False``.
    """
    config = run.config
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"the number of samples must be a positive int; got {num!r}")
    batch, total = plan_batches(num, batch_size or config.sampling.batch_size, run.mesh)
    sampler = build_sampler(config, run.sde, run.workdir)
    num_classes = int(getattr(run.model, "num_classes", 0))
    w = float(config.sampling.get("guidance_weight", 0.0))
    if num_classes:
        labels = np.arange(total) % num_classes if class_labels is None else np.resize(np.asarray(class_labels), total)
    else:
        labels = np.zeros(total, np.int32)
    shape = example_shape(config)
    guide = load_guide(run)

    def draw(i, keys):
        y = jax.device_put(jnp.asarray(labels[i:i + batch], jnp.int32), parallel.batch_sharding(run.mesh))
        x, n, f = _draw(sampler, run_score_fn(run, y if num_classes else None, w, guide=guide), keys, shape, run.mesh)
        return np.asarray(x), np.asarray(f), int(n)

    out, failed, nfes = _over_batches(draw, key, total, batch, run.mesh, progress, "sample")
    nfe = max(nfes)
    failed = failed[:num]
    if check_finite and np.any(failed >= 0):
        raise NonFiniteError(f"{int(np.sum(failed >= 0))} of {num} samples ({sampler_name(config)}) became NaN or "
                             f"Inf, the first at update {int(failed[failed >= 0].min())}: the run's score is "
                             "non-finite there (a diverged run?); nothing was written")
    return out[:num].astype(np.float32), nfe


def _check_superposable(runs) -> None:
    if len(runs) < 2:
        raise ValueError(f"superposition needs at least two runs (--workdir A --workdir B); got {len(runs)}")
    first = runs[0]
    for r in runs[1:]:
        a, b = first.config.sde.to_dict(), r.config.sde.to_dict()
        differ = [f"sde.{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if differ:
            shown = "; ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
            raise ValueError(f"runs {first.workdir} and {r.workdir} are of different processes ({shown}); "
                             "superposition needs models of one process")
        for what, a, b in (("example shape", example_shape(first.config), example_shape(r.config)),
                           ("data range", data_range(first.config), data_range(r.config))):
            if a != b:
                raise ValueError(f"runs {first.workdir} and {r.workdir} differ in their {what} ({a} vs {b}); "
                                 "superposition needs models on one data space")
        if getattr(r.model, "num_classes", 0) or getattr(first.model, "num_classes", 0):
            raise ValueError("superposition takes unconditional runs; got a class-conditional network")


def superpose(runs, key, num: int, mode: str = "or", *, weights=None, temperature: float = 1.0, num_steps: int = 1000,
              grid: str = "uniform", ode: bool = False, batch_size: Optional[int] = None, progress: bool = False):
    """``num`` samples of the superposition of trained ``runs`` (SuperDiff OR: the mixture of their
    distributions with ``weights`` and ``temperature``; AND: where their densities are equal), by
    :func:`diffjax.superposition.superposition_sample` on ``num_steps`` updates of ``grid``.

    Example i uses ``fold_in(key, i)``, as :func:`generate`. Returns ``(x, log_q, kappa, nfe)``: samples
    in the model's data range (num, ...), each model's tracked log-density (M, num) and the last step's
    weights κ (M, num) (numpy, float32), and the score evaluations per sample."""
    runs = list(runs)
    _check_superposable(runs)
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"the number of samples must be a positive int; got {num!r}")
    if grid not in samplers.TIME_GRIDS:
        raise ValueError(f"unknown grid {grid!r} for superposition; expected one of {sorted(samplers.TIME_GRIDS)}")
    sde = runs[0].sde
    ts = samplers.TIME_GRIDS[grid](sde, int(num_steps))
    batch, total = plan_batches(num, batch_size or runs[0].config.sampling.batch_size, runs[0].mesh)
    score_fns = [run_score_fn(r) for r in runs]
    shape = example_shape(runs[0].config)

    def draw(i, keys):
        x_init = jax.vmap(lambda k: samplers.prior_sample(sde, k, (1, *shape))[0])(keys)
        r = superposition.superposition_sample(
            sde, score_fns, keys, x_init, ts, mode=mode, weights=weights, temperature=temperature, ode=ode)
        return np.asarray(r.x), np.asarray(r.logp).T, np.asarray(r.kappa).T, int(r.nfe[0])

    x, log_q, kappa, nfes = _over_batches(draw, key, total, batch, runs[0].mesh, progress, "superpose")
    return (x[:num].astype(np.float32), log_q[:num].T.astype(np.float32), kappa[:num].T.astype(np.float32),
            nfes[0])


def _over_batches(draw, key, total: int, batch: int, mesh, progress: bool, label: str):
    """Run ``draw(i, keys)`` on each batch of ``total`` examples, example i with key ``fold_in(key, i)``
    (so results do not depend on the batch size), keys sharded over ``mesh``; each output of ``draw``
    but the last (arrays with the example first) concatenated, the last (an int) listed per batch."""
    sharding = parallel.batch_sharding(mesh)
    all_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(total))
    parts = []
    for i in progress_range(range(0, total, batch), progress, label):
        parts.append(draw(i, jax.device_put(all_keys[i:i + batch], sharding)))
    *arrays, last = zip(*parts)
    return (*(np.concatenate(a) for a in arrays), list(last))


def to_unit_range(config, x: np.ndarray) -> np.ndarray:
    """Map samples from the model's data range to [0, 1] (clipped)."""
    lo, hi = data_range(config)
    return np.clip((np.asarray(x, np.float32) - lo) / (hi - lo), 0.0, 1.0)


def write_samples(run: Run, x: np.ndarray, path: str, **extra) -> str:
    """Write ``path`` (an .npz: ``images`` float32 in [0, 1] (N, H, W, C) for image data, ``samples``
    (N, 2) for 2-D toys, any ``extra`` arrays by name, and ``diffjax_output``, the checkpoint step, which
    marks the file as diffjax's) and a PNG grid beside it, each atomically; returns the PNG's path.
    Process 0 only."""
    if not path.endswith(".npz"):
        raise ValueError(f"the output file must end in .npz; got {path!r}")
    png = path[:-4] + ".png"
    if not parallel.is_main_process():
        return png
    if is_toy(run.config):
        arrays, picture = {"samples": np.asarray(x, np.float32)}, images.density_image(x)
    else:
        arrays = {"images": to_unit_range(run.config, x)}
        picture = images.image_grid(arrays["images"])
    arrays.update(extra, **{files.OUTPUT_KEY: np.asarray(run.step)})

    def write_npz(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    files.atomic_write(path, write_npz)
    files.atomic_write(png, lambda tmp: images.write_png(tmp, picture))
    return png
