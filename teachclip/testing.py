"""Tiny, real inputs for tests and benchmarks: demo videos decoded by the real stages and, optionally, a
teacher cache extracted from them, built in seconds on a CPU. The pipeline itself never imports this
module (it sits beside the CLI, on top of every layer).

    data = tiny_dataset(root, videos=12)                # demo videos -> manifest -> frames.zarr
    caches = tiny_teacher_cache(root / "teachers.zarr", data, {"xpool": TeacherConfig(kind="xpool", ...)})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from teachclip.core.config import ComputeConfig, DecodeConfig, DemoConfig, ExtractConfig, TeacherConfig
from teachclip.core.manifest import load_manifest
from teachclip.stages.decode import decode
from teachclip.stages.demo_data import generate_demo
from teachclip.stages.extract_teachers import TeacherRequest, extract_teachers

SYNC_CPU = ComputeConfig(scheduler="sync", device="cpu")


@dataclass(frozen=True)
class TinyData:
    manifest: Path  # the demo's manifest directory
    frames: Path  # its frames store
    fingerprint: str  # the frames fingerprint, as decode reported it


def tiny_dataset(root: str | Path, *, videos: int = 12, size: int = 32, seconds: int = 6, fps: int = 2,
                 test_fraction: float = 0.25, captions_per_video: int = 4, frames_per_video: int = 4,
                 videos_per_shard: int = 16, failed_test: int = 0, seed: int = 0) -> TinyData:
    """Demo videos of ``size`` px and ``seconds`` s in ``root/demo``, decoded to ``frames_per_video``
    frames each in ``root/frames.zarr``. The last ``failed_test`` test videos are overwritten with
    garbage before decoding, so the store records them as failed (frames zero, mask False)."""
    root = Path(root)
    demo = DemoConfig(videos=videos, width=size, height=size, seconds=seconds, fps=fps, seed=seed,
                      test_fraction=test_fraction, captions_per_video=captions_per_video)
    manifest = generate_demo(root / "demo", demo, progress=False)
    test_videos = sorted(load_manifest(manifest).videos_in("test"), key=lambda v: v.video_id)
    for video in test_videos[len(test_videos) - failed_test:] if failed_test else []:
        video.path.write_bytes(b"not a video")
    frames = root / "frames.zarr"
    decoded = decode(manifest, frames, DecodeConfig(frames_per_video=frames_per_video, size=size,
                                                    videos_per_shard=videos_per_shard, max_failure_fraction=1.0),
                     SYNC_CPU, progress=False)
    return TinyData(manifest, frames, decoded.fingerprint)


def tiny_teacher_cache(out: str | Path, data: TinyData, teachers: Mapping[str, TeacherConfig],
                       config: ExtractConfig | None = None, compute: ComputeConfig = SYNC_CPU) -> Path:
    """A teacher cache ``out`` with one group per ``teachers`` entry (name -> config, untrained weights
    unless the config names a checkpoint: arbitrary scores, but real cache contents)."""
    requests = [TeacherRequest(name, teacher) for name, teacher in teachers.items()]
    extract_teachers(data.frames, data.manifest, out, requests, config or ExtractConfig(), compute, progress=False)
    return Path(out)
