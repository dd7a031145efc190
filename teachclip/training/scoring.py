"""Scoring a model over a collection: the similarity matrix of a split and its retrieval metrics.

Every model is scored through its :mod:`scorer <teachclip.models.scorer>`: each caption and each video
is encoded once (:func:`encode_collection`), then every caption is scored against every video in
blocks. For a student that is one dot product per pair; for a teacher its own fine-grained
similarity. Used by ``teach evaluate`` and by the per-epoch evaluation of the training stages.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from teachclip.core.config import EvaluateConfig
from teachclip.core.device import autocast
from teachclip.core.errors import InputError
from teachclip.core.files import atomic_write
from teachclip.core.manifest import Manifest, SplitData, split_data
from teachclip.models.metrics import retrieval_metrics
from teachclip.models.scorer import Features, Scorer, cat_features
from teachclip.training.batches import frames_batches

# the test-split columns a training stage logs per evaluated epoch
TEST_COLUMNS = ("t2v_R1", "t2v_R5", "t2v_R10", "t2v_MdR", "v2t_R1", "v2t_R5", "v2t_R10")
MIN_TIMING_SECONDS = 0.2  # a millisecond matrix product is repeated until this much time is spent


def uses_amp(model: nn.Module) -> bool:
    """Mixed precision as the model's backbone config asks (it only takes effect on CUDA)."""
    return model.config.backbone.precision == "amp"


@torch.no_grad()
def encode_collection(scorer: Scorer, store, data: SplitData, *, batch_videos: int, batch_texts: int,
                      device: torch.device, amp: bool = True, prefetch: bool = True) -> tuple[Features, Features]:
    """Text features of every caption and video features of every video of ``data``, encoded once
    each, kept on ``device``; the caller puts the model in eval mode."""
    text_features = encode_texts(scorer, data.texts, data.caption_ids, data.caption_video_ids,
                                 batch_texts=batch_texts, device=device, amp=amp)
    return text_features, encode_videos(scorer, store, data.store_rows, data.video_ids, batch_videos=batch_videos,
                                        device=device, amp=amp, prefetch=prefetch)


@torch.no_grad()
def encode_texts(scorer: Scorer, texts: Sequence[str], caption_ids: Sequence[str], caption_video_ids: Sequence[str],
                 *, batch_texts: int, device: torch.device, amp: bool = True) -> Features:
    """Text features of every caption, ``batch_texts`` at a time."""
    parts = []
    for start in range(0, len(texts), batch_texts):
        stop = start + batch_texts
        batch = scorer.text_batch(list(texts[start:stop]), list(caption_ids[start:stop]),
                                  list(caption_video_ids[start:stop]))
        batch["tokens"] = batch["tokens"].to(device)
        with autocast(device, amp):
            parts.append(scorer.encode_texts(batch))
    return cat_features(parts)


@torch.no_grad()
def encode_videos(scorer: Scorer, store, store_rows: np.ndarray, video_ids: Sequence[str], *, batch_videos: int,
                  device: torch.device, amp: bool = True, prefetch: bool = True, progress: Any = None) -> Features:
    """Video features of the videos at frames-store rows ``store_rows``, ``batch_videos`` at a time
    (the next batch read while this one is encoded); ``progress``: a (bar, task) to advance."""
    chunks = [np.arange(start, min(start + batch_videos, len(store_rows)))
              for start in range(0, len(store_rows), batch_videos)]
    parts = []
    for chunk, (frames, mask) in zip(chunks, frames_batches(store, [store_rows[c] for c in chunks], prefetch),
                                     strict=True):
        batch = {"frames": frames.to(device), "mask": mask.to(device), "video_ids": [video_ids[i] for i in chunk]}
        with autocast(device, amp):
            parts.append(scorer.encode_videos(batch))
        if progress is not None:
            progress[0].advance(progress[1], len(chunk))
    return cat_features(parts)


@torch.no_grad()
def score_collection(model: nn.Module, store, data: SplitData, *, config: EvaluateConfig, device: torch.device,
                     amp: bool = True, prefetch: bool = True, timings: dict[str, float] | None = None) -> torch.Tensor:
    """Similarity [texts, videos] (float32, CPU) of a model over the captions and videos of ``data``.

    ``timings`` (optional) receives wall seconds: ``encode_seconds`` (every caption and video encoded
    once: for the videos that is index time, paid once) and ``score_seconds`` (every query scored
    against every encoded video: what separates a student from a teacher at search time; a scoring
    faster than ``MIN_TIMING_SECONDS`` is repeated and the fastest reading kept).
    """
    timings = {} if timings is None else timings
    scorer = model.scorer()
    started = time.perf_counter()
    text_features, video_features = encode_collection(
        scorer, store, data, batch_videos=config.batch_videos, batch_texts=config.batch_texts, device=device,
        amp=amp, prefetch=prefetch)
    timings["encode_seconds"] = time.perf_counter() - started

    def score() -> torch.Tensor:
        with autocast(device, amp):
            return scorer.score_blocked(text_features, video_features, config.block_texts, config.block_videos).float()

    started = time.perf_counter()
    similarity = score()
    fastest = spent = time.perf_counter() - started
    while spent < MIN_TIMING_SECONDS:
        started = time.perf_counter()
        score()
        took = time.perf_counter() - started
        fastest, spent = min(fastest, took), spent + took
    timings["score_seconds"] = fastest
    return similarity


@dataclass
class Evaluation:
    metrics: dict[str, float]  # t2v_* / v2t_* (retrieval_metrics) plus the counts below
    similarity: np.ndarray  # float32 [texts, videos]
    text_ids: list[str]  # caption ids, manifest order
    video_ids: list[str]  # evaluated videos, store (sorted) order
    text_video_index: np.ndarray  # int64 [texts]: column of each caption's video
    excluded_video_ids: list[str]  # failed decodes left out of the split


def evaluate_split(
    model: nn.Module,
    store,
    manifest: Manifest,
    config: EvaluateConfig,
    device: torch.device,
    prefetch: bool = True,
) -> Evaluation:
    """Score every caption of ``config.split`` against every decoded video of the split (videos whose
    decoding failed are left out, with their captions, and counted)."""
    store.check_model(model)  # a frame-features store only serves the frozen tower that made it
    data = split_data(manifest, config.split, store.video_ids, store.valid)
    was_training = model.training
    model.eval()
    timings: dict[str, float] = {}
    similarity = score_collection(model, store, data, config=config, device=device, amp=uses_amp(model),
                                  prefetch=prefetch, timings=timings).numpy()
    model.train(was_training)
    if not np.isfinite(similarity).all():  # ranks of NaN scores would be metrics of nothing
        bad = int((~np.isfinite(similarity)).sum())
        raise InputError(f"{type(model).__name__}: {bad} of {similarity.size} scores of the {config.split} split are "
                         f"NaN or infinite; refusing to report metrics of them (a broken checkpoint or a hole in "
                         f"the frames)")
    metrics = retrieval_metrics(similarity, data.caption_video)
    metrics |= {
        "texts": len(data.caption_ids),
        "videos": len(data.video_ids),
        "excluded_videos": len(data.excluded_video_ids),
        "excluded_captions": len(manifest.captions_in(config.split)) - len(data.caption_ids),
        # search-time cost of one query against this split's videos, from encoded features (wall
        # clock on this machine: compare models measured in the same run)
        "score_ms_per_query": round(1000 * timings["score_seconds"] / len(data.caption_ids), 4),
    }
    return Evaluation(metrics, similarity, data.caption_ids, data.video_ids, data.caption_video,
                      data.excluded_video_ids)


def save_similarity(path: str | Path, evaluation: Evaluation) -> Path:
    """``np.savez`` of the matrix, ids as unicode arrays and the ground truth: loads with
    ``np.load(path)`` (``allow_pickle=False``, the default)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        similarity=evaluation.similarity.astype(np.float32),
        text_ids=np.array(evaluation.text_ids, dtype=str),
        video_ids=np.array(evaluation.video_ids, dtype=str),
        text_video_index=evaluation.text_video_index,
        excluded_video_ids=np.array(evaluation.excluded_video_ids, dtype=str),
    )
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))  # exact name: savez would add .npz
    return path
