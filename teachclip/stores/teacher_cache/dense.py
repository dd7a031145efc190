"""Dense teacher groups: the writer (one block = whole shards of every score array) and the reader.

Schema and layout: :mod:`.schema`. A worker of ``extract-teachers`` writes a block with
:func:`write_block`; :class:`DenseGroup` serves random training batches from RAM (matrices up to
``IN_MEMORY_LIMIT_BYTES``) or by decoding only the chunks a batch touches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from teachclip.core.columns import IdColumn
from teachclip.stores.teacher_cache.checks import (
    check_group_files,
    check_ids,
    read_ids,
)
from teachclip.stores.teacher_cache.schema import (
    IN_MEMORY_LIMIT_BYTES,
    RELEVANCE,
    SIMILARITY,
    TEXT_IDS,
    TEXT_VIDEO,
    VIDEO_IDS,
    CacheLayout,
    GroupAttributes,
    TeacherCacheError,
    TeacherIdentity,
    check_group_name,
    group_attributes,
    layout_from_attributes,
    open_root,
    parse_group_attributes,
    read_group_attributes,
    round_up,
)
from teachclip.stores.zarr_io import create_array, write_strings


def create_group(
    store: str | Path,
    name: str,
    identity: TeacherIdentity,
    layout: CacheLayout,
    text_ids: Sequence[str],
    video_ids: Sequence[str],
    text_video: np.ndarray,
    versions: dict[str, str] | None = None,
) -> zarr.Group:
    """Create an empty (``complete: false``) group with every array, ready for block writes."""
    check_group_name(name)
    if len(text_ids) != layout.n_texts or len(video_ids) != layout.n_videos or len(text_video) != layout.n_texts:
        raise TeacherCacheError(f"{store}/{name}: ids and layout disagree on the number of texts/videos")
    root = open_root(store)
    group = root.create_group(name, overwrite=True, attributes=group_attributes(identity, layout, complete=False,
                                                                                  versions=versions or {}))
    create_array(
        group,
        SIMILARITY,
        shape=(layout.n_texts, layout.n_videos),
        chunks=(layout.chunk_texts, layout.chunk_videos),
        shards=(layout.block_texts, round_up(layout.n_videos, layout.chunk_videos)),
        dtype="float16",
        fill_value=float("nan"),
    )
    if identity.has_frame_relevance:
        create_array(
            group,
            RELEVANCE,
            shape=(layout.n_texts, layout.frames_per_video),
            chunks=(layout.chunk_texts, layout.frames_per_video),
            shards=(layout.block_texts, layout.frames_per_video),
            dtype="float32",
            fill_value=float("nan"),
        )
    write_strings(group, TEXT_IDS, list(text_ids))
    write_strings(group, VIDEO_IDS, list(video_ids))
    create_array(group, TEXT_VIDEO, shape=(layout.n_texts,), chunks=(layout.n_texts,), dtype="int32",
                 fill_value=-1)[...] = np.asarray(text_video, dtype=np.int32)
    return group


def write_block(group_path: str | Path, block: int, similarity: np.ndarray, relevance: np.ndarray | None) -> None:
    """Write one block (whole shards of every score array); the only write a worker does."""
    group = zarr.open_group(Path(group_path), mode="r+")
    layout = layout_from_attributes(dict(group.attrs))
    start, stop = layout.block_rows(block)
    expected = (stop - start, layout.n_videos)
    if similarity.shape != expected:
        raise TeacherCacheError(f"{group_path}: block {block}: similarity shape {similarity.shape}, expected {expected}")
    # write_empty_chunks: a chunk that happens to equal the fill value must still exist on disk
    config = {"write_empty_chunks": True}
    similarity = similarity.astype(np.float16)
    if not np.isfinite(similarity).all():  # NaN is the mark of unwritten data: never store one
        raise TeacherCacheError(f"{group_path}: block {block}: non-finite similarity (NaN, or beyond float16's +-65504)")
    group[SIMILARITY].with_config(config)[start:stop] = similarity
    if RELEVANCE in group:
        if relevance is None or relevance.shape != (stop - start, layout.frames_per_video):
            raise TeacherCacheError(f"{group_path}: block {block}: frame relevance missing or of the wrong shape")
        relevance = relevance.astype(np.float32)
        if not np.isfinite(relevance).all():
            raise TeacherCacheError(f"{group_path}: block {block}: non-finite frame relevance")
        group[RELEVANCE].with_config(config)[start:stop] = relevance


# ---- reader ----------------------------------------------------------------------------------


class GroupReader:
    """What dense and sparse group readers share: identity, ids and their lookups, frame relevance.

    Opening a group checks it before anything is read by a size it declares: the attributes
    (:class:`.schema.GroupAttributes`: types, ranges, layout), every array's metadata against the
    layout, and, for a complete group, every chunk and shard present on disk (zarr would read an
    absent one as its fill value without a word). The ids are then read with their count checked,
    and must be sorted and unique with every ``text_video`` column in range. What a read returns is
    checked too: a non-finite score or relevance raises :class:`TeacherCacheError` naming the store,
    the array and the rows. Subclasses read their score arrays and implement :meth:`similarity_block`.

    What a reader holds per caption and video is numpy, no Python object per row: ``text_ids`` and
    ``video_ids`` are :class:`~teachclip.core.columns.IdColumn` s (sorted, so :meth:`text_index` and
    :meth:`video_index` are binary searches), ``text_video`` is int32 (4 bytes a caption).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        attrs = read_group_attributes(self.path)
        if attrs is None:
            raise TeacherCacheError(f"{self.path}: not a teacher cache group (no teachclip group metadata)")
        self.attrs: dict[str, Any] = attrs
        self.checked: GroupAttributes = parse_group_attributes(attrs, self.path / "zarr.json")
        self.name: str = self.path.name
        self.kind: str = attrs["kind"]
        self.fingerprint: str = attrs["fingerprint"]
        self.frames_fingerprint: str = attrs["frames_fingerprint"]
        self.manifest_fingerprint: str = attrs["manifest_fingerprint"]
        self.complete: bool = bool(attrs["complete"])
        self.has_frame_relevance: bool = bool(attrs["has_frame_relevance"])
        self.layout = layout_from_attributes(attrs)
        self.content_sha256: str | None = attrs.get("content_sha256")
        # a partial group lacks score chunks by definition (its consumers refuse it); its ids are all there
        present = None if self.complete else {TEXT_IDS, VIDEO_IDS, TEXT_VIDEO}
        _, problems = check_group_files(self.path, self.checked, present=present)
        if problems:
            raise TeacherCacheError(f"{self.path}: {problems[0]}"
                                    + (f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else "")
                                    + "; run `teach cache verify`")
        self.text_ids: IdColumn = self._checked(read_ids, self.path / TEXT_IDS, self.layout.n_texts)
        self.video_ids: IdColumn = self._checked(read_ids, self.path / VIDEO_IDS, self.layout.n_videos)
        try:
            self.group = zarr.open_group(self.path, mode="r")
            self.text_video: np.ndarray = np.asarray(self._read_checked(self.group[TEXT_VIDEO], ...), dtype=np.int32)
            self._relevance: Any = self.group[RELEVANCE] if self.has_frame_relevance else None
        except (KeyError, ValueError, OSError) as exc:
            raise TeacherCacheError(f"{self.path}: cannot read the group's arrays ({exc})") from exc
        problems = check_ids(self.text_ids, self.video_ids, self.text_video, self.layout.n_videos)
        if problems:
            raise TeacherCacheError(f"{self.path}: {problems[0]}")

    def _checked(self, read, *args):
        try:
            return read(*args)
        except TeacherCacheError as exc:
            raise TeacherCacheError(f"{self.path}: {exc}; run `teach cache verify`") from exc

    @property
    def frames_per_video(self) -> int:
        return self.layout.frames_per_video

    def require_frames(self, frames_fingerprint: str) -> None:
        """Refuse a cache computed from other frames than the ones a consumer was given."""
        if frames_fingerprint != self.frames_fingerprint:
            raise TeacherCacheError(
                f"{self.path}: computed from frames {self.frames_fingerprint}, but the frames given have "
                f"fingerprint {frames_fingerprint}"
            )

    def text_index(self, caption_ids: Sequence[str] | IdColumn) -> np.ndarray:
        """int64: the row of each caption id (TeacherCacheError naming ids the cache lacks)."""
        return self._lookup(self.text_ids, caption_ids, "caption")

    def video_index(self, video_ids: Sequence[str] | IdColumn) -> np.ndarray:
        """int64: the column of each video id (TeacherCacheError naming ids the cache lacks)."""
        return self._lookup(self.video_ids, video_ids, "video")

    def similarity_block(self, text_rows: Sequence[int] | np.ndarray, video_cols: Sequence[int] | np.ndarray) -> np.ndarray:
        """float32 [len(text_rows), len(video_cols)] teacher similarities (any order, repeats allowed)."""
        raise NotImplementedError

    def frame_relevance(self, text_rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """float32 [len(text_rows), T] raw relevance of each caption against its own video's frames."""
        if self._relevance is None:
            raise TeacherCacheError(f"{self.path}: teacher {self.kind!r} has no frame relevance")
        rows = self._rows(text_rows)
        if isinstance(self._relevance, np.ndarray):
            return self._relevance[rows].astype(np.float32)
        unique_rows, row_pos = np.unique(rows, return_inverse=True)
        values = self._read_checked(self._relevance.oindex, (unique_rows, slice(None)), RELEVANCE)
        return self._finite(values, RELEVANCE, unique_rows)[row_pos].astype(np.float32)

    def _rows(self, text_rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Checked rows of a score read (and the group must be complete: a partial one has holes)."""
        if not self.complete:
            raise TeacherCacheError(f"{self.path}: incomplete teacher cache group; its scores are not all written")
        rows = np.asarray(text_rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.layout.n_texts):
            raise TeacherCacheError(f"{self.path}: row out of range 0..{self.layout.n_texts - 1}")
        return rows

    def _lookup(self, column: IdColumn, ids: Sequence[str] | IdColumn, what: str) -> np.ndarray:
        ids = ids if isinstance(ids, IdColumn) else list(ids)
        found = column.positions(ids)  # an id no column can hold (a NUL, a lone surrogate) is in no cache
        missing = np.nonzero(found < 0)[0]
        if len(missing):
            raise TeacherCacheError(
                f"{self.path}: {len(missing)} {what} id(s) not in the cache, e.g. {[ids[int(i)] for i in missing[:3]]} "
                f"(it holds the train split only)"
            )
        return found

    def _read_checked(self, source: Any, selection: Any, array: str | None = None) -> np.ndarray:
        """``source[selection]``; TeacherCacheError (naming ``array`` when given) if a chunk does not decode."""
        try:
            return np.asarray(source[selection])
        except Exception as exc:  # crc32c mismatch (ValueError), a chunk gone or changed since the group was opened
            where = f"{array}: " if array else ""
            raise TeacherCacheError(f"{self.path}: {where}corrupt chunk ({type(exc).__name__}: {exc}); "
                                    f"run `teach cache verify`") from exc

    def _finite(self, values: np.ndarray, array: str, rows: np.ndarray | None = None) -> np.ndarray:
        """``values`` if every one is finite; else TeacherCacheError naming the store, the array and a row
        (a NaN is what zarr returns for a chunk that is not there)."""
        finite = np.isfinite(values)
        if not finite.all():
            bad = int(np.argmax(~finite.reshape(len(values), -1).all(axis=1)))
            row = int(rows[bad]) if rows is not None else bad
            raise TeacherCacheError(f"{self.path}: {array}: non-finite value in row {row} (missing or damaged data "
                                    f"reads as NaN); run `teach cache verify`")
        return values


class DenseGroup(GroupReader):
    """A dense group: ``similarity_block`` serves random training batches from RAM when the matrix
    was loaded (``in_memory``; None: when it is at most ``IN_MEMORY_LIMIT_BYTES``), else by decoding
    only the chunks the batch touches. What is loaded, and every block read from disk, is checked
    to be finite."""

    def __init__(self, path: str | Path, in_memory: bool | None = None):
        super().__init__(path)
        if self.checked.sparse is not None:
            raise TeacherCacheError(f"{self.path}: a sparse teacher cache group; open it with open_group")
        try:
            self._similarity: Any = self.group[SIMILARITY]
        except KeyError as exc:
            raise TeacherCacheError(f"{self.path}: cannot read the group's arrays ({exc})") from exc
        if in_memory is None:
            in_memory = self.layout.n_texts * self.layout.n_videos * 2 <= IN_MEMORY_LIMIT_BYTES
        if in_memory and self.complete:
            self._similarity = self._finite(self._read_checked(self._similarity, ...), SIMILARITY)
            if self._relevance is not None:
                self._relevance = self._finite(self._read_checked(self._relevance, ...), RELEVANCE)

    @property
    def in_memory(self) -> bool:
        return isinstance(self._similarity, np.ndarray)

    def similarity_block(self, text_rows: Sequence[int] | np.ndarray, video_cols: Sequence[int] | np.ndarray) -> np.ndarray:
        rows = self._rows(text_rows)
        cols = np.asarray(video_cols, dtype=np.int64)
        if cols.size and (cols.min() < 0 or cols.max() >= self.layout.n_videos):
            raise TeacherCacheError(f"{self.path}: column out of range 0..{self.layout.n_videos - 1}")
        if self.in_memory:
            return self._similarity[np.ix_(rows, cols)].astype(np.float32)
        unique_rows, row_pos = np.unique(rows, return_inverse=True)
        unique_cols, col_pos = np.unique(cols, return_inverse=True)
        block = self._finite(self._read_checked(self._similarity.oindex, (unique_rows, unique_cols)), SIMILARITY,
                             unique_rows)
        return block[np.ix_(row_pos, col_pos)].astype(np.float32)

    def __repr__(self) -> str:
        return (f"DenseGroup({self.name!r}, kind={self.kind!r}, {self.layout.n_texts}x{self.layout.n_videos}, "
                f"fingerprint={self.fingerprint[:12]}, complete={self.complete})")
