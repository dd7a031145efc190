"""Hostile and damaged teacher caches (issue 13): crafted HDF5 files, remotes and stores are refused
with one line naming the file or array and the reason, and canary files beside every target prove
that nothing outside the target was touched.

Classes: names from outside (data loss), hostile HDF5, hostile remote (substitution, leftovers),
damaged stores (holes and impossible values, up to train-student), resource bounds, content hash,
tracebacks (the CLI).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import google_crc32c
import h5py
import numpy as np
import pytest
import zarr
from helpers import sha256_tree
from numcodecs import Zstd
from pydantic import ValidationError
from typer.testing import CliRunner

from teachclip.cli import app
from teachclip.core.errors import TeachclipError
from teachclip.core.fingerprint import sha256_file
from teachclip.stores.teacher_cache import TeacherCacheError, open_group, open_teacher_caches
from teachclip.stores.teacher_cache.dense import DenseGroup, create_group, write_block
from teachclip.stores.teacher_cache.hdf5 import HDF5_ATTRIBUTES, export_hdf5, import_hdf5
from teachclip.stores.teacher_cache.publish import discard_partial_group, publish_groups, scratch_path
from teachclip.stores.teacher_cache.remote import (
    REMOTE_INDEX,
    fetch_into,
    list_remote,
    pull,
    push,
    scan_remote,
)
from teachclip.stores.teacher_cache.schema import (
    CacheLayout,
    LayoutAttributes,
    SharingError,
    TeacherIdentity,
    check_group_name,
    parse_group_attributes,
    plan_layout,
)
from teachclip.stores.teacher_cache.sparse import sparsify
from teachclip.stores.teacher_cache.verify import cache_info, verify_group, verify_store
from teachclip.stores.zarr_io import check_chunk_presence, partial_path, write_strings

REPO = Path(__file__).resolve().parents[1]
CANARY = b"canary: nothing may touch me\n"
runner = CliRunner()


# ---- builders and witnesses ---------------------------------------------------------------------------


def build(store: Path, name: str = "teacher", seed: int = 0, n_texts: int = 10, n_videos: int = 7, frames: int = 3,
          block_texts: int = 4, chunk_texts: int = 2, chunk_videos: int = 4) -> Path:
    """A small complete dense group written through the writer API (random scores)."""
    rng = np.random.default_rng(seed)
    identity = TeacherIdentity(
        kind="xpool", config={"seed": seed}, checkpoint_sha256=f"{seed:064x}", score_version=1,
        has_frame_relevance=True, similarity_definition="cos", relevance_definition="logits",
        frames_fingerprint="f" * 64, manifest_fingerprint="m" * 64,
    )
    layout = CacheLayout(n_texts, n_videos, frames, block_texts, chunk_texts, chunk_videos)
    partial = partial_path(store)
    create_group(partial, name, identity, layout, [f"c{i:03d}" for i in range(n_texts)],
                 [f"v{i:03d}" for i in range(n_videos)], rng.integers(0, n_videos, n_texts))
    similarity, relevance = rng.normal(size=(n_texts, n_videos)), rng.normal(size=(n_texts, frames))
    for block in range(layout.n_blocks):
        start, stop = layout.block_rows(block)
        write_block(partial / name, block, similarity[start:stop], relevance[start:stop])
    publish_groups(partial, store, [name])
    return store / name


def canaries(*folders: Path) -> list[Path]:
    """A canary file in each folder (created if needed)."""
    files = []
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "canary.txt").write_bytes(CANARY)
        files.append(folder / "canary.txt")
    return files


def assert_alive(files: list[Path]) -> None:
    for file in files:
        assert file.read_bytes() == CANARY, f"{file} was touched"


def attributes(group: Path) -> dict:
    return json.loads((group / "zarr.json").read_text())["attributes"]


def edit_attributes(group: Path, edit) -> None:
    document = json.loads((group / "zarr.json").read_text())
    edit(document["attributes"])
    (group / "zarr.json").write_text(json.dumps(document))


def edit_meta(array: Path, edit) -> None:
    document = json.loads((array / "zarr.json").read_text())
    edit(document)
    (array / "zarr.json").write_text(json.dumps(document))


def one_line_refusal(result, *needles: str) -> str:
    """A CLI result that failed with exit 1 and one-line messages (no traceback) containing ``needles``."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an escaped exception
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output
    return result.output


def chunk_file(data: bytes) -> bytes:
    """A zstd frame + crc32c: a chunk file as zarr writes it."""
    frame = bytes(Zstd(level=3).encode(data))
    return frame + struct.pack("<I", google_crc32c.value(frame))


# ---- names from outside (data loss) -------------------------------------------------------------------


class TestNames:
    @pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../x", "-x", "_x", "a b", "x" * 129, "é", None, 5])
    def test_check_group_name_refuses(self, name):
        with pytest.raises(TeacherCacheError, match="teacher name"):
            check_group_name(name)

    def test_discard_and_publish_refuse_a_traversal_name_deleting_nothing(self, tmp_path):
        store = tmp_path / "work" / "teachers.zarr"
        build(store, "a")
        partial = partial_path(store)
        create_group(partial, "b", TeacherIdentity("xpool", {}, None, 1, False, "", "", "f", "m"),
                     CacheLayout(2, 2, 1, 2, 2, 2), ["x", "y"], ["p", "q"], np.array([0, 1]))
        alive = canaries(tmp_path / "work", tmp_path, partial)
        before = sha256_tree(tmp_path)
        for call in (lambda: discard_partial_group(partial, ".."), lambda: discard_partial_group(partial, "."),
                     lambda: publish_groups(partial, store, ["b", ".."]), lambda: scratch_path(partial, "../..")):
            with pytest.raises(TeacherCacheError, match="teacher name"):
                call()
        assert sha256_tree(tmp_path) == before
        assert_alive(alive)

    def test_pull_name_and_fetch_name_are_checked_before_any_path(self, tmp_path):
        store = tmp_path / "teachers.zarr"
        build(store, "a")
        remote = tmp_path / "remote"
        push(store, str(remote))
        fingerprint = attributes(store / "a")["fingerprint"]
        out = tmp_path / "work" / "out.zarr"
        alive = canaries(tmp_path / "work")
        with pytest.raises(TeacherCacheError, match="teacher name"):
            pull(str(remote), out, name="../escape")
        with pytest.raises(TeacherCacheError, match="teacher name"):
            fetch_into(str(remote), fingerprint, partial_path(out), "..")
        with pytest.raises(SharingError, match="not a teacher cache fingerprint"):
            fetch_into(str(remote), "../../etc", partial_path(out), "a")
        assert not out.exists() and not partial_path(out).exists()
        assert_alive(alive)


# ---- hostile HDF5 ----------------------------------------------------------------------------------------


@pytest.fixture
def h5_export(tmp_path) -> tuple[Path, Path]:
    """An HDF5 export of one healthy group ``a`` (10 x 7, frame relevance): (file, the store it came from)."""
    store = tmp_path / "source.zarr"
    build(store, "a", seed=1)
    h5 = tmp_path / "cache.h5"
    export_hdf5(store, h5)
    return h5, store


def _replace(group, name: str, **kwargs) -> None:
    del group[name]
    group.create_dataset(name, **kwargs)


def _external_passwd(h5, group):
    shape = group["similarity"].shape
    _replace(group, "similarity", shape=shape, dtype="float16", external=[("/etc/passwd", 0, 2 * int(np.prod(shape)))])


def _virtual(h5, group):
    shape = group["similarity"].shape
    layout = h5py.VirtualLayout(shape=shape, dtype="float16")
    layout[:] = h5py.VirtualSource(str(Path(h5.filename).with_name("elsewhere.h5")), "x", shape=shape)
    del group["similarity"]
    group.create_virtual_dataset("similarity", layout, fillvalue=0)


def _soft_link(h5, group):
    h5.move(f"{group.name}/similarity", "/hidden")
    group["similarity"] = h5py.SoftLink("/hidden")


def _external_link(h5, group):
    group.file.copy(group["text_ids"], "/elsewhere_ids")
    del group["text_ids"]
    group["text_ids"] = h5py.ExternalLink(h5.filename, "/elsewhere_ids")


def _with_attributes(edit):
    def mutate(h5, group):
        attrs = json.loads(group.attrs[HDF5_ATTRIBUTES])
        edit(attrs)
        group.attrs[HDF5_ATTRIBUTES] = json.dumps(attrs)
    return mutate


def _set_attribute(value):
    def mutate(h5, group):
        group.attrs[HDF5_ATTRIBUTES] = value
    return mutate


HOSTILE_HDF5 = {
    "external storage in /etc/passwd": (_external_passwd, "stored in external files"),
    "virtual dataset": (_virtual, "a virtual dataset"),
    "soft link to a dataset": (_soft_link, "a soft or external link"),
    "external link to a dataset": (_external_link, "a soft or external link"),
    "fixed-length byte ids": (lambda h5, g: _replace(g, "text_ids", data=np.array([f"c{i:03d}".encode() for i in range(10)],
                                                                                   dtype="S4")), "dtype |S4"),
    "ascii variable-length ids": (lambda h5, g: _replace(g, "video_ids", data=[f"v{i:03d}" for i in range(7)],
                                                         dtype=h5py.string_dtype("ascii")), "UTF-8 variable-length"),
    "compound text_video": (lambda h5, g: _replace(g, "text_video", data=np.zeros(10, dtype=[("a", "<i4"), ("b", "<i4")])),
                            "where int32 belongs"),
    "float32 similarity": (lambda h5, g: _replace(g, "similarity", data=np.zeros((10, 7), np.float32)),
                           "float32 where float16 belongs"),
    "similarity of the wrong shape": (lambda h5, g: _replace(g, "similarity", data=np.zeros((10, 6), np.float16)),
                                      "shape (10, 6) where the layout says (10, 7)"),
    "an extra dataset": (lambda h5, g: g.create_dataset("payload", data=np.zeros(3)), "expected exactly"),
    "a missing dataset": (lambda h5, g: g.__delitem__("frame_relevance"), "expected exactly"),
    "an lzf-compressed dataset": (lambda h5, g: _replace(g, "similarity", data=np.zeros((10, 7), np.float16),
                                                         compression="lzf"), "filters [32000]"),
    "similarity chunks never written": (lambda h5, g: _replace(g, "similarity", shape=(10, 7), dtype="float16",
                                                               chunks=(2, 4), compression="gzip"), "0 of 10 chunks stored"),
    "relevance chunks partly written": (lambda h5, g: (_replace(g, "frame_relevance", shape=(10, 3), dtype="float32",
                                                                chunks=(2, 3)), g["frame_relevance"].__setitem__(
        slice(0, 4), 1.0)), "2 of 5 chunks stored"),
    "similarity storage never written": (lambda h5, g: _replace(g, "similarity", shape=(10, 7), dtype="float16"),
                                         "0 bytes stored of 140"),
    "a 2 GiB chunk": (lambda h5, g: _replace(g, "similarity", shape=(10, 7), dtype="float16", maxshape=(None, None),
                                             chunks=(32768, 32768)), "larger than 1024 MiB"),
    "an id of 2000 characters": (lambda h5, g: g["text_ids"].__setitem__(9, "c" * 2000), "an id longer than 1024"),
    "attributes not JSON": (_set_attribute("{not json"), "not JSON"),
    "attributes an integer array": (_set_attribute(np.arange(3)), "is not a string"),
    "attributes a JSON list": (_set_attribute("[1, 2]"), "a JSON list, not an object"),
    "negative block_texts": (_with_attributes(lambda a: a["layout"].update(block_texts=-4)), "layout.block_texts"),
    "zero chunk_texts": (_with_attributes(lambda a: a["layout"].update(chunk_texts=0)), "layout.chunk_texts"),
    "10^10 texts": (_with_attributes(lambda a: a["layout"].update(n_texts=10**10)), "layout.n_texts"),
    "schema_version as a string": (_with_attributes(lambda a: a.update(schema_version="1")), "schema_version"),
    "a missing key": (_with_attributes(lambda a: a.pop("kind")), "kind: Field required"),
    "a fingerprint that is a path": (_with_attributes(lambda a: a.update(fingerprint="../../x")), "fingerprint"),
}


class TestHostileHDF5:
    def test_a_second_group_named_dotdot_deletes_nothing(self, h5_export, tmp_path):
        h5, _ = h5_export
        with h5py.File(h5, "r+") as file:  # the export keeps creation order: '..' comes second
            file.copy("a", "..")
            assert list(file.keys()) == ["a", ".."]
        work = tmp_path / "work"
        store = work / "teachers.zarr"
        build(store, "existing", seed=5)
        alive = canaries(work, store)
        before = sha256_tree(work)
        with pytest.raises(SharingError, match=r"group '\.\.': not a teacher name"):
            import_hdf5(h5, store)
        assert sha256_tree(work) == before and not partial_path(store).exists()
        one_line_refusal(runner.invoke(app, ["cache", "import", str(h5), str(store)]), "'..'")
        assert sha256_tree(work) == before
        assert_alive(alive)

    @pytest.mark.parametrize("case", sorted(HOSTILE_HDF5))
    def test_hostile_datasets_and_attributes_are_refused_before_anything_is_written(self, h5_export, tmp_path, case):
        mutate, message = HOSTILE_HDF5[case]
        h5, _ = h5_export
        with h5py.File(h5, "r+") as file:
            mutate(file, file["a"])
        work = tmp_path / "work"
        alive = canaries(work)
        with pytest.raises(SharingError) as error:
            import_hdf5(h5, work / "teachers.zarr")
        assert message in str(error.value) and str(h5) in str(error.value)
        assert "\n" not in str(error.value)
        assert not (work / "teachers.zarr").exists() and not partial_path(work / "teachers.zarr").exists()
        assert_alive(alive)

    def test_the_passwd_dataset_would_have_been_read(self, h5_export):
        """The external dataset really exposes /etc/passwd's bytes to h5py (what import refused)."""
        h5, _ = h5_export
        with h5py.File(h5, "r+") as file:
            _external_passwd(file, file["a"])
        with h5py.File(h5, "r") as file:
            assert file["a/similarity"][...].tobytes() == Path("/etc/passwd").read_bytes()[:140]

    def test_a_group_that_is_a_soft_link_is_refused(self, h5_export, tmp_path):
        h5, _ = h5_export
        with h5py.File(h5, "r+") as file:
            file["b"] = h5py.SoftLink("/a")
        with pytest.raises(SharingError, match="group 'b': not a plain group"):
            import_hdf5(h5, tmp_path / "out.zarr")
        assert not (tmp_path / "out.zarr").exists()

    @pytest.mark.parametrize("damage, message", [
        ("unsorted ids", "text_ids: not sorted and unique"),
        ("duplicate video ids", "video_ids: not sorted and unique"),
        ("text_video out of range", "text_video: column out of range"),
    ])
    def test_ids_are_checked_before_any_score_is_written(self, h5_export, tmp_path, monkeypatch, damage, message):
        from teachclip.stores.teacher_cache import hdf5

        h5, _ = h5_export
        with h5py.File(h5, "r+") as file:
            group = file["a"]
            if damage == "unsorted ids":
                ids = [f"c{i:03d}" for i in range(10)]
                ids[3], ids[4] = ids[4], ids[3]
                _replace(group, "text_ids", data=ids, dtype=h5py.string_dtype("utf-8"))
            elif damage == "duplicate video ids":
                _replace(group, "video_ids", data=["v0"] * 7, dtype=h5py.string_dtype("utf-8"))
            else:
                group["text_video"][0] = 7
        monkeypatch.setattr(hdf5, "write_block", lambda *a, **k: pytest.fail("a score was written"))
        monkeypatch.setattr(hdf5, "mark_group_complete", lambda *a, **k: pytest.fail("the group was completed"))
        with pytest.raises(SharingError, match=message):
            import_hdf5(h5, tmp_path / "out.zarr")
        assert not (tmp_path / "out.zarr").exists() and not partial_path(tmp_path / "out.zarr").exists()

    def test_scores_that_do_not_match_the_recorded_content_hash_are_refused(self, h5_export, tmp_path):
        h5, _ = h5_export
        with h5py.File(h5, "r+") as file:
            file["a/similarity"][2, 3] = np.float16(0.5) + file["a/similarity"][2, 3]
        with pytest.raises(SharingError, match="content hash .* the data was altered"):
            import_hdf5(h5, tmp_path / "out.zarr")
        assert not (tmp_path / "out.zarr").exists() and not partial_path(tmp_path / "out.zarr").exists()

    def test_non_finite_scores_are_refused(self, h5_export, tmp_path):
        h5, _ = h5_export
        with h5py.File(h5, "r+") as file:
            file["a/frame_relevance"][1, 1] = np.inf
        with pytest.raises(SharingError, match="non-finite frame relevance"):
            import_hdf5(h5, tmp_path / "out.zarr")

    def test_not_an_hdf5_file(self, tmp_path):
        bogus = tmp_path / "bogus.h5"
        bogus.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(64))
        one_line_refusal(runner.invoke(app, ["cache", "import", str(bogus), str(tmp_path / "out.zarr")]),
                         "not a readable HDF5 file")

    def test_a_failed_import_keeps_earlier_partial_work(self, h5_export, tmp_path):
        h5, _ = h5_export
        with h5py.File(h5, "r+") as file:
            file["a/similarity"][0, 0] = np.nan
        out = tmp_path / "out.zarr"
        create_group(partial_path(out), "mine", TeacherIdentity("xpool", {}, None, 1, False, "", "", "f", "m"),
                     CacheLayout(2, 2, 1, 2, 2, 2), ["x", "y"], ["p", "q"], np.array([0, 1]))
        before = sha256_tree(partial_path(out))
        with pytest.raises(SharingError):
            import_hdf5(h5, out)
        assert sha256_tree(partial_path(out)) == before  # its own work is kept, the failed group is gone


# ---- hostile remote ----------------------------------------------------------------------------------------


@pytest.fixture
def remote(tmp_path) -> tuple[Path, Path, dict[str, str]]:
    """A store with groups ``a`` and ``b`` pushed to a directory remote: (store, remote, name -> fingerprint)."""
    store = tmp_path / "teachers.zarr"
    build(store, "a", seed=1)
    build(store, "b", seed=2)
    url = tmp_path / "remote"
    push(store, str(url))
    return store, url, {name: attributes(store / name)["fingerprint"] for name in ("a", "b")}


def rewrite_index(entry: Path, edit) -> None:
    index = json.loads((entry / REMOTE_INDEX).read_text())
    edit(index)
    (entry / REMOTE_INDEX).write_text(json.dumps(index))


def relist(entry: Path, relative: str) -> None:
    """Record a file of the entry in its index with its true size and sha256 (as a forger would)."""
    file = entry / relative
    rewrite_index(entry, lambda i: i["files"].__setitem__(relative, {"sha256": sha256_file(file),
                                                                     "size": file.stat().st_size}))


MALFORMED_INDEXES = {
    "not JSON": lambda e: (e / REMOTE_INDEX).write_bytes(b"{\"files\": "),
    "not UTF-8": lambda e: (e / REMOTE_INDEX).write_bytes(b"\xff\xfe{}"),
    "a JSON list": lambda e: (e / REMOTE_INDEX).write_text("[]"),
    "missing files": lambda e: rewrite_index(e, lambda i: i.pop("files")),
    "texts as a string": lambda e: rewrite_index(e, lambda i: i.update(texts="10")),
    "10^12 texts": lambda e: rewrite_index(e, lambda i: i.update(texts=10**12)),
    "format 2": lambda e: rewrite_index(e, lambda i: i.update(format=2)),
    "a traversal name": lambda e: rewrite_index(e, lambda i: i.update(name="../../x")),
    "a traversal file": lambda e: rewrite_index(e, lambda i: i["files"].update({"../../etc/passwd": {"sha256": "0" * 64,
                                                                                                    "size": 1}})),
    "files as a list": lambda e: rewrite_index(e, lambda i: i.update(files=[])),
    "a negative size": lambda e: rewrite_index(e, lambda i: i["files"]["zarr.json"].update(size=-1)),
    "an unknown key": lambda e: rewrite_index(e, lambda i: i.update(note="hi")),
    "another fingerprint": lambda e: rewrite_index(e, lambda i: i.update(fingerprint="0" * 64)),
    "a directory": lambda e: ((e / REMOTE_INDEX).unlink(), (e / REMOTE_INDEX).mkdir()),
}


class TestHostileRemote:
    def test_an_entry_stored_under_another_fingerprint_is_refused(self, remote, tmp_path):
        store, url, fps = remote
        shutil.rmtree(url / fps["b"])
        shutil.copytree(url / fps["a"], url / fps["b"])  # "b" now serves a's scores
        alive = canaries(url, tmp_path / "work")
        out = tmp_path / "work" / "out.zarr"
        with pytest.raises(SharingError, match="refusing a substituted entry"):
            pull(f"{url}/{fps['b']}", out)
        with pytest.raises(SharingError, match="refusing a substituted entry"):
            fetch_into(str(url), fps["b"], partial_path(out), "b")
        assert not out.exists() and not partial_path(out).exists()
        entries, skipped = scan_remote(str(url))
        assert [e.fingerprint for e in entries] == [fps["a"]] and [d for d, _ in skipped] == [fps["b"]]
        assert_alive(alive)

    def test_an_index_that_lies_about_the_group_inside_is_refused(self, remote, tmp_path):
        store, url, fps = remote
        shutil.rmtree(url / fps["b"])
        shutil.copytree(url / fps["a"], url / fps["b"])
        rewrite_index(url / fps["b"], lambda i: i.update(fingerprint=fps["b"]))  # the index now claims b
        out = tmp_path / "out.zarr"
        with pytest.raises(SharingError, match="the group inside has another fingerprint"):
            pull(f"{url}/{fps['b']}", out)
        with pytest.raises(SharingError, match="the group inside has another fingerprint"):
            fetch_into(str(url), fps["b"], partial_path(out), "b")
        assert not out.exists() and not partial_path(out).exists()

    def test_extract_teachers_refuses_a_substituted_shared_entry(self, tiny_data, tmp_path, monkeypatch):
        import torch

        from teachclip.core.config import BackboneConfig, ComputeConfig, ExtractConfig, TeacherConfig
        from teachclip.models.factory import create_teacher, save_teacher
        from teachclip.stages import extract_teachers as stage
        from teachclip.stores import open_video_store

        data = tiny_data(captions_per_video=3, videos_per_shard=4)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            teacher = create_teacher(TeacherConfig(kind="frame_clip", backbone=BackboneConfig(name="teachclip-micro")))
        checkpoint = save_teacher(teacher, tmp_path / "teacher")
        requests = stage.resolve_teachers([f"clip={checkpoint}"], {})
        frames = open_video_store(data.frames)
        wanted = stage.identity_of(requests[0], frames.fingerprint, frames.manifest_fingerprint).fingerprint
        other = tmp_path / "other.zarr"
        build(other, "clip", seed=9)
        shared = tmp_path / "shared"
        push(other, str(shared))
        forged = attributes(other / "clip")["fingerprint"]
        (shared / forged).rename(shared / wanted)  # someone else's scores under the requested fingerprint
        rewrite_index(shared / wanted, lambda i: i.update(fingerprint=wanted))

        def must_not_run(*args, **kwargs):
            raise AssertionError("the teacher ran")

        monkeypatch.setattr(stage, "score_block", must_not_run)
        config = ExtractConfig(block_texts=4, chunk_texts=2, shared_cache=str(shared))
        out = tmp_path / "teachers.zarr"
        with pytest.raises(SharingError, match="another fingerprint"):
            stage.extract_teachers(data.frames, data.manifest, out, requests, config, ComputeConfig(scheduler="sync"),
                                   progress=False)
        assert not out.exists() and not (partial_path(out) / "clip").exists()

    @pytest.mark.parametrize("case", sorted(MALFORMED_INDEXES))
    def test_a_malformed_index_is_skipped_by_ls_and_pull_and_refused_alone(self, remote, tmp_path, case):
        store, url, fps = remote
        MALFORMED_INDEXES[case](url / fps["b"])
        alive = canaries(url, tmp_path / "work")
        entries, skipped = scan_remote(str(url))
        assert [e.fingerprint for e in entries] == [fps["a"]]
        assert [d for d, _ in skipped] == [fps["b"]] and "\n" not in skipped[0][1]
        listed = runner.invoke(app, ["cache", "ls", str(url)])
        assert listed.exit_code == 0 and fps["a"] in listed.stdout and f"skipped {fps['b']}" in listed.output

        out = tmp_path / "work" / "out.zarr"
        one_line_refusal(runner.invoke(app, ["cache", "pull", f"{url}/{fps['b']}", str(out)]), REMOTE_INDEX)
        assert not out.exists() and not partial_path(out).exists()
        result = runner.invoke(app, ["cache", "pull", str(url), str(out)])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        assert "a: pulled" in result.stdout and f"{fps['b']}: skipped" in result.output
        assert verify_group(out / "a").ok and not (out / "b").exists() and not partial_path(out).exists()
        assert_alive(alive)

    @pytest.mark.parametrize("extra", ["notes.txt", "similarity/notes.txt", "similarity/c/9/0", "similarity/c/3/0/1",
                                       "similarity/c/00/0", "payload/zarr.json"])
    def test_files_outside_the_schema_are_refused_and_not_copied(self, remote, tmp_path, extra):
        store, url, fps = remote
        entry = url / fps["a"]
        (entry / extra).parent.mkdir(parents=True, exist_ok=True)
        (entry / extra).write_bytes(b"#!/bin/sh\necho owned\n")
        relist(entry, extra)
        out = tmp_path / "out.zarr"
        with pytest.raises(SharingError, match="refused"):
            pull(f"{url}/{fps['a']}", out)
        assert not out.exists() and not partial_path(out).exists()

    def test_an_extra_file_not_listed_is_not_copied(self, remote, tmp_path):
        store, url, fps = remote
        (url / fps["a"] / "similarity" / "payload.sh").write_text("echo owned\n")
        out = tmp_path / "out.zarr"
        pull(f"{url}/{fps['a']}", out)
        assert not (out / "a" / "similarity" / "payload.sh").exists()
        assert sha256_tree(out / "a") == sha256_tree(store / "a")

    @pytest.mark.parametrize("what", ["file", "directory"])
    def test_symbolic_links_in_an_entry_are_refused(self, remote, tmp_path, what):
        store, url, fps = remote
        entry = url / fps["a"]
        outside = tmp_path / "outside"
        outside.mkdir()
        if what == "file":  # a link to a file with the very bytes listed: only the link is wrong
            shutil.copy(entry / "similarity" / "c" / "1" / "0", outside / "shard")
            (entry / "similarity" / "c" / "1" / "0").unlink()
            (entry / "similarity" / "c" / "1" / "0").symlink_to(outside / "shard")
        else:
            shutil.copytree(entry / "frame_relevance" / "c", outside / "c")
            shutil.rmtree(entry / "frame_relevance" / "c")
            (entry / "frame_relevance" / "c").symlink_to(outside / "c", target_is_directory=True)
        out = tmp_path / "out.zarr"
        with pytest.raises(SharingError, match="not a plain"):
            pull(f"{url}/{fps['a']}", out)
        assert not out.exists() and not partial_path(out).exists()

    def test_a_content_hash_in_the_index_that_the_group_does_not_carry_is_refused(self, remote, tmp_path):
        store, url, fps = remote
        rewrite_index(url / fps["a"], lambda i: i.update(content_sha256="0" * 64))
        with pytest.raises(SharingError, match="content hash"):
            pull(f"{url}/{fps['a']}", tmp_path / "out.zarr")

    def test_a_huge_layout_in_an_entry_is_refused_at_once(self, remote, tmp_path):
        store, url, fps = remote
        entry = url / fps["a"]
        edit_attributes(entry, lambda a: a["layout"].update(n_texts=10**10, block_texts=10**10))
        relist(entry, "zarr.json")
        started = time.monotonic()
        with pytest.raises(SharingError, match="layout.n_texts"):
            pull(f"{url}/{fps['a']}", tmp_path / "out.zarr")
        assert time.monotonic() - started < 10
        assert not partial_path(tmp_path / "out.zarr").exists()

    def test_a_failed_pull_leaves_no_partial_but_keeps_earlier_work(self, remote, tmp_path):
        store, url, fps = remote
        shard = url / fps["a"] / "similarity" / "c" / "0" / "0"
        shard.write_bytes(b"\x00" + shard.read_bytes()[1:])
        out = tmp_path / "out.zarr"
        with pytest.raises(SharingError, match="sha256"):
            pull(f"{url}/{fps['a']}", out)
        assert not partial_path(out).exists()
        create_group(partial_path(out), "mine", TeacherIdentity("xpool", {}, None, 1, False, "", "", "f", "m"),
                     CacheLayout(2, 2, 1, 2, 2, 2), ["x", "y"], ["p", "q"], np.array([0, 1]))
        before = sha256_tree(partial_path(out))
        with pytest.raises(SharingError, match="nothing pulled"):
            pull(str(url), out, fingerprints=[fps["a"]])
        assert sha256_tree(partial_path(out)) == before

    def test_a_corrupt_entry_is_skipped_when_pulling_a_whole_remote(self, remote, tmp_path):
        store, url, fps = remote
        shard = url / fps["b"] / "similarity" / "c" / "0" / "0"
        shard.write_bytes(b"\x00" + shard.read_bytes()[1:])
        out = tmp_path / "out.zarr"
        results = pull(str(url), out)
        assert ("a", fps["a"], "pulled") in results
        assert [status for name, _, status in results if name == fps["b"]][0].startswith("skipped: ")
        assert sha256_tree(out / "a") == sha256_tree(store / "a") and not (out / "b").exists()
        assert not partial_path(out).exists()

    def test_two_entries_pushed_under_one_name_do_not_overwrite_each_other(self, tmp_path):
        first, second = tmp_path / "one.zarr", tmp_path / "two.zarr"
        build(first, "same", seed=1)
        build(second, "same", seed=2)
        url = tmp_path / "remote"
        push(first, str(url))
        push(second, str(url))
        results = pull(str(url), tmp_path / "out.zarr")
        assert sorted(status.split(":")[0] for *_, status in results) == ["pulled", "skipped"]
        assert verify_group(tmp_path / "out.zarr" / "same").ok


# ---- damaged stores: holes and impossible values -----------------------------------------------------------


def _train(student_data, caches: Path, out: Path):
    from teachclip.core.config import (
        BackboneConfig,
        ComputeConfig,
        EvaluateConfig,
        StudentConfig,
        TeacherWeight,
        TrainStudentConfig,
    )
    from teachclip.stages.train_student import train_student

    config = TrainStudentConfig(teachers=[TeacherWeight(name="xpool")], epochs=1, batch_size=4)
    student = StudentConfig(backbone=BackboneConfig(name="teachclip-micro", precision="fp32", freeze_text=True,
                                                    freeze_visual=True), temporal_layers=1, afa=True)
    return train_student(student_data.frames, student_data.manifest, [caches], out, config, student,
                         EvaluateConfig(batch_videos=8), ComputeConfig(device="cpu"), progress=False)


class TestDamagedStores:
    @pytest.mark.parametrize("array", ["similarity", "frame_relevance"])
    def test_train_student_refuses_a_cache_with_a_deleted_shard(self, student_data, tmp_path, array):
        caches = tmp_path / "teachers.zarr"
        shutil.copytree(student_data.caches, caches)
        (caches / "xpool" / array / "c" / "0" / "0").unlink()
        with pytest.raises(TeacherCacheError) as error:
            _train(student_data, caches, tmp_path / "student")
        message = str(error.value)
        assert str(caches / "xpool") in message and f"{array}: shard c/0/0 is missing" in message
        assert not (tmp_path / "student" / "model.safetensors").exists()

    def test_train_student_refuses_non_finite_scores_with_valid_checksums(self, student_data, tmp_path):
        caches = tmp_path / "teachers.zarr"
        shutil.copytree(student_data.caches, caches)
        array = zarr.open_array(caches / "xpool" / "similarity", mode="r+")
        array[5, 2] = np.nan  # rewritten through zarr: the chunk's crc32c is right
        with pytest.raises(TeacherCacheError, match=r"similarity: non-finite value in row 5"):
            _train(student_data, caches, tmp_path / "student")
        assert not (tmp_path / "student" / "model.safetensors").exists()

    def test_a_shard_deleted_after_opening_is_not_read_as_numbers(self, tmp_path):
        group_path = build(tmp_path / "teachers.zarr")
        group = DenseGroup(group_path, in_memory=False)
        np.testing.assert_array_equal(np.isfinite(group.similarity_block([4], [0, 1])), True)
        (group_path / "similarity" / "c" / "1" / "0").unlink()
        (group_path / "frame_relevance" / "c" / "1" / "0").unlink()
        with pytest.raises(TeacherCacheError, match=r"similarity: non-finite value in row 5"):
            group.similarity_block([0, 5], [0, 1])
        with pytest.raises(TeacherCacheError, match=r"frame_relevance: non-finite value in row 4"):
            group.frame_relevance([4])
        group.similarity_block([0, 9], [6])  # the rows still there read as before

    def test_an_incomplete_group_opens_but_serves_no_score(self, tmp_path):
        partial = partial_path(tmp_path / "teachers.zarr")
        identity = TeacherIdentity("xpool", {}, None, 1, True, "", "", "f", "m")
        create_group(partial, "g", identity, CacheLayout(4, 2, 3, 2, 2, 2), list("abcd"), ["p", "q"], np.array([0, 1, 0, 1]))
        write_block(partial / "g", 0, np.ones((2, 2)), np.ones((2, 3)))  # block 1 never written
        group = open_group(partial / "g")
        assert not group.complete and group.text_ids == list("abcd")
        for read in (lambda: group.similarity_block([0], [0]), lambda: group.frame_relevance([0])):
            with pytest.raises(TeacherCacheError, match="incomplete teacher cache group"):
                read()
        (partial / "g" / "text_video" / "c" / "0").unlink()  # its ids are checked all the same
        with pytest.raises(TeacherCacheError, match="text_video: chunk c/0 is missing"):
            open_group(partial / "g")

    def test_reads_out_of_range_are_refused(self, tmp_path):
        group = DenseGroup(build(tmp_path / "teachers.zarr"), in_memory=True)
        for rows, cols in (([10], [0]), ([-1], [0]), ([0], [7]), ([0], [-1])):
            with pytest.raises(TeacherCacheError, match="out of range"):
                group.similarity_block(rows, cols)

    def _consistent_shard_without_chunk(self, group_path: Path) -> None:
        shard = group_path / "similarity" / "c" / "0" / "0"
        data = bytearray(shard.read_bytes())
        index_start = len(data) - (16 * 4 + 4)
        data[index_start : index_start + 16] = struct.pack("<QQ", 2**64 - 1, 2**64 - 1)
        data[-4:] = struct.pack("<I", google_crc32c.value(bytes(data[index_start:-4])))
        shard.write_bytes(bytes(data))

    def _rewrite_strings(self, group_path: Path, name: str, values: list[str]) -> None:
        write_strings(zarr.open_group(group_path, mode="r+"), name, values)

    DAMAGE = {
        "a chunk missing inside a consistent shard": (_consistent_shard_without_chunk, "similarity: shard c/0/0 lacks chunk [0, 0]"),
        "text_video beyond the videos": (lambda self, g: zarr.open_array(g / "text_video", mode="r+").__setitem__(0, 7),
                                         "text_video: column out of range"),
        "a negative text_video": (lambda self, g: zarr.open_array(g / "text_video", mode="r+").__setitem__(3, -1),
                                  "text_video: column out of range"),
        "unsorted text ids": (lambda self, g: self._rewrite_strings(g, "text_ids", [f"c{i:03d}" for i in reversed(range(10))]),
                              "text_ids: not sorted and unique"),
        "duplicate video ids": (lambda self, g: self._rewrite_strings(g, "video_ids", ["v"] * 7),
                                "video_ids: not sorted and unique"),
        "too few ids": (lambda self, g: self._rewrite_strings(g, "video_ids", ["v1", "v2"]), "video_ids: shape [2]"),
        "codecs without a checksum": (lambda self, g: edit_meta(g / "text_video", lambda m: m["codecs"].pop()),
                                      "text_video: codecs ['bytes', 'zstd']"),
        "another compressor": (lambda self, g: edit_meta(g / "text_video", lambda m: m["codecs"].__setitem__(
            1, {"name": "numcodecs.lzma", "configuration": {}})), "codecs ['bytes', 'numcodecs.lzma', 'crc32c']"),
        "another chunk shape": (lambda self, g: edit_meta(g / "similarity", lambda m: m["codecs"][0]["configuration"].update(
            chunk_shape=[1, 4])), "similarity: shards [4, 8] of chunks [1, 4] where the layout says shards [4, 8] of chunks [2, 4]"),
        "chunks that do not divide the shard": (lambda self, g: edit_meta(g / "similarity", lambda m: m["codecs"][0][
            "configuration"].update(chunk_shape=[3, 4])), "does not divide the shard shape"),
        "another data type": (lambda self, g: edit_meta(g / "similarity", lambda m: m.update(data_type="float64")),
                              "similarity: data type float64 where float16 belongs"),
        "another fill value": (lambda self, g: edit_meta(g / "similarity", lambda m: m.update(fill_value=0.0)),
                               "similarity: fill value"),
        "a symbolic link for a shard": (lambda self, g: ((g / "similarity" / "c" / "2" / "0").rename(g / "elsewhere"),
                                                          (g / "similarity" / "c" / "2" / "0").symlink_to(g / "elsewhere")),
                                        "similarity: shard c/2/0 is a link"),
        "array metadata not JSON": (lambda self, g: (g / "text_video" / "zarr.json").write_text("{"),
                                    "text_video: missing or unreadable array metadata"),
        "array metadata deleted": (lambda self, g: (g / "frame_relevance" / "zarr.json").unlink(),
                                   "frame_relevance: missing or unreadable array metadata"),
        "an ids chunk claiming 2*10^8 ids": (lambda self, g: (g / "text_ids" / "c" / "0").write_bytes(
            chunk_file(struct.pack("<I", 200_000_000))), "text_ids: chunk c/0 holds 200000000 ids where 10 are expected"),
        "a chunk that decodes to 64 MB": (lambda self, g: (g / "text_video" / "c" / "0").write_bytes(
            chunk_file(bytes(64 << 20))), "text_video: chunk c/0 declares 67108864 decoded bytes, not 40"),
        "a chunk that is not zstd": (lambda self, g: (g / "text_video" / "c" / "0").write_bytes(b"PK\x03\x04" + bytes(60)),
                                     "text_video: chunk c/0 does not start with a zstd frame"),
    }

    @pytest.mark.parametrize("case", sorted(DAMAGE))
    def test_damage_is_refused_by_the_reader_and_reported_by_verify(self, tmp_path, case):
        damage, message = self.DAMAGE[case]
        group_path = build(tmp_path / "teachers.zarr")
        damage(self, group_path)
        for in_memory in (True, False):
            with pytest.raises(TeacherCacheError) as error:
                open_teacher_caches(tmp_path / "teachers.zarr", in_memory=in_memory)
            assert message in str(error.value) and str(group_path) in str(error.value), str(error.value)
        check = verify_group(group_path)
        assert any(message in p for p in check.problems), check.problems
        one_line_refusal(runner.invoke(app, ["cache", "verify", str(group_path)]), message)

    def test_a_missing_chunk_of_each_array_is_found_at_open(self, tmp_path):
        for array, key in (("similarity", "c/2/0"), ("frame_relevance", "c/0/0"), ("text_ids", "c/0"),
                           ("video_ids", "c/0"), ("text_video", "c/0")):
            group_path = build(tmp_path / array / "teachers.zarr")
            (group_path / array / key).unlink()
            with pytest.raises(TeacherCacheError, match=f"{array}: (shard|chunk) {key} is missing"):
                open_group(group_path)

    SPARSE_DAMAGE = {
        "neighbour column out of range": (lambda g: zarr.open_array(g / "neighbour_videos", mode="r+").__setitem__(
            (2, 1), 7), "neighbour_videos: column out of range 0..6 in row 2"),
        "a video listed twice": (lambda g: zarr.open_array(g / "neighbour_videos", mode="r+").__setitem__(
            (3, slice(None)), 1), "neighbour_videos: a video listed twice in row 3"),
        "a NaN rest mean": (lambda g: zarr.open_array(g / "rest_mean", mode="r+").__setitem__(6, np.nan),
                            "rest_mean: non-finite value"),
        "an infinite neighbour score": (lambda g: zarr.open_array(g / "neighbour_scores", mode="r+").__setitem__(
            (0, 0), np.inf), "neighbour_scores: non-finite value"),
        "a deleted own_score chunk": (lambda g: (g / "own_score" / "c" / "1").unlink(), "own_score: chunk c/1 is missing"),
        "an unknown fill rule": (lambda g: edit_attributes(g, lambda a: a["sparse"].update(fill="zero")), "fill rule 'zero'"),
        "top_k beyond the videos": (lambda g: edit_attributes(g, lambda a: a["sparse"].update(top_k=70)), "top_k 70 outside 1..7"),
        "top_k as a string": (lambda g: edit_attributes(g, lambda a: a["sparse"].update(top_k="3")), "sparse.top_k"),
    }

    @pytest.mark.parametrize("case", sorted(SPARSE_DAMAGE))
    def test_damaged_sparse_groups_are_refused(self, tmp_path, case):
        damage, message = self.SPARSE_DAMAGE[case]
        dense = build(tmp_path / "teachers.zarr")
        group_path = sparsify(dense, tmp_path / "sparse.zarr", top_k=3, block_texts=4)
        damage(group_path)
        with pytest.raises(TeacherCacheError) as error:
            open_group(group_path)
        assert message in str(error.value), str(error.value)
        assert any(message in p for p in verify_group(group_path).problems)


# ---- resource bounds --------------------------------------------------------------------------------------


class TestResourceBounds:
    @pytest.mark.parametrize("change, field", [
        ({"n_texts": 10**10}, "n_texts"), ({"n_videos": 10**9}, "n_videos"), ({"frames_per_video": 10**6}, "frames_per_video"),
        ({"block_texts": -4}, "block_texts"), ({"block_texts": 0}, "block_texts"), ({"chunk_texts": 0}, "chunk_texts"),
        ({"block_texts": 5}, "not a whole number"), ({"block_texts": 40}, "not a whole number"),
        ({"chunk_texts": 20, "block_texts": 20}, "exceed"), ({"chunk_videos": 8}, "exceed"),
        ({"block_texts": True}, "block_texts"), ({"n_texts": "10"}, "n_texts"), ({"n_texts": 10.0}, "n_texts"),
        ({"extra": 1}, "extra"),
        ({"n_texts": 10**8, "n_videos": 10**6, "block_texts": 512, "chunk_texts": 512, "chunk_videos": 10**6}, "a chunk"),
    ])
    def test_layouts_out_of_range_are_refused(self, change, field):
        layout = {"n_texts": 10, "n_videos": 7, "frames_per_video": 3, "block_texts": 4, "chunk_texts": 2,
                  "chunk_videos": 4}
        LayoutAttributes.model_validate(layout)
        with pytest.raises(ValidationError, match=field):
            LayoutAttributes.model_validate(layout | change)

    def test_the_dense_block_bound_applies_to_dense_groups_only(self, tmp_path):
        """A dense block (every video of block_texts rows) must fit 4 GiB; a sparse group's rows hold K
        scores, so the same layout is fine for it (candidate groups of millions of videos)."""
        huge = {"n_texts": 10**6, "n_videos": 10**6, "frames_per_video": 3, "block_texts": 2048,
                "chunk_texts": 32, "chunk_videos": 1000}
        assert "a block" in LayoutAttributes.model_validate(huge).dense_block_problem()
        attrs = json.loads((build(tmp_path / "teachers.zarr") / "zarr.json").read_text())["attributes"]
        with pytest.raises(TeacherCacheError, match="a block"):
            parse_group_attributes(attrs | {"layout": huge}, "dense")
        sparse = {"top_k": 32, "dense_fingerprint": attrs["fingerprint"], "fill": "rest_mean"}
        parse_group_attributes(attrs | {"layout": huge, "sparse": sparse}, "sparse")

    def test_plan_layout_never_plans_what_readers_refuse(self):
        big = plan_layout(10**6, 500_000, 12, block_texts=2048, chunk_texts=32, block_videos=None,
                          memory_budget_mb=1 << 20)
        assert big.block_texts * (500_000 + 12) * 4 <= 4 << 30
        with pytest.raises(TeacherCacheError, match="cannot lay out"):
            plan_layout(10, 2 * 10**8, 12, block_texts=2048, chunk_texts=32, block_videos=None, memory_budget_mb=1024)

    def test_a_negative_block_texts_fails_verify_export_and_the_reader(self, tmp_path):
        group_path = build(tmp_path / "teachers.zarr")
        edit_attributes(group_path, lambda a: a["layout"].update(block_texts=-4))
        assert any("layout.block_texts" in p for p in verify_group(group_path).problems)
        with pytest.raises(TeacherCacheError, match="layout.block_texts"):
            export_hdf5(group_path, tmp_path / "out.h5")
        assert not (tmp_path / "out.h5").exists()
        with pytest.raises(TeacherCacheError, match="layout.block_texts"):
            open_group(group_path)

    def test_chunk_presence_of_10_to_the_10_rows_stops_after_a_few_problems(self, tmp_path):
        group_path = build(tmp_path / "teachers.zarr")
        meta = json.loads((group_path / "similarity" / "zarr.json").read_text())
        started = time.monotonic()
        for shape in ([10**10, 7], [10**14, 10**14], [10**10, 0]):
            problems = check_chunk_presence(group_path / "similarity", meta | {"shape": shape})
            assert len(problems) <= 6
        assert time.monotonic() - started < 5
        assert check_chunk_presence(group_path / "similarity", meta | {"shape": [10**20, 7]})[0].startswith(
            "similarity: shape")  # beyond any dimension: refused by the parser

    def test_a_2kb_zarr_json_declaring_10_to_the_8_rows_costs_little(self, tmp_path):
        """A group whose every document declares 10^8 captions (within the limits, so the checks have
        to bound themselves): verify and pull run in a process limited to 1.5 GiB of address space."""
        group_path = build(tmp_path / "teachers.zarr")
        rows = 10**8
        edit_attributes(group_path, lambda a: a["layout"].update(n_texts=rows, block_texts=4096, chunk_texts=2))
        def grow(meta, sharded):
            meta["shape"][0] = rows
            meta["chunk_grid"]["configuration"]["chunk_shape"][0] = 4096 if sharded else rows

        for array in ("similarity", "frame_relevance", "text_ids", "text_video"):
            edit_meta(group_path / array, lambda meta, a=array: grow(meta, a in ("similarity", "frame_relevance")))
        url = tmp_path / "remote"
        fingerprint = attributes(group_path)["fingerprint"]
        shutil.copytree(group_path, url / fingerprint)
        files = {p.relative_to(url / fingerprint).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
                 for p in (url / fingerprint).rglob("*") if p.is_file()}
        (url / fingerprint / REMOTE_INDEX).write_text(json.dumps(
            {"files": files, "fingerprint": fingerprint, "format": 1, "kind": "xpool", "name": "huge", "texts": rows,
             "videos": 7}))
        script = textwrap.dedent(f"""
            import resource, sys, time
            resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))
            from typer.testing import CliRunner
            from teachclip.cli import app
            started = time.monotonic()
            for args in (["cache", "verify", {str(group_path)!r}], ["cache", "info", {str(group_path)!r}],
                         ["cache", "pull", {str(url / fingerprint)!r}, {str(tmp_path / "out.zarr")!r}]):
                result = CliRunner().invoke(app, args)
                print(args[1], result.exit_code, type(result.exception).__name__, repr(result.output[-300:]))
            print("seconds", time.monotonic() - started)
        """)
        env = os.environ | {"PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
        assert lines["verify"].startswith("1 SystemExit") and "stopped after" in lines["verify"], lines
        assert lines["info"].startswith("0 NoneType")
        assert lines["pull"].startswith("1 SystemExit") and "Traceback" not in lines["pull"], lines
        assert float(lines["seconds"]) < 60
        assert not partial_path(tmp_path / "out.zarr").exists()

    def test_shard_indexes_are_read_from_the_end(self, tmp_path, monkeypatch):
        """A shard with 3 GB of (sparse) padding before its chunks: the check reads its index and
        chunk headers only."""
        group_path = build(tmp_path / "teachers.zarr")
        shard = group_path / "similarity" / "c" / "0" / "0"
        data = shard.read_bytes()
        pad = 3 << 30
        index_size = 16 * 4 + 4
        entries = np.frombuffer(data[-index_size:-4], dtype="<u8").reshape(-1, 2).copy()
        entries[:, 0] += pad
        index = entries.tobytes()
        with open(shard, "wb") as handle:
            handle.seek(pad)
            handle.write(data[:-index_size] + index + struct.pack("<I", google_crc32c.value(index)))
        monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self} read whole"))
        meta = json.loads((group_path / "similarity" / "zarr.json").read_text())
        started = time.monotonic()
        assert check_chunk_presence(group_path / "similarity", meta) == []
        assert time.monotonic() - started < 5

    def test_problem_lists_are_capped(self, tmp_path):
        group_path = build(tmp_path / "teachers.zarr", n_texts=64, block_texts=2, chunk_texts=2)
        for shard in (group_path / "similarity" / "c").iterdir():
            shutil.rmtree(shard)
        check = verify_group(group_path)
        assert 0 < len(check.problems) <= 20 and any("stopped after" in p for p in check.problems)


# ---- content hash ---------------------------------------------------------------------------------------


class TestContentHash:
    def test_recorded_deterministic_and_independent_of_chunking(self, tmp_path):
        one = build(tmp_path / "one.zarr")
        two = build(tmp_path / "two.zarr")
        rechunked = build(tmp_path / "three.zarr", block_texts=10, chunk_texts=5, chunk_videos=7)
        other = build(tmp_path / "four.zarr", seed=1)
        assert sha256_tree(one) == sha256_tree(two)  # the same inputs give the same bytes, hash included
        hashes = [attributes(g).get("content_sha256") for g in (one, rechunked, other)]
        assert hashes[0] and len(hashes[0]) == 64
        assert hashes[0] == hashes[1]  # the same values, other chunks: the same content hash
        assert sha256_tree(one) != sha256_tree(rechunked)
        assert hashes[2] != hashes[0]
        assert verify_group(one).content_sha256 == hashes[0]

    def test_verify_proves_the_values_the_fingerprint_cannot(self, tmp_path):
        group_path = build(tmp_path / "teachers.zarr")
        array = zarr.open_array(group_path / "similarity", mode="r+")
        array[3, 3] = array[3, 3] + np.float16(1)  # plausible numbers, valid checksums, the same fingerprint
        problems = verify_group(group_path).problems
        assert len(problems) == 1 and "the values hash to" in problems[0]
        edit_attributes(group_path, lambda a: a.update(content_sha256="0" * 64))
        assert "content hash 0000" in verify_group(group_path).problems[0]

    def test_groups_without_a_content_hash_are_accepted_and_said_to_be(self, tmp_path):
        group_path = build(tmp_path / "teachers.zarr")
        edit_attributes(group_path, lambda a: a.pop("content_sha256"))
        check = verify_group(group_path)
        assert check.ok and check.notes and "no content hash" in check.notes[0]
        result = runner.invoke(app, ["cache", "verify", str(group_path)])
        assert result.exit_code == 0 and "no content hash" in result.output
        assert "(no content hash" in runner.invoke(app, ["cache", "info", str(group_path)]).output
        assert cache_info(group_path)["groups"][0]["content_sha256"] is None
        assert open_group(group_path).content_sha256 is None

    def test_a_group_without_a_hash_travels_unchanged_and_gains_one_by_export_import(self, tmp_path):
        store = tmp_path / "teachers.zarr"
        group_path = build(store)
        recorded = attributes(group_path)["content_sha256"]
        edit_attributes(group_path, lambda a: a.pop("content_sha256"))
        push(store, str(tmp_path / "remote"))
        pull(str(tmp_path / "remote"), tmp_path / "pulled.zarr")
        assert sha256_tree(tmp_path / "pulled.zarr" / "teacher") == sha256_tree(group_path)  # every byte kept
        export_hdf5(store, tmp_path / "old.h5")
        import_hdf5(tmp_path / "old.h5", tmp_path / "imported.zarr")
        assert attributes(tmp_path / "imported.zarr" / "teacher")["content_sha256"] == recorded

    def test_info_ls_and_sparse_groups_show_it(self, tmp_path):
        store = tmp_path / "teachers.zarr"
        dense = build(store, "a")
        sparse_group = sparsify(dense, store, top_k=3, name="s", block_texts=4)
        hashes = {g: attributes(store / g)["content_sha256"] for g in ("a", "s")}
        assert hashes["a"] != hashes["s"] and verify_group(sparse_group).content_sha256 == hashes["s"]
        text = runner.invoke(app, ["cache", "info", str(store)]).output
        assert f"content     {hashes['a']}" in text and f"content     {hashes['s']}" in text
        push(store, str(tmp_path / "remote"))
        listed = json.loads(runner.invoke(app, ["cache", "ls", str(tmp_path / "remote"), "--json"]).output)
        assert sorted(e["content_sha256"] for e in listed) == sorted(hashes.values())
        with h5py.File(export_hdf5(store / "a", tmp_path / "a.h5") and tmp_path / "a.h5", "r") as file:
            assert json.loads(file["a"].attrs[HDF5_ATTRIBUTES])["content_sha256"] == hashes["a"]

    def test_a_group_with_holes_is_never_completed(self, tmp_path):
        store = tmp_path / "teachers.zarr"
        partial = partial_path(store)
        identity = TeacherIdentity("xpool", {}, None, 1, False, "", "", "f", "m")
        create_group(partial, "g", identity, CacheLayout(4, 2, 1, 2, 2, 2), list("abcd"), ["p", "q"], np.array([0, 1, 0, 1]))
        write_block(partial / "g", 0, np.ones((2, 2)), None)  # block 1 never written
        with pytest.raises(TeacherCacheError, match="cannot be completed: similarity: shard c/1/0 is missing"):
            publish_groups(partial, store, ["g"])
        assert not store.exists() and attributes(partial / "g")["complete"] is False


# ---- tracebacks: malformed input ends in one line --------------------------------------------------------


MALFORMED_GROUP_DOCUMENTS = {
    "not UTF-8": b"\xff\xfe\x00{",
    "not JSON": b"{\"attributes\": ",
    "a JSON list": b"[1, 2, 3]",
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
}

MALFORMED_ATTRIBUTES = {
    "layout as a list": lambda a: a.update(layout=[1, 2]),
    "layout values as strings": lambda a: a["layout"].update(n_texts="10"),
    "complete as a string": lambda a: a.update(complete="yes"),
    "kind missing": lambda a: a.pop("kind"),
    "versions as a list": lambda a: a.update(versions=["x"]),
    "schema_version 2": lambda a: a.update(schema_version=2),
    "sparse as a string": lambda a: a.update(sparse="yes"),
    "an unknown key": lambda a: a.update(payload="x"),
}


class TestTracebacks:
    @pytest.mark.parametrize("case", sorted(MALFORMED_GROUP_DOCUMENTS) + sorted(MALFORMED_ATTRIBUTES))
    @pytest.mark.parametrize("command", ["verify", "info", "export"])
    def test_a_malformed_group_document_is_one_line(self, tmp_path, case, command):
        store = tmp_path / "teachers.zarr"
        group_path = build(store, "a")
        build(store, "b", seed=1)
        if case in MALFORMED_GROUP_DOCUMENTS:
            (group_path / "zarr.json").write_bytes(MALFORMED_GROUP_DOCUMENTS[case])
        else:
            edit_attributes(group_path, MALFORMED_ATTRIBUTES[case])
        args = ["cache", command, str(store)] + ([str(tmp_path / "out.h5")] if command == "export" else [])
        output = one_line_refusal(runner.invoke(app, args), str(group_path / "zarr.json"))
        if command != "export":  # the intact group beside it is still described / verified
            assert str(store / "b") in output or "  b: xpool" in output
        with pytest.raises(TeacherCacheError):
            open_teacher_caches(store)

    def test_every_refusal_is_a_teachclip_error(self):
        assert issubclass(TeacherCacheError, TeachclipError) and issubclass(SharingError, TeacherCacheError)

    def test_ls_and_pull_of_a_location_that_cannot_be_opened(self, tmp_path):
        one_line_refusal(runner.invoke(app, ["cache", "ls", "nosuchprotocol://x/y"]), "cannot open this location")
        one_line_refusal(runner.invoke(app, ["cache", "pull", "nosuchprotocol://x", str(tmp_path / "o.zarr")]),
                         "cannot open this location")
        assert list_remote(str(tmp_path / "absent")) == []

    def test_info_of_a_malformed_group_in_progress(self, tmp_path):
        store = tmp_path / "teachers.zarr"
        build(store, "a")
        create_group(partial_path(store), "b", TeacherIdentity("xpool", {}, None, 1, False, "", "", "f", "m"),
                     CacheLayout(2, 2, 1, 2, 2, 2), ["x", "y"], ["p", "q"], np.array([0, 1]))
        (partial_path(store) / "b" / "zarr.json").write_bytes(b"\x00\x01")
        one_line_refusal(runner.invoke(app, ["cache", "info", str(store)]), "b (in progress): UNREADABLE")
        result = runner.invoke(app, ["cache", "info", str(store), "--json"])
        assert result.exit_code == 1 and json.loads(result.stdout)["in_progress"][0]["error"]

    def test_verify_store_reports_each_group(self, tmp_path):
        store = tmp_path / "teachers.zarr"
        build(store, "a")
        build(store, "b", seed=1)
        (store / "a" / "zarr.json").write_text("[]")
        checks = {c.path.name: c for c in verify_store(store)}
        assert checks["b"].ok and not checks["a"].ok and "not an object" in checks["a"].problems[0]


def test_id_arrays_are_read_with_memory_that_follows_the_file_not_the_bound(tmp_path):
    # the id reader bounds a chunk by 4 KB per id (MAX_ID_LENGTH); reading "at most the bound" used to
    # allocate the bound itself: 4 GB for a million captions, more than RAM at WebVid-10M
    import tracemalloc

    from teachclip.stores.teacher_cache.checks import read_ids
    from teachclip.stores.zarr_io import write_strings

    count = 20_000
    ids = [f"video{i:07d}_caption" for i in range(count)]
    write_strings(zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=3), "text_ids", ids)
    tracemalloc.start()
    try:
        assert read_ids(tmp_path / "g.zarr" / "text_ids", count) == ids
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 400 * count  # the ids and their decoding (~250 B each); the bound alone is 80 MB
