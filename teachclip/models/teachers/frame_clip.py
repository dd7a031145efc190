"""Frame-CLIP: any (bigger) open_clip model used zero-shot as a frame-level teacher.

Relevance is the cosine of the caption and each frame; the similarity pools those cosines over the
valid frames with ``options.pooling``:
- "mean":    mean_f cos_f (note: the mean of cosines, not the cosine of the mean frame);
- "max":     max_f cos_f;
- "softmax": sum_f softmax_f(cos_f / temperature) cos_f.
No training is needed (a pretrained ``backbone.pretrained`` does the work), though the same InfoNCE
trainer can fine-tune it. Per pair it costs T dot products, about T x a meanP dot product.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from teachclip.models.layers import masked_max, masked_mean, masked_softmax, normalize
from teachclip.models.teachers.base import Features, TextBatch, VideoBatch
from teachclip.models.teachers.common import (
    ClipTeacher,
    Options,
    full_precision,
    matched_dot,
    matched_pairs,
    pairwise_dot,
)


class FrameClipOptions(Options):
    pooling: Literal["mean", "max", "softmax"] = "mean"
    temperature: float = Field(0.01, gt=0)  # softmax pooling only


class FrameClipTeacher(ClipTeacher):
    kind = "frame_clip"
    options_class = FrameClipOptions
    score_version = 1
    relevance_definition = "cosine of the CLIP sentence embedding and each frame embedding of its own video; padded frames 0"

    @property
    def similarity_definition(self) -> str:  # depends on the configured pooling
        pooling = {
            "mean": "mean over valid frames of cos(sentence, frame)",
            "max": "max over valid frames of cos(sentence, frame)",
            "softmax": f"sum_f softmax_f(cos_f / {self.options.temperature}) cos_f over valid frames",
        }[self.options.pooling]
        return f"frame-CLIP ({self.config.backbone.name}, {self.config.backbone.pretrained}): {pooling}"

    def encode_texts(self, batch: TextBatch) -> Features:
        return {"sentence": self.encode_sentences(batch)}

    def encode_videos(self, batch: VideoBatch) -> Features:
        frames, mask = self.encode_valid_frames(batch)
        return {"frames": normalize(frames), "mask": mask}

    @full_precision
    def score(self, text_features: Features, video_features: Features) -> torch.Tensor:
        mask = video_features["mask"][None]
        cosine = pairwise_dot(text_features["sentence"].float(), video_features["frames"].float())
        if self.options.pooling == "mean":
            return masked_mean(cosine, mask)
        if self.options.pooling == "max":
            return masked_max(cosine, mask)
        weights = masked_softmax(cosine / self.options.temperature, mask)
        return (weights * cosine.masked_fill(~mask.expand_as(cosine), 0)).sum(-1)

    @full_precision
    def relevance(self, text_features: Features, video_features: Features) -> torch.Tensor:
        matched_pairs(text_features, video_features)
        cosine = matched_dot(text_features["sentence"].float(), video_features["frames"].float())
        return cosine.masked_fill(~video_features["mask"], 0)
