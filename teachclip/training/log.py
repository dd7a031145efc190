"""Per-epoch metrics of a training run, logged with DVCLive, and the running losses of its progress bar.

A run's log is DVCLive's directory ``<out>/dvclive``::

    metrics.json                 the last value of every metric, "step": the last epoch (dvc metrics / dvc exp show)
    plots/metrics/<name>.tsv     "step<TAB><name>" per epoch that logged it (dvc plots show / diff)

DVCLive's step is the epoch (1, 2, ...); the row's optimizer step count is logged as ``optimizer_steps``.
Timestamps are never written, so a seeded run writes the same bytes every time (DVC tracks these files
by hash). The directory is rebuilt from the rows when logging starts: a resumed run restores its rows
from the checkpoint, so an epoch logged just before a crash (and trained again) is never duplicated.
Only the process that calls :meth:`MetricsLog.append` writes: under DDP that is rank 0.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

DVCLIVE_DIR = "dvclive"
SUMMARY = "metrics.json"
PLOTS = Path("plots") / "metrics"
# row keys that are not metric names of their own: the epoch is DVCLive's step, and "step" (optimizer
# steps) would clash with the step column of every DVCLive plot file
RENAMED = {"step": "optimizer_steps"}


class MetricsLog:
    """One row per epoch (``{"epoch": 1, "step": ..., "loss": ...}``), logged to ``<directory>/dvclive``
    by DVCLive; ``rows`` are those restored from a checkpoint (written again when logging starts)."""

    def __init__(self, directory: str | Path, rows: Sequence[dict[str, Any]] = ()):
        self.directory = Path(directory) / DVCLIVE_DIR
        self.rows: list[dict[str, Any]] = [dict(row) for row in rows]
        self._live = None

    def append(self, row: dict[str, Any]) -> None:
        if self._live is None:
            self._live = _open_live(self.directory)
            for old in self.rows:
                self._log(old)
        self.rows.append(dict(row))
        self._log(row)

    def _log(self, row: Mapping[str, Any]) -> None:
        live = self._live
        live.step = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and value is not None:
                live.log_metric(RENAMED.get(key, key), value, timestamp=False)
        live.make_summary()


def _open_live(directory: Path):
    """A fresh DVCLive logger in ``directory`` (its earlier files removed): inside a DVC pipeline, so
    it writes no dvc.yaml, report or experiment of its own (dvc.yaml declares the files)."""
    from dvclive import Live

    logging.getLogger("dvclive").setLevel(logging.WARNING)  # no "Resuming"/experiment chatter on stderr
    return Live(str(directory), resume=False, report=None, save_dvc_exp=False, dvcyaml=None, monitor_system=False)


def read_history(out: str | Path) -> list[dict[str, str]]:
    """The rows of a run's DVCLive log (one dict per logged epoch: "epoch" plus every metric logged
    that epoch, values as written), in epoch order."""
    plots = Path(out) / DVCLIVE_DIR / PLOTS
    rows: dict[int, dict[str, str]] = {}
    for path in sorted(plots.glob("*.tsv")):
        with open(path, newline="") as handle:
            for record in csv.DictReader(handle, delimiter="\t"):
                step = record.pop("step")
                rows.setdefault(int(step), {"epoch": step}).update(record)
    return [rows[epoch] for epoch in sorted(rows)]


def read_summary(out: str | Path) -> dict[str, Any]:
    """DVCLive's ``metrics.json`` of a run (the last value of every metric; "step" = last epoch)."""
    return json.loads((Path(out) / DVCLIVE_DIR / SUMMARY).read_text())


class RunningLosses:
    """Mean of each loss term over the batches seen so far in the epoch (progress bar, epoch row)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def update(self, losses: Mapping[str, float | torch.Tensor]) -> None:
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1

    def means(self) -> dict[str, float]:
        return {key: total / max(self.count, 1) for key, total in self.sums.items()}

    def status(self) -> str:
        return " ".join(f"{key} {value:.4f}" for key, value in self.means().items())
