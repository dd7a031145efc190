"""Verify, share and interchange teacher caches: verify, push/pull/ls, shared-cache pulls, HDF5, DVC."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import torch
import zarr
from helpers import sha256_tree
from typer.testing import CliRunner

from teachclip.cli import app
from teachclip.core.config import (
    BackboneConfig,
    ComputeConfig,
    ExtractConfig,
    TeacherConfig,
)
from teachclip.stages import extract_teachers as stage
from teachclip.stores.teacher_cache import open_teacher_caches
from teachclip.stores.teacher_cache.dense import create_group, write_block
from teachclip.stores.teacher_cache.hdf5 import HDF5_ATTRIBUTES, export_hdf5, import_hdf5
from teachclip.stores.teacher_cache.publish import publish_groups
from teachclip.stores.teacher_cache.remote import (
    REMOTE_INDEX,
    fetch_into,
    find_remote,
    list_remote,
    pull,
    push,
)
from teachclip.stores.teacher_cache.schema import CacheLayout, SharingError, TeacherIdentity
from teachclip.stores.teacher_cache.verify import verify_group, verify_store
from teachclip.stores.zarr_io import partial_path

SYNC = ComputeConfig(scheduler="sync")


def synthetic_cache(store: Path, name: str = "teacher", seed: int = 0, n_texts: int = 10, n_videos: int = 7,
                    frames: int = 3) -> Path:
    """A small finished cache written through the writer API (random scores, no teacher needed)."""
    rng = np.random.default_rng(seed)
    identity = TeacherIdentity(
        kind="xpool", config={"seed": seed}, checkpoint_sha256=f"{seed:064x}", score_version=1,
        has_frame_relevance=True, similarity_definition="cos", relevance_definition="logits",
        frames_fingerprint="f" * 64, manifest_fingerprint="m" * 64,
    )
    layout = CacheLayout(n_texts, n_videos, frames, block_texts=4, chunk_texts=2, chunk_videos=4)
    partial = partial_path(store)
    text_video = rng.integers(0, n_videos, n_texts)
    create_group(partial, name, identity, layout, [f"c{i:03d}" for i in range(n_texts)],
                       [f"v{i:03d}" for i in range(n_videos)], text_video)
    for block in range(layout.n_blocks):
        start, stop = layout.block_rows(block)
        write_block(partial / name, block, rng.normal(size=(stop - start, n_videos)),
                          rng.normal(size=(stop - start, frames)))
    publish_groups(partial, store, [name])
    return store / name


def data_files(group: Path) -> list[Path]:
    """Every chunk or shard file of a group (everything but the metadata documents)."""
    return sorted(p for p in group.rglob("*") if p.is_file() and p.name != "zarr.json")


def problems(path: Path) -> list[str]:
    return [p for check in verify_store(path) for p in check.problems]


# ---- verify ----------------------------------------------------------------------------------------


def test_verify_accepts_an_intact_cache(tmp_path):
    group = synthetic_cache(tmp_path / "teachers.zarr")
    checks = verify_store(tmp_path / "teachers.zarr")
    assert [c.ok for c in checks] == [True]
    assert checks[0].chunks_read == 3 + 3 + 3  # similarity and relevance shards, the three id arrays
    assert verify_group(group).ok


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_verify_fails_on_a_flipped_byte_in_any_chunk(tmp_path, where):
    group = synthetic_cache(tmp_path / "teachers.zarr")
    files = data_files(group)
    assert len(files) == 3 + 3 + 3
    for file in files:
        original = file.read_bytes()
        position = {"first": 0, "middle": len(original) // 2, "last": len(original) - 1}[where]
        corrupted = bytearray(original)
        corrupted[position] ^= 0x01
        file.write_bytes(bytes(corrupted))
        assert problems(group), f"a flipped byte at {position} of {file.relative_to(group)} went unnoticed"
        file.write_bytes(original)
    assert not problems(group)


def test_verify_fails_on_a_missing_shard(tmp_path):
    group = synthetic_cache(tmp_path / "teachers.zarr")
    (group / "similarity" / "c" / "1" / "0").unlink()
    # zarr itself reads the absent shard as the fill value without a word ...
    assert np.isnan(zarr.open_array(group / "similarity", mode="r")[4:8]).all()
    # ... verify does not
    assert any("shard c/1/0 is missing" in p for p in problems(group))


def test_verify_fails_on_a_chunk_missing_inside_a_shard(tmp_path):
    group = synthetic_cache(tmp_path / "teachers.zarr")
    shard = group / "similarity" / "c" / "0" / "0"
    data = bytearray(shard.read_bytes())
    n_chunks = 2 * 2  # a shard of 4 rows x 8 columns holds 2 x 2 chunks of 2 x 4
    index_start = len(data) - (16 * n_chunks + 4)
    data[index_start : index_start + 16] = struct.pack("<QQ", 2**64 - 1, 2**64 - 1)  # drop chunk (0, 0)
    index = bytes(data[index_start:-4])
    data[-4:] = struct.pack("<I", google_crc32c.value(index))  # a consistent index that lacks a chunk
    shard.write_bytes(bytes(data))
    assert any("lacks chunk [0, 0]" in p for p in problems(group))


def test_verify_fails_on_an_incomplete_or_altered_group(tmp_path):
    group = synthetic_cache(tmp_path / "teachers.zarr")
    meta = group / "zarr.json"
    document = json.loads(meta.read_text())
    document["attributes"]["kind"] = "xclip"
    meta.write_text(json.dumps(document))
    assert any("metadata was altered" in p for p in problems(group))
    document["attributes"]["kind"] = "xpool"
    document["attributes"]["complete"] = False
    meta.write_text(json.dumps(document))
    assert any("incomplete" in p for p in problems(group))


def test_cli_verify_exit_code_and_info(tmp_path):
    group = synthetic_cache(tmp_path / "teachers.zarr")
    runner = CliRunner()
    result = runner.invoke(app, ["cache", "verify", str(tmp_path / "teachers.zarr")])
    assert result.exit_code == 0, result.output
    info = runner.invoke(app, ["cache", "info", str(tmp_path / "teachers.zarr"), "--json"])
    assert info.exit_code == 0
    parsed = json.loads(info.output)
    assert parsed["groups"][0]["texts"] == 10 and parsed["groups"][0]["complete"] is True
    assert parsed["groups"][0]["fingerprint"] == open_teacher_caches(group)[0].fingerprint
    shard = group / "frame_relevance" / "c" / "2" / "0"
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x00")
    assert runner.invoke(app, ["cache", "verify", str(tmp_path / "teachers.zarr")]).exit_code == 1


# ---- push, pull, ls ------------------------------------------------------------------------------


@pytest.mark.parametrize("remote_kind", ["directory", "memory"])
def test_push_pull_round_trip_keeps_every_byte(tmp_path, remote_kind):
    store = tmp_path / "teachers.zarr"
    synthetic_cache(store, "a", seed=1)
    synthetic_cache(store, "b", seed=2)
    url = str(tmp_path / "remote") if remote_kind == "directory" else f"memory://teachclip-test-{tmp_path.name}"
    pushed = push(store, url)
    assert [status for *_, status in pushed] == ["pushed", "pushed"]
    assert [status for *_, status in push(store, url)] == ["present", "present"]
    entries = list_remote(url)
    fingerprints = {g.name: g.fingerprint for g in open_teacher_caches(store)}
    assert sorted(e.fingerprint for e in entries) == sorted(fingerprints.values())
    assert {e.name for e in entries} == {"a", "b"}

    pulled = tmp_path / "pulled.zarr"
    pull(url, pulled)
    assert sha256_tree(pulled) == sha256_tree(store)
    assert not partial_path(pulled).exists()

    # one entry by its URL, under another name: the group's bytes do not depend on its name
    single = tmp_path / "single.zarr"
    pull(f"{url}/{fingerprints['a']}", single, name="renamed")
    assert sha256_tree(single / "renamed") == sha256_tree(store / "a")


def test_pull_refuses_a_name_holding_another_cache_and_a_corrupt_download(tmp_path):
    store, other = tmp_path / "teachers.zarr", tmp_path / "other.zarr"
    synthetic_cache(store, "a", seed=1)
    synthetic_cache(other, "a", seed=2)
    remote = tmp_path / "remote"
    push(store, str(remote))
    with pytest.raises(SharingError, match="pass --overwrite"):
        pull(str(remote), other)
    fingerprint = open_teacher_caches(store / "a")[0].fingerprint
    shard = remote / fingerprint / "similarity" / "c" / "0" / "0"
    shard.write_bytes(b"\x00" + shard.read_bytes()[1:])
    fresh = tmp_path / "fresh.zarr"
    with pytest.raises(SharingError, match="sha256"):
        pull(str(remote), fresh)
    assert not (fresh / "a").exists() and not (partial_path(fresh) / "a").exists()


def test_an_unfinished_upload_is_not_an_entry(tmp_path):
    store = tmp_path / "teachers.zarr"
    synthetic_cache(store, "a")
    remote = tmp_path / "remote"
    push(store, str(remote))
    fingerprint = open_teacher_caches(store / "a")[0].fingerprint
    (remote / fingerprint / REMOTE_INDEX).unlink()  # as if the upload died before its index
    assert list_remote(str(remote)) == []
    assert find_remote(str(remote), fingerprint) is None


# ---- HDF5 ------------------------------------------------------------------------------------------


def test_hdf5_round_trip_keeps_every_value_and_attribute(tmp_path):
    import h5py

    store = tmp_path / "teachers.zarr"
    synthetic_cache(store, "a", seed=1)
    synthetic_cache(store, "b", seed=2)
    h5 = tmp_path / "cache.h5"
    assert export_hdf5(store, h5) == ["a", "b"]
    with h5py.File(h5, "r") as file:
        group = open_teacher_caches(store / "a")[0]
        np.testing.assert_array_equal(file["a/similarity"][...], zarr.open_array(store / "a" / "similarity")[...])
        assert json.loads(file["a"].attrs[HDF5_ATTRIBUTES]) == group.attrs
        assert [v.decode() for v in file["a/text_ids"][...]] == group.text_ids
    imported = tmp_path / "imported.zarr"
    assert import_hdf5(h5, imported) == ["a", "b"]
    assert all(check.ok for check in verify_store(imported))
    assert sha256_tree(imported) == sha256_tree(store)


def test_cli_export_import(tmp_path):
    store = tmp_path / "teachers.zarr"
    synthetic_cache(store, "a")
    runner = CliRunner()
    h5 = tmp_path / "out.h5"
    assert runner.invoke(app, ["cache", "export", str(store), str(h5)]).exit_code == 0
    result = runner.invoke(app, ["cache", "import", str(h5), str(tmp_path / "back.zarr")])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["cache", "verify", str(tmp_path / "back.zarr")]).exit_code == 0


# ---- sparse groups (teach cache sparsify): verify, info, push/pull; HDF5 refuses them ------------------


def sparse_store(tmp_path: Path, top_k: int = 3) -> tuple[Path, Path, Path]:
    """A store with a dense group ``teacher`` and its sparse top-k group ``teacher-sparse`` (10 captions
    x 7 videos, 3 chunks per sparse array). Returns (store, dense group, sparse group)."""
    from teachclip.stores.teacher_cache.sparse import sparsify

    store = tmp_path / "teachers.zarr"
    dense = synthetic_cache(store)
    return store, dense, sparsify(dense, store, top_k=top_k, name="teacher-sparse", block_texts=4)


def edit_attributes(group: Path, **changes) -> None:
    meta = group / "zarr.json"
    document = json.loads(meta.read_text())
    for key, value in changes.items():
        if key in document["attributes"]["sparse"]:
            document["attributes"]["sparse"][key] = value
        else:
            document["attributes"][key] = value
    meta.write_text(json.dumps(document))


def test_verify_accepts_an_intact_sparse_group_and_finds_a_corrupt_or_missing_chunk(tmp_path):
    _, _, group = sparse_store(tmp_path)
    check = verify_group(group)
    assert check.ok, check.problems
    assert check.chunks_read == 4 * 3 + 3 + 3  # the four top-k arrays and relevance (3 chunks each), the ids
    files = data_files(group)
    assert {f.relative_to(group).parts[0] for f in files} >= {"neighbour_videos", "neighbour_scores", "own_score",
                                                              "rest_mean"}
    for file in files:
        original = file.read_bytes()
        corrupted = bytearray(original)
        corrupted[len(original) // 2] ^= 0x01
        file.write_bytes(bytes(corrupted))
        assert problems(group), f"a flipped byte in {file.relative_to(group)} went unnoticed"
        file.write_bytes(original)
    assert not problems(group)
    (group / "neighbour_scores" / "c" / "1" / "0").unlink()
    assert any("neighbour_scores: chunk c/1/0 is missing" in p for p in problems(group))


@pytest.mark.parametrize("change, message", [
    ({"fingerprint": "0" * 64}, "is not the sparse fingerprint"),
    ({"top_k": 2}, "is not the sparse fingerprint"),  # and the arrays' shapes disagree
    ({"dense_fingerprint": "0" * 64}, "dense_fingerprint 0000"),
    ({"kind": "xclip"}, "metadata was altered"),
    ({"fill": "kth"}, "fill rule 'kth'"),
    ({"top_k": 99}, "top_k 99 outside 1..7"),
])
def test_verify_reports_altered_sparse_metadata(tmp_path, change, message):
    store, _, group = sparse_store(tmp_path)
    edit_attributes(group, **change)
    assert any(message in p for p in problems(group)), problems(group)
    assert not verify_group(store / "teacher").problems  # the dense group beside it is intact
    assert CliRunner().invoke(app, ["cache", "verify", str(store)]).exit_code == 1


def test_cache_info_reports_top_k_and_bytes_of_a_sparse_group(tmp_path):
    store, _, group = sparse_store(tmp_path)
    result = CliRunner().invoke(app, ["cache", "info", str(store), "--json"])
    assert result.exit_code == 0, result.output
    dense_info, sparse_info = json.loads(result.output)["groups"]
    assert dense_info["name"] == "teacher" and "top_k" not in dense_info
    assert dense_info["similarity_bytes_per_entry"] > 0
    assert sparse_info["name"] == "teacher-sparse" and sparse_info["top_k"] == 3
    assert "similarity_bytes_per_entry" not in sparse_info
    assert sparse_info["dense_fingerprint"] == dense_info["fingerprint"]
    arrays = ("neighbour_videos", "neighbour_scores", "own_score", "rest_mean")
    assert sparse_info["sparse_bytes"] == sum(p.stat().st_size for a in arrays for p in (group / a).rglob("*")
                                             if p.is_file())
    assert sparse_info["sparse_bytes_per_caption"] == sparse_info["sparse_bytes"] / 10
    text = CliRunner().invoke(app, ["cache", "info", str(store)]).output
    assert "sparse top-3:" in text and "B/caption" in text and "B/similarity" in text


def test_push_pull_and_fetch_of_a_sparse_group(tmp_path):
    store, _, group = sparse_store(tmp_path)
    remote = str(tmp_path / "remote")
    assert [status for *_, status in push(store, remote)] == ["pushed", "pushed"]
    original = open_teacher_caches(group)[0]

    pulled = tmp_path / "pulled.zarr"
    assert [status for *_, status in pull(remote, pulled)] == ["pulled", "pulled"]
    assert all(check.ok for check in verify_store(pulled))
    assert sha256_tree(pulled) == sha256_tree(store)
    copy = open_teacher_caches(pulled / "teacher-sparse")[0]
    assert copy.top_k == 3 and copy.fingerprint == original.fingerprint
    rows, cols = np.arange(10), np.arange(7)
    np.testing.assert_array_equal(copy.similarity_block(rows, cols), original.similarity_block(rows, cols))
    np.testing.assert_array_equal(copy.known_mask(rows, cols), original.known_mask(rows, cols))
    for a, b in zip(copy.neighbours(rows), original.neighbours(rows), strict=True):
        np.testing.assert_array_equal(a, b)

    # the path extract-teachers' shared cache takes: fetch into a partial store, publish
    fetched = tmp_path / "fetched.zarr"
    assert fetch_into(remote, original.fingerprint, partial_path(fetched), "k3")
    publish_groups(partial_path(fetched), fetched, ["k3"])
    assert verify_group(fetched / "k3").ok
    assert sha256_tree(fetched / "k3") == sha256_tree(group)

    # a corrupt sparse chunk on the remote still fails the pull, leaving nothing behind
    shard = tmp_path / "remote" / original.fingerprint / "neighbour_videos" / "c" / "0" / "0"
    shard.write_bytes(b"\x00" + shard.read_bytes()[1:])
    fresh = tmp_path / "fresh.zarr"
    with pytest.raises(SharingError, match="sha256"):
        pull(f"{remote}/{original.fingerprint}", fresh)
    assert not (fresh / "teacher-sparse").exists()


def test_hdf5_refuses_sparse_groups_and_names_them(tmp_path):
    import h5py

    store, dense, group = sparse_store(tmp_path)
    h5 = tmp_path / "cache.h5"
    for source in (store, group):
        with pytest.raises(SharingError, match=r"teacher-sparse: a sparse .* `teach cache push`"):
            export_hdf5(source, h5)
        assert not h5.exists() and not h5.with_name("cache.h5.tmp").exists()
    result = CliRunner().invoke(app, ["cache", "export", str(store), str(h5)])
    assert result.exit_code != 0 and "teacher-sparse" in result.output
    assert export_hdf5(dense, h5) == ["teacher"]  # the dense group alone still exports
    # an HDF5 group claiming to be sparse (hand-made) is refused on import too
    with h5py.File(h5, "r+") as file:
        attrs = json.loads(file["teacher"].attrs[HDF5_ATTRIBUTES])
        file["teacher"].attrs[HDF5_ATTRIBUTES] = json.dumps(attrs | {"sparse": {"top_k": 3}})
    with pytest.raises(SharingError, match="group 'teacher': a sparse"):
        import_hdf5(h5, tmp_path / "imported.zarr")
    assert not (tmp_path / "imported.zarr").exists()


# ---- a shared cache replaces the computation ---------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """The tiny dataset tests/test_teacher_cache.py uses (12 demo videos, 27 train captions; shared
    read-only, tests/conftest.py) and a saved micro frame-CLIP teacher."""
    from teachclip.models.factory import create_teacher, save_teacher

    data = tiny_data(captions_per_video=3, videos_per_shard=4)
    root = tmp_path_factory.mktemp("teacher")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        teacher = create_teacher(TeacherConfig(kind="frame_clip", backbone=BackboneConfig(name="teachclip-micro")))
    return {"demo": data.manifest, "frames": data.frames, "checkpoint": save_teacher(teacher, root / "teacher")}


def test_a_pull_by_fingerprint_skips_the_computation(inputs, tmp_path, monkeypatch):
    requests = stage.resolve_teachers([f"clip={inputs['checkpoint']}"], {})
    config = ExtractConfig(block_texts=4, chunk_texts=2)
    mine = tmp_path / "mine.zarr"
    stage.extract_teachers(inputs["frames"], inputs["demo"], mine, requests, config, SYNC, progress=False)
    remote = tmp_path / "shared"
    push(mine, str(remote))

    def must_not_run(*args, **kwargs):
        raise AssertionError("the teacher ran although the shared cache holds its scores")

    monkeypatch.setattr(stage, "score_block", must_not_run)
    monkeypatch.setattr(stage, "encode_video_unit", must_not_run)
    theirs = tmp_path / "theirs.zarr"
    shared = config.model_copy(update={"shared_cache": str(remote)})
    report = stage.extract_teachers(inputs["frames"], inputs["demo"], theirs, requests, shared, SYNC, progress=False)
    assert report.teachers[0].status == "pulled" and report.teachers[0].blocks_computed == 0
    assert sha256_tree(theirs) == sha256_tree(mine)


# ---- DVC: push --run-cache by one user, repro --pull by another ---------------------------------------


def _sh(args: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.mark.slow  # a dozen git/dvc processes and one extraction: ~30-60 s
def test_dvc_run_cache_lets_a_colleague_skip_the_teacher_stage(inputs, tmp_path):
    env = os.environ | {"DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    alice, bob, remote = tmp_path / "alice", tmp_path / "bob", tmp_path / "dvc-remote"
    alice.mkdir()
    shutil.copytree(inputs["demo"], alice / "demo")
    shutil.copytree(inputs["frames"], alice / "frames.zarr")
    shutil.copytree(inputs["checkpoint"], alice / "teacher")
    (alice / "params.yaml").write_text("extract:\n  block_texts: 4\n  chunk_texts: 2\ncompute:\n  scheduler: sync\n")
    teach = f"{sys.executable} -m teachclip.cli"
    (alice / "dvc.yaml").write_text(
        "stages:\n  extract_teachers:\n"
        f"    cmd: {teach} extract-teachers --frames frames.zarr --manifest demo --teacher clip=teacher"
        " --out teachers.zarr --no-progress\n"
        "    deps: [frames.zarr, demo, teacher]\n    params: [extract]\n    outs: [teachers.zarr]\n"
    )
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "remote", "add", "-d", "shared", str(remote)],
                    ["dvc", "add", "-q", "frames.zarr", "teacher"], ["dvc", "repro"],
                    ["dvc", "push", "--run-cache"], ["git", "add", "-A"], ["git", "commit", "-qm", "alice"]):
        _sh(command, alice, env)
    assert all(c.ok for c in verify_store(alice / "teachers.zarr"))

    _sh(["git", "clone", "-q", str(alice), str(bob)], tmp_path, env)
    (bob / "dvc.lock").unlink()  # no lock file: only DVC's run cache can know the stage's result
    # a teachclip that refuses to run, first on Python's path: if DVC ran the stage, repro would fail
    fake = tmp_path / "fake" / "teachclip"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise SystemExit('the teacher stage ran although DVC had it cached')\n")
    output = _sh(["dvc", "repro", "--pull"], bob, env | {"PYTHONPATH": str(fake.parent)})
    assert "skipping run" in output.lower() or "restored" in output.lower(), output
    assert not partial_path(bob / "teachers.zarr").exists()
    assert sha256_tree(bob / "teachers.zarr") == sha256_tree(alice / "teachers.zarr")
