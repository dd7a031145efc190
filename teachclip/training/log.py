"""Per-epoch metrics of a training run and the running losses of its progress bar.

``metrics.tsv`` (every row; ``dvc plots show``) and ``metrics.json`` (the last row; ``dvc metrics
show``) are rewritten from the rows on every append, so a resumed run (which restores its rows from
the checkpoint) never duplicates an epoch.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from teachclip.core.files import atomic_write

METRICS_TSV = "metrics.tsv"
METRICS_JSON = "metrics.json"


class MetricsLog:
    """One row per epoch: ``metrics.tsv`` (every row; ``dvc plots show``) and ``metrics.json`` (the
    last row; ``dvc metrics show``). Both files are rewritten from ``rows`` on every append, so a
    resumed run (which restores ``rows`` from its checkpoint) never duplicates an epoch."""

    def __init__(self, directory: str | Path, rows: Sequence[dict[str, Any]] = ()):
        self.directory = Path(directory)
        self.rows: list[dict[str, Any]] = [dict(row) for row in rows]

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(dict(row))
        self.write()

    def write(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        columns: list[str] = []
        for row in self.rows:
            columns += [key for key in row if key not in columns]

        def write_tsv(path: Path) -> None:
            with open(path, "w", newline="") as handle:
                writer = csv.DictWriter(handle, columns, delimiter="\t", lineterminator="\n", restval="")
                writer.writeheader()
                writer.writerows(self.rows)

        atomic_write(self.directory / METRICS_TSV, write_tsv)
        last = self.rows[-1] if self.rows else {}
        atomic_write(self.directory / METRICS_JSON,
                     lambda path: path.write_text(json.dumps(last, indent=2, sort_keys=True) + "\n"))


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
