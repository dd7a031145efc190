"""Pieces shared by the teachers: a CLIP-backed teacher base, options, pairwise products.

Masked reductions and the temporal transformer are shared with the student (:mod:`teachclip.models.layers`).
A padded frame's own outputs (frame features, relevance) are set to 0, so that nothing non-finite
ever reaches a cache; a video with no valid frame at all scores 0 rather than NaN. With
``scoring.padded_frames: released`` (official checkpoints) the padded frames are scored as the
released code scores them (:mod:`.released`): video features then carry ``frame_mask``, the frames
the score reads, beside ``mask``, the frames that exist (relevance stays 0 on padding).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from teachclip.core.config import TeacherConfig
from teachclip.models.backbone import Backbone
from teachclip.models.io import (
    CheckpointError,
    load_state_dict_safely,
    read_config,
    weights_path,
    without_pretrained,
)
from teachclip.models.layers import normalize
from teachclip.models.teachers.base import Features, Teacher, TextBatch, VideoBatch
from teachclip.models.teachers.released import departures, resolve_scoring


class Options(BaseModel):
    """Kind-specific ``TeacherConfig.options``; unknown keys are errors (typos must not pass)."""

    model_config = ConfigDict(extra="forbid")


def full_precision(method):
    """Run a teacher method with autocast off (its inputs are cast to fp32 by the method).

    Cosine pooling with sharp softmaxes (X-CLIP's tau = 0.01) is where bf16 rounding hurts, and
    these steps are cheap next to the encoders, which autocast still speeds up.
    """

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with torch.autocast(device_type=self.device.type, enabled=False):
            return method(self, *args, **kwargs)

    return run


def pairwise_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot products of every vector of a [*A, d] with every vector of b [*B, d] -> [*A, *B].

    One flat matmul: much faster than the equivalent einsum, which batches over the video dim.
    """
    d = a.shape[-1]
    return (a.reshape(-1, d) @ b.reshape(-1, d).T).view(*a.shape[:-1], *b.shape[:-1])


def matched_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot products of a[i] [N, d] with each b[i, t] of b [N, T, d] -> [N, T] (matched pairs)."""
    return torch.bmm(b, a[:, :, None]).squeeze(-1)


def matched_pairs(text_features: Features, video_features: Features) -> None:
    n_texts = next(iter(text_features.values())).shape[0]
    n_videos = next(iter(video_features.values())).shape[0]
    if n_texts != n_videos:
        raise ValueError(
            f"frame relevance scores caption i against its own video i: got {n_texts} captions "
            f"and {n_videos} videos"
        )


class ClipTeacher(Teacher):
    """A teacher built on an open_clip :class:`Backbone`, with its own logit scale for training.

    ``score`` returns similarities in cosine units (no logit scale); :attr:`logit_scale` is the
    learned temperature the InfoNCE trainer multiplies them by (CLIP's, clamped at 100).
    """

    options_class: type[Options] = Options

    def __init__(self, config: TeacherConfig, load_weights: bool = True):
        super().__init__()
        if config.kind != self.kind:
            raise ValueError(f"{type(self).__name__} needs a {self.kind!r} config, got kind {config.kind!r}")
        # scoring settings left automatic are teachclip's here; create_teacher resolves them for
        # official checkpoints first (the released code's behaviour)
        config = config.model_copy(update={"scoring": resolve_scoring(config.kind, config.scoring, official=False)})
        self.config = config
        self.scoring = config.scoring
        if departures(self.scoring):  # recorded with the scores (teacher-cache attributes, saved teachers)
            self.similarity_definition = (f"{self.similarity_definition}; scored as the released code: "
                                          f"{', '.join(departures(self.scoring))}")
        self.options = self.options_class.model_validate(config.options)
        backbone_config = config.backbone if load_weights else type(config.backbone).model_validate(
            without_pretrained(config.backbone.model_dump()))
        self.backbone = Backbone(backbone_config)
        self.embed_dim = self.backbone.embed_dim

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.backbone.clip.logit_scale.exp().clamp(max=100)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        if self.scoring.text_context == "model":  # the model's whole context (X-Pool's code: 77 tokens)
            return self.backbone.tokenize_full_context(texts)
        return self.backbone.tokenize(texts)

    def encode_sentences(self, batch: TextBatch) -> torch.Tensor:
        """L2-normalised sentence embeddings [N, d]."""
        return normalize(self.backbone.encode_text(batch["tokens"].to(self.device)))

    def encode_valid_frames(self, batch: VideoBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Image embeddings [V, T, d] of the valid frames only (padding: zeros) and the mask [V, T].

        Padded frames never go through the image tower: that saves their cost and makes it plain
        that their pixels cannot influence anything.
        """
        frames = torch.as_tensor(batch["frames"])
        mask = torch.as_tensor(batch["mask"], dtype=torch.bool)
        out = torch.zeros(*mask.shape, self.embed_dim, device=self.device)
        mask = mask.to(self.device)
        if mask.any():
            embeddings = self.backbone.encode_images(frames[mask.to(frames.device)])
            out = out.to(embeddings.dtype)
            out[mask] = embeddings
        return out, mask

    def encode_zero_padded_frames(self, batch: VideoBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode_valid_frames`, but a padded frame is the embedding of an all-zero image after
        normalisation, as the released X-CLIP / TS2-Net dataloaders feed (``np.zeros`` frames)."""
        out, mask = self.encode_valid_frames(batch)
        if not bool(mask.all()):
            size = self.backbone.image_size
            zero = self.backbone.clip.encode_image(torch.zeros(1, 3, size, size, device=self.device))
            out = torch.where(mask[..., None], out, zero.to(out.dtype))
        return out, mask

    def load_checkpoint(self, path: str | Path) -> None:
        """Load trained weights: a directory written by ``save_teacher`` or a weights-only file."""
        path = Path(path)
        if path.is_dir():
            saved_kind = read_config(path)["kind"]
            if saved_kind != self.kind:
                raise CheckpointError(f"{path}: holds a {saved_kind!r} model, not a {self.kind!r} teacher")
        path = weights_path(path)
        state = load_state_dict_safely(path)
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit this {self.kind} teacher config: {exc}") from exc
