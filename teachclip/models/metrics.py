"""Retrieval metrics: R@1/5/10, median and mean rank, both directions, CLIP4Clip's multi-caption rules.

Input: a similarity matrix ``S`` [texts, videos] (higher = more similar) and, for every text, the
column of its ground-truth video. A rank is the 0-based position of the ground truth in the
descending sort of the query's scores; ``R@K`` = % of queries with rank < K, ``MdR`` = median(rank) + 1,
``MnR`` = mean(rank) + 1.

- **text-to-video**: one query per caption; rank of its own video among all videos (columns).
- **video-to-text** (CLIP4Clip's ``tensor_video_to_text_sim``): every video is represented, for a
  query video ``v``, by its *best-scoring caption* against ``v``: ``G[u, v] = max_{c of u} S[c, v]``.
  The rank of query ``v`` is the position of its own caption group among the video groups. With one
  caption per video this is the plain column ranking of ``S``. Videos without any caption are not
  queries (their group score is -inf, so they never outrank a real caption).

**Tie rule: pessimistic.** ``rank = #{j != gt : score_j >= score_gt}``: every other item with an
equal score counts as ranked *above* the ground truth. A model that outputs a constant matrix
(collapsed embeddings, a broken checkpoint) therefore gets the worst possible ranks instead of a
perfect R@1. CLIP4Clip differs on ties: its ``compute_metrics`` (single caption per video, both
directions, and its multi-caption video-to-text) keeps *one entry per tied position* (``np.where``
over the sorted row), so a ground truth tied with m - 1 others adds m entries, at positions r ..
r + m - 1, and R@K / MdR / MnR are taken over all entries; its multi-caption text-to-video path
(``tensor_text_to_video_metrics``) breaks ties by sort order. Without exact ties (float scores from
a trained model) both give the same ranks (tests/test_metrics.py pins the tie case and the agreement).

**Median.** ``MdR`` is numpy's median (the mean of the two middle ranks for an even count), as
CLIP4Clip's ``compute_metrics``; its multi-caption text-to-video path takes ``torch.median``, the
lower middle value, so there its MdR can be 0.5 lower. NaN scores are treated as -inf (as CLIP4Clip
does), so a NaN ground truth ties with other NaNs and loses.
"""

from __future__ import annotations

import numpy as np
import torch

ROW_BLOCK = 1024  # rows compared at once: bounds the [block, videos] boolean temporary


def ranks_of_ground_truth(scores: np.ndarray, gt_columns: np.ndarray) -> np.ndarray:
    """Pessimistic 0-based rank of ``scores[i, gt_columns[i]]`` within row i (ties count against)."""
    ranks = np.empty(scores.shape[0], dtype=np.int64)
    for start in range(0, scores.shape[0], ROW_BLOCK):
        block = scores[start : start + ROW_BLOCK]
        rows = np.arange(block.shape[0])
        gt = block[rows, gt_columns[start : start + ROW_BLOCK]]
        # >= counts the ground truth itself once (no NaNs left: they were mapped to -inf)
        ranks[start : start + ROW_BLOCK] = (block >= gt[:, None]).sum(axis=1) - 1
    return ranks


def summarize_ranks(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    if ranks.size == 0:
        raise ValueError(f"{prefix}: no queries to evaluate")
    return {
        f"{prefix}_R1": float(100.0 * np.mean(ranks < 1)),
        f"{prefix}_R5": float(100.0 * np.mean(ranks < 5)),
        f"{prefix}_R10": float(100.0 * np.mean(ranks < 10)),
        f"{prefix}_MdR": float(np.median(ranks) + 1),
        f"{prefix}_MnR": float(np.mean(ranks) + 1),
    }


def caption_group_scores(similarity: np.ndarray, text_video_index: np.ndarray) -> np.ndarray:
    """``G[u, v] = max over captions c of video u of S[c, v]`` ([videos, videos]; -inf for a video
    without captions)."""
    n_videos = similarity.shape[1]
    order = np.argsort(text_video_index, kind="stable")
    grouped = similarity[order]
    owners = text_video_index[order]
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    groups = np.full((n_videos, n_videos), -np.inf, dtype=similarity.dtype)
    groups[owners[starts]] = np.maximum.reduceat(grouped, starts, axis=0)
    return groups


def retrieval_metrics(similarity: np.ndarray | torch.Tensor, text_video_index) -> dict[str, float]:
    """``t2v_*`` and ``v2t_*`` R1, R5, R10 (percent), MdR, MnR for a [texts, videos] similarity.

    ``text_video_index[i]`` is the column of caption i's own video. See the module docstring for the
    multi-caption and tie rules.
    """
    if isinstance(similarity, torch.Tensor):
        similarity = similarity.detach().float().cpu().numpy()
    similarity = np.array(similarity, dtype=np.float32 if similarity.dtype != np.float64 else np.float64)
    text_video_index = np.asarray(text_video_index, dtype=np.int64)
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be 2-D [texts, videos], got shape {similarity.shape}")
    n_texts, n_videos = similarity.shape
    if text_video_index.shape != (n_texts,):
        raise ValueError(f"text_video_index must have shape ({n_texts},), got {text_video_index.shape}")
    if n_texts and (text_video_index.min() < 0 or text_video_index.max() >= n_videos):
        raise ValueError(f"text_video_index out of range for {n_videos} videos")
    similarity[np.isnan(similarity)] = -np.inf

    metrics = summarize_ranks(ranks_of_ground_truth(similarity, text_video_index), "t2v")
    # video-to-text: queries are the columns of G (videos that have at least one caption)
    queried = np.unique(text_video_index)
    groups_per_query = caption_group_scores(similarity, text_video_index).T[queried]
    metrics |= summarize_ranks(ranks_of_ground_truth(groups_per_query, queried), "v2t")
    return metrics
