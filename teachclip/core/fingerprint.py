"""Fingerprints: stable content hashes that identify every artefact and its parents.

A fingerprint is the sha256 of a canonical JSON document (sorted keys, no whitespace), so the
same inputs give the same hex string on every machine and every run. No timestamps, no host names.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CHUNK_BYTES = 1 << 20


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace; Paths become strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def fingerprint(kind: str, payload: Any) -> str:
    """sha256 of ``kind`` + canonical JSON of ``payload`` (the kind keeps domains apart)."""
    digest = hashlib.sha256()
    digest.update(kind.encode())
    digest.update(b"\0")
    digest.update(canonical_json(payload).encode())
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Streaming sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def short(fp: str, n: int = 12) -> str:
    """The first ``n`` hex digits, for messages and directory names."""
    return fp[:n]
