"""Small helpers several test modules share (importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np


def sha256_tree(path: str | Path) -> str:
    """One hash of every file's relative name and bytes below ``path`` (to compare two stores)."""
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


def known_fraction(group, rows: np.ndarray, cols: np.ndarray, batches) -> float:
    """Fraction of in-batch (caption, video) teacher scores a sparse group stores, over ``batches``."""
    known = sum(group.known_mask(rows[b.captions], cols[b.videos]).sum() for b in batches)
    total = sum(len(b.videos) ** 2 for b in batches)
    return float(known / max(total, 1))


def read_rows(out: str | Path) -> list[dict[str, str]]:
    """The rows of a training run's DVCLive log (one dict per epoch, values as written)."""
    from teachclip.training.log import read_history

    return read_history(out)


def summary_of(row: dict) -> dict:
    """What DVCLive's metrics.json holds after logging ``row`` last: its metrics, "step" = its epoch."""
    from teachclip.training.log import RENAMED

    return {RENAMED.get(k, k): v for k, v in row.items() if k != "epoch"} | {"step": row["epoch"]}


def make_video(path: Path, *args: str, size: str = "64x48", rate: int = 10, seconds: float = 3) -> Path:
    """Encode ffmpeg's moving test pattern (every frame differs) with the ffmpeg binary teachclip uses;
    ``args`` go between input and output."""
    from teachclip.video import ffmpeg_binary_path

    source = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}", "-t", str(seconds)]
    subprocess.run(
        [ffmpeg_binary_path(), "-hide_banner", "-loglevel", "error", "-y", *source, *args, str(path)], check=True
    )
    return path
