"""Config to objects: the process, the network, the data, the loss, the optimiser and the sampler a
config names. Nothing here trains, and the only file written is a run's Gaussian fit
(:func:`data_gaussian_fit`); :mod:`diffjax.run.train` and the others call these."""

from __future__ import annotations

import os
import sys
from typing import Optional

import jax
import numpy as np

from diffjax import data, guidance, losses, models, samplers, training
from diffjax.processes import (EDM, PFGMPP, PROCESSES, SDE, CosineVP, NoiseLevelTime, OneSidedInterpolant, RectifiedFlow,
                               SubVPSDE, VESDE, VPSDE)

__all__ = ["LOSSES", "loss_name", "build_sde", "build_model", "build_loader", "build_loss", "build_optimizer", "build_sampler",
           "sampler_name", "data_gaussian_fit",
           "init_state", "model_batch", "is_toy", "data_range", "data_levels", "example_shape"]


def build_sde(config) -> SDE:
    """The process ``config.sde.name`` (see :data:`diffjax.sde.PROCESSES`) with the config's parameters."""
    s = config.sde
    name = s.name
    t_max = {"t_max": s.t_max} if s.get("t_max", 0.0) else {}
    if name == "vesde":
        return VESDE(sigma_min=s.sigma_min, sigma_max=s.sigma_max, N=s.num_scales)
    if name == "vpsde":
        return VPSDE(beta_min=s.beta_min, beta_max=s.beta_max, N=s.num_scales)
    if name == "subvpsde":
        return SubVPSDE(beta_min=s.beta_min, beta_max=s.beta_max, N=s.num_scales)
    if name == "edm":
        return EDM(sigma_min=s.sigma_min, sigma_max=s.sigma_max, N=s.num_scales)
    if name == "pfgmpp":
        return PFGMPP(sigma_min=s.sigma_min, sigma_max=s.sigma_max, N=s.num_scales, D=s.pfgmpp_D)
    if name == "cosine":
        return CosineVP(s=s.cosine_s, N=s.num_scales, **t_max)
    if name == "rectified_flow":
        return RectifiedFlow(N=s.num_scales, **t_max)
    if name == "interpolant":
        return OneSidedInterpolant(alpha=s.interpolant_alpha, gamma=s.interpolant_gamma,
                                   gamma_scale=s.gamma_scale, N=s.num_scales, **t_max)
    raise ValueError(f"unknown sde.name {name!r}; expected one of {sorted(set(PROCESSES) - {'custom'})} (a custom "
                     "process needs a function: build it in Python)")


LOSSES = ("dsm", "edm", "flow_matching")


def loss_name(config, sde: SDE) -> str:
    """``training.loss``, with "auto" resolved by process: EDM's loss for EDM and PFGM++, flow matching
    for rectified flow and the interpolants, denoising score matching otherwise."""
    name = config.training.get("loss", "auto")
    if name == "auto":
        if isinstance(sde, NoiseLevelTime):
            return "edm"
        return "flow_matching" if isinstance(sde, (RectifiedFlow, OneSidedInterpolant)) else "dsm"
    if name not in LOSSES:
        raise ValueError(f"unknown training.loss {name!r}; expected one of {LOSSES} or 'auto'")
    return name


def is_toy(config) -> bool:
    return config.data.dataset.startswith("toy:")


def data_range(config) -> tuple[float, float]:
    """(-1, 1) for centred data, else (0, 1); 2-D toys are used as they are."""
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


def build_loader(config, split: str, batch_size: int, *, seed: Optional[int] = None, train: bool = True,
                 sharded: bool = True):
    """This process's loader of ``split`` with ``batch_size`` examples per batch (per process): its
    slice of every global batch, or (``sharded=False``) the whole batch, as evaluation reads the same
    examples on every process."""
    d = config.data
    seed = config.seed if seed is None else seed
    shard = (dict(shard_index=jax.process_index(), shard_count=jax.process_count()) if sharded
             else dict(shard_index=0, shard_count=1))
    if d.get("classes", "") and d.dataset != "digits":
        raise ValueError(f"data.classes selects digit classes and works with data.dataset=digits only; got {d.dataset!r}")
    if d.dataset == "digits":
        return data.digits_loader(split, batch_size, image_size=d.image_size, seed=seed, data_range=data_range(config),
                                  uniform_dequantization=bool(d.uniform_dequantization and train), classes=d.classes,
                                  **shard)
    if is_toy(config):
        # the "test" split of a toy is a fresh sample from another seed
        return data.toy_loader(d.dataset[4:], batch_size, seed=seed + (0 if split == "train" else 1_000_003), **shard)
    return data.tfds_loader(d.dataset, split, batch_size, data_dir=d.data_dir or None, seed=seed,
                            image_size=d.image_size, random_flip=bool(d.random_flip and train),
                            uniform_dequantization=bool(d.uniform_dequantization and train),
                            data_range=data_range(config), **shard)


def build_loss(config, sde, model):
    """The loss the config asks for (:func:`loss_name`: DSM continuous or discrete, EDM's, flow
    matching), with dropout keys for the network; ``training.fp_*`` add the Fokker–Planck
    regulariser to continuous DSM."""
    t = config.training
    if float(t.get("fp_weight", 0.0)) and not (loss_name(config, sde) == "dsm" and t.continuous):
        raise ValueError("training.fp_weight (the Fokker–Planck regulariser) applies to the continuous DSM loss "
                         f"only; this config trains with {loss_name(config, sde)!r} (continuous={t.continuous})")
    score_model = models.network_score_model(model, sde, train=True, sigma_data=float(config.sde.get("sigma_data", 0.5)))
    name = loss_name(config, sde)
    if name == "edm":
        loss = losses.get_edm_loss_fn(sde, score_model, p_mean=float(t.p_mean), p_std=float(t.p_std),
                                      sigma_data=float(config.sde.sigma_data), reduce_mean=t.reduce_mean,
                                      rng_kwarg="dropout_key")
    elif name == "flow_matching":
        loss = losses.get_flow_matching_loss_fn(sde, score_model, time_sampling=t.time_sampling,
                                                reduce_mean=t.reduce_mean, rng_kwarg="dropout_key")
    elif t.continuous:
        loss = losses.get_dsm_loss_fn(sde, score_model, reduce_mean=t.reduce_mean,
                                      likelihood_weighting=t.likelihood_weighting,
                                      importance_sampling=t.importance_sampling, rng_kwarg="dropout_key",
                                      **_fp_options(t))
    else:
        loss = losses.get_discrete_dsm_loss_fn(sde, score_model, reduce_mean=t.reduce_mean, rng_kwarg="dropout_key")
    num_classes = int(getattr(model, "num_classes", 0))
    if t.get("label_dropout", 0.0) > 0:
        if not num_classes:
            raise ValueError("training.label_dropout needs a class-conditional network: set model.options.num_classes")
        loss = guidance.with_label_dropout(loss, t.label_dropout, null_label=num_classes)
    return loss


def _fp_options(t) -> dict:
    """The DSM loss's Fokker–Planck options from ``training.fp_*`` (configs saved before they existed: off)."""
    return dict(fp_weight=float(t.get("fp_weight", 0.0)), fp_time_weighting=t.get("fp_time_weighting", "sigma4_g4"),
                fp_num_examples=int(t.get("fp_num_examples", 0)), fp_divergence=t.get("fp_divergence", "rademacher"))


def build_optimizer(config):
    o = config.optim
    return training.make_optimizer(o.lr, o.warmup, o.grad_clip, beta1=o.beta1, eps=o.eps, weight_decay=o.weight_decay)


def init_state(model, optimizer, shape, key):
    """A fresh train state: the network initialised for examples of ``shape``, and the optimiser's."""
    k_params, k_train = jax.random.split(key)
    return training.create_train_state(k_train, models.init_params(model, k_params, shape), optimizer)


def model_batch(batch: dict, conditional: bool) -> dict:
    """The loss's batch from a loader's: the data, and the class labels for conditional networks."""
    out = {"x": batch["x"]}
    if conditional:
        out["class_labels"] = batch["label"]
    return out


def data_gaussian_fit(config, workdir: str = "", rank: int = 256, log=None) -> samplers.GaussianFit:
    """The training data's moment-matched Gaussian in the model's data scale (mean and top-``rank``
    eigenpairs, float64, see :func:`diffjax.samplers.fit_gaussian`), for teleportation and fitted
    grids; computed once and stored with the run as ``WORKDIR/gaussian_fit.npz`` (written in one
    rename). A stored fit that is not whole (a cut-short write, a file of something else) is fitted
    again and replaced, said through ``log`` (default: stderr); a read-only run is fitted and not stored."""
    path = os.path.join(workdir, "gaussian_fit.npz") if workdir else ""
    if path and os.path.exists(path):
        try:
            return samplers.GaussianFit.load(path)
        except ValueError as e:
            (log or _stderr)(f"diffjax: {e}; fitting it again")
    d = config.data
    if d.dataset == "digits":
        levels, _ = data.digits_split("train", d.image_size, d.classes)
        x = data.levels_to_model(levels, data.DIGITS_LEVELS, data_range(config))
    else:
        x = np.asarray(next(build_loader(config, "train", 10_000 if is_toy(config) else 5_000, train=False,
                                         sharded=False))["x"])
    fit = samplers.fit_gaussian(x, rank=min(rank, int(np.prod(x.shape[1:]))))
    if path and jax.process_index() == 0:
        try:
            fit.save(path)
        except OSError:  # a read-only run: the fit is a cache, the sampler goes on without storing it
            pass
    return fit


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def sampler_name(config) -> str:
    """How a run's samples are drawn, in words for messages: the method, or the fitted solver."""
    s = config.sampling
    if config.get("distill") and config.distill.method:
        return f"{config.distill.method} student, {s.num_steps} step{'s' if s.num_steps > 1 else ''}"
    guided = f", autoguided by {s.guide} (w = {s.guidance_weight:g})" if s.get("guide", "") else ""
    if s.get("solver", ""):
        return (f"fitted solver {s.solver}" + (f" of {s.solver_nfe} evaluations" if s.get("solver_nfe", 0) else "")
                + guided)
    return s.method + guided


def build_sampler(config, sde, workdir: str = ""):
    """The :class:`~diffjax.samplers.Sampler` of ``config.sampling`` (see
    :func:`diffjax.samplers.make_sampler`, which says what every option means); the data's Gaussian fit
    (for ``grid="fitted"`` and teleportation) is the run's stored one (:func:`data_gaussian_fit`).
    With ``sampling.solver`` set, the fitted solver it names instead (a
    :class:`~diffjax.samplers.learned.FittedSolver`, called the same way; :mod:`diffjax.run.fit`)."""
    s = config.sampling
    if config.get("distill") and config.distill.method:
        from diffjax.run.distill import student_sampler

        return student_sampler(config, sde, workdir)
    if s.get("solver", ""):
        from diffjax.run.fit import load_fitted_solver

        return load_fitted_solver(workdir, s.solver, int(s.get("solver_nfe", 0)), sde)
    return samplers.make_sampler(
        sde, s.method, num_steps=s.num_steps, grid=s.grid, order=int(s.get("order", 0)), predictor=s.predictor,
        corrector=s.corrector, snr=s.snr, langevin_steps=s.langevin_steps, teleport=s.get("teleport", "off"),
        denoise=bool(s.noise_removal), ode_rtol=s.ode_rtol, fit=lambda: data_gaussian_fit(config, workdir),
        noise=s.get("noise", "independent"))
