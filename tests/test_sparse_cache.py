"""Sparse teacher caches: top-k conversion, the dense reader's API, the neighbourhood sampler."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import known_fraction
from typer.testing import CliRunner

from teachclip.cli import app
from teachclip.core.config import (
    BackboneConfig,
    ComputeConfig,
    EvaluateConfig,
    StudentConfig,
    TeacherWeight,
    TrainStudentConfig,
)
from teachclip.stores.teacher_cache import TeacherCacheError, open_teacher_caches
from teachclip.stores.teacher_cache.dense import create_group, write_block
from teachclip.stores.teacher_cache.publish import mark_group_complete
from teachclip.stores.teacher_cache.schema import TeacherIdentity, plan_layout
from teachclip.stores.teacher_cache.sparse import SparseGroup, sparsify, top_k_of_rows
from teachclip.training.batches import (
    caption_per_video_batches,
    neighbourhood_batches,
    training_data,
    training_neighbours,
)

ROOT = Path(__file__).resolve().parents[1]


def write_group(store, name, similarity, text_ids, video_ids, text_video, frames_fingerprint="frames-x",
                relevance=None):
    identity = TeacherIdentity(
        kind="synthetic", config={}, checkpoint_sha256=None, score_version=1,
        has_frame_relevance=relevance is not None, similarity_definition="test", relevance_definition="",
        frames_fingerprint=frames_fingerprint, manifest_fingerprint="manifest-x")
    layout = plan_layout(len(text_ids), len(video_ids), 3 if relevance is None else relevance.shape[1],
                               block_texts=4, chunk_texts=4, block_videos=None, memory_budget_mb=64)
    create_group(store, name, identity, layout, text_ids, video_ids, np.asarray(text_video))
    for block in range(layout.n_blocks):
        start, stop = layout.block_rows(block)
        write_block(store / name, block, np.asarray(similarity[start:stop], dtype=np.float32),
                          None if relevance is None else relevance[start:stop])
    mark_group_complete(store / name)


def test_top_k_of_rows_by_hand():
    columns, scores = top_k_of_rows(np.array([[0.125, 0.875, 0.5, 0.875], [np.nan, 0.0, -1.0, 2.0]]), 2)
    np.testing.assert_array_equal(columns, [[1, 3], [3, 1]])  # a tie: the lower column first
    np.testing.assert_array_equal(scores, [[0.875, 0.875], [2.0, 0.0]])


# ---- conversion and reader --------------------------------------------------------------------------

TEXT_IDS = ["a0", "a1", "b0", "c0", "d0"]
VIDEO_IDS = ["A", "B", "C", "D"]
OWN = np.array([0, 0, 1, 2, 3])
SIM = np.array([[0.75, 0.5, 0.25, 0.0],
                [0.0, 0.5, 0.75, 0.25],   # a1: its own video A is not in its top 2
                [0.25, 1.0, 0.5, 0.0],
                [0.0, 0.25, 0.5, 0.75],
                [0.5, 0.0, 0.25, 1.0]])


@pytest.fixture
def sparse_group(tmp_path):
    relevance = np.arange(15, dtype=np.float32).reshape(5, 3)
    write_group(tmp_path / "dense.zarr", "t", SIM, TEXT_IDS, VIDEO_IDS, OWN, relevance=relevance)
    path = sparsify(tmp_path / "dense.zarr" / "t", tmp_path / "sparse.zarr", top_k=2, block_texts=2)
    return tmp_path, path, relevance


def test_the_sparse_group_has_the_dense_readers_api(sparse_group):
    tmp_path, path, relevance = sparse_group
    (group,) = open_teacher_caches(tmp_path / "sparse.zarr")
    (source,) = open_teacher_caches(tmp_path / "dense.zarr")
    assert isinstance(group, SparseGroup) and group.complete and group.top_k == 2
    assert group.text_ids == TEXT_IDS and group.video_ids == VIDEO_IDS
    np.testing.assert_array_equal(group.text_video, OWN)
    assert group.frames_fingerprint == source.frames_fingerprint and group.fingerprint != source.fingerprint
    np.testing.assert_array_equal(group.text_index(["c0", "a1"]), [3, 1])
    np.testing.assert_array_equal(group.frame_relevance([4, 0]), relevance[[4, 0]])
    rows, cols = np.array([0, 1, 2, 1]), np.array([3, 0, 1, 2])
    block, known = group.similarity_block(rows, cols), group.known_mask(rows, cols)
    # known: each row's top 2 and its own video; elsewhere the mean of the row outside its top 2
    expected_known = np.array([[False, True, True, False],
                               [False, True, True, True],
                               [False, False, True, True],
                               [False, True, True, True]])
    np.testing.assert_array_equal(known, expected_known)
    rest_mean = np.sort(SIM, axis=1)[:, :2].mean(axis=1)  # [0.125, 0.125, 0.125, 0.125, 0.125]
    expected = np.where(expected_known, SIM[np.ix_(rows, cols)], rest_mean[rows][:, None])
    np.testing.assert_array_equal(block, expected.astype(np.float32))
    assert block[1, 1] == 0.0 and block[0, 0] == 0.125  # a1's own video A: the stored pair; a0 vs D: the fill
    columns, scores = group.neighbours([1])
    np.testing.assert_array_equal(columns, [[2, 1]])
    np.testing.assert_array_equal(scores, [[0.75, 0.5]])


def test_cli_sparsify_and_refusals(sparse_group):
    tmp_path, _, _ = sparse_group
    result = CliRunner().invoke(app, ["cache", "sparsify", str(tmp_path / "dense.zarr" / "t"), "--out",
                                      str(tmp_path / "other.zarr"), "-S", "sparsify.top_k=3", "--name", "t3"])
    assert result.exit_code == 0, result.output
    assert open_teacher_caches(tmp_path / "other.zarr" / "t3")[0].top_k == 3
    (tmp_path / "not-a-store").mkdir()
    (tmp_path / "not-a-store" / "file").write_text("x")
    with pytest.raises(TeacherCacheError, match="not a teacher cache store"):
        sparsify(tmp_path / "dense.zarr" / "t", tmp_path / "not-a-store", top_k=2)


# ---- the neighbourhood sampler ----------------------------------------------------------------------


def clustered_similarity(videos=40, clusters=5, seed=0):
    """One caption per video; a caption scores the videos of its own cluster high."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, clusters, videos)
    similarity = (cluster[:, None] == cluster[None, :]) + 0.3 * rng.random((videos, videos))
    return similarity.astype(np.float32)


def test_neighbourhood_batches_cover_every_video_once_and_are_reproducible():
    neighbours, _ = top_k_of_rows(clustered_similarity(), 8)
    captions_of_video = [[v] for v in range(40)]
    batches = neighbourhood_batches(captions_of_video, neighbours.astype(np.int64), 8, seed=3, epoch=1)
    videos = np.concatenate([b.videos for b in batches])
    assert len(videos) == len(set(videos.tolist())) >= 39  # a last single-video batch may be dropped
    assert all(2 <= len(b.videos) <= 8 for b in batches)
    again = neighbourhood_batches(captions_of_video, neighbours.astype(np.int64), 8, seed=3, epoch=1)
    assert all((a.videos == b.videos).all() for a, b in zip(batches, again, strict=True))
    other = neighbourhood_batches(captions_of_video, neighbours.astype(np.int64), 8, seed=3, epoch=2)
    assert any((a.videos != b.videos).any() for a, b in zip(batches, other, strict=False))


def test_neighbourhood_batches_know_most_in_batch_scores(tmp_path):
    similarity = clustered_similarity()
    ids = [f"v{i:02d}" for i in range(40)]
    write_group(tmp_path / "dense.zarr", "t", similarity, ids, ids, np.arange(40))
    sparsify(tmp_path / "dense.zarr" / "t", tmp_path / "sparse.zarr", top_k=8)
    (group,) = open_teacher_caches(tmp_path / "sparse.zarr")
    rows = cols = np.arange(40)
    neighbours = training_neighbours(group, rows, cols)
    captions_of_video = [[v] for v in range(40)]
    grown = neighbourhood_batches(captions_of_video, neighbours, 8, seed=0, epoch=0)
    shuffled = caption_per_video_batches(captions_of_video, 8, seed=0, epoch=0)
    # a random batch of 8 knows ~ 1/8 (own) + 7/8 * 8/40 of its pairs; a grown one most of them
    assert known_fraction(group, rows, cols, grown) > 0.6
    assert known_fraction(group, rows, cols, shuffled) < 0.45
    (source,) = open_teacher_caches(tmp_path / "dense.zarr")
    with pytest.raises(TeacherCacheError, match="sparse"):
        training_neighbours(source, rows, cols)


def test_train_student_runs_on_a_sparse_cache_with_the_neighbourhood_sampler(tiny_data, tmp_path, monkeypatch):
    from teachclip.core.manifest import load_manifest
    from teachclip.stages import train_student as train_student_module
    from teachclip.stores import open_for_manifest

    tiny = tiny_data(videos=20, test_fraction=0.2)  # 16 train videos, 4 frames of 32 px (read-only)
    manifest_dir, frames = tiny.manifest, tiny.frames
    store = open_for_manifest(frames, load_manifest(manifest_dir))
    data = training_data(store, load_manifest(manifest_dir))
    text_ids, video_ids = sorted(data.caption_ids), sorted(data.video_ids)
    own = np.array([video_ids.index(data.video_ids[data.caption_video[data.caption_ids.index(c)]]) for c in text_ids])
    rng = np.random.default_rng(0)
    similarity = rng.random((len(text_ids), len(video_ids))).astype(np.float32)
    similarity[np.arange(len(text_ids)), own] += 1
    write_group(tmp_path / "dense.zarr", "t", similarity, text_ids, video_ids, own, frames_fingerprint=store.fingerprint)
    sparsify(tmp_path / "dense.zarr" / "t", tmp_path / "sparse.zarr", top_k=4)
    drawn = []
    original = train_student_module.batch_losses

    def recording(outputs, labels, *args):
        drawn.append(labels.similarities[0][1].shape)
        return original(outputs, labels, *args)

    monkeypatch.setattr(train_student_module, "batch_losses", recording)
    config = TrainStudentConfig(teachers=[TeacherWeight(name="t")], epochs=1, batch_size=4, sampler="neighbourhood",
                                weight_relational=1.0, weight_margin=1.0)
    row = train_student_module.train_student(
        frames, manifest_dir, [tmp_path / "sparse.zarr"], tmp_path / "student", config,
        StudentConfig(backbone=BackboneConfig(name="teachclip-micro", precision="fp32", freeze_text=True,
                                              freeze_visual=True), temporal_layers=1),
        EvaluateConfig(batch_videos=8), ComputeConfig(device="cpu"), progress=False)
    assert drawn and all(shape[0] == shape[1] <= 4 for shape in drawn)
    assert np.isfinite([row["coarse"], row["relational"], row["margin"], row["loss"]]).all()


def test_bench_sparse_prints_the_extrapolation():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "sparse.py"), "--captions", "1000",
                             "--videos", "200", "--top-k", "8", "--measure-captions", "64", "--measure-videos", "32"],
                            capture_output=True, text=True, check=True, timeout=120)
    document = json.loads(result.stdout)
    assert document["dense"]["disk_bytes"] == 2 * 1000 * 200
    assert document["sparse"]["disk_bytes"] == 1000 * (8 * 6 + 4)
    assert document["measured"]["sparse_disk_bytes"] > 0
