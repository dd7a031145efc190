"""The search index (``index.zarr``): one vector per video of a collection, for text queries.

Layout (Zarr v3; written by ``teach search index``)::

    index.zarr/        attrs: teachclip_store "search-index", schema_version, model_fingerprint,
                       model_path, frames_fingerprint, dim, dtype, n_videos
      embeddings       float16 | float32 [videos, d]   one L2-normalised vector per video
      video_ids        str [videos]                    frames-store order, failed videos left out

The index records the fingerprint of the model that embedded it (:func:`teachclip.models.io.model_fingerprint`):
vectors of two models live in different spaces, so a query must come from the same model.
:func:`read_index` returns the vectors as a NumPy array (the search tool moves them to a device).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from teachclip.core.errors import InputError
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


class SearchIndexError(InputError):
    """An index that cannot be used (missing, wrong store, or built by another model)."""


@dataclass
class SearchIndex:
    """An index read into memory."""

    path: Path
    attrs: dict
    video_ids: list[str]
    embeddings: np.ndarray  # [videos, d], the stored dtype

    @property
    def model_fingerprint(self) -> str:
        return self.attrs["model_fingerprint"]


def write_index(out: str | Path, embeddings: np.ndarray, video_ids: list[str], dtype: str, *,
                model_fingerprint: str, model_path: str, frames_fingerprint: str) -> Path:
    """Write ``out`` (via ``out.partial``): ``embeddings`` [videos, d] stored as ``dtype``."""
    if dtype not in INDEX_DTYPES:
        raise SearchIndexError(f"index dtype {dtype!r}: expected one of {', '.join(INDEX_DTYPES)}")
    out = Path(out)
    partial = partial_path(out)
    remove_store(partial, STORE_KIND, unfinished_entries=frozenset({"zarr.json", EMBEDDINGS, VIDEO_IDS}))
    root = zarr.open_group(partial, mode="w")
    create_array(root, EMBEDDINGS, shape=embeddings.shape, dtype=dtype, compress=False,
                 chunks=(max(1, min(ROWS_PER_CHUNK, len(embeddings))), embeddings.shape[1]))[...] = embeddings.astype(dtype)
    write_strings(root, VIDEO_IDS, video_ids)
    root.attrs.put({
        "teachclip_store": STORE_KIND,
        "schema_version": SCHEMA_VERSION,
        "model_fingerprint": model_fingerprint,
        "model_path": model_path,
        "frames_fingerprint": frames_fingerprint,
        "dim": int(embeddings.shape[1]),
        "dtype": dtype,
        "n_videos": len(video_ids),
    })
    finalize(partial, out, STORE_KIND)
    return out


def read_index(path: str | Path) -> SearchIndex:
    """The whole index, checked to be one (store kind, schema version)."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise SearchIndexError(f"{path}: search index not found")
    attrs = root_attributes(path)
    if attrs is None or attrs.get("teachclip_store") != STORE_KIND:
        raise SearchIndexError(f"{path}: not a search index (made by `teach search index`)")
    if attrs.get("schema_version") != SCHEMA_VERSION:
        raise SearchIndexError(f"{path}: schema_version {attrs.get('schema_version')!r} (this code reads {SCHEMA_VERSION})")
    n, dim = attrs.get("n_videos"), attrs.get("dim")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, dim)) or not (
            0 <= n <= MAX_VIDEOS and 1 <= dim <= MAX_DIM) or not isinstance(attrs.get("model_fingerprint"), str):
        raise SearchIndexError(f"{path}: malformed attributes (n_videos {n!r}, dim {dim!r}, model_fingerprint)")
    try:
        root = zarr.open_group(path, mode="r")
        embeddings_array, ids_array = root[EMBEDDINGS], root[VIDEO_IDS]
        if tuple(embeddings_array.shape) != (n, dim) or tuple(ids_array.shape) != (n,) or str(
                embeddings_array.dtype) not in INDEX_DTYPES:
            raise SearchIndexError(f"{path}: {EMBEDDINGS} {list(embeddings_array.shape)} {embeddings_array.dtype} and "
                                   f"{VIDEO_IDS} {list(ids_array.shape)} do not fit n_videos={n}, dim={dim}")
        if n and not chunk_presence(path / EMBEDDINGS).all():
            raise SearchIndexError(f"{path}: chunks of {EMBEDDINGS} are missing from disk (every score would be 0)")
        embeddings = np.asarray(embeddings_array[...])
        video_ids = read_strings(ids_array)
    except (KeyError, ValueError, TypeError, OSError) as exc:  # zarr: bad metadata, checksum, truncation
        if isinstance(exc, SearchIndexError):
            raise
        raise SearchIndexError(f"{path}: unreadable search index ({type(exc).__name__}: {exc})") from exc
    if not np.isfinite(embeddings).all():
        raise SearchIndexError(f"{path}: non-finite values in {EMBEDDINGS}: the index was altered or is corrupt")
    return SearchIndex(path, attrs, video_ids, embeddings)
