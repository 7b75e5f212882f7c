"""Checkpoints with orbax-checkpoint: the train state, the config (JSON) and the data iterator's state.

Saves are atomic (orbax writes to a temporary directory and renames it). Restores always go
against an abstract target (shapes, dtypes and shardings), so a run saved on 8 devices resumes on
1 or 4. A restore that fails raises :class:`CheckpointError` and touches nothing on disk: it is
never turned into a silent fresh start.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

__all__ = ["CheckpointError", "Checkpointer", "abstract_like"]


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored (corrupt, incomplete, or for another model)."""


def abstract_like(tree: Any, shardings: Any = None) -> Any:
    """ShapeDtypeStructs of ``tree`` (arrays or abstract values), with ``shardings`` if given."""
    if shardings is None:
        return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Checkpointer:
    """``CheckpointManager`` over ``directory`` keeping the last ``max_to_keep`` checkpoints plus every
    ``keep_period``-th step (None: none extra). Items: ``state`` (a pytree of arrays), ``config`` and
    ``data`` (JSON-able dicts)."""

    def __init__(self, directory: str, *, max_to_keep: int = 3, keep_period: Optional[int] = None):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_period, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "config", "data"))

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, config: dict, data_state: dict) -> None:
        """Save synchronously (returns when the checkpoint is complete on disk)."""
        self._manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config), data=ocp.args.JsonSave(data_state)),
            force=True)
        self._manager.wait_until_finished()

    def restore(self, abstract_state: Any, step: Optional[int] = None) -> tuple[Any, dict, dict]:
        """(state, config, data_state) of ``step`` (default: the latest), the state laid out as
        ``abstract_state`` says (``jax.ShapeDtypeStruct`` leaves with shardings; see :func:`abstract_like`)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), config=ocp.args.JsonRestore(),
                data=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types; all mean "this checkpoint cannot be used"
            raise CheckpointError(
                f"could not restore step {step} from {self.directory} ({type(e).__name__}: {str(e)[:300]}); "
                "the files were left as they are — move the directory away to start afresh") from e
        return out.state, dict(out.config), dict(out.data)

    def restore_config(self, step: Optional[int] = None) -> dict:
        """Only the config saved with ``step`` (default: the latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        except Exception as e:
            raise CheckpointError(f"could not read the config of step {step} in {self.directory}: {e}") from e
        return dict(out.config)

    def close(self) -> None:
        self._manager.close()
