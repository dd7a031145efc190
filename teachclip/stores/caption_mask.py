"""The caption mask (``caption_mask.json``) written by ``teach audit-captions``, read by train-student.

::

    {"format": "teachclip-caption-mask", "version": 1, "top_k": K,
     "teachers": {name: fingerprint}, "keep": {caption_id: true | false}}

``train_student.caption_mask`` names the file (or the audit's output directory); flagged captions
(``keep: false``) are not drawn by the sampler (:func:`teachclip.training.batches.mask_captions`).
"""

from __future__ import annotations

import json
from pathlib import Path

from teachclip.core.errors import InputError

MASK_FORMAT = "teachclip-caption-mask"
MASK_VERSION = 1
MASK_JSON = "caption_mask.json"


class CaptionMaskError(InputError):
    """A caption mask that cannot be read or does not fit the training captions."""


def write_caption_mask(directory: str | Path, keep: dict[str, bool], top_k: int, teachers: dict[str, str]) -> Path:
    path = Path(directory) / MASK_JSON
    document = {"format": MASK_FORMAT, "version": MASK_VERSION, "top_k": top_k, "teachers": teachers,
                "keep": {caption_id: bool(kept) for caption_id, kept in keep.items()}}
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    return path


def load_caption_mask(path: str | Path) -> dict[str, bool]:
    """``caption_id -> keep`` from a ``caption_mask.json`` (or the audit's output directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / MASK_JSON
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CaptionMaskError(f"{path}: cannot read the caption mask ({exc})") from exc
    if not isinstance(document, dict) or document.get("format") != MASK_FORMAT:
        raise CaptionMaskError(f"{path}: not a caption mask (expected \"format\": \"{MASK_FORMAT}\"; "
                               f"write one with `teach audit-captions`)")
    keep = document.get("keep")
    if not isinstance(keep, dict) or not all(isinstance(v, bool) for v in keep.values()):
        raise CaptionMaskError(f"{path}: \"keep\" must map caption ids to true/false")
    return keep
