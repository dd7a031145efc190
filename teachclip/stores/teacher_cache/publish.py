"""The partial/publish protocol of the teacher cache.

A group is built in ``<out>.partial/<name>/`` with one completion marker per finished block (and
per finished unit of video features) in ``<out>.partial/_progress/`` and scratch data in
``<out>.partial/_scratch/<name>/``. When every block is written the group is marked complete and
published: if ``<out>`` does not exist yet, the whole partial store is renamed to ``<out>`` (one
atomic rename); if it does (a teacher added to a finished store), the group directory alone is
renamed into ``<out>/``, so the groups already there are never touched nor recomputed.

Completing a group records its content hash (``content_sha256``, :func:`.checks.scan_group`): a
group whose values cannot all be read back, or are not finite, is never marked complete.
Every function here that builds a path from a group name checks the name first.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import zarr

from teachclip.core.fingerprint import canonical_json
from teachclip.stores.teacher_cache.checks import scan_group
from teachclip.stores.teacher_cache.schema import (
    TeacherCacheError,
    check_group_name,
    group_names,
    open_root,
    parse_group_attributes,
    read_document,
)
from teachclip.stores.zarr_io import PROGRESS_DIR


def mark_group_complete(group_path: str | Path) -> str:
    """Read the whole group once (every chunk, finite scores, ids), record its content hash and
    ``complete: true``; returns the hash. TeacherCacheError naming the group if any check fails."""
    group_path = Path(group_path)
    attrs = dict(read_document(group_path / "zarr.json").get("attributes") or {})
    attrs.pop("content_sha256", None)  # a hash is only ever the one computed here, over these values
    scan = scan_group(group_path, parse_group_attributes(attrs, group_path / "zarr.json"))
    if scan.content_sha256 is None:
        raise TeacherCacheError(f"{group_path}: cannot be completed: {'; '.join(scan.problems)}")
    group = zarr.open_group(group_path, mode="r+")
    group.attrs.put(json.loads(canonical_json(attrs | {"complete": True, "content_sha256": scan.content_sha256})))
    return scan.content_sha256


SCRATCH_DIR = "_scratch"


def block_unit(name: str, block: int) -> str:
    return f"{name}.block.{block:06d}"


def video_unit(name: str, unit: int) -> str:
    return f"{name}.videos.{unit:06d}"


def done_of(done: set[str], name: str, kind: str) -> set[int]:
    """Indices of the finished units of one kind ("block" or "videos") of group ``name``."""
    prefix = f"{name}.{kind}."
    return {int(unit[len(prefix):]) for unit in done if unit.startswith(prefix)}


def scratch_path(partial: Path, name: str) -> Path:
    return partial / SCRATCH_DIR / check_group_name(name)


def discard_partial_group(partial: Path, name: str) -> None:
    """Forget a group's partial work: its arrays, completion markers and scratch data. The name is
    checked first: nothing is removed for a name that is not a plain group name."""
    check_group_name(name)
    shutil.rmtree(partial / name, ignore_errors=True)
    discard_bookkeeping(partial, name)


def publish_groups(partial: Path, out: Path, names: Sequence[str], verified: Sequence[str] = ()) -> None:
    """Mark the finished groups ``names`` of ``partial`` complete and move them into ``out``.

    One rename of the whole partial store when ``out`` does not exist and nothing else is in
    progress there; otherwise one rename per group, leaving other groups of ``out`` untouched.
    ``verified``: groups already complete and verified just now (a pull): moved as they are, so
    that they keep every byte.
    """
    for name in names:
        check_group_name(name)
    for name in names:
        if name not in verified:
            mark_group_complete(partial / name)
        discard_bookkeeping(partial, name)
    if not out.exists() and set(group_names(partial)) == set(names):
        for folder in (PROGRESS_DIR, SCRATCH_DIR):
            shutil.rmtree(partial / folder, ignore_errors=True)
        os.replace(partial, out)
        return
    open_root(out)
    for name in names:
        if (out / name).exists():
            shutil.rmtree(out / name)
        os.replace(partial / name, out / name)
    if not group_names(partial):
        shutil.rmtree(partial)


def discard_bookkeeping(partial: Path, name: str) -> None:
    """Remove a group's completion markers and scratch data (not its arrays)."""
    check_group_name(name)
    shutil.rmtree(scratch_path(partial, name), ignore_errors=True)
    progress = partial / PROGRESS_DIR
    for marker in progress.glob(f"{name}.*") if progress.is_dir() else []:
        marker.unlink()
