"""Candidate-based extraction (extract.candidates): a sparse group written directly, no dense matrix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import sha256_tree

from teachclip.core.config import (
    BackboneConfig,
    CandidatesConfig,
    ComputeConfig,
    ExtractConfig,
    TeacherConfig,
)
from teachclip.stages import extract_teachers as stage
from teachclip.stages.extract_teachers import candidates as proposing
from teachclip.stages.extract_teachers.candidates import plan_candidates, random_columns, top_k_columns
from teachclip.stores.teacher_cache import SparseGroup, TeacherCacheError, open_teacher_caches
from teachclip.stores.teacher_cache.remote import pull, push
from teachclip.stores.teacher_cache.schema import plan_sparse_layout
from teachclip.stores.teacher_cache.verify import cache_info, verify_store
from teachclip.stores.zarr_io import partial_path

SYNC = ComputeConfig(scheduler="sync")
K, RANDOM = 3, 2


@pytest.fixture(scope="module")
def inputs(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """9 train videos x 3 captions (tests/conftest.py, shared read-only) and a saved micro X-Pool
    teacher, whose towers also serve as the "clip" retriever's pretrained backbone."""
    from teachclip.models.factory import create_teacher, save_teacher

    data = tiny_data(captions_per_video=3, videos_per_shard=4)
    root = tmp_path_factory.mktemp("candidate-teachers")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        teacher = create_teacher(TeacherConfig(kind="xpool", backbone=BackboneConfig(name="teachclip-micro")))
    xpool = save_teacher(teacher, root / "xpool")
    backbone = BackboneConfig(name="teachclip-micro", pretrained=str(xpool / "model.safetensors"), precision="fp32")
    return {"demo": data.manifest, "frames": data.frames, "xpool": xpool, "backbone": backbone}


def config(**candidates) -> ExtractConfig:
    return ExtractConfig(block_texts=8, encode_batch=4,
                         candidates=CandidatesConfig(**({"k": K, "random": RANDOM} | candidates)))


def run(inputs, out: Path, extract: ExtractConfig | None = None, **kwargs) -> stage.ExtractReport:
    requests = stage.resolve_teachers([f"xpool={inputs['xpool']}"], {})
    return stage.extract_teachers(inputs["frames"], inputs["demo"], out, requests, extract or config(), SYNC,
                                  progress=False, **({"retriever_backbone": inputs["backbone"]} | kwargs))


@pytest.fixture(scope="module")
def extracted(inputs, tmp_path_factory) -> tuple[Path, stage.ExtractReport, Path]:
    root = tmp_path_factory.mktemp("candidates")
    report = run(inputs, root / "cand.zarr")
    requests = stage.resolve_teachers([f"xpool={inputs['xpool']}"], {})
    stage.extract_teachers(inputs["frames"], inputs["demo"], root / "dense.zarr", requests,
                           ExtractConfig(block_texts=8, chunk_texts=4, encode_batch=4), SYNC, progress=False)
    return root / "cand.zarr", report, root / "dense.zarr"


def retriever_vectors(inputs, group):
    """The clip retriever's caption and video vectors, computed here without the extraction code."""
    from teachclip.core.config import StudentConfig
    from teachclip.core.manifest import load_manifest
    from teachclip.models.student import Student
    from teachclip.stores.frames import FramesStore

    student = Student(StudentConfig(backbone=inputs["backbone"].model_copy(update={"freeze_visual": True,
                                                                                    "freeze_text": True}),
                                    head="meanP", afa=False)).eval()
    captions = {c.caption_id: c.text for c in load_manifest(inputs["demo"]).captions}
    store = FramesStore.open(inputs["frames"])
    frames, mask = store.read(store.index(group.video_ids))
    with torch.no_grad():
        texts = student.encode_text(student.tokenize([captions[c] for c in group.text_ids]))
        videos = student.encode_video(torch.from_numpy(frames), torch.from_numpy(mask))
    return texts, videos


def test_a_candidate_group_holds_the_teachers_scores_of_the_candidates_only(inputs, extracted):
    out, report, dense_out = extracted
    group = open_teacher_caches(out)[0]
    dense = open_teacher_caches(dense_out)[0]
    assert isinstance(group, SparseGroup) and group.complete
    n_texts, n_videos = group.layout.n_texts, group.layout.n_videos
    assert (n_texts, n_videos) == (27, 9) and group.top_k == K + RANDOM
    meta = group.candidates
    assert (meta.k, meta.random, meta.seed, meta.retriever.kind) == (K, RANDOM, 0, "clip")
    assert meta.teacher_evaluations == n_texts * (K + RANDOM + 1) == 162  # of 243 for the dense group
    assert report.teachers[0].pairs_computed == meta.teacher_evaluations
    assert "teacher evaluations" in report.summary()
    rows = np.arange(n_texts)
    columns, scores = group.neighbours(rows)
    # the teacher's scores of exactly these pairs (float16 storage; one caption per score call)
    np.testing.assert_allclose(scores, dense.similarity_block(rows, np.arange(n_videos))[rows[:, None], columns],
                               atol=2e-3)
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    assert not (columns == group.text_video[:, None]).any()
    own = group.similarity_block(rows, group.text_video)[rows, rows]
    np.testing.assert_allclose(own, dense.similarity_block(rows, group.text_video)[rows, rows], atol=2e-3)
    np.testing.assert_allclose(group.frame_relevance(rows), dense.frame_relevance(rows), atol=1e-4)
    # the retriever's k best videos (own video excluded) are among each row's columns
    texts, videos = retriever_vectors(inputs, group)
    similarity = (texts @ videos.T).numpy()
    similarity[rows, group.text_video] = -np.inf
    retrieved = np.argsort(-similarity, axis=1, kind="stable")[:, :K]
    assert all(set(retrieved[r]) <= set(columns[r]) for r in rows)
    # the fill value: the mean teacher score of the row's random columns (those not retrieved)
    known = group.known_mask(rows, np.arange(n_videos))
    assert known.sum(axis=1).tolist() == [K + RANDOM + 1] * n_texts
    for r in rows[:5]:
        random = [c for c in columns[r] if c not in retrieved[r]]
        assert len(random) == RANDOM
        expected = dense.similarity_block([r], random).mean()
        assert group.similarity_block([r], [np.flatnonzero(~known[r])[0]])[0, 0] == pytest.approx(expected, abs=2e-3)


def test_verify_and_info_accept_it_and_refuse_damage(inputs, extracted, tmp_path):
    out = extracted[0]
    assert all(check.ok for check in verify_store(out))
    group_info = cache_info(out)["groups"][0]
    assert group_info["candidates"]["evaluation_fraction"] == pytest.approx(162 / 243)
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(out, damaged)
    meta_file = damaged / "xpool" / "zarr.json"
    document = json.loads(meta_file.read_text())
    document["attributes"]["sparse"]["candidates"]["k"] = K + 1  # claims other inputs than it was made from
    meta_file.write_text(json.dumps(document))
    problems = [p for check in verify_store(damaged) for p in check.problems]
    assert any("not the sparse fingerprint" in p for p in problems)
    shutil.rmtree(damaged)
    shutil.copytree(out, damaged)
    chunk = next(p for p in (damaged / "xpool" / "neighbour_scores").rglob("*") if p.is_file() and p.name != "zarr.json")
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    assert not all(check.ok for check in verify_store(damaged))


def test_push_pull_round_trip(extracted, tmp_path):
    out = extracted[0]
    assert [status for *_, status in push(out, str(tmp_path / "remote"))] == ["pushed"]
    pull(str(tmp_path / "remote"), tmp_path / "pulled.zarr")
    assert sha256_tree(tmp_path / "pulled.zarr") == sha256_tree(out)
    assert isinstance(open_teacher_caches(tmp_path / "pulled.zarr")[0], SparseGroup)


def test_an_interrupted_run_resumes_without_redoing_blocks_and_gives_the_same_bytes(inputs, extracted, tmp_path,
                                                                                  monkeypatch):
    out = tmp_path / "cand.zarr"
    original, calls = stage.score_block, []

    def crashing(unit, runtime):
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        calls.append(unit.index)
        return original(unit, runtime)

    monkeypatch.setattr(stage, "score_block", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(inputs, out)
    assert not out.exists() and partial_path(out).exists()
    monkeypatch.setattr(stage, "score_block", original)

    def no_retriever(*args, **kwargs):
        raise AssertionError("every block's candidates were proposed already: the retriever must not run again")

    monkeypatch.setattr(proposing, "build_retriever", no_retriever)
    report = run(inputs, out)
    assert report.teachers[0].status == "resumed"
    assert report.teachers[0].blocks_computed == report.teachers[0].blocks_total - 2 == 2
    assert sha256_tree(out / "xpool") == sha256_tree(extracted[0] / "xpool")
    assert not partial_path(out).exists()


def test_the_fingerprint_covers_retriever_k_random_and_seed(inputs, extracted, tmp_path):
    layout = plan_sparse_layout(27, 9, 4, 8)
    identity = open_teacher_caches(extracted[2])[0]
    from teachclip.stores.teacher_cache.schema import identity_from_attributes

    teacher = identity_from_attributes(identity.attrs)

    def fp(backbone=inputs["backbone"], **options):
        return stage.group_fingerprint(teacher, plan_candidates(config(**options).candidates, backbone, layout,
                                                                tmp_path))

    base = fp()
    assert base == open_teacher_caches(extracted[0])[0].fingerprint
    other_backbone = inputs["backbone"].model_copy(update={"max_words": 16})
    variants = [fp(k=K + 1), fp(random=RANDOM + 1), fp(seed=1), fp(backbone=other_backbone)]
    assert len({base, *variants}) == 5
    assert base != teacher.fingerprint  # not the dense group's identity
    # a cache of other candidates is refused like any other fingerprint mismatch
    with pytest.raises(stage.ExtractError, match="--overwrite"):
        run(inputs, shutil.copytree(extracted[0], tmp_path / "cand.zarr"), config(k=K + 1))


def test_a_student_directory_can_be_the_retriever_and_bad_ones_are_refused(inputs, tmp_path):
    from teachclip.core.config import StudentConfig
    from teachclip.models.io import save_model
    from teachclip.models.student import Student

    student = Student(StudentConfig(backbone=inputs["backbone"].model_copy(update={"freeze_visual": True}), afa=False))
    save_model(tmp_path / "student", student, "student", student.config)
    report = run(inputs, tmp_path / "cand.zarr", config(retriever=str(tmp_path / "student")))
    group = open_teacher_caches(tmp_path / "cand.zarr")[0]
    assert group.candidates.retriever.kind == "student" and report.teachers[0].status == "computed"
    with pytest.raises(stage.ExtractError, match="neither 'clip' nor a trained student"):
        run(inputs, tmp_path / "other.zarr", config(retriever=str(tmp_path / "absent")))
    with pytest.raises(stage.ExtractError, match="not a student"):
        run(inputs, tmp_path / "other.zarr", config(retriever=str(inputs["xpool"])))
    with pytest.raises(stage.ExtractError, match="no pretrained weights"):
        run(inputs, tmp_path / "other.zarr", retriever_backbone=None)


class RecordingVideos:
    """A video-vector matrix that records the rows each matrix product reads."""

    def __init__(self, vectors: torch.Tensor):
        self.vectors, self.shape, self.reads = vectors, vectors.shape, []

    def __getitem__(self, rows: slice) -> torch.Tensor:
        part = self.vectors[rows]
        self.reads.append(part.shape[0])
        return part


def test_the_retriever_never_forms_a_captions_x_videos_matrix():
    generator = torch.Generator().manual_seed(0)
    texts = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=1)
    vectors = torch.nn.functional.normalize(torch.randn(50, 8, generator=generator), dim=1)
    own = torch.arange(6)
    videos = RecordingVideos(vectors)
    blocked = top_k_columns(texts, videos, own, 4, block_videos=7)
    assert max(videos.reads) == 7 and sum(videos.reads) == 50  # [6, 7] products only, every video once
    brute = (texts @ vectors.T).masked_fill(torch.nn.functional.one_hot(own, 50).bool(), float("-inf"))
    np.testing.assert_array_equal(blocked, brute.topk(4, dim=1).indices.numpy())


def test_random_columns_are_distinct_and_avoid_the_retrieved_and_own_videos():
    retrieved = np.array([[1, 2], [0, 3]])
    drawn = random_columns(retrieved, np.array([0, 1]), 6, 3, np.random.default_rng([0, 0]))
    assert drawn.shape == (2, 3)
    for row, own in enumerate([0, 1]):
        assert len(set(drawn[row])) == 3 and not set(drawn[row]) & {*retrieved[row], own}
    again = random_columns(retrieved, np.array([0, 1]), 6, 3, np.random.default_rng([0, 0]))
    np.testing.assert_array_equal(drawn, again)  # the same seed and block: the same draws on resume


def test_a_group_with_an_unknown_fill_rule_is_refused(extracted, tmp_path):
    damaged = shutil.copytree(extracted[0], tmp_path / "fill.zarr")
    meta_file = damaged / "xpool" / "zarr.json"
    document = json.loads(meta_file.read_text())
    document["attributes"]["sparse"]["fill"] = "rest_mean"
    meta_file.write_text(json.dumps(document))
    with pytest.raises(TeacherCacheError, match="fill rule"):
        open_teacher_caches(damaged)


def test_a_student_trains_on_the_candidate_cache_with_the_candidates_sampler(inputs, extracted, tmp_path, monkeypatch):
    from teachclip.core.config import EvaluateConfig, StudentConfig, TeacherWeight, TrainStudentConfig
    from teachclip.stages import train_student as module

    masks = []
    original = module.gather_soft_labels

    def recording(*args, **kwargs):
        labels = original(*args, **kwargs)
        masks.extend(labels.known)
        return labels

    monkeypatch.setattr(module, "gather_soft_labels", recording)
    config = TrainStudentConfig(teachers=[TeacherWeight(name="xpool")], epochs=1, batch_size=4, sampler="candidates",
                                hard_fraction=0.5, weight_fine=0.0)
    row = module.train_student(
        inputs["frames"], inputs["demo"], [extracted[0]], tmp_path / "student", config,
        StudentConfig(backbone=BackboneConfig(name="teachclip-micro", precision="fp32", freeze_text=True,
                                              freeze_visual=True), afa=False),
        EvaluateConfig(batch_videos=8), ComputeConfig(device="cpu"), progress=False)
    assert np.isfinite([row["coarse"], row["loss"]]).all()
    # every batch's coarse term saw the cache's known pairs: the diagonal always, not everything
    assert masks and all(m is not None and m.diagonal().all() for m in masks)
    assert not all(m.all() for m in masks)
