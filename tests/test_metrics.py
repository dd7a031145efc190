"""Retrieval metrics on hand-made matrices: ranks worked out by hand in the comments."""

import numpy as np
import pytest
import torch

from teachclip.models.metrics import retrieval_metrics


def test_perfect_diagonal():
    metrics = retrieval_metrics(np.eye(4), np.arange(4))
    for direction in ("t2v", "v2t"):
        assert metrics[f"{direction}_R1"] == 100.0
        assert metrics[f"{direction}_MdR"] == 1.0
        assert metrics[f"{direction}_MnR"] == 1.0


def test_one_caption_per_video_by_hand():
    similarity = np.array([
        [0.9, 0.1, 0.5],  # gt 0: first               -> rank 0
        [0.8, 0.3, 0.2],  # gt 1: 0.8 above            -> rank 1
        [0.7, 0.6, 0.1],  # gt 2: 0.7, 0.6 above       -> rank 2
    ])
    metrics = retrieval_metrics(similarity, [0, 1, 2])
    assert metrics["t2v_R1"] == pytest.approx(100 / 3)
    assert metrics["t2v_R5"] == 100.0
    assert metrics["t2v_MdR"] == 2.0
    assert metrics["t2v_MnR"] == 2.0
    # video-to-text ranks down the columns: col 0 gt 0.9 -> 0; col 1 gt 0.3 (0.6 above) -> 1;
    # col 2 gt 0.1 (0.5, 0.2 above) -> 2
    assert metrics["v2t_R1"] == pytest.approx(100 / 3)
    assert metrics["v2t_MdR"] == 2.0
    assert metrics["v2t_MnR"] == 2.0


def test_r5_r10_cutoffs():
    # every row strictly decreasing, so a ground truth in column j has rank j
    similarity = np.tile(np.linspace(1.0, 0.0, 12), (12, 1))
    ranks = np.array([5] + list(range(1, 12)))
    metrics = retrieval_metrics(similarity, ranks)
    assert metrics["t2v_R1"] == 0.0
    assert metrics["t2v_R5"] == pytest.approx(100 * np.mean(ranks < 5))  # ranks 1..4
    assert metrics["t2v_R10"] == pytest.approx(100 * np.mean(ranks < 10))
    assert metrics["t2v_MdR"] == np.median(ranks) + 1
    assert metrics["t2v_MnR"] == pytest.approx(ranks.mean() + 1)


def test_ties_are_pessimistic():
    # a constant matrix (a collapsed model) must get the worst ranks, not a perfect score
    metrics = retrieval_metrics(np.zeros((4, 4)), np.arange(4))
    assert metrics["t2v_R1"] == 0.0 and metrics["v2t_R1"] == 0.0
    assert metrics["t2v_MdR"] == 4.0 and metrics["t2v_MnR"] == 4.0
    assert metrics["v2t_MdR"] == 4.0
    similarity = np.array([
        [0.5, 0.5, 0.2],  # gt 0 ties with video 1        -> rank 1
        [0.1, 0.4, 0.4],  # gt 1 ties with video 2        -> rank 1
        [0.0, 0.0, 0.9],  # gt 2 strictly first           -> rank 0
    ])
    metrics = retrieval_metrics(similarity, [0, 1, 2])
    assert metrics["t2v_R1"] == pytest.approx(100 / 3)
    assert metrics["t2v_MnR"] == pytest.approx(1 + 2 / 3)
    # columns: col 0 gt 0.5 alone on top -> 0; col 1 gt 0.4 below 0.5 -> 1; col 2 gt 0.9 -> 0
    assert metrics["v2t_R1"] == pytest.approx(200 / 3)


def test_multi_caption_clip4clip_rules():
    # 3 videos; captions 0,1 -> video 0, caption 2 -> video 1, captions 3,4 -> video 2
    similarity = np.array([
        [0.9, 0.2, 0.1],   # c0 gt v0 -> rank 0
        [0.3, 0.5, 0.4],   # c1 gt v0 -> rank 2
        [0.6, 0.7, 0.0],   # c2 gt v1 -> rank 0
        [0.1, 0.8, 0.6],   # c3 gt v2 -> rank 1
        [0.2, 0.75, 0.3],  # c4 gt v2 -> rank 1
    ])
    metrics = retrieval_metrics(similarity, [0, 0, 1, 2, 2])
    # t2v ranks [0, 2, 0, 1, 1]
    assert metrics["t2v_R1"] == pytest.approx(40.0)
    assert metrics["t2v_R5"] == 100.0
    assert metrics["t2v_MdR"] == 2.0
    assert metrics["t2v_MnR"] == pytest.approx(1.8)
    # v2t: each video is represented by its best caption against the query video:
    # G = [[0.9, 0.5, 0.4], [0.6, 0.7, 0.0], [0.2, 0.8, 0.6]] (rows: caption groups, cols: query videos)
    # v0: 0.9 on top -> 0; v1: 0.7 below 0.8 -> 1; v2: 0.6 on top -> 0.
    # (Ranking individual captions instead would give v1 rank 2: c3 0.8 and c4 0.75 are both above.)
    assert metrics["v2t_R1"] == pytest.approx(200 / 3)
    assert metrics["v2t_MdR"] == 1.0
    assert metrics["v2t_MnR"] == pytest.approx(1 + 1 / 3)


def test_caption_order_does_not_matter():
    rng = np.random.default_rng(0)
    similarity = rng.normal(size=(12, 5)).astype(np.float32)
    owners = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 2])
    permutation = rng.permutation(12)
    assert retrieval_metrics(similarity, owners) == retrieval_metrics(similarity[permutation], owners[permutation])


def test_video_without_captions_is_a_candidate_not_a_query():
    similarity = np.array([
        [0.9, 0.1, 0.95],  # c0 gt v0; the caption-less v2 scores higher -> rank 1
        [0.2, 0.8, 0.1],   # c1 gt v1 -> rank 0
    ])
    metrics = retrieval_metrics(similarity, [0, 1])
    assert metrics["t2v_R1"] == 50.0
    # v2t has 2 queries (v0, v1); v2 has no caption group (-inf), so it never outranks: both rank 0
    assert metrics["v2t_R1"] == 100.0


def test_nan_ranks_last():
    similarity = np.array([[np.nan, 0.1], [0.0, 0.3]])
    metrics = retrieval_metrics(similarity, [0, 1])
    assert metrics["t2v_R1"] == 50.0  # the NaN ground truth is -inf: rank 1


def test_matches_brute_force_definition_and_accepts_tensors():
    rng = np.random.default_rng(1)
    owners = rng.integers(0, 7, size=20)
    similarity = np.round(rng.normal(size=(20, 7)), 1)  # rounded: plenty of ties
    ranks = [sum(similarity[i, j] >= similarity[i, owners[i]] for j in range(7) if j != owners[i])
             for i in range(20)]
    videos = sorted(set(owners.tolist()))
    group = {u: similarity[owners == u].max(axis=0) if u in videos else np.full(7, -np.inf) for u in range(7)}
    v2t = [sum(group[u][v] >= group[v][v] for u in range(7) if u != v) for v in videos]
    metrics = retrieval_metrics(torch.tensor(similarity), torch.tensor(owners))
    assert metrics["t2v_R1"] == pytest.approx(100 * np.mean(np.array(ranks) < 1))
    assert metrics["t2v_MnR"] == pytest.approx(np.mean(ranks) + 1)
    assert metrics["t2v_MdR"] == pytest.approx(np.median(ranks) + 1)
    assert metrics["v2t_R5"] == pytest.approx(100 * np.mean(np.array(v2t) < 5))
    assert metrics["v2t_MnR"] == pytest.approx(np.mean(v2t) + 1)


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="shape"):
        retrieval_metrics(np.zeros((3, 3)), [0, 1])
    with pytest.raises(ValueError, match="out of range"):
        retrieval_metrics(np.zeros((2, 2)), [0, 2])


def clip4clip_compute_metrics(similarity: np.ndarray) -> dict:
    """CLIP4Clip's ``compute_metrics`` rule (metrics.py), written out: every position of the sorted row
    whose score equals the ground truth's is one entry (a tie adds entries), over all entries."""
    entries = []
    for i, row in enumerate(similarity):
        ordered = np.sort(-row)
        entries.extend(np.flatnonzero(ordered == -row[i]).tolist())
    entries = np.array(entries)
    return {"R1": 100.0 * np.mean(entries == 0), "MR": float(np.median(entries) + 1),
            "MeanR": float(np.mean(entries) + 1), "entries": len(entries)}


def test_ties_differ_from_clip4clip_compute_metrics_by_hand():
    """Our rule is pessimistic; CLIP4Clip adds one entry per tied position (not the first equal one)."""
    similarity = np.array([
        [1.0, 1.0, 0.0],  # gt ties with one other: ours rank 1; CLIP4Clip entries 0 and 1
        [0.0, 2.0, 2.0],  # the same: ours 1; CLIP4Clip 0 and 1
        [0.0, 0.0, 3.0],  # no tie: ours 0; CLIP4Clip 0
    ])
    ours = retrieval_metrics(similarity, [0, 1, 2])
    assert (ours["t2v_R1"], ours["t2v_MdR"], ours["t2v_MnR"]) == (pytest.approx(100 / 3), 2.0, pytest.approx(5 / 3))
    theirs = clip4clip_compute_metrics(similarity)
    assert theirs == {"R1": 60.0, "MR": 1.0, "MeanR": pytest.approx(1.4), "entries": 5}  # 5 entries for 3 queries
    # without ties the two agree
    rng = np.random.default_rng(0)
    untied = rng.normal(size=(20, 20))
    ours, theirs = retrieval_metrics(untied, np.arange(20)), clip4clip_compute_metrics(untied)
    assert (ours["t2v_R1"], ours["t2v_MdR"], ours["t2v_MnR"]) == pytest.approx((theirs["R1"], theirs["MR"], theirs["MeanR"]))


def test_median_rank_is_numpy_median_not_torch_lower_middle():
    """Four queries with ranks 0, 1, 2, 3: MdR = 2.5 here (the numpy median); CLIP4Clip's multi-caption
    text-to-video path takes torch.median, the lower middle value: 2."""
    similarity = np.array([
        [4.0, 3.0, 2.0, 1.0],  # gt 0 -> rank 0
        [4.0, 3.0, 2.0, 1.0],  # gt 1 -> rank 1
        [4.0, 3.0, 2.0, 1.0],  # gt 2 -> rank 2
        [4.0, 3.0, 2.0, 1.0],  # gt 3 -> rank 3
    ])
    assert retrieval_metrics(similarity, [0, 1, 2, 3])["t2v_MdR"] == 2.5
    assert float(torch.median(torch.tensor([0, 1, 2, 3]) + 1)) == 2.0
