"""One student training step and one teacher extraction block, with peak memory and throughput.

ViT-B/32-sized models with random weights (nothing is downloaded): the student is the MSR-VTT recipe's
(params/msrvtt-b32.yaml: CLIP4Clip seqTransf + AFA, 12 frames of 224 px, 32 words, global batch 120)
and its step is the stage's own (``StudentStep`` + ``batch_losses`` with Pearson + CE against random
soft labels of two teachers at 0.2 / 1 / 2, AdamW, grad clip, autocast on CUDA). The extraction block
is what ``extract-teachers`` does per block for each teacher, configured as the official checkpoints
load (X-CLIP: raw CLIP frames + full reweighting; TS2-Net: token positions, shift_div 7 / offset 3):
encode ``--videos`` videos and ``--block-texts`` captions, score every caption against every video
in memory-budgeted sub-blocks, and the frame relevance of matched pairs.

Usage (prints one JSON document)::

    python bench/gpu_step.py --device cuda                  # the real measurement (one GPU)
    python bench/gpu_step.py --device cuda --model ViT-B-16-quickgelu
    python bench/gpu_step.py --small                        # tiny models on CPU, seconds: a smoke test

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` per phase (reset before each); on CPU the
process's peak resident set size so far (``ru_maxrss``: it never goes down, so later phases include
earlier ones). Times are wall clock, after ``--warmup`` untimed repetitions, CUDA synchronised.
"""

from __future__ import annotations

import argparse
import resource
import sys
from typing import Any

import numpy as np
import torch
from common import Clock, add_device_option, add_threads_option, device_name, emit, torch_setup

from teachclip.core.config import StudentConfig, TeacherConfig, TrainStudentConfig
from teachclip.core.device import autocast, grad_scaler
from teachclip.models.scorer import cat_features, slice_features
from teachclip.models.student import Student
from teachclip.models.teachers import TEACHERS
from teachclip.stages.extract_teachers.worker import sub_block
from teachclip.stages.train_student import SoftLabels, StudentStep, batch_losses
from teachclip.training.optim import build_optimizer

WORDS = ("a man woman dog cat car person people is are playing running cooking talking driving singing "
         "on in at with the of street kitchen stage field video game music red blue small big two").split()
# the options under which the official checkpoints load (teachers/official.py)
OFFICIAL_OPTIONS = {
    "xclip": {"frame_features": "clip", "full_reweighting": True, "max_frames": 12},
    "xpool": {},
    "ts2net": {"positions": "token", "shift": "token", "shift_layers": 2, "shift_div": 7, "shift_next_offset": 3,
               "max_frames": 12},
}
# MSR-VTT 9k training set: captions x videos every teacher scores
MSRVTT_9K_TEXTS, MSRVTT_9K_VIDEOS = 180_000, 9_000


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def timed(fn, device: torch.device, warmup: int, repeats: int) -> tuple[float, Any]:
    """Seconds per call (mean over ``repeats`` after ``warmup`` calls; wall clock, CUDA synchronised)
    and the last result."""
    return Clock(device, cpu="wall").mean(fn, repeats, warmup)


def random_captions(count: int, generator: np.random.Generator) -> list[str]:
    return [" ".join(generator.choice(WORDS, size=generator.integers(6, 16))) for _ in range(count)]


def random_frames(videos: int, frames: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.randint(0, 256, (videos, frames, size, size, 3), dtype=torch.uint8, generator=generator)
    return pixels, torch.ones(videos, frames, dtype=torch.bool)


def train_step(args, device: torch.device) -> dict[str, Any]:
    """One optimisation step of the student on a global batch of ``--batch`` videos (one process)."""
    config = TrainStudentConfig(batch_size=args.batch)
    student_config = StudentConfig(
        backbone={"name": args.model, "pretrained": None, "max_words": 32, "precision": "amp" if args.amp else "fp32"},
        head="seqTransf", afa=True, temporal_layers=4, max_frames=max(args.frames, 12))
    torch.manual_seed(0)
    student = Student(student_config).to(device).train()
    names = {id(p): name for name, p in student.named_parameters()}
    groups = {group: [(names[id(p)], p) for p in params] for group, params in student.param_groups().items()}
    optimizer = build_optimizer(groups, {"backbone": config.lr_backbone, "new": config.lr_new, "afa": config.lr_afa},
                                config.weight_decay)
    scaler = grad_scaler(device, args.amp)
    step_module = StudentStep(student)
    generator = torch.Generator().manual_seed(1)
    size = student.backbone.image_size
    frames, mask = random_frames(args.batch, args.frames, size, generator)
    tokens = student.tokenize(random_captions(args.batch, np.random.default_rng(2)))
    labels = SoftLabels([(1.0, torch.randn(args.batch, args.batch, generator=generator)) for _ in range(2)],
                        [(1.0, torch.randn(args.batch, args.frames, generator=generator)) for _ in range(2)])
    terms = {"nce": config.weight_nce, "coarse": config.weight_coarse, "fine": config.weight_fine}

    def step() -> float:
        inputs = {"tokens": tokens.to(device), "frames": frames.to(device), "mask": mask.to(device)}
        with autocast(device, args.amp):
            outputs = step_module(**inputs)
        losses = batch_losses(outputs, labels, terms, config, [args.batch])
        scaler.scale(losses["loss"]).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return float(losses["loss"].detach())

    reset_peak(device)
    seconds, loss = timed(step, device, args.warmup, args.repeats)
    return {
        "model": args.model, "batch": args.batch, "frames": args.frames, "image_size": size, "words": student.backbone.max_words,
        "amp": bool(args.amp and device.type == "cuda"),
        "parameters_millions": round(sum(p.numel() for p in student.parameters()) / 1e6, 2),
        "seconds_per_step": round(seconds, 4), "videos_per_second": round(args.batch / seconds, 2),
        "frames_per_second": round(args.batch * args.frames / seconds, 1),
        "peak_memory_mb": round(peak_memory_mb(device), 1), "loss": round(loss, 4),
    }


def extraction_block(args, kind: str, device: torch.device) -> dict[str, Any]:
    """Encode the block's videos and captions and score every pair, as ``extract-teachers`` does."""
    options = dict(OFFICIAL_OPTIONS[kind])
    if "max_frames" in options:
        options["max_frames"] = max(options["max_frames"], args.frames)
    config = TeacherConfig(kind=kind, backbone={"name": args.model, "pretrained": None, "max_words": 32,
                                                "precision": "amp" if args.amp else "fp32"}, options=options)
    torch.manual_seed(0)
    teacher = TEACHERS[kind](config, load_weights=False).to(device).eval()
    generator = torch.Generator().manual_seed(3)
    frames, mask = random_frames(args.videos, args.frames, teacher.backbone.image_size, generator)
    captions = random_captions(args.block_texts, np.random.default_rng(4))
    own = np.arange(args.block_texts) % args.videos  # caption i belongs to video own[i]
    amp = args.amp and device.type == "cuda"

    def encode_videos():
        parts = []
        for start in range(0, args.videos, args.encode_batch):
            stop = start + args.encode_batch
            parts.append(teacher.encode_videos({"frames": frames[start:stop], "mask": mask[start:stop],
                                                "video_ids": [str(i) for i in range(start, min(stop, args.videos))]}))
        return cat_features(parts)

    def encode_texts():
        parts = []
        for start in range(0, args.block_texts, args.encode_batch):
            stop = start + args.encode_batch
            ids = [str(i) for i in range(start, min(stop, args.block_texts))]
            parts.append(teacher.encode_texts(teacher.text_batch(captions[start:stop], ids, ids)))
        return cat_features(parts)

    result: dict[str, Any] = {"options": options, "videos": args.videos, "texts": args.block_texts}
    with torch.inference_mode(), autocast(device, amp):
        reset_peak(device)
        seconds, videos = timed(encode_videos, device, args.warmup, args.repeats)
        result |= {"encode_videos_s": round(seconds, 4), "videos_per_second": round(args.videos / seconds, 1),
                   "encode_videos_peak_memory_mb": round(peak_memory_mb(device), 1)}
        reset_peak(device)
        seconds, texts = timed(encode_texts, device, args.warmup, args.repeats)
        result |= {"encode_texts_s": round(seconds, 4), "texts_per_second": round(args.block_texts / seconds, 1)}
        step_texts, step_videos = sub_block(texts, videos, args.block_texts, args.videos, args.memory_budget_mb)

        def score():
            out = np.empty((args.block_texts, args.videos), dtype=np.float32)
            for t0 in range(0, args.block_texts, step_texts):
                text_slice = slice_features(texts, t0, t0 + step_texts)
                for v0 in range(0, args.videos, step_videos):
                    block = teacher.score(text_slice, slice_features(videos, v0, v0 + step_videos))
                    out[t0 : t0 + step_texts, v0 : v0 + step_videos] = block.float().cpu().numpy()
            index = torch.as_tensor(own, device=device)
            relevance = torch.cat([
                teacher.relevance(slice_features(texts, t0, t0 + step_texts),
                                  {key: value[index[t0 : t0 + step_texts]] for key, value in videos.items()})
                for t0 in range(0, args.block_texts, step_texts)])
            return out, relevance

        reset_peak(device)
        seconds, (similarity, _) = timed(score, device, args.warmup, args.repeats)
    pairs = args.block_texts * args.videos
    pairs_per_second = pairs / seconds
    video_rate, text_rate = result["videos_per_second"], result["texts_per_second"]
    hours = (MSRVTT_9K_VIDEOS / video_rate + MSRVTT_9K_TEXTS / text_rate
             + MSRVTT_9K_TEXTS * MSRVTT_9K_VIDEOS / pairs_per_second) / 3600
    return result | {
        "sub_block": [step_texts, step_videos], "score_s": round(seconds, 4),
        "pairs_per_second": round(pairs_per_second, 1), "score_peak_memory_mb": round(peak_memory_mb(device), 1),
        "similarity_finite": bool(np.isfinite(similarity).all()),
        "msrvtt9k_hours_one_worker": round(hours, 3),  # projection from this block's rates
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_option(parser, "auto")
    parser.add_argument("--small", action="store_true", help="tiny models and sizes: a CPU smoke test in seconds")
    parser.add_argument("--model", default=None, help="open_clip model (default ViT-B-32-quickgelu; --small: teachclip-micro)")
    parser.add_argument("--batch", type=int, default=None, help="student global batch (default 120; --small 8)")
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default 12; --small 4)")
    parser.add_argument("--videos", type=int, default=None, help="videos per extraction block (default 1024; --small 6)")
    parser.add_argument("--block-texts", type=int, default=None, help="captions per block (default 2048; --small 12)")
    parser.add_argument("--encode-batch", type=int, default=None, help="videos/captions per encode call (default 64)")
    parser.add_argument("--memory-budget-mb", type=int, default=16384, help="extract.memory_budget_mb")
    parser.add_argument("--teachers", default="xclip,xpool,ts2net", help="comma-separated teacher kinds ('' for none)")
    parser.add_argument("--skip-train", action="store_true", help="only the extraction blocks")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="fp32 on CUDA (default: autocast)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (default 3; --small 1)")
    add_threads_option(parser, None)
    args = parser.parse_args(argv)
    small = {"model": "teachclip-micro", "batch": 8, "frames": 4, "videos": 6, "block_texts": 12, "encode_batch": 4,
             "repeats": 1}
    full = {"model": "ViT-B-32-quickgelu", "batch": 120, "frames": 12, "videos": 1024, "block_texts": 2048,
            "encode_batch": 64, "repeats": 3}
    for key, value in (small if args.small else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    device = torch_setup(args)
    report: dict[str, Any] = {
        "bench": "gpu_step", "device": str(device), "small": args.small,
        "device_name": device_name(device), "clock": Clock(device, cpu="wall").description,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "peak_memory": "torch.cuda.max_memory_allocated per phase" if device.type == "cuda"
        else "process peak RSS so far (cumulative)",
    }
    if not args.skip_train:
        report["train_step"] = train_step(args, device)
    report["extraction_block"] = {}
    for kind in filter(None, (name.strip() for name in args.teachers.split(","))):
        report["extraction_block"][kind] = extraction_block(args, kind, device)
    return emit(report, device)


if __name__ == "__main__":
    main()
