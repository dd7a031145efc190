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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from teachclip.core.columns import MAX_ID_CHARS, IdColumn
from teachclip.core.errors import InputError
from teachclip.core.files import read_at_most

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
    """A 1-D array of ids (variable-length UTF-8, the ``string`` data type of Zarr v3), one chunk;
    ``values`` any sequence of ``str`` (a list, an :class:`~teachclip.core.columns.IdColumn`).
    :func:`read_id_column` reads it back."""
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
#
# The checks below read only what they must (file sizes, each shard's index from the end of the file,
# the first bytes of each chunk), stop after ``max_problems`` problems, and never trust a size that
# the metadata declares before comparing it with the bytes that are really there: a 2 KB zarr.json
# declaring 10^10 rows costs a few missing-file lookups, not a loop over 10^10 keys.

MAX_PROBLEMS = 5  # problems reported per array before a check stops
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ITEM_SIZES = {"bool": 1, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "float16": 2, "int32": 4, "uint32": 4,
              "float32": 4, "int64": 8, "uint64": 8, "float64": 8}
MAX_DIMENSION = 1 << 48  # no array dimension (nor chunk dimension) of any store is beyond this


def regions(shape: tuple[int, ...], step: tuple[int, ...]) -> Iterator[tuple[slice, ...]]:
    grid = [range(0, max(size, 1), s) for size, s in zip(shape, step, strict=True)]
    for starts in np.ndindex(*[len(g) for g in grid]):
        yield tuple(slice(g[i], min(g[i] + s, size)) for g, i, s, size in zip(grid, starts, step, shape, strict=True))


@dataclass(frozen=True)
class ChunkGrid:
    """Where an array's chunks live, from its zarr.json (:func:`chunk_grid`): the grid of chunk files
    (``outer``: the shard shape of a sharded array, else the chunk shape), the inner chunk shape of a
    shard, the key separator, the codec chain applied to one chunk and the item size (None:
    variable-length strings)."""

    shape: tuple[int, ...]
    outer: tuple[int, ...]
    inner: tuple[int, ...] | None
    separator: str
    chain: tuple[str, ...]
    itemsize: int | None

    @property
    def grid(self) -> tuple[int, ...]:
        """Chunk files along each dimension."""
        return tuple(-(-s // o) for s, o in zip(self.shape, self.outer, strict=True))

    @property
    def per_shard(self) -> tuple[int, ...]:
        return tuple(o // i for o, i in zip(self.outer, self.inner or self.outer, strict=True))

    @property
    def chunk_nbytes(self) -> int | None:
        """Decoded bytes of one (inner) chunk; None for variable-length data."""
        return None if self.itemsize is None else math.prod(self.inner or self.outer) * self.itemsize

    def key(self, index: Sequence[int]) -> str:
        return "c" + "".join(f"{self.separator}{i}" for i in index)

    def parse_key(self, key: str) -> tuple[int, ...] | None:
        """The grid index of a chunk key, None if ``key`` is not a key of this grid."""
        parts = key.split(self.separator)
        if parts[0] != "c" or len(parts) != len(self.shape) + 1 or not all(p.isdigit() and p.isascii() for p in parts[1:]):
            return None
        index = tuple(int(p) for p in parts[1:])
        if any(str(i) != p for i, p in zip(index, parts[1:], strict=True)):
            return None  # leading zeros: not the key zarr would read
        return index if all(i < g for i, g in zip(index, self.grid, strict=True)) else None


def _int_list(value, what: str, minimum: int) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(v) is int and minimum <= v <= MAX_DIMENSION for v in value):
        raise ValueError(f"{what} {str(value)[:80]} is not a list of integers >= {minimum}")
    return tuple(value)


def _codec_names(codecs, what: str) -> tuple[str, ...]:
    if not isinstance(codecs, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in codecs):
        raise ValueError(f"{what} {str(codecs)[:80]} is not a list of codecs")
    return tuple(c["name"] for c in codecs)


def chunk_grid(meta) -> ChunkGrid:
    """Parse the chunk layout of an array's zarr.json document; ValueError naming what is malformed
    (not a regular grid, chunk sizes that do not divide the shard, an index not at the end, ...)."""
    if not isinstance(meta, dict) or meta.get("node_type") != "array" or meta.get("zarr_format") != 3:
        raise ValueError("not the metadata of a Zarr v3 array")
    shape = _int_list(meta.get("shape"), "shape", 0)
    grid = meta.get("chunk_grid")
    if not isinstance(grid, dict) or grid.get("name") != "regular" or not isinstance(grid.get("configuration"), dict):
        raise ValueError(f"chunk grid {str(grid)[:80]} is not a regular grid")
    outer = _int_list(grid["configuration"].get("chunk_shape"), "chunk shape", 1)
    if len(outer) != len(shape):
        raise ValueError(f"chunk shape {list(outer)} does not fit shape {list(shape)}")
    encoding = meta.get("chunk_key_encoding")
    configuration = encoding.get("configuration", {}) if isinstance(encoding, dict) else None
    separator = configuration.get("separator", "/") if isinstance(configuration, dict) else None
    if not isinstance(encoding, dict) or encoding.get("name") != "default" or separator not in ("/", "."):
        raise ValueError(f"unexpected chunk key encoding {str(encoding)[:80]}")
    names = _codec_names(meta.get("codecs"), "codecs")
    inner = None
    if "sharding_indexed" in names:
        if names != ("sharding_indexed",):
            raise ValueError(f"codecs {list(names)}: sharding must be the only array codec")
        config = meta["codecs"][0].get("configuration")
        if not isinstance(config, dict):
            raise ValueError("sharding codec without configuration")
        inner = _int_list(config.get("chunk_shape"), "inner chunk shape", 1)
        if len(inner) != len(shape) or any(o % i for o, i in zip(outer, inner, strict=True)):
            raise ValueError(f"inner chunk shape {list(inner)} does not divide the shard shape {list(outer)}")
        if config.get("index_location", "end") != "end" or _codec_names(config.get("index_codecs"), "index codecs") != (
                "bytes", "crc32c"):
            raise ValueError("unexpected shard index layout (expected bytes + crc32c at the end)")
        names = _codec_names(config.get("codecs"), "inner codecs")
    data_type = meta.get("data_type")
    itemsize = None if data_type == "string" else ITEM_SIZES.get(data_type) if isinstance(data_type, str) else None
    if itemsize is None and data_type != "string":
        raise ValueError(f"unexpected data type {str(data_type)[:40]}")
    return ChunkGrid(shape, outer, inner, separator, names, itemsize)


def grid_indices(sizes: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Every index of a grid in C order, lazily (itertools.product would first materialise each range)."""
    if not sizes or any(n <= 0 for n in sizes):
        if not sizes:
            yield ()
        return
    for i in range(sizes[0]):
        for rest in grid_indices(sizes[1:]):
            yield (i, *rest)


def zstd_content_size(frame: bytes) -> int | None:
    """The decoded size a zstd frame header declares; None if ``frame`` does not start with a frame
    header that declares one (the decoder would then size its output by what it decodes)."""
    if len(frame) < 6 or frame[:4] != ZSTD_MAGIC:
        return None
    descriptor = frame[4]
    size_flag, single_segment, dictionary_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    position = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dictionary_flag]
    width = (1 if single_segment else 0, 2, 4, 8)[size_flag]
    if width == 0 or len(frame) < position + width:
        return None
    value = int.from_bytes(frame[position : position + width], "little")
    return value + 256 if width == 2 else value


ZSTD_HEADER_BYTES = 18  # the longest zstd frame header
ID_CHAIN = ("vlen-utf8", "zstd", "crc32c")  # the codecs write_strings gives an id array


def read_id_column(array_path: Path, count: int, max_chars: int = MAX_ID_CHARS) -> IdColumn:
    """The ``count`` ids of a one-chunk string array written by :func:`write_strings`, as an
    :class:`~teachclip.core.columns.IdColumn`: no Python object per id, not even while reading (zarr
    would return an object array of ``str``).

    The chunk is decoded here, and nothing is sized by a number inside the files before it is compared
    with ``count``: the array's zarr.json must declare exactly this layout (shape ``[count]``, one
    chunk, vlen-utf8 + zstd + crc32c), the chunk must pass its crc32c checksum, its zstd frame must
    declare at most what ``count`` ids of ``max_chars`` characters take, and it must hold ``count``
    UTF-8 ids without NUL characters. ValueError naming the array and what is wrong."""
    import google_crc32c
    from numcodecs import Zstd

    name = Path(array_path).name
    try:
        meta_file = Path(array_path) / "zarr.json"
        if meta_file.stat().st_size > MAX_METADATA_BYTES:
            raise ValueError("zarr.json is too large")
        grid = chunk_grid(json.loads(meta_file.read_text()))
    except (OSError, ValueError) as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{name}: unreadable array metadata ({exc})") from exc
    if (grid.itemsize is not None or grid.shape != (count,) or grid.outer != (max(count, 1),)
            or grid.inner is not None or grid.chain != ID_CHAIN):
        raise ValueError(f"{name}: not a one-chunk string array of {count} ids (shape {list(grid.shape)}, "
                         f"chunks {list(grid.outer)}, codecs {list(grid.chain)})")
    if count == 0:
        return IdColumn.of([])
    key = grid.key((0,))
    chunk = Path(array_path) / key
    limit = 4 + count * (4 + 4 * max_chars)  # the vlen-utf8 bytes of count ids of max_chars characters
    bound = limit + limit // 64 + 4096  # zstd's worst-case expansion, its header and the checksum
    try:
        if chunk.is_symlink():
            raise ValueError(f"{name}: chunk {key} is a link")
        with open(chunk, "rb") as handle:
            data = read_at_most(handle, bound)
    except OSError as exc:
        raise ValueError(f"{name}: chunk {key} is missing or unreadable ({exc.strerror or exc})") from exc
    if len(data) > bound:
        raise ValueError(f"{name}: chunk {key} is larger than {count} ids can be")
    if len(data) < 4 or struct.pack("<I", google_crc32c.value(data[:-4])) != data[-4:]:
        raise ValueError(f"{name}: chunk {key} fails its crc32c checksum")
    declared = zstd_content_size(data[:-4])
    if declared is None or declared > limit:
        raise ValueError(f"{name}: chunk {key} declares no size or more than {count} ids can take")
    try:
        raw = Zstd().decode(data[:-4])
    except Exception as exc:  # numcodecs raises RuntimeError/ValueError on a corrupt frame
        raise ValueError(f"{name}: chunk {key} does not decompress ({exc})") from exc
    del data
    try:
        return IdColumn.from_vlen_utf8(raw, count, max_chars)
    except ValueError as exc:
        raise ValueError(f"{name}: chunk {key} {exc}") from None


def chunk_frame_problem(grid: ChunkGrid, head: bytes, length: int) -> str | None:
    """What is wrong with a stored chunk of ``length`` bytes beginning with ``head``, judged by its
    codec chain without decoding it: a chunk must not decode to more (or less) than one chunk."""
    expected = grid.chunk_nbytes
    if grid.chain[-1:] != ("crc32c",):
        return None  # a chain these checks do not know: nothing to say
    if grid.chain == ("bytes", "crc32c"):
        return None if expected is None or length == expected + 4 else f"is {length} bytes, not {expected + 4}"
    if grid.chain[-2:] == ("zstd", "crc32c") and len(grid.chain) == 3:
        declared = zstd_content_size(head)
        if declared is None:
            return "does not start with a zstd frame that declares its size"
        if expected is not None and declared != expected:
            return f"declares {declared} decoded bytes, not {expected}"
    return None


def check_chunk_presence(array_path: Path, meta: dict, max_problems: int = MAX_PROBLEMS) -> list[str]:
    """Zarr reads an absent chunk or shard as the fill value without a word: demand each one (a plain
    file, not a link), read each shard's index from the end of its file (crc32c-checked) and demand
    every inner chunk inside the array bounds, inside the file, and of the size its codecs imply.
    Cheap (file sizes, shard indexes and chunk headers only) and bounded (stops after
    ``max_problems`` problems)."""
    name = array_path.name
    try:
        grid = chunk_grid(meta)
    except ValueError as exc:
        return [f"{name}: {exc}"]
    problems: list[str] = []
    for index in grid_indices(grid.grid):
        if len(problems) >= max_problems:
            problems.append(f"{name}: ... (stopped after {max_problems} problems)")
            break
        key = grid.key(index)
        file = array_path / key
        if file.is_symlink() or not file.is_file():
            kind = "shard" if grid.inner else "chunk"
            problems.append(f"{name}: {kind} {key} is {'a link' if file.is_symlink() else 'missing'}")
            continue
        budget = max_problems - len(problems)
        if grid.inner is not None:
            problems.extend(check_shard(file, name, key, grid, index, budget))
        else:
            problems.extend(_check_chunk_file(file, name, key, grid))
    return problems


def _check_chunk_file(file: Path, name: str, key: str, grid: ChunkGrid) -> list[str]:
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(ZSTD_HEADER_BYTES)
    problem = chunk_frame_problem(grid, head, size)
    return [f"{name}: chunk {key} {problem}"] if problem else []


def check_shard(file: Path, name: str, key: str, grid: ChunkGrid, index: tuple[int, ...],
                max_problems: int = MAX_PROBLEMS) -> list[str]:
    """Read a shard's index from the end of its file (crc32c-checked) and demand every inner chunk
    inside the array bounds: present, inside the file and of the size its codecs imply."""
    import google_crc32c

    assert grid.inner is not None
    per_shard = grid.per_shard
    n_chunks = math.prod(per_shard)
    index_size = 16 * n_chunks + 4
    size = file.stat().st_size
    if size < index_size:
        return [f"{name}: shard {key} is truncated ({size} bytes, its index alone takes {index_size})"]
    with open(file, "rb") as handle:
        handle.seek(size - index_size)
        tail = handle.read(index_size)
        index_bytes, stored_crc = tail[:-4], tail[-4:]
        if struct.pack("<I", google_crc32c.value(index_bytes)) != stored_crc:
            return [f"{name}: shard {key} has a corrupt chunk index (crc32c mismatch)"]
        entries = np.frombuffer(index_bytes, dtype="<u8").reshape(*per_shard, 2)
        offsets, lengths = entries[..., 0], entries[..., 1]
        inside = np.ones(per_shard, dtype=bool)  # inner chunks that start inside the array (the others are never written)
        for dim, (o, i, c, s) in enumerate(zip(grid.outer, index, grid.inner, grid.shape, strict=True)):
            starts = o * i + np.arange(per_shard[dim], dtype=np.int64) * c
            inside &= (starts < s).reshape([-1 if d == dim else 1 for d in range(len(per_shard))])
        absent = (offsets == MISSING) & (lengths == MISSING)
        data_end = np.uint64(size - index_size)
        past_end = ~absent & ((offsets > data_end) | (lengths > data_end - np.minimum(offsets, data_end)))
        problems = []
        for inner_index in zip(*np.nonzero(inside & (absent | past_end)), strict=True):
            if len(problems) >= max_problems:
                break
            what = "lacks chunk" if absent[inner_index] else "points past the end of the file for chunk"
            problems.append(f"{name}: shard {key} {what} {[int(i) for i in inner_index]}")
        if problems:
            return problems
        for inner_index in zip(*np.nonzero(inside), strict=True):
            offset, length = int(offsets[inner_index]), int(lengths[inner_index])
            handle.seek(offset)
            problem = chunk_frame_problem(grid, handle.read(min(length, ZSTD_HEADER_BYTES)), length)
            if problem:
                problems.append(f"{name}: shard {key} chunk {[int(i) for i in inner_index]} {problem}")
                if len(problems) >= max_problems:
                    break
    return problems


class RowReader:
    """Whole rows of an unsharded numeric array whose chunks span every column (the layout of the
    teacher cache's sparse arrays), read straight from its chunk files: one file read, crc32c check
    and zstd decompression per chunk a call touches, without zarr's per-chunk machinery (about 1 ms
    a chunk; a random batch of 64 rows touches 64 chunks of every array). :meth:`open` gives None
    for any other layout (the caller reads through zarr then). A chunk that is missing, fails its
    checksum, or declares another size than the layout gives raises ValueError naming it."""

    DTYPES = {"int32": "<i4", "int64": "<i8", "float16": "<f2", "float32": "<f4", "bool": "|b1", "uint8": "|u1"}

    def __init__(self, path: Path, grid: ChunkGrid, dtype: np.dtype):
        self.path, self.grid, self.dtype = path, grid, dtype
        self.chunk_rows = grid.outer[0]
        self.row_shape = grid.shape[1:]
        self.chunk_bytes = math.prod(grid.outer) * dtype.itemsize

    @classmethod
    def open(cls, array_path: str | Path) -> RowReader | None:
        path = Path(array_path)
        try:
            meta_file = path / "zarr.json"
            if meta_file.stat().st_size > MAX_METADATA_BYTES:
                return None
            meta = json.loads(meta_file.read_text())
            grid = chunk_grid(meta)
            endian = (meta["codecs"][0].get("configuration") or {}).get("endian", "little")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        dtype = cls.DTYPES.get(meta.get("data_type"))
        if (dtype is None or grid.inner is not None or grid.chain != ("bytes", "zstd", "crc32c") or endian != "little"
                or not grid.shape or tuple(grid.outer[1:]) != tuple(grid.shape[1:])):
            return None
        return cls(path, grid, np.dtype(dtype))

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The values of ``rows`` (sorted, unique, in range) as stored, shape [len(rows), *row shape]."""
        import google_crc32c
        from numcodecs import Zstd

        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        chunk_of = rows // self.chunk_rows
        bounds = np.flatnonzero(np.diff(chunk_of)) + 1
        for first, stop in zip([0, *bounds.tolist()], [*bounds.tolist(), len(rows)], strict=True):
            chunk = int(chunk_of[first])
            key = self.grid.key((chunk,) + (0,) * (len(self.grid.shape) - 1))
            try:
                with open(self.path / key, "rb") as handle:
                    data = read_at_most(handle, self.chunk_bytes + self.chunk_bytes // 64 + 4096)
            except OSError as exc:
                raise ValueError(f"{self.path.name}: chunk {key} is missing or unreadable "
                                 f"({exc.strerror or exc})") from exc
            if len(data) < 4 or struct.pack("<I", google_crc32c.value(data[:-4])) != data[-4:]:
                raise ValueError(f"{self.path.name}: chunk {key} fails its crc32c checksum")
            if zstd_content_size(data[:-4]) != self.chunk_bytes:
                raise ValueError(f"{self.path.name}: chunk {key} does not declare {self.chunk_bytes} bytes")
            try:
                raw = Zstd().decode(data[:-4])
            except Exception as exc:  # numcodecs raises RuntimeError/ValueError on a corrupt frame
                raise ValueError(f"{self.path.name}: chunk {key} does not decompress ({exc})") from exc
            if len(raw) != self.chunk_bytes:
                raise ValueError(f"{self.path.name}: chunk {key} decodes to {len(raw)} bytes, not {self.chunk_bytes}")
            block = np.frombuffer(raw, dtype=self.dtype).reshape(self.grid.outer)
            out[first:stop] = block[rows[first:stop] - chunk * self.chunk_rows]
        return out
