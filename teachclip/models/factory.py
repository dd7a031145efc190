"""The one place that turns a config or a saved model directory into a module (open_clip's factory style).

- :func:`create_teacher`: a teacher of a registered kind (:data:`teachclip.models.teachers.TEACHERS`),
  with its pretrained backbone and trained checkpoint (a ``save_teacher`` directory, a weights file
  of this teacher, or an official X-CLIP / TS2-Net / X-Pool checkpoint mapped by ``teachers/official.py``);
- :func:`load_model`: rebuild whatever a directory of :mod:`teachclip.models.io` holds, by its
  ``kind``: ``student``, ``backbone`` (``teach pretrain-backbone``) or a teacher kind. Builders never
  fetch pretrained weights: the file supplies every tensor, so a saved model loads offline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from teachclip.core.config import BackboneConfig, StudentConfig, TeacherConfig
from teachclip.core.errors import InputError
from teachclip.models import io
from teachclip.models.backbone import Backbone
from teachclip.models.student import Student
from teachclip.models.teachers import TEACHERS, Teacher, official, released

STUDENT, BACKBONE = "student", "backbone"


class ModelConfigError(InputError):
    """A model config that names an unknown kind or does not build (the message names the kind)."""


def create_teacher(config: TeacherConfig | dict[str, Any], load_weights: bool = True) -> Teacher:
    """A teacher of ``config.kind``; with ``load_weights`` its pretrained backbone and its trained
    ``checkpoint`` are loaded too (``options.checkpoint_format``: auto, official or teachclip)."""
    try:
        if not isinstance(config, TeacherConfig):
            config = TeacherConfig.model_validate(config)
    except ValidationError as exc:
        raise ModelConfigError(f"invalid teacher config:\n{exc}") from exc
    if config.kind not in TEACHERS:
        raise ModelConfigError(f"unknown teacher kind {config.kind!r} (known: {', '.join(TEACHERS)})")
    config, checkpoint_format, ignore = official.split_checkpoint_options(config)
    is_official = load_weights and official.is_official(config, checkpoint_format)
    config = _resolve_scoring(config, is_official)
    try:
        if is_official:
            return official.build_official_teacher(config, TEACHERS[config.kind], ignore)
        teacher = TEACHERS[config.kind](config, load_weights=load_weights)
    except ValidationError as exc:  # kind-specific options
        raise ModelConfigError(f"{config.kind} teacher: invalid options:\n{exc}") from exc
    if load_weights and config.checkpoint:
        if not teacher.trainable:
            raise ModelConfigError(f"the {config.kind} teacher is not trainable and takes no checkpoint")
        teacher.load_checkpoint(config.checkpoint)
    return teacher


def resolve_teacher_scoring(config: TeacherConfig) -> TeacherConfig:
    """``config`` with its automatic ``scoring`` settings decided as :func:`create_teacher` decides them:
    the released code's behaviour when ``checkpoint`` is an official checkpoint, teachclip's otherwise
    (what the teacher-cache fingerprint records)."""
    if config.kind not in TEACHERS:
        raise ModelConfigError(f"unknown teacher kind {config.kind!r} (known: {', '.join(TEACHERS)})")
    plain, checkpoint_format, _ = official.split_checkpoint_options(config)
    return _resolve_scoring(config, official.is_official(plain, checkpoint_format))


def _resolve_scoring(config: TeacherConfig, is_official: bool) -> TeacherConfig:
    try:
        scoring = released.resolve_scoring(config.kind, config.scoring, is_official)
    except released.ScoringConfigError as exc:
        raise ModelConfigError(str(exc)) from exc
    return config.model_copy(update={"scoring": scoring})


def save_teacher(teacher: Teacher, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the teacher's weights and config (:func:`load_model` rebuilds it from them)."""
    # the directory itself becomes the checkpoint: a stale checkpoint path would only mislead
    config = teacher.config.model_copy(update={"checkpoint": None})
    definitions = {"score_version": teacher.score_version, "similarity_definition": teacher.similarity_definition,
                   "relevance_definition": teacher.relevance_definition}
    return io.save_model(directory, teacher, teacher.kind, config, extra={**definitions, **(extra or {})})


def load_teacher(directory: str | Path, device: str | torch.device = "cpu") -> Teacher:
    """Rebuild a teacher saved by :func:`save_teacher`, on ``device`` and in eval mode."""
    model = load_model(directory, device)
    if not isinstance(model, Teacher):
        raise io.CheckpointError(f"{directory}: holds a {type(model).__name__}, not a teacher")
    return model


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved model from ``config.json`` and load ``model.safetensors`` into it.

    Returns the module on ``device`` in eval mode (call ``.train()`` to continue training).
    Missing or unexpected tensor names and shape mismatches are errors naming the file.
    """
    directory = Path(directory)
    document = io.read_config(directory)
    kind = document["kind"]
    builder = _builder(kind, directory / io.CONFIG_FILE)
    try:
        model = builder(document["config"])
    except Exception as exc:
        raise io.CheckpointError(f"{directory / io.CONFIG_FILE}: cannot build a {kind!r} model: {exc}") from exc
    io.load_weights(model, directory)
    return model.to(device).eval()


def is_retrieval_model(kind: str) -> bool:
    """Whether a saved model of ``kind`` scores texts against videos (a student or a teacher)."""
    return kind == STUDENT or kind in TEACHERS


def _builder(kind: str, config_path: Path) -> Callable[[dict[str, Any]], nn.Module]:
    if kind == STUDENT:
        return _build_student
    if kind == BACKBONE:
        return _build_backbone
    if kind in TEACHERS:
        return _build_saved_teacher
    known = ", ".join([STUDENT, BACKBONE, *TEACHERS])
    raise io.CheckpointError(f"{config_path}: unknown model kind {kind!r} (known kinds: {known})")


def _build_student(config: dict[str, Any]) -> nn.Module:
    config = migrate_student_config(config)
    saved = StudentConfig.model_validate(config)
    model = Student(StudentConfig.model_validate(io.without_pretrained(config)))
    # keep the saved config (with its pretrained source) as provenance of the rebuilt model
    model.config = saved
    model.backbone.config = saved.backbone
    return model


def migrate_student_config(config: dict[str, Any]) -> dict[str, Any]:
    """Students saved before ``student.freeze_backbone`` became ``backbone.freeze_text`` +
    ``backbone.freeze_visual`` load as they were trained."""
    if "freeze_backbone" not in config:
        return config
    config = dict(config)
    if config.pop("freeze_backbone"):
        config["backbone"] = {**config.get("backbone", {}), "freeze_text": True, "freeze_visual": True}
    return config


def _build_backbone(config: dict[str, Any]) -> nn.Module:
    saved = BackboneConfig.model_validate(config)
    model = Backbone(BackboneConfig.model_validate(io.without_pretrained(config)))
    model.config = saved
    return model


def _build_saved_teacher(config: dict[str, Any]) -> Teacher:
    # the checkpoint supplies every tensor: never fetch pretrained weights or an old checkpoint
    return create_teacher(TeacherConfig.model_validate(config), load_weights=False)
