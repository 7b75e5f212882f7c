"""Checkpoints with orbax-checkpoint: the train state, the config (JSON) and the data iterator's state.

Saves are atomic (orbax writes to a temporary directory and renames it), and every saved step
carries a digest of its files (``diffjax_digest.json``: each file's size and SHA-256), written when
the step is committed and verified before anything is restored from it: orbax's compressed arrays
carry no checksum of their own, so a garbled byte, a truncated or missing file or a zeroed manifest
would otherwise restore silently altered values. A save in progress is marked
(``checkpoints/.diffjax_saving_<step>``, removed once the digest is written), so a step that lacks its
digest because the process was killed while saving it is told apart from one whose digest went
missing afterwards: :meth:`Checkpointer.cut_short_steps` lists the former (``train`` moves them
aside and resumes from the newest complete step, saying so); the latter is a :class:`CheckpointError`. Restores always go against an abstract target
(shapes, dtypes and shardings), so a run saved on 8 devices resumes on 1 or 4. A restore that fails
raises :class:`CheckpointError` naming the step and touches nothing on disk: it is never turned into
a silent fresh start.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

__all__ = ["CheckpointError", "Checkpointer", "abstract_like", "DIGEST_FILE", "file_digests", "check_layout"]

DIGEST_FILE = "diffjax_digest.json"
# ``checkpoints/.diffjax_saving_<step>``: written before a step's save starts and removed once its digest
# is written, so a step without a digest is known to be a save cut short (a kill) only when this is there
SAVING_PREFIX = ".diffjax_saving_"


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored (corrupt, incomplete, or for another model)."""


_WHAT_NOW = "files left as they are; `train --restore-intact` resumes from the newest intact step"
# what a file that is not a regular file (a link, a pipe, a device) is recorded as: never opened
_NOT_REGULAR = [-1, "not a regular file"]


def abstract_like(tree: Any, shardings: Any = None) -> Any:
    """ShapeDtypeStructs of ``tree`` (arrays or abstract values), with ``shardings`` if given."""
    if shardings is None:
        return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def file_digests(directory: str) -> dict:
    """{relative path: [size, sha256]} of every file under ``directory`` but the digest file itself.
    Anything that is not a regular file (a symbolic link, a named pipe) is listed as
    ``[-1, "not a regular file"]`` and never opened, so a pipe cannot block a verification."""
    out = {}
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, directory)
            if rel == DIGEST_FILE:
                continue
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                out[rel] = list(_NOT_REGULAR)
                continue
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            out[rel] = [info.st_size, h.hexdigest()]
    return out


def check_layout(directory: str) -> None:
    """Raise :class:`CheckpointError` unless ``directory`` (a run's ``checkpoints/``) is a folder whose
    numbered entries are all saved steps: orbax takes any numbered folder for a step and deletes the
    oldest ones, so a folder of the user's named ``1`` would be lost."""
    if not os.path.exists(directory):
        return
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory} is a file; a run keeps its checkpoints in a folder of that name")
    foreign = [d for d in sorted(os.listdir(directory)) if d.isdigit()
               and not os.path.isfile(os.path.join(directory, d, "_CHECKPOINT_METADATA"))]
    if foreign:
        raise CheckpointError(f"{directory} holds {', '.join(foreign[:3])}, numbered like a step but not a saved "
                              "checkpoint; diffjax would delete it as an old step: move it out of checkpoints/")


class Checkpointer:
    """``CheckpointManager`` over ``directory`` keeping the last ``max_to_keep`` checkpoints plus every
    ``keep_period``-th step (None: none extra). Items: ``state`` (a pytree of arrays), ``config`` and
    ``data`` (JSON-able dicts).

    Steps from ``digests_from`` on must carry a digest (see the module docstring); earlier steps, saved
    by a version of diffjax that wrote none, are verified only if they have one. None: no step needs one.
    """

    def __init__(self, directory: str, *, max_to_keep: int = 3, keep_period: Optional[int] = None,
                 digests_from: Optional[int] = 0):
        self.directory = os.path.abspath(directory)
        self.digests_from = digests_from
        check_layout(self.directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_period, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "config", "data"))

    def reload(self) -> None:
        """Read the steps on disk again (after steps were moved away)."""
        self._manager.reload()

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def step_directory(self, step: int) -> str:
        return os.path.join(self.directory, str(int(step)))

    def save(self, step: int, state: Any, config: dict, data_state: dict) -> None:
        """Save synchronously (returns when the checkpoint is complete on disk, its digest written by
        process 0). A marker file brackets the save (see the module docstring)."""
        marker = self.saving_marker(step)
        if jax.process_index() == 0:
            os.makedirs(self.directory, exist_ok=True)
            with open(marker, "w") as f:
                f.write(f"diffjax: the save of step {int(step)} started; removed when its digest is written\n")
        self._manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config), data=ocp.args.JsonSave(data_state)),
            force=True)
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
            directory = self.step_directory(step)
            record = json.dumps({"step": int(step), "files": file_digests(directory)}, indent=1)
            fd, tmp = tempfile.mkstemp(prefix=".tmp_digest.", dir=directory)
            with os.fdopen(fd, "w") as f:
                f.write(record)
            os.replace(tmp, os.path.join(directory, DIGEST_FILE))
            os.remove(marker)

    def saving_marker(self, step: int) -> str:
        return os.path.join(self.directory, f"{SAVING_PREFIX}{int(step)}")

    def cut_short_steps(self) -> list[int]:
        """Steps whose save was started and never finished (no digest, the save's marker still there):
        the process was killed while saving them. Newest first."""
        return sorted((s for s in self.all_steps() if os.path.isfile(self.saving_marker(s))
                       and not os.path.isfile(os.path.join(self.step_directory(s), DIGEST_FILE))), reverse=True)

    def stale_markers(self) -> list[str]:
        """Save markers left by a kill between a digest's write and the marker's removal, or by a save
        killed before orbax committed its folder: paths to remove (their steps are complete or absent)."""
        if not os.path.isdir(self.directory):
            return []
        cut = set(self.cut_short_steps())
        out = []
        for name in os.listdir(self.directory):
            tail = name[len(SAVING_PREFIX):]
            if name.startswith(SAVING_PREFIX) and tail.isdigit() and int(tail) not in cut:
                out.append(os.path.join(self.directory, name))
        return sorted(out)

    def verify(self, step: int) -> None:
        """Raise :class:`CheckpointError` unless ``step``'s files are those its digest recorded."""
        directory = self.step_directory(step)
        where = f"could not restore step {step} from {self.directory}"
        path = os.path.join(directory, DIGEST_FILE)
        if not os.path.isfile(path):
            if os.path.isfile(self.saving_marker(step)):
                raise CheckpointError(f"{where}: its save was cut short (the process stopped while saving it; no "
                                      f"{DIGEST_FILE}); `diffjax train` moves such a step aside and resumes from the "
                                      "newest complete one")
            if self.digests_from is not None and step >= self.digests_from:
                raise CheckpointError(f"{where}: it has no {DIGEST_FILE} (its save was cut short, or the file was "
                                      f"removed), so its contents cannot be trusted; {_WHAT_NOW}")
            return
        try:
            with open(path) as f:
                record = json.load(f)
            recorded = {str(k): (int(v[0]), str(v[1])) for k, v in record["files"].items()}
            saved_as = int(record["step"])
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise CheckpointError(f"{where}: its {DIGEST_FILE} is unreadable ({type(e).__name__}); {_WHAT_NOW}") from None
        if saved_as != int(step):
            raise CheckpointError(f"{where}: it was saved as step {saved_as} (the folder was renamed or copied "
                                  f"from another step); {_WHAT_NOW}")
        actual = {k: tuple(v) for k, v in file_digests(directory).items()}
        problems = [f"{k} is missing" for k in sorted(set(recorded) - set(actual))]
        for k in sorted(set(recorded) & set(actual)):
            (size, digest), (now_size, now_digest) = recorded[k], actual[k]
            if now_size == _NOT_REGULAR[0] and size != now_size:
                problems.append(f"{k} is not a regular file")
            elif size != now_size:
                problems.append(f"{k} has {now_size} bytes, not {size}")
            elif digest != now_digest:
                problems.append(f"{k} has other bytes (SHA-256 differs)")
        problems += [f"{k} was added" for k in sorted(set(actual) - set(recorded))]
        if problems:
            more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
            raise CheckpointError(f"{where}: its files changed since it was saved ({problems[0]}{more}); "
                                  f"{_WHAT_NOW}")

    def intact_steps(self) -> tuple[list[int], dict]:
        """(steps that verify, {corrupt step: its error message}), newest first."""
        good, bad = [], {}
        for step in sorted(self.all_steps(), reverse=True):
            try:
                self.verify(step)
                good.append(step)
            except CheckpointError as e:
                bad[step] = str(e)
        return good, bad

    def restore(self, abstract_state: Any, step: Optional[int] = None) -> tuple[Any, dict, dict]:
        """(state, config, data_state) of ``step`` (default: the latest), the state laid out as
        ``abstract_state`` says (``jax.ShapeDtypeStruct`` leaves with shardings; see :func:`abstract_like`).
        The step's files are verified against its digest first."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        self.verify(step)
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), config=ocp.args.JsonRestore(),
                data=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types; all mean "this checkpoint cannot be used"
            raise CheckpointError(
                f"could not restore step {step} from {self.directory} ({type(e).__name__}: {' '.join(str(e).split())[:300]}); "
                "the files were left as they are — move the directory away to start afresh") from e
        return out.state, dict(out.config), dict(out.data)

    def restore_config(self, step: Optional[int] = None) -> dict:
        """Only the config saved with ``step`` (default: the latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        self.verify(step)
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        except Exception as e:
            raise CheckpointError(f"could not read the config of step {step} in {self.directory}: "
                                  f"{' '.join(str(e).split())[:300]}") from e
        return dict(out.config)

    def close(self) -> None:
        self._manager.close()
