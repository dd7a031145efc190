"""teachclip: offline teacher caches and distilled CLIP4Clip students for text-to-video retrieval.

``from teachclip import load_student`` gives the Python API (:mod:`teachclip.api`); it is imported on
first use, so ``import teachclip`` (and ``teach --help``) stay light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_student"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from teachclip import api

        return getattr(api, name)
    raise AttributeError(f"module 'teachclip' has no attribute {name!r}")
