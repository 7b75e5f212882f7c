"""What a run tells its user: metrics as JSON lines and TensorBoard events, progress bars, and the
training curves as a figure. Only process 0 writes; elsewhere every call does nothing."""

from __future__ import annotations

import json
import os
from typing import Iterable, Optional

from diffjax import parallel

__all__ = ["MetricLogger", "progress_bar", "progress_range", "read_metrics", "plot_training_curves"]


class MetricLogger:
    """Metrics as JSON lines (``metrics.jsonl``) and TensorBoard event files (tensorboardX), on
    process 0 only (elsewhere every call does nothing)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.path = os.path.join(workdir, "metrics.jsonl")
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

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


def progress_bar(total: int, initial: int, enabled: bool, desc: str = "train"):
    """A tqdm bar over steps (None when disabled or off process 0)."""
    if not enabled or not parallel.is_main_process():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc=desc, mininterval=1.0)


def progress_range(it: Iterable, enabled: bool, desc: str) -> Iterable:
    """``it`` with a tqdm bar over it when enabled, on process 0."""
    if not enabled or not parallel.is_main_process():
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, unit="batch", dynamic_ncols=True)


def read_metrics(workdir: str) -> list[dict]:
    """The records of ``workdir/metrics.jsonl`` (empty if there is none); lines that are not JSON objects
    (another tool's, or one cut short by a crash) are skipped."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def plot_training_curves(workdir: str, out: Optional[str] = None) -> Optional[str]:
    """The loss (log scale) and steps per second against the step, from ``metrics.jsonl``, as a PNG
    (default ``workdir/training_curves.png``); returns its path, or None when nothing was logged."""
    records = [r for r in read_metrics(workdir) if "loss" in r and "step" in r]
    if not records or not parallel.is_main_process():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, (ax_loss, ax_rate) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_loss.plot(steps, [r["loss"] for r in records], marker=".")
    ax_loss.set(xlabel="step", ylabel="loss (window mean)", yscale="log", title="training loss")
    ax_rate.plot(steps, [r.get("steps_per_sec", float("nan")) for r in records], marker=".")
    ax_rate.set(xlabel="step", ylabel="steps / s", title="speed")
    for ax in (ax_loss, ax_rate):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = out or os.path.join(workdir, "training_curves.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
