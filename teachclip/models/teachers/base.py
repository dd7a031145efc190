"""The one interface every teacher implements: :class:`teachclip.models.scorer.Scorer` (encode once,
score in blocks) plus the frame relevance of matched pairs and the metadata the teacher cache records.

A teacher that needs other inputs than the scorer's batches (the caption-similarity teacher needs
each video's training captions) documents the extra keys it reads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from teachclip.models.scorer import Features, TextBatch, VideoBatch, slice_features


class Teacher(nn.Module, ABC):
    """A fine-grained text-video scorer whose outputs become soft labels."""

    kind: str = ""
    # False for teachers whose weights come from elsewhere (caption similarity): train-teacher refuses them
    trainable: bool = True
    # False for teachers with no notion of frames (caption similarity): no fine-grained labels
    has_frame_relevance: bool = True
    # Version of the code that computes the scores: part of the teacher-cache fingerprint
    score_version: int = 1
    # Human-readable definitions stored in the cache attributes
    similarity_definition: str = ""
    relevance_definition: str = ""

    def bind_manifest(self, manifest) -> None:  # noqa: B027 - optional hook
        """Give the teacher the dataset it will score (the caption-similarity teacher reads each
        training video's captions from it). Called by every stage before scoring."""

    @abstractmethod
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids [N, L] for ``TextBatch["tokens"]`` (the teacher's own tokenizer)."""

    def text_batch(self, texts: list[str], caption_ids: list[str], video_ids: list[str]) -> TextBatch:
        return {"tokens": self.tokenize(texts), "texts": list(texts), "caption_ids": list(caption_ids),
                "video_ids": list(video_ids)}

    @abstractmethod
    def encode_texts(self, batch: TextBatch) -> Features:
        """Per-caption features (computed once per caption)."""

    @abstractmethod
    def encode_videos(self, batch: VideoBatch) -> Features:
        """Per-video features (computed once per video)."""

    @abstractmethod
    def score(self, text_features: Features, video_features: Features) -> torch.Tensor:
        """Similarity [texts, videos] of every text against every video of the given blocks."""

    def relevance(self, text_features: Features, video_features: Features) -> torch.Tensor:
        """Raw (pre-softmax) frame relevance [texts, T] of caption i against video i; padded frames
        hold -inf-free finite values and must be masked by the consumer with the frame mask."""
        raise NotImplementedError(f"{self.kind} teacher has no frame relevance")

    def scorer(self) -> Teacher:
        """A teacher is its own scorer (:mod:`teachclip.models.scorer`)."""
        return self

    # convenience wrappers: the per-pair definitions used by tests and online teaching
    def similarity(self, text_batch: TextBatch, video_batch: VideoBatch) -> torch.Tensor:
        return self.score(self.encode_texts(text_batch), self.encode_videos(video_batch))

    def frame_relevance(self, text_batch: TextBatch, video_batch_matched: VideoBatch) -> torch.Tensor:
        return self.relevance(self.encode_texts(text_batch), self.encode_videos(video_batch_matched))

    def score_blocked(
        self, text_features: Features, video_features: Features, block_texts: int, block_videos: int
    ) -> torch.Tensor:
        """``score`` over blocks of texts x videos, so peak memory is bounded by the block size."""
        n_texts = next(iter(text_features.values())).shape[0]
        n_videos = next(iter(video_features.values())).shape[0]
        out = torch.empty(n_texts, n_videos)
        for t0 in range(0, n_texts, block_texts):
            texts = slice_features(text_features, t0, t0 + block_texts)
            for v0 in range(0, n_videos, block_videos):
                videos = slice_features(video_features, v0, v0 + block_videos)
                out[t0 : t0 + block_texts, v0 : v0 + block_videos] = self.score(texts, videos).float().cpu()
        return out
