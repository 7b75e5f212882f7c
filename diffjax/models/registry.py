"""Networks by name, the paper's configurations as presets, and networks as score models."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from diffjax.models.ddpm import DDPM
from diffjax.models.mlp import MLPScoreNet
from diffjax.models.ncsnpp import NCSNpp
from diffjax.models.ncsnv2 import NCSNv2
from diffjax.score import ModuleApply, ScoreModel, make_score_model
from diffjax.processes import SDE

__all__ = ["NETWORKS", "PRESETS", "network_options", "get_model", "init_params", "network_score_model", "network_labels",
           "TrainModeApply"]

Array = jax.Array

NETWORKS: dict[str, type] = {"ncsnpp": NCSNpp, "ddpm": DDPM, "ncsnv2": NCSNv2, "mlp": MLPScoreNet}

# The paper's VP/sub-VP DDPM++ runs feed [-1, 1] data (data.centered = True), its VE runs [0, 1].
_DDPMPP = dict(fir=False, progressive_input="none", embedding_type="positional", prediction="eps",
               scale_by_sigma=False, centered=True)
_NCSNPP_VE = dict(centered=False)

# name -> (network, options). CIFAR-10 entries are the original score_sde configs (parameter counts
# checked in tests/test_networks.py); the digits entries are small CPU configurations.
PRESETS: dict[str, tuple[str, dict]] = {
    "ncsnpp_cifar10_ve_continuous": ("ncsnpp", dict(_NCSNPP_VE)),
    "ncsnpp_cifar10_ve_continuous_deep": ("ncsnpp", dict(_NCSNPP_VE, num_res_blocks=8)),
    "ncsnpp_cifar10_ve": ("ncsnpp", dict(_NCSNPP_VE, embedding_type="positional", continuous=False)),
    "ddpmpp_cifar10_continuous": ("ncsnpp", dict(_DDPMPP)),
    "ddpmpp_cifar10_continuous_deep": ("ncsnpp", dict(_DDPMPP, num_res_blocks=8)),
    "ddpmpp_cifar10": ("ncsnpp", dict(_DDPMPP, continuous=False)),
    "ddpm_cifar10": ("ddpm", dict(centered=True)),
    "ncsnv2_cifar10": ("ncsnv2", dict(centered=False)),
    "ncsnpp_256_ve_continuous": ("ncsnpp", dict(_NCSNPP_VE, ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2,
                                                progressive="output_skip", progressive_input="input_skip",
                                                dropout=0.0)),
    # CPU-sized: 8x8 digits (one down-sampling), 16x16 digits (two).
    "ncsnpp_digits8": ("ncsnpp", dict(nf=32, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(4,),
                                      fourier_scale=16.0)),
    "ddpmpp_digits8": ("ncsnpp", dict(_DDPMPP, nf=32, ch_mult=(1, 2), num_res_blocks=2,
                                      attn_resolutions=(4,))),
    "ncsnpp_digits16": ("ncsnpp", dict(nf=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8,))),
    "ddpmpp_digits16": ("ncsnpp", dict(_DDPMPP, nf=32, ch_mult=(1, 2, 2), num_res_blocks=2,
                                       attn_resolutions=(8,))),
}


def network_options(network: str) -> tuple[str, ...]:
    """The options (dataclass fields) a network takes."""
    cls = NETWORKS[network]
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name"))


def get_model(name: str, **options: Any):
    """A network by class name (``NETWORKS``) or preset name (``PRESETS``), with ``options`` overriding
    the preset's. An unknown name or option is a ValueError naming it and listing the valid ones."""
    if name in PRESETS:
        network, preset = PRESETS[name]
        options = {**preset, **options}
    elif name in NETWORKS:
        network = name
    else:
        raise ValueError(f"unknown network {name!r}; expected one of {tuple(NETWORKS)} or a preset {tuple(PRESETS)}")
    valid = network_options(network)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                         f"for network {network!r}; valid options: {', '.join(valid)}")
    return NETWORKS[network](**options)


def init_params(module, key: Array, example_shape: tuple[int, ...]) -> Any:
    """Variables of ``module`` for examples of shape ``example_shape`` (e.g. (32, 32, 3)), from ``key``.

    Deterministic in ``key``. Runs compiled (one compile per network and shape: initialising op by
    op is several times slower), with a batch of one, time label 1 and class label 0 if conditional.
    """
    return _init(module, key, tuple(int(n) for n in example_shape))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init(module, key: Array, example_shape: tuple[int, ...]) -> Any:
    x = jnp.zeros((1, *example_shape), jnp.float32)
    kwargs = {}
    if getattr(module, "num_classes", 0):
        kwargs["class_labels"] = jnp.zeros((1,), jnp.int32)
    return module.init(key, x, jnp.ones((1,)), **kwargs)


@dataclasses.dataclass(frozen=True)
class TrainModeApply:
    """``module.apply`` in training mode (dropout on) as a value, taking the dropout key as the
    ``dropout_key`` keyword (which the losses supply with ``rng_kwarg="dropout_key"``)."""

    module: Any

    def __call__(self, params, x, labels, dropout_key=None, **cond):
        if dropout_key is None:
            raise ValueError("a training-mode score model needs dropout_key=...; pass rng_kwarg='dropout_key' to the loss")
        return self.module.apply(params, x, labels, train=True, rngs={"dropout": dropout_key}, **cond)


def network_score_model(module, sde: SDE, *, train: bool = False, sigma_data: float = 0.5) -> ScoreModel:
    """``score_model(params, x, t, **cond)`` of a network that declares ``prediction``,
    ``scale_by_sigma`` and ``continuous`` (every network here does): a :class:`~diffjax.score.ScoreModel`,
    equal for equal networks, so ``jax.tree_util.Partial(score_model, params)`` is a score function
    the samplers compile once for.

    With ``train=True`` the network runs in training mode (dropout on) and the score model takes a
    ``dropout_key`` keyword, which the losses supply with ``rng_kwarg="dropout_key"``.
    """
    apply_fn = TrainModeApply(module) if train else ModuleApply(module)
    return make_score_model(apply_fn, sde, prediction=module.prediction, labels=network_labels(module),
                            continuous=module.continuous, scale_by_sigma=bool(module.scale_by_sigma),
                            sigma_data=sigma_data)


def network_labels(module) -> str:
    """The time labels a diffjax network reads: the original's per-process map ("score_sde") when
    continuous, the discrete step "index" otherwise (see :data:`diffjax.score.LABELS`)."""
    return "score_sde" if getattr(module, "continuous", True) else "index"
