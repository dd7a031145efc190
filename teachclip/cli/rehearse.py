"""``teach rehearse | msrvtt-like``: the MSR-VTT pipeline at real model size before you have MSR-VTT."""

from __future__ import annotations

from pathlib import Path

import typer

from teachclip.cli.common import DEVICE_OPTION, SET_OPTION, WORKERS_OPTION, handled, load

TRAIN_VIDEOS_OPTION = typer.Option(None, "--train-videos", help="Videos of the 9k train CSV (rehearse.train_videos).")
TEST_VIDEOS_OPTION = typer.Option(None, "--test-videos", help="Videos of the 1k-A test CSV (rehearse.test_videos).")


def register(app: typer.Typer) -> None:
    app.command("rehearse")(handled(rehearse))
    app.command("msrvtt-like")(handled(msrvtt_like))


def rehearse(
    out: Path = typer.Option(..., "--out", help="Scratch folder: corpus, weight files, pipeline copy, rehearsal.json."),
    train_videos: int = TRAIN_VIDEOS_OPTION,
    test_videos: int = TEST_VIDEOS_OPTION,
    device: str = DEVICE_OPTION,
    workers: int = WORKERS_OPTION,
    settings: list[str] = SET_OPTION,
) -> None:
    """Run rehearse.params' MSR-VTT pipeline (pipelines/msrvtt/dvc.yaml) end to end at real model size on a
    generated MSR-VTT-shaped corpus with locally written random weights (OpenAI CLIP, X-CLIP, X-Pool in
    their official formats), then export and search; per-stage wall time and peak RSS go to
    OUT/rehearsal.json."""
    from teachclip.tools.rehearse import rehearse as run

    params = load(settings, {"rehearse.train_videos": train_videos, "rehearse.test_videos": test_videos,
                             "compute.device": device, "compute.workers": workers})
    report = run(out, params.rehearse, params.compute)
    typer.echo(f"rehearsal passed: {len(report['stages'])} steps in {report['seconds']:.0f} s; "
               f"figures in {report['path']}")


def msrvtt_like(
    out: Path = typer.Argument(..., help="Folder to write (MSRVTT_data.json, CSVs, videos/all/)."),
    videos: int = typer.Option(None, "--videos", help="Videos in all (train + test); default rehearse.train_videos + "
                               "rehearse.test_videos."),
    test_videos: int = TEST_VIDEOS_OPTION,
    workers: int = WORKERS_OPTION,
    settings: list[str] = SET_OPTION,
) -> None:
    """Write an MSR-VTT-shaped corpus: the official annotation files and 320x240 30 fps H.264+AAC videos of
    10-30 s with 20 captions each (sizes, seed, x264 preset: -S rehearse.FIELD=...)."""
    from teachclip.tools.rehearse.corpus import corpus_spec, write_msrvtt_like

    params = load(settings, {"rehearse.test_videos": test_videos, "compute.workers": workers})
    spec = corpus_spec(params.rehearse, videos)
    write_msrvtt_like(out, spec, workers=params.compute.workers)
    typer.echo(f"wrote {spec.videos} MSR-VTT-like videos ({spec.train_videos} train, {spec.test_videos} 1k-A test) "
               f"to {out}; next: teach prepare --dataset msrvtt --root {out} --out MANIFEST")
