"""Writing files so that a killed process never leaves a half-written file under the final name."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (mkstemp's own is 0600)."""
    umask = os.umask(0o022)  # the only way to read the umask is to set it; put it straight back
    # (a thread creating a file in between would get 022, the common umask anyway)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it to ``path``.

    The file gets the usual mode of a new file (0644 under the common umask), not mkstemp's
    private 0600: reports, metrics and caches are meant to be shared with the rest of a team.
    """
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp)
    try:
        write(tmp)
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_at_most(handle: BinaryIO, limit: int) -> bytes:
    """The file's bytes, or ``limit + 1`` of them when it holds more (the caller refuses it).

    ``handle.read(limit + 1)`` alone would allocate ``limit + 1`` bytes up front whatever the file
    holds: a generous bound (e.g. 4 KB per id of a million-caption id array) becomes gigabytes of
    memory. The allocation here follows the file's actual size, capped by the bound.
    """
    size = os.fstat(handle.fileno()).st_size
    return handle.read(min(size, limit) + 1)


def write_json(path: str | Path, document: Any) -> Path:
    """``document`` as indented JSON with sorted keys (stable bytes for DVC), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path
