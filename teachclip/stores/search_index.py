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
from teachclip.stores.zarr_io import create_array, finalize, partial_path, read_strings, write_strings

STORE_KIND = "search-index"
SCHEMA_VERSION = 1
INDEX_DTYPES = ("float16", "float32")
ROWS_PER_CHUNK = 65536
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
    finalize(partial, out)
    return out


def read_index(path: str | Path) -> SearchIndex:
    """The whole index, checked to be one (store kind, schema version)."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise SearchIndexError(f"{path}: search index not found")
    root = zarr.open_group(path, mode="r")
    attrs = dict(root.attrs)
    if attrs.get("teachclip_store") != STORE_KIND:
        raise SearchIndexError(f"{path}: not a search index (made by `teach search index`)")
    if attrs.get("schema_version") != SCHEMA_VERSION:
        raise SearchIndexError(f"{path}: schema_version {attrs.get('schema_version')} (this code reads {SCHEMA_VERSION})")
    return SearchIndex(path, attrs, read_strings(root[VIDEO_IDS]), np.asarray(root[EMBEDDINGS][...]))
