"""The search index (``index.zarr``): one vector per video of a collection, for text queries.

Layout (Zarr v3; written by ``teach search index``)::

    index.zarr/        attrs: teachclip_store "search-index", schema_version, model_fingerprint,
                       model_path, frames_fingerprint, dim, dtype, n_videos
      embeddings       float16 | float32 [videos, d]   one L2-normalised vector per video
      video_ids        str [videos]                    frames-store order, failed videos left out
      ann/             only above ``search.ann_threshold`` videos; attrs: kind "ivf-sq8", fingerprint,
                       lists, dim, n_videos, by_residual, train_videos, seed
        centroids      float32 [lists, d]              the k-means cells (faiss's coarse quantizer)
        scalar_min     float32 [d]                     8-bit scalar quantizer: per-dimension minimum
        scalar_range   float32 [d]                     ... and range
        list_offsets   int64 [lists + 1]               list l holds positions offsets[l]:offsets[l+1]
        rows           int64 [videos]                  the row (in video_ids) of each position
        codes          uint8 [videos, d]               each position's 8-bit code, list by list

The index records the fingerprint of the model that embedded it (:func:`teachclip.models.io.model_fingerprint`):
vectors of two models live in different spaces, so a query must come from the same model.
:func:`read_index` returns the vectors as a NumPy array (the search tool moves them to a device).

The approximate index (``ann/``) is a faiss ``IndexIVFScalarQuantizer`` (inner product), stored as the plain
arrays above rather than as faiss's own binary file: an index from someone else is read as checked NumPy
arrays (shapes, dtypes, finite values, ``rows`` a permutation, offsets that add up) and only then handed
to faiss, so no foreign bytes ever reach a C++ deserialiser, and nothing is unpickled. Its fingerprint
covers the model, the video set (frames fingerprint), the sizes and the build settings; an ``ann/``
group that does not match its index is refused as stale or foreign.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from teachclip.core.errors import InputError
from teachclip.core.fingerprint import fingerprint
from teachclip.stores.zarr_io import (
    chunk_presence,
    create_array,
    finalize,
    partial_path,
    read_strings,
    remove_store,
    root_attributes,
    write_strings,
)

STORE_KIND = "search-index"
SCHEMA_VERSION = 1
INDEX_DTYPES = ("float16", "float32")
ROWS_PER_CHUNK = 65536
MAX_VIDEOS = 1 << 34  # sizes read from a file are checked before anything is allocated
MAX_DIM = 65536
EMBEDDINGS, VIDEO_IDS = "embeddings", "video_ids"
ANN, ANN_KIND = "ann", "ivf-sq8"
CENTROIDS, SCALAR_MIN, SCALAR_RANGE, LIST_OFFSETS, ROWS, CODES = (
    "centroids", "scalar_min", "scalar_range", "list_offsets", "rows", "codes")
ANN_ENTRIES = (CENTROIDS, SCALAR_MIN, SCALAR_RANGE, LIST_OFFSETS, ROWS, CODES)
MIN_POINTS_PER_LIST = 39  # faiss's k-means warns below this many training points per cell
BLOCK_ROWS = 65536  # rows converted to float32 / read from disk at a time (bounds memory)


class SearchIndexError(InputError):
    """An index that cannot be used (missing, wrong store, or built by another model)."""


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # a core dependency; a broken environment should still say what is missing
        raise SearchIndexError("approximate search needs faiss: pip install faiss-cpu") from exc
    return faiss


def ann_lists(n_videos: int, lists: int, train_videos: int) -> int:
    """IVF lists for ``n_videos``: ``lists`` if given (> 0), else sqrt(videos), at most one list per
    39 training vectors (fewer leave k-means cells without points to place them)."""
    train = min(n_videos, train_videos)
    if lists > 0:
        if lists > train:
            raise SearchIndexError(f"search.ann_lists={lists} is more than the {train} training videos "
                                   f"(search.ann_train_videos, at most the collection's size)")
        return lists
    return max(1, min(round(math.sqrt(n_videos)), train // MIN_POINTS_PER_LIST))


def ann_fingerprint(model_fingerprint: str, frames_fingerprint: str, n_videos: int, dim: int,
                    settings: dict) -> str:
    """What an approximate index was built from: the model, the video set, the sizes, the build settings."""
    return fingerprint("search-ann", {"model": model_fingerprint, "frames": frames_fingerprint,
                                      "n_videos": n_videos, "dim": dim, "kind": ANN_KIND, **settings})


class AnnIndex:
    """An inverted-file index of 8-bit scalar-quantised vectors: faiss ``IndexIVFScalarQuantizer`` with
    the inner product. A query scans the ``probe`` lists whose centroids are nearest; scores are inner
    products with the 8-bit decoded vectors (within ~1e-2 of the exact cosine)."""

    def __init__(self, index: Any, settings: dict):
        self.index = index
        self.settings = settings  # lists, train_videos, seed: part of the fingerprint

    @classmethod
    def build(cls, vectors: Any, *, lists: int = 0, train_videos: int = 262_144, seed: int = 0,
              progress: Callable[[int], None] | None = None) -> AnnIndex:
        """Train on a seeded sample of ``train_videos`` rows of ``vectors`` ([n, d], any array that slices
        into NumPy, e.g. a float16 memmap: read ``BLOCK_ROWS`` rows at a time) and add every row. The
        same vectors and settings give the same index (seeded sample and k-means, rows added in order)."""
        faiss = _faiss()
        n, dim = int(vectors.shape[0]), int(vectors.shape[1])
        if n == 0:
            raise SearchIndexError("an approximate index needs at least one video")
        n_lists = ann_lists(n, lists, train_videos)
        sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, train_videos), replace=False))
        train = np.concatenate([np.asarray(vectors[sample[i : i + BLOCK_ROWS]], dtype=np.float32)
                                for i in range(0, len(sample), BLOCK_ROWS)])
        index = faiss.index_factory(dim, f"IVF{n_lists},SQ8", faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.max_points_per_centroid = max(index.cp.max_points_per_centroid, -(-len(train) // n_lists))
        index.train(train)
        del train
        for start in range(0, n, BLOCK_ROWS):
            index.add(np.ascontiguousarray(vectors[start : start + BLOCK_ROWS], dtype=np.float32))
            if progress is not None:
                progress(min(n, start + BLOCK_ROWS))
        return cls(index, {"lists": n_lists, "train_videos": int(train_videos), "seed": int(seed)})

    @property
    def n_videos(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def nbytes(self) -> int:
        """Memory of the lists (codes and 8-byte row ids) and the centroids."""
        return self.n_videos * (self.index.code_size + 8) + self.index.nlist * self.dim * 4

    def search(self, queries: np.ndarray, k: int, probe: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) [queries, k] of the best rows for unit-length ``queries`` [q, d]; row -1 (score
        -inf) where the probed lists hold fewer than k videos."""
        self.index.nprobe = max(1, min(int(probe), self.index.nlist))
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), int(k))
        return scores, rows

    # ---- the stored form: plain arrays -------------------------------------------------------------

    def lists(self):
        """(codes [size, code_size] uint8, rows [size] int64) of each list in order (copies)."""
        faiss = _faiss()
        invlists = self.index.invlists
        for list_no in range(self.index.nlist):
            size = invlists.list_size(list_no)
            if size == 0:
                yield np.zeros((0, self.index.code_size), np.uint8), np.zeros(0, np.int64)
                continue
            codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * self.index.code_size)
            rows = faiss.rev_swig_ptr(invlists.get_ids(list_no), size)
            yield np.array(codes, np.uint8).reshape(size, -1), np.array(rows, np.int64)

    def centroids(self) -> np.ndarray:
        return self.index.quantizer.reconstruct_n(0, self.index.nlist)

    def scalar_quantizer(self) -> tuple[np.ndarray, np.ndarray]:
        trained = _faiss().vector_to_array(self.index.sq.trained).astype(np.float32)
        return trained[: self.dim], trained[self.dim :]

    @classmethod
    def assemble(cls, centroids: np.ndarray, scalar_min: np.ndarray, scalar_range: np.ndarray,
                 by_residual: bool, settings: dict) -> AnnIndex:
        """An empty index from checked arrays; :meth:`add_list_entries` fills it."""
        faiss = _faiss()
        n_lists, dim = centroids.shape
        index = faiss.index_factory(dim, f"IVF{n_lists},SQ8", faiss.METRIC_INNER_PRODUCT)
        index.quantizer.add(np.ascontiguousarray(centroids, np.float32))
        faiss.copy_array_to_vector(np.concatenate([scalar_min, scalar_range]).astype(np.float32), index.sq.trained)
        index.by_residual = bool(by_residual)
        index.is_trained = True
        return cls(index, settings)

    def add_list_entries(self, list_no: int, codes: np.ndarray, rows: np.ndarray) -> None:
        faiss = _faiss()
        codes, rows = np.ascontiguousarray(codes, np.uint8), np.ascontiguousarray(rows, np.int64)
        self.index.invlists.add_entries(int(list_no), len(rows), faiss.swig_ptr(rows), faiss.swig_ptr(codes))
        self.index.ntotal += len(rows)


@dataclass
class SearchIndex:
    """An index read into memory: the exact vectors, or (``approximate=True`` on one that has it) the
    approximate index instead."""

    path: Path
    attrs: dict
    video_ids: list[str]
    embeddings: np.ndarray | None  # [videos, d], the stored dtype; None when the ANN index was loaded
    ann: AnnIndex | None = None

    @property
    def model_fingerprint(self) -> str:
        return self.attrs["model_fingerprint"]


def write_index(out: str | Path, embeddings: Any, video_ids: list[str], dtype: str, *,
                model_fingerprint: str, model_path: str, frames_fingerprint: str,
                ann: AnnIndex | None = None) -> Path:
    """Write ``out`` (via ``out.partial``): ``embeddings`` [videos, d] (any array that slices into NumPy,
    copied ``BLOCK_ROWS`` rows at a time) stored as ``dtype``, and the approximate index ``ann`` if given."""
    if dtype not in INDEX_DTYPES:
        raise SearchIndexError(f"index dtype {dtype!r}: expected one of {', '.join(INDEX_DTYPES)}")
    n, dim = int(embeddings.shape[0]), int(embeddings.shape[1])
    if ann is not None and (ann.n_videos, ann.dim) != (n, dim):
        raise SearchIndexError(f"{out}: the approximate index holds {ann.n_videos} x {ann.dim}, the index {n} x {dim}")
    out = Path(out)
    partial = partial_path(out)
    remove_store(partial, STORE_KIND, unfinished_entries=frozenset({"zarr.json", EMBEDDINGS, VIDEO_IDS, ANN}))
    root = zarr.open_group(partial, mode="w")
    array = create_array(root, EMBEDDINGS, shape=(n, dim), dtype=dtype, compress=False,
                         chunks=(max(1, min(ROWS_PER_CHUNK, n)), dim))
    for start in range(0, n, ROWS_PER_CHUNK):  # whole chunks: no read-modify-write
        array[start : start + ROWS_PER_CHUNK] = np.asarray(embeddings[start : start + ROWS_PER_CHUNK]).astype(dtype)
    write_strings(root, VIDEO_IDS, video_ids)
    if ann is not None:
        _write_ann(root, ann, ann_fingerprint(model_fingerprint, frames_fingerprint, n, dim, ann.settings))
    root.attrs.put({
        "teachclip_store": STORE_KIND,
        "schema_version": SCHEMA_VERSION,
        "model_fingerprint": model_fingerprint,
        "model_path": model_path,
        "frames_fingerprint": frames_fingerprint,
        "dim": dim,
        "dtype": dtype,
        "n_videos": len(video_ids),
        "ann": ANN_KIND if ann is not None else None,
    })
    finalize(partial, out, STORE_KIND)
    return out


def _write_ann(root: zarr.Group, ann: AnnIndex, ann_fp: str) -> None:
    """The ``ann/`` group: codes and rows streamed list by list, written in whole chunks."""
    group = root.create_group(ANN)
    n, dim, n_lists = ann.n_videos, ann.dim, ann.index.nlist
    scalar_min, scalar_range = ann.scalar_quantizer()
    create_array(group, CENTROIDS, shape=(n_lists, dim), chunks=(n_lists, dim), dtype="float32")[...] = ann.centroids()
    create_array(group, SCALAR_MIN, shape=(dim,), chunks=(dim,), dtype="float32")[...] = scalar_min
    create_array(group, SCALAR_RANGE, shape=(dim,), chunks=(dim,), dtype="float32")[...] = scalar_range
    chunk_rows = max(1, min(ROWS_PER_CHUNK, n))
    codes = create_array(group, CODES, shape=(n, ann.index.code_size), chunks=(chunk_rows, ann.index.code_size),
                         dtype="uint8", compress=False)
    rows = create_array(group, ROWS, shape=(n,), chunks=(chunk_rows,), dtype="int64")
    offsets = np.zeros(n_lists + 1, np.int64)
    pending_codes, pending_rows, written = [], [], 0

    def flush(final: bool) -> None:
        nonlocal pending_codes, pending_rows, written
        if not pending_rows:
            return
        block_codes, block_rows = np.concatenate(pending_codes), np.concatenate(pending_rows)
        whole = len(block_rows) if final else len(block_rows) // chunk_rows * chunk_rows
        codes[written : written + whole] = block_codes[:whole]
        rows[written : written + whole] = block_rows[:whole]
        written += whole
        pending_codes, pending_rows = [block_codes[whole:]], [block_rows[whole:]]

    for list_no, (list_codes, list_rows) in enumerate(ann.lists()):
        offsets[list_no + 1] = offsets[list_no] + len(list_rows)
        pending_codes.append(list_codes)
        pending_rows.append(list_rows)
        if sum(len(r) for r in pending_rows) >= chunk_rows:
            flush(final=False)
    flush(final=True)
    create_array(group, LIST_OFFSETS, shape=(n_lists + 1,), chunks=(n_lists + 1,), dtype="int64")[...] = offsets
    group.attrs.put({"kind": ANN_KIND, "fingerprint": ann_fp, "n_videos": n, "dim": dim, "lists": n_lists,
                     "by_residual": bool(ann.index.by_residual), **{k: v for k, v in ann.settings.items() if k != "lists"}})


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_index(path: str | Path, approximate: bool = False) -> SearchIndex:
    """The index, checked to be one (store kind, schema version, shapes). With ``approximate`` and an
    ``ann/`` group present, its approximate index is loaded (and checked) instead of the exact vectors."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise SearchIndexError(f"{path}: search index not found")
    attrs = root_attributes(path)
    if attrs is None or attrs.get("teachclip_store") != STORE_KIND:
        raise SearchIndexError(f"{path}: not a search index (made by `teach search index`)")
    if attrs.get("schema_version") != SCHEMA_VERSION:
        raise SearchIndexError(f"{path}: schema_version {attrs.get('schema_version')!r} (this code reads {SCHEMA_VERSION})")
    n, dim = attrs.get("n_videos"), attrs.get("dim")
    if not all(_int(v) for v in (n, dim)) or not (0 <= n <= MAX_VIDEOS and 1 <= dim <= MAX_DIM) or not all(
            isinstance(attrs.get(key), str) for key in ("model_fingerprint", "frames_fingerprint")):
        raise SearchIndexError(f"{path}: malformed attributes (n_videos {n!r}, dim {dim!r}, model_fingerprint, "
                               f"frames_fingerprint)")
    if attrs.get("ann") not in (None, ANN_KIND):
        raise SearchIndexError(f"{path}: approximate index kind {attrs.get('ann')!r} (this code reads {ANN_KIND!r})")
    embeddings, ann = None, None
    try:
        root = zarr.open_group(path, mode="r")
        embeddings_array, ids_array = root[EMBEDDINGS], root[VIDEO_IDS]
        if tuple(embeddings_array.shape) != (n, dim) or tuple(ids_array.shape) != (n,) or str(
                embeddings_array.dtype) not in INDEX_DTYPES:
            raise SearchIndexError(f"{path}: {EMBEDDINGS} {list(embeddings_array.shape)} {embeddings_array.dtype} and "
                                   f"{VIDEO_IDS} {list(ids_array.shape)} do not fit n_videos={n}, dim={dim}")
        if n and not chunk_presence(path / EMBEDDINGS).all():
            raise SearchIndexError(f"{path}: chunks of {EMBEDDINGS} are missing from disk (every score would be 0)")
        if approximate and attrs.get("ann") is not None:
            ann = _read_ann(path, root, attrs)
        else:
            embeddings = np.asarray(embeddings_array[...])
        video_ids = read_strings(ids_array)
    except (KeyError, ValueError, TypeError, OSError, RuntimeError) as exc:  # zarr: metadata, checksum, truncation
        if isinstance(exc, SearchIndexError):
            raise
        raise SearchIndexError(f"{path}: unreadable search index ({type(exc).__name__}: {exc})") from exc
    if embeddings is not None and not np.isfinite(embeddings).all():
        raise SearchIndexError(f"{path}: non-finite values in {EMBEDDINGS}: the index was altered or is corrupt")
    return SearchIndex(path, attrs, video_ids, embeddings, ann)


def _read_ann(path: Path, root: zarr.Group, attrs: dict) -> AnnIndex:
    """The ``ann/`` group as a faiss index, after every array is checked (sizes before allocation,
    values before faiss sees them)."""
    where = path / ANN
    n, dim = attrs["n_videos"], attrs["dim"]
    if ANN not in root:
        raise SearchIndexError(f"{where}: missing (the index's attributes say it has an approximate index)")
    group = root[ANN]
    ann_attrs = dict(group.attrs)
    n_lists, by_residual = ann_attrs.get("lists"), ann_attrs.get("by_residual")
    settings = {"lists": n_lists, "train_videos": ann_attrs.get("train_videos"), "seed": ann_attrs.get("seed")}
    if ann_attrs.get("kind") != ANN_KIND or not all(_int(v) for v in settings.values()) or not isinstance(
            by_residual, bool) or (ann_attrs.get("n_videos"), ann_attrs.get("dim")) != (n, dim) or not (
            1 <= n_lists <= max(1, n)):
        raise SearchIndexError(f"{where}: malformed attributes (kind {ann_attrs.get('kind')!r}, lists {n_lists!r}, "
                               f"n_videos {ann_attrs.get('n_videos')!r}, dim {ann_attrs.get('dim')!r})")
    expected = ann_fingerprint(attrs["model_fingerprint"], attrs["frames_fingerprint"], n, dim, settings)
    if ann_attrs.get("fingerprint") != expected:
        raise SearchIndexError(f"{where}: stale or foreign approximate index: its fingerprint does not match this "
                               f"index's model, videos and build settings; rebuild it with `teach search index`")
    shapes = {CENTROIDS: ((n_lists, dim), "float32"), SCALAR_MIN: ((dim,), "float32"),
              SCALAR_RANGE: ((dim,), "float32"), LIST_OFFSETS: ((n_lists + 1,), "int64"),
              ROWS: ((n,), "int64"), CODES: ((n, dim), "uint8")}
    arrays = {}
    for name, (shape, dtype) in shapes.items():
        if name not in group:
            raise SearchIndexError(f"{where / name}: missing")
        array = group[name]
        if tuple(array.shape) != shape or str(array.dtype) != dtype:
            raise SearchIndexError(f"{where / name}: {list(array.shape)} {array.dtype}, expected {list(shape)} {dtype}")
        if math.prod(shape) and not chunk_presence(where / name).all():
            raise SearchIndexError(f"{where / name}: chunks are missing from disk")
        arrays[name] = array
    centroids, scalar_min, scalar_range = (np.asarray(arrays[k][...]) for k in (CENTROIDS, SCALAR_MIN, SCALAR_RANGE))
    if not all(np.isfinite(a).all() for a in (centroids, scalar_min, scalar_range)) or (scalar_range < 0).any():
        raise SearchIndexError(f"{where}: non-finite centroids or quantizer ranges, or a negative range")
    offsets = np.asarray(arrays[LIST_OFFSETS][...])
    if offsets[0] != 0 or offsets[-1] != n or (np.diff(offsets) < 0).any():
        raise SearchIndexError(f"{where / LIST_OFFSETS}: not a non-decreasing sequence from 0 to {n}")
    ann = AnnIndex.assemble(centroids, scalar_min, scalar_range, by_residual, settings)
    seen = np.zeros(n, bool)
    for start in range(0, n, BLOCK_ROWS):
        stop = min(n, start + BLOCK_ROWS)
        rows = np.asarray(arrays[ROWS][start:stop])
        if ((rows < 0) | (rows >= n)).any() or seen[rows].any() or len(np.unique(rows)) != len(rows):
            raise SearchIndexError(f"{where / ROWS}: not a permutation of the index's {n} rows (out of range or repeated)")
        seen[rows] = True
        codes = np.asarray(arrays[CODES][start:stop])
        first = int(np.searchsorted(offsets, start, side="right")) - 1  # the list holding position ``start``
        for list_no in range(first, n_lists):
            lo, hi = max(start, offsets[list_no]), min(stop, offsets[list_no + 1])
            if offsets[list_no] >= stop:
                break
            if hi > lo:
                ann.add_list_entries(list_no, codes[lo - start : hi - start], rows[lo - start : hi - start])
    return ann
