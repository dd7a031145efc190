"""Benchmark: the teacher cache: extraction speed, bytes on disk, soft-label read rate.

    python bench/extract.py [--videos 48] [--frames 12] [--size 64] [--teacher xpool]
                            [--backbone teachclip-tiny] [--naive-pairs 36] [--batch-size 32]
                            [--large-texts 4096] [--large-videos 9000] [--threads 1] [--workdir DIR]

Builds its data with the real stages (demo videos -> decode -> a seeded, saved teacher) and prints
one JSON document with:

- ``pairs_per_s``: the blocked extraction (``extract_teachers``: every video and caption encoded
  once, [texts x videos] blocks scored at once), end to end (teacher loading included) and scoring
  alone, against the naive per-pair definition (``teacher.similarity`` of one caption and one video,
  encoding both every time) on a sample of pairs; the naive values are checked against the cache.
- ``bytes_per_similarity_entry``: the ``similarity`` array on disk (shards, indexes, metadata) per
  entry, for the demo cache and for an MSR-VTT-wide synthetic block (``--large-texts`` x
  ``--large-videos``, values resampled from the demo cache so they compress like teacher scores).
  Goal <= 2.2 (fp16 is 2).
- ``soft_label_reads``: random training batches (``--batch-size`` captions of distinct videos, the
  [B, B] similarity block + [B, T] relevance), from RAM and from disk, against the rate a student
  training step consumes them (CLIP4Clip+AFA on the same frames, InfoNCE step, backbone trained).
  Goal >= 10x.

CPU timings use the process CPU clock with ``--threads`` threads, so a busy shared machine does not
inflate them; CUDA timings use the synchronised wall clock.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path

import numpy as np
import torch
from common import Clock, add_common_options, demo_data, emit, torch_setup, workdir

from teachclip.core.config import (
    BackboneConfig,
    ComputeConfig,
    ExtractConfig,
    StudentConfig,
    TeacherConfig,
    TrainStudentConfig,
)
from teachclip.core.device import autocast
from teachclip.core.manifest import load_manifest
from teachclip.stores.frames import FramesStore
from teachclip.stores.teacher_cache import open_teacher_caches
from teachclip.stores.teacher_cache.dense import DenseGroup, create_group, write_block
from teachclip.stores.teacher_cache.publish import publish_groups
from teachclip.stores.teacher_cache.schema import SIMILARITY, identity_from_attributes, plan_layout
from teachclip.stores.zarr_io import partial_path, tree_bytes


def build_inputs(root: Path, args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """Demo videos of ``--size`` px (12 s at 4 fps) decoded to ``--frames`` frames, and a seeded,
    saved ``--teacher`` of ``--backbone``; both reused from an earlier run in ``--workdir``."""
    from teachclip.models.factory import create_teacher, save_teacher

    data, _ = demo_data(root, videos=args.videos, size=args.size, seconds=12, fps=4, frames_per_video=args.frames)
    checkpoint = root / "teacher"
    if not (checkpoint / "model.safetensors").exists():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            teacher = create_teacher(TeacherConfig(kind=args.teacher, backbone=BackboneConfig(name=args.backbone)))
        save_teacher(teacher, checkpoint)
    return data.manifest, data.frames, checkpoint


def blocked_extraction(manifest: Path, frames: Path, checkpoint: Path, out: Path, device: torch.device) -> dict:
    from teachclip.stages.extract_teachers import extract_teachers, resolve_teachers

    requests = resolve_teachers([f"bench={checkpoint}"], {})
    clock = Clock(device)
    start = clock.now()
    report = extract_teachers(frames, manifest, out, requests, ExtractConfig(),
                              ComputeConfig(scheduler="sync", device=str(device)), progress=False)
    seconds = clock.now() - start
    entry = report.teachers[0]
    pairs = entry.n_texts * entry.n_videos
    return {"texts": entry.n_texts, "videos": entry.n_videos, "pairs": pairs,
            "end_to_end_pairs_per_s": pairs / seconds, "scoring_pairs_per_s": entry.pairs_per_second,
            "end_to_end_s": seconds}


def naive_pairs(manifest_dir: Path, frames_path: Path, checkpoint: Path, group: DenseGroup,
                n_pairs: int, device: torch.device) -> dict:
    """The per-pair definition: encode one caption and one video, score them; again for every pair."""
    from teachclip.models.factory import load_teacher

    teacher = load_teacher(checkpoint, device)
    manifest = load_manifest(manifest_dir)
    teacher.bind_manifest(manifest)
    captions = {c.caption_id: c for c in manifest.captions}
    store = FramesStore.open(frames_path)
    side = max(1, int(round(n_pairs ** 0.5)))
    rows, cols = list(range(min(side, len(group.text_ids)))), list(range(min(side, len(group.video_ids))))
    videos = {}
    for col in cols:
        frames, mask = store.read(store.index([group.video_ids[col]]))
        videos[col] = {"frames": torch.from_numpy(frames), "mask": torch.from_numpy(mask),
                       "video_ids": [group.video_ids[col]]}
    amp = teacher.config.backbone.precision == "amp" if hasattr(teacher, "config") else False
    scores = np.empty((len(rows), len(cols)), np.float32)

    def score_every_pair() -> None:
        with torch.inference_mode(), autocast(device, amp):
            for i, row in enumerate(rows):
                caption = captions[group.text_ids[row]]
                texts = teacher.text_batch([caption.text], [caption.caption_id], [caption.video_id])
                for j, col in enumerate(cols):
                    scores[i, j] = float(teacher.similarity(texts, videos[col]).float().cpu()[0, 0])

    seconds = Clock(device).time(score_every_pair)
    cached = group.similarity_block(rows, cols)
    return {"pairs": len(rows) * len(cols), "pairs_per_s": len(rows) * len(cols) / seconds,
            "max_abs_difference_to_cache": float(np.abs(cached - scores).max())}


def large_synthetic(group: DenseGroup, workdir: Path, n_texts: int, n_videos: int) -> Path:
    """An MSR-VTT-wide group written by the real writer, values resampled from a real cache."""
    rng = np.random.default_rng(0)
    pool = group.similarity_block(np.arange(len(group.text_ids)), np.arange(len(group.video_ids))).ravel()
    relevance_pool = group.frame_relevance(np.arange(len(group.text_ids))).ravel()
    frames = group.frames_per_video
    defaults = ExtractConfig()
    layout = plan_layout(n_texts, n_videos, frames, defaults.block_texts, defaults.chunk_texts,
                               defaults.block_videos, defaults.memory_budget_mb)
    identity = identity_from_attributes(group.attrs)
    store = workdir / "large.zarr"
    partial = partial_path(store)
    create_group(partial, "large", identity, layout, [f"c{i:07d}" for i in range(n_texts)],
                       [f"v{i:06d}" for i in range(n_videos)], rng.integers(0, n_videos, n_texts))
    for block in range(layout.n_blocks):
        start, stop = layout.block_rows(block)
        write_block(partial / "large", block, rng.choice(pool, size=(stop - start, n_videos)),
                          rng.choice(relevance_pool, size=(stop - start, frames)))
    publish_groups(partial, store, ["large"])
    return store / "large"


def read_rate(group: DenseGroup, batch_size: int, batches: int) -> dict:
    """Random training batches: captions of distinct videos, their [B, B] block and [B, T] relevance."""
    rng = np.random.default_rng(1)
    by_video: dict[int, list[int]] = {}
    for row, col in enumerate(group.text_video):
        by_video.setdefault(int(col), []).append(row)
    videos = np.asarray(sorted(by_video))
    size = min(batch_size, len(videos))
    clock = Clock()  # the reads run on the CPU: process CPU time
    times = []
    for _ in range(batches):
        chosen = rng.choice(videos, size=size, replace=False)
        rows = np.asarray([rng.choice(by_video[int(v)]) for v in chosen])

        def read(rows=rows, chosen=chosen) -> None:
            group.similarity_block(rows, chosen)
            group.frame_relevance(rows)

        times.append(clock.time(read))
    seconds = statistics.median(times)
    return {"batch_size": size, "batches_per_s": 1 / max(seconds, 1e-9), "median_batch_s": seconds,
            "in_memory": group.in_memory}


def student_step_seconds(manifest_dir: Path, frames_path: Path, batch_size: int, args: argparse.Namespace,
                         device: torch.device) -> float:
    """Median seconds of one CLIP4Clip+AFA InfoNCE training step (forward, loss, backward, AdamW)."""
    from teachclip.models.student import Student
    from teachclip.stages.train_student import SoftLabels, StudentStep, batch_losses
    from teachclip.training.batches import caption_per_video_batches, training_data
    from teachclip.training.optim import build_optimizer

    store = FramesStore.open(frames_path)
    data = training_data(store, load_manifest(manifest_dir))
    batch = caption_per_video_batches(data.captions_of_video, batch_size, 0, 0)[0]
    frames_np, mask_np = store.read(data.store_rows[batch.videos])
    frames, mask = torch.from_numpy(frames_np).to(device), torch.from_numpy(mask_np).to(device)
    backbone = BackboneConfig(name=args.backbone)
    config = TrainStudentConfig(batch_size=batch_size)
    torch.manual_seed(0)
    student = Student(StudentConfig(backbone=backbone, head="meanP", afa=True)).to(device)
    step_module = StudentStep(student)
    names = {id(p): n for n, p in student.named_parameters()}
    optimizer = build_optimizer({g: [(names[id(p)], p) for p in ps] for g, ps in student.param_groups().items()},
                                {"backbone": config.lr_backbone, "new": config.lr_new, "afa": config.lr_afa},
                                config.weight_decay)
    tokens = student.tokenize([data.texts[i] for i in batch.captions]).to(device)
    amp = backbone.precision == "amp"

    def step() -> None:
        with autocast(device, amp):
            outputs = step_module(mask, tokens=tokens, frames=frames)
        losses = batch_losses(outputs, SoftLabels([], []), {"nce": 1.0}, config, [len(batch.videos)])
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return statistics.median(Clock(device).repeat(step, args.student_steps, warmup=1))  # the first step warms up


def measure(root: Path, args: argparse.Namespace, device: torch.device) -> dict:
    manifest, frames, checkpoint = build_inputs(root, args)

    out = root / "teachers.zarr"
    shutil.rmtree(out, ignore_errors=True)
    blocked = blocked_extraction(manifest, frames, checkpoint, out, device)
    group = open_teacher_caches(out / "bench", in_memory=True)[0]
    naive = naive_pairs(manifest, frames, checkpoint, group, args.naive_pairs, device)

    large = large_synthetic(group, root, args.large_texts, args.large_videos)
    large_layout = open_teacher_caches(large, in_memory=False)[0].layout
    bytes_demo = tree_bytes(out / "bench" / SIMILARITY) / (blocked["pairs"])
    bytes_large = tree_bytes(large / SIMILARITY) / (args.large_texts * args.large_videos)

    reads = {
        "demo_in_memory": read_rate(group, args.batch_size, args.read_batches),
        "large_in_memory": read_rate(open_teacher_caches(large, in_memory=True)[0], args.batch_size,
                                     args.read_batches),
        "large_on_disk": read_rate(open_teacher_caches(large, in_memory=False)[0], args.batch_size,
                                   args.read_batches),
    }
    step = student_step_seconds(manifest, frames, args.batch_size, args, device)
    consumed = 1 / step
    for entry in reads.values():
        entry["ratio_to_student_steps"] = entry["batches_per_s"] / consumed
    return {
        "benchmark": "teacher cache: blocked vs naive scoring, bytes per entry, soft-label read rate",
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "clock": Clock(device).description,
        "threads": torch.get_num_threads(),
        "teacher": {"kind": args.teacher, "backbone": args.backbone, "frames": args.frames, "size": args.size},
        "pairs_per_s": {
            "blocked_end_to_end": blocked["end_to_end_pairs_per_s"],
            "blocked_scoring_only": blocked["scoring_pairs_per_s"],
            "naive_per_pair": naive["pairs_per_s"],
            "speedup_end_to_end": blocked["end_to_end_pairs_per_s"] / naive["pairs_per_s"],
        },
        "extraction": blocked,
        "naive": naive,
        "bytes_per_similarity_entry": {
            "demo": bytes_demo,
            "demo_shape": [blocked["texts"], blocked["videos"]],
            "large": bytes_large,
            "large_shape": [args.large_texts, args.large_videos],
            "large_layout": {"block_texts": large_layout.block_texts, "chunk_texts": large_layout.chunk_texts},
            "goal_max": 2.2,
            "meets_goal": bytes_large <= 2.2,
        },
        "soft_label_reads": reads,
        "student_step": {"backbone": args.backbone, "batch_size": args.batch_size, "median_s": step,
                         "batches_per_s": consumed},
        "read_goal_ratio_min": 10.0,
        "meets_read_goal": {name: entry["ratio_to_student_steps"] >= 10 for name, entry in reads.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--teacher", default="xpool")
    parser.add_argument("--backbone", default="teachclip-tiny")
    parser.add_argument("--naive-pairs", type=int, default=36)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--read-batches", type=int, default=30)
    parser.add_argument("--student-steps", type=int, default=3)
    parser.add_argument("--large-texts", type=int, default=4096)
    parser.add_argument("--large-videos", type=int, default=9000)
    add_common_options(parser, device="auto", threads=1)
    args = parser.parse_args()
    device = torch_setup(args)
    with workdir(args.workdir, "extract") as root:
        emit(measure(root, args, device), device)


if __name__ == "__main__":
    main()
