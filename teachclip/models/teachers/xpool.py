"""X-Pool (Gorti et al., CVPR 2022): the caption decides how the frames are pooled.

One-head scaled dot-product attention with the caption as the query and the frames as keys and
values (a shared LayerNorm first, q/k/v/out projections initialised to the identity), a LayerNorm,
then a residual linear refinement (identity-initialised, dropout in training) and a last LayerNorm.
The similarity is cos(caption, pooled_{caption, video}): a d-dim vector per *pair*, which is what makes
X-Pool about 1000x a meanP dot product per pair.

Frame relevance is the attention *logits* ``q . k_f / sqrt(d)`` of a caption over its own video's
frames, not the softmaxed weights: the consumer applies ``softmax(relevance / tau)`` over the valid
frames, so tau = 1 reproduces X-Pool's own attention weights exactly.

The released code (``scoring``, :mod:`.released`; the defaults of an official checkpoint) tokenises
captions at CLIP's 77 positions (``text_context: model``) and, for a video shorter than its frame
count, repeats the last frame instead of masking (``padded_frames: released``): a repeated frame
takes part in the attention like any other, so the last frame weighs more.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from teachclip.models.layers import masked_softmax, normalize
from teachclip.models.teachers.base import Features, TextBatch, VideoBatch
from teachclip.models.teachers.common import (
    ClipTeacher,
    Options,
    full_precision,
    matched_dot,
    matched_pairs,
    pairwise_dot,
)


class XPoolOptions(Options):
    dropout: float = Field(0.3, ge=0, lt=1)  # on the residual refinement, training only


def identity_linear(dim: int) -> nn.Linear:
    linear = nn.Linear(dim, dim)
    nn.init.eye_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class XPoolHead(nn.Module):
    """Text-conditioned attention pooling of frame embeddings."""

    def __init__(self, dim: int, dropout: float = 0.3):
        super().__init__()
        self.ln_in = nn.LayerNorm(dim)  # shared by the caption and the frames, as in X-Pool
        self.q_proj = identity_linear(dim)
        self.k_proj = identity_linear(dim)
        self.v_proj = identity_linear(dim)
        self.out_proj = identity_linear(dim)
        self.ln_attn = nn.LayerNorm(dim)
        self.refine = identity_linear(dim)
        self.dropout = nn.Dropout(dropout)
        self.ln_out = nn.LayerNorm(dim)
        self.scale = 1.0 / math.sqrt(dim)

    def queries(self, sentence: torch.Tensor) -> torch.Tensor:
        """Per caption [N, d] -> attention queries [N, d]."""
        return self.q_proj(self.ln_in(sentence))

    def keys_values(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per video frames [V, T, d] -> attention keys and output-projected values [V, T, d].

        out_proj commutes with the attention-weighted sum because the weights sum to 1 over valid
        frames, so it runs once per frame instead of once per (caption, video) pair.
        """
        frames = self.ln_in(frames)
        return self.k_proj(frames), self.out_proj(self.v_proj(frames))

    def logits(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Attention logits [N, V, T] of every caption over every video's frames."""
        return pairwise_dot(queries, keys) * self.scale

    def pool(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled video embeddings [N, V, d], one per (caption, video) pair: the per-pair part."""
        weights = masked_softmax(self.logits(queries, keys), mask[None])
        pooled = self.ln_attn(torch.bmm(weights.transpose(0, 1), values).transpose(0, 1))  # [N, V, d]
        return self.ln_out(pooled + self.dropout(self.refine(pooled)))

    def forward(self, sentence: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled video embeddings [N, V, d] straight from sentence [N, d] and frame [V, T, d] embeddings."""
        return self.pool(self.queries(sentence), *self.keys_values(frames), mask)


def repeat_last_frame(frames: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """X-Pool's padding: every padded frame [V, T, d] becomes a copy of the last valid frame before it,
    and counts as valid (mask [V, T]); a video with no valid frame stays as it is."""
    steps = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    source = torch.where(mask, steps, torch.full_like(steps, -1)).cummax(dim=1).values  # last valid index <= t
    filled = frames.gather(1, source.clamp(min=0)[..., None].expand_as(frames))
    return filled, (source >= 0) | mask


class XPoolTeacher(ClipTeacher):
    kind = "xpool"
    options_class = XPoolOptions
    score_version = 1
    similarity_definition = (
        "cos(t, p_tv): t = CLIP sentence embedding, p_tv = X-Pool pooling of video v's frame embeddings "
        "with caption t as the query (1-head attention over valid frames, LayerNorm, residual linear, LayerNorm)"
    )
    relevance_definition = (
        "X-Pool attention logits q_t . k_f / sqrt(d) of the caption over its own video's frames, before "
        "the softmax (softmax(relevance / 1) over valid frames = X-Pool's attention weights); padded frames 0"
    )

    def __init__(self, config, load_weights: bool = True):
        super().__init__(config, load_weights)
        self.head = XPoolHead(self.embed_dim, self.options.dropout)

    def encode_texts(self, batch: TextBatch) -> Features:
        sentence = self.backbone.encode_text(batch["tokens"].to(self.device))
        return {"sentence": normalize(sentence), "query": self.head.queries(sentence)}

    def encode_videos(self, batch: VideoBatch) -> Features:
        frames, mask = self.encode_valid_frames(batch)
        if self.scoring.padded_frames == "released":  # frame_mask: the frames the attention reads
            frames, frame_mask = repeat_last_frame(frames, mask)
            keys, values = self.head.keys_values(frames)
            return {"keys": keys, "values": values, "mask": mask, "frame_mask": frame_mask}
        keys, values = self.head.keys_values(frames)
        return {"keys": keys, "values": values, "mask": mask}

    def score(self, text_features: Features, video_features: Features) -> torch.Tensor:
        pooled = self.head.pool(text_features["query"], video_features["keys"], video_features["values"],
                                video_features.get("frame_mask", video_features["mask"]))
        return torch.bmm(normalize(pooled), text_features["sentence"][:, :, None]).squeeze(-1)

    @full_precision
    def relevance(self, text_features: Features, video_features: Features) -> torch.Tensor:
        matched_pairs(text_features, video_features)
        logits = matched_dot(text_features["query"].float(), video_features["keys"].float()) * self.head.scale
        return logits.masked_fill(~video_features["mask"], 0)
