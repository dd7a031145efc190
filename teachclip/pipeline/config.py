"""Typed configuration: every section of ``params.yaml`` maps to one pydantic model here.

``params.yaml`` is the single source of truth; CLI flags override single fields through
:func:`override`. pydantic (rather than bare dataclasses) gives us validation with readable error
messages naming the offending key, which matters because users edit params files by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Section(BaseModel):
    """Base of every params section: unknown keys are errors (typos must not pass silently)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ComputeConfig(Section):
    """Where parallel work runs (decode, teacher extraction)."""

    # "local": a dask LocalCluster of `workers` processes; "sync": in this process, no dask;
    # anything else: the address of a running dask scheduler (tcp://host:8786).
    scheduler: str = "local"
    workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    device: str = "auto"  # "auto" picks cuda when available, else cpu


class DemoConfig(Section):
    """The built-in procedurally generated benchmark (see docs/demo-data.md)."""

    out: Path = Path("data/demo")
    videos: int = Field(400, ge=4)
    seed: int = 0
    test_fraction: float = Field(0.5, gt=0, lt=1)
    captions_per_video: int = Field(4, ge=1)
    test_captions_per_video: int = Field(1, ge=1)
    width: int = Field(96, ge=16)
    height: int = Field(96, ge=16)
    fps: int = Field(4, ge=1)
    seconds: float = Field(6.0, gt=0)


class DecodeConfig(Section):
    """Frame sampling and the frames store (CLIP4Clip conventions)."""

    frames_per_video: int = Field(12, ge=1)
    sample_fps: float = Field(1.0, gt=0)  # first sample at this rate, then linspace down to T
    size: int = Field(224, ge=8)  # short side resized to this, then center crop size x size
    backend: Literal["pyav", "ffmpeg"] = "pyav"
    ffmpeg_binary: str | None = None  # None: the binary shipped by imageio-ffmpeg
    videos_per_shard: int = Field(16, ge=1)
    max_failure_fraction: float = Field(0.05, ge=0, le=1)
    fingerprint_mode: Literal["content", "stat"] = "content"


class BackboneConfig(Section):
    """An open_clip model: a registered name plus a pretrained tag or a local checkpoint path."""

    name: str = "teachclip-tiny"
    pretrained: str | None = None  # open_clip tag ("openai", "laion2b_s34b_b79k") or a file path
    max_words: int = Field(32, ge=4)
    precision: Literal["fp32", "amp"] = "amp"  # amp only takes effect on CUDA


class StudentConfig(Section):
    """CLIP4Clip student with optional AFA."""

    backbone: BackboneConfig = BackboneConfig()
    head: Literal["meanP", "seqTransf"] = "meanP"
    afa: bool = True
    afa_pool_temperature: float = Field(0.1, gt=0)
    afa_weight_temperature: float = Field(1.0, gt=0)
    temporal_layers: int = Field(4, ge=1)
    freeze_backbone: bool = False


class TeacherConfig(Section):
    """One teacher: its kind, backbone and kind-specific options."""

    kind: Literal["xpool", "xclip", "ts2net", "frame_clip", "caption_sim"]
    backbone: BackboneConfig = BackboneConfig()
    checkpoint: str | None = None  # trained weights (safetensors) or official state dict
    options: dict[str, Any] = {}


class TrainTeacherConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = 1e-4
    lr_backbone: float = 1e-4
    weight_decay: float = 0.2
    warmup_fraction: float = Field(0.1, ge=0, le=1)
    grad_clip: float = 1.0
    seed: int = 0
    num_workers: int = 0


class ExtractConfig(Section):
    teachers: list[str] = []  # names from the `teachers:` section, optionally NAME=CHECKPOINT
    memory_budget_mb: int = Field(1024, ge=16)
    block_texts: int = Field(256, ge=1)  # rows per similarity chunk (the unit of work and resume)
    block_videos: int | None = None  # None: every train video in one block column
    shared_cache: str | None = None  # fsspec URL searched by fingerprint before computing


class TeacherWeight(Section):
    name: str
    weight: float = 1.0


class TrainStudentConfig(Section):
    teachers: list[TeacherWeight] = []  # empty list: the untaught CLIP4Clip/AFA baseline
    weight_nce: float = Field(0.2, ge=0)
    weight_coarse: float = Field(1.0, ge=0)
    weight_fine: float = Field(2.0, ge=0)
    coarse_loss: Literal["pearson", "kl", "huber"] = "pearson"
    fine_loss: Literal["ce", "kl"] = "ce"
    fine_temperature: float = Field(1.0, gt=0)  # tau of softmax(relevance / tau)
    huber_delta: float = Field(1.0, gt=0)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(120, ge=2)
    lr_backbone: float = 1e-7
    lr_new: float = 1e-4
    lr_afa: float = 1e-3
    weight_decay: float = 0.2
    warmup_fraction: float = Field(0.1, ge=0, le=1)
    grad_clip: float = 1.0
    seed: int = 0
    caption_mask: str | None = None  # file from `teach audit-captions`
    eval_every: int = Field(1, ge=1)


class EvaluateConfig(Section):
    split: str = "test"
    block_texts: int = Field(512, ge=1)
    block_videos: int = Field(2048, ge=1)


class Params(Section):
    """The whole ``params.yaml``."""

    compute: ComputeConfig = ComputeConfig()
    demo: DemoConfig = DemoConfig()
    decode: DecodeConfig = DecodeConfig()
    student: StudentConfig = StudentConfig()
    teachers: dict[str, TeacherConfig] = {}
    train_teacher: TrainTeacherConfig = TrainTeacherConfig()
    extract: ExtractConfig = ExtractConfig()
    train_student: TrainStudentConfig = TrainStudentConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    # Free-form paths used by dvc.yaml (``${paths.frames}``); not read by the library itself.
    paths: dict[str, str] = {}


class ConfigError(ValueError):
    """A params file that cannot be read or does not validate."""


def load_params(path: str | Path | None = "params.yaml") -> Params:
    """Read ``params.yaml`` (missing file: all defaults) into :class:`Params`."""
    if path is None:
        return Params()
    path = Path(path)
    if not path.exists():
        return Params()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid parameters:\n{exc}") from exc


S = TypeVar("S", bound=BaseModel)


def override(section: S, **flags: Any) -> S:
    """Return ``section`` with every flag that is not None replaced (CLI flags beat params.yaml)."""
    updates = {key: value for key, value in flags.items() if value is not None}
    unknown = set(updates) - set(type(section).model_fields)
    if unknown:
        raise ConfigError(f"unknown {type(section).__name__} field(s): {', '.join(sorted(unknown))}")
    merged = section.model_dump() | updates
    try:
        return type(section).model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"invalid override for {type(section).__name__}:\n{exc}") from exc
