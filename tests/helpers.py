"""Small helpers several test modules share (importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

import hashlib
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
