"""Benchmark: train-student's memory and per-step cost against the collection size (10k, 100k, 1M videos).

    nice -n 10 python bench/scale_training.py [--sizes 10000 100000 1000000] [--dim 128] [--frames 12]
        [--steps 40] [--batch-size 64] [--top-k 32] [--workdir /work/tmp-scale]

For each size N a WebVid-like collection is written under ``--workdir`` (deleted afterwards): a manifest
of N train videos with one caption each, a frame-features store (``features.zarr``, random float16
[N, T, d], written chunk by chunk as ``teach encode-frames`` lays it out) and a sparse teacher cache of
N captions (``teachers.zarr``: top-k neighbours, own score, rest mean, frame relevance; the group format
of :mod:`teachclip.stores.teacher_cache.sparse`, random values). ``teach train-student``'s own function
then runs ``--steps`` steps in a fresh process (features mode: frozen image tower, the text tower
trains, coarse + fine teaching), and that process reports

- ``peak_rss_mib``: its peak resident memory (``ru_maxrss``), and ``rss_before_training_mib``: what it
  held when the first step began (model, manifest, ids, samplers: the per-collection metadata);
- ``step_seconds``: the median process CPU time of a step (steps 3 and later);
- ``read_bytes_per_step``: bytes the process read through system calls per step (``rchar`` of
  ``/proc/self/io``: page-cache hits included), median over steps 3 and later.

``ratios`` divides each figure by the smallest size's (the baseline measured in the same run).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import emit

GROUP = "teacher"
WORDS = ("a man woman dog cat car runs jumps talks plays guitar on the beach street kitchen red blue small big "
         "slowly quickly into out of near far people child ball water").split()


# ---- the synthetic collection -------------------------------------------------------------------------


def write_manifest(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    directory = root / "manifest"
    directory.mkdir(parents=True)
    with open(directory / "videos.csv", "w", newline="") as videos, open(directory / "captions.csv", "w",
                                                                         newline="") as captions:
        video_rows, caption_rows = csv.writer(videos), csv.writer(captions)
        video_rows.writerow(["video_id", "path", "split"])
        caption_rows.writerow(["caption_id", "video_id", "text"])
        for start in range(0, n, 100_000):
            stop = min(start + 100_000, n)
            words = rng.integers(0, len(WORDS), size=(stop - start, 8))
            for i, row in zip(range(start, stop), words, strict=True):
                video_rows.writerow([f"v{i:08d}", f"videos/v{i:08d}.mp4", "train"])
                caption_rows.writerow([f"v{i:08d}#0", f"v{i:08d}", " ".join(WORDS[w] for w in row)])
    return directory


def write_features(root: Path, manifest_dir: Path, n: int, frames: int, dim: int, student_config, seed: int) -> tuple[Path, str]:
    """A complete frame-features store of random values for the student's (seeded) image tower."""
    import zarr

    from teachclip.core.config import DecodeConfig
    from teachclip.core.fingerprint import fingerprint
    from teachclip.core.manifest import load_manifest
    from teachclip.models.student import Student
    from teachclip.stages.decode import sampling_config
    from teachclip.stores.features import FEATURES, STORE_KIND
    from teachclip.stores.frames import FORMAT_VERSION, MASK, VIDEO_IDS
    from teachclip.stores.zarr_io import create_array, write_strings
    from teachclip.training.optim import seed_everything

    seed_everything(seed)  # train_student builds its student under the same seed: the same tower
    backbone = Student(student_config).backbone
    tower = {"name": backbone.config.name, "pretrained": backbone.config.pretrained,
             "visual_fingerprint": backbone.visual_fingerprint()}
    decode = DecodeConfig(frames_per_video=frames, fingerprint_mode="stat")
    manifest_fp = load_manifest(manifest_dir).fingerprint("stat")
    frames_fp = fingerprint("synthetic-frames", {"manifest": manifest_fp, "frames": frames})
    per_shard = 256
    path = root / "features.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    features = create_array(group, FEATURES, (n, frames, dim), (1, frames, dim), "float16",
                            shards=(per_shard, frames, dim))
    create_array(group, MASK, (n, frames), (per_shard, frames), "bool", fill_value=False)[...] = True
    write_strings(group, VIDEO_IDS, [f"v{i:08d}" for i in range(n)])
    rng = np.random.default_rng(seed)
    step = per_shard * 64
    for start in range(0, n, step):
        stop = min(start + step, n)
        features[start:stop] = rng.standard_normal((stop - start, frames, dim), dtype=np.float32).astype(np.float16)
    group.attrs.update({
        "kind": STORE_KIND, "format_version": FORMAT_VERSION, "fingerprint": frames_fp,
        "manifest_fingerprint": manifest_fp, "manifest_fingerprint_mode": "stat",
        "features_fingerprint": fingerprint("frame-features", {"frames": frames_fp, "backbone": tower}),
        "backbone": tower, "sampling": sampling_config(decode), "videos": n, "videos_per_shard": per_shard,
        "failures": [], "complete": True})
    return path, frames_fp


def write_sparse_cache(root: Path, n: int, frames: int, top_k: int, frames_fp: str, manifest_fp: str,
                       seed: int) -> Path:
    """A complete sparse group of N captions (caption i belongs to video i) with random scores."""
    import zarr

    from teachclip.stores.teacher_cache.schema import (
        NEIGHBOUR_SCORES,
        NEIGHBOUR_VIDEOS,
        OWN_SCORE,
        RELEVANCE,
        REST_MEAN,
        TEXT_IDS,
        TEXT_VIDEO,
        VIDEO_IDS,
        TeacherIdentity,
        group_attributes,
        open_root,
        plan_layout,
    )
    from teachclip.stores.teacher_cache.sparse import FILL_RULE, sparse_fingerprint
    from teachclip.stores.zarr_io import create_array, write_strings

    identity = TeacherIdentity(kind="xpool", config={"synthetic": True}, checkpoint_sha256=None, score_version=1,
                               has_frame_relevance=True, similarity_definition="random",
                               relevance_definition="random", frames_fingerprint=frames_fp,
                               manifest_fingerprint=manifest_fp)
    layout = plan_layout(n, n, frames, 1024, 1024, None, 1024)
    attrs = group_attributes(identity, layout, complete=True, versions={}) | {
        "fingerprint": sparse_fingerprint(identity.fingerprint, top_k),
        "sparse": {"top_k": top_k, "dense_fingerprint": identity.fingerprint, "fill": FILL_RULE}}
    path = root / "teachers.zarr"
    group = open_root(path).create_group(GROUP, attributes=attrs)
    chunk = 1024
    neighbours = create_array(group, NEIGHBOUR_VIDEOS, (n, top_k), (chunk, top_k), "int32", fill_value=-1)
    scores = create_array(group, NEIGHBOUR_SCORES, (n, top_k), (chunk, top_k), "float16", fill_value=float("nan"))
    own = create_array(group, OWN_SCORE, (n,), (chunk,), "float16", fill_value=float("nan"))
    rest = create_array(group, REST_MEAN, (n,), (chunk,), "float16", fill_value=float("nan"))
    relevance = create_array(group, RELEVANCE, (n, frames), (chunk, frames), "float32", fill_value=float("nan"))
    rng = np.random.default_rng(seed + 1)
    step = chunk * 64
    for start in range(0, n, step):
        stop = min(start + step, n)
        rows = np.arange(start, stop)
        # distinct columns per row: an arithmetic progression modulo N with a step below N / K
        stride = rng.integers(1, max(2, n // top_k), size=len(rows))
        columns = (rows[:, None] + 1 + np.arange(top_k)[None, :] * stride[:, None]) % n
        neighbours[start:stop] = columns.astype(np.int32)
        scores[start:stop] = -np.sort(-rng.random((len(rows), top_k), dtype=np.float32), axis=1).astype(np.float16)
        own[start:stop] = rng.random(len(rows), dtype=np.float32).astype(np.float16)
        rest[start:stop] = (rng.random(len(rows), dtype=np.float32) * 0.1).astype(np.float16)
        relevance[start:stop] = rng.standard_normal((len(rows), frames), dtype=np.float32)
    write_strings(group, TEXT_IDS, [f"v{i:08d}#0" for i in range(n)])
    write_strings(group, VIDEO_IDS, [f"v{i:08d}" for i in range(n)])
    create_array(group, TEXT_VIDEO, (n,), (n,), "int32", fill_value=-1)[...] = np.arange(n, dtype=np.int32)
    return path


# ---- the measured process -------------------------------------------------------------------------------


def configs(args: argparse.Namespace):
    from teachclip.core.config import BackboneConfig, ComputeConfig, EvaluateConfig, StudentConfig, TrainStudentConfig

    student = StudentConfig(backbone=BackboneConfig(name=args.backbone, freeze_visual=True, precision="fp32",
                                                    max_words=16))
    train = TrainStudentConfig(batch_size=args.batch_size, epochs=1, teachers=None, seed=0, eval_every=1)
    return student, train, EvaluateConfig(), ComputeConfig(device="cpu", scheduler="sync")


def read_chars() -> int:
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


class Enough(Exception):
    """Raised from inside the training loop once the measured steps are done."""


def measure(args: argparse.Namespace) -> dict:
    """Run train-student's own loop for ``args.steps`` steps on the collection in ``args.child``."""
    import torch

    import teachclip.stages.train_student as stage

    torch.set_num_threads(1)
    root = Path(args.child)
    student, train, evaluate, compute = configs(args)
    step_started, seconds, reads, rss_start = [time.process_time()], [], [read_chars()], []
    original = stage.optimizer_step

    def timed_step(*a, **k):
        result = original(*a, **k)
        now = time.process_time()
        seconds.append(now - step_started[0])
        reads.append(read_chars())
        if len(seconds) >= args.steps:
            raise Enough
        step_started[0] = time.process_time()
        return result

    def first_batch(*a, **k):  # the reader is created when the epoch starts: after every O(N) setup
        rss_start.append(rss_mib())
        step_started[0], reads[0] = time.process_time(), read_chars()
        return frames_batches(*a, **k)

    frames_batches = stage.frames_batches
    stage.optimizer_step, stage.frames_batches = timed_step, first_batch
    try:
        stage.train_student(root / "features.zarr", root / "manifest", [root / "teachers.zarr"], root / "run",
                            train, student, evaluate, compute, progress=False)
    except Enough:
        pass
    steady = slice(2, None)  # the first steps warm up caches and allocators
    per_step_reads = np.diff(reads)[steady]
    return {"steps": len(seconds), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_training_mib": rss_start[0] if rss_start else None,
            "step_seconds": statistics.median(seconds[steady]),
            "read_bytes_per_step": int(np.median(per_step_reads))}


# ---- the driver ------------------------------------------------------------------------------------------


def run_size(args: argparse.Namespace, n: int) -> dict:
    from teachclip.core.manifest import load_manifest

    root = Path(args.workdir) / f"n{n}"
    if root.exists():
        shutil.rmtree(root)
    try:
        started = time.perf_counter()
        manifest = write_manifest(root, n, args.seed)
        student, *_ = configs(args)
        features, frames_fp = write_features(root, manifest, n, args.frames, args.dim, student, args.seed)
        write_sparse_cache(root, n, args.frames, args.top_k, frames_fp, load_manifest(manifest).fingerprint("stat"),
                           args.seed)
        built = time.perf_counter() - started
        disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        command = [sys.executable, __file__, "--child", str(root), "--steps", str(args.steps), "--batch-size",
                   str(args.batch_size), "--backbone", args.backbone]
        child = subprocess.run(command, check=True, capture_output=True, text=True)
        result = json.loads(child.stdout)
        return {"videos": n, "captions": n, "disk_bytes": disk, "build_seconds": round(built, 1), **result}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--backbone", default="teachclip-demo", help="the student's open_clip model (its image "
                        "tower's output dimension is the features' d)")
    parser.add_argument("--dim", type=int, default=128, help="d of the features: the backbone's embed_dim")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/work/tmp-scale")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    free = shutil.disk_usage(Path(args.workdir).parent if not Path(args.workdir).exists() else args.workdir).free
    largest = max(args.sizes) * args.frames * args.dim * 2 * 1.1
    if largest > free * 0.8:
        parser.error(f"the largest features store needs about {largest / 1e9:.1f} GB; {free / 1e9:.1f} GB free")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    rows = [run_size(args, n) for n in sorted(args.sizes)]
    base = rows[0]
    keys = ("peak_rss_mib", "rss_before_training_mib", "step_seconds", "read_bytes_per_step")
    emit({"benchmark": "scale_training", "backbone": args.backbone, "dim": args.dim, "frames": args.frames,
          "batch_size": args.batch_size, "top_k": args.top_k, "steps": args.steps, "sizes": rows,
          "ratios": {str(r["videos"]): {k: round(r[k] / base[k], 3) if base[k] else None for k in keys}
                     for r in rows}})


if __name__ == "__main__":
    main()
