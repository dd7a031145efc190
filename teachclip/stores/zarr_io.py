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

import json
import math
import os
import shutil
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from teachclip.core.errors import InputError

PROGRESS_DIR = "_progress"  # completion markers inside <out>.partial, removed on finalize
ZSTD_LEVEL = 3
MISSING = 2**64 - 1  # offset and length of an absent chunk in a shard index
MAX_METADATA_BYTES = 16 << 20  # a zarr.json is a few KB (a frames store's failure list: a few MB at most)


class StoreReplaceError(InputError):
    """An output path that holds something other than a store of the kind being written."""


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


def finalize(partial: Path, out: Path, kind: str) -> None:
    """Drop progress markers and atomically move ``<out>.partial`` to ``<out>``; an existing ``out`` is
    replaced only if it is a store of the same ``kind`` (:func:`remove_store`)."""
    shutil.rmtree(partial / PROGRESS_DIR, ignore_errors=True)
    remove_store(out, kind)
    os.replace(partial, out)


def root_attributes(path: str | Path) -> dict | None:
    """The attributes of the Zarr group at ``path`` (None: no readable group metadata there)."""
    meta = Path(path) / "zarr.json"
    try:
        if not meta.is_file() or meta.stat().st_size > MAX_METADATA_BYTES:
            return None
        document = json.loads(meta.read_text())
    except (OSError, ValueError):  # unreadable, not JSON, not UTF-8
        return None
    attributes = document.get("attributes") if isinstance(document, dict) else None
    return attributes if isinstance(attributes, dict) else None


def store_kind(path: str | Path) -> str | None:
    """What teachclip store ``path`` is (its ``kind`` or ``teachclip_store`` attribute), None if none."""
    attributes = root_attributes(path) or {}
    kind = attributes.get("kind", attributes.get("teachclip_store"))
    return kind if isinstance(kind, str) else None


def remove_store(path: str | Path, kind: str, unfinished_entries: frozenset[str] = frozenset()) -> None:
    """Delete ``path`` (``--overwrite``, or an output being replaced) only if it is a store of ``kind``
    or, with ``unfinished_entries``, a partial store killed before its attributes were written (a
    folder holding only those entries). Anything else is refused by name: a flag must never delete a
    user's folder because its path was mistyped."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        if store_kind(path) == kind:
            shutil.rmtree(path)
            return
        if unfinished_entries and root_attributes(path) is None and {p.name for p in path.iterdir()} <= unfinished_entries:
            shutil.rmtree(path)
            return
    raise StoreReplaceError(f"{path}: exists and is not a {kind} store; refusing to delete or replace it "
                            f"(choose another output path, or remove it yourself)")


def tree_bytes(path: str | Path) -> int:
    """Total size of the files below ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# ---- which chunks exist -------------------------------------------------------------------------


def chunk_presence(array_path: Path, max_chunks: int = 1 << 26) -> np.ndarray:
    """bool array over the grid of (inner) chunks of the array at ``array_path``: True where the chunk is
    stored. Zarr reads an absent chunk as the fill value; readers that must not mistake a deleted chunk
    for data (frames of a decoded video, an index's vectors) check this first. Shard indexes are read
    from the end of each shard file (crc32c-checked), never the whole file. Raises ValueError with the
    reason when the metadata is not a plain default-encoded (sharded) array or declares more than
    ``max_chunks`` chunks."""
    import google_crc32c

    meta = json.loads((array_path / "zarr.json").read_text())
    shape = [int(n) for n in meta["shape"]]
    outer = [int(n) for n in meta["chunk_grid"]["configuration"]["chunk_shape"]]
    encoding = meta.get("chunk_key_encoding", {})
    if encoding.get("name") != "default" or any(n < 0 for n in shape) or any(n < 1 for n in outer):
        raise ValueError(f"unexpected chunk layout (shape {shape}, chunks {outer}, key encoding {encoding})")
    separator = encoding.get("configuration", {}).get("separator", "/")
    sharding = next((c["configuration"] for c in meta["codecs"] if c.get("name") == "sharding_indexed"), None)
    inner = [int(n) for n in sharding["chunk_shape"]] if sharding else outer
    if any(i < 1 or o % i for o, i in zip(outer, inner, strict=True)):
        raise ValueError(f"inner chunks {inner} do not divide the shards {outer}")
    grid_outer = [math.ceil(n / o) for n, o in zip(shape, outer, strict=True)]
    per_shard = [o // i for o, i in zip(outer, inner, strict=True)]
    if math.prod(g * k for g, k in zip(grid_outer, per_shard, strict=True)) > max_chunks:
        raise ValueError(f"declares more than {max_chunks} chunks")
    present = np.zeros([g * k for g, k in zip(grid_outer, per_shard, strict=True)], dtype=bool)
    entries = math.prod(per_shard)
    index_size = 16 * entries + 4
    for index in np.ndindex(*grid_outer):
        file = array_path / ("c" + "".join(f"{separator}{i}" for i in index))
        if not file.is_file():
            continue
        region = tuple(slice(i * k, (i + 1) * k) for i, k in zip(index, per_shard, strict=True))
        if sharding is None:
            present[region] = True
            continue
        size = file.stat().st_size
        if size < index_size:
            continue  # truncated: no chunk of it is readable
        with open(file, "rb") as handle:
            handle.seek(size - index_size)
            tail = handle.read(index_size)
        if struct.pack("<I", google_crc32c.value(tail[:-4])) != tail[-4:]:
            continue  # a corrupt index: treat the shard as absent
        offsets = np.frombuffer(tail[:-4], dtype="<u8").reshape(*per_shard, 2)
        present[region] = ~((offsets[..., 0] == MISSING) & (offsets[..., 1] == MISSING))
    return present


# ---- checks: Zarr reads an absent chunk as its fill value without a word ------------------------


def regions(shape: tuple[int, ...], step: tuple[int, ...]) -> Iterator[tuple[slice, ...]]:
    grid = [range(0, max(size, 1), s) for size, s in zip(shape, step, strict=True)]
    for starts in np.ndindex(*[len(g) for g in grid]):
        yield tuple(slice(g[i], min(g[i] + s, size)) for g, i, s, size in zip(grid, starts, step, shape, strict=True))


def check_chunk_presence(array_path: Path, meta: dict) -> list[str]:
    """Zarr reads an absent chunk or shard as the fill value without a word: demand each one."""
    name = array_path.name
    shape = meta["shape"]
    outer = meta["chunk_grid"]["configuration"]["chunk_shape"]
    encoding = meta.get("chunk_key_encoding", {})
    separator = encoding.get("configuration", {}).get("separator", "/")
    if encoding.get("name") != "default":
        return [f"{name}: unexpected chunk key encoding {encoding}"]
    sharding = next((c for c in meta["codecs"] if c["name"] == "sharding_indexed"), None)
    problems = []
    for index in np.ndindex(*[math.ceil(s / c) for s, c in zip(shape, outer, strict=True)]):
        key = "c" + "".join(f"{separator}{i}" for i in index)
        file = array_path / key
        if not file.is_file():
            problems.append(f"{name}: {'shard' if sharding else 'chunk'} {key} is missing")
            continue
        if sharding is not None:
            problems.extend(check_shard(file, name, key, shape, outer, index, sharding["configuration"]))
    return problems


def check_shard(file: Path, name: str, key: str, shape: list[int], outer: list[int], index: tuple[int, ...],
                 config: dict) -> list[str]:
    """Read a shard's index (crc32c-checked) and demand every inner chunk inside the array bounds."""
    import google_crc32c

    if config.get("index_location", "end") != "end" or [c["name"] for c in config["index_codecs"]] != [
        "bytes", "crc32c"
    ]:
        return [f"{name}: unexpected shard index layout {config}"]
    inner = config["chunk_shape"]
    per_shard = [o // i for o, i in zip(outer, inner, strict=True)]
    n_chunks = math.prod(per_shard)
    index_size = 16 * n_chunks + 4
    data = file.read_bytes()
    if len(data) < index_size:
        return [f"{name}: shard {key} is truncated ({len(data)} bytes)"]
    index_bytes, stored_crc = data[-index_size:-4], data[-4:]
    if struct.pack("<I", google_crc32c.value(index_bytes)) != stored_crc:
        return [f"{name}: shard {key} has a corrupt chunk index (crc32c mismatch)"]
    entries = np.frombuffer(index_bytes, dtype="<u8").reshape(*per_shard, 2)
    problems = []
    for inner_index in np.ndindex(*per_shard):
        start = [o * i + k * c for o, i, k, c in zip(outer, index, inner_index, inner, strict=True)]
        if any(s >= size for s, size in zip(start, shape, strict=True)):
            continue  # entirely outside the array: never written
        offset, length = (int(v) for v in entries[inner_index])
        if offset == MISSING and length == MISSING:
            problems.append(f"{name}: shard {key} lacks chunk {list(inner_index)}")
        elif offset + length > len(data) - index_size:
            problems.append(f"{name}: shard {key} chunk {list(inner_index)} points past the end of the file")
    return problems
