"""The ``teach`` command line: thin typer wrappers around the stage functions in ``teachclip.stages``.

Every command reads ``params.yaml`` (``--params`` to choose another file) and lets its flags
override single values; the stage functions receive typed config objects and never parse flags.
Heavy imports happen inside the commands so that ``teach --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

from teachclip.core.config import ConfigError, Params, load_params

app = typer.Typer(
    name="teach",
    help="teachclip: cache heavy text-video teachers once, train a cheap CLIP4Clip+AFA student from them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cache_app = typer.Typer(help="Inspect, verify and share teacher caches.", no_args_is_help=True)
search_app = typer.Typer(help="Embed a collection once, then query it.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
app.add_typer(search_app, name="search")


# Options several commands share (one definition each; typer reads them as default values).
DEVICE_OPTION = typer.Option(None, "--device", help="cuda, cpu, cuda:1 ... (default: compute.device).")
RESUME_OPTION = typer.Option(False, "--resume", help="Continue from the last completed epoch in OUT/checkpoint.")
PRETRAINED_OPTION = typer.Option(None, "--pretrained", help="open_clip tag or local checkpoint path.")
SCHEDULER_OPTION = typer.Option(None, "--scheduler", help="local, sync, or a dask scheduler address.")


class State:
    params_path: Path = Path("params.yaml")


state = State()


@app.callback()
def main(
    params: Path = typer.Option(
        Path("params.yaml"), "--params", help="Parameters file (missing file: built-in defaults)."
    ),
) -> None:
    state.params_path = params


def load() -> Params:
    """The params of this invocation; a bad file is a clean error, not a traceback."""
    try:
        return load_params(state.params_path)
    except ConfigError as exc:
        fail(str(exc))


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


# ---- data: demo-data, prepare -------------------------------------------------------------


@app.command("demo-data")
def demo_data(
    out_dir: Path = typer.Argument(None, help="Output directory (default: demo.out of the params)."),
    videos: int = typer.Option(None, "--videos", help="Number of videos (train + val + test)."),
    seed: int = typer.Option(None, "--seed", help="Same seed, same bytes."),
    test_fraction: float = typer.Option(None, "--test-fraction"),
    val_fraction: float = typer.Option(None, "--val-fraction"),
    captions_per_video: int = typer.Option(None, "--captions-per-video", help="Captions of train/val videos."),
    seconds: int = typer.Option(None, "--seconds", help="Video length in whole seconds."),
    fps: int = typer.Option(None, "--fps"),
    width: int = typer.Option(None, "--width"),
    height: int = typer.Option(None, "--height"),
    workers: int = typer.Option(None, "--workers", help="Processes (default: compute.workers)."),
    pretraining: bool = typer.Option(
        False, "--pretraining", help="Generate the pretrain-backbone videos (params pretrain_backbone.data)."
    ),
) -> None:
    """Generate the built-in demo benchmark: H.264 videos of moving shapes plus a manifest."""
    from teachclip.core.config import override
    from teachclip.stages.demo_data import generate_demo, split_sizes

    params = load()
    try:
        config = override(
            params.pretrain_backbone.data if pretraining else params.demo,
            videos=videos,
            seed=seed,
            test_fraction=test_fraction,
            val_fraction=val_fraction,
            captions_per_video=captions_per_video,
            seconds=seconds,
            fps=fps,
            width=width,
            height=height,
        )
        out = generate_demo(out_dir or config.out, config, workers=workers or params.compute.workers)
    except (ConfigError, FileExistsError) as exc:
        fail(str(exc))
    train, val, test = split_sizes(config.videos, config.test_fraction, config.val_fraction)
    typer.echo(f"wrote {config.videos} demo videos ({train} train, {val} val, {test} test) and their manifest to {out}")


@app.command("prepare")
def prepare(
    input_file: Path = typer.Option(None, "--input", help="CSV or JSONL of (video, caption, split) rows."),
    out: Path = typer.Option(..., "--out", help="Manifest directory to write."),
    format: str = typer.Option(None, "--format", help="csv or jsonl (default: from the file name)."),
    videos_root: Path = typer.Option(
        None, "--videos-root", help="Where relative video paths and bare video ids are looked up."
    ),
    dataset: str = typer.Option(
        None, "--dataset", help="Official benchmark instead of --input: msrvtt, msvd, vatex, activitynet, didemo."
    ),
    root: Path = typer.Option(None, "--root", help="The dataset's folder of annotation files (docs/datasets.md)."),
    videos_dir: Path = typer.Option(None, "--videos-dir", help="The dataset's videos (default: ROOT/videos ...)."),
    msrvtt_split: str = typer.Option(None, "--msrvtt-split", help="9k (default), 7k or full."),
    msrvtt_test: str = typer.Option(None, "--msrvtt-test", help="1k-A (default) or full."),
    vatex_split_dir: Path = typer.Option(None, "--vatex-split-dir", help="train_list.txt/test_list.txt folder."),
    activitynet_test: str = typer.Option(None, "--activitynet-test", help="val_1 (default) or val_2."),
) -> None:
    """Import your own captioned videos into a manifest (schema: docs/demo-data.md#your-own-data),
    or an official benchmark with --dataset NAME --root DIR (docs/datasets.md)."""
    from teachclip.core.manifest import ManifestError
    from teachclip.stages.prepare import PrepareError, prepare_csv

    if dataset is not None:
        from teachclip.stages.datasets import prepare_dataset

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
        try:
            prepare_dataset(dataset, root, out, videos_dir=videos_dir, **options)
        except ValueError as exc:  # ManifestError included
            fail(str(exc))
        typer.echo(f"wrote the {dataset} manifest to {out}")
        return
    if input_file is None:
        fail("give --input FILE (your own data) or --dataset NAME --root DIR (a benchmark)")
    try:
        result = prepare_csv(input_file, out, format=format, videos_root=videos_root)
    except (PrepareError, ManifestError) as exc:
        fail(str(exc))
    typer.echo(f"wrote a manifest of {result.videos} videos and {result.captions} captions to {result.manifest_dir}")
    if result.missing_files:
        shown = ", ".join(result.missing_files[:5]) + (" ..." if len(result.missing_files) > 5 else "")
        typer.secho(
            f"warning: {len(result.missing_files)} video file(s) not found (decode will record them): {shown}",
            fg=typer.colors.YELLOW,
            err=True,
        )


# ---- decode -------------------------------------------------------------------------------


@app.command("decode")
def decode_command(
    manifest: Path = typer.Option(..., "--manifest", help="Manifest directory (videos.csv, captions.csv)."),
    out: Path = typer.Option(..., "--out", help="Frames store to write (Zarr v3), e.g. frames.zarr."),
    frames: int = typer.Option(None, "--frames", help="Frames per video, T (decode.frames_per_video)."),
    fps: float = typer.Option(None, "--fps", help="Candidate frames per second before linspace to T."),
    size: int = typer.Option(None, "--size", help="Short side resize + centre crop to SIZE x SIZE."),
    backend: str = typer.Option(None, "--backend", help="Decoder: pyav (in process) or ffmpeg (binary)."),
    workers: int = typer.Option(None, "--workers", help="Dask worker processes (compute.workers)."),
    scheduler: str = SCHEDULER_OPTION,
    overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild even if OUT (or OUT.partial) exists."),
) -> None:
    """Sample T frames of every manifest video into a frames store (resumable, parallel)."""
    from teachclip.stores.frames import FramesStoreError
    from teachclip.core.config import override
    from teachclip.core.manifest import ManifestError
    from teachclip.stages.decode import TooManyFailuresError, decode

    params = load()
    try:
        config = override(params.decode, frames_per_video=frames, sample_fps=fps, size=size, backend=backend)
        compute = override(params.compute, workers=workers, scheduler=scheduler)
        result = decode(manifest, out, config, compute, overwrite=overwrite)
    except TooManyFailuresError as exc:
        typer.echo(exc.result.summary())
        fail(str(exc))
    except (ConfigError, ManifestError, FramesStoreError) as exc:
        fail(str(exc))
    typer.echo(result.summary())


@app.command("encode-frames")
def encode_frames_command(
    frames: Path = typer.Option(..., "--frames", help="Frames store (from `teach decode`)."),
    out: Path = typer.Option(..., "--out", help="Frame-features store to write, e.g. features.zarr."),
    backbone: str = typer.Option(None, "--backbone", help="open_clip model name (default: student.backbone)."),
    pretrained: str = PRETRAINED_OPTION,
    device: str = DEVICE_OPTION,
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute even if OUT (or OUT.partial) exists."),
) -> None:
    """Run a frozen image tower once over every frame; stages given the result skip the tower."""
    from teachclip.stores.frames import FramesStoreError
    from teachclip.core.config import override
    from teachclip.stages.encode_frames import encode_frames

    params = load()
    try:
        backbone_config = override(params.student.backbone, name=backbone, pretrained=pretrained)
        result = encode_frames(frames, out, backbone_config, override(params.compute, device=device),
                               overwrite=overwrite)
    except (ConfigError, FramesStoreError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"{result}: frame features of {backbone_config.name} (pretrained={backbone_config.pretrained})")


@app.command("pretrain-backbone")
def pretrain_backbone_command(
    manifest: Path = typer.Option(..., "--manifest", help="A demo-data directory (its demo.json labels the frames)."),
    frames: Path = typer.Option(..., "--frames", help="frames.zarr decoded from --manifest."),
    out: Path = typer.Option(..., "--out", help="Directory for clip.safetensors, config.json, metrics."),
    epochs: int = typer.Option(None, "--epochs"),
    backbone: str = typer.Option(None, "--backbone", help="open_clip model name (pretrain_backbone.backbone)."),
    device: str = DEVICE_OPTION,
    resume: bool = RESUME_OPTION,
) -> None:
    """Demo only: pretrain a tiny CLIP on labelled single frames of separate demo videos (OpenAI CLIP's stand-in)."""
    from teachclip.stores.frames import FramesStoreError
    from teachclip.core.config import override
    from teachclip.core.manifest import ManifestError
    from teachclip.stages.pretrain_backbone import pretrain_backbone

    params = load()
    try:
        config = override(params.pretrain_backbone, epochs=epochs)
        config = config.model_copy(update={"backbone": override(config.backbone, name=backbone)})
        row = pretrain_backbone(manifest, frames, out, config, override(params.compute, device=device), resume=resume)
    except (ConfigError, ManifestError, FramesStoreError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"{out}: pretrained {config.backbone.name}; held-out text->frame R@1 {row.get('heldout_R1', 0):.1f}")


# ---- teachers: train-teacher, extract-teachers ------------------------------------------------


@app.command("train-teacher")
def train_teacher_command(
    teacher: str = typer.Option(
        ..., "--teacher", help="A name from the `teachers:` params section, or a kind: xpool, xclip, ts2net, frame_clip."
    ),
    frames: Path = typer.Option(..., "--frames", help="frames.zarr decoded from --manifest."),
    manifest: Path = typer.Option(..., "--manifest", help="Manifest directory (trains on its train split)."),
    out: Path = typer.Option(..., "--out", help="Directory for the trained teacher, metrics and checkpoint."),
    epochs: int = typer.Option(None, "--epochs"),
    batch_size: int = typer.Option(None, "--batch-size", help="Videos (one caption each) per batch."),
    lr: float = typer.Option(None, "--lr", help="Learning rate of the teacher's own modules."),
    lr_backbone: float = typer.Option(None, "--lr-backbone", help="Learning rate of the open_clip towers."),
    seed: int = typer.Option(None, "--seed"),
    backbone: str = typer.Option(None, "--backbone", help="open_clip model name (overrides the teachers: entry)."),
    pretrained: str = PRETRAINED_OPTION,
    device: str = DEVICE_OPTION,
    resume: bool = RESUME_OPTION,
) -> None:
    """Train a teacher with symmetric InfoNCE on the train split; logs loss and test R@1 per epoch."""
    from teachclip.stores.frames import FramesStoreError
    from teachclip.models.teachers import TRAINABLE_KINDS
    from teachclip.core.config import TeacherConfig, override
    from teachclip.core.manifest import ManifestError
    from teachclip.stages.train_teacher import train_teacher

    params = load()
    try:
        if teacher in params.teachers:
            teacher_config = params.teachers[teacher]
        elif teacher in TRAINABLE_KINDS:
            teacher_config = TeacherConfig(kind=teacher)
        else:
            fail(f"unknown teacher {teacher!r}: not in the teachers: section of {state.params_path} "
                 f"({', '.join(params.teachers) or 'empty'}) and not a trainable kind ({', '.join(TRAINABLE_KINDS)})")
        teacher_config = teacher_config.model_copy(
            update={"backbone": override(teacher_config.backbone, name=backbone, pretrained=pretrained)})
        config = override(params.train_teacher, epochs=epochs, batch_size=batch_size, lr=lr,
                          lr_backbone=lr_backbone, seed=seed)
        compute = override(params.compute, device=device)
        row = train_teacher(teacher_config, frames, manifest, out, config, params.evaluate, compute, resume=resume)
    except (ConfigError, ManifestError, FramesStoreError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    tested = {key: value for key, value in row.items() if key.endswith("_t2v_R1")}
    summary = ", ".join(f"{key} {value:.1f}" for key, value in tested.items())
    typer.echo(f"trained {teacher_config.kind} teacher for {row.get('epoch', 0)} epoch(s) into {out}"
               + (f" ({summary})" if summary else ""))


@app.command("extract-teachers")
def extract_teachers_command(
    frames: Path = typer.Option(..., "--frames", help="frames.zarr decoded from --manifest."),
    manifest: Path = typer.Option(..., "--manifest", help="Manifest directory (scores its train split)."),
    teacher: list[str] = typer.Option(
        None, "--teacher", help="NAME[=CHECKPOINT], repeatable (default: extract.teachers). NAME: a `teachers:` entry "
        "or a teacher kind; CHECKPOINT: a `teach train-teacher` directory or a weights file."
    ),
    out: Path = typer.Option(..., "--out", help="Teacher cache to write (Zarr v3), e.g. teachers.zarr."),
    workers: int = typer.Option(None, "--workers", help="Dask worker processes (compute.workers; one per GPU on GPUs)."),
    scheduler: str = SCHEDULER_OPTION,
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute these teachers' groups, replacing others' caches."),
    block_texts: int = typer.Option(None, "--block-texts", help="Captions per block (one shard file, unit of resume)."),
    memory_budget_mb: int = typer.Option(None, "--memory-budget-mb", help="Per-worker memory for a block and its scoring."),
    shared_cache: str = typer.Option(None, "--shared-cache", help="fsspec URL searched by fingerprint before computing."),
    device: str = DEVICE_OPTION,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar per teacher on stderr."),
) -> None:
    """Score every train caption against every train video once per teacher, into a resumable,
    fingerprinted teacher cache (docs/teacher-cache.md)."""
    from teachclip.stores.frames import FramesStoreError
    from teachclip.stores.sharing import SharingError
    from teachclip.stores.teachers import TeacherCacheError
    from teachclip.models.io import CheckpointError
    from teachclip.core.config import override
    from teachclip.core.manifest import ManifestError
    from teachclip.stages.extract_teachers import ExtractError, extract_teachers, resolve_teachers

    params = load()
    try:
        config = override(params.extract, block_texts=block_texts, memory_budget_mb=memory_budget_mb,
                          shared_cache=shared_cache)
        compute = override(params.compute, workers=workers, scheduler=scheduler, device=device)
        requests = resolve_teachers(teacher or config.teachers, params.teachers)
        report = extract_teachers(frames, manifest, out, requests, config, compute, overwrite=overwrite,
                                  progress=progress, fingerprint_mode=params.decode.fingerprint_mode)
    except (ConfigError, ManifestError, FramesStoreError, ExtractError, TeacherCacheError, SharingError,
            CheckpointError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(report.summary())


# ---- cache: info, verify, ls, push, pull, export, import ------------------------------------


@cache_app.command("info")
def cache_info_command(
    path: Path = typer.Argument(..., help="teachers.zarr or teachers.zarr/<name>."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """What a teacher cache holds: teachers, fingerprints, shapes, size, completeness."""
    import json

    from teachclip.stores.sharing import cache_info, format_info
    from teachclip.stores.teachers import TeacherCacheError
    from teachclip.stores.zarr_io import partial_path

    if not path.exists() and not partial_path(path).exists():
        fail(f"{path}: teacher cache not found (nor {partial_path(path).name} in progress)")
    try:
        info = cache_info(path)
    except TeacherCacheError as exc:
        fail(str(exc))
    typer.echo(json.dumps(info, indent=1, sort_keys=True) if as_json else format_info(info))


@cache_app.command("verify")
def cache_verify_command(path: Path = typer.Argument(..., help="teachers.zarr or teachers.zarr/<name>.")) -> None:
    """Read every chunk: checksums, presence of every chunk and shard, completeness. Exit 0 only if intact."""
    from teachclip.stores.sharing import verify_store

    checks = verify_store(path)
    for check in checks:
        if check.ok:
            typer.echo(f"{check.path}: ok ({check.chunks_read} shards/chunks read)")
        for problem in check.problems:
            typer.secho(f"{check.path}: {problem}", fg=typer.colors.RED, err=True)
    if not all(check.ok for check in checks):
        raise typer.Exit(1)


@cache_app.command("ls")
def cache_ls_command(
    url: str = typer.Argument(..., help="Shared cache location: a directory, s3://bucket/prefix, memory://..."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the teacher caches stored at URL (one entry per fingerprint)."""
    import json
    from dataclasses import asdict

    from teachclip.stores.sharing import SharingError, list_remote

    try:
        entries = list_remote(url)
    except SharingError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps([asdict(e) | {"files": len(e.files)} for e in entries], indent=1, sort_keys=True))
        return
    for e in entries:
        typer.echo(f"{e.fingerprint}  {e.kind:<11} {e.texts} x {e.videos}  {e.bytes / 1e6:.2f} MB  (pushed as {e.name})")
    if not entries:
        typer.echo(f"{url}: no teacher caches")


@cache_app.command("push")
def cache_push_command(
    path: Path = typer.Argument(..., help="teachers.zarr (every complete group) or teachers.zarr/<name>."),
    url: str = typer.Argument(..., help="Shared cache location (fsspec URL)."),
) -> None:
    """Upload teacher caches to URL/<fingerprint>/."""
    from teachclip.stores.sharing import SharingError, push

    try:
        results = push(path, url)
    except SharingError as exc:
        fail(str(exc))
    for name, fp, status in results:
        typer.echo(f"{name}: {status} {url.rstrip('/')}/{fp}")


@cache_app.command("pull")
def cache_pull_command(
    url: str = typer.Argument(..., help="Shared cache location, or one entry URL/<fingerprint>."),
    path: Path = typer.Argument(..., help="Teacher cache store to put the groups in (teachers.zarr)."),
    fingerprint: list[str] = typer.Option(None, "--fingerprint", help="Only these entries (a prefix is enough)."),
    name: str = typer.Option(None, "--name", help="Group name for a single entry (default: the name it was pushed as)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a group of that name with another fingerprint."),
) -> None:
    """Download teacher caches (checked file by file, then verified) into a store."""
    from teachclip.stores.sharing import SharingError, pull
    from teachclip.stores.teachers import TeacherCacheError

    try:
        results = pull(url, path, fingerprints=fingerprint or None, name=name, overwrite=overwrite)
    except (SharingError, TeacherCacheError) as exc:
        fail(str(exc))
    for group, fp, status in results:
        typer.echo(f"{group}: {status} ({fp})")


@cache_app.command("export")
def cache_export_command(
    path: Path = typer.Argument(..., help="teachers.zarr or teachers.zarr/<name>."),
    out: Path = typer.Argument(..., help="File to write."),
    format: str = typer.Option("hdf5", "--format", help="hdf5 (the only interchange format)."),
) -> None:
    """Write the cache's arrays and attributes into one HDF5 file."""
    from teachclip.stores.sharing import SharingError, export_hdf5

    if format != "hdf5":
        fail(f"--format {format!r}: only hdf5 is supported")
    try:
        names = export_hdf5(path, out)
    except SharingError as exc:
        fail(str(exc))
    typer.echo(f"exported {', '.join(names)} to {out}")


@cache_app.command("import")
def cache_import_command(
    h5: Path = typer.Argument(..., help="An HDF5 file written by `teach cache export`."),
    path: Path = typer.Argument(..., help="Teacher cache store to put the groups in (teachers.zarr)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a group of that name with another fingerprint."),
) -> None:
    """Rebuild Zarr teacher cache groups from an HDF5 export."""
    from teachclip.stores.sharing import SharingError, import_hdf5
    from teachclip.stores.teachers import TeacherCacheError

    try:
        names = import_hdf5(h5, path, overwrite=overwrite)
    except (SharingError, TeacherCacheError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"imported {', '.join(names)} into {path}")


# ---- student: train-student, evaluate, export ------------------------------------------------


@app.command("train-student")
def train_student_command(
    frames: Path = typer.Option(..., "--frames", help="frames.zarr decoded from --manifest."),
    manifest: Path = typer.Option(..., "--manifest", help="Manifest directory (trains on its train split)."),
    teachers: list[Path] = typer.Option(
        None, "--teachers", help="teachers.zarr (every group) or teachers.zarr/<name>; repeatable. None: the baseline."
    ),
    out: str = typer.Option(
        ..., "--out", help="Directory for the student, metrics and checkpoint; with several --seed it must "
        "contain {seed} (e.g. runs/afa-s{seed})."),
    variant: str = typer.Option(
        None, "--variant", help="A recipe from params.yaml `students:` (its overrides apply before any flag)."
    ),
    epochs: int = typer.Option(None, "--epochs"),
    batch_size: int = typer.Option(None, "--batch-size", help="Global batch: videos, one caption each."),
    seed: list[int] = typer.Option(
        None, "--seed", help="Repeatable: several seeds train one after another in this process (no start-up each)."),
    weight_nce: float = typer.Option(None, "--weight-nce"),
    weight_coarse: float = typer.Option(None, "--weight-coarse", help="0 removes coarse teaching."),
    weight_fine: float = typer.Option(None, "--weight-fine", help="0 removes fine teaching."),
    weight_relational: float = typer.Option(None, "--weight-relational", help="MCKD-style structure term (0: off)."),
    weight_margin: float = typer.Option(None, "--weight-margin", help="Hard-negative margin term (0: off)."),
    margin: float = typer.Option(None, "--margin", help="Margin on the student's cosines (--weight-margin)."),
    caption_mask: str = typer.Option(None, "--caption-mask", help="caption_mask.json from `teach audit-captions`."),
    sampler: str = typer.Option(None, "--sampler", help="caption_per_video, or neighbourhood (sparse caches)."),
    coarse_loss: str = typer.Option(None, "--coarse-loss", help="pearson, kl or huber."),
    fine_loss: str = typer.Option(None, "--fine-loss", help="ce or kl."),
    fine_temperature: float = typer.Option(None, "--fine-temperature", help="tau of softmax(relevance / tau)."),
    teacher_temperature: float = typer.Option(None, "--teacher-temperature", help="Teacher logits = similarity / this."),
    lr_backbone: float = typer.Option(None, "--lr-backbone"),
    lr_new: float = typer.Option(None, "--lr-new"),
    lr_afa: float = typer.Option(None, "--lr-afa"),
    head: str = typer.Option(None, "--head", help="meanP or seqTransf."),
    afa: bool = typer.Option(None, "--afa/--no-afa", help="AFA pooling (needed by fine teaching)."),
    freeze_backbone: bool = typer.Option(
        None, "--freeze-backbone/--train-backbone", help="Frozen open_clip towers: features computed once (fast on CPU)."
    ),
    backbone: str = typer.Option(None, "--backbone", help="open_clip model name of the student."),
    pretrained: str = PRETRAINED_OPTION,
    device: str = DEVICE_OPTION,
    resume: bool = RESUME_OPTION,
) -> None:
    """Train a CLIP4Clip/AFA student from cached teacher soft labels (torchrun for several GPUs)."""
    from teachclip.stores.frames import FramesStoreError
    from teachclip.core.config import override, with_variant
    from teachclip.core.manifest import ManifestError
    from teachclip.stages.train_student import train_student

    params = load()
    try:
        params = with_variant(params, variant)
        seeds = list(seed or [None])
        if len(seeds) > 1 and "{seed}" not in out:
            fail(f"--out {out!r}: with several --seed it must contain {{seed}}, or every run would overwrite the last")
        config = override(
            params.train_student, epochs=epochs, batch_size=batch_size, weight_nce=weight_nce,
            weight_coarse=weight_coarse, weight_fine=weight_fine, coarse_loss=coarse_loss, fine_loss=fine_loss,
            fine_temperature=fine_temperature, teacher_temperature=teacher_temperature, lr_backbone=lr_backbone,
            lr_new=lr_new, lr_afa=lr_afa, weight_relational=weight_relational, weight_margin=weight_margin,
            margin=margin, caption_mask=caption_mask, sampler=sampler,
        )
        student = params.student.model_copy(
            update={"backbone": override(params.student.backbone, name=backbone, pretrained=pretrained)})
        student = override(student, head=head, afa=afa, freeze_backbone=freeze_backbone)
        compute = override(params.compute, device=device)
        for one_seed in seeds:
            seeded = override(config, seed=one_seed)
            run_dir = Path(out.format(seed=seeded.seed))
            row = train_student(frames, manifest, list(teachers or []), run_dir, seeded, student, params.evaluate,
                                compute, resume=resume)
            tested = {key: value for key, value in row.items() if key.endswith(("_t2v_R1", "_t2v_R5", "_t2v_R10"))}
            summary = ", ".join(f"{key} {value:.1f}" for key, value in tested.items())
            typer.echo(f"trained the student for {row.get('epoch', 0)} epoch(s) into {run_dir}"
                       + (f" ({summary})" if summary else ""))
    except (ConfigError, ManifestError, FramesStoreError, FileNotFoundError, ValueError, KeyError) as exc:
        fail(str(exc))


@app.command("export")
def export_command(
    model: Path = typer.Option(..., "--model", help="A saved student directory (teach train-student --out)."),
    out: Path = typer.Option(..., "--out", help="Directory for the open_clip weights, head and config."),
) -> None:
    """The student as plain weights: an open_clip state dict + the small video head (docs/export-and-search.md)."""
    from teachclip.models.io import CheckpointError
    from teachclip.tools.export import export_student

    try:
        path = export_student(model, out)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"exported {model} to {path}")


@app.command("evaluate")
def evaluate_command(
    model: list[Path] = typer.Option(
        ..., "--model", help="A saved student or teacher directory (config.json + model.safetensors); repeatable."),
    frames: Path = typer.Option(..., "--frames", help="frames.zarr decoded from --manifest."),
    manifest: Path = typer.Option(..., "--manifest", help="Manifest directory."),
    out: Path = typer.Option(
        ..., "--out", help="Metrics JSON to write (dvc metrics show reads it); with several --model, a "
        "directory receiving <model directory name>.json for each."),
    split: str = typer.Option(None, "--split", help="train, val or test (default: evaluate.split)."),
    dump_similarity: Path = typer.Option(
        None, "--dump-similarity", help="Also save the similarity matrix, text/video ids and ground truth (.npz)."
    ),
    device: str = DEVICE_OPTION,
) -> None:
    """Text-to-video and video-to-text R@1/5/10, MdR, MnR (CLIP4Clip rules, pessimistic ties)."""
    from teachclip.stores.frames import FramesStoreError
    from teachclip.models.io import CheckpointError
    from teachclip.core.config import override
    from teachclip.core.manifest import ManifestError
    from teachclip.stages.evaluate import evaluate_many

    params = load()
    if len(model) > 1 and dump_similarity is not None:
        fail("--dump-similarity takes one --model")
    names = [path.resolve().name for path in model]
    if len(set(names)) < len(names):
        fail(f"several --model directories share a name ({', '.join(names)}): their metrics files would collide")
    try:
        config = override(params.evaluate, split=split)
        compute = override(params.compute, device=device)
        # one process for all of them: no start-up, manifest fingerprint or store opening per model
        targets = [out] if len(model) == 1 else [out / f"{name}.json" for name in names]
        results = evaluate_many(list(zip(model, targets, strict=True)), frames, manifest, config, compute,
                                dump_similarity=dump_similarity)
        if len(model) == 1:
            typer.echo(" ".join(f"{key}={value:g}" for key, value in results[0].items()))
    except (ConfigError, ManifestError, FramesStoreError, CheckpointError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))



# ---- search: index, query ------------------------------------------------------------------


@search_app.command("index")
def search_index_command(
    model: Path = typer.Option(..., "--model", help="A saved student directory."),
    frames: Path = typer.Option(..., "--frames", help="frames.zarr of the collection to search."),
    out: Path = typer.Option(..., "--out", help="index.zarr to write."),
    dtype: str = typer.Option("float16", "--dtype", help="float16 (half the size) or float32."),
    device: str = DEVICE_OPTION,
) -> None:
    """Embed every video of a frames store once: one vector per video."""
    from teachclip.stores.frames import FramesStoreError
    from teachclip.models.io import CheckpointError
    from teachclip.tools.search import build_index

    params = load()
    try:
        path = build_index(model, frames, out, dtype=dtype, batch_videos=params.evaluate.batch_videos,
                           device=device or params.compute.device)
    except (FramesStoreError, CheckpointError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"indexed {frames} into {path}")


@search_app.command("query")
def search_query_command(
    index: Path = typer.Argument(..., help="index.zarr from `teach search index`."),
    text: str = typer.Argument(..., help="The query, e.g. \"a red square moves left\"."),
    k: int = typer.Option(5, "-k", "--top", min=1, help="How many videos to list."),
    model: Path = typer.Option(None, "--model", help="The model (default: the one recorded in the index)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    device: str = DEVICE_OPTION,
) -> None:
    """Rank the indexed videos for a text: one text encoding, one matrix-vector product."""
    import json

    from rich.console import Console
    from rich.table import Table

    from teachclip.models.io import CheckpointError
    from teachclip.tools.search import Searcher

    params = load()
    try:
        hits = Searcher(index, model, device=device or params.compute.device).query(text, k)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps({"query": text, "results": [hit.__dict__ for hit in hits]}, indent=2))
        return
    table = Table(title=f"top {len(hits)} for {text!r}")
    table.add_column("rank", justify="right")
    table.add_column("video")
    table.add_column("score", justify="right")
    for hit in hits:
        table.add_row(str(hit.rank), hit.video_id, f"{hit.score:.4f}")
    Console().print(table)


# ---- report ------------------------------------------------------------------------------


@app.command("report")
def report_command(
    metrics: Path = typer.Option(Path("metrics"), "--metrics", help="Directory of `teach evaluate` JSON files."),
    out: Path = typer.Option(Path("reports"), "--out", help="Writes results.md, results.json, results.png."),
) -> None:
    """Teachers vs students (mean ± std over seeds) as a Markdown table, JSON and a bar chart."""
    from teachclip.stages.report import ReportError, report

    params = load()
    try:
        rows = report(metrics, out, params)
    except ReportError as exc:
        fail(str(exc))
    typer.echo((out / "results.md").read_text())
    typer.echo(f"wrote {out}/results.md, results.json, results.png ({len(rows)} models)", err=True)


# ---- audit / sparse ------------------------------------------------------------------------


@app.command("audit-captions")
def audit_captions_command(
    teachers: Path = typer.Option(..., "--teachers", help="teachers.zarr (every group) or teachers.zarr/<name>."),
    manifest: Path = typer.Option(..., "--manifest", help="The manifest the cache was computed from."),
    out: Path = typer.Option(..., "--out", help="Report directory: captions.csv, report.json, caption_mask.json."),
    top_k: int = typer.Option(100, "--top-k", help="Flag captions whose own video ranks outside the top K."),
    block_texts: int = typer.Option(1024, "--block-texts", help="Cache rows read at a time (bounds memory)."),
) -> None:
    """TeachText's caption-noise audit: rank each training caption's own video under every teacher and
    their mean; write a report and a caption mask for train_student.caption_mask (docs/distillation.md)."""
    from teachclip.stores.teachers import TeacherCacheError
    from teachclip.core.manifest import ManifestError
    from teachclip.tools.audit_captions import MASK_JSON, AuditError, audit_captions

    try:
        result = audit_captions(teachers, manifest, out, top_k=top_k, block_texts=block_texts)
    except (AuditError, TeacherCacheError, ManifestError, FileNotFoundError) as exc:
        fail(str(exc))
    report = result.report
    typer.echo(f"{report['flagged']} of {report['captions']} captions flagged (own video outside the top {top_k}); "
               f"mask: {Path(out) / MASK_JSON}")


@cache_app.command("sparsify")
def cache_sparsify_command(
    group: Path = typer.Argument(..., help="A complete dense group: teachers.zarr/<name>."),
    out: Path = typer.Option(..., "--out", help="Teacher cache store to write the sparse group into."),
    top_k: int = typer.Option(..., "--top-k", help="Videos kept per caption (plus its own video)."),
    name: str = typer.Option(None, "--name", help="Group name in OUT (default: the dense group's)."),
) -> None:
    """Keep each caption's top-k teacher videos and scores plus its matched pair (WebVid-scale caches;
    train with `train_student.sampler: neighbourhood`, docs/distillation.md)."""
    from teachclip.stores.sparse import sparsify
    from teachclip.stores.teachers import TeacherCacheError

    try:
        path = sparsify(group, out, top_k=top_k, name=name)
    except (TeacherCacheError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(f"wrote the sparse group {path} (top {top_k} videos per caption)")


if __name__ == "__main__":  # pragma: no cover
    app()
