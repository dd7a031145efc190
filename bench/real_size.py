"""Every stage at real size on this machine: per-unit costs for the cost model (``bench/scale.py``).

    nice -n 10 python bench/real_size.py [--out bench/results/real_size-cpu.json] [--quick]
                                         [--stages decode,tower,extract,xclip_memory,train,search,stores]
                                         [--device cpu] [--threads 1] [--workdir DIR]

Real size = what ``params/msrvtt-b32.yaml`` runs: 224 px frames, ViT-B/32 towers with QuickGELU
(open_clip ``ViT-B-32-quickgelu``, random init, nothing downloaded), 12 frames, 32 words, X-CLIP and
X-Pool at B/32 configured as their official checkpoints load, the seqTransf + AFA student. Only the
*counts* are small (a few videos, a few hundred captions), so the run takes minutes on one core.

Each stage runs in its own child process (``--only STAGE``), so its peak resident set size
(``ru_maxrss``) is that stage's alone. Stages and what they report:

- ``decode``: MSR-VTT-like clips made here with the imageio-ffmpeg binary (320x240, 30 fps,
  ``--clip-seconds`` s, x264 default GOP, AAC audio track) through the decode stage (pyav, in-process,
  12 frames at 1 fps, 224 px): videos/s (wall clock), bytes of the source file and of the frames store
  per video. The frames store is kept in the work directory for the ``stores`` and ``search`` stages.
- ``tower``: frames/s through the B/32 image tower and captions/s through its text tower, and their
  FLOPs per image / per caption counted by ``torch.utils.flop_counter`` (matmuls and convolutions).
- ``extract``: per teacher (``--teachers``): videos/s and captions/s encoded (``encode_videos``,
  ``encode_texts``), pairs/s scored (``score`` over a ``--block-texts`` x ``--score-videos`` block in the
  stage's own memory-budgeted sub-blocks, + the matched pairs' frame relevance; video features tiled
  from the encoded ones: the cost depends on shapes only), FLOPs per pair, bytes of features per video
  and per caption, and what one worker needs for the MSR-VTT 9k cache at these rates.
- ``xclip_memory``: the peak RSS increment of one X-CLIP ``score_block`` (output block + features +
  scoring workspace) over a grid of ``block_texts`` and number of videos, sampled every millisecond,
  and a least-squares fit ``bytes = a + b * block_texts * videos + c * videos``.
- ``train``: student steps/s at ``--train-batch`` (the stage's own step: seqTransf + AFA, Pearson + CE
  against two teachers' soft labels, AdamW, grad clip), via ``bench/gpu_step.py``'s ``train_step``.
- ``search``: queries/s (text encoding + scan of a ``--index-size``-video float16 index + top-10) with
  a random-weight B/32 student, its real index tiled to the size.
- ``stores``: bytes on disk per video of the frame-features store (``encode_frames``) and per pair of a
  dense teacher-cache group (``--cache-texts`` x ``--cache-videos``, written by the real writer, values
  shaped like teacher cosines).

Times are the process's CPU time (``time.process_time``, all its threads: with ``--threads 1`` a
per-core figure that other processes on a shared machine do not inflate); ``wall_s`` is each child's
elapsed time, start-up included. Prints one JSON document and writes it to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

from common import add_common_options, emit, machine_info, workdir

HERE = Path(__file__).resolve().parent
MODEL = "ViT-B-32-quickgelu"
FRAMES, SIZE, WORDS = 12, 224, 32
STAGES = ("decode", "tower", "extract", "xclip_memory", "train", "search", "stores")
MIB = 1 << 20


def now() -> float:
    """Process CPU time (all threads; run with ``--threads 1``): a busy shared machine does not inflate it."""
    return time.process_time()


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux: ru_maxrss in KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MIB


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """The highest RSS seen while the ``with`` block runs, sampled every ``interval`` seconds (torch
    releases the GIL inside its kernels, so the sampler runs while they allocate)."""

    def __init__(self, interval: float = 0.001):
        self.interval, self.peak, self.start = interval, 0, 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def increment(self) -> int:
        return self.peak - self.start


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---- stages (each runs in a child process) --------------------------------------------------------------


def make_clips(directory: Path, count: int, seconds: int) -> Path:
    """MSR-VTT-like clips with an audio track (the real corpus has one; decoders must skip it)."""
    from teachclip.core.manifest import write_manifest
    from teachclip.video import ffmpeg_binary_path

    binary = ffmpeg_binary_path()
    videos = directory / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        path = videos / f"video{i}.mp4"
        if not path.exists():
            tmp = path.with_suffix(".tmp.mp4")
            subprocess.run([binary, "-hide_banner", "-loglevel", "error", "-y",
                            "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=30:duration={seconds}",
                            "-f", "lavfi", "-i", f"sine=frequency={220 + 20 * i}:duration={seconds}",
                            "-vf", f"noise=alls=6:allf=t:all_seed={i + 1}",
                            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
                            str(tmp)], check=True)  # fmt: skip
            tmp.replace(path)
        rows.append((f"video{i}", f"videos/{path.name}", "train"))
    captions = [(f"video{i}#{j}", f"video{i}", f"a test pattern number {i} caption {j}")
                for i in range(count) for j in range(20)]
    return write_manifest(directory / "manifest", [(v, f"../{p}", s) for v, p, s in rows], captions)


def stage_decode(args: argparse.Namespace, root: Path) -> dict:
    from teachclip.core.config import ComputeConfig, DecodeConfig
    from teachclip.stages.decode import decode

    manifest = make_clips(root / "clips", args.clips, args.clip_seconds)
    out = root / "frames.zarr"
    config = DecodeConfig(frames_per_video=FRAMES, size=SIZE, sample_fps=1.0, backend="pyav", decoder_threads=1,
                          max_failure_fraction=0.0)
    start, wall = now(), time.perf_counter()
    decode(manifest, out, config, ComputeConfig(scheduler="sync", device="cpu"), overwrite=True, progress=False)
    seconds, wall = now() - start, time.perf_counter() - wall
    files = sorted((root / "clips" / "videos").glob("*.mp4"))
    return {
        "videos": args.clips, "clip": f"320x240 30 fps {args.clip_seconds} s, x264 default GOP, AAC audio",
        "config": "pyav, 1 decoder thread, in-process (scheduler sync), 12 frames at 1 fps, 224 px",
        "seconds": round(seconds, 3), "videos_per_s": round(args.clips / seconds, 3),
        "wall_s_on_this_shared_machine": round(wall, 3),
        "source_bytes_per_video": int(sum(f.stat().st_size for f in files) / len(files)),
        "frames_store_bytes_per_video": int(tree_size(out) / args.clips),
        "frames_uncompressed_bytes_per_video": FRAMES * SIZE * SIZE * 3,
    }


def flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def stage_tower(args: argparse.Namespace, root: Path) -> dict:
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model(MODEL, pretrained=None).eval()
    images = torch.randn(args.tower_batch, 3, SIZE, SIZE)
    tokens = torch.randint(1, 49000, (args.tower_batch, 77))
    tokens[:, WORDS:] = 0  # 32 words, as the recipe's max_words (open_clip's context is 77)
    with torch.inference_mode():
        model.encode_image(images[:1])
        start = now()
        for _ in range(args.repeats):
            model.encode_image(images)
        image_s = (now() - start) / args.repeats
        start = now()
        for _ in range(args.repeats):
            model.encode_text(tokens)
        text_s = (now() - start) / args.repeats
        image_flops = flops(lambda: model.encode_image(images[:1]))
        text_flops = flops(lambda: model.encode_text(tokens[:1]))
    return {
        "model": MODEL, "batch": args.tower_batch, "image_size": SIZE,
        "frames_per_s": round(args.tower_batch / image_s, 2), "texts_per_s_context77": round(args.tower_batch / text_s, 2),
        "flops_per_image": image_flops, "flops_per_text_context77": text_flops,
        "parameters_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "note": "open_clip's encode_text runs the full 77-token context; teachclip's towers run max_words=32 "
                "(see extract.*.texts_per_s)",
    }


def teacher_and_features(kind: str, videos: int, texts: int, encode_batch: int):
    """A B/32 teacher configured as its official checkpoint loads, and the features of ``videos``
    random videos and ``texts`` captions, each with the seconds it took to encode them."""
    import numpy as np
    import torch
    from gpu_step import OFFICIAL_OPTIONS, random_captions, random_frames

    from teachclip.core.config import TeacherConfig
    from teachclip.models.scorer import cat_features
    from teachclip.models.teachers import TEACHERS

    config = TeacherConfig(kind=kind, backbone={"name": MODEL, "pretrained": None, "max_words": WORDS,
                                                "precision": "fp32"}, options=dict(OFFICIAL_OPTIONS[kind]))
    torch.manual_seed(0)
    teacher = TEACHERS[kind](config, load_weights=False).eval()
    frames, mask = random_frames(videos, FRAMES, SIZE, torch.Generator().manual_seed(3))
    captions = random_captions(texts, np.random.default_rng(4))
    with torch.inference_mode():
        teacher.encode_videos({"frames": frames[:1], "mask": mask[:1], "video_ids": ["w"]})  # warm-up
        start = now()
        video_features = cat_features([
            teacher.encode_videos({"frames": frames[s:s + encode_batch], "mask": mask[s:s + encode_batch],
                                   "video_ids": [str(i) for i in range(s, min(s + encode_batch, videos))]})
            for s in range(0, videos, encode_batch)])
        video_s = now() - start
        start = now()
        parts = []
        for s in range(0, texts, encode_batch):
            ids = [str(i) for i in range(s, min(s + encode_batch, texts))]
            parts.append(teacher.encode_texts(teacher.text_batch(captions[s:s + encode_batch], ids, ids)))
        text_features = cat_features(parts)
        text_s = now() - start
    return teacher, video_features, text_features, video_s, text_s


def tile_features(features: dict, rows: int) -> dict:
    import torch

    def tile(value):
        repeats = -(-rows // value.shape[0])
        return value.repeat(repeats, *([1] * (value.dim() - 1)))[:rows].contiguous() if isinstance(value, torch.Tensor) else value

    return {key: tile(value) for key, value in features.items()}


def feature_bytes(features: dict) -> int:
    """Bytes of one row (video or caption) of a features dict, as the extraction worker holds them."""
    return sum(value[0].numel() * value.element_size() for value in features.values() if hasattr(value, "numel"))


def score_block_like(teacher, texts: dict, videos: dict, budget_mb: int):
    """What ``extract_teachers.worker.score_block`` does with a block: score in budgeted sub-blocks into a
    float32 [texts, videos] array, then the matched pairs' relevance (caption i belongs to video i % V)."""
    import numpy as np
    import torch

    from teachclip.models.scorer import batch_size, slice_features
    from teachclip.stages.extract_teachers.worker import sub_block

    n_texts, n_videos = batch_size(texts), batch_size(videos)
    step_texts, step_videos = sub_block(texts, videos, n_texts, n_videos, budget_mb)
    with torch.inference_mode():
        similarity = np.empty((n_texts, n_videos), dtype=np.float32)
        for t0 in range(0, n_texts, step_texts):
            text_slice = slice_features(texts, t0, t0 + step_texts)
            for v0 in range(0, n_videos, step_videos):
                similarity[t0:t0 + step_texts, v0:v0 + step_videos] = teacher.score(
                    text_slice, slice_features(videos, v0, v0 + step_videos)).float().numpy()
        if teacher.has_frame_relevance:
            own = torch.arange(n_texts) % n_videos
            teacher.relevance(texts, {key: value[own] for key, value in videos.items()})
    return similarity, (step_texts, step_videos)


def stage_extract(args: argparse.Namespace, root: Path) -> dict:
    import torch
    from gpu_step import OFFICIAL_OPTIONS, random_frames

    from teachclip.models.scorer import slice_features

    report = {}
    for kind in args.teachers.split(","):
        teacher, videos, texts, video_s, text_s = teacher_and_features(kind, args.extract_videos, args.block_texts,
                                                                       args.encode_batch)
        frames, mask = random_frames(1, FRAMES, SIZE, torch.Generator().manual_seed(5))
        one_video = {"frames": frames, "mask": mask, "video_ids": ["v"]}
        with torch.inference_mode():
            pair_flops = flops(partial(teacher.score, slice_features(texts, 0, 8), tile_features(videos, 8))) / 64
            video_flops = flops(partial(teacher.encode_videos, one_video))
            batch = teacher.text_batch(["a man is driving a red car down the street"], ["q"], ["q"])
            text_flops = flops(partial(teacher.encode_texts, batch))
        tiled = tile_features(videos, args.score_videos)
        score_block_like(teacher, slice_features(texts, 0, 4), slice_features(tiled, 0, 4), args.budget_mb)  # warm-up
        start = now()
        similarity, step = score_block_like(teacher, texts, tiled, args.budget_mb)
        score_s = now() - start
        video_rate, text_rate = args.extract_videos / video_s, args.block_texts / text_s
        pair_rate = similarity.size / score_s
        msrvtt_s = 9000 / video_rate + 180_000 / text_rate + 180_000 * 9000 / pair_rate
        report[kind] = {
            "options": OFFICIAL_OPTIONS[kind],
            "encoded_videos": args.extract_videos, "encoded_texts": args.block_texts,
            "block_texts": args.block_texts, "scored_videos": args.score_videos, "sub_block": list(step),
            "memory_budget_mb": args.budget_mb,
            "videos_per_s": round(video_rate, 3), "frames_per_s": round(video_rate * FRAMES, 2),
            "texts_per_s": round(text_rate, 2), "score_pairs_per_s": round(pair_rate, 1),
            "flops_per_pair_score": int(pair_flops), "flops_per_video": video_flops, "flops_per_text": text_flops,
            "video_feature_bytes": feature_bytes(videos), "text_feature_bytes": feature_bytes(texts),
            "msrvtt9k_one_worker_hours": round(msrvtt_s / 3600, 2),
            "msrvtt9k_pairs_per_s_end_to_end": round(180_000 * 9000 / msrvtt_s, 1),
        }
    return report


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc), so the next RSS increment is the next block's own."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def stage_xclip_memory(args: argparse.Namespace, root: Path) -> dict:
    import statistics

    import torch

    from teachclip.models.scorer import slice_features
    from teachclip.stages.extract_teachers.worker import WORKSPACE_FACTOR

    teacher, videos, texts, _, _ = teacher_and_features("xclip", 4, max(args.memory_texts), args.encode_batch)
    grid = sorted({(t, args.memory_videos_fixed) for t in args.memory_texts}
                  | {(args.memory_texts_fixed, v) for v in args.memory_videos})
    # what worker.sub_block assumes a pair's workspace to be: WORKSPACE_FACTOR x one text's and one video's features
    elements = sum(v[0].numel() for v in texts.values() if isinstance(v, torch.Tensor)) + sum(
        v[0].numel() for v in videos.values() if isinstance(v, torch.Tensor))
    assumed_pair_bytes = WORKSPACE_FACTOR * 4 * elements
    rows = []
    for budget in args.memory_budgets:
        for n_texts, n_videos in grid:
            block_texts, block_videos = slice_features(tile_features(texts, n_texts), 0, n_texts), tile_features(videos, n_videos)
            release_free_memory()
            with PeakSampler() as sampler:
                similarity, step = score_block_like(teacher, block_texts, block_videos, budget)
            call_pairs = step[0] * step[1]
            workspace = sampler.increment - similarity.nbytes
            rows.append({"memory_budget_mb": budget, "block_texts": n_texts, "videos": n_videos, "sub_block": list(step),
                         "peak_increment_mb": round(sampler.increment / MIB, 2),
                         "output_block_mb": round(similarity.nbytes / MIB, 2),
                         "workspace_bytes_per_call_pair": round(workspace / call_pairs, 1)})
            del similarity, block_texts, block_videos
    # the calls big enough for the workspace to dominate the allocator's noise
    big = [r["workspace_bytes_per_call_pair"] for r in rows if r["sub_block"][0] * r["sub_block"][1] >= 4096]
    return {
        "grid": rows,
        "workspace_bytes_per_pair_measured": statistics.median(big) if big else None,
        "workspace_bytes_per_pair_assumed_by_sub_block": assumed_pair_bytes,
        "video_feature_bytes": feature_bytes(videos), "text_feature_bytes": feature_bytes(texts),
        "note": "peak RSS increment of one block (glibc heap trimmed before it; large allocations mmapped, "
                "MALLOC_MMAP_THRESHOLD_), sampled every 1 ms, over the RSS before it; the block's features "
                "already held; workspace per pair = (increment - output block) / pairs of one score call",
    }


def stage_train(args: argparse.Namespace, root: Path) -> dict:
    import gpu_step
    from common import Clock

    from teachclip.core.device import pick_device

    ns = argparse.Namespace(model=MODEL, batch=args.train_batch, frames=FRAMES, amp=False, warmup=1,
                            repeats=args.repeats)
    # gpu_step times with the wall clock; here the process CPU clock (CUDA: synchronised wall clock)
    gpu_step.timed = lambda fn, device, warmup, repeats: Clock(device).mean(fn, repeats, warmup)
    result = gpu_step.train_step(ns, pick_device(args.device))
    result["steps_per_s"] = round(1 / result["seconds_per_step"], 4)
    return result


def stage_search(args: argparse.Namespace, root: Path) -> dict:
    import torch

    from teachclip.core.config import StudentConfig
    from teachclip.models.io import save_model
    from teachclip.models.student import Student
    from teachclip.tools.search import Searcher, build_index

    frames = root / "frames.zarr"
    if not frames.exists():
        raise SystemExit(f"{frames}: run the decode stage first (same --workdir)")
    model_dir = root / "student"
    config = StudentConfig(backbone={"name": MODEL, "pretrained": None, "max_words": WORDS, "precision": "fp32"},
                           head="seqTransf", afa=True, temporal_layers=4, max_frames=FRAMES)
    torch.manual_seed(0)
    save_model(model_dir, Student(config), "student", config)
    index = root / "index.zarr"
    start = now()
    build_index(model_dir, frames, index, dtype="float16", device=args.device, progress=False)
    index_s = now() - start
    searcher = Searcher(index, model_dir, device=args.device)
    real = searcher.embeddings.shape[0]
    searcher.embeddings = tile_features({"e": searcher.embeddings}, args.index_size)["e"]
    query = "a man is driving a red car down the street"
    searcher.top_k(searcher.encode([query])[0], 10)  # warm-up
    start = now()
    for _ in range(args.queries):
        searcher.top_k(searcher.encode([query])[0], 10)
    query_s = (now() - start) / args.queries
    start = now()
    for _ in range(args.queries):
        searcher.encode([query])
    encode_s = (now() - start) / args.queries
    return {"index_videos": args.index_size, "real_videos_tiled": int(real), "dtype": "float16",
            "index_build_videos_per_s": round(real / index_s, 3),
            "queries_per_s": round(1 / query_s, 2), "query_text_encode_s": round(encode_s, 5),
            "scan_s": round(max(query_s - encode_s, 0.0), 5),
            "index_bytes_per_video": int(tree_size(index) / real)}


def stage_stores(args: argparse.Namespace, root: Path) -> dict:
    import numpy as np

    from teachclip.core.config import BackboneConfig, ComputeConfig, ExtractConfig
    from teachclip.stages.encode_frames import encode_frames
    from teachclip.stores.teacher_cache.dense import create_group, write_block
    from teachclip.stores.teacher_cache.schema import TeacherIdentity, plan_layout

    frames = root / "frames.zarr"
    if not frames.exists():
        raise SystemExit(f"{frames}: run the decode stage first (same --workdir)")
    features = root / "features.zarr"
    start = now()
    encode_frames(frames, features, BackboneConfig(name=MODEL, pretrained=None, precision="fp32"),
                  ComputeConfig(scheduler="sync", device=args.device), overwrite=True, progress=False)
    encode_s = now() - start
    videos = args.clips

    # what a training step's loader does per video: read + decompress its frames (process CPU time)
    from teachclip.stores.frames import FramesStore

    store = FramesStore.open(frames)
    rows = np.flatnonzero(np.asarray(store.valid, dtype=bool))
    store.read(rows)
    start = now()
    for _ in range(args.repeats):
        for row in rows:
            store.read(np.array([row]))
    read_rate = args.repeats * len(rows) / (now() - start)

    # a dense group as extract-teachers writes it; values like teacher cosines (mean 0.25, sd 0.05)
    rng = np.random.default_rng(0)
    defaults = ExtractConfig()
    n_texts, n_videos = args.cache_texts, args.cache_videos
    layout = plan_layout(n_texts, n_videos, FRAMES, defaults.block_texts, defaults.chunk_texts,
                         defaults.block_videos, defaults.memory_budget_mb)
    identity = TeacherIdentity(kind="xclip", config={}, checkpoint_sha256=None, score_version=1,
                               has_frame_relevance=True, similarity_definition="bench",
                               relevance_definition="bench", frames_fingerprint="0" * 64,
                               manifest_fingerprint="0" * 64)
    cache = root / "cache.zarr"
    create_group(cache, "xclip", identity, layout, [f"c{i:07d}" for i in range(n_texts)],
                 [f"v{i:06d}" for i in range(n_videos)], rng.integers(0, n_videos, n_texts))
    for block in range(layout.n_blocks):
        begin, stop = layout.block_rows(block)
        write_block(cache / "xclip", block, rng.normal(0.25, 0.05, (stop - begin, n_videos)).astype(np.float32),
                    rng.random((stop - begin, FRAMES), dtype=np.float32))
    cache_bytes = tree_size(cache)
    return {"features_store_bytes_per_video": int(tree_size(features) / videos),
            "frames_store_read_videos_per_s": round(read_rate, 2),
            "features_encode_videos_per_s": round(videos / encode_s, 3),
            "teacher_cache_texts": n_texts, "teacher_cache_videos": n_videos,
            "teacher_cache_bytes_per_pair": round(cache_bytes / (n_texts * n_videos), 4),
            "teacher_cache_bytes": cache_bytes}


STAGE_FUNCTIONS = {name: globals()[f"stage_{name}"] for name in STAGES}


# ---- driver ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(parser, "cpu", 1)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--only", choices=STAGES, help=argparse.SUPPRESS)  # a child process: one stage
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--update", action="store_true",
                        help="keep the other stages' results already in --out (re-measure some stages only)")
    parser.add_argument("--quick", action="store_true", help="the smallest counts: a smoke test in about a minute")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--clip-seconds", type=int, default=15)
    parser.add_argument("--tower-batch", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--teachers", default="xclip,xpool")
    parser.add_argument("--extract-videos", type=int, default=4)
    parser.add_argument("--block-texts", type=int, default=128)
    parser.add_argument("--score-videos", type=int, default=256)
    parser.add_argument("--encode-batch", type=int, default=4)
    parser.add_argument("--budget-mb", type=int, default=16384, help="extract.memory_budget_mb (msrvtt-b32.yaml)")
    parser.add_argument("--memory-texts", default="32,128,512")
    parser.add_argument("--memory-videos", default="64,256,1024")
    parser.add_argument("--memory-texts-fixed", type=int, default=128)
    parser.add_argument("--memory-videos-fixed", type=int, default=256)
    parser.add_argument("--memory-budgets", default="16384", help="memory_budget_mb values of the grid")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--index-size", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--cache-texts", type=int, default=4096)
    parser.add_argument("--cache-videos", type=int, default=9000)
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in {"clips": 1, "clip_seconds": 10, "tower_batch": 2, "repeats": 1, "extract_videos": 1,
                           "block_texts": 8, "score_videos": 16, "encode_batch": 2, "memory_texts": "8,16",
                           "memory_videos": "16,32", "memory_texts_fixed": 8, "memory_videos_fixed": 16,
                           "memory_budgets": "16384", "train_batch": 2, "index_size": 1000, "queries": 2,
                           "cache_texts": 64, "cache_videos": 100}.items():
            setattr(args, key, value)
    for key in ("memory_texts", "memory_videos", "memory_budgets"):
        if isinstance(getattr(args, key), str):
            setattr(args, key, [int(x) for x in getattr(args, key).split(",")])
    return args


def run_child(stage: str, root: Path, argv: list[str]) -> dict:
    """One stage in a fresh process; its JSON on stdout, or the failure."""
    start = time.perf_counter()
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--only", stage, "--workdir", str(root)]
    # a fixed mmap threshold: large blocks are mmapped and returned to the OS when freed, so RSS follows them
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=HERE, env=env)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:] or ["failed"],
                "returncode": done.returncode, "wall_s": round(time.perf_counter() - start, 1)}
    result = json.loads(done.stdout)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def strip_driver_options(argv: list[str]) -> list[str]:
    """The command line minus the options only the driver uses (``--stages``, ``--out``, ``--workdir``)."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        name = item.split("=", 1)[0]
        if name == "--update":
            continue
        if name in ("--stages", "--out", "--workdir"):
            skip = "=" not in item
            continue
        kept.append(item)
    return kept


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.only:
        import torch

        torch.set_num_threads(args.threads)
        result = STAGE_FUNCTIONS[args.only](args, args.workdir)
        result["peak_rss_mb"] = round(peak_rss_mb(), 1)
        print(json.dumps(result))
        return result
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
    report: dict[str, Any] = {
        "bench": "real_size", "model": MODEL, "frames": FRAMES, "image_size": SIZE, "words": WORDS,
        "device": args.device, "threads": args.threads, "quick": args.quick,
        "clock": "process CPU time with --threads torch threads (a shared machine's load does not inflate it); "
                 "each stage in its own process (peak_rss_mb is that stage's)",
        "machine": machine_info(),
    }
    if args.update and args.out and args.out.exists():
        previous = json.loads(args.out.read_text())
        report = {**previous, **{k: v for k, v in report.items() if k != "machine"}}
        report["updated_stages"] = stages
    with workdir(args.workdir, "real-size") as root:
        for stage in stages:
            print(f"real_size: {stage} ...", file=sys.stderr, flush=True)
            report[stage] = run_child(stage, root, strip_driver_options(argv))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return emit(report)


if __name__ == "__main__":
    main()
