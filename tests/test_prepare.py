"""`teach prepare`: importing a user's CSV/JSONL of captioned videos into a manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from teachclip.cli import app
from teachclip.core.manifest import load_manifest
from teachclip.stages.prepare import PrepareError, prepare_csv


def make_videos(root: Path, *names: str) -> Path:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not really a video: prepare does not decode")
    return root


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def prepare_error(source: Path, out: Path, **kwargs) -> str:
    with pytest.raises(PrepareError) as info:
        prepare_csv(source, out, **kwargs)
    return str(info.value)


def test_csv_paths_relative_to_the_input_file(tmp_path):
    data = make_videos(tmp_path / "data", "clips/a.mp4", "clips/b.avi")
    source = write(
        data / "list.csv",
        "video,caption,split\n"
        "clips/a.mp4,a dog runs,train\n"
        "clips/a.mp4,a puppy is running,train\n"
        "clips/b.avi,a cat sleeps,test\n",
    )
    result = prepare_csv(source, tmp_path / "manifest")
    assert (result.videos, result.captions, result.missing_files) == (2, 3, [])

    manifest = load_manifest(tmp_path / "manifest")
    assert [(v.video_id, v.split) for v in manifest.videos] == [("clips/a", "train"), ("clips/b", "test")]
    assert manifest.video("clips/a").path.resolve() == (data / "clips" / "a.mp4").resolve()
    assert [(c.caption_id, c.video_id, c.text) for c in manifest.captions] == [
        ("clips/a#0", "clips/a", "a dog runs"),
        ("clips/a#1", "clips/a", "a puppy is running"),
        ("clips/b#0", "clips/b", "a cat sleeps"),
    ]
    # stored relative to the manifest directory, so data and manifest can move together
    assert "../data/clips/a.mp4" in (tmp_path / "manifest" / "videos.csv").read_text()


def test_csv_with_ids_videos_root_and_extra_columns(tmp_path):
    root = make_videos(tmp_path / "media", "x.mp4", "y.mp4")
    source = write(
        tmp_path / "lists" / "l.csv",
        "video_id,video,caption_id,caption,split,duration\n"
        "vid-x,x.mp4,cap1,first,train,10\n"
        "vid-y,y.mp4,cap2,second,val,12\n",
    )
    prepare_csv(source, tmp_path / "m", videos_root=root)
    manifest = load_manifest(tmp_path / "m")
    assert [(v.video_id, v.path.resolve(), v.split) for v in manifest.videos] == [
        ("vid-x", (root / "x.mp4").resolve(), "train"),
        ("vid-y", (root / "y.mp4").resolve(), "val"),
    ]
    assert [c.caption_id for c in manifest.captions] == ["cap1", "cap2"]


def test_bare_video_ids_are_looked_up_in_the_videos_root(tmp_path):
    root = make_videos(tmp_path / "media", "video7.mp4", "video8.webm", "notes.txt")
    source = write(
        tmp_path / "l.csv", "video_id,caption,split\nvideo7,a man sings,test\nvideo8,a car,train\n"
    )
    prepare_csv(source, tmp_path / "m", videos_root=root)
    manifest = load_manifest(tmp_path / "m")
    assert manifest.video("video8").path.resolve() == (root / "video8.webm").resolve()


def test_absolute_paths_stay_absolute(tmp_path):
    root = make_videos(tmp_path / "media", "a.mp4")
    absolute = root / "a.mp4"
    source = write(tmp_path / "l.csv", f"video,caption,split\n{absolute},text,train\n")
    prepare_csv(source, tmp_path / "m")
    assert f"a,{absolute},train" in (tmp_path / "m" / "videos.csv").read_text()


def test_missing_files_are_reported_not_refused(tmp_path):
    make_videos(tmp_path, "here.mp4")
    source = write(tmp_path / "l.csv", "video,caption,split\nhere.mp4,a,train\ngone.mp4,b,test\n")
    result = prepare_csv(source, tmp_path / "m")
    assert result.missing_files == ["../gone.mp4"]
    assert len(load_manifest(tmp_path / "m").videos) == 2


def test_jsonl_with_caption_lists(tmp_path):
    make_videos(tmp_path / "d", "a.mp4", "b.mp4")
    source = write(
        tmp_path / "d" / "l.jsonl",
        json.dumps({"video": "a.mp4", "captions": ["one", "two"], "split": "train"})
        + "\n\n"
        + json.dumps({"video": "b.mp4", "caption": "three", "caption_id": "c3", "split": "test"})
        + "\n",
    )
    result = prepare_csv(source, tmp_path / "m")
    assert (result.videos, result.captions) == (2, 3)
    manifest = load_manifest(tmp_path / "m")
    assert [(c.caption_id, c.text) for c in manifest.captions] == [
        ("a#0", "one"),
        ("a#1", "two"),
        ("c3", "three"),
    ]


def test_format_from_suffix_and_explicit_format(tmp_path):
    make_videos(tmp_path, "a.mp4")
    row = {"video": "a.mp4", "caption": "x", "split": "train"}
    ndjson = write(tmp_path / "l.ndjson", json.dumps(row) + "\n")
    assert prepare_csv(ndjson, tmp_path / "m1").videos == 1
    txt = write(tmp_path / "l.txt", json.dumps(row) + "\n")
    assert "cannot tell the format" in prepare_error(txt, tmp_path / "m2")
    assert prepare_csv(txt, tmp_path / "m2", format="jsonl").videos == 1
    assert "unknown format 'xml'" in prepare_error(txt, tmp_path / "m3", format="xml")


def test_byte_order_mark_is_accepted(tmp_path):
    make_videos(tmp_path, "a.mp4")
    source = tmp_path / "l.csv"
    source.write_bytes(b"\xef\xbb\xbfvideo,caption,split\na.mp4,x,train\n")
    assert prepare_csv(source, tmp_path / "m").videos == 1


# ---- errors name the file, the line and the reason ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("video,split\na.mp4,train\n", "missing field(s) caption"),
        ("caption,split\nx,train\n", "missing field(s) video (or video_id)"),
        ("video,caption\na.mp4,x\n", "missing field(s) split"),
        ("video,capton,split\na.mp4,x,train\n", "unknown field 'capton'; did you mean 'caption'?"),
        ("video,caption,split\na.mp4,,train\n", "l.csv:2: empty caption"),
        ("video,caption,split\na.mp4,x,training\n", "l.csv:2: unknown split 'training'"),
        ("video,caption,split\n,x,train\n", "l.csv:2: empty video"),
        ("video,caption,split\na.mp4,x,train,extra\n", "l.csv:2: more values than header columns"),
        ("video,caption,split\n", "l.csv: no rows"),
        (
            "video,caption,split\na.mp4,x,train\na.mp4,y,test\n",
            "l.csv:3: video 'a' has split 'test' here but 'train' on line 2",
        ),
        (
            "video,caption,caption_id,split\na.mp4,x,c,train\nb.mp4,y,c,train\n",
            "l.csv:3: duplicate caption_id 'c' (first on line 2)",
        ),
        (
            "video_id,video,caption,split\nv1,a.mp4,x,train\nv2,a.mp4,y,train\n",
            "l.csv:3: file a.mp4 is already video 'v1' (line 2)",
        ),
        (
            "video_id,video,caption,split\nv1,a.mp4,x,train\nv1,b.mp4,y,train\n",
            "l.csv:3: video id 'v1' names another file than on line 2",
        ),
    ],
)
def test_csv_errors(tmp_path, text, expected):
    make_videos(tmp_path, "a.mp4", "b.mp4")
    message = prepare_error(write(tmp_path / "l.csv", text), tmp_path / "m")
    assert expected in message
    assert str(tmp_path / "l.csv") in message
    assert not (tmp_path / "m" / "videos.csv").exists()


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (['{"video": "a.mp4", "caption": "x", "split": "train"}', "{not json"], "l.jsonl:2: not valid JSON"),
        (['["a.mp4", "x", "train"]'], "l.jsonl:1: expected a JSON object, got list"),
        (
            ['{"video": "a.mp4", "caption": 3, "split": "train"}'],
            "l.jsonl:1: field 'caption' must be a string",
        ),
        (['{"video": "a.mp4", "captions": [], "split": "train"}'], "'captions' must be a non-empty list"),
        (
            ['{"video": "a.mp4", "captions": ["x"], "caption": "y", "split": "train"}'],
            "give either 'captions' or 'caption'",
        ),
        (['{"video": "a.mp4", "split": "train"}'], "l.jsonl:1: missing field(s) caption"),
    ],
)
def test_jsonl_errors(tmp_path, lines, expected):
    make_videos(tmp_path, "a.mp4")
    message = prepare_error(write(tmp_path / "l.jsonl", "\n".join(lines) + "\n"), tmp_path / "m")
    assert expected in message


def test_input_not_found(tmp_path):
    assert "input file not found" in prepare_error(tmp_path / "none.csv", tmp_path / "m")


def test_not_utf8(tmp_path):
    source = tmp_path / "l.csv"
    source.write_bytes(b"video,caption,split\na.mp4,caf\xe9,train\n")
    assert "not UTF-8" in prepare_error(source, tmp_path / "m")


def test_video_id_lookup_errors(tmp_path):
    root = make_videos(tmp_path / "media", "dup.mp4", "dup.avi")
    source = write(tmp_path / "l.csv", "video_id,caption,split\nnothere,x,train\n")
    assert "l.csv:2: no file named nothere.* in" in prepare_error(source, tmp_path / "m", videos_root=root)
    source = write(tmp_path / "l.csv", "video_id,caption,split\ndup,x,train\n")
    message = prepare_error(source, tmp_path / "m", videos_root=root)
    assert "several files match video_id 'dup'" in message and "dup.avi, dup.mp4" in message
    message = prepare_error(source, tmp_path / "m", videos_root=tmp_path / "nowhere")
    assert "is not a directory" in message


# ---- the command line ---------------------------------------------------------------------------


def test_cli_prepare(tmp_path):
    make_videos(tmp_path, "a.mp4")
    source = write(tmp_path / "l.csv", "video,caption,split\na.mp4,x,train\nmissing.mp4,y,test\n")
    result = CliRunner().invoke(
        app, ["--params", os.devnull, "prepare", "--input", str(source), "--out", str(tmp_path / "m")]
    )
    assert result.exit_code == 0, result.output
    assert "2 videos and 2 captions" in result.output
    assert "1 video file(s) not found" in result.output
    assert len(load_manifest(tmp_path / "m").videos) == 2


def test_cli_prepare_error_is_clean(tmp_path):
    source = write(tmp_path / "l.csv", "video,caption,split\na.mp4,x,nope\n")
    result = CliRunner().invoke(
        app, ["--params", os.devnull, "prepare", "--input", str(source), "--out", str(tmp_path / "m")]
    )
    assert result.exit_code == 1
    assert "error:" in result.output and "unknown split 'nope'" in result.output
