"""Zarr v3 building blocks shared by every store (frames, teacher cache, search index).

Rules every store follows (see docs/stores.md):
- every array carries a crc32c checksum per chunk (and per shard index), so ``verify`` can find a
  flipped byte;
- big arrays are sharded so that a large dataset does not make one file per chunk; several
  processes may write one array only if each writes *whole shards* (zarr-python 3 has no locks);
- attributes hold no timestamps or host names, so the same inputs give byte-identical stores;
- a stage writes into ``<out>.partial`` with one completion marker per finished unit of work and
  renames it to ``<out>`` when complete (DVC deletes declared outputs before a stage runs, the
  partial directory survives that).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

PROGRESS_DIR = "_progress"  # completion markers inside <out>.partial, removed on finalize
ZSTD_LEVEL = 3


def compressors(compress: bool = True) -> list:
    """Codec chain after the bytes codec: zstd (optional) then a crc32c checksum."""
    return ([ZstdCodec(level=ZSTD_LEVEL)] if compress else []) + [Crc32cCodec()]


def create_array(
    group: zarr.Group,
    name: str,
    shape: Sequence[int],
    chunks: Sequence[int],
    dtype: str | np.dtype,
    shards: Sequence[int] | None = None,
    compress: bool = True,
    fill_value=0,
    attributes: dict | None = None,
) -> zarr.Array:
    """Create (or overwrite) an array with checksummed chunks, optionally sharded."""
    kwargs = dict(
        name=name,
        shape=tuple(int(s) for s in shape),
        chunks=tuple(int(c) for c in chunks),
        dtype=dtype,
        compressors=compressors(compress),
        fill_value=fill_value,
        overwrite=True,
        attributes=attributes or {},
    )
    if shards is not None:
        kwargs["shards"] = tuple(int(s) for s in shards)
    return group.create_array(**kwargs)


def write_strings(group: zarr.Group, name: str, values: Sequence[str]) -> zarr.Array:
    """A 1-D array of ids (variable-length UTF-8, the ``string`` data type of Zarr v3)."""
    array = group.create_array(
        name=name,
        shape=(len(values),),
        chunks=(max(len(values), 1),),
        dtype=str,
        compressors=compressors(True),
        overwrite=True,
    )
    if len(values):
        array[...] = np.asarray(list(values), dtype=object)
    return array


def read_strings(array: zarr.Array) -> list[str]:
    return [str(v) for v in array[...]]


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def mark_done(partial: Path, unit: str) -> None:
    """Record that work unit ``unit`` is completely written (an empty marker file, fsynced)."""
    directory = partial / PROGRESS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / unit
    with open(marker, "w") as handle:
        handle.flush()
        os.fsync(handle.fileno())


def done_units(partial: Path) -> set[str]:
    directory = partial / PROGRESS_DIR
    if not directory.is_dir():
        return set()
    return {p.name for p in directory.iterdir()}


def finalize(partial: Path, out: Path) -> None:
    """Drop progress markers and atomically move ``<out>.partial`` to ``<out>``."""
    shutil.rmtree(partial / PROGRESS_DIR, ignore_errors=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)


def tree_bytes(path: str | Path) -> int:
    """Total size of the files below ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
