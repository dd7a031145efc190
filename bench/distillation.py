"""Demo benchmark of the issue-8 options: caption-mask audit, MCKD-style terms, sparse caches.

    python bench/distillation.py prepare --workdir DIR [--videos 240] [--teacher-epochs 8]
    python bench/distillation.py run --workdir DIR [--variants a,b,...] [--seeds 0,1] [--epochs 8]

``prepare`` builds the data with the real stages: demo videos (32 px, 6 s) -> decode (6 frames) ->
train an X-Pool teacher (micro backbone) -> extract it into ``teachers.zarr`` -> audit the captions
(top-K = ``--audit-top-k``). ``run`` sparsifies the cache (top-k = ``--sparse-top-k``) when a variant
needs it, then trains one
micro student per (variant, seed) and prints one JSON document of test text-to-video metrics
(``results.json`` in the workdir keeps every run, so runs can be added later).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

from common import add_workdir_option, emit

from teachclip.core.config import (
    BackboneConfig,
    ComputeConfig,
    EvaluateConfig,
    ExtractConfig,
    StudentConfig,
    TeacherConfig,
    TeacherWeight,
    TrainStudentConfig,
    TrainTeacherConfig,
)

MICRO = BackboneConfig(name="teachclip-micro", precision="fp32")
SYNC = ComputeConfig(scheduler="sync", device="cpu")
# name -> TrainStudentConfig fields (teacher "xpool" unless teachers=[])
VARIANTS = {
    "untaught": {"teachers": []},
    "pearson": {},
    "pearson+relational": {"weight_relational": 1.0},
    "pearson+margin": {"weight_margin": 1.0},
    "relational-only": {"weight_coarse": 0.0, "weight_fine": 0.0, "weight_relational": 1.0},
    "margin-only": {"weight_coarse": 0.0, "weight_fine": 0.0, "weight_margin": 1.0},
    "pearson+mask": {"caption_mask": "audit/caption_mask.json"},
    "pearson-sparse": {"_teachers_path": "sparse.zarr", "sampler": "neighbourhood"},
    "pearson-sparse-random-batches": {"_teachers_path": "sparse.zarr"},
}


def prepare(workdir: Path, videos: int, teacher_epochs: int, audit_top_k: int) -> dict:
    from teachclip.stages.extract_teachers import extract_teachers, resolve_teachers
    from teachclip.stages.train_teacher import train_teacher
    from teachclip.testing import tiny_dataset
    from teachclip.tools.audit_captions import audit_captions

    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    manifest = workdir / "demo"
    teacher = TeacherConfig(kind="xpool", backbone=MICRO)
    if not (workdir / "xpool" / "model.safetensors").exists():  # the slow part: kept across re-runs
        # demo/ and frames.zarr in workdir
        tiny_dataset(workdir, videos=videos, size=32, seconds=6, fps=2, frames_per_video=6)
        train_teacher(teacher, workdir / "frames.zarr", manifest, workdir / "xpool",
                      TrainTeacherConfig(epochs=teacher_epochs, batch_size=32, lr=1e-3, lr_backbone=1e-3),
                      EvaluateConfig(), SYNC, progress=False)
    row = json.loads((workdir / "xpool" / "metrics.json").read_text())
    # resolve_teachers puts the checkpoint into the config, which is what loads the trained weights
    extract_teachers(workdir / "frames.zarr", manifest, workdir / "teachers.zarr",
                     resolve_teachers([f"xpool={workdir / 'xpool'}"], {"xpool": teacher}), ExtractConfig(), SYNC,
                     progress=False)
    audit = audit_captions(workdir / "teachers.zarr", manifest, workdir / "audit", top_k=audit_top_k)
    summary = {"teacher_test": {k: v for k, v in row.items() if "t2v" in k}, "audit": audit.report["mean"],
               "flagged": audit.report["flagged"], "captions": audit.report["captions"],
               "seconds": round(time.time() - started, 1)}
    (workdir / "prepare.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def run(workdir: Path, variants: list[str], seeds: list[int], epochs: int, sparse_top_k: int) -> dict:
    from teachclip.stages.train_student import train_student
    from teachclip.stores.teacher_cache.sparse import sparsify

    results_path = workdir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in variants:
        fields = dict(VARIANTS[name])
        teachers_path = workdir / fields.pop("_teachers_path", "teachers.zarr")
        if not teachers_path.exists():
            sparsify(workdir / "teachers.zarr" / "xpool", teachers_path, top_k=sparse_top_k)
        if "caption_mask" in fields:
            fields["caption_mask"] = str(workdir / fields["caption_mask"])
        fields.setdefault("teachers", [TeacherWeight(name="xpool")])
        for seed in seeds:
            config = TrainStudentConfig(**({"epochs": epochs, "batch_size": 32, "lr_backbone": 1e-3, "lr_new": 1e-3,
                                           "lr_afa": 1e-3, "seed": seed, "eval_every": epochs} | fields))
            started = time.time()
            row = train_student(workdir / "frames.zarr", workdir / "demo", [teachers_path],
                                workdir / "runs" / f"{name}-{seed}", config,
                                StudentConfig(backbone=MICRO, temporal_layers=1), EvaluateConfig(), SYNC,
                                progress=False)
            results.setdefault(name, {})[str(seed)] = {
                **{k.removeprefix("test_"): v for k, v in row.items() if k.startswith("test_t2v")},
                "seconds": round(time.time() - started, 1)}
            results_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    summary = {name: {metric: round(statistics.mean(r[metric] for r in runs.values()), 2)
                      for metric in ("t2v_R1", "t2v_R5", "t2v_R10", "t2v_MdR")} | {"seeds": len(runs)}
               for name, runs in results.items()}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["prepare", "run"])
    add_workdir_option(parser, required=True)
    parser.add_argument("--videos", type=int, default=240)
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--audit-top-k", type=int, default=10)
    parser.add_argument("--sparse-top-k", type=int, default=16)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    with contextlib.redirect_stdout(sys.stderr):  # the stages' notes: stdout is the JSON document alone
        if args.phase == "prepare":
            summary = prepare(args.workdir, args.videos, args.teacher_epochs, args.audit_top_k)
        else:
            summary = run(args.workdir, args.variants.split(","), [int(s) for s in args.seeds.split(",")],
                          args.epochs, args.sparse_top_k)
    emit(summary, indent=1)


if __name__ == "__main__":
    main()
