"""``teach cache ...``: inspect, verify, share and convert teacher caches; ``teach audit-captions``."""

from __future__ import annotations

from pathlib import Path

import typer

from teachclip.cli.common import SET_OPTION, fail, handled, load


def register(app: typer.Typer) -> None:
    cache_app = typer.Typer(help="Inspect, verify and share teacher caches.", no_args_is_help=True)
    cache_app.command("info")(handled(info))
    cache_app.command("verify")(handled(verify))
    cache_app.command("ls")(handled(ls))
    cache_app.command("push")(handled(push))
    cache_app.command("pull")(handled(pull))
    cache_app.command("export")(handled(export))
    cache_app.command("import")(handled(import_))
    cache_app.command("sparsify")(handled(sparsify))
    app.add_typer(cache_app, name="cache")
    app.command("audit-captions")(handled(audit_captions))


def info(
    path: Path = typer.Argument(..., help="teachers.zarr or teachers.zarr/<name>."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """What a teacher cache holds: teachers, fingerprints, shapes, size, completeness."""
    import json

    from teachclip.stores.teacher_cache.verify import cache_info, format_info
    from teachclip.stores.zarr_io import partial_path

    if not path.exists() and not partial_path(path).exists():
        fail(f"{path}: teacher cache not found (nor {partial_path(path).name} in progress)")
    result = cache_info(path)
    typer.echo(json.dumps(result, indent=1, sort_keys=True) if as_json else format_info(result))
    if any("error" in g for g in result["groups"] + result.get("in_progress", [])):
        raise typer.Exit(1)  # a group whose metadata cannot be used (named above)


def verify(path: Path = typer.Argument(..., help="teachers.zarr or teachers.zarr/<name>.")) -> None:
    """Read every chunk: checksums, presence of every chunk and shard, completeness. Exit 0 only if intact."""
    from teachclip.stores.teacher_cache.verify import verify_store

    checks = verify_store(path)
    for check in checks:
        if check.ok:
            content = f"content {check.content_sha256}" if check.content_sha256 and not check.notes else "; ".join(check.notes)
            typer.echo(f"{check.path}: ok ({check.chunks_read} shards/chunks read; {content})")
        for problem in check.problems:
            typer.secho(f"{check.path}: {problem}", fg=typer.colors.RED, err=True)
    if not all(check.ok for check in checks):
        raise typer.Exit(1)


def ls(
    url: str = typer.Argument(..., help="Shared cache location: a directory, s3://bucket/prefix, memory://..."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the teacher caches stored at URL (one entry per fingerprint)."""
    import json
    from dataclasses import asdict

    from teachclip.stores.teacher_cache.remote import scan_remote

    entries, skipped = scan_remote(url)
    for directory, reason in skipped:  # one unusable entry does not hide the others
        typer.secho(f"skipped {directory}: {reason}", fg=typer.colors.RED, err=True)
    if as_json:
        typer.echo(json.dumps([asdict(e) | {"files": len(e.files)} for e in entries], indent=1, sort_keys=True))
        return
    for e in entries:
        typer.echo(f"{e.fingerprint}  {e.kind:<11} {e.texts} x {e.videos}  {e.bytes / 1e6:.2f} MB  (pushed as {e.name})")
    if not entries:
        typer.echo(f"{url}: no teacher caches")


def push(
    path: Path = typer.Argument(..., help="teachers.zarr (every complete group) or teachers.zarr/<name>."),
    url: str = typer.Argument(..., help="Shared cache location (fsspec URL)."),
) -> None:
    """Upload teacher caches to URL/<fingerprint>/."""
    from teachclip.stores.teacher_cache.remote import push as run

    for name, fp, status in run(path, url):
        typer.echo(f"{name}: {status} {url.rstrip('/')}/{fp}")


def pull(
    url: str = typer.Argument(..., help="Shared cache location, or one entry URL/<fingerprint>."),
    path: Path = typer.Argument(..., help="Teacher cache store to put the groups in (teachers.zarr)."),
    fingerprint: list[str] = typer.Option(None, "--fingerprint", help="Only these entries (a prefix is enough)."),
    name: str = typer.Option(None, "--name", help="Group name for a single entry (default: the name it was pushed as)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a group of that name with another fingerprint."),
) -> None:
    """Download teacher caches (checked file by file, then verified) into a store."""
    from teachclip.stores.teacher_cache.remote import pull as run

    results = run(url, path, fingerprints=fingerprint or None, name=name, overwrite=overwrite)
    for group, fp, status in results:
        if status.startswith("skipped"):
            typer.secho(f"{group}: {status}", fg=typer.colors.RED, err=True)
        else:
            typer.echo(f"{group}: {status} ({fp})")
    if any(status.startswith("skipped") for *_, status in results):
        raise typer.Exit(1)  # the usable entries were pulled; the others are named above


def export(
    path: Path = typer.Argument(..., help="teachers.zarr or teachers.zarr/<name>."),
    out: Path = typer.Argument(..., help="HDF5 file to write."),
) -> None:
    """Write the cache's arrays and attributes into one HDF5 file."""
    from teachclip.stores.teacher_cache.hdf5 import export_hdf5

    typer.echo(f"exported {', '.join(export_hdf5(path, out))} to {out}")


def import_(
    h5: Path = typer.Argument(..., help="An HDF5 file written by `teach cache export`."),
    path: Path = typer.Argument(..., help="Teacher cache store to put the groups in (teachers.zarr)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a group of that name with another fingerprint."),
) -> None:
    """Rebuild Zarr teacher cache groups from an HDF5 export."""
    from teachclip.stores.teacher_cache.hdf5 import import_hdf5

    typer.echo(f"imported {', '.join(import_hdf5(h5, path, overwrite=overwrite))} into {path}")


def sparsify(
    group: Path = typer.Argument(..., help="A complete dense group: teachers.zarr/<name>."),
    out: Path = typer.Option(..., "--out", help="Teacher cache store to write the sparse group into."),
    name: str = typer.Option(None, "--name", help="Group name in OUT (default: the dense group's)."),
    settings: list[str] = SET_OPTION,
) -> None:
    """Keep each caption's top-k teacher videos and scores plus its matched pair (-S sparsify.top_k=32;
    WebVid-scale caches; train with `train_student.sampler: neighbourhood`, docs/distillation.md)."""
    from teachclip.stores.teacher_cache.sparse import sparsify as run

    config = load(settings).sparsify
    path = run(group, out, top_k=config.top_k, name=name, block_texts=config.block_texts)
    typer.echo(f"wrote the sparse group {path} (top {config.top_k} videos per caption)")


def audit_captions(
    teachers: Path = typer.Option(..., "--teachers", help="teachers.zarr (every group) or teachers.zarr/<name>."),
    manifest: Path = typer.Option(..., "--manifest", help="The manifest the cache was computed from."),
    out: Path = typer.Option(..., "--out", help="Report directory: captions.csv, report.json, caption_mask.json."),
    settings: list[str] = SET_OPTION,
) -> None:
    """The TeachText caption-noise audit: rank each training caption's own video under every teacher and
    their mean; write a report and a caption mask for train_student.caption_mask (-S audit.top_k=100;
    docs/distillation.md)."""
    from teachclip.stores.caption_mask import MASK_JSON
    from teachclip.tools.audit_captions import audit_captions as run

    config = load(settings).audit
    result = run(teachers, manifest, out, top_k=config.top_k, block_texts=config.block_texts)
    report = result.report
    typer.echo(f"{report['flagged']} of {report['captions']} captions flagged (own video outside the top "
               f"{config.top_k}); mask: {out / MASK_JSON}")
