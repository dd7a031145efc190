"""``teach demo-data | prepare | decode | encode-frames``: from videos on disk to the stores stages read."""

from __future__ import annotations

from pathlib import Path

import typer

from teachclip.cli.common import (
    DEVICE_OPTION,
    FRAMES_OPTION,
    OVERWRITE_OPTION,
    SCHEDULER_OPTION,
    SET_OPTION,
    WORKERS_OPTION,
    fail,
    handled,
    load,
)


def register(app: typer.Typer) -> None:
    app.command("demo-data")(handled(demo_data))
    app.command("prepare")(handled(prepare))
    app.command("decode")(handled(decode))
    app.command("encode-frames")(handled(encode_frames))


def demo_data(
    out_dir: Path = typer.Argument(None, help="Output directory (default: demo.out of the params)."),
    pretraining: bool = typer.Option(
        False, "--pretraining", help="Generate the pretrain-backbone videos (params pretrain_backbone.data)."),
    workers: int = WORKERS_OPTION,
    settings: list[str] = SET_OPTION,
) -> None:
    """Generate the built-in demo benchmark: H.264 videos of moving shapes plus a manifest
    (sizes and seed: -S demo.videos=400 -S demo.seed=1 ...)."""
    from teachclip.stages.demo_data import generate_demo, split_sizes

    params = load(settings, {"compute.workers": workers})
    config = params.pretrain_backbone.data if pretraining else params.demo
    out = generate_demo(out_dir or config.out, config, workers=params.compute.workers)
    train, val, test = split_sizes(config.videos, config.test_fraction, config.val_fraction)
    typer.echo(f"wrote {config.videos} demo videos ({train} train, {val} val, {test} test) and their manifest to {out}")


def prepare(
    input_file: Path = typer.Option(None, "--input", help="CSV or JSONL of (video, caption, split) rows."),
    out: Path = typer.Option(..., "--out", help="Manifest directory to write."),
    format: str = typer.Option(None, "--format", help="csv or jsonl (default: from the file name)."),
    videos_root: Path = typer.Option(
        None, "--videos-root", help="Where relative video paths and bare video ids are looked up."),
    dataset: str = typer.Option(
        None, "--dataset", help="Official benchmark instead of --input: msrvtt, msvd, vatex, activitynet, didemo."),
    root: Path = typer.Option(None, "--root", help="The dataset's folder of annotation files (docs/datasets.md)."),
    videos_dir: Path = typer.Option(None, "--videos-dir", help="The dataset's videos (default: ROOT/videos ...)."),
    msrvtt_split: str = typer.Option(None, "--msrvtt-split", help="9k (default), 7k or full."),
    msrvtt_test: str = typer.Option(None, "--msrvtt-test", help="1k-A (default) or full."),
    vatex_split_dir: Path = typer.Option(None, "--vatex-split-dir", help="train_list.txt/test_list.txt folder."),
    activitynet_test: str = typer.Option(None, "--activitynet-test", help="val_1 (default) or val_2."),
) -> None:
    """Import your own captioned videos into a manifest (schema: docs/demo-data.md#your-own-data),
    or an official benchmark with --dataset NAME --root DIR (docs/datasets.md)."""
    from teachclip.datasets import prepare_dataset
    from teachclip.stages.prepare import prepare_csv

    if dataset is not None:
        if input_file is not None or root is None:
            fail("--dataset needs --root and no --input")
        flags = {
            "--msrvtt-split": ("msrvtt", "split", msrvtt_split),
            "--msrvtt-test": ("msrvtt", "test", msrvtt_test),
            "--vatex-split-dir": ("vatex", "split_dir", vatex_split_dir),
            "--activitynet-test": ("activitynet", "test", activitynet_test),
        }
        wrong = [flag for flag, (owner, _, value) in flags.items() if value is not None and owner != dataset]
        if wrong:
            fail(f"{', '.join(wrong)} does not apply to --dataset {dataset}")
        options = {name: value for owner, name, value in flags.values() if owner == dataset}
        prepare_dataset(dataset, root, out, videos_dir=videos_dir, **options)
        typer.echo(f"wrote the {dataset} manifest to {out}")
        return
    if input_file is None:
        fail("give --input FILE (your own data) or --dataset NAME --root DIR (a benchmark)")
    result = prepare_csv(input_file, out, format=format, videos_root=videos_root)
    typer.echo(f"wrote a manifest of {result.videos} videos and {result.captions} captions to {result.manifest_dir}")
    if result.missing_files:
        shown = ", ".join(result.missing_files[:5]) + (" ..." if len(result.missing_files) > 5 else "")
        typer.secho(f"warning: {len(result.missing_files)} video file(s) not found (decode will record them): {shown}",
                    fg=typer.colors.YELLOW, err=True)


def decode(
    manifest: Path = typer.Option(..., "--manifest", help="Manifest directory (videos.csv, captions.csv)."),
    out: Path = typer.Option(..., "--out", help="Frames store to write (Zarr v3), e.g. frames.zarr."),
    overwrite: bool = OVERWRITE_OPTION,
    workers: int = WORKERS_OPTION,
    scheduler: str = SCHEDULER_OPTION,
    settings: list[str] = SET_OPTION,
) -> None:
    """Sample T frames of every manifest video into a frames store (resumable, parallel; sampling:
    -S decode.frames_per_video=12 -S decode.size=224 ...)."""
    from teachclip.stages.decode import decode as run

    params = load(settings, {"compute.workers": workers, "compute.scheduler": scheduler})
    result = run(manifest, out, params.decode, params.compute, overwrite=overwrite)
    typer.echo(result.summary())


def encode_frames(
    frames: Path = FRAMES_OPTION,
    out: Path = typer.Option(..., "--out", help="Frame-features store to write, e.g. features.zarr."),
    overwrite: bool = OVERWRITE_OPTION,
    device: str = DEVICE_OPTION,
    settings: list[str] = SET_OPTION,
) -> None:
    """Run a frozen image tower (student.backbone) once over every frame; stages given the result as
    --features skip the tower."""
    from teachclip.stages.encode_frames import encode_frames as run

    if frames is None:
        fail("give the frames store to encode as --frames")
    params = load(settings, {"compute.device": device})
    backbone = params.student.backbone
    result = run(frames, out, backbone, params.compute, overwrite=overwrite)
    typer.echo(f"{result}: frame features of {backbone.name} (pretrained={backbone.pretrained})")
