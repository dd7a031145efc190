"""``teach pretrain-backbone | train-teacher | extract-teachers``: the models that teach, and their cache."""

from __future__ import annotations

from pathlib import Path

import typer

from teachclip.cli.common import (
    BATCH_SIZE_OPTION,
    DEVICE_OPTION,
    EPOCHS_OPTION,
    FEATURES_OPTION,
    FRAMES_OPTION,
    MANIFEST_OPTION,
    RESUME_OPTION,
    SCHEDULER_OPTION,
    SET_OPTION,
    WORKERS_OPTION,
    fail,
    handled,
    load,
    state,
    video_input,
)


def register(app: typer.Typer) -> None:
    app.command("pretrain-backbone")(handled(pretrain_backbone))
    app.command("train-teacher")(handled(train_teacher))
    app.command("extract-teachers")(handled(extract_teachers))


def pretrain_backbone(
    manifest: Path = typer.Option(..., "--manifest", help="A demo-data directory (its demo.json labels the frames)."),
    frames: Path = typer.Option(..., "--frames", help="frames.zarr decoded from --manifest."),
    out: Path = typer.Option(..., "--out", help="Directory for the pretrained backbone (model.safetensors ...)."),
    epochs: int = EPOCHS_OPTION,
    device: str = DEVICE_OPTION,
    resume: bool = RESUME_OPTION,
    settings: list[str] = SET_OPTION,
) -> None:
    """Demo only: pretrain a tiny CLIP on labelled single frames of separate demo videos (OpenAI CLIP's stand-in)."""
    from teachclip.stages.pretrain_backbone import pretrain_backbone as run

    params = load(settings, {"pretrain_backbone.epochs": epochs, "compute.device": device})
    config = params.pretrain_backbone
    row = run(manifest, frames, out, config, params.compute, resume=resume)
    typer.echo(f"{out}: pretrained {config.backbone.name}; held-out text->frame R@1 {row.get('heldout_R1', 0):.1f}")


def train_teacher(
    teacher: str = typer.Option(
        ..., "--teacher", help="A name from the `teachers:` params section, or a trainable teacher kind "
        "(docs/training.md)."),
    frames: Path = FRAMES_OPTION,
    features: Path = FEATURES_OPTION,
    manifest: Path = MANIFEST_OPTION,
    out: Path = typer.Option(..., "--out", help="Directory for the trained teacher, metrics and checkpoint."),
    epochs: int = EPOCHS_OPTION,
    batch_size: int = BATCH_SIZE_OPTION,
    seed: int = typer.Option(None, "--seed", help="train_teacher.seed."),
    device: str = DEVICE_OPTION,
    resume: bool = RESUME_OPTION,
    settings: list[str] = SET_OPTION,
) -> None:
    """Train a teacher with symmetric InfoNCE on the train split; logs loss and test R@1 per epoch."""
    from teachclip.core.config import TeacherConfig
    from teachclip.models.teachers import trainable_kinds
    from teachclip.stages.train_teacher import train_teacher as run

    videos = video_input(frames, features)
    params = load(settings, {"train_teacher.epochs": epochs, "train_teacher.batch_size": batch_size,
                             "train_teacher.seed": seed, "compute.device": device})
    if teacher in params.teachers:
        teacher_config = params.teachers[teacher]
    elif teacher in trainable_kinds():
        teacher_config = TeacherConfig(kind=teacher)
    else:
        fail(f"unknown teacher {teacher!r}: not in the teachers: section of {state.params_path} "
             f"({', '.join(params.teachers) or 'empty'}) and not a trainable kind ({', '.join(trainable_kinds())})")
    row = run(teacher_config, videos, manifest, out, params.train_teacher, params.evaluate, params.compute,
              resume=resume)
    tested = {key: value for key, value in row.items() if key.endswith("_t2v_R1")}
    summary = ", ".join(f"{key} {value:.1f}" for key, value in tested.items())
    typer.echo(f"trained {teacher_config.kind} teacher for {row.get('epoch', 0)} epoch(s) into {out}"
               + (f" ({summary})" if summary else ""))


def extract_teachers(
    frames: Path = FRAMES_OPTION,
    features: Path = FEATURES_OPTION,
    manifest: Path = MANIFEST_OPTION,
    teacher: list[str] = typer.Option(
        None, "--teacher", help="NAME[=CHECKPOINT], repeatable (extract.teachers). NAME: a `teachers:` entry or a "
        "teacher kind; CHECKPOINT: a `teach train-teacher` directory or a weights file."),
    out: Path = typer.Option(..., "--out", help="Teacher cache to write (Zarr v3), e.g. teachers.zarr."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute these teachers' groups, replacing others' caches."),
    workers: int = WORKERS_OPTION,
    scheduler: str = SCHEDULER_OPTION,
    device: str = DEVICE_OPTION,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar per teacher on stderr."),
    settings: list[str] = SET_OPTION,
) -> None:
    """Score every train caption against every train video once per teacher, into a resumable,
    fingerprinted teacher cache (docs/teacher-cache.md); with extract.candidates set, only each caption's
    retrieved candidates, its own video and random videos (a sparse candidate group)."""
    from teachclip.stages.extract_teachers import extract_teachers as run
    from teachclip.stages.extract_teachers import resolve_teachers

    videos = video_input(frames, features)
    params = load(settings, {"extract.teachers": teacher or None, "compute.workers": workers,
                             "compute.scheduler": scheduler, "compute.device": device})
    requests = resolve_teachers(params.extract.teachers, params.teachers)
    report = run(videos, manifest, out, requests, params.extract, params.compute, overwrite=overwrite,
                 progress=progress, retriever_backbone=params.student.backbone)
    typer.echo(report.summary())
