"""The built-in demo benchmark: determinism, a valid manifest, decodable videos, and nuisances that
are really there (in the plan, in the pixels, and in the captions)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from teachclip.cli import app
from teachclip.core.config import ConfigError, DemoConfig
from teachclip.core.manifest import load_manifest
from teachclip.demo.render import render_video, sprite
from teachclip.demo.vocabulary import (
    COLOURS,
    DIRECTIONS,
    JUNK_KINDS,
    META_FILE,
    SYNONYMS,
    TEMPLATES,
    ObjectSpec,
    compose_caption,
)
from teachclip.stages.demo_data import generate_demo, plan_videos, summarize

TINY = DemoConfig(videos=6, test_fraction=0.34)


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("demo") / "out", TINY, progress=False)


# ---- determinism --------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(demo_dir, tmp_path):
    again = generate_demo(tmp_path / "again", TINY, progress=False)
    first, second = all_files(demo_dir), all_files(again)
    assert sorted(first) == sorted(second)
    assert len([name for name in first if name.endswith(".mp4")]) == TINY.videos
    for name in first:
        assert first[name] == second[name], name


def test_different_seed_differs(demo_dir, tmp_path):
    other = generate_demo(tmp_path / "other", TINY.model_copy(update={"seed": 1}), progress=False)
    first, second = all_files(demo_dir), all_files(other)
    assert first["captions.csv"] != second["captions.csv"]
    assert all(first[name] != second[name] for name in first if name.endswith(".mp4"))


def test_worker_processes_do_not_change_bytes(demo_dir, tmp_path):
    parallel = generate_demo(tmp_path / "parallel", TINY, progress=False, workers=2)
    assert all_files(parallel) == all_files(demo_dir)


# ---- the manifest and the videos ----------------------------------------------------------------


def test_manifest_is_valid_with_splits_and_captions(demo_dir):
    manifest = load_manifest(demo_dir)
    assert len(manifest.videos) == 6
    assert {v.split for v in manifest.videos} == {"train", "test"}
    assert len(manifest.videos_in("test")) == 2
    for video_id, captions in manifest.captions_by_video("train").items():
        assert len(captions) == TINY.captions_per_video, video_id
        assert len({c.text for c in captions}) == len(captions), "captions of one video must differ"
    assert all(len(c) == TINY.test_captions_per_video for c in manifest.captions_by_video("test").values())
    assert all(v.path == demo_dir.resolve() / "videos" / f"{v.video_id}.mp4" for v in manifest.videos)
    assert "videos/" in (demo_dir / "videos.csv").read_text()  # relative paths: the folder can move


def test_videos_are_h264_with_the_expected_frames(demo_dir):
    manifest = load_manifest(demo_dir)
    for video in manifest.videos:
        with av.open(str(video.path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert stream.average_rate == TINY.fps
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        assert len(frames) == TINY.seconds * TINY.fps
        assert frames[0].shape == (TINY.height, TINY.width, 3)


def test_decoded_frames_match_the_rendered_frames(demo_dir):
    plan = plan_videos(TINY)[0]
    rendered = render_video(plan, TINY)
    with av.open(str(demo_dir / "videos" / f"{plan.video_id}.mp4")) as container:
        decoded = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    assert decoded.shape == rendered.shape
    assert np.abs(decoded.astype(int) - rendered.astype(int)).mean() < 8  # lossy, but the same picture


def test_decode_sampling_sees_one_timeline_second_per_frame(demo_dir):
    """The decode stage's 1 frame/s + linspace-to-12 sampling lands on the planned seconds."""
    from teachclip.video import sample_frames

    for plan in plan_videos(TINY):
        frames, mask = sample_frames(demo_dir / "videos" / f"{plan.video_id}.mp4", 12, 1.0, 64)
        assert mask.all()
        for second, entry in enumerate(plan.timeline):
            frame = frames[second]
            if entry == "junk:blank":
                assert frame.std() < 3, (plan.video_id, second)
            elif entry == "junk:noise":
                assert frame.std() > 40, (plan.video_id, second)
            elif entry.startswith("object:"):
                obj = plan.objects[int(entry.removeprefix("object:"))]
                assert colour_mask(frame, obj.colour).sum() >= 20, (plan.video_id, second)


def test_metadata_agrees_with_the_manifest(demo_dir):
    meta = json.loads((demo_dir / META_FILE).read_text())
    manifest = load_manifest(demo_dir)
    texts = {c.caption_id: c.text for c in manifest.captions}
    assert {c["caption_id"]: c["text"] for v in meta["videos"] for c in v["captions"]} == texts
    for video in meta["videos"]:
        for caption in video["captions"]:
            named = f"object:{caption['object_index']}"
            assert caption["relevant_seconds"] == [s for s, e in enumerate(video["timeline"]) if e == named]
    assert meta["summary"]["videos"] == 6 and meta["config"]["seed"] == TINY.seed


# ---- the nuisances ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plans():
    return plan_videos(DemoConfig(videos=300))


def test_plans_have_two_segments_and_junk(plans):
    config = DemoConfig()
    two = [p for p in plans if len(p.objects) == 2]
    assert 0.7 < len(two) / len(plans) < 0.9
    for plan in plans:
        assert len(plan.timeline) == config.seconds
        junk = [e for e in plan.timeline if e.startswith("junk:")]
        assert 1 <= len(junk) <= 2 * config.junk_segments_max
        for index in range(len(plan.objects)):
            assert len(plan.seconds_of(index)) >= config.min_segment_seconds
    for plan in two:
        first, second = plan.objects
        assert first.shape != second.shape and first.colour != second.colour
    kinds = {e.removeprefix("junk:") for p in plans for e in p.timeline if e.startswith("junk:")}
    assert kinds == set(JUNK_KINDS)
    assert {p.target for p in two} == {0, 1}  # the named object is not always the first
    assert any(p.timeline[0].startswith("junk:") for p in plans)  # intros
    assert any(p.timeline[-1].startswith("junk:") for p in plans)  # outros


def test_captions_name_every_attribute_of_their_object(plans):
    for plan in plans:
        for caption in plan.captions:
            obj = plan.objects[caption.object_index]
            for value in obj.description:
                assert any(word in caption.text for word in SYNONYMS[value]), (value, caption.text)
            if caption.mentions_scene:
                assert any(word in caption.text for word in SYNONYMS[obj.texture]), caption.text
    train = [p for p in plans if p.split == "train" and len(p.objects) == 2]
    assert any(c.object_index != p.target for p in train for c in p.captions)  # some name the other segment
    assert all(c.object_index == p.target for p in plans if p.split == "test" for c in p.captions)


def test_test_captions_are_distinct_and_disambiguated(plans):
    test = [p for p in plans if p.split == "test"]
    targets = [p.objects[p.target].description for p in test]
    assert len(set(targets)) == len(targets)
    for plan in test:
        target = plan.objects[plan.target]
        shared = any(
            target.description in (o.description for o in other.objects)
            for other in test
            if other is not plan
        )
        if shared:
            assert all(c.mentions_scene for c in plan.captions)
    summary = summarize(plans)
    assert summary["test_oracle_r1"] > 0.95
    assert summary["test_ideal_r1_mean_pool"] < summary["test_ideal_r1_best_frame"]


def test_caption_wording_varies():
    obj = ObjectSpec("circle", "orange", "small", "up-left", "dots", "olive")
    rng = np.random.default_rng(0)
    texts = {compose_caption(rng, obj, template, True) for template in TEMPLATES for _ in range(5)}
    assert len(texts) > 30
    for text in texts:
        assert "{" not in text and "A_" not in text
        assert " a orange" not in text and " a aqua" not in text and not text.startswith("a orange")


def colour_mask(frame: np.ndarray, colour: str) -> np.ndarray:
    return np.linalg.norm(frame.astype(float) - COLOURS[colour], axis=-1) < 40


def test_pixels_follow_the_timeline(plans):
    config = DemoConfig()
    checked = 0
    for plan in plans[:40]:
        frames = render_video(plan, config)
        for second, entry in enumerate(plan.timeline):
            frame = frames[second * config.fps]
            if entry == "junk:blank":
                assert frame.std() == 0
            if not entry.startswith("object:"):
                continue
            obj = plan.objects[int(entry.removeprefix("object:"))]
            core = (sprite(obj.shape, round(0.1 * config.width, 2)) > 0.99).sum()
            assert colour_mask(frame, obj.colour).sum() >= 0.5 * core, (plan.video_id, second)
            for other in plan.objects:
                if other is not obj:
                    assert colour_mask(frame, other.colour).sum() <= 5, (plan.video_id, second)
            checked += 1
    assert checked > 300


def test_objects_move_in_their_direction(plans):
    config = DemoConfig()
    for plan in plans[:40]:
        frames = render_video(plan, config)
        for index, obj in enumerate(plan.objects):
            seconds = plan.seconds_of(index)
            first, last = frames[seconds[0] * config.fps], frames[seconds[-1] * config.fps + config.fps - 1]
            start = np.argwhere(colour_mask(first, obj.colour)).mean(axis=0)[::-1]  # (x, y)
            end = np.argwhere(colour_mask(last, obj.colour)).mean(axis=0)[::-1]
            assert np.dot(end - start, DIRECTIONS[obj.direction]) > 0.2 * config.width, (plan.video_id, obj)


# ---- output directory and configuration ----------------------------------------------------------


def test_refuses_a_directory_that_is_not_demo_output(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not an earlier demo output"):
        generate_demo(tmp_path / "mine", TINY, progress=False)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_replaces_an_earlier_demo_output(tmp_path):
    out = generate_demo(tmp_path / "d", DemoConfig(videos=5), progress=False)
    generate_demo(out, DemoConfig(videos=4), progress=False)
    assert len(list((out / "videos").iterdir())) == 4
    assert not (tmp_path / "d.partial").exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"junk_segments_min": 3, "junk_segments_max": 1}, "junk_segments_min 3 > junk_segments_max 1"),
        ({"seconds": 6, "min_segment_seconds": 4}, "cannot hold 2 segment(s)"),
        ({"videos": 4, "test_fraction": 0.5, "val_fraction": 0.5}, "leave no train videos"),
    ],
)
def test_inconsistent_config_is_refused(fields, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_videos(DemoConfig(**fields))


def test_cli_demo_data(tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app, ["--params", os.devnull, "demo-data", str(out), "-S", "demo.videos=4", "-S", "demo.seed=3", "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    assert len(load_manifest(out).videos) == 4
    assert json.loads((out / META_FILE).read_text())["config"]["seed"] == 3


def test_cli_demo_data_bad_flag_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(
        app, ["--params", os.devnull, "demo-data", str(tmp_path / "x"), "-S", "demo.videos=2"]
    )
    assert result.exit_code == 1
    assert "error:" in result.output and "videos" in result.output
