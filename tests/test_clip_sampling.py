"""Manifest clips (``start,end`` seconds, e.g. DiDeMo's 0-31 s) restrict frame sampling."""

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from helpers import make_video

from teachclip.core.config import ComputeConfig, DecodeConfig
from teachclip.core.manifest import write_manifest
from teachclip.stages.decode import decode
from teachclip.stores.frames import FramesStore
from teachclip.video import Timeline, VideoDecodeError, sample_frames, sample_positions


def one_fps_timeline(seconds: int) -> Timeline:
    return Timeline(0, Fraction(1), tuple(range(seconds)), seconds, (0,), True)


def test_clip_restricts_the_candidate_window():
    timeline = one_fps_timeline(10)
    assert sample_positions(timeline, 4, 1.0) == [0, 3, 6, 9]
    assert sample_positions(timeline, 4, 1.0, clip=(2, 6)) == [2, 3, 4, 5]
    assert sample_positions(timeline, 2, 1.0, clip=(None, 4)) == [0, 3]
    assert sample_positions(timeline, 2, 1.0, clip=(8, None)) == [8, 9]
    with pytest.raises(ValueError, match="outside the video"):
        sample_positions(timeline, 2, 1.0, clip=(12, 20))


def test_clipped_frames_are_the_unclipped_frames_at_those_times(tmp_path: Path):
    video = make_video(tmp_path / "v.mp4", "-c:v", "libx264", "-pix_fmt", "yuv420p", seconds=4)
    whole, whole_mask = sample_frames(video, 4, 1.0, 32)
    clipped, clipped_mask = sample_frames(video, 2, 1.0, 32, clip=(2.0, None))
    assert whole_mask.all() and clipped_mask.all()
    assert np.array_equal(clipped[0], whole[2]) and np.array_equal(clipped[1], whole[3])
    with pytest.raises(VideoDecodeError, match="outside the video"):
        sample_frames(video, 2, 1.0, 32, clip=(30.0, 31.0))


def test_decode_honours_manifest_clips(tmp_path: Path):
    make_video(tmp_path / "v.mp4", "-c:v", "libx264", "-pix_fmt", "yuv420p", seconds=4)
    manifest = tmp_path / "manifest"
    write_manifest(manifest, [("v", str(tmp_path / "v.mp4"), "train")], [("c", "v", "a pattern")])
    (manifest / "videos.csv").write_text(f"video_id,path,split,start,end\nv,{tmp_path / 'v.mp4'},train,2,\n")
    config = DecodeConfig(frames_per_video=2, size=32)
    decode(manifest, tmp_path / "frames.zarr", config, ComputeConfig(scheduler="sync"), progress=False)
    frames, mask = FramesStore.open(tmp_path / "frames.zarr").read([0])
    expected, _ = sample_frames(tmp_path / "v.mp4", 2, 1.0, 32, clip=(2.0, None))
    assert mask.all() and np.array_equal(frames[0], expected)
