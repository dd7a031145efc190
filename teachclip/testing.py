"""Tiny, real inputs for tests and benchmarks: demo videos decoded by the real stages and, optionally, a
teacher cache extracted from them, built in seconds on a CPU. The pipeline itself never imports this
module (it sits beside the CLI, on top of every layer).

    data = tiny_dataset(root, videos=12)                # demo videos -> manifest -> frames.zarr
    caches = tiny_teacher_cache(root / "teachers.zarr", data, {"xpool": TeacherConfig(kind="xpool", ...)})
    big = synthetic_collection(root, 1_000_000, student_config)  # random features + sparse cache, any size
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from teachclip.core.config import (
    ComputeConfig,
    DecodeConfig,
    DemoConfig,
    ExtractConfig,
    StudentConfig,
    TeacherConfig,
)
from teachclip.core.fingerprint import fingerprint
from teachclip.core.manifest import load_manifest
from teachclip.models.student import Student
from teachclip.stages.decode import decode, sampling_config
from teachclip.stages.demo_data import generate_demo
from teachclip.stages.extract_teachers import TeacherRequest, extract_teachers
from teachclip.stores.features import FEATURES
from teachclip.stores.features import STORE_KIND as FEATURES_KIND
from teachclip.stores.frames import FORMAT_VERSION, MASK, VIDEO_IDS
from teachclip.stores.teacher_cache.schema import (
    NEIGHBOUR_SCORES,
    NEIGHBOUR_VIDEOS,
    OWN_SCORE,
    RELEVANCE,
    REST_MEAN,
    TEXT_IDS,
    TEXT_VIDEO,
    TeacherIdentity,
    group_attributes,
    open_root,
    plan_layout,
)
from teachclip.stores.teacher_cache.schema import VIDEO_IDS as CACHE_VIDEO_IDS
from teachclip.stores.teacher_cache.sparse import FILL_RULE, sparse_fingerprint
from teachclip.stores.zarr_io import create_array, write_strings
from teachclip.training.optim import seed_everything

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


# ---- a synthetic collection of any size (bench/scale_training.py, tests of memory at scale) ------------

SYNTHETIC_WORDS = ("a man woman dog cat car runs jumps talks plays guitar on the beach street kitchen red blue "
                   "small big slowly quickly into out of near far people child ball water").split()


@dataclass(frozen=True)
class SyntheticCollection:
    manifest: Path  # N train videos, one caption each (WebVid-like); the video files do not exist
    features: Path  # a complete frame-features store of random float16 [N, T, d]
    teachers: Path  # a teacher cache with one complete sparse group, ``teacher``, of random scores


def synthetic_collection(root: str | Path, videos: int, student: StudentConfig, *, frames: int = 12,
                         top_k: int = 32, videos_per_shard: int = 256, seed: int = 0) -> SyntheticCollection:
    """A WebVid-like collection of ``videos`` train videos in ``root``, written block by block (memory
    stays bounded; 1M videos x 12 frames x 512 float16 are 12 GB on disk): the manifest, a frame-features
    store whose tower is the image tower ``train-student`` builds for ``student`` (under
    ``train_student.seed`` 0), and a sparse teacher cache of top-``top_k`` neighbours, own scores, rest
    means and frame relevance, in the formats the real stages write. Values are random."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"v{i:08d}" for i in range(videos)]
    block = 65_536

    manifest = root / "manifest"
    manifest.mkdir()
    with open(manifest / "videos.csv", "w", newline="") as video_file, \
            open(manifest / "captions.csv", "w", newline="") as caption_file:
        video_rows, caption_rows = csv.writer(video_file), csv.writer(caption_file)
        video_rows.writerow(["video_id", "path", "split"])
        caption_rows.writerow(["caption_id", "video_id", "text"])
        for start in range(0, videos, block):
            words = rng.integers(0, len(SYNTHETIC_WORDS), size=(min(block, videos - start), 8))
            for video_id, row in zip(ids[start : start + block], words, strict=True):
                video_rows.writerow([video_id, f"videos/{video_id}.mp4", "train"])
                caption_rows.writerow([f"{video_id}#0", video_id, " ".join(SYNTHETIC_WORDS[w] for w in row)])
    manifest_fp = load_manifest(manifest).fingerprint("stat")

    with torch.random.fork_rng(devices=[]):
        seed_everything(0)  # train_student builds its student under its seed: the same tower
        backbone = Student(student).backbone
    tower = {"name": backbone.config.name, "pretrained": backbone.config.pretrained,
             "visual_fingerprint": backbone.visual_fingerprint()}
    dim = backbone.embed_dim
    frames_fp = fingerprint("synthetic-frames", {"manifest": manifest_fp, "frames": frames})
    features = root / "features.zarr"
    group = zarr.open_group(str(features), mode="w", zarr_format=3)
    data = create_array(group, FEATURES, (videos, frames, dim), (1, frames, dim), "float16",
                        shards=(videos_per_shard, frames, dim))
    create_array(group, MASK, (videos, frames), (videos_per_shard, frames), "bool", fill_value=False)[...] = True
    write_strings(group, VIDEO_IDS, ids)
    # zarr writes ~100 inner chunks (one per video) a second on a busy core: the first shard is written,
    # every other whole shard is a copy of its file (the values repeat every shard; reads do not care)
    first = min(videos_per_shard, videos)
    data[:first] = rng.standard_normal((first, frames, dim), dtype=np.float32).astype(np.float16)
    whole, shard_file = videos // videos_per_shard, features / FEATURES / "c" / "0" / "0" / "0"
    for shard in range(1, whole):
        target = features / FEATURES / "c" / str(shard) / "0" / "0"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shard_file, target)
    if videos > whole * videos_per_shard and whole > 0:
        data[whole * videos_per_shard :] = data[: videos - whole * videos_per_shard]
    group.attrs.update({
        "kind": FEATURES_KIND, "format_version": FORMAT_VERSION, "fingerprint": frames_fp,
        "manifest_fingerprint": manifest_fp, "manifest_fingerprint_mode": "stat",
        "features_fingerprint": fingerprint("frame-features", {"frames": frames_fp, "backbone": tower}),
        "backbone": tower, "sampling": sampling_config(DecodeConfig(frames_per_video=frames)), "videos": videos,
        "videos_per_shard": videos_per_shard, "failures": [], "complete": True})

    top_k = min(top_k, videos - 1)
    identity = TeacherIdentity(kind="xpool", config={"synthetic": True}, checkpoint_sha256=None, score_version=1,
                               has_frame_relevance=True, similarity_definition="random numbers",
                               relevance_definition="random numbers", frames_fingerprint=frames_fp,
                               manifest_fingerprint=manifest_fp)
    chunk = 1024
    layout = plan_layout(videos, videos, frames, chunk, chunk, 16_384, 1024)  # the dense layout it stands for
    attrs = group_attributes(identity, layout, complete=True, versions={}) | {
        "fingerprint": sparse_fingerprint(identity.fingerprint, top_k),
        "sparse": {"top_k": top_k, "dense_fingerprint": identity.fingerprint, "fill": FILL_RULE}}
    teachers = root / "teachers.zarr"
    group = open_root(teachers).create_group("teacher", attributes=attrs)
    chunk = min(chunk, videos)
    neighbours = create_array(group, NEIGHBOUR_VIDEOS, (videos, top_k), (chunk, top_k), "int32", fill_value=-1)
    scores = create_array(group, NEIGHBOUR_SCORES, (videos, top_k), (chunk, top_k), "float16", fill_value=float("nan"))
    own = create_array(group, OWN_SCORE, (videos,), (chunk,), "float16", fill_value=float("nan"))
    rest = create_array(group, REST_MEAN, (videos,), (chunk,), "float16", fill_value=float("nan"))
    relevance = create_array(group, RELEVANCE, (videos, frames), (chunk, frames), "float32", fill_value=float("nan"))
    for start in range(0, videos, block):
        rows = np.arange(start, min(start + block, videos))
        # distinct columns per row, never the row's own video: an arithmetic progression modulo N
        stride = rng.integers(1, max(2, (videos - 1) // top_k + 1), size=len(rows))
        neighbours[rows[0] : rows[-1] + 1] = ((rows[:, None] + 1 + np.arange(top_k) * stride[:, None]) % videos)
        scores[rows[0] : rows[-1] + 1] = -np.sort(-rng.random((len(rows), top_k), dtype=np.float32), axis=1)
        own[rows[0] : rows[-1] + 1] = rng.random(len(rows), dtype=np.float32)
        rest[rows[0] : rows[-1] + 1] = rng.random(len(rows), dtype=np.float32) * 0.1
        relevance[rows[0] : rows[-1] + 1] = rng.standard_normal((len(rows), frames), dtype=np.float32)
    write_strings(group, TEXT_IDS, [f"{video_id}#0" for video_id in ids])
    write_strings(group, CACHE_VIDEO_IDS, ids)
    create_array(group, TEXT_VIDEO, (videos,), (videos,), "int32", fill_value=-1)[...] = np.arange(videos, dtype=np.int32)
    return SyntheticCollection(manifest, features, teachers)
