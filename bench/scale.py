"""The cost model: time, memory and disk per stage for MSR-VTT 9k, VATEX, ActivityNet and WebVid-2.5M.

    python bench/scale.py [--measured bench/results/real_size-cpu.json] [--gpu-measured FILE.json]
                          [--doc docs/scale.md] [--check] [--json]

Inputs: the per-unit costs ``bench/real_size.py`` measured at real size on a CPU (bytes on disk per
video and per pair, decode CPU-seconds per video, FLOPs per frame / caption / scored pair counted by
``torch.utils.flop_counter``, per-worker memory of an X-CLIP block) and, when given, the figures of a
GPU run (``bench/gpu_run.py``'s JSON), which then replace the projected GPU rates. Everything else is
an **assumption**, declared once below (``GPU``, ``UTILISATION``, ``CPU_CORES``, ``DATASETS``) and
printed in the document.

Output: the generated sections of ``--doc`` (between ``<!-- generated:NAME -->`` and
``<!-- /generated -->`` markers; the text around them is hand-written and kept). ``--check`` writes
nothing and exits 1 when the document is not what these inputs generate (``tests/test_scale.py``).
``--json`` prints the projections as JSON instead. No torch: runs in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MEASURED = ROOT / "bench" / "results" / "real_size-cpu.json"
GPU_MEASURED = ROOT / "bench" / "results" / "gpu_run.json"  # used when present
DOC = ROOT / "docs" / "scale.md"

# ---- assumptions (stated in the document; a GPU run replaces the GPU ones) -------------------------------

# NVIDIA H100 SXM5 80 GB datasheet: 989 TFLOP/s dense BF16 tensor core (1,979 is with 2:4 sparsity),
# 67 TFLOP/s FP32 (CUDA cores), 80 GB HBM3 at 3.35 TB/s. 8 GPUs: an HGX H100 node.
GPU = {"name": "H100 SXM 80 GB", "bf16_dense_tflops": 989.0, "fp32_tflops": 67.0, "memory_gb": 80.0,
       "source": "NVIDIA H100 Tensor Core GPU datasheet (SXM5: 989 TFLOP/s dense BF16, 67 TFLOP/s FP32, 80 GB HBM3)"}
# Model FLOP utilisation assumed per kind of work: (fraction, the peak it is a fraction of).
UTILISATION = {
    "tower_inference": (0.25, "bf16_dense_tflops"),  # ViT-B/32 under autocast: small matmuls (50 x 768 tokens)
    "training": (0.15, "bf16_dense_tflops"),  # forward + backward + AdamW of the same small matmuls, + DDP
    "scoring": (0.20, "fp32_tflops"),  # pair scoring runs in fp32 (@full_precision): many small softmaxes and
                                       # reductions over [words, frames] matrices, bound by memory traffic
}
DATA_PARALLEL_EFFICIENCY = 0.9  # 8-GPU training step time vs 1/8 of one GPU's (gradient all-reduce)
CPU_CORES = {1: 16, 8: 128}  # decode processes on the machine with 1 GPU / with 8 GPUs
BLOCK_TEXTS = 2048  # extract.block_texts of params/msrvtt-b32.yaml
BUDGET_MB = 16384  # extract.memory_budget_mb of params/msrvtt-b32.yaml
CHUNK_TEXTS = 32  # extract.chunk_texts: a dense group's chunks are [32 captions, every video]
MAX_BLOCK_BYTES = 4 << 30  # teacher_cache/schema.py: one block's float32 rows
IN_MEMORY_LIMIT_BYTES = 4 << 30  # teacher_cache/schema.py: a dense similarity array up to this is read into RAM
TEACHERS = ("xclip", "xpool")  # params/msrvtt-b32.yaml's two teachers
STUDENT_PARAMETERS = 164.16e6  # CLIP ViT-B/32 + seqTransf (4 layers) + AFA (bench/gpu_step.py train_step)
# activations per image for training, ViT-B/32 (50 tokens, width 768, 12 layers, 12 heads) with autocast:
# s*h*(34 + 5*a*s/h) bytes per layer (Korthikanti et al. 2022, "Reducing Activation Recomputation in
# Large Transformer Models", no recomputation): 50*768*(34 + 5*12*50/768) * 12 layers
ACTIVATION_BYTES_PER_IMAGE = 50 * 768 * (34 + 5 * 12 * 50 / 768) * 12


@dataclass(frozen=True)
class Dataset:
    name: str
    train_videos: int
    train_captions: int
    test_videos: int
    seconds: float  # mean clip duration
    pixels: int  # width x height of the source videos
    frames: int
    words: int
    epochs: int
    source: str


# Sizes as the usual retrieval splits use them (CLIP4Clip / TeachCLIP); durations and resolutions are
# typical values of each collection (assumed, they only scale the decode cost).
DATASETS = (
    Dataset("MSR-VTT 9k", 9_000, 180_000, 1_000, 15.0, 320 * 240, 12, 32, 10,
            "9k train split, 20 captions/video, 1k-A test; 10-30 s clips, 320x240; 10 epochs (msrvtt-b32.yaml)"),
    Dataset("VATEX", 25_991, 259_910, 1_500, 10.0, 640 * 360, 12, 32, 5,
            "25,991 train videos x 10 English captions, 1,500 test; 10 s YouTube clips (assumed 640x360); 5 epochs (assumed)"),
    Dataset("ActivityNet", 10_009, 10_009, 4_917, 120.0, 640 * 360, 64, 64, 20,
            "paragraph-to-video: 10,009 train videos, one paragraph each, val1 4,917 test; ~2 min (assumed 640x360); "
            "64 frames, 64 words; 20 epochs (assumed)"),
    Dataset("WebVid-2.5M", 2_500_000, 2_500_000, 1_000, 18.0, 596 * 336, 12, 32, 1,
            "2.5M videos, 1 caption each; ~18 s at 596x336 (the lowres release); 1 epoch (assumed)"),
)
MEASURED_CLIP_PIXELS, MEASURED_FRAMES, MEASURED_WORDS = 320 * 240, 12, 32

# ---- the model ------------------------------------------------------------------------------------------


def gpu_flops(kind: str) -> float:
    fraction, peak = UTILISATION[kind]
    return GPU[peak] * 1e12 * fraction


def teacher_units(measured: dict, kind: str, data: Dataset) -> dict[str, float]:
    """FLOPs per video, per caption and per pair of a teacher at this data set's frames and words
    (the measured counts at 12 frames / 32 words, scaled linearly: frames for the tower, words for the
    text tower, frames x words for X-CLIP's frame-word matrix, frames for X-Pool's attention)."""
    unit = measured["extract"][kind]
    frames, words = data.frames / MEASURED_FRAMES, data.words / MEASURED_WORDS
    pair_scale = frames * words if kind == "xclip" else frames
    return {"video": unit["flops_per_video"] * frames, "text": unit["flops_per_text"] * words,
            "pair": unit["flops_per_pair_score"] * pair_scale,
            "video_feature_bytes": unit["video_feature_bytes"] * frames,
            "text_feature_bytes": unit["text_feature_bytes"] * words}


def gpu_rates(gpu: dict | None, kind: str) -> dict[str, float] | None:
    """Measured GPU rates of a teacher (videos/s, texts/s, pairs/s) from a gpu_run.py JSON, if any."""
    if not gpu:
        return None
    unit = (gpu.get("extraction") or {}).get(kind) or {}
    if not all(isinstance(unit.get(k), (int, float)) for k in ("videos_per_s", "texts_per_s", "score_pairs_per_s")):
        return None
    return unit


def project(measured: dict, data: Dataset, gpus: int, gpu: dict | None = None) -> dict[str, Any]:
    """Hours, memory and disk of each stage for one data set on ``gpus`` GPUs."""
    pairs = data.train_captions * data.train_videos
    decode = measured["decode"]
    seconds_per_video = (1 / decode["videos_per_s"]) * (data.seconds / 15.0) * (data.pixels / MEASURED_CLIP_PIXELS)
    stages: dict[str, dict[str, Any]] = {
        "decode": {"hours": (data.train_videos + data.test_videos) * seconds_per_video / CPU_CORES[gpus] / 3600,
                   "where": f"{CPU_CORES[gpus]} CPU cores", "source": "measured CPU rate, scaled"},
    }
    for kind in TEACHERS:
        units = teacher_units(measured, kind, data)
        measured_gpu = gpu_rates(gpu, kind)
        if measured_gpu:  # measured on a GPU: rates x (this data set's units / the measured units)
            seconds = (data.train_videos / measured_gpu["videos_per_s"] * data.frames / MEASURED_FRAMES
                       + data.train_captions / measured_gpu["texts_per_s"]
                       + pairs / measured_gpu["score_pairs_per_s"] * units["pair"] / measured["extract"][kind]["flops_per_pair_score"])
            source = "measured GPU rates"
        else:
            seconds = ((data.train_videos * units["video"] + data.train_captions * units["text"]) / gpu_flops("tower_inference")
                       + pairs * units["pair"] / gpu_flops("scoring"))
            source = "projection (FLOPs / assumed throughput)"
        # one worker per GPU. On the GPU: the teacher's weights, every train video's features (fp16 under
        # autocast), the scoring workspace (<= budget / 2, worker.sub_block). In host RAM: one block's float32
        # output [rows, videos], rows = block_texts cut so that it fits budget / 2 (schema.plan_layout)
        features = data.train_videos * units["video_feature_bytes"] / 2
        row_bytes = 4 * (data.train_videos + data.frames)
        rows = min(BLOCK_TEXTS, min(BUDGET_MB * 2**20 // 2, MAX_BLOCK_BYTES) // row_bytes, data.train_captions)
        rows = max(CHUNK_TEXTS, rows // CHUNK_TEXTS * CHUNK_TEXTS)
        workspace = BUDGET_MB * 2**20 / 2  # the most sub_block allows
        if kind == "xclip":  # what one score call of the sub-block size really takes, measured
            memory = measured["xclip_memory"]
            call_pairs = min(workspace // memory["workspace_bytes_per_pair_assumed_by_sub_block"],
                             rows * data.train_videos)
            workspace = call_pairs * memory["workspace_bytes_per_pair_measured"]
        stages[f"extract {kind}"] = {
            "hours": seconds / gpus / 3600, "where": f"{gpus} GPU worker(s)", "source": source,
            "worker_gpu_memory_gb": (2 * 151.3e6 + features + workspace) / 1e9,  # fp16 B/32 CLIP + heads
            "worker_host_memory_gb": rows * row_bytes / 1e9, "block_rows": rows,
            "pair_tflop": pairs * units["pair"] / 1e12,
        }
    # the student: every video once per epoch, one caption each; forward + backward = 3 x forward FLOPs
    step_videos = 120
    steps = math.ceil(data.train_videos / step_videos) * data.epochs
    image_flops, text_flops = measured["tower"]["flops_per_image"], measured["extract"]["xclip"]["flops_per_text"]
    sample_flops = 3 * (data.frames * image_flops + text_flops * data.words / MEASURED_WORDS)
    train_seconds = steps * step_videos * sample_flops / gpu_flops("training")
    measured_step = (gpu or {}).get("train_step") or {}
    train_source = "projection (FLOPs / assumed throughput)"
    if measured_step.get("batch") == step_videos and isinstance(measured_step.get("seconds_per_step"), (int, float)):
        # gpu_step.py's step at 12 frames / 32 words, scaled by this data set's FLOPs per sample
        reference = 3 * (MEASURED_FRAMES * image_flops + text_flops)
        train_seconds = steps * measured_step["seconds_per_step"] * sample_flops / reference
        train_source = "measured GPU step, scaled"
    if gpus > 1:
        train_seconds = train_seconds / gpus / DATA_PARALLEL_EFFICIENCY
    per_gpu_videos = step_videos / gpus
    train_memory = (STUDENT_PARAMETERS * 16  # fp32 weights, gradients, AdamW's two moments
                    + per_gpu_videos * data.frames * ACTIVATION_BYTES_PER_IMAGE)
    read_rate = measured["stores"]["frames_store_read_videos_per_s"] * MEASURED_FRAMES / data.frames
    loader_seconds = steps * step_videos / (read_rate * CPU_CORES[gpus])
    stages["train student"] = {
        "hours": max(train_seconds, loader_seconds) / 3600, "where": f"{gpus} GPU(s), batch 120",
        "source": train_source if train_seconds >= loader_seconds
        else "projection (bound by reading frames on the CPU cores)",
        "steps": steps, "gpu_memory_gb": train_memory / 1e9, "loader_hours": loader_seconds / 3600,
    }
    similarity_bytes = pairs * 2  # float16, as the readers hold it
    stages["train student"]["soft_labels"] = (
        "in RAM" if similarity_bytes <= IN_MEMORY_LIMIT_BYTES
        else step_videos * CHUNK_TEXTS * data.train_videos * measured["stores"]["teacher_cache_bytes_per_pair"])
    bound = max(stages, key=lambda name: stages[name]["hours"])
    frames_bytes = measured["decode"]["frames_store_bytes_per_video"] * data.frames / MEASURED_FRAMES
    videos = data.train_videos + data.test_videos
    disk = {
        "frames store": videos * frames_bytes,
        "frame-features store": videos * measured["stores"]["features_store_bytes_per_video"] * data.frames / MEASURED_FRAMES,
        "teacher cache (per teacher)": pairs * measured["stores"]["teacher_cache_bytes_per_pair"]
        + data.train_captions * data.frames * 4,
        "search index": videos * measured["search"]["index_bytes_per_video"],
    }
    return {"dataset": data.name, "gpus": gpus, "pairs": pairs, "stages": stages, "bound": bound,
            "total_hours": sum(s["hours"] for s in stages.values()), "disk_bytes": disk}


# ---- the document ---------------------------------------------------------------------------------------


def hours(value: float) -> str:
    if value < 1 / 60:
        return f"{value * 3600:.0f} s"
    if value < 1:
        return f"{value * 60:.0f} min"
    if value < 48:
        return f"{value:.1f} h"
    if value < 24 * 365:
        return f"{value / 24:.0f} days"
    return f"{value / 24 / 365:.1f} years"


def size(value: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def section_assumptions(measured: dict, gpu: dict | None) -> str:
    lines = [
        f"- **GPU (assumed)**: {GPU['name']}, {GPU['bf16_dense_tflops']:g} TFLOP/s dense BF16, "
        f"{GPU['fp32_tflops']:g} TFLOP/s FP32, {GPU['memory_gb']:g} GB. Source: {GPU['source']}. "
        "8 GPUs = one HGX node of eight.",
        "- **Utilisation (assumed)**: " + ", ".join(
            f"{name.replace('_', ' ')} {fraction:.0%} of the {'BF16' if peak.startswith('bf16') else 'FP32'} peak"
            for name, (fraction, peak) in UTILISATION.items())
        + f"; data-parallel efficiency on 8 GPUs {DATA_PARALLEL_EFFICIENCY:.0%}.",
        f"- **CPU cores for decoding and frame reading (assumed)**: {CPU_CORES[1]} with 1 GPU, {CPU_CORES[8]} with 8; "
        "decode cost per video scales with duration x source pixels from the measured clip.",
        f"- **Extraction**: the params file's two teachers ({', '.join(TEACHERS)}), block_texts {BLOCK_TEXTS}, "
        f"memory_budget_mb {BUDGET_MB}, one worker per GPU; **training**: global batch 120, every video once per epoch.",
        "- **GPU figures measured**: " + ("yes, from `" + gpu.get("_path", "gpu_run.json") + "` (" + str(gpu.get("device_name", "?"))
                                          + "): they replace the projected extraction rates below" if gpu_rates(gpu, TEACHERS[0])
                                          else "none. Every GPU time and GPU memory figure below is a **projection**."),
        "",
        "| data set | train videos | train captions | test videos | frames | words | epochs | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in DATASETS:
        lines.append(f"| {d.name} | {d.train_videos:,} | {d.train_captions:,} | {d.test_videos:,} | {d.frames} | "
                     f"{d.words} | {d.epochs} | {d.source} |")
    return "\n".join(lines)


def section_measured(measured: dict) -> str:
    m = measured
    machine = m.get("machine", {})
    rows = [
        ("decode (pyav, 224 px, 12 frames at 1 fps)", f"{m['decode']['videos_per_s']:.3g} videos/s per core",
         f"{m['decode']['clip']}; peak RSS {m['decode']['peak_rss_mb']:.0f} MB"),
        ("image tower ViT-B/32", f"{m['tower']['frames_per_s']:.3g} frames/s",
         f"{m['tower']['flops_per_image'] / 1e9:.2f} GFLOP per 224 px frame; peak RSS {m['tower']['peak_rss_mb']:.0f} MB"),
    ]
    for kind in TEACHERS:
        e = m["extract"][kind]
        rows += [
            (f"{kind}: encode videos / captions", f"{e['videos_per_s']:.3g} videos/s, {e['texts_per_s']:.3g} captions/s",
             f"{e['flops_per_video'] / 1e9:.1f} GFLOP per video, {e['flops_per_text'] / 1e9:.2f} GFLOP per caption"),
            (f"{kind}: score pairs (block_texts {e['block_texts']})", f"{number(e['score_pairs_per_s'])} pairs/s",
             f"{e['flops_per_pair_score'] / 1e3:.0f} kFLOP per pair; features {size(e['video_feature_bytes'])}/video, "
             f"{size(e['text_feature_bytes'])}/caption (fp32)"),
            (f"{kind}: MSR-VTT 9k cache on this core", f"{number(e['msrvtt9k_pairs_per_s_end_to_end'])} pairs/s end to end",
             f"{hours(e['msrvtt9k_one_worker_hours'])} for 1.62e9 pairs; peak RSS {m['extract']['peak_rss_mb']:.0f} MB (both teachers)"),
        ]
    t = m["train"]
    s = m["search"]
    st = m["stores"]
    rows += [
        (f"train-student step (batch {t['batch']}, seqTransf + AFA, fp32)", f"{t['steps_per_s']:.3g} steps/s",
         f"{t['seconds_per_step']:.1f} s/step, {t['videos_per_second']:.3g} videos/s; peak RSS {t['peak_rss_mb']:.0f} MB"),
        (f"search ({s['index_videos']:,}-video float16 index)", f"{s['queries_per_s']:.3g} queries/s",
         f"text encoding {s['query_text_encode_s'] * 1e3:.0f} ms + scan {s['scan_s'] * 1e3:.1f} ms; peak RSS {s['peak_rss_mb']:.0f} MB"),
        ("frames store read (training loader)", f"{st['frames_store_read_videos_per_s']:.3g} videos/s per core", "read + decompress 12 frames"),
        ("frames store at 224 px", f"{size(m['decode']['frames_store_bytes_per_video'])}/video",
         f"uncompressed {size(m['decode']['frames_uncompressed_bytes_per_video'])}; source file {size(m['decode']['source_bytes_per_video'])}"),
        ("frame-features store (B/32)", f"{size(st['features_store_bytes_per_video'])}/video", "float16 [12, 512]"),
        ("teacher cache (dense group)", f"{st['teacher_cache_bytes_per_pair']:.3g} bytes/pair",
         f"{st['teacher_cache_texts']:,} x {st['teacher_cache_videos']:,} written by the real writer"),
        ("search index (float16)", f"{size(s['index_bytes_per_video'])}/video", ""),
    ]
    lines = [f"Measured by `{m.get('_command', 'python bench/real_size.py')}` on {machine.get('cpu_model', '?')} "
             f"({m.get('threads', 1)} torch thread; {m.get('clock', '')}).", "",
             "| stage | measured | details |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def section_memory(measured: dict) -> str:
    mem = measured["xclip_memory"]
    lines = ["| memory_budget_mb | block_texts | videos | sub-block (texts x videos per score call) | peak increment "
             "| output block | workspace per pair of a call |",
             "|---|---|---|---|---|---|---|"]
    for r in mem["grid"]:
        lines.append(f"| {r['memory_budget_mb']} | {r['block_texts']} | {r['videos']} | {r['sub_block'][0]} x {r['sub_block'][1]} | "
                     f"{r['peak_increment_mb']:.1f} MB | {r['output_block_mb']:.2f} MB | "
                     f"{size(r['workspace_bytes_per_call_pair'])} |")
    measured_bytes, assumed = mem["workspace_bytes_per_pair_measured"], mem["workspace_bytes_per_pair_assumed_by_sub_block"]
    lines += ["", f"Workspace per scored pair: **{size(measured_bytes)} measured** (median of the calls of at least "
              f"4,096 pairs); `worker.sub_block` assumes {size(assumed)} (4 x one caption's and one video's features), "
              f"{assumed / measured_bytes:.0f} times more, so its sub-blocks are that much smaller than the budget allows."]
    return "\n".join(lines)


def section_projections(measured: dict, gpu: dict | None) -> str:
    lines = ["| data set | GPUs | decode | extract X-CLIP | extract X-Pool | train student | bound by | total |",
             "|---|---|---|---|---|---|---|---|"]
    for data in DATASETS:
        for gpus in (1, 8):
            p = project(measured, data, gpus, gpu)
            s = p["stages"]
            lines.append(f"| {data.name} | {gpus} | {hours(s['decode']['hours'])} | {hours(s['extract xclip']['hours'])} | "
                         f"{hours(s['extract xpool']['hours'])} | {hours(s['train student']['hours'])} | "
                         f"**{p['bound']}** | {hours(p['total_hours'])} |")
    return "\n".join(lines)


def section_memory_disk(measured: dict, gpu: dict | None) -> str:
    lines = ["| data set | frames store (224 px) | frame-features store | teacher cache, per teacher | search index | "
             "X-CLIP worker: GPU / host RAM | student GPU memory, 1 / 8 GPUs |",
             "|---|---|---|---|---|---|---|"]
    for data in DATASETS:
        one, eight = project(measured, data, 1, gpu), project(measured, data, 8, gpu)
        d, x = one["disk_bytes"], one["stages"]["extract xclip"]
        lines.append(f"| {data.name} | {size(d['frames store'])} | {size(d['frame-features store'])} | "
                     f"{size(d['teacher cache (per teacher)'])} | {size(d['search index'])} | "
                     f"{size(x['worker_gpu_memory_gb'] * 1e9)} / {size(x['worker_host_memory_gb'] * 1e9)} "
                     f"({x['block_rows']} rows) | "
                     f"{size(one['stages']['train student']['gpu_memory_gb'] * 1e9)} / "
                     f"{size(eight['stages']['train student']['gpu_memory_gb'] * 1e9)} |")
    return "\n".join(lines)


def section_dense_limit(measured: dict, gpu: dict | None) -> str:
    lines = ["| data set | pairs per teacher | dense cache, per teacher | X-CLIP scoring work | X-CLIP extraction, 8 GPUs "
             "| soft labels per student step | fits one GPU worker? |",
             "|---|---|---|---|---|---|---|"]
    for data in DATASETS:
        p, p8 = project(measured, data, 1, gpu), project(measured, data, 8, gpu)
        worker = p["stages"]["extract xclip"]["worker_gpu_memory_gb"]
        verdict = "yes" if worker < GPU["memory_gb"] else f"no ({worker:.0f} GB > {GPU['memory_gb']:g} GB)"
        labels = p["stages"]["train student"]["soft_labels"]
        labels = labels if isinstance(labels, str) else f"{size(labels)} read from disk"
        lines.append(f"| {data.name} | {p['pairs']:.3g} | {size(p['disk_bytes']['teacher cache (per teacher)'])} | "
                     f"{p['stages']['extract xclip']['pair_tflop'] / 1e3:.3g} PFLOP | "
                     f"{hours(p8['stages']['extract xclip']['hours'])} | {labels} | {verdict} |")
    return "\n".join(lines)


def section_gpu_measured(gpu: dict | None) -> str:
    if not gpu:
        return ("No GPU run recorded: every GPU figure on this page is a projection. Run "
                "`python bench/gpu_run.py --out bench/results/gpu_run.json` on a CUDA machine ([gpu-recipe.md](gpu-recipe.md)), "
                "then `python bench/scale.py --gpu-measured bench/results/gpu_run.json`.")
    lines = [f"Measured by `bench/gpu_run.py` on {gpu.get('device_name', '?')} ({gpu.get('gpus', '?')} GPU(s)):", "",
             "| step | status | seconds | figures |", "|---|---|---|---|"]
    for step in gpu.get("steps", []):
        figures = ", ".join(f"{k} {v}" for k, v in (step.get("figures") or {}).items())
        lines.append(f"| {step['name']} | {step['status']} | {step.get('seconds', '')} | {figures} |")
    return "\n".join(lines)


SECTIONS = {
    "assumptions": section_assumptions,
    "measured": lambda m, g: section_measured(m),
    "xclip-memory": lambda m, g: section_memory(m),
    "projections": section_projections,
    "memory-disk": section_memory_disk,
    "dense-limit": section_dense_limit,
    "gpu-measured": lambda m, g: section_gpu_measured(g),
}
MARKER = re.compile(r"(<!-- generated:(?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.S)


def render(document: str, measured: dict, gpu: dict | None) -> str:
    """``document`` with every generated section replaced by what the inputs give."""
    missing = set(SECTIONS) - {m.group("name") for m in MARKER.finditer(document)}
    if missing:
        raise SystemExit(f"{DOC}: no generated section(s) {sorted(missing)}")

    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in SECTIONS:
            raise SystemExit(f"{DOC}: unknown generated section {name!r}")
        return match.group(1) + SECTIONS[name](measured, gpu) + "\n" + match.group(4)

    return MARKER.sub(replace, document)


def load(path: Path | None, what: str) -> dict | None:
    if path is None:
        return None
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"{path}: cannot read the {what} JSON ({error})") from None
    document["_path"] = str(path.relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measured", type=Path, default=MEASURED, help="bench/real_size.py's JSON")
    parser.add_argument("--gpu-measured", type=Path, default=None, help="bench/gpu_run.py's JSON (replaces projections; default: "
                        "bench/results/gpu_run.json when it exists)")
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--check", action="store_true", help="exit 1 if --doc is not up to date; write nothing")
    parser.add_argument("--json", action="store_true", help="print the projections as JSON")
    args = parser.parse_args(argv)
    measured = load(args.measured, "measured")
    measured["_command"] = "nice -n 10 python bench/real_size.py --out " + measured["_path"]
    gpu_path = args.gpu_measured or (GPU_MEASURED if GPU_MEASURED.exists() else None)
    gpu = load(gpu_path, "GPU run")
    if gpu and (gpu.get("quick") or not str(gpu.get("device", "cuda")).startswith("cuda")):
        raise SystemExit(f"{gpu_path}: a --quick or CPU dry run of gpu_run.py: its figures are not GPU measurements")
    if args.json:
        print(json.dumps([project(measured, d, g, gpu) for d in DATASETS for g in (1, 8)], indent=2))
        return 0
    current = args.doc.read_text()
    updated = render(current, measured, gpu)
    if args.check:
        if updated != current:
            print(f"{args.doc} is out of date: run python bench/scale.py", file=sys.stderr)
            return 1
        return 0
    if updated != current:
        args.doc.write_text(updated)
    print(f"{args.doc}: {'updated' if updated != current else 'up to date'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
