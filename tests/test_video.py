"""Frame sampling: the rule, both backends, seeking, odd inputs and bad inputs (teachclip.video)."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from helpers import make_video

from teachclip import video
from teachclip.video import (
    Timeline,
    VideoDecodeError,
    decoder_identity,
    ffmpeg_binary_path,
    plan_samples,
    read_timeline,
    sample_frames,
    sample_positions,
    select_expression,
)

FFMPEG = ffmpeg_binary_path()


def remux(source: Path, path: Path, *input_args: str) -> Path:
    """Copy the streams of ``source`` into ``path`` with input options (display matrix edits)."""
    command = [
        FFMPEG,
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        *input_args,
        "-i",
        str(source),
        "-c",
        "copy",
        str(path),
    ]
    subprocess.run(command, check=True)
    return path


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    x264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    portrait = make_video(d / "portrait.mp4", *x264, size="48x64")
    return {
        # a keyframe every second and B-frames: seeking and frame skipping both have work to do
        "gop": make_video(d / "gop.mp4", *x264, "-g", "10", "-bf", "3", seconds=5),
        "odd": make_video(d / "odd.mp4", "-c:v", "libx264", "-pix_fmt", "yuv444p", size="63x47"),
        "portrait": portrait,
        "rotated90": remux(portrait, d / "rotated90.mp4", "-display_rotation:v:0", "90"),
        "rotated180": remux(portrait, d / "rotated180.mp4", "-display_rotation:v:0", "180"),
        "flipped": remux(portrait, d / "flipped.mp4", "-display_rotation:v:0", "90", "-display_hflip:v:0"),
        "hflip": remux(portrait, d / "hflip.mp4", "-display_hflip:v:0"),
        "vflip": remux(portrait, d / "vflip.mp4", "-display_vflip:v:0"),
        # 20 frames in the first second (time base 1/20), then frames at 1.0, 1.7 and 2.4 s
        "vfr": make_video(
            d / "vfr.mkv",
            "-vf",
            "setpts='if(lt(N,20),N,20+(N-20)*14)'",
            "-fps_mode",
            "vfr",
            "-frames:v",
            "23",
            "-c:v",
            "libx264",
            rate=20,
        ),  # fmt: skip
        "vp9_webm": make_video(d / "vp9.webm", "-c:v", "libvpx-vp9", "-deadline", "realtime"),
        "mpeg4_avi": make_video(d / "mpeg4.avi", "-c:v", "mpeg4", "-bf", "2"),
        "mpeg2_ts": make_video(d / "mpeg2.ts", "-c:v", "mpeg2video", "-bf", "2", rate=25),
        "raw_h264": make_video(d / "raw.h264", "-c:v", "libx264", "-f", "h264"),  # no timestamps at all
        "hevc_10bit_bt709": make_video(
            d / "hevc.mkv",
            "-c:v",
            "libx265",
            "-pix_fmt",
            "yuv420p10le",
            "-colorspace",
            "bt709",
            "-x265-params",
            "log-level=error",
        ),  # fmt: skip
        "short": make_video(d / "short.mp4", *x264, seconds=1.5),
    }


# ---- the sampling rule, by hand ---------------------------------------------------------------


def timeline(pts, time_base, end, keyframes=()) -> Timeline:
    return Timeline(0, Fraction(time_base), tuple(pts), end, tuple(keyframes), True)


def test_fifteen_seconds_at_30fps_sample_like_clip4clip():
    # 15 candidates (t = 0..14 s) linspace'd to 12: round_half_up(k * 14 / 11)
    line = timeline(range(450), Fraction(1, 30), 450)
    assert sample_positions(line, 12, 1.0) == [0, 30, 90, 120, 150, 180, 240, 270, 300, 330, 390, 420]
    # more frames than candidates: every candidate once
    assert sample_positions(line, 20, 1.0) == [30 * k for k in range(15)]
    # 2 frames per second: 30 candidates
    assert sample_positions(line, 3, 2.0) == [0, 225, 435]


def test_linspace_rounds_half_up():
    line = timeline(range(4), 1, 4)  # 4 candidates at 1 frame/s
    assert sample_positions(line, 3, 1.0) == [0, 2, 3]  # linspace(0, 3, 3) = 0, 1.5, 3
    assert sample_positions(line, 1, 1.0) == [0]


def test_variable_frame_rate_takes_the_frame_on_screen():
    # frames at 0, 0.1, 0.2, 1.0, 2.5 s; the last one shows until 2.6 s -> candidates 0, 1, 2 s
    line = timeline([0, 1, 2, 10, 25], Fraction(1, 10), 26)
    assert sample_positions(line, 12, 1.0) == [0, 3, 3]  # at 2 s the 1.0 s frame is still shown


def test_start_time_offset_and_candidate_before_the_end():
    # MPEG-TS style: starts at 1.4667 s; 3 s long at 15 fps; a candidate exactly at the end is out
    line = timeline([132000 + 6000 * i for i in range(45)], Fraction(1, 90000), 132000 + 270000)
    assert sample_positions(line, 12, 1.0) == [0, 15, 30]


def test_select_expression_windows_reach_halfway_to_neighbours():
    line = timeline([0, 10, 20, 30], Fraction(1, 10), 40)
    assert select_expression(line, [0, 2]) == "between(t,-1.0,0.5)+between(t,1.5,2.5)"
    raw = Timeline(0, Fraction(1, 25), (0, 1, 2), 3, (), False)
    assert select_expression(raw, [0, 2]) == "eq(n,0)+eq(n,2)"


# ---- real files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["gop", "odd", "portrait", "rotated90", "rotated180", "flipped", "vfr", "vp9_webm", "mpeg4_avi",
     "mpeg2_ts", "raw_h264", "hevc_10bit_bt709", "short"],
)  # fmt: skip
def test_both_backends_give_the_same_frames(videos, name):
    pyav_frames, pyav_mask = sample_frames(videos[name], 6, 1.0, 24, "pyav")
    ffmpeg_frames, ffmpeg_mask = sample_frames(videos[name], 6, 1.0, 24, "ffmpeg")
    assert pyav_frames.shape == (6, 24, 24, 3) and pyav_frames.dtype == np.uint8
    assert pyav_mask.any() and pyav_frames[pyav_mask].std() > 5  # real pictures, not blanks
    np.testing.assert_array_equal(pyav_mask, ffmpeg_mask)
    np.testing.assert_array_equal(pyav_frames, ffmpeg_frames)


# TorchCodec converts whole frames to RGB and then scales them (torch bicubic); pyav and ffmpeg scale
# in YUV 4:4:4 with swscale's bicubic and convert the crop. Both are "the same picture" up to rounding
# and chroma interpolation: measured on these files at 24 px (a 2-2.7x downscale), mean |difference|
# 1.9 levels for 4:4:4 sources and 4.3-4.6 for 4:2:0 ones, 99th percentile <= 29 levels, all at the
# sharp colour edges of testsrc2 (the chroma of 4:2:0 is interpolated before vs after scaling). The
# bounds leave headroom for other FFmpeg builds; a wrong frame (a neighbour 1 s away) or a wrong
# orientation gives 80+ levels, and the nearest-frame check below names it exactly.
TORCHCODEC_MEAN_LEVELS = 6.0
TORCHCODEC_P99_LEVELS = 40


@pytest.mark.parametrize(
    "name",
    ["gop", "odd", "portrait", "rotated90", "rotated180", "flipped", "hflip", "vflip", "vfr", "vp9_webm",
     "hevc_10bit_bt709", "short"],
)  # fmt: skip
def test_torchcodec_gives_the_frames_of_the_other_backends(videos, name):
    reference, reference_mask = sample_frames(videos[name], 6, 1.0, 24, "pyav")
    frames, mask = sample_frames(videos[name], 6, 1.0, 24, "torchcodec")
    assert frames.shape == reference.shape and frames.dtype == np.uint8
    np.testing.assert_array_equal(mask, reference_mask)
    assert frames[~mask].max(initial=0) == 0
    difference = np.abs(frames.astype(np.int16) - reference.astype(np.int16))[mask]
    print(f"{name}: mean {difference.mean():.2f} p99 {np.percentile(difference, 99):.0f} max {difference.max()}")
    assert difference.mean() <= TORCHCODEC_MEAN_LEVELS
    assert np.percentile(difference, 99) <= TORCHCODEC_P99_LEVELS
    # the same frame, not a neighbour: each slot is nearest to the reference's frame of that slot
    valid = np.flatnonzero(mask)
    for slot in valid:
        distance = {other: np.abs(frames[slot].astype(np.int16) - reference[other]).mean() for other in valid}
        nearest = min(distance.values())
        assert distance[slot] == nearest or np.array_equal(reference[slot], reference[min(distance, key=distance.get)])


def test_torchcodec_frames_are_the_planned_frames_on_the_timeline(videos):
    """The index torchcodec is asked for is checked against the demuxer's timestamps."""
    plan = plan_samples(videos["vfr"], 4, 1.0)
    frames, mask = sample_frames(videos["vfr"], 4, 1.0, 24, "torchcodec")
    pyav_frames, _ = sample_frames(videos["vfr"], 4, 1.0, 24, "pyav")
    assert mask.sum() == len(plan.positions)
    assert np.abs(frames.astype(np.int16) - pyav_frames).mean() <= TORCHCODEC_MEAN_LEVELS


def test_torchcodec_refuses_a_raw_stream_readably(videos):
    with pytest.raises(VideoDecodeError, match="raw stream without timestamps"):
        sample_frames(videos["raw_h264"], 4, 1.0, 16, "torchcodec")


@pytest.mark.parametrize("name", ["mpeg4_avi", "mpeg2_ts"])
def test_torchcodec_refuses_frames_it_times_differently(videos, name):
    """AVI (no presentation timestamps) and MPEG-TS with B-frames: TorchCodec's frame times differ
    from the demuxer's packet times the sampling rule uses, so it would return other frames than pyav
    and ffmpeg; the backend says so instead of sampling them."""
    with pytest.raises(VideoDecodeError, match="torchcodec returned the frame at"):
        sample_frames(videos[name], 6, 1.0, 24, "torchcodec")


def test_torchcodec_missing_is_a_readable_configuration_error(videos, monkeypatch):
    import sys

    from teachclip.core.errors import TeachclipError

    monkeypatch.setitem(sys.modules, "torchcodec", None)  # as if not installed
    with pytest.raises(TeachclipError, match="teachclip\\[torchcodec\\]"):
        sample_frames(videos["short"], 4, 1.0, 16, "torchcodec")
    with pytest.raises(TeachclipError, match="decode.backend torchcodec"):
        decoder_identity("torchcodec")


def test_resize_and_crop_matches_ffmpegs_output_geometry():
    import torch

    from teachclip.video import resize_and_crop

    frames = torch.zeros((2, 47, 63, 3), dtype=torch.uint8)
    frames[:, :, 31:32] = 255  # a bright column in the middle stays in the middle
    out = resize_and_crop(frames, 24)
    assert out.shape == (2, 24, 24, 3) and out.dtype == torch.uint8
    assert int(out[0, 12].float().mean(dim=-1).argmax()) in (11, 12)
    same = torch.randint(0, 256, (1, 24, 24, 3), dtype=torch.uint8)
    assert torch.equal(resize_and_crop(same, 24), same)  # already the size: untouched


def test_seeking_and_skipping_give_the_frames_of_a_full_decode(videos, monkeypatch):
    seeks = []

    class CountingCursor(video._Cursor):
        def __init__(self, container, stream, seek_to, keep):
            seeks.append(seek_to)
            super().__init__(container, stream, seek_to, keep)

    monkeypatch.setattr(video, "_Cursor", CountingCursor)
    fast, fast_mask = sample_frames(videos["gop"], 4, 1.0, 32, "pyav")
    # the fast path ran to the end (no fallback pass from the start) and really jumped
    assert seeks[0] is None and None not in seeks[1:] and len(seeks) >= 3
    seeks.clear()
    full, full_mask = sample_frames(videos["gop"], 4, 1.0, 32, "pyav", full_decode=True)
    assert seeks == [None]  # one pass from the start
    np.testing.assert_array_equal(fast_mask, full_mask)
    np.testing.assert_array_equal(fast, full)
    # different sampled frames really are different pictures (the comparison can fail)
    assert not np.array_equal(fast[0], fast[1])


def test_a_seek_that_lands_wrong_falls_back_to_the_full_decode(videos, monkeypatch):
    full, _ = sample_frames(videos["gop"], 4, 1.0, 32, "pyav", full_decode=True)
    # pretend the last keyframe precedes every target: seeking there overshoots the early ones
    monkeypatch.setattr(video, "_keyframe_before", lambda keyframes, target: keyframes[-1])
    fast, _ = sample_frames(videos["gop"], 4, 1.0, 32, "pyav")
    np.testing.assert_array_equal(fast, full)


def test_sampled_frames_are_the_frames_at_the_planned_times(videos):
    # 5 s at 10 fps with T=4: candidates 0..4 s, linspace picks 0, 1.33 -> 1, 2.67 -> 3 and 4 s
    plan = plan_samples(videos["gop"], 4, 1.0)
    assert plan.seconds == pytest.approx([0.0, 1.0, 3.0, 4.0])
    import av

    with av.open(str(videos["gop"])) as container:
        every = list(container.decode(video=0))
    convert = video._RgbConverter(32)
    frames, _ = sample_frames(videos["gop"], 4, 1.0, 32, "pyav")
    for slot, index in enumerate(plan.positions):
        np.testing.assert_array_equal(frames[slot], convert(every[index]))


def test_short_video_is_padded_and_masked(videos):
    frames, mask = sample_frames(videos["short"], 4, 1.0, 16)
    assert mask.tolist() == [True, True, False, False]  # 1.5 s at 1 frame/s: t = 0 and 1 s
    assert frames[2:].max() == 0 and frames[:2].max() > 0


def test_odd_portrait_and_rotated_videos_come_out_square_and_upright(videos):
    for name in ("odd", "portrait", "rotated90", "flipped"):
        frames, mask = sample_frames(videos[name], 3, 1.0, 20)
        assert frames.shape == (3, 20, 20, 3) and mask.all(), name
    upright, _ = sample_frames(videos["portrait"], 3, 1.0, 20)
    turned, _ = sample_frames(videos["rotated180"], 3, 1.0, 20)
    distance = [np.abs(turned.astype(int) - np.rot90(upright, k, axes=(1, 2))).mean() for k in range(4)]
    assert int(np.argmin(distance)) == 2  # the display matrix was applied (half a turn)


def test_variable_frame_rate_file_samples_the_frame_on_screen(videos):
    # candidates 0, 1, 2 s (the last frame ends at 2.45 s); at 2 s the 1.7 s frame is on screen
    plan = plan_samples(videos["vfr"], 12, 1.0)
    assert plan.seconds == pytest.approx([0.0, 1.0, 1.7], abs=1e-3)


def test_raw_stream_without_timestamps_counts_frames(videos):
    line = read_timeline(videos["raw_h264"])
    assert not line.has_timestamps and len(line.pts) == 30


# ---- bad input --------------------------------------------------------------------------------


def make_bad_inputs(directory: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """Every kind of bad input, with a phrase its reason must contain."""
    directory.mkdir(parents=True, exist_ok=True)
    empty = directory / "empty.mp4"
    empty.write_bytes(b"")
    truncated = directory / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # moov is at the end
    corrupt = directory / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    text = directory / "notes.avi"
    text.write_text("this is not a video\n" * 20)
    audio = directory / "audio.m4a"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=d=1",
                    str(audio)], check=True)  # fmt: skip
    folder = directory / "folder.mp4"
    folder.mkdir(exist_ok=True)
    # a Matroska file whose codec id no decoder knows (same length, so the file stays valid)
    unsupported = directory / "unsupported.mkv"
    mkv = remux(good, directory / "good.mkv")
    unsupported.write_bytes(mkv.read_bytes().replace(b"V_MPEG4/ISO/AVC", b"V_XYZWQ/ISO/QQQ", 1))
    return {
        "missing": (directory / "missing.mp4", "file not found"),
        "empty": (empty, "empty file"),
        "truncated": (truncated, "moov atom not found"),
        "corrupt": (corrupt, "Invalid data"),
        "non_video": (text, "Invalid data"),
        "audio_only": (audio, "no video stream (found: audio)"),
        "directory": (folder, "is a directory"),
        "unsupported_codec": (unsupported, "unsupported codec"),
    }


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory, videos) -> dict[str, tuple[Path, str]]:
    return make_bad_inputs(tmp_path_factory.mktemp("bad"), videos["portrait"])


@pytest.mark.parametrize("backend", ["pyav", "ffmpeg", "torchcodec"])
@pytest.mark.parametrize(
    "kind",
    ["missing", "empty", "truncated", "corrupt", "non_video", "audio_only", "directory", "unsupported_codec"],
)
def test_bad_input_raises_a_readable_reason(bad_inputs, kind, backend):
    path, phrase = bad_inputs[kind]
    with pytest.raises(VideoDecodeError) as raised:
        sample_frames(path, 4, 1.0, 16, backend)
    assert phrase in raised.value.reason
    assert str(path) in str(raised.value)  # the message names the file


def test_ffmpeg_failure_reason_is_cleaned_of_pointers_and_paths(videos, tmp_path):
    fake = tmp_path / "fake-ffmpeg"
    path = videos["short"]
    fake.write_text(f"#!/bin/sh\necho '[in#0 @ 0x55d0c0ffee] Error opening input file:{path}.' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(VideoDecodeError) as raised:
        sample_frames(path, 4, 1.0, 16, "ffmpeg", ffmpeg_binary=str(fake))
    assert raised.value.reason == f"ffmpeg failed: [in#0] Error opening input {path.name}."


def test_unknown_backend_is_refused(videos):
    with pytest.raises(ValueError, match="unknown decoder backend"):
        sample_frames(videos["short"], 4, 1.0, 16, "opencv")


def test_decoder_identity_names_the_versions():
    pyav = decoder_identity("pyav")
    assert pyav["name"] == "pyav" and pyav["pyav"] and "libavcodec" in pyav["libav"]
    ffmpeg = decoder_identity("ffmpeg")
    assert ffmpeg["name"] == "ffmpeg" and ffmpeg["ffmpeg"].startswith("ffmpeg version")
    torchcodec = decoder_identity("torchcodec")
    assert torchcodec["torchcodec"] and "libavcodec" in torchcodec["torchcodec_ffmpeg"]
    assert torchcodec["device"] == "cpu" and decoder_identity("torchcodec", device="cuda:0")["device"] == "cuda"
