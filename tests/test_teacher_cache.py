"""The teacher cache: values, identity, resume, parallel determinism, refusals, the reader."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import sha256_tree

from teachclip.core.config import (
    BackboneConfig,
    ComputeConfig,
    DecodeConfig,
    ExtractConfig,
    TeacherConfig,
)
from teachclip.core.fingerprint import sha256_file
from teachclip.core.manifest import load_manifest
from teachclip.stages import extract_teachers as stage
from teachclip.stages.decode import decode
from teachclip.stages.extract_teachers.worker import WORKSPACE_FACTOR, sub_block
from teachclip.stores.frames import FramesStore, StoreMismatchError
from teachclip.stores.teacher_cache import TeacherCacheError, open_teacher_caches
from teachclip.stores.teacher_cache.publish import done_of
from teachclip.stores.teacher_cache.schema import plan_layout, teacher_cache_fingerprint
from teachclip.stores.teacher_cache.verify import verify_store
from teachclip.stores.zarr_io import PROGRESS_DIR, partial_path

SYNC = ComputeConfig(scheduler="sync")
SMALL = ExtractConfig(block_texts=8, chunk_texts=4, encode_batch=4)


@pytest.fixture(scope="module")
def inputs(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """A tiny demo dataset (12 videos: 9 train x 3 captions; 4 frames of 32 px, 4 videos per shard;
    shared read-only, tests/conftest.py) and three saved micro teachers of this module."""
    from teachclip.models.factory import create_teacher, save_teacher

    data = tiny_data(captions_per_video=3, videos_per_shard=4)
    root = tmp_path_factory.mktemp("teachers")
    paths = {"demo": data.manifest, "frames": data.frames}
    for seed, kind in ((1, "xpool"), (2, "frame_clip"), (3, "xpool")):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            teacher = create_teacher(TeacherConfig(kind=kind, backbone=BackboneConfig(name="teachclip-micro")))
        paths[f"{kind}_{seed}"] = save_teacher(teacher, root / f"{kind}_{seed}")
    return paths


@pytest.fixture(scope="module")
def extracted(inputs, tmp_path_factory) -> tuple[Path, stage.ExtractReport]:
    out = tmp_path_factory.mktemp("extracted") / "teachers.zarr"
    requests = stage.resolve_teachers([f"xpool={inputs['xpool_1']}", f"fclip={inputs['frame_clip_2']}"], {})
    report = stage.extract_teachers(inputs["frames"], inputs["demo"], out, requests, SMALL, SYNC, progress=False)
    return out, report


def run(inputs, out: Path, teachers: list[str], config: ExtractConfig = SMALL, compute: ComputeConfig = SYNC,
        **kwargs) -> stage.ExtractReport:
    requests = stage.resolve_teachers(teachers, {})
    return stage.extract_teachers(inputs["frames"], inputs["demo"], out, requests, config, compute,
                                  progress=False, **kwargs)


# ---- values ---------------------------------------------------------------------------------------


def direct_scores(inputs, checkpoint: Path, caption_ids: list[str], video_ids: list[str]):
    """The teacher's own per-pair definitions, with no cache code involved."""
    from teachclip.models.factory import load_teacher

    teacher = load_teacher(checkpoint)
    manifest = load_manifest(inputs["demo"])
    teacher.bind_manifest(manifest)
    captions = {c.caption_id: c for c in manifest.captions}
    frames_store = FramesStore.open(inputs["frames"])

    def videos(ids):
        frames, mask = frames_store.read(frames_store.index(ids))
        return {"frames": torch.from_numpy(frames), "mask": torch.from_numpy(mask), "video_ids": list(ids)}

    chosen = [captions[c] for c in caption_ids]
    texts = teacher.text_batch([c.text for c in chosen], caption_ids, [c.video_id for c in chosen])
    with torch.inference_mode():
        similarity = teacher.similarity(texts, videos(video_ids)).float().numpy()
        relevance = teacher.frame_relevance(texts, videos([c.video_id for c in chosen])).float().numpy()
    return similarity, relevance


def test_cached_scores_equal_the_teachers_direct_computation(inputs, extracted):
    out, report = extracted
    assert [t.status for t in report.teachers] == ["computed", "computed"]
    groups = {g.name: g for g in open_teacher_caches(out)}
    assert sorted(groups) == ["fclip", "xpool"]
    for name, checkpoint in (("xpool", inputs["xpool_1"]), ("fclip", inputs["frame_clip_2"])):
        group = groups[name]
        similarity, relevance = direct_scores(inputs, checkpoint, group.text_ids, group.video_ids)
        cached = group.similarity_block(np.arange(len(group.text_ids)), np.arange(len(group.video_ids)))
        np.testing.assert_allclose(cached, similarity, rtol=2e-3, atol=2e-3)  # fp16 storage
        np.testing.assert_allclose(group.frame_relevance(np.arange(len(group.text_ids))), relevance,
                                   rtol=1e-4, atol=1e-5)
        assert np.abs(similarity).max() > 0.01  # a real signal, not zeros


def test_rows_and_columns_are_the_canonical_train_set(inputs, extracted):
    out, _ = extracted
    manifest = load_manifest(inputs["demo"])
    train_videos = sorted(v.video_id for v in manifest.videos_in("train"))
    train_captions = sorted(manifest.captions_in("train"), key=lambda c: c.caption_id)
    for group in open_teacher_caches(out):
        assert group.video_ids == train_videos
        assert group.text_ids == [c.caption_id for c in train_captions]
        own = [group.video_ids[i] for i in group.text_video]
        assert own == [c.video_id for c in train_captions]
        assert group.complete and group.has_frame_relevance and group.frames_per_video == 4


def test_attributes_record_identity_and_fingerprint(inputs, extracted):
    out, _ = extracted
    frames = FramesStore.open(inputs["frames"])
    group = open_teacher_caches(out / "xpool")[0]
    attrs = group.attrs
    assert attrs["kind"] == "xpool"
    assert attrs["checkpoint_sha256"] == sha256_file(inputs["xpool_1"] / "model.safetensors")
    assert group.frames_fingerprint == frames.fingerprint
    assert group.manifest_fingerprint == frames.manifest_fingerprint
    expected = teacher_cache_fingerprint(frames.fingerprint, "xpool", attrs["config"],
                                               attrs["checkpoint_sha256"], attrs["score_version"])
    assert group.fingerprint == expected
    assert attrs["config"]["checkpoint"] is None  # a path is not identity; its hash is
    assert set(attrs["versions"]) >= {"torch", "open_clip", "zarr", "teachclip"}
    assert attrs["similarity_definition"] and attrs["relevance_definition"]
    assert not [key for key in _keys(attrs) if any(word in key for word in ("time", "date", "host", "user"))]
    assert json.loads((out / "xpool" / "zarr.json").read_text())["attributes"] == attrs


def _keys(tree) -> list[str]:
    if isinstance(tree, dict):
        return [k.lower() for k in tree] + [k for v in tree.values() for k in _keys(v)]
    return []


def test_every_array_carries_crc32c(extracted):
    out, _ = extracted
    for meta in (out / "xpool").glob("*/zarr.json"):
        assert '"crc32c"' in meta.read_text(), meta


def test_finished_cache_rerun_is_a_no_op(inputs, extracted):
    out, _ = extracted
    before = sha256_tree(out)
    report = run(inputs, out, [f"xpool={inputs['xpool_1']}", f"fclip={inputs['frame_clip_2']}"])
    assert [t.status for t in report.teachers] == ["cached", "cached"]
    assert sum(t.blocks_computed for t in report.teachers) == 0
    assert sha256_tree(out) == before and not partial_path(out).exists()


def test_mismatched_fingerprint_is_refused_naming_both(inputs, extracted, tmp_path):
    out = tmp_path / "teachers.zarr"
    shutil.copytree(extracted[0], out)
    old = open_teacher_caches(out / "xpool")[0].fingerprint
    with pytest.raises(stage.ExtractError) as error:
        run(inputs, out, [f"xpool={inputs['xpool_3']}"])  # same name, other weights
    new = stage.identity_of(stage.resolve_teachers([f"xpool={inputs['xpool_3']}"], {})[0],
                            FramesStore.open(inputs["frames"]).fingerprint, "").fingerprint
    assert old in str(error.value) and new in str(error.value) and new != old
    report = run(inputs, out, [f"xpool={inputs['xpool_3']}"], overwrite=True)
    assert report.teachers[0].status == "computed"
    assert open_teacher_caches(out / "xpool")[0].fingerprint == new
    assert open_teacher_caches(out / "fclip")[0].complete  # the other group is untouched


def test_adding_a_teacher_keeps_the_others_and_matches_a_single_run(inputs, extracted, tmp_path, monkeypatch):
    out = tmp_path / "teachers.zarr"
    run(inputs, out, [f"xpool={inputs['xpool_1']}"])
    xpool_files = {p: p.stat().st_mtime_ns for p in (out / "xpool").rglob("*") if p.is_file()}
    scored = []
    original = stage.score_block

    def recording(unit, runtime):
        scored.append(unit.group.name)
        return original(unit, runtime)

    monkeypatch.setattr(stage, "score_block", recording)
    report = run(inputs, out, [f"xpool={inputs['xpool_1']}", f"fclip={inputs['frame_clip_2']}"])
    assert [t.status for t in report.teachers] == ["cached", "computed"]
    assert set(scored) == {"fclip"}
    assert {p: p.stat().st_mtime_ns for p in (out / "xpool").rglob("*") if p.is_file()} == xpool_files
    assert sha256_tree(out) == sha256_tree(extracted[0])  # same bytes as both teachers in one run


def test_videos_that_failed_to_decode_are_left_out_with_their_captions(inputs, tmp_path):
    demo = tmp_path / "demo"
    shutil.copytree(inputs["demo"], demo)
    manifest = load_manifest(demo)
    broken = sorted(v.video_id for v in manifest.videos_in("train"))[1]
    manifest.video(broken).path.write_bytes(b"not a video")
    frames = tmp_path / "frames.zarr"
    decode(demo, frames, DecodeConfig(frames_per_video=4, size=32, videos_per_shard=4, max_failure_fraction=0.5),
           SYNC, progress=False)
    requests = stage.resolve_teachers([f"fclip={inputs['frame_clip_2']}"], {})
    stage.extract_teachers(frames, demo, tmp_path / "teachers.zarr", requests, SMALL, SYNC, progress=False)
    group = open_teacher_caches(tmp_path / "teachers.zarr")[0]
    assert broken not in group.video_ids and len(group.video_ids) == len(manifest.videos_in("train")) - 1
    assert not [c for c in manifest.captions if c.video_id == broken and c.caption_id in group.text_ids]
    assert len(group.text_ids) == len([c for c in manifest.captions_in("train") if c.video_id != broken])


def test_an_output_path_that_is_not_a_teacher_cache_is_refused(inputs, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(TeacherCacheError, match="not a teacher cache store"):
        run(inputs, tmp_path / "precious", [f"fclip={inputs['frame_clip_2']}"])


def test_a_manifest_other_than_the_decoded_one_is_refused(inputs, tmp_path):
    demo = tmp_path / "demo"
    shutil.copytree(inputs["demo"], demo)
    captions = demo / "captions.csv"
    captions.write_text(captions.read_text().replace(",a ", ",one ", 1))
    requests = stage.resolve_teachers([f"fclip={inputs['frame_clip_2']}"], {})
    with pytest.raises(StoreMismatchError, match="decoded from another manifest"):
        stage.extract_teachers(inputs["frames"], demo, tmp_path / "t.zarr", requests, SMALL, SYNC, progress=False)


def test_missing_weights_and_unknown_teachers_are_refused():
    with pytest.raises(stage.ExtractError, match="no weights"):
        stage.resolve_teachers(["xpool"], {})
    with pytest.raises(stage.ExtractError, match="unknown teacher"):
        stage.resolve_teachers(["nosuch"], {})
    with pytest.raises(TeacherCacheError, match="teacher name"):
        stage.resolve_teachers(["../evil"], {})


def test_checkpoint_directory_of_another_kind_is_refused(inputs):
    configured = {"mine": TeacherConfig(kind="xclip", backbone=BackboneConfig(name="teachclip-micro"))}
    with pytest.raises(stage.ExtractError, match="holds a 'xpool' teacher"):
        stage.resolve_teachers([f"mine={inputs['xpool_1']}"], configured)


def test_layout_adapts_block_size_to_the_memory_budget():
    roomy = plan_layout(100_000, 9_000, 12, block_texts=2048, chunk_texts=32, block_videos=None,
                              memory_budget_mb=1024)
    tight = plan_layout(100_000, 9_000, 12, block_texts=2048, chunk_texts=32, block_videos=None,
                              memory_budget_mb=64)
    assert roomy.block_texts == 2048
    assert tight.block_texts < 2048 and tight.block_texts % 32 == 0
    assert tight.block_texts * 9_012 * 4 <= 32 << 20
    tiny = plan_layout(10, 5, 4, block_texts=2048, chunk_texts=32, block_videos=None, memory_budget_mb=64)
    assert (tiny.block_texts, tiny.chunk_texts, tiny.n_blocks) == (10, 10, 1)


def test_sub_blocks_bound_the_scoring_workspace():
    texts = {"sentence": torch.zeros(500, 512)}
    videos = {"frames": torch.zeros(9000, 12, 512)}
    step_texts, step_videos = sub_block(texts, videos, 500, 9000, memory_budget_mb=256)
    pair_bytes = WORKSPACE_FACTOR * 4 * (512 + 12 * 512)
    assert step_texts * step_videos * pair_bytes <= 128 << 20
    assert step_texts >= 1 and step_videos >= 1


# ---- the reader -----------------------------------------------------------------------------------


def test_reader_serves_random_batches_alike_from_memory_and_disk(extracted):
    out, _ = extracted
    in_memory = open_teacher_caches(out / "xpool", in_memory=True)[0]
    on_disk = open_teacher_caches(out / "xpool", in_memory=False)[0]
    assert in_memory.in_memory and not on_disk.in_memory
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(in_memory.text_ids), 7)
    cols = rng.integers(0, len(in_memory.video_ids), 5)
    block = in_memory.similarity_block(rows, cols)
    assert block.dtype == np.float32 and block.shape == (7, 5)
    np.testing.assert_array_equal(block, on_disk.similarity_block(rows, cols))
    np.testing.assert_array_equal(in_memory.frame_relevance(rows), on_disk.frame_relevance(rows))
    full = on_disk.similarity_block(np.arange(len(on_disk.text_ids)), np.arange(len(on_disk.video_ids)))
    np.testing.assert_array_equal(block, full[np.ix_(rows, cols)])


def test_reader_maps_ids_and_names_what_is_wrong(extracted, tmp_path):
    out, _ = extracted
    group = open_teacher_caches(out / "fclip")[0]
    assert list(group.text_index(group.text_ids[3:5])) == [3, 4]
    assert list(group.video_index(group.video_ids[::-1])) == list(range(len(group.video_ids)))[::-1]
    with pytest.raises(TeacherCacheError, match="not in the cache"):
        group.video_index(["no-such-video"])
    with pytest.raises(TeacherCacheError, match="computed from frames"):
        group.require_frames("0" * 64)
    with pytest.raises(TeacherCacheError, match="not found"):
        open_teacher_caches(tmp_path / "absent.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherCacheError, match="no teacher groups"):
        open_teacher_caches(tmp_path / "empty")


# ---- parallel, resume ----------------------------------------------------------------------------


def test_an_interrupted_run_resumes_with_the_missing_blocks_only(inputs, extracted, tmp_path, monkeypatch):
    out = tmp_path / "teachers.zarr"
    original, calls = stage.score_block, []

    def crashing(unit, runtime):
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        calls.append(unit.index)
        return original(unit, runtime)

    monkeypatch.setattr(stage, "score_block", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(inputs, out, [f"xpool={inputs['xpool_1']}"])
    assert not out.exists() and partial_path(out).exists()
    monkeypatch.setattr(stage, "score_block", original)
    report = run(inputs, out, [f"xpool={inputs['xpool_1']}"])
    assert report.teachers[0].status == "resumed"
    assert report.teachers[0].blocks_computed == report.teachers[0].blocks_total - 2 == 2
    assert sha256_tree(out / "xpool") == sha256_tree(extracted[0] / "xpool")
    assert not partial_path(out).exists()


@pytest.mark.slow  # two LocalClusters whose workers import torch and open_clip: ~40 s on 2 busy cores
def test_one_and_two_dask_workers_write_identical_stores(inputs, tmp_path):
    teachers = [f"xpool={inputs['xpool_1']}"]
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    run(inputs, one, teachers, compute=ComputeConfig(scheduler="local", workers=1))
    report = run(inputs, two, teachers, compute=ComputeConfig(scheduler="local", workers=2))
    assert report.teachers[0].blocks_computed == report.teachers[0].blocks_total == 4
    assert sha256_tree(one) == sha256_tree(two)
    assert all(check.ok for check in verify_store(two))


def _cli(inputs, out: Path, params: Path) -> list[str]:
    return [sys.executable, "-m", "teachclip.cli", "--params", str(params), "extract-teachers",
            "--frames", str(inputs["frames"]), "--manifest", str(inputs["demo"]), "--out", str(out),
            "--teacher", f"xpool={inputs['xpool_1']}", "--no-progress"]


@pytest.mark.slow  # three CLI processes, each importing torch and open_clip
def test_kill_9_then_resume_gives_the_bytes_of_an_uninterrupted_run(inputs, tmp_path):
    params = tmp_path / "params.yaml"  # one caption per block: 27 blocks, room to be killed in
    params.write_text("extract:\n  block_texts: 1\n  chunk_texts: 1\ncompute:\n  scheduler: sync\n")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    whole = tmp_path / "whole.zarr"
    subprocess.run(_cli(inputs, whole, params), check=True, env=env, capture_output=True)

    out = tmp_path / "killed.zarr"
    progress = partial_path(out) / PROGRESS_DIR
    process = subprocess.Popen(_cli(inputs, out, params), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (progress.is_dir() and any(p.name.startswith("xpool.block.") for p in progress.iterdir())):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before any block was done"
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists() and partial_path(out).exists()
    done_before = len(done_of({p.name for p in progress.iterdir()}, "xpool", "block"))
    assert 0 < done_before < 27

    rerun = subprocess.run(_cli(inputs, out, params), check=True, env=env, capture_output=True, text=True)
    assert "xpool (xpool" in rerun.stdout and "resumed" in rerun.stdout, rerun.stdout
    assert f"{27 - done_before}/27 blocks computed" in rerun.stdout
    assert sha256_tree(out) == sha256_tree(whole)
    assert not partial_path(out).exists()
