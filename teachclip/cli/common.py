"""What every ``teach`` command shares: the params file, ``--set``, the daily flags, the video input
options, and the one error handler.

A setting is declared once, as a field of :mod:`teachclip.core.config`; every command accepts
``--set section.field=value`` (``-S``, repeatable) for any field. The few flags people type daily
(``--epochs``, ``--seed``, ``--device`` ...) are declared once here and name the field they set.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import typer

from teachclip.core.config import Params, load_params
from teachclip.core.errors import TeachclipError


class State:
    params_path: Path = Path("params.yaml")


state = State()

SET_OPTION = typer.Option(
    None, "--set", "-S", metavar="SECTION.FIELD=VALUE",
    help="Override one params.yaml value, e.g. -S train_student.epochs=3 (repeatable; values are YAML).")
DEVICE_OPTION = typer.Option(None, "--device", help="cuda, cpu, cuda:1 ... (compute.device).")
WORKERS_OPTION = typer.Option(None, "--workers", help="Dask worker processes (compute.workers; one per GPU on GPUs).")
SCHEDULER_OPTION = typer.Option(None, "--scheduler", help="local, sync, or a dask scheduler address (compute.scheduler).")
EPOCHS_OPTION = typer.Option(None, "--epochs", help="Training epochs.")
BATCH_SIZE_OPTION = typer.Option(None, "--batch-size", help="Videos (one caption each) per batch.")
RESUME_OPTION = typer.Option(False, "--resume", help="Continue from the last completed epoch in OUT/checkpoint.")
OVERWRITE_OPTION = typer.Option(False, "--overwrite", help="Rebuild even if OUT (or OUT.partial) exists.")
FRAMES_OPTION = typer.Option(None, "--frames", help="Frames store (`teach decode`).")
FEATURES_OPTION = typer.Option(
    None, "--features", help="Frame-features store (`teach encode-frames`) instead of --frames: the frozen image "
    "tower's per-frame embeddings.")
MANIFEST_OPTION = typer.Option(..., "--manifest", help="Manifest directory (videos.csv, captions.csv).")


def load(settings: list[str] | None, flags: Mapping[str, Any] | None = None, variant: str | None = None) -> Params:
    """The params of this invocation: the params file, then the student ``variant``, then the daily
    ``flags`` ({"section.field": value}, None = not given) and ``settings`` (``--set``): what is typed wins."""
    typed = [f"{path}={_yaml(value)}" for path, value in (flags or {}).items() if value is not None]
    return load_params(state.params_path, [*typed, *(settings or [])], variant)


def _yaml(value: Any) -> str:
    import json

    return json.dumps(str(value) if isinstance(value, Path) else value)  # JSON is YAML: lists, numbers, strings


def video_input(frames: Path | None, features: Path | None) -> Path:
    """The store given as ``--frames`` or ``--features`` (exactly one), checked to be of that kind."""
    from teachclip.stores import video_store_kind

    if (frames is None) == (features is None):
        fail("give the video input as --frames FRAMES.zarr or --features FEATURES.zarr (exactly one)")
    path = frames if frames is not None else features
    given = "frames" if frames is not None else "features"
    found = video_store_kind(path)  # a FramesStoreError names the path and the reason
    if found != given:
        fail(f"{path}: a {'frame-features' if found == 'features' else 'frames'} store; pass it as --{found}")
    return path


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def handled(command: Callable) -> Callable:
    """The one error handler: a :class:`TeachclipError` ends the command with its one-line message
    and exit status 1, no traceback. Anything else is a bug and keeps its traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TeachclipError as exc:
            fail(str(exc))

    return run
