"""Benchmark: train-student's memory and per-step cost against the collection size (10k, 100k, 1M videos).

    nice -n 10 python bench/scale_training.py [--sizes 10000 100000 1000000] [--backbone teachclip-demo] [--freeze-text] [--frames 12]
        [--steps 40] [--batch-size 64] [--top-k 32] [--cache-in-memory auto|true|false]
        [--sampler caption_per_video|candidates] [--workdir /work/tmp-scale]

For each size N a WebVid-like collection is written under ``--workdir`` (deleted afterwards): a manifest
of N train videos with one caption each, a frame-features store (``features.zarr``, random float16
[N, T, d], written chunk by chunk as ``teach encode-frames`` lays it out) and a sparse teacher cache of
N captions (``teachers.zarr``: top-k neighbours, own score, rest mean, frame relevance; the group format
of :mod:`teachclip.stores.teacher_cache.sparse`, random values). ``teach train-student``'s own function
then runs ``--steps`` steps in a fresh process (features mode: frozen image tower, the text tower
trains, coarse + fine teaching), and that process reports

- ``peak_rss_mib``: its peak resident memory (``VmHWM``), and ``rss_before_training_mib``: what it
  held when the first step began (model, manifest, ids, samplers: the per-collection metadata);
- ``step_seconds``: the median process CPU time of a step (steps 3 and later);
- ``read_bytes_per_step``: bytes the process read through system calls per step (``rchar`` of
  ``/proc/self/io``: page-cache hits included), median over steps 3 and later.

``ratios`` divides each figure by the smallest size's (the baseline measured in the same run);
``peak_bytes_per_extra_caption`` is the peak's growth beyond the smallest size per added caption.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import emit

# ---- the measured process -------------------------------------------------------------------------------


def configs(args: argparse.Namespace):
    from teachclip.core.config import (
        BackboneConfig,
        ComputeConfig,
        EvaluateConfig,
        StudentConfig,
        TrainStudentConfig,
    )

    student = StudentConfig(backbone=BackboneConfig(name=args.backbone, freeze_visual=True, precision="fp32",
                                                    max_words=16, freeze_text=args.freeze_text))
    in_memory = {"auto": None, "true": True, "false": False}[args.cache_in_memory]
    train = TrainStudentConfig(batch_size=args.batch_size, epochs=1, teachers=None, seed=0, eval_every=1,
                               cache_in_memory=in_memory, sampler=args.sampler)
    return student, train, EvaluateConfig(), ComputeConfig(device="cpu", scheduler="sync")


def read_chars() -> int:
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


def rss_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024


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

    def first_batch(*a, **k):  # the first batch is read when the epoch starts: after every O(N) setup
        if not rss_start:
            rss_start.append(rss_mib())
            step_started[0], reads[0] = time.process_time(), read_chars()
        return read_frames(*a, **k)

    read_frames = stage.read_frames
    stage.optimizer_step, stage.read_frames = timed_step, first_batch
    try:
        stage.train_student(root / "features.zarr", root / "manifest", [root / "teachers.zarr"], root / "run",
                            train, student, evaluate, compute, progress=False)
    except Enough:
        pass
    steady = slice(2, None)  # the first steps warm up caches and allocators
    per_step_reads = np.diff(reads)[steady]
    # VmHWM, this process image's own peak: ru_maxrss would keep the peak of the process it was forked
    # from across exec (Linux), i.e. the driver that just wrote the collection (~1.4 GB at 1M)
    return {"steps": len(seconds), "peak_rss_mib": rss_mib("VmHWM"),
            "rss_before_training_mib": rss_start[0] if rss_start else None,
            "step_seconds": statistics.median(seconds[steady]),
            "read_bytes_per_step": int(np.median(per_step_reads))}


# ---- the driver ------------------------------------------------------------------------------------------


def run_size(args: argparse.Namespace, n: int) -> dict:
    from teachclip.testing import synthetic_collection

    root = Path(args.workdir) / f"n{n}"
    if root.exists():
        shutil.rmtree(root)
    try:
        started = time.perf_counter()
        synthetic_collection(root, n, configs(args)[0], frames=args.frames, top_k=args.top_k, seed=args.seed)
        built = time.perf_counter() - started
        disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        command = [sys.executable, __file__, "--child", str(root), "--steps", str(args.steps), "--batch-size",
                   str(args.batch_size), "--backbone", args.backbone, "--cache-in-memory", args.cache_in_memory,
                   "--sampler", args.sampler] + (
                   ["--freeze-text"] if args.freeze_text else [])
        child = subprocess.run(command, check=True, capture_output=True, text=True)
        row = {"videos": n, "captions": n, "disk_bytes": disk, "build_seconds": round(built, 1),
               **json.loads(child.stdout)}
        print(json.dumps(row), file=sys.stderr, flush=True)  # each size as it is measured
        return row
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--backbone", default="teachclip-demo", help="the student's open_clip model (its "
                        "embed_dim is the features' d: teachclip-demo 128, ViT-B-32 512)")
    parser.add_argument("--freeze-text", action="store_true", help="freeze the text tower too (head-only steps)")
    parser.add_argument("--cache-in-memory", choices=("auto", "true", "false"), default="auto",
                        help="train_student.cache_in_memory (auto: by size, a sparse group over 64 MiB is read per batch)")
    parser.add_argument("--sampler", choices=("caption_per_video", "candidates"), default="caption_per_video",
                        help="train_student.sampler (candidates: a quarter of each batch from the seeds' cached candidates)")
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
    from teachclip.models.student import Student

    dim = Student(configs(args)[0]).backbone.embed_dim
    largest = max(args.sizes) * args.frames * dim * 2 * 1.1
    if largest > free * 0.8:
        parser.error(f"the largest features store needs about {largest / 1e9:.1f} GB; {free / 1e9:.1f} GB free")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    rows = [run_size(args, n) for n in sorted(args.sizes)]
    base = rows[0]
    keys = ("peak_rss_mib", "rss_before_training_mib", "step_seconds", "read_bytes_per_step")
    emit({"benchmark": "scale_training", "backbone": args.backbone, "dim": dim, "freeze_text": args.freeze_text,
          "cache_in_memory": args.cache_in_memory, "sampler": args.sampler,
          "frames": args.frames,
          "batch_size": args.batch_size, "top_k": args.top_k, "steps": args.steps, "sizes": rows,
          "ratios": {str(r["videos"]): {k: round(r[k] / base[k], 3) if base[k] else None for k in keys}
                     for r in rows},
          # what the peak grows by per caption beyond the smallest size: the metadata a run holds per caption
          "peak_bytes_per_extra_caption": {str(r["videos"]): round((r["peak_rss_mib"] - base["peak_rss_mib"]) * 2**20
                                                                    / (r["captions"] - base["captions"]), 1)
                                           for r in rows[1:]}})


if __name__ == "__main__":
    main()
