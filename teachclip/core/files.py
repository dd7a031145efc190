"""Writing files so that a killed process never leaves a half-written file under the final name."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


def write_json(path: str | Path, document: Any) -> Path:
    """``document`` as indented JSON with sorted keys (stable bytes for DVC), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path
