"""Config to objects: the process, the network, the data, the loss, the optimiser and the sampler a
config names. Nothing here trains or writes; :mod:`diffjax.run.train` and the others call these."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax

from diffjax import data, guidance, losses, models, samplers, training
from diffjax.sde import SDE, SubVPSDE, VESDE, VPSDE

__all__ = ["build_sde", "build_model", "build_loader", "build_loss", "build_optimizer", "build_sampler", "Sampler",
           "init_state", "model_batch", "is_toy", "data_range", "data_levels", "example_shape"]


def build_sde(config) -> SDE:
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
            raise ValueError("training.label_dropout needs a class-conditional network: set model.options.num_classes")
        loss = guidance.with_label_dropout(loss, t.label_dropout, null_label=num_classes)
    return loss


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


@dataclasses.dataclass(frozen=True)
class Sampler:
    """How a run draws samples, as a value (compiled once per equal sampler): ``step`` on ``n_steps``
    updates of the time grid ``grid``, or the adaptive probability-flow ODE when ``step`` is None.
    ``sampler(score_fn, keys, x_init) -> (x, nfe)``."""

    sde: SDE
    step: Optional[samplers.Step]
    grid: str = "uniform"
    n_steps: int = 1000
    denoise: bool = True
    ode_rtol: float = 1e-5

    def __call__(self, score_fn, keys, x_init):
        if self.step is None:
            return samplers.ode_sample(self.sde, score_fn, keys, x_init, rtol=self.ode_rtol, atol=self.ode_rtol)
        ts = samplers.TIME_GRIDS[self.grid](self.sde, self.n_steps)
        return samplers.sample(self.step, score_fn, keys, x_init, ts, denoise=self.denoise)


def build_sampler(config, sde) -> Sampler:
    """The :class:`Sampler` of ``config.sampling``.

    ``method``: a :func:`diffjax.samplers.get_step` name on the ``grid`` with ``n_steps`` updates;
    "pc" with ``predictor``, ``corrector`` ("none": the predictor alone), ``snr`` and
    ``n_steps_each`` corrector steps; or "ode", the adaptive probability-flow ODE (``ode_rtol``).
    """
    s = config.sampling
    if s.method == "ode":
        return Sampler(sde, None, ode_rtol=float(s.ode_rtol))
    if s.grid not in samplers.TIME_GRIDS:
        raise ValueError(f"unknown sampling.grid {s.grid!r}; expected one of {sorted(samplers.TIME_GRIDS)}")
    if s.method == "pc" and s.corrector == "none":
        step = samplers.get_step(s.predictor, sde)
    elif s.method == "pc":
        step = samplers.get_step("pc", sde, predictor=s.predictor, corrector=s.corrector, snr=s.snr,
                                 n_steps=s.n_steps_each)
    else:
        step = samplers.get_step(s.method, sde)
    if not isinstance(s.n_steps, int) or s.n_steps < 1:
        raise ValueError(f"sampling.n_steps must be an integer >= 1; got {s.n_steps!r}")
    return Sampler(sde, step, s.grid, int(s.n_steps), bool(s.noise_removal))
