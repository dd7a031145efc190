"""The one scoring interface of every retrieval model: encode once, score in blocks.

Scoring is split into *encode* (once per caption / once per video) and *score* (per block of texts x
videos), so that evaluation and teacher extraction encode every caption and video once and reuse the
features across every block of the similarity matrix, in bounded memory. ``model.scorer()`` gives
this interface for any model: a teacher is its own scorer; a student's is :class:`VectorScorer`
(one vector per text and per video, scores are their dot products).

Batches:
- text batch: ``tokens`` LongTensor [N, L] (the model's own tokenizer), ``texts`` list[str],
  ``caption_ids`` list[str], ``video_ids`` list[str] (the caption's own video);
- video batch: ``frames`` uint8 [V, T, H, W, 3] (or per-frame features [V, T, d] of a frozen tower),
  ``mask`` bool [V, T] (False = padding), ``video_ids`` list[str].

Features are ``dict[str, Tensor]`` whose tensors all have the batch on dim 0, so callers can slice,
concatenate and move them without knowing what is inside.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

Features = dict[str, torch.Tensor]
TextBatch = dict[str, Any]
VideoBatch = dict[str, Any]


def slice_features(features: Features, start: int, stop: int) -> Features:
    return {key: value[start:stop] for key, value in features.items()}


def cat_features(parts: list[Features]) -> Features:
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def features_to(features: Features, device: torch.device | str) -> Features:
    return {key: value.to(device) for key, value in features.items()}


def batch_size(features: Features) -> int:
    return int(next(iter(features.values())).shape[0])


class Scorer(Protocol):
    def text_batch(self, texts: list[str], caption_ids: list[str], video_ids: list[str]) -> TextBatch: ...
    def encode_texts(self, batch: TextBatch) -> Features: ...
    def encode_videos(self, batch: VideoBatch) -> Features: ...
    def score(self, text_features: Features, video_features: Features) -> torch.Tensor: ...
    def score_blocked(self, text_features: Features, video_features: Features, block_texts: int,
                      block_videos: int) -> torch.Tensor: ...


class VectorScorer:
    """The scorer of a two-tower model with ``tokenize``, ``encode_text(tokens)`` and
    ``encode_video(frames, mask)``: one unit vector per text and per video, scores = dot products."""

    def __init__(self, model: Any):
        self.model = model

    def text_batch(self, texts: list[str], caption_ids: list[str], video_ids: list[str]) -> TextBatch:
        return {"tokens": self.model.tokenize(list(texts)), "texts": list(texts), "caption_ids": list(caption_ids),
                "video_ids": list(video_ids)}

    def encode_texts(self, batch: TextBatch) -> Features:
        return {"vector": self.model.encode_text(batch["tokens"]).float()}

    def encode_videos(self, batch: VideoBatch) -> Features:
        return {"vector": self.model.encode_video(batch["frames"], batch["mask"]).float()}

    def score(self, text_features: Features, video_features: Features) -> torch.Tensor:
        return text_features["vector"] @ video_features["vector"].T

    def score_blocked(self, text_features: Features, video_features: Features, block_texts: int,
                      block_videos: int) -> torch.Tensor:
        """Row blocks only: one float32 matrix product per block of texts (CPU result)."""
        texts, videos = text_features["vector"], video_features["vector"]
        with torch.autocast(device_type=texts.device.type, enabled=False):
            return torch.cat([texts[start : start + block_texts].float() @ videos.float().T
                              for start in range(0, len(texts), block_texts)]).cpu()
