"""``teach train-student | evaluate | export | report``: the student, and how it compares."""

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
    SET_OPTION,
    fail,
    handled,
    load,
    video_input,
)


def register(app: typer.Typer) -> None:
    app.command("train-student")(handled(train_student))
    app.command("evaluate")(handled(evaluate))
    app.command("export")(handled(export))
    app.command("report")(handled(report))


def train_student(
    frames: Path = FRAMES_OPTION,
    features: Path = FEATURES_OPTION,
    manifest: Path = MANIFEST_OPTION,
    teachers: list[Path] = typer.Option(
        None, "--teachers", help="teachers.zarr (every group) or teachers.zarr/<name>; repeatable. None: the baseline."),
    out: str = typer.Option(
        ..., "--out", help="Directory for the student, metrics and checkpoint; with several --seed it must "
        "contain {seed} (e.g. runs/afa-s{seed})."),
    variant: str = typer.Option(
        None, "--variant", help="A recipe from params.yaml `students:` (applied before --set and the flags)."),
    seed: list[int] = typer.Option(
        None, "--seed", help="Repeatable: several seeds train one after another in this process (no start-up each)."),
    epochs: int = EPOCHS_OPTION,
    batch_size: int = BATCH_SIZE_OPTION,
    device: str = DEVICE_OPTION,
    resume: bool = RESUME_OPTION,
    settings: list[str] = SET_OPTION,
) -> None:
    """Train a CLIP4Clip/AFA student from cached teacher soft labels (torchrun for several GPUs).
    Loss weights, learning rates, head ...: -S train_student.weight_fine=0 -S student.head=seqTransf."""
    from teachclip.stages.train_student import train_student as run

    videos = video_input(frames, features)
    seeds = list(seed or [None])
    if len(seeds) > 1 and "{seed}" not in out:
        fail(f"--out {out!r}: with several --seed it must contain {{seed}}, or every run would overwrite the last")
    for one_seed in seeds:
        params = load(settings, {"train_student.epochs": epochs, "train_student.batch_size": batch_size,
                                 "train_student.seed": one_seed, "compute.device": device}, variant)
        run_dir = Path(out.format(seed=params.train_student.seed))
        row = run(videos, manifest, list(teachers or []), run_dir, params.train_student, params.student,
                  params.evaluate, params.compute, resume=resume)
        tested = {key: value for key, value in row.items() if key.endswith(("_t2v_R1", "_t2v_R5", "_t2v_R10"))}
        summary = ", ".join(f"{key} {value:.1f}" for key, value in tested.items())
        typer.echo(f"trained the student for {row.get('epoch', 0)} epoch(s) into {run_dir}"
                   + (f" ({summary})" if summary else ""))


def evaluate(
    model: list[Path] = typer.Option(
        ..., "--model", help="A saved student or teacher directory, or a directory of them (each evaluable model "
        "directly inside); repeatable."),
    frames: Path = FRAMES_OPTION,
    features: Path = FEATURES_OPTION,
    manifest: Path = MANIFEST_OPTION,
    out: Path = typer.Option(
        ..., "--out", help="Metrics JSON to write (dvc metrics show reads it); with several models, a directory "
        "receiving <model directory name>.json for each."),
    split: str = typer.Option(None, "--split", help="train, val or test (evaluate.split)."),
    dump_similarity: Path = typer.Option(
        None, "--dump-similarity", help="Also save the similarity matrix, text/video ids and ground truth (.npz)."),
    device: str = DEVICE_OPTION,
    settings: list[str] = SET_OPTION,
) -> None:
    """Text-to-video and video-to-text R@1/5/10, MdR, MnR (CLIP4Clip rules, pessimistic ties)."""
    from teachclip.stages.evaluate import evaluable_models
    from teachclip.stages.evaluate import evaluate as run

    videos = video_input(frames, features)
    params = load(settings, {"evaluate.split": split, "compute.device": device})
    models = evaluable_models(model)
    if len(models) > 1 and dump_similarity is not None:
        fail("--dump-similarity takes one model")
    names = [path.resolve().name for path in models]
    if len(set(names)) < len(names):
        fail(f"several models share a directory name ({', '.join(names)}): their metrics files would collide")
    # one process for all of them: no start-up, manifest fingerprint or store opening per model
    targets = [out] if len(models) == 1 else [out / f"{name}.json" for name in names]
    results = run(list(zip(models, targets, strict=True)), videos, manifest, params.evaluate, params.compute,
                  dump_similarity=dump_similarity)
    if len(models) == 1:
        typer.echo(" ".join(f"{key}={value:g}" for key, value in results[0].items()))


def export(
    model: Path = typer.Option(..., "--model", help="A saved student directory (teach train-student --out)."),
    out: Path = typer.Option(..., "--out", help="Directory for the open_clip weights, head and config."),
) -> None:
    """The student as plain weights: an open_clip state dict + the small video head (docs/export-and-search.md)."""
    from teachclip.tools.export import export_student

    typer.echo(f"exported {model} to {export_student(model, out)}")


def report(
    metrics: Path = typer.Option(Path("metrics"), "--metrics", help="Directory of `teach evaluate` JSON files."),
    out: Path = typer.Option(Path("reports"), "--out", help="Writes results.md, results.json, results.png "
                             "(and gallery.html with --runs)."),
    runs: Path = typer.Option(None, "--runs", help="Directory of the saved models the metrics were measured on: "
                              "also write gallery.html (needs --frames and --manifest)."),
    frames: Path = typer.Option(None, "--frames", help="Frames store (`teach decode`): the gallery's thumbnails, "
                                "and what the models score unless --features is given."),
    features: Path = FEATURES_OPTION,
    manifest: Path = typer.Option(None, "--manifest", help="Manifest directory (videos.csv, captions.csv)."),
    audit: Path = typer.Option(None, "--audit", help="A `teach audit-captions --out` directory: the gallery "
                               "also shows the captions it flagged."),
    device: str = DEVICE_OPTION,
    settings: list[str] = SET_OPTION,
) -> None:
    """Teachers vs students (mean ± std over seeds) as a Markdown table, JSON and a bar chart; with --runs
    also a self-contained gallery.html of what the best teacher and student retrieve."""
    from teachclip.stages.report import GalleryInputs
    from teachclip.stages.report import report as run

    gallery = None
    if runs is not None:
        if frames is None or manifest is None:
            fail("--runs (the gallery) needs --frames (thumbnails) and --manifest")
        gallery = GalleryInputs(runs, features or frames, frames, manifest, audit)
    elif audit is not None or features is not None:
        fail("--audit and --features are gallery inputs: give --runs, --frames and --manifest too")
    rows = run(metrics, out, load(settings, {"compute.device": device}), gallery)
    typer.echo((out / "results.md").read_text())
    wrote = "results.md, results.json, results.png" + (", gallery.html" if gallery else "")
    typer.echo(f"wrote {out}/{wrote} ({len(rows)} models)", err=True)
