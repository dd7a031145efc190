"""Manifest validation (every error load_manifest raises) and the manifest fingerprint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from teachclip.core.manifest import ManifestError, load_manifest, write_manifest

VIDEOS = "video_id,path,split\nv1,videos/v1.mp4,train\nv2,videos/v2.mp4,test\n"
CAPTIONS = "caption_id,video_id,text\nc1,v1,a red circle\nc2,v1,a crimson disc\nc3,v2,a blue square\n"


def make_manifest(root: Path, videos: str = VIDEOS, captions: str = CAPTIONS, files: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "videos.csv").write_text(videos, encoding="utf-8")
    (root / "captions.csv").write_text(captions, encoding="utf-8")
    if files:
        (root / "videos").mkdir(exist_ok=True)
        for name in ("v1", "v2"):
            (root / "videos" / f"{name}.mp4").write_bytes(name.encode() * 10)
    return root


def load_error(root: Path) -> str:
    with pytest.raises(ManifestError) as info:
        load_manifest(root)
    return str(info.value)


def test_valid_manifest_loads_with_resolved_paths_and_helpers(tmp_path):
    manifest = load_manifest(make_manifest(tmp_path / "m"))
    assert [v.video_id for v in manifest.videos] == ["v1", "v2"]
    assert manifest.video("v1").path == (tmp_path / "m" / "videos" / "v1.mp4").resolve()
    assert [v.video_id for v in manifest.videos_in("test")] == ["v2"]
    assert [c.caption_id for c in manifest.captions_in("train")] == ["c1", "c2"]
    assert {k: [c.caption_id for c in v] for k, v in manifest.captions_by_video().items()} == {
        "v1": ["c1", "c2"],
        "v2": ["c3"],
    }


def test_absolute_paths_are_kept(tmp_path):
    absolute = tmp_path / "elsewhere.mp4"
    root = make_manifest(
        tmp_path / "m", videos=f"video_id,path,split\nv1,{absolute},train\nv2,videos/v2.mp4,test\n"
    )
    assert load_manifest(root).video("v1").path == absolute


def test_missing_directory(tmp_path):
    assert "manifest directory not found" in load_error(tmp_path / "nope")


@pytest.mark.parametrize("name", ["videos.csv", "captions.csv"])
def test_missing_file(tmp_path, name):
    root = make_manifest(tmp_path / "m")
    (root / name).unlink()
    message = load_error(root)
    assert name in message and "file not found" in message


def test_missing_video_columns(tmp_path):
    root = make_manifest(tmp_path / "m", videos="video_id,file\nv1,a.mp4\n")
    message = load_error(root)
    assert "videos.csv" in message and "missing column(s) path, split" in message


def test_missing_caption_columns(tmp_path):
    root = make_manifest(tmp_path / "m", captions="caption_id,video_id,sentence\nc1,v1,x\n")
    message = load_error(root)
    assert "captions.csv" in message and "missing column(s) text" in message


def test_empty_file_reports_empty_header(tmp_path):
    root = make_manifest(tmp_path / "m", videos="")
    assert "header is empty" in load_error(root)


def test_duplicate_video_id_names_both_lines(tmp_path):
    videos = VIDEOS + "v1,videos/other.mp4,train\n"
    message = load_error(make_manifest(tmp_path / "m", videos=videos))
    assert "videos.csv:4" in message and "duplicate video_id 'v1'" in message and "first on line 2" in message


def test_empty_video_id(tmp_path):
    message = load_error(make_manifest(tmp_path / "m", videos=VIDEOS + ",videos/x.mp4,train\n"))
    assert "videos.csv:4" in message and "empty video_id" in message


def test_empty_path(tmp_path):
    message = load_error(make_manifest(tmp_path / "m", videos=VIDEOS + "v3,,train\n"))
    assert "videos.csv:4" in message and "empty path for video 'v3'" in message


def test_unknown_split(tmp_path):
    message = load_error(make_manifest(tmp_path / "m", videos=VIDEOS + "v3,videos/v3.mp4,training\n"))
    assert (
        "videos.csv:4" in message and "unknown split 'training'" in message and "train, val, test" in message
    )


def test_split_restriction(tmp_path):
    root = make_manifest(tmp_path / "m")
    with pytest.raises(ManifestError, match="unknown split 'test'"):
        load_manifest(root, splits=("train",))


def test_no_videos(tmp_path):
    message = load_error(
        make_manifest(tmp_path / "m", videos="video_id,path,split\n", captions="caption_id,video_id,text\n")
    )
    assert "videos.csv" in message and "no videos" in message


def test_duplicate_caption_id(tmp_path):
    message = load_error(make_manifest(tmp_path / "m", captions=CAPTIONS + "c2,v2,again\n"))
    assert (
        "captions.csv:5" in message
        and "duplicate caption_id 'c2'" in message
        and "first on line 3" in message
    )


def test_empty_caption_id(tmp_path):
    message = load_error(make_manifest(tmp_path / "m", captions=CAPTIONS + ",v2,text\n"))
    assert "captions.csv:5" in message and "empty caption_id" in message


def test_caption_of_unknown_video(tmp_path):
    message = load_error(make_manifest(tmp_path / "m", captions=CAPTIONS + "c4,v9,a star\n"))
    assert "captions.csv:5" in message and "unknown video 'v9'" in message


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text(tmp_path, text):
    message = load_error(make_manifest(tmp_path / "m", captions=CAPTIONS + f"c4,v2,{text}\n"))
    assert "captions.csv:5" in message and "empty text for caption 'c4'" in message


def test_not_utf8(tmp_path):
    root = make_manifest(tmp_path / "m")
    (root / "captions.csv").write_bytes(b"caption_id,video_id,text\nc1,v1,caf\xe9\n")
    assert "not UTF-8" in load_error(root)


def test_byte_order_mark_is_accepted(tmp_path):
    root = make_manifest(tmp_path / "m")
    (root / "videos.csv").write_bytes(b"\xef\xbb\xbf" + VIDEOS.encode())
    assert [v.video_id for v in load_manifest(root).videos] == ["v1", "v2"]


def test_malformed_csv(tmp_path):
    root = make_manifest(tmp_path / "m", captions=CAPTIONS + "c4,v2," + "x" * 200_000 + "\n")
    message = load_error(root)
    assert "captions.csv" in message and "malformed CSV" in message


def test_quoted_fields_with_commas_and_newlines(tmp_path):
    captions = 'caption_id,video_id,text\nc1,v1,"a red, round circle"\nc2,v2,"two\nlines"\n'
    manifest = load_manifest(make_manifest(tmp_path / "m", captions=captions))
    assert [c.text for c in manifest.captions] == ["a red, round circle", "two\nlines"]


def test_write_manifest_round_trip(tmp_path):
    root = write_manifest(
        tmp_path / "w",
        [("a", "videos/a.mp4", "train"), ("b", "/abs/b.mp4", "val")],
        [("a0", "a", 'says "hi", then leaves'), ("b0", "b", "plain")],
    )
    manifest = load_manifest(root)
    assert [(v.video_id, v.split) for v in manifest.videos] == [("a", "train"), ("b", "val")]
    assert manifest.video("b").path == Path("/abs/b.mp4")
    assert manifest.captions[0].text == 'says "hi", then leaves'


def test_write_manifest_validates(tmp_path):
    with pytest.raises(ManifestError, match="unknown video 'z'"):
        write_manifest(tmp_path / "w", [("a", "a.mp4", "train")], [("c", "z", "text")])


# ---- fingerprint --------------------------------------------------------------------------------


def reversed_rows(text: str) -> str:
    header, *rows = text.strip("\n").split("\n")
    return "\n".join([header, *reversed(rows)]) + "\n"


def test_fingerprint_is_stable_under_row_reordering(tmp_path):
    first = load_manifest(make_manifest(tmp_path / "a")).fingerprint()
    second = load_manifest(
        make_manifest(tmp_path / "b", videos=reversed_rows(VIDEOS), captions=reversed_rows(CAPTIONS))
    ).fingerprint()
    assert first == second
    assert len(first) == 64


def test_fingerprint_does_not_depend_on_location(tmp_path):
    assert (
        load_manifest(make_manifest(tmp_path / "a")).fingerprint()
        == load_manifest(make_manifest(tmp_path / "deeper" / "b")).fingerprint()
    )


def test_fingerprint_changes_with_caption_text(tmp_path):
    base = load_manifest(make_manifest(tmp_path / "a")).fingerprint()
    changed = load_manifest(
        make_manifest(tmp_path / "b", captions=CAPTIONS.replace("a blue square", "a blue box"))
    ).fingerprint()
    assert base != changed


def test_fingerprint_changes_with_split(tmp_path):
    base = load_manifest(make_manifest(tmp_path / "a")).fingerprint()
    changed = load_manifest(make_manifest(tmp_path / "b", videos=VIDEOS.replace("v2.mp4,test", "v2.mp4,val")))
    assert base != changed.fingerprint()


def test_fingerprint_changes_with_file_content(tmp_path):
    root = make_manifest(tmp_path / "a")
    manifest = load_manifest(root)
    before, before_stat = manifest.fingerprint("content"), manifest.fingerprint("stat")
    path = root / "videos" / "v1.mp4"
    stat = path.stat()
    path.write_bytes(b"X" * stat.st_size)  # same size ...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... same mtime: only the bytes differ
    assert manifest.fingerprint("content") != before
    assert manifest.fingerprint("stat") == before_stat  # the documented blind spot of "stat" mode


def test_stat_fingerprint_follows_mtime(tmp_path):
    root = make_manifest(tmp_path / "a")
    manifest = load_manifest(root)
    before = manifest.fingerprint("stat")
    path = root / "videos" / "v1.mp4"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    assert manifest.fingerprint("stat") != before


def test_fingerprint_marks_missing_files_without_failing(tmp_path):
    root = make_manifest(tmp_path / "a")
    manifest = load_manifest(root)
    before = manifest.fingerprint()
    (root / "videos" / "v2.mp4").unlink()
    after = manifest.fingerprint()
    assert after != before
    (root / "videos" / "v2.mp4").mkdir()  # a directory where a file should be
    assert manifest.fingerprint() not in (before, after)


def test_fingerprint_rejects_unknown_mode(tmp_path):
    manifest = load_manifest(make_manifest(tmp_path / "a"))
    with pytest.raises(ValueError, match="unknown fingerprint mode"):
        manifest.fingerprint("fast")


# ---- columns: a manifest of millions of rows without an object per row ---------------------------------


def shuffled_manifest(root: Path, n: int = 300, seed: int = 0) -> Path:
    """``n`` videos in three splits (some clipped, some files missing) and 1-3 captions each, rows in a
    random order (so the fingerprint cannot stream them as they are)."""
    import random

    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "videos").mkdir()
    videos, captions = [], []
    for i in range(n):
        video_id = f"vid-{rng.randrange(10**6):06d}-{i}" + ("é" if i % 7 == 0 else "")
        if i % 3:
            (root / "videos" / f"{i}.mp4").write_bytes(os.urandom(16))
        clip = (f"{i % 5}", f"{i % 5 + 3.5}") if i % 4 == 0 else ("", "")
        videos.append((video_id, f"videos/{i}.mp4", ("train", "val", "test")[i % 3], *clip))
        for c in range(1 + i % 3):
            captions.append((f"cap-{rng.randrange(10**6)}-{i}-{c}", video_id, f"text {i}, \"{c}\" ünï"))
    rng.shuffle(videos)
    rng.shuffle(captions)
    import csv

    with open(root / "videos.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("video_id", "path", "split", "start", "end"), *videos])
    with open(root / "captions.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("caption_id", "video_id", "text"), *captions])
    return root


def reference_fingerprint(manifest, mode: str) -> str:
    """The manifest fingerprint's definition, written out as one document (what stores recorded)."""
    from teachclip.core.fingerprint import fingerprint
    from teachclip.core.manifest import MANIFEST_FINGERPRINT_VERSION, _file_identity

    entries = []
    for video in sorted(manifest.videos, key=lambda v: v.video_id):
        entry = [video.video_id, video.split, _file_identity(video.path, mode)]
        if video.start is not None or video.end is not None:
            entry.append([video.start, video.end])
        entries.append(entry)
    captions = sorted([c.caption_id, c.video_id, c.text] for c in manifest.captions)
    return fingerprint("manifest", {"version": MANIFEST_FINGERPRINT_VERSION, "videos": entries, "captions": captions})


@pytest.mark.parametrize("ordered", [False, True])
def test_kept_splits_hold_objects_and_stream_the_rest_with_the_same_results(tmp_path, ordered):
    root = shuffled_manifest(tmp_path / "m")
    if ordered:  # sorted files: the fingerprint streams them without sorting anything
        full = load_manifest(root)
        write_manifest(tmp_path / "sorted", sorted((v.video_id, str(v.path), v.split) for v in full.videos),
                       sorted((c.caption_id, c.video_id, c.text) for c in full.captions))
        root = tmp_path / "sorted"
    full, test_only = load_manifest(root), load_manifest(root, keep=["test"])
    assert test_only.index().videos_sorted == test_only.index().captions_sorted == ordered
    assert {v.split for v in test_only.videos} == {"test"} and test_only.videos_in("test") == full.videos_in("test")
    assert test_only.captions_in("test") == full.captions_in("test")
    for mode in ("stat", "content"):
        assert full.fingerprint(mode) == test_only.fingerprint(mode) == reference_fingerprint(full, mode)
    for split in ("train", "val", "test"):
        a, b = full.split_columns(split), test_only.split_columns(split)
        assert a.video_ids == b.video_ids == sorted(v.video_id for v in full.videos_in(split))
        assert a.caption_ids == b.caption_ids == [c.caption_id for c in full.captions_in(split)]
        assert a.texts == b.texts == [c.text for c in full.captions_in(split)]
        assert a.caption_video.tolist() == b.caption_video.tolist()
        assert [a.video_ids[i] for i in a.caption_video] == [c.video_id for c in full.captions_in(split)]
    with pytest.raises(ManifestError, match="split 'train' was not loaded"):
        test_only.videos_in("train")
    with pytest.raises(ManifestError, match="not loaded"):
        test_only.captions_in(None)


def test_checks_hold_for_rows_far_apart_in_unsorted_files(tmp_path):
    root = shuffled_manifest(tmp_path / "m", n=200)
    lines = (root / "captions.csv").read_text().splitlines()
    first_id = lines[5].split(",")[0]
    lines.append(f"{first_id},{lines[9].split(',')[1]},again")
    lines.append("c-new,nobody,who")
    (root / "captions.csv").write_text("\n".join(lines) + "\n")
    error = load_error(root)
    # the unknown video is on the last line, the duplicate before it: a row's own checks come first, then
    # the relations, each reported at its line as the row-by-row reader did
    assert f"captions.csv:{len(lines)}: caption 'c-new' refers to unknown video 'nobody'" in error
    lines.pop()
    (root / "captions.csv").write_text("\n".join(lines) + "\n")
    assert f"captions.csv:{len(lines)}: duplicate caption_id {first_id!r} (first on line 6)" in load_error(root)


def test_an_id_with_a_nul_character_is_refused(tmp_path):
    make_manifest(tmp_path / "m", videos="video_id,path,split\nv\x001,videos/v1.mp4,train\n", captions="caption_id,video_id,text\n")
    assert "contains a NUL character" in load_error(tmp_path / "m")


def test_loading_keeps_no_object_per_row_of_other_splits(tmp_path, monkeypatch):
    """The objects of a 20,000-video manifest loaded for its 50 test videos: the columns left over (the
    id index) cost a few bytes per row, not the ~500 of a Video and a Caption; while reading, objects
    exist for one chunk of rows at a time."""
    import tracemalloc

    import teachclip.core.manifest as manifest_module

    monkeypatch.setattr(manifest_module, "_CHUNK_ROWS", 500)
    root = tmp_path / "m"
    root.mkdir()
    n = 20_000
    with open(root / "videos.csv", "w") as videos, open(root / "captions.csv", "w") as captions:
        videos.write("video_id,path,split\n")
        captions.write("caption_id,video_id,text\n")
        for i in range(n):
            videos.write(f"video{i:07d},videos/video{i:07d}.mp4,{'test' if i < 50 else 'train'}\n")
            captions.write(f"video{i:07d}#0,video{i:07d},a person is doing something number {i}\n")
    tracemalloc.start()
    manifest = load_manifest(root, keep=["test"])
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(manifest.videos) == 50
    assert held / n < 30, f"{held / n:.0f} bytes per row held"  # the sorted ids (12) and their split (1)
    assert peak / n < 80, f"{peak / n:.0f} bytes per row at the peak"  # the id columns while checking
