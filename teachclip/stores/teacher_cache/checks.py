"""What a teacher group must look like on disk, and the checks that prove it, shared by the readers
(:mod:`.dense`, :mod:`.sparse`), ``verify``, ``pull`` and ``import``.

Nothing a group declares is trusted before it is compared with what must be there:

- :func:`expected_arrays`: every array a group of these (validated) attributes has, with its dtype,
  shape, chunk and shard shapes, codecs and fill value, all derived from the layout;
- :func:`check_array_meta`: an array's zarr.json against that expectation (so zarr never sizes
  anything by a number the layout did not allow);
- :func:`check_group_files`: the above for every array, then every chunk and shard present
  (:func:`teachclip.stores.zarr_io.check_chunk_presence`: file sizes, shard indexes, chunk headers);
- :func:`read_ids` / :func:`check_ids`: the id arrays decoded with their declared count checked
  first, ids sorted and unique, ``text_video`` in range;
- :func:`scan_group`: every value read once in a fixed order (finite scores, neighbour columns in
  range), giving the **content hash** ``content_sha256`` that ``mark_group_complete`` records and
  ``verify`` recomputes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from teachclip.core.columns import IdColumn
from teachclip.core.fingerprint import canonical_json
from teachclip.stores.teacher_cache.schema import (
    MAX_CHUNK_BYTES,
    MAX_ID_LENGTH,
    NEIGHBOUR_SCORES,
    NEIGHBOUR_VIDEOS,
    OWN_SCORE,
    RELEVANCE,
    REST_MEAN,
    SIMILARITY,
    TEXT_IDS,
    TEXT_VIDEO,
    VIDEO_IDS,
    GroupAttributes,
    TeacherCacheError,
    read_document,
    round_up,
)
from teachclip.stores.zarr_io import (
    MAX_PROBLEMS,
    ChunkGrid,
    check_chunk_presence,
    chunk_grid,
    grid_indices,
    read_id_column,
)

CONTENT_HASH_VERSION = "teachclip-content-v1"
READ_BYTES = 64 << 20  # decoded bytes per read of a scan
SCORE_CHAIN = ("bytes", "zstd", "crc32c")
STRING_CHAIN = ("vlen-utf8", "zstd", "crc32c")
NAN = "NaN"


@dataclass(frozen=True)
class ArraySpec:
    """What one array of a group must be. ``rows_free``: the row chunk size is the writer's choice
    (sparse arrays: ``sparsify.block_texts``), bounded by the rows and ``MAX_CHUNK_BYTES``."""

    data_type: str
    shape: tuple[int, ...]
    outer: tuple[int, ...]  # the grid of chunk files: shard shape, or chunk shape when unsharded
    inner: tuple[int, ...] | None  # chunk shape inside a shard
    chain: tuple[str, ...]
    fill_value: Any
    rows_free: bool = False


def expected_arrays(attrs: GroupAttributes) -> dict[str, ArraySpec]:
    """Every array a group with these attributes has (dense or sparse), name -> :class:`ArraySpec`."""
    layout = attrs.layout
    n, v, t = layout.n_texts, layout.n_videos, layout.frames_per_video
    specs = {
        TEXT_IDS: ArraySpec("string", (n,), (n,), None, STRING_CHAIN, ""),
        VIDEO_IDS: ArraySpec("string", (v,), (v,), None, STRING_CHAIN, ""),
        TEXT_VIDEO: ArraySpec("int32", (n,), (n,), None, SCORE_CHAIN, -1),
    }
    if attrs.sparse is None:
        columns = round_up(v, layout.chunk_videos)
        specs[SIMILARITY] = ArraySpec("float16", (n, v), (layout.block_texts, columns),
                                      (layout.chunk_texts, layout.chunk_videos), SCORE_CHAIN, NAN)
        if attrs.has_frame_relevance:
            specs[RELEVANCE] = ArraySpec("float32", (n, t), (layout.block_texts, t), (layout.chunk_texts, t),
                                         SCORE_CHAIN, NAN)
        return specs
    k = attrs.sparse.top_k
    specs[NEIGHBOUR_VIDEOS] = ArraySpec("int32", (n, k), (n, k), None, SCORE_CHAIN, -1, rows_free=True)
    specs[NEIGHBOUR_SCORES] = ArraySpec("float16", (n, k), (n, k), None, SCORE_CHAIN, NAN, rows_free=True)
    specs[OWN_SCORE] = ArraySpec("float16", (n,), (n,), None, SCORE_CHAIN, NAN, rows_free=True)
    specs[REST_MEAN] = ArraySpec("float16", (n,), (n,), None, SCORE_CHAIN, NAN, rows_free=True)
    if attrs.has_frame_relevance:
        specs[RELEVANCE] = ArraySpec("float32", (n, t), (n, t), None, SCORE_CHAIN, NAN, rows_free=True)
    return specs


def check_array_meta(meta: Any, spec: ArraySpec) -> ChunkGrid:
    """The chunk grid of an array's zarr.json if it is exactly what ``spec`` demands; ValueError
    naming the first difference."""
    grid = chunk_grid(meta)
    if meta.get("data_type") != spec.data_type:
        raise ValueError(f"data type {str(meta.get('data_type'))[:40]} where {spec.data_type} belongs")
    if grid.shape != spec.shape:
        raise ValueError(f"shape {list(grid.shape)} where the layout says {list(spec.shape)}")
    outer = spec.outer
    if spec.rows_free:
        rows = grid.outer[0]
        row_bytes = 4 * int(np.prod(spec.shape[1:], dtype=np.int64))
        if rows > max(spec.shape[0], 1) or rows * row_bytes > MAX_CHUNK_BYTES:
            raise ValueError(f"chunks of {rows} rows for {spec.shape[0]} rows")
        outer = (rows, *spec.outer[1:])
    if grid.outer != outer or grid.inner != spec.inner:
        where = f"shards {list(grid.outer)} of chunks {list(grid.inner)}" if grid.inner else f"chunks {list(grid.outer)}"
        wanted = f"shards {list(outer)} of chunks {list(spec.inner)}" if spec.inner else f"chunks {list(outer)}"
        raise ValueError(f"{where} where the layout says {wanted}")
    if grid.chain != spec.chain or grid.separator != "/":
        raise ValueError(f"codecs {list(grid.chain)} where {list(spec.chain)} belong")
    if meta.get("fill_value") != spec.fill_value:
        raise ValueError(f"fill value {str(meta.get('fill_value'))[:40]!r} where {spec.fill_value!r} belongs")
    if meta.get("storage_transformers", []) != []:
        raise ValueError("storage transformers are not part of this schema")
    return grid


def read_array_grid(array_path: Path, spec: ArraySpec) -> ChunkGrid:
    """:func:`check_array_meta` of the array at ``array_path``; TeacherCacheError naming the array."""
    try:
        meta = read_document(array_path / "zarr.json")
    except TeacherCacheError as exc:
        raise TeacherCacheError(f"{array_path.name}: missing or unreadable array metadata ({exc})") from exc
    try:
        return check_array_meta(meta, spec)
    except ValueError as exc:
        raise TeacherCacheError(f"{array_path.name}: {exc}") from exc


def check_group_files(path: Path, attrs: GroupAttributes, max_problems: int = MAX_PROBLEMS,
                      present: set[str] | None = None) -> tuple[dict[str, ChunkGrid], list[str]]:
    """The chunk grid of every expected array and the problems found: metadata against the layout,
    then every chunk and shard present (cheap: sizes, shard indexes and chunk headers; bounded: at
    most about ``max_problems`` problems). ``present``: the arrays whose chunks are demanded (default
    all; the metadata of every array is checked in any case)."""
    grids, problems = {}, []
    for name, spec in sorted(expected_arrays(attrs).items()):
        if len(problems) >= max_problems:
            break
        try:
            grids[name] = read_array_grid(path / name, spec)
        except TeacherCacheError as exc:
            problems.append(str(exc))
            continue
        if present is not None and name not in present:
            continue
        try:
            meta = read_document(path / name / "zarr.json")
            problems.extend(check_chunk_presence(path / name, meta, max_problems=max_problems - len(problems)))
        except (OSError, TeacherCacheError) as exc:
            problems.append(f"{name}: unreadable chunks ({exc})")
    return grids, problems


# ---- ids --------------------------------------------------------------------------------------------


def read_ids(array_path: Path, count: int) -> IdColumn:
    """The ids of a one-chunk string array (``text_ids``, ``video_ids``) holding ``count`` ids, as an
    :class:`~teachclip.core.columns.IdColumn` (no Python object per id), read by
    :func:`teachclip.stores.zarr_io.read_id_column`: nothing is sized by a number inside the file
    before it is compared with ``count`` (the layout, the chunk's checksum, its zstd frame's declared
    size, its item count), and an id longer than ``MAX_ID_LENGTH`` characters, not UTF-8, or with a
    NUL character is refused."""
    try:
        return read_id_column(array_path, count, MAX_ID_LENGTH)
    except ValueError as exc:
        reason = str(exc)
        if "longer than" in reason:
            raise TeacherCacheError(f"{array_path.name}: an id longer than {MAX_ID_LENGTH} characters") from exc
        raise TeacherCacheError(reason) from exc


def id_column(ids: Sequence[str] | IdColumn, name: str) -> IdColumn:
    """``ids`` as an IdColumn; TeacherCacheError naming ``name`` for an id no column can hold (a NUL
    character, a lone surrogate)."""
    try:
        return IdColumn.of(ids)
    except ValueError as exc:  # UnicodeEncodeError is a ValueError too
        raise TeacherCacheError(f"{name}: an id that is not storable ({exc})") from exc


def _too_long(ids: IdColumn) -> bool:
    """Whether an id has more than MAX_ID_LENGTH characters (only ids of more bytes are decoded)."""
    if ids.array.dtype.itemsize <= MAX_ID_LENGTH:
        return False
    byte_lengths = np.char.str_len(ids.array)
    return any(len(ids[int(i)]) > MAX_ID_LENGTH for i in np.nonzero(byte_lengths > MAX_ID_LENGTH)[0])


def check_ids(text_ids: Sequence[str] | IdColumn, video_ids: Sequence[str] | IdColumn, text_video: np.ndarray,
              n_videos: int) -> list[str]:
    """Ids sorted and unique (strictly increasing), every caption's own-video column in range. The ids:
    IdColumns, or any sequences of str (made columns here)."""
    problems = []
    for name, ids in ((TEXT_IDS, text_ids), (VIDEO_IDS, video_ids)):
        try:
            column = id_column(ids, name)
        except TeacherCacheError as exc:
            problems.append(str(exc))
            continue
        if _too_long(column):
            problems.append(f"{name}: an id longer than {MAX_ID_LENGTH} characters")
            continue
        if not column.is_sorted_unique():
            values = column.array
            bad = int(np.argmin(values[1:] > values[:-1])) + 1
            problems.append(f"{name}: not sorted and unique (at position {bad}: {column[bad - 1][:40]!r}, "
                            f"{column[bad][:40]!r})")
    if len(text_video) and (text_video.min() < 0 or text_video.max() >= n_videos):
        problems.append(f"{TEXT_VIDEO}: column out of range 0..{n_videos - 1}")
    return problems


def neighbour_problems(neighbours: np.ndarray, n_videos: int, first_row: int = 0,
                       rows: np.ndarray | None = None) -> list[str]:
    """A sparse group's neighbour columns: in range, and no video twice in one row. A problem names the
    row ``first_row + i``, or ``rows[i]`` when the rows given are not consecutive."""

    def label(i: int) -> int:
        return int(rows[i]) if rows is not None else first_row + i

    if neighbours.size and (neighbours.min() < 0 or neighbours.max() >= n_videos):
        row = label(int(np.nonzero(((neighbours < 0) | (neighbours >= n_videos)).any(axis=1))[0][0]))
        return [f"{NEIGHBOUR_VIDEOS}: column out of range 0..{n_videos - 1} in row {row}"]
    ordered = np.sort(neighbours, axis=1)
    twice = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
    if twice.any():
        return [f"{NEIGHBOUR_VIDEOS}: a video listed twice in row {label(int(np.argmax(twice)))}"]
    return []


# ---- the scan: every value once, in a fixed order -----------------------------------------------------


@dataclass
class Scan:
    content_sha256: str | None  # None when the scan stopped at a problem
    problems: list[str]
    reads: int  # decoded regions (shards, chunks or row ranges) read


def _row_ranges(n_rows: int, grid: ChunkGrid, row_bytes: int) -> Iterator[tuple[int, int]]:
    """Row ranges to read: one shard (or chunk) of rows at a time when that is at most READ_BYTES
    decoded, else as many whole inner chunks of rows as READ_BYTES allows (at least one)."""
    step = grid.outer[0]
    if step * row_bytes > READ_BYTES:
        rows = (grid.inner or grid.outer)[0]
        step = max(rows, (READ_BYTES // max(row_bytes, 1)) // rows * rows)
    for start in range(0, n_rows, step):
        yield start, min(start + step, n_rows)


def scan_group(path: Path, attrs: GroupAttributes, grids: dict[str, ChunkGrid] | None = None,
               on_read: Callable[[], None] | None = None) -> Scan:
    """Read every array of a group once (arrays by name, rows in order) and hash the decoded values:
    ``content_sha256`` = sha256 over, per array, its canonical JSON header ``{name, dtype, shape}``
    and its values (numbers as little-endian C-order bytes, ids as 8-byte length + UTF-8). The same
    values give the same hash whatever the chunking or compression. Also checks what every read
    returns: scores finite (NaN is what unwritten data reads as), ids, columns in range."""
    import zarr

    if grids is None:
        grids, problems = check_group_files(path, attrs)
        if problems:
            return Scan(None, problems, 0)
    specs = expected_arrays(attrs)
    digest = hashlib.sha256(CONTENT_HASH_VERSION.encode() + b"\0")
    reads = 0
    ids: dict[str, IdColumn] = {}
    text_video = np.empty(0, dtype=np.int32)
    for name in sorted(specs):
        spec = specs[name]
        digest.update(canonical_json({"dtype": spec.data_type, "name": name, "shape": list(spec.shape)}).encode() + b"\n")
        if spec.data_type == "string":
            try:
                ids[name] = read_ids(path / name, spec.shape[0])
            except TeacherCacheError as exc:
                return Scan(None, [str(exc)], reads)
            for encoded in ids[name].array:  # UTF-8 bytes (numpy strips the padding; an id holds no NUL)
                digest.update(struct.pack("<Q", len(encoded)) + encoded)
            reads += 1
            continue
        try:
            array = zarr.open_array(path / name, mode="r")
        except Exception as exc:  # metadata zarr itself cannot use
            return Scan(None, [f"{name}: cannot open ({type(exc).__name__}: {exc})"], reads)
        row_bytes = int(np.prod(spec.shape[1:], dtype=np.int64)) * np.dtype(spec.data_type).itemsize
        for start, stop in _row_ranges(spec.shape[0], grids[name], row_bytes):
            try:
                values = np.asarray(array[start:stop])
            except Exception as exc:  # crc32c mismatch, truncated or undecodable chunk
                return Scan(None, [f"{name}: corrupt data in rows {start}:{stop} ({type(exc).__name__}: {exc})"], reads)
            reads += 1
            if on_read is not None:
                on_read()
            problem = _value_problem(name, values, start, attrs)
            if problem:
                return Scan(None, [problem], reads)
            digest.update(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes())
            if name == TEXT_VIDEO:
                text_video = values
    problems = check_ids(ids[TEXT_IDS], ids[VIDEO_IDS], text_video, attrs.layout.n_videos)
    return Scan(None if problems else digest.hexdigest(), problems, reads)


def _value_problem(name: str, values: np.ndarray, start: int, attrs: GroupAttributes) -> str | None:
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        row = start + int(np.argmax((~np.isfinite(values.reshape(len(values), -1))).any(axis=1)))
        return f"{name}: non-finite values from row {row} (unwritten or missing data reads as NaN)"
    if name == NEIGHBOUR_VIDEOS:
        problems = neighbour_problems(values, attrs.layout.n_videos, start)
        return problems[0] if problems else None
    return None


# ---- the files of a group (push copies exactly these; pull accepts nothing else) ---------------------


def group_files(grids: dict[str, ChunkGrid]) -> Iterator[str]:
    """Every file a complete group with these arrays has, relative to the group directory."""
    yield "zarr.json"
    for name in sorted(grids):
        yield f"{name}/zarr.json"
        for index in grid_indices(grids[name].grid):
            yield f"{name}/{grids[name].key(index)}"


def max_stored_bytes(grid: ChunkGrid) -> int:
    """The most bytes one chunk file (or shard file) of this grid can take on disk: its decoded size
    plus zstd's worst-case expansion and the checksums (ids: at most MAX_ID_LENGTH characters each)."""
    if grid.itemsize is None:
        raw = 4 + grid.outer[0] * (4 + 4 * MAX_ID_LENGTH)
    else:
        raw = grid.chunk_nbytes or 0
    chunk = raw + raw // 64 + 4096
    if grid.inner is None:
        return chunk
    n_chunks = int(np.prod(grid.per_shard, dtype=np.int64))
    return n_chunks * (chunk + 16) + 4
