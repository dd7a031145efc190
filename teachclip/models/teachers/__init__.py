"""The teachers: build one from its config, save and load trained ones.

Kinds: ``xpool``, ``xclip``, ``ts2net``, ``frame_clip`` (trainable, CLIP-backed) and ``caption_sim``
(a frozen sentence-embedding model). Every kind is registered with :mod:`teachclip.models.io`, so
``load_model`` rebuilds a saved teacher from its ``config.json`` without fetching pretrained weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from teachclip.models import io
from teachclip.models.teachers import official
from teachclip.models.teachers.base import Features, Teacher, TextBatch, VideoBatch
from teachclip.models.teachers.caption_sim import CaptionSimTeacher
from teachclip.models.teachers.frame_clip import FrameClipTeacher
from teachclip.models.teachers.ts2net import TS2NetTeacher
from teachclip.models.teachers.xclip import XClipTeacher
from teachclip.models.teachers.xpool import XPoolTeacher
from teachclip.core.config import TeacherConfig

TEACHERS: dict[str, type[Teacher]] = {
    cls.kind: cls for cls in (XPoolTeacher, XClipTeacher, TS2NetTeacher, FrameClipTeacher, CaptionSimTeacher)
}
TRAINABLE_KINDS = ("xpool", "xclip", "ts2net", "frame_clip")

__all__ = [
    "TEACHERS", "TRAINABLE_KINDS", "Features", "Teacher", "TextBatch", "VideoBatch", "build_teacher",
    "load_teacher", "save_teacher",
]


def build_teacher(config: TeacherConfig | dict[str, Any], load_weights: bool = True) -> Teacher:
    """A teacher of ``config.kind``; with ``load_weights`` its pretrained backbone and its trained
    ``checkpoint`` (a ``save_teacher`` directory, a weights-only file of this teacher, or an official
    X-CLIP / TS2-Net / X-Pool checkpoint, mapped by :mod:`.official`) are loaded too."""
    if not isinstance(config, TeacherConfig):
        config = TeacherConfig.model_validate(config)
    # options.checkpoint_format / checkpoint_ignore: official X-CLIP/TS2-Net/X-Pool files (official.py)
    config, checkpoint_format, ignore = official.split_checkpoint_options(config)
    if load_weights and official.is_official(config, checkpoint_format):
        return official.build_official_teacher(config, TEACHERS[config.kind], ignore)
    teacher = TEACHERS[config.kind](config, load_weights=load_weights)
    if load_weights and config.checkpoint:
        if not hasattr(teacher, "load_checkpoint"):
            raise ValueError(f"the {config.kind} teacher is not trainable and takes no checkpoint")
        teacher.load_checkpoint(config.checkpoint)
    return teacher


def save_teacher(teacher: Teacher, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the teacher's weights and config (``load_teacher`` rebuilds it from them)."""
    # the directory itself becomes the checkpoint: a stale checkpoint path would only mislead
    config = teacher.config.model_copy(update={"checkpoint": None})
    definitions = {"score_version": teacher.score_version, "similarity_definition": teacher.similarity_definition,
                   "relevance_definition": teacher.relevance_definition}
    return io.save_model(directory, teacher, teacher.kind, config, extra={**definitions, **(extra or {})})


def load_teacher(directory: str | Path, device: str | torch.device = "cpu") -> Teacher:
    """Rebuild a teacher saved by :func:`save_teacher`, on ``device`` and in eval mode."""
    model = io.load_model(directory, device)
    if not isinstance(model, Teacher):
        raise io.CheckpointError(f"{directory}: holds a {type(model).__name__}, not a teacher")
    return model


def _build_saved_teacher(config: dict[str, Any]) -> Teacher:
    # the checkpoint supplies every tensor: never fetch pretrained weights or an old checkpoint
    return build_teacher(TeacherConfig.model_validate(config), load_weights=False)


for _kind in TEACHERS:
    io.register_kind(_kind, _build_saved_teacher)
