"""``teach search index | query``: embed a collection once, then answer text queries."""

from __future__ import annotations

from pathlib import Path

import typer

from teachclip.cli.common import (
    DEVICE_OPTION,
    FEATURES_OPTION,
    FRAMES_OPTION,
    SET_OPTION,
    handled,
    load,
    video_input,
)


def register(app: typer.Typer) -> None:
    search_app = typer.Typer(help="Embed a collection once, then query it.", no_args_is_help=True)
    search_app.command("index")(handled(index))
    search_app.command("query")(handled(query))
    app.add_typer(search_app, name="search")


def index(
    model: Path = typer.Option(..., "--model", help="A saved student directory or a `teach export` directory."),
    frames: Path = FRAMES_OPTION,
    features: Path = FEATURES_OPTION,
    out: Path = typer.Option(..., "--out", help="index.zarr to write."),
    device: str = DEVICE_OPTION,
    settings: list[str] = SET_OPTION,
) -> None:
    """Embed every video of a frames store once: one vector per video (-S search.dtype=float32); from
    search.ann_threshold videos also an approximate (IVF) index (-S search.ann_lists=..., ann_train_videos)."""
    from teachclip.tools.search import build_index

    videos = video_input(frames, features)
    params = load(settings, {"compute.device": device})
    path = build_index(model, videos, out, search=params.search, batch_videos=params.evaluate.batch_videos,
                       device=params.compute.device)
    from teachclip.stores.zarr_io import root_attributes

    kind = (root_attributes(path) or {}).get("ann")
    typer.echo(f"indexed {videos} into {path}" + (f" (with an approximate {kind} index)" if kind else " (exact)"))


def query(
    index: Path = typer.Argument(..., help="index.zarr from `teach search index`."),
    text: str = typer.Argument(..., help="The query, e.g. \"a red square moves left\"."),
    k: int = typer.Option(5, "-k", "--top", min=1, help="How many videos to list."),
    model: Path = typer.Option(None, "--model", help="The model (default: the one recorded in the index)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    exact: bool = typer.Option(False, "--exact", help="Scan every vector even if the index has an approximate part."),
    device: str = DEVICE_OPTION,
    settings: list[str] = SET_OPTION,
) -> None:
    """Rank the indexed videos for a text: one text encoding, then one matrix-vector product (or, with an
    approximate index, a scan of search.ann_probe of its lists)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from teachclip.tools.search import Searcher

    params = load(settings, {"compute.device": device})
    searcher = Searcher(index, model, device=params.compute.device, exact=exact, ann_probe=params.search.ann_probe)
    hits = searcher.query(text, k)
    method = "approximate" if searcher.approximate else "exact"
    if as_json:
        typer.echo(json.dumps({"query": text, "search": method, "results": [hit.__dict__ for hit in hits]}, indent=2))
        return
    table = Table(title=f"top {len(hits)} for {text!r} ({method})")
    table.add_column("rank", justify="right")
    table.add_column("video")
    table.add_column("score", justify="right")
    for hit in hits:
        table.add_row(str(hit.rank), hit.video_id, f"{hit.score:.4f}")
    Console().print(table)
