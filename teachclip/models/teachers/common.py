"""Pieces shared by the teachers: masked reductions, a CLIP-backed teacher base, a temporal transformer.

Masking rule used everywhere: a padded frame (mask False) takes no part in any softmax, mean or max,
and its own outputs (frame features, relevance) are set to 0 so that nothing non-finite ever reaches
a cache. A video with no valid frame at all scores 0 rather than NaN.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from teachclip.models.backbone import Backbone, load_state_dict_safely
from teachclip.models.teachers.base import Features, Teacher, TextBatch, VideoBatch
from teachclip.core.config import TeacherConfig

# finite "minus infinity" that every float dtype can hold (fp16 tops out at 65504): a masked entry
# gets exp(-65504 - max) = 0 exactly, and a row with no valid entry stays finite
MASKED_LOGIT = -65504.0


class Options(BaseModel):
    """Kind-specific ``TeacherConfig.options``; unknown keys are errors (typos must not pass)."""

    model_config = ConfigDict(extra="forbid")


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """softmax over the valid entries of ``dim``; masked entries (and all-masked rows) get weight 0."""
    mask = mask.expand_as(logits)
    weights = logits.masked_fill(~mask, MASKED_LOGIT).softmax(dim)
    return weights * mask


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean over the valid entries of ``dim`` (0 where there are none); ``mask`` broadcasts to values."""
    mask = mask.expand_as(values)
    total = values.masked_fill(~mask, 0).sum(dim)
    return total / mask.sum(dim).clamp(min=1).to(total.dtype)


def masked_max(values: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Max over the valid entries of ``dim`` (0 where there are none)."""
    mask = mask.expand_as(values)
    best = values.masked_fill(~mask, MASKED_LOGIT).amax(dim)
    return best.masked_fill(~mask.any(dim), 0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dim; a zero vector (a padded frame) stays zero instead of NaN."""
    return F.normalize(x, dim=-1, eps=1e-6)


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
        self.config = config
        self.options = self.options_class.model_validate(config.options)
        backbone_config = config.backbone if load_weights else config.backbone.model_copy(update={"pretrained": None})
        self.backbone = Backbone(backbone_config)
        self.embed_dim = self.backbone.embed_dim

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.backbone.clip.logit_scale.exp().clamp(max=100)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
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

    def load_checkpoint(self, path: str | Path) -> None:
        """Load trained weights: a directory written by ``save_teacher`` or a weights-only file."""
        path = Path(path)
        if path.is_dir():
            from teachclip.models.io import WEIGHTS_FILE, read_config

            saved_kind = read_config(path)["kind"]
            if saved_kind != self.kind:
                raise ValueError(f"{path}: holds a {saved_kind!r} model, not a {self.kind!r} teacher")
            path = path / WEIGHTS_FILE
        state = load_state_dict_safely(path)
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{path}: weights do not fit this {self.kind} teacher config: {exc}") from exc


class TemporalTransformer(nn.Module):
    """CLIP4Clip's ``seqTransf``: frame position embeddings + transformer blocks + residual.

    Blocks are copies of the first layers of the CLIP text transformer when its width equals
    ``width`` (CLIP4Clip initialises its temporal transformer the same way); any further layer is
    freshly initialised. Tokens whose ``mask`` is False are never attended to; their outputs are
    returned unchanged-but-meaningless and must be masked by the caller.
    """

    def __init__(self, width: int, layers: int, max_frames: int, text_blocks: nn.ModuleList | None = None):
        super().__init__()
        from open_clip.transformer import ResidualAttentionBlock

        blocks = []
        for i in range(layers):
            reusable = text_blocks is not None and i < len(text_blocks) and _block_width(text_blocks[i]) == width
            blocks.append(copy.deepcopy(text_blocks[i]) if reusable else
                          ResidualAttentionBlock(width, max(1, width // 64), batch_first=True))
        self.blocks = nn.ModuleList(blocks)
        self.frame_position = nn.Embedding(max_frames, width)
        nn.init.normal_(self.frame_position.weight, std=0.01)

    def forward(self, x: torch.Tensor, frame_index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, S, d]; frame_index [S] (the frame each token belongs to); mask [B, S] (valid tokens)."""
        if int(frame_index.max()) >= self.frame_position.num_embeddings:
            raise ValueError(
                f"{int(frame_index.max()) + 1} frames exceed max_frames={self.frame_position.num_embeddings}"
            )
        h = x + self.frame_position(frame_index)[None].to(x.dtype)
        for block in self.blocks:
            heads = block.attn.num_heads
            # additive key mask per (batch, head): [B * heads, S, S] as nn.MultiheadAttention wants it
            blocked = (~mask)[:, None, None, :].expand(-1, heads, h.shape[1], -1)
            attn_mask = torch.zeros(blocked.shape, dtype=h.dtype, device=h.device).masked_fill(blocked, MASKED_LOGIT)
            attn_mask = attn_mask.flatten(0, 1)
            if block.attn.batch_first:
                h = block(h, attn_mask=attn_mask)
            else:
                h = block(h.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
        return h + x


def _block_width(block: nn.Module) -> int:
    return int(block.ln_1.normalized_shape[0])
