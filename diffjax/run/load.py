"""A trained run read back from its work directory: config, process, network and EMA parameters."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Optional

import jax
import ml_collections

from diffjax import checkpoint, parallel
from diffjax.configs import apply_overrides, set_sampling, validate, with_defaults
from diffjax.run import files
from diffjax.run.build import build_model, build_optimizer, build_sde, example_shape, init_state

__all__ = ["Run", "restore_state", "load_run"]


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


def restore_state(workdir: str, step: Optional[int] = None, config_overrides=None, sampling: Optional[dict] = None):
    """(config, state, data_state, step) of ``workdir``'s latest checkpoint (or ``step``): the whole
    train state, replicated over all devices, and the config saved with it, then ``config_overrides``
    (dotted ``key=value`` strings) and ``sampling`` (typed values of ``config.sampling``'s keys) applied."""
    if not workdir:
        raise ValueError("--workdir is empty; give the directory of a run")
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints in {workdir} (expected {directory}); train first with "
                                f"`diffjax train --workdir {workdir}`")
    marker = files.read_marker(workdir)
    if marker is None:
        raise ValueError(f"{workdir} is not a diffjax run (no {files.MARKER}, and its checkpoints are not "
                         "diffjax's); give the --workdir of a run made by `diffjax train`")
    ckpt = checkpoint.Checkpointer(directory, digests_from=marker.get("digests_from", None if not marker else 0))
    try:
        saved = ckpt.all_steps()
        if not saved:
            raise checkpoint.CheckpointError(f"no checkpoint in {directory}; train first with "
                                             f"`diffjax train --workdir {workdir}`")
        step = max(saved) if step is None else step
        if step not in saved:
            raise checkpoint.CheckpointError(f"no checkpoint of step {step} in {directory}; saved steps: {sorted(saved)}")
        config = ml_collections.ConfigDict(with_defaults(ckpt.restore_config(step)))
        apply_overrides(config, config_overrides or ())
        set_sampling(config, sampling or {})
        validate(config)
        init = functools.partial(init_state, build_model(config), build_optimizer(config), example_shape(config))
        abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
        shardings = parallel.state_shardings(abstract, parallel.make_mesh(1))
        state, _, data_state = ckpt.restore(checkpoint.abstract_like(abstract, shardings), step)
    finally:
        ckpt.close()
    return config, state, data_state, int(step)


def load_run(workdir: str, step: Optional[int] = None, config_overrides=None, sampling: Optional[dict] = None) -> Run:
    """A :class:`Run` with the EMA parameters of ``workdir``'s latest checkpoint (or ``step``); see
    :func:`restore_state`."""
    config, state, _, step = restore_state(workdir, step, config_overrides, sampling)
    return Run(config=config, sde=build_sde(config), model=build_model(config), params=state.ema_params, step=step,
               mesh=parallel.make_mesh(1), workdir=workdir)
