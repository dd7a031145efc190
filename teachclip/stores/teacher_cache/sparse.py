"""Sparse teacher caches for collections too large for a dense [texts, videos] matrix (WebVid scale).

A sparse group keeps, per training caption, the teacher's ``top_k`` best videos with their scores and
the score of the matched pair (the caption's own video, whether or not it is in the top k)::

    teachers.zarr/<name>/            attrs: the dense group's identity + {"sparse": {...}}, own fingerprint
      neighbour_videos  int32 [texts, K]    columns (into video_ids) of the top-k videos, best first
      neighbour_scores  float16 [texts, K]  their raw teacher scores
      own_score         float16 [texts]     score of each caption against its own video
      rest_mean         float16 [texts]     mean score of the row's videos outside the top k
      frame_relevance   float32 [texts, T]  copied from the dense group (when the teacher has it)
      text_ids, video_ids, text_video       as in the dense group

:class:`SparseGroup` has the dense reader's API (``open_teacher_caches`` returns one for a sparse
group). ``similarity_block(rows, cols)`` returns the stored score where it is known and,
elsewhere, **the mean of the row's scores outside its top k** (``rest_mean``): the expected score of an
unknown video. (The k-th best score, an upper bound of every unknown entry, was tried first: whenever
the caption's own video is outside its top k, it ranks every unknown negative above the positive and
teaches the student to retrieve worse than no teacher at all; see reports/distillation.md.)
``known_mask(rows, cols)`` says which entries are exact. Training can build batches from the
neighbourhoods (:func:`teachclip.training.batches.neighbourhood_batches`), so that more in-batch soft
labels are known.

Disk per caption: ``K * (4 + 2) + 4`` bytes instead of ``2 * videos`` (``bench/sparse.py``); memory: the
same when the reader loads the arrays, else only the ids and ``text_video`` (:class:`SparseGroup`).

**Candidate groups** are the same arrays written directly by candidate extraction
(``extract.candidates``, :func:`create_candidate_group` / :func:`write_candidate_block`): no dense
matrix exists at any point. A row's K columns are the ``k`` videos a cheap retriever proposed and
``random`` videos drawn uniformly from the others (never the caption's own video, whose score is
``own_score``), sorted by teacher score, best first; ``rest_mean`` is then the mean teacher score of
the row's random videos, an unbiased estimate of the mean of its unscored videos (fill rule
``random_mean``). ``sparse.candidates`` records the retriever's kind and fingerprint, ``k``,
``random``, ``seed`` and the number of teacher evaluations; the group's fingerprint
(:func:`candidate_fingerprint`) covers all of them but the count, which follows from them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from teachclip.core.fingerprint import canonical_json, fingerprint
from teachclip.stores.teacher_cache.checks import neighbour_problems
from teachclip.stores.teacher_cache.dense import DenseGroup, GroupReader
from teachclip.stores.teacher_cache.publish import publish_groups
from teachclip.stores.teacher_cache.schema import (
    NEIGHBOUR_SCORES,
    NEIGHBOUR_VIDEOS,
    OWN_SCORE,
    RELEVANCE,
    REST_MEAN,
    TEXT_IDS,
    TEXT_VIDEO,
    VIDEO_IDS,
    CacheLayout,
    TeacherCacheError,
    TeacherIdentity,
    check_group_name,
    check_store_or_absent,
    group_attributes,
    layout_from_attributes,
    open_root,
    parse_group_attributes,
)
from teachclip.stores.zarr_io import RowReader, create_array, partial_path, write_strings

__all__ = ["CANDIDATE_FILL", "FILL_RULE", "NEIGHBOUR_SCORES", "NEIGHBOUR_VIDEOS", "OWN_SCORE", "REST_MEAN", "SparseGroup", "candidate_fingerprint",
           "create_candidate_group", "is_sparse", "sparse_fingerprint", "sparsify", "top_k_of_rows",
           "write_candidate_block"]
FILL_RULE = "rest_mean"  # unknown entries read as the mean of the row's scores outside the top k
CANDIDATE_FILL = "random_mean"  # candidate groups: the mean of the row's random videos' scores


def candidate_fingerprint(dense_fingerprint: str, retriever_fingerprint: str, k: int, random: int, seed: int) -> str:
    """A candidate group's identity: the teacher's (``dense_fingerprint``), the retriever's, and which
    columns were scored (``k``, ``random``, ``seed``)."""
    return fingerprint("candidate-teacher-cache", {"dense": dense_fingerprint, "k": k, "random": random,
                                                   "retriever": retriever_fingerprint, "seed": seed})


def create_candidate_group(store: str | Path, name: str, identity: TeacherIdentity, layout: CacheLayout,
                           columns: int, candidates: dict[str, Any], text_ids: Sequence[str],
                           video_ids: Sequence[str], text_video: np.ndarray,
                           versions: dict[str, str] | None = None) -> Path:
    """Create an empty (``complete: false``) candidate group of ``columns`` stored videos per caption;
    one block of ``layout.block_texts`` rows is one chunk file of every array (parallel writers never
    share a file). ``candidates``: the ``sparse.candidates`` attributes (:class:`.schema.CandidateAttributes`)."""
    check_group_name(name)
    n_texts = layout.n_texts
    if len(text_ids) != n_texts or len(video_ids) != layout.n_videos or len(text_video) != n_texts:
        raise TeacherCacheError(f"{store}/{name}: ids and layout disagree on the number of texts/videos")
    retriever = candidates["retriever"]["fingerprint"]
    attrs = group_attributes(identity, layout, complete=False, versions=versions or {}) | {
        "fingerprint": candidate_fingerprint(identity.fingerprint, retriever, candidates["k"], candidates["random"],
                                             candidates["seed"]),
        "sparse": {"top_k": columns, "dense_fingerprint": identity.fingerprint, "fill": CANDIDATE_FILL,
                   "candidates": candidates},
    }
    parse_group_attributes(attrs, Path(store) / name)  # never write a group the readers would refuse
    group = open_root(store).create_group(name, overwrite=True, attributes=_canonical(attrs))
    rows = layout.block_texts
    create_array(group, NEIGHBOUR_VIDEOS, shape=(n_texts, columns), chunks=(rows, columns), dtype="int32", fill_value=-1)
    create_array(group, NEIGHBOUR_SCORES, shape=(n_texts, columns), chunks=(rows, columns), dtype="float16",
                 fill_value=float("nan"))
    create_array(group, OWN_SCORE, shape=(n_texts,), chunks=(rows,), dtype="float16", fill_value=float("nan"))
    create_array(group, REST_MEAN, shape=(n_texts,), chunks=(rows,), dtype="float16", fill_value=float("nan"))
    if identity.has_frame_relevance:
        create_array(group, RELEVANCE, shape=(n_texts, layout.frames_per_video), chunks=(rows, layout.frames_per_video),
                     dtype="float32", fill_value=float("nan"))
    write_strings(group, TEXT_IDS, list(text_ids))
    write_strings(group, VIDEO_IDS, list(video_ids))
    create_array(group, TEXT_VIDEO, shape=(n_texts,), chunks=(n_texts,), dtype="int32",
                 fill_value=-1)[...] = np.asarray(text_video, dtype=np.int32)
    return Path(store) / name


def write_candidate_block(group_path: str | Path, block: int, columns: np.ndarray, scores: np.ndarray,
                          own: np.ndarray, rest: np.ndarray, relevance: np.ndarray | None) -> None:
    """Write one block of a candidate group: ``columns`` int [b, K] (distinct per row, never the
    caption's own video) with their teacher ``scores`` [b, K], ``own`` [b] and ``rest`` [b] scores and
    the frame ``relevance`` [b, T]. Rows are stored sorted by score, best first (ties: lower column)."""
    group = zarr.open_group(Path(group_path), mode="r+")
    attrs = dict(group.attrs)
    layout = layout_from_attributes(attrs)
    top_k = attrs["sparse"]["top_k"]
    start, stop = layout.block_rows(block)
    if columns.shape != (stop - start, top_k) or scores.shape != columns.shape or own.shape != (stop - start,) \
            or rest.shape != own.shape:
        raise TeacherCacheError(f"{group_path}: block {block}: shapes {columns.shape}, {scores.shape}, {own.shape}, "
                                f"{rest.shape}; expected ({stop - start}, {top_k}) and ({stop - start},)")
    problems = neighbour_problems(columns, layout.n_videos, start)
    text_video = np.asarray(group[TEXT_VIDEO][start:stop])
    if not problems and (columns == text_video[:, None]).any():
        problems = [f"row {start + int(np.argmax((columns == text_video[:, None]).any(axis=1)))}: the caption's own "
                    f"video among its columns (its score is own_score)"]
    if problems:
        raise TeacherCacheError(f"{group_path}: block {block}: {problems[0]}")
    order = np.lexsort((columns, -scores.astype(np.float32)), axis=1)  # score descending, then column
    values = {NEIGHBOUR_VIDEOS: np.take_along_axis(columns, order, axis=1).astype(np.int32),
              NEIGHBOUR_SCORES: np.take_along_axis(scores, order, axis=1).astype(np.float16),
              OWN_SCORE: own.astype(np.float16), REST_MEAN: rest.astype(np.float16)}
    if RELEVANCE in group:
        if relevance is None or relevance.shape != (stop - start, layout.frames_per_video):
            raise TeacherCacheError(f"{group_path}: block {block}: frame relevance missing or of the wrong shape")
        values[RELEVANCE] = relevance.astype(np.float32)
    for name, array in values.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():  # NaN marks unwritten data: never store one
            raise TeacherCacheError(f"{group_path}: block {block}: non-finite {name} (NaN, or beyond float16's range)")
    config = {"write_empty_chunks": True}
    for name, array in values.items():
        group[name].with_config(config)[start:stop] = array


def sparse_fingerprint(dense_fingerprint: str, top_k: int) -> str:
    """A sparse group holds other bytes than its dense source: it gets its own identity."""
    return fingerprint("sparse-teacher-cache", {"dense": dense_fingerprint, "top_k": top_k})


def top_k_of_rows(scores: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(columns int32 [n, k], scores float32 [n, k]) of each row's k best entries, best first; ties by
    the lower column (a stable, reproducible order). NaN counts as -inf."""
    scores = np.where(np.isnan(scores), -np.inf, scores.astype(np.float32))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    return order.astype(np.int32), np.take_along_axis(scores, order, axis=1)


def sparsify(group_path: str | Path, out: str | Path, top_k: int, name: str | None = None,
             block_texts: int = 1024) -> Path:
    """Convert one complete dense group into a sparse group ``out/<name>`` (default: the same name),
    reading the dense matrix ``block_texts`` rows at a time. Written in ``<out>.partial`` and published
    as :mod:`teachclip.stores.teacher_cache.publish` does."""
    source = DenseGroup(group_path, in_memory=False)
    if not source.complete:
        raise TeacherCacheError(f"{source.path}: incomplete teacher cache; finish extract-teachers first")
    n_texts, n_videos = source.layout.n_texts, source.layout.n_videos
    top_k = min(top_k, n_videos)
    if top_k < 1:
        raise TeacherCacheError(f"top_k must be at least 1, got {top_k}")
    name = check_group_name(name or source.name)
    out = Path(out)
    check_store_or_absent(out)
    partial = partial_path(out)
    open_root(partial)
    attrs = dict(source.attrs) | {
        "complete": False,
        "fingerprint": sparse_fingerprint(source.fingerprint, top_k),
        "sparse": {"top_k": top_k, "dense_fingerprint": source.fingerprint, "fill": FILL_RULE},
    }
    group = zarr.open_group(partial, mode="a").create_group(name, overwrite=True,
                                                              attributes=_canonical(attrs))
    chunk = max(1, min(block_texts, n_texts))
    neighbours = create_array(group, NEIGHBOUR_VIDEOS, shape=(n_texts, top_k), chunks=(chunk, top_k), dtype="int32",
                              fill_value=-1)
    scores = create_array(group, NEIGHBOUR_SCORES, shape=(n_texts, top_k), chunks=(chunk, top_k), dtype="float16",
                          fill_value=float("nan"))
    own = create_array(group, OWN_SCORE, shape=(n_texts,), chunks=(chunk,), dtype="float16", fill_value=float("nan"))
    rest = create_array(group, REST_MEAN, shape=(n_texts,), chunks=(chunk,), dtype="float16", fill_value=float("nan"))
    relevance = None
    if source.has_frame_relevance:
        relevance = create_array(group, RELEVANCE, shape=(n_texts, source.frames_per_video),
                                 chunks=(chunk, source.frames_per_video), dtype="float32", fill_value=float("nan"))
    all_videos = np.arange(n_videos)
    for start in range(0, n_texts, chunk):
        rows = np.arange(start, min(start + chunk, n_texts))
        block = source.similarity_block(rows, all_videos)
        columns, values = top_k_of_rows(block, top_k)
        neighbours[rows[0] : rows[-1] + 1] = columns
        scores[rows[0] : rows[-1] + 1] = values.astype(np.float16)
        own[rows[0] : rows[-1] + 1] = block[np.arange(len(rows)), source.text_video[rows]].astype(np.float16)
        finite = np.where(np.isnan(block), 0.0, block.astype(np.float64))
        rest_count = max(n_videos - top_k, 1)
        rest_sum = finite.sum(axis=1) - np.where(np.isfinite(values), values, 0.0).sum(axis=1)
        # every video in the top k: no "rest"; the k-th score is then the natural floor
        rest[rows[0] : rows[-1] + 1] = np.where(n_videos > top_k, rest_sum / rest_count, values[:, -1]).astype(np.float16)
        if relevance is not None:
            relevance[rows[0] : rows[-1] + 1] = source.frame_relevance(rows)
    write_strings(group, TEXT_IDS, source.text_ids)
    write_strings(group, VIDEO_IDS, source.video_ids)
    create_array(group, TEXT_VIDEO, shape=(n_texts,), chunks=(n_texts,), dtype="int32",
                 fill_value=-1)[...] = source.text_video.astype(np.int32)
    publish_groups(partial, out, [name])
    return out / name


def _canonical(attrs: dict[str, Any]) -> dict[str, Any]:
    return json.loads(canonical_json(attrs))


def is_sparse(attrs: dict[str, Any]) -> bool:
    return "sparse" in attrs


def fill_rule(sparse: Any) -> str:
    """The fill rule a sparse group of this kind must declare (``sparse``: its SparseAttributes)."""
    return FILL_RULE if sparse.candidates is None else CANDIDATE_FILL


SPARSE_ARRAYS = (NEIGHBOUR_VIDEOS, NEIGHBOUR_SCORES, OWN_SCORE, REST_MEAN)
OPEN_BLOCK_BYTES = 1 << 18  # decoded bytes per read of the open-time check (whole chunks, at least one)
# in_memory=None loads a sparse group whose arrays take at most this many bytes (the dense limit): a batch's
# reads from zarr cost more than the in-memory lookup (128 x 128, K = 40: ~12 ms against ~4 ms at 4,000
# captions; ~220 ms against ~4 ms at 200,000, where a batch's rows touch ~100 chunks of each array)
# a sparse group is the format of collections too large for a dense one: above ~250,000 captions
# (K = 32) its rows are read per batch, so that training memory does not follow the collection
SPARSE_IN_MEMORY_LIMIT_BYTES = 64 << 20


class SparseGroup(GroupReader):
    """The dense reader's API over a sparse group (module docstring), plus :meth:`known_mask` and
    :meth:`neighbours`.

    ``in_memory``: True loads the arrays, False reads them row by row, None (the default) loads a group
    whose arrays take at most ``SPARSE_IN_MEMORY_LIMIT_BYTES`` (:attr:`nbytes`) and reads a larger one.

    Read row by row, nothing but the ids (:class:`~teachclip.core.columns.IdColumn`) and
    ``text_video`` (int32, 4 bytes a caption) stays in memory. Each call reads the rows it needs
    from zarr (each distinct row once; the last call's rows are kept for the next call on the same
    rows, as ``known_mask`` after ``similarity_block``) and checks them (scores finite, neighbour
    columns in range and distinct), so memory does not grow with the collection. Opening a complete
    group still checks every value once, whole chunks of about ``OPEN_BLOCK_BYTES`` decoded at a time.

    Loaded, the arrays are kept as stored (``neighbour_videos`` int32, scores float16: RAM = their
    uncompressed size, :attr:`nbytes`) and checked whole. The values returned are the same bits either
    way."""

    def __init__(self, path: str | Path, in_memory: bool | None = None):
        super().__init__(path)
        if self.checked.sparse is None:
            raise TeacherCacheError(f"{self.path}: not a sparse teacher cache group")
        expected_fill = fill_rule(self.checked.sparse)
        if self.checked.sparse.fill != expected_fill:
            raise TeacherCacheError(f"{self.path}: sparse fill rule {self.checked.sparse.fill!r}: this code reads "
                                    f"{expected_fill!r} for this kind of sparse group")
        self.candidates = self.checked.sparse.candidates  # None for a `teach cache sparsify` group
        self.top_k: int = self.checked.sparse.top_k
        self._last: tuple[bytes | None, dict[str, np.ndarray]] = (None, {})
        self._row_readers: dict[str, RowReader | None] = {}
        try:
            self._arrays: dict[str, Any] = {name: self.group[name] for name in SPARSE_ARRAYS}
        except KeyError as exc:
            raise TeacherCacheError(f"{self.path}: cannot read the sparse group's arrays ({exc})") from exc
        if not self.complete:  # nothing to check: every score read refuses an incomplete group
            return
        if in_memory is None:
            in_memory = self.nbytes <= SPARSE_IN_MEMORY_LIMIT_BYTES
        try:
            if in_memory:
                self._load()
            else:
                self._check_blockwise()
        except OSError as exc:
            raise TeacherCacheError(f"{self.path}: cannot read the sparse group's arrays ({exc})") from exc

    @property
    def in_memory(self) -> bool:
        return isinstance(self._arrays[NEIGHBOUR_VIDEOS], np.ndarray)

    @property
    def nbytes(self) -> int:
        """The score arrays' uncompressed size: what ``in_memory`` holds."""
        n, k = self.layout.n_texts, self.top_k
        relevance = n * self.frames_per_video * 4 if self.has_frame_relevance else 0
        return n * (k * (4 + 2) + 2 + 2) + relevance

    def _load(self) -> None:
        """Every array read whole (kept as stored: RAM = the arrays' uncompressed size) and checked."""
        for name in SPARSE_ARRAYS:
            values = self._read_checked(self._arrays[name], ..., name)
            self._arrays[name] = values if name == NEIGHBOUR_VIDEOS else self._finite(values, name)
        if self._relevance is not None:
            self._relevance = self._finite(self._read_checked(self._relevance, ..., RELEVANCE), RELEVANCE)
        self._check_neighbours(neighbour_problems(self._arrays[NEIGHBOUR_VIDEOS], self.layout.n_videos))

    def _check_blockwise(self) -> None:
        """Every value read once, whole chunks of at most about ``OPEN_BLOCK_BYTES`` decoded at a time,
        and checked as :meth:`_load` checks them; nothing is kept."""
        arrays = dict(self._arrays) | ({RELEVANCE: self._relevance} if self._relevance is not None else {})
        for name, array in arrays.items():
            chunk_rows = max(int(array.chunks[0]), 1)
            chunk_bytes = chunk_rows * int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
            step = chunk_rows * max(1, OPEN_BLOCK_BYTES // max(chunk_bytes, 1))
            for start in range(0, self.layout.n_texts, step):
                stop = min(start + step, self.layout.n_texts)
                values = self._read_checked(array, slice(start, stop), name)
                if name == NEIGHBOUR_VIDEOS:
                    self._check_neighbours(neighbour_problems(values, self.layout.n_videos, start))
                else:
                    self._finite(values, name, np.arange(start, stop))

    def _check_neighbours(self, problems: list[str]) -> None:
        if problems:
            raise TeacherCacheError(f"{self.path}: {problems[0]}; run `teach cache verify`")

    def _gather(self, rows: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        """The values of ``rows`` (checked rows, any order, repeats allowed) of each array in ``names``,
        as stored: from memory, or read from zarr (each distinct row once) and checked."""
        if self.in_memory:
            return [self._arrays[name][rows] for name in names]
        unique_rows, position = np.unique(rows, return_inverse=True)
        key = unique_rows.tobytes()
        # the last rows' values serve the next call on the same rows (known_mask after similarity_block):
        # one batch's rows at most. A sampler may read from another thread (the prefetch thread): each
        # call works on its own copy of the memo and replaces it whole, never mutating a shared one
        last_key, last = self._last
        values = dict(last) if last_key == key else {}
        for name in names:
            if name not in values:
                values[name] = self._read_rows(name, unique_rows)
        self._last = (key, values)
        return [values[name][position] for name in names]  # copies: the cache stays as read

    def _read_rows(self, name: str, unique_rows: np.ndarray) -> np.ndarray:
        source = self._arrays[name] if name != RELEVANCE else self._relevance
        if not len(unique_rows):
            return np.zeros((0, *source.shape[1:]), dtype=source.dtype)
        if name not in self._row_readers:  # the chunk files read directly where the layout allows (zarr_io.RowReader)
            self._row_readers[name] = RowReader.open(self.path / name)
        reader = self._row_readers[name]
        if reader is None:
            values = self._read_checked(source.oindex, (unique_rows,) + (slice(None),) * (source.ndim - 1), name)
        else:
            try:
                values = reader.read(unique_rows)
            except ValueError as exc:
                raise TeacherCacheError(f"{self.path}: corrupt chunk ({exc}); run `teach cache verify`") from exc
        if name == NEIGHBOUR_VIDEOS:  # a chunk changed since the open-time check
            self._check_neighbours(neighbour_problems(values, self.layout.n_videos, rows=unique_rows))
            return values
        return self._finite(values, name, unique_rows)

    def frame_relevance(self, text_rows: Sequence[int] | np.ndarray) -> np.ndarray:
        if self._relevance is None or isinstance(self._relevance, np.ndarray) or not self.complete:
            return super().frame_relevance(text_rows)
        unique_rows, position = np.unique(self._rows(text_rows), return_inverse=True)
        return self._read_rows(RELEVANCE, unique_rows)[position].astype(np.float32)

    def neighbours(self, text_rows: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(video columns int64 [n, K], scores float32 [n, K]) of each caption's stored top-k."""
        neighbours, scores = self._gather(self._rows(text_rows), (NEIGHBOUR_VIDEOS, NEIGHBOUR_SCORES))
        return neighbours.astype(np.int64), scores.astype(np.float32)

    def known_mask(self, text_rows: Sequence[int] | np.ndarray, video_cols: Sequence[int] | np.ndarray) -> np.ndarray:
        """bool [n, m]: True where :meth:`similarity_block` returns a stored score, not the fill."""
        return self._lookup_block(text_rows, video_cols)[1]

    def similarity_block(self, text_rows: Sequence[int] | np.ndarray,
                         video_cols: Sequence[int] | np.ndarray) -> np.ndarray:
        """float32 [n, m]: stored scores where known, the mean of the row's scores outside its top k elsewhere."""
        return self._lookup_block(text_rows, video_cols)[0]

    def _lookup_block(self, text_rows, video_cols) -> tuple[np.ndarray, np.ndarray]:
        rows = self._rows(text_rows)
        cols = np.asarray(video_cols, dtype=np.int64)
        neighbours, scores, own, rest = self._gather(rows, SPARSE_ARRAYS)
        scores = scores.astype(np.float32)
        match = neighbours[:, None, :] == cols[None, :, None]  # [n, m, K]
        found = match.any(axis=2)
        values = np.where(found, np.take_along_axis(scores, match.argmax(axis=2), axis=1),
                          rest.astype(np.float32)[:, None])
        is_own = cols[None, :] == self.text_video[rows][:, None]
        values = np.where(is_own, own[:, None], values)
        return values.astype(np.float32), found | is_own

    def __repr__(self) -> str:
        return (f"SparseGroup({self.name!r}, kind={self.kind!r}, {self.layout.n_texts}x{self.layout.n_videos}"
                f" top-{self.top_k}, fingerprint={self.fingerprint[:12]}, complete={self.complete})")
