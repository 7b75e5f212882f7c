"""What a run may write, and where: the work directory's marker, output paths checked before any work,
and atomic writes.

A work directory is ours when it holds the marker file ``diffjax_run.json`` (written when ``train``
creates the run; runs of 0.1 wrote it as ``.diffjax_run.json``, which is still read) or, for runs made
before the marker existed, diffjax's layout: ``checkpoints/`` with saved steps beside a
``config.json`` of diffjax's sections. ``train`` writes into nothing else: a directory that
holds other files is refused before anything is written. Every command checks that it can write
where it will write before it computes (a read-only folder, a path under a file, an output that is a
folder are one-line errors), and files are written to a temporary name and renamed, so a file is
either whole or absent.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Optional

from diffjax._io import OUTPUT_KEY, atomic_write

__all__ = ["MARKER", "RUN_FORMAT", "RUN_FILES", "claim_workdir", "read_marker", "is_run", "check_run_layout",
           "check_writable_dir", "check_output_path", "atomic_write", "write_json", "OUTPUT_KEY"]

MARKER = "diffjax_run.json"
_OLD_MARKER = ".diffjax_run.json"  # diffjax 0.1's name; a hidden file was lost by `cp -a run/* copy/`
# what train writes at the top of a run, and the kind each must be
RUN_FILES = {"config.json": "file", "metrics.jsonl": "file", "results.json": "file", "samples.npz": "file",
             "samples.png": "file", "training_curves.png": "file", "checkpoints": "folder",
             "tensorboard": "folder", "samples": "folder", "eval": "folder", "solvers": "folder"}
# 2: every checkpoint carries a digest of its files (diffjax.checkpoint); runs of format 1 (no marker)
# have checkpoints without digests up to the step recorded as "digests_from"
RUN_FORMAT = 2


def _error(message: str) -> ValueError:
    return ValueError(" ".join(message.split()))


def read_marker(workdir: str) -> Optional[dict]:
    """The marker's contents, {} for a run made before markers existed, None if ``workdir`` is not a run."""
    for name in (MARKER, _OLD_MARKER):
        path = os.path.join(workdir, name)
        if os.path.isfile(path):
            return _read_marker_file(path, workdir)
    if _has_orbax_steps(os.path.join(workdir, "checkpoints")) and _is_saved_config(os.path.join(workdir, "config.json")):
        return {}  # a run of an earlier version
    return None


def _read_marker_file(path: str, workdir: str) -> dict:
    try:
        with open(path) as f:
            marker = json.load(f)
    except (OSError, ValueError) as e:
        raise _error(f"{path} is unreadable ({type(e).__name__}); it marks {workdir} as a diffjax run, "
                     "restore it or move the directory away") from None
    fields_ok = isinstance(marker, dict) and all(
        isinstance(marker.get(k, 0), int) and not isinstance(marker.get(k, 0), bool) and marker.get(k, 0) >= 0
        for k in ("format", "digests_from"))
    if not fields_ok:
        raise _error(f"{path} is not a diffjax run marker (expected format and digests_from, integers >= 0); "
                     "restore it or move the directory away")
    return marker


def _is_saved_config(path: str) -> bool:
    """Whether ``path`` is a config.json as diffjax's train writes it (a dict with its sections)."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(value, dict) and {"sde", "training", "model"} <= set(value)


def _has_orbax_steps(directory: str) -> bool:
    """Whether ``directory`` holds a checkpoint step as diffjax saves it (a numbered folder with orbax's
    commit marker and a ``config`` item), which a folder of the user's own does not."""
    if not os.path.isdir(directory):
        return False
    return any(d.isdigit() and os.path.isfile(os.path.join(directory, d, "_CHECKPOINT_METADATA"))
               and os.path.isdir(os.path.join(directory, d, "config")) for d in os.listdir(directory))


def is_run(workdir: str) -> bool:
    """True if ``workdir`` is a diffjax run (see the module docstring)."""
    return os.path.isdir(workdir) and read_marker(workdir) is not None


def check_writable_dir(directory: str, what: str) -> None:
    """Raise a one-line ValueError unless ``directory`` exists or can be made, and a file can be created
    in it (a probe file, removed at once). ``what`` names the path in the message ("--out", ...)."""
    probe_from = os.path.abspath(directory)
    parent = probe_from
    while not os.path.exists(parent):  # the nearest existing ancestor
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise _error(f"{what} {directory}: {parent} is a file, so nothing can be written under it")
    if os.path.isdir(probe_from):
        parent = probe_from
    try:
        fd, probe = tempfile.mkstemp(prefix=".diffjax_probe_", dir=parent)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise _error(f"{what} {directory} is not writable ({e.strerror or type(e).__name__} in {parent}); choose a "
                     "writable place") from None


def claim_workdir(workdir: str, *, write: bool = True) -> dict:
    """Make ``workdir`` a run, or check that it is one, before anything is written; returns its marker.

    A missing or empty directory becomes a run (``write``: the directory and the marker are created);
    a run keeps its marker (a run of an earlier version gets one, recording that its checkpoints up to
    now carry no digests). A file, a directory of other files, or a read-only place is a ValueError
    that names it, and nothing is written.
    """
    if not workdir:
        raise _error("--workdir is empty; give a directory (new or of this run)")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise _error(f"--workdir {workdir} is a file; expected a directory (new or of this run)")
    marker = read_marker(workdir) if os.path.isdir(workdir) else None
    if marker is None and os.path.isdir(workdir):
        own = sorted(os.listdir(workdir))
        if own:
            shown = ", ".join(own[:3]) + (f" and {len(own) - 3} more" if len(own) > 3 else "")
            raise _error(f"--workdir {workdir} is not a diffjax run and not empty (it holds {shown}); nothing was "
                         "written: give a new or empty directory")
    check_writable_dir(workdir, "--workdir")
    if marker is not None:
        check_run_layout(workdir)
    if marker and marker.get("format") == RUN_FORMAT:
        return marker
    new = {"format": RUN_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "digests_from": _legacy_digests_from(workdir) if marker == {} else 0}
    if write:
        os.makedirs(workdir, exist_ok=True)
        write_json(os.path.join(workdir, MARKER), new)
    return new


def check_run_layout(workdir: str) -> None:
    """Raise a one-line ValueError if one of the names train writes in a run (:data:`RUN_FILES`) is there
    as the other kind (a folder where a file goes, or a file where a folder goes), or the checkpoints
    folder is not writable: found before training, not after it."""
    for name, kind in RUN_FILES.items():
        path = os.path.join(workdir, name)
        if not os.path.lexists(path):
            continue
        wrong = os.path.islink(path) or (os.path.isdir(path) if kind == "file" else not os.path.isdir(path))
        if wrong:
            raise _error(f"{path} is {'a link' if os.path.islink(path) else 'a folder' if kind == 'file' else 'a file'}"
                         f"; diffjax writes a {kind} of that name in a run: move it away")
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
        check_writable_dir(os.path.join(workdir, "checkpoints"), "the run's checkpoints folder")


def _legacy_digests_from(workdir: str) -> int:
    """The first step a run of an earlier version will save with a digest: one after its last checkpoint."""
    directory = os.path.join(workdir, "checkpoints")
    steps = [int(d) for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []
    return max(steps, default=-1) + 1


def check_output_path(path: str, suffix: str, what: str = "--out", siblings: tuple = ()) -> None:
    """Raise a one-line ValueError unless ``path`` can take an output file of ``suffix``: it ends so, it is
    not a folder or a link, nothing on the way is a file, it is not inside a run's checkpoints, the
    folder is writable, and neither it nor its ``siblings`` (other suffixes written beside it, e.g.
    ".png") is a file diffjax did not write (an .npz or .json that carries :data:`OUTPUT_KEY`; a
    sibling counts as ours when the main file is)."""
    if not path or not path.endswith(suffix):
        raise _error(f"{what} {path!r}: the output file must end in {suffix}")
    base = path[: -len(suffix)]
    for p in (path, *(base + s for s in siblings)):
        if os.path.islink(p):
            raise _error(f"{what} {path}: {p} is a symbolic link; diffjax writes a new file, not through a link; "
                         "choose another name")
        if os.path.isdir(p):
            raise _error(f"{what} {path}: {p} is a folder; expected a file path ending in {suffix}" if p == path else
                         f"{what} {path}: {p} (written beside it) is a folder; choose another name")
    _check_not_in_checkpoints(path, what)
    check_writable_dir(os.path.dirname(os.path.abspath(path)), what)
    ours = os.path.exists(path) and _written_by_us(path)
    if os.path.exists(path) and not ours:
        raise _error(f"{what} {path} exists and was not written by diffjax; choose another name or remove it")
    for p in (base + s for s in siblings):
        if os.path.exists(p) and not ours:
            raise _error(f"{what} {path}: {p} (written beside it) exists and is not diffjax's; choose another name")


def _check_not_in_checkpoints(path: str, what: str) -> None:
    """A file added under a run's ``checkpoints/`` would break that step's digest (or be taken for a step)."""
    folder = os.path.dirname(os.path.abspath(path))
    while True:
        parent = os.path.dirname(folder)
        if os.path.basename(folder) == "checkpoints" and os.path.isdir(parent) and read_marker(parent) is not None:
            raise _error(f"{what} {path} lies inside the checkpoints of the run {parent}; writing there would "
                         "change a saved step: choose a place outside checkpoints/")
        if parent == folder:
            return
        folder = parent


def _written_by_us(path: str) -> bool:
    try:
        if path.endswith(".npz"):
            import numpy as np

            with np.load(path) as f:
                return OUTPUT_KEY in f.files
        if path.endswith(".json"):
            with open(path) as f:
                value = json.load(f)
            return isinstance(value, dict) and OUTPUT_KEY in value
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False
    return False


def write_json(path: str, value) -> None:
    """``value`` as indented JSON at ``path``, atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(value, f, indent=2)

    atomic_write(path, write)
