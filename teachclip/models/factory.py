"""The one place that turns a config or a saved model directory into a module (open_clip's factory style).

- :func:`create_teacher`: a teacher of a registered kind (:data:`teachclip.models.teachers.TEACHERS`),
  with its pretrained backbone and trained checkpoint (a ``save_teacher`` directory, a weights file
  of this teacher, or an official X-CLIP / TS2-Net / X-Pool checkpoint mapped by ``teachers/official.py``);
- :func:`load_model`: rebuild whatever a directory of :mod:`teachclip.models.io` holds, by its
  ``kind``: ``student``, ``backbone`` (``teach pretrain-backbone``) or a teacher kind. Builders never
  fetch pretrained weights: the file supplies every tensor, so a saved model loads offline;
- :func:`load_export`: the :class:`Student` a ``teach export`` directory holds (open_clip weights + head).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
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


def load_export(directory: str | Path, device: str | torch.device = "cpu") -> Student:
    """Rebuild the student a ``teach export`` directory holds, on ``device`` in eval mode: the same
    module (and vectors) as the saved student it was exported from."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    path = directory / io.CONFIG_FILE
    if not io.is_export(directory):
        raise io.CheckpointError(f"{path}: not a teach export config (format {io.EXPORT_FORMAT!r} expected)")
    document = json.loads(path.read_text())
    try:
        if document["format_version"] > io.EXPORT_VERSION:
            raise io.CheckpointError(f"{path}: export format_version {document['format_version']} is newer than "
                                     f"this code reads ({io.EXPORT_VERSION})")
        name = document["open_clip_model"]
        if (directory / io.EXPORT_MODEL_CONFIGS).is_dir():  # project configs (teachclip-tiny ...) ship with it
            open_clip.add_model_config(directory / io.EXPORT_MODEL_CONFIGS)
        if document["force_quick_gelu"] and not name.endswith("-quickgelu"):
            # open_clip names the QuickGELU variant of a stock config "<name>-quickgelu"
            name = f"{name}-quickgelu"
        head = load_file(directory / io.EXPORT_HEAD_WEIGHTS)
        clip = load_file(directory / io.EXPORT_OPEN_CLIP_WEIGHTS)
        positions = head.get("temporal.frame_position_embeddings.weight")
        fields = {"backbone": BackboneConfig(name=name, max_words=document["context_length"]),
                  "head": document["head"], "afa": document["afa"],
                  "afa_pool_temperature": document["afa_pool_temperature"]}
        if document["temporal"] is not None:
            fields |= {"temporal_layers": document["temporal"]["layers"], "max_frames": int(positions.shape[0])}
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise io.CheckpointError(f"{path}: not a readable export ({type(exc).__name__}: {exc})") from exc
    except (OSError, SafetensorError) as exc:
        raise io.CheckpointError(f"{directory}: cannot read the export's weights: {exc}") from exc
    model = None
    for init in ("text", "random"):  # the temporal head's shape depends on how it was initialised
        try:
            candidate = Student(StudentConfig(**fields, temporal_init=init))
        except (RuntimeError, ValueError) as exc:
            raise io.CheckpointError(f"{path}: cannot build {name!r}: {exc}") from exc
        if document["temporal"] is None or temporal_spec(candidate) == document["temporal"]:
            model = candidate
            break
    if model is None:
        raise io.CheckpointError(f"{path}: no student head matches the exported temporal transformer "
                                 f"{document['temporal']}")
    state = {f"backbone.clip.{key}": value for key, value in clip.items()} | head
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise io.CheckpointError(f"{directory}: the export's weights do not fit {name!r}: {exc}") from exc
    return model.to(device).eval()


def temporal_spec(student: Student) -> dict[str, Any]:
    """The temporal transformer's shape as ``teach export`` records it."""
    from open_clip.transformer import LayerNormFp32, QuickGELU

    block = student.temporal.transformer.resblocks[0]
    return {"layers": len(student.temporal.transformer.resblocks), "heads": student.temporal.heads,
            "act_layer": "quick_gelu" if isinstance(block.mlp.gelu, QuickGELU) else "gelu",
            "norm_layer": "layer_norm_fp32" if isinstance(block.ln_1, LayerNormFp32) else "layer_norm"}
