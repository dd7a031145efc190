"""The teacher cache: schema, writer and reader of ``teachers.zarr``.

One store holds one group per teacher (see docs/teacher-cache.md)::

    teachers.zarr/                 root attrs: {"teachclip_store": "teacher-cache", "schema_version": 1}
      <name>/                      group attrs: identity, fingerprints, layout, versions, complete
        similarity       float16 [texts, videos]  every train caption x every train video
        frame_relevance  float32 [texts, T]       raw scores of each caption vs its own video's frames
                                                  (absent when the teacher has no frame relevance)
        text_ids         str [texts]              caption ids, sorted (train split, valid videos only)
        video_ids        str [videos]             video ids, sorted (train split, failed videos excluded)
        text_video       int32 [texts]            column of each caption's own video in video_ids

Layout: ``similarity`` and ``frame_relevance`` share one row partition. A *block* of
``layout.block_texts`` rows x every video is one shard file of each array (the unit of work, of
resume and of parallel writing: a worker writes whole shards only). Inside a shard, chunks of
``chunk_texts`` rows x ``chunk_videos`` columns are what a random read decodes. Missing data read
as NaN (the fill value), never as plausible zeros, and ``write_empty_chunks`` is on so that every
chunk exists on disk and ``verify`` can demand it.

The group name is *not* stored inside the group: a group's bytes depend only on what it was
computed from, so the same cache pulled under another name keeps every byte.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from teachclip.stores.zarr_io import PROGRESS_DIR, create_array, read_strings, write_strings
from teachclip.core.fingerprint import canonical_json, fingerprint

STORE_KIND = "teacher-cache"
SCHEMA_VERSION = 1
SIMILARITY = "similarity"
RELEVANCE = "frame_relevance"
TEXT_IDS = "text_ids"
VIDEO_IDS = "video_ids"
TEXT_VIDEO = "text_video"
ROOT_ATTRIBUTES = {"schema_version": SCHEMA_VERSION, "teachclip_store": STORE_KIND}
SPLIT = "train"
ORDER = (
    "text_ids: train captions of valid train videos, sorted by caption id; "
    "video_ids: train videos that decoded, sorted by video id"
)
# open_teacher_caches(in_memory=None) loads a similarity matrix into RAM when it is at most this big
IN_MEMORY_LIMIT_BYTES = 4 << 30


class TeacherCacheError(ValueError):
    """A teacher cache that cannot be used; the message names the path and the reason."""


GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def check_group_name(name: str) -> str:
    """Group names become directory names and completion-marker prefixes: keep them plain."""
    if not GROUP_NAME.fullmatch(name):
        raise TeacherCacheError(
            f"teacher name {name!r}: use letters, digits, '_' and '-' (starting with a letter or digit)"
        )
    return name


# ---- identity --------------------------------------------------------------------------------


def teacher_cache_fingerprint(
    frames_fingerprint: str, kind: str, config: dict[str, Any], checkpoint_sha256: str | None, score_version: int
) -> str:
    """Identity of a teacher's scores: what they were computed on, by which model, with which code."""
    return fingerprint(
        "teacher-cache",
        {
            "checkpoint_sha256": checkpoint_sha256,
            "config": config,
            "frames": frames_fingerprint,
            "kind": kind,
            "score_version": score_version,
        },
    )


@dataclass(frozen=True)
class TeacherIdentity:
    """Everything that says which teacher produced a group and from which inputs."""

    kind: str
    config: dict[str, Any]  # the TeacherConfig as JSON, checkpoint path replaced by its hash
    checkpoint_sha256: str | None
    score_version: int
    has_frame_relevance: bool
    similarity_definition: str
    relevance_definition: str
    frames_fingerprint: str
    manifest_fingerprint: str

    @property
    def fingerprint(self) -> str:
        return teacher_cache_fingerprint(
            self.frames_fingerprint, self.kind, self.config, self.checkpoint_sha256, self.score_version
        )


@dataclass(frozen=True)
class CacheLayout:
    """Shape, chunking and the block (= shard) partition of a group's score arrays."""

    n_texts: int
    n_videos: int
    frames_per_video: int
    block_texts: int  # rows per block = rows per shard file
    chunk_texts: int  # rows per chunk inside a shard
    chunk_videos: int  # columns per chunk

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.n_texts / self.block_texts)

    def block_rows(self, block: int) -> tuple[int, int]:
        start = block * self.block_texts
        return start, min(start + self.block_texts, self.n_texts)


def plan_layout(
    n_texts: int,
    n_videos: int,
    frames_per_video: int,
    block_texts: int,
    chunk_texts: int,
    block_videos: int | None,
    memory_budget_mb: int,
) -> CacheLayout:
    """Choose the layout: ``block_texts`` rows per block, fewer when a block's float32 output would
    take more than half the memory budget (the other half is the scoring workspace)."""
    if n_texts < 1 or n_videos < 1:
        raise TeacherCacheError(f"nothing to score: {n_texts} train captions x {n_videos} train videos")
    chunk_texts = max(1, min(chunk_texts, n_texts))
    chunk_videos = max(1, min(block_videos or n_videos, n_videos))
    row_bytes = 4 * (n_videos + frames_per_video)
    budget_rows = (memory_budget_mb << 20) // 2 // row_bytes
    rows = min(block_texts, budget_rows, _round_up(n_texts, chunk_texts))
    rows = max(chunk_texts, rows // chunk_texts * chunk_texts)  # whole chunks per shard
    return CacheLayout(n_texts, n_videos, frames_per_video, rows, chunk_texts, chunk_videos)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def library_versions() -> dict[str, str]:
    from importlib.metadata import version

    import open_clip
    import torch

    return {
        "numpy": np.__version__,
        "open_clip": open_clip.__version__,
        "teachclip": version("teachclip"),
        "torch": torch.__version__,
        "zarr": zarr.__version__,
    }


def group_attributes(identity: TeacherIdentity, layout: CacheLayout, complete: bool) -> dict[str, Any]:
    """The group's attributes, keys sorted so the metadata bytes are canonical. No timestamps."""
    attrs = asdict(identity) | {
        "complete": complete,
        "fingerprint": identity.fingerprint,
        "layout": asdict(layout),
        "order": ORDER,
        "schema_version": SCHEMA_VERSION,
        "split": SPLIT,
        "teachclip_store": STORE_KIND,
        "versions": library_versions(),
    }
    return json.loads(canonical_json(attrs))


def identity_from_attributes(attrs: dict[str, Any]) -> TeacherIdentity:
    return TeacherIdentity(**{name: attrs[name] for name in TeacherIdentity.__dataclass_fields__})


def layout_from_attributes(attrs: dict[str, Any]) -> CacheLayout:
    return CacheLayout(**attrs["layout"])


# ---- writer ----------------------------------------------------------------------------------


def check_store_or_absent(path: str | Path) -> None:
    """Refuse to write teacher groups into something that exists and is not a teacher cache store."""
    path = Path(path)
    if not path.exists():
        return
    meta = path / "zarr.json"
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {}) if meta.is_file() else None
    except (OSError, json.JSONDecodeError):
        attrs = None
    if not path.is_dir() or attrs is None or attrs.get("teachclip_store") != STORE_KIND:
        raise TeacherCacheError(f"{path}: exists and is not a teacher cache store; choose another output path")


def open_root(path: str | Path) -> zarr.Group:
    """The root group of a teacher cache store, created with its marker attributes if missing."""
    root = zarr.open_group(Path(path), mode="a")
    if dict(root.attrs) != ROOT_ATTRIBUTES:
        root.attrs.update(ROOT_ATTRIBUTES)
    return root


def create_group(
    store: str | Path,
    name: str,
    identity: TeacherIdentity,
    layout: CacheLayout,
    text_ids: Sequence[str],
    video_ids: Sequence[str],
    text_video: np.ndarray,
) -> zarr.Group:
    """Create an empty (``complete: false``) group with every array, ready for block writes."""
    check_group_name(name)
    if len(text_ids) != layout.n_texts or len(video_ids) != layout.n_videos or len(text_video) != layout.n_texts:
        raise ValueError("ids and layout disagree on the number of texts/videos")
    root = open_root(store)
    group = root.create_group(name, overwrite=True, attributes=group_attributes(identity, layout, complete=False))
    create_array(
        group,
        SIMILARITY,
        shape=(layout.n_texts, layout.n_videos),
        chunks=(layout.chunk_texts, layout.chunk_videos),
        shards=(layout.block_texts, _round_up(layout.n_videos, layout.chunk_videos)),
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
        raise ValueError(f"block {block}: similarity shape {similarity.shape}, expected {expected}")
    # write_empty_chunks: a chunk that happens to equal the fill value must still exist on disk
    config = {"write_empty_chunks": True}
    similarity = similarity.astype(np.float16)
    if not np.isfinite(similarity).all():  # NaN is the mark of unwritten data: never store one
        raise ValueError(f"{group_path}: block {block}: non-finite similarity (NaN, or beyond float16's +-65504)")
    group[SIMILARITY].with_config(config)[start:stop] = similarity
    if RELEVANCE in group:
        if relevance is None or relevance.shape != (stop - start, layout.frames_per_video):
            raise ValueError(f"{group_path}: block {block}: frame relevance missing or of the wrong shape")
        relevance = relevance.astype(np.float32)
        if not np.isfinite(relevance).all():
            raise ValueError(f"{group_path}: block {block}: non-finite frame relevance")
        group[RELEVANCE].with_config(config)[start:stop] = relevance


def mark_group_complete(group_path: str | Path) -> None:
    group = zarr.open_group(Path(group_path), mode="r+")
    attrs = dict(group.attrs) | {"complete": True}
    group.attrs.put(json.loads(canonical_json(attrs)))


def read_group_attributes(group_path: str | Path) -> dict[str, Any] | None:
    """The attributes of a teacher group, or None where there is no teacher group."""
    meta = Path(group_path) / "zarr.json"
    if not meta.is_file():
        return None
    try:
        document = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TeacherCacheError(f"{meta}: unreadable group metadata ({exc})") from exc
    attrs = document.get("attributes", {})
    if document.get("node_type") != "group" or attrs.get("teachclip_store") != STORE_KIND or "fingerprint" not in attrs:
        return None
    return attrs


def group_names(store: str | Path) -> list[str]:
    """Names of the teacher groups in a store directory (sorted), bookkeeping folders ignored."""
    store = Path(store)
    if not store.is_dir():
        return []
    return sorted(p.name for p in store.iterdir() if p.is_dir() and read_group_attributes(p) is not None)


# ---- reader ----------------------------------------------------------------------------------


class TeacherCacheGroup:
    """Read access to one teacher's soft labels.

    ``similarity_block`` serves random training batches: from RAM when the matrix was loaded
    (``in_memory``), else by decoding only the chunks the batch touches.
    """

    def __init__(self, path: str | Path, in_memory: bool | None = None):
        self.path = Path(path)
        attrs = read_group_attributes(self.path)
        if attrs is None:
            raise TeacherCacheError(f"{self.path}: not a teacher cache group (no teachclip group metadata)")
        if attrs.get("schema_version") != SCHEMA_VERSION:
            raise TeacherCacheError(
                f"{self.path}: schema_version {attrs.get('schema_version')} (this code reads {SCHEMA_VERSION})"
            )
        self.attrs: dict[str, Any] = attrs
        self.name: str = self.path.name
        self.kind: str = attrs["kind"]
        self.fingerprint: str = attrs["fingerprint"]
        self.frames_fingerprint: str = attrs["frames_fingerprint"]
        self.manifest_fingerprint: str = attrs["manifest_fingerprint"]
        self.complete: bool = bool(attrs["complete"])
        self.has_frame_relevance: bool = bool(attrs["has_frame_relevance"])
        self.layout = layout_from_attributes(attrs)
        try:
            group = zarr.open_group(self.path, mode="r")
            self.text_ids: list[str] = read_strings(group[TEXT_IDS])
            self.video_ids: list[str] = read_strings(group[VIDEO_IDS])
            self.text_video: np.ndarray = np.asarray(group[TEXT_VIDEO][...], dtype=np.int64)
            self._similarity: Any = group[SIMILARITY]
            self._relevance: Any = group[RELEVANCE] if self.has_frame_relevance else None
        except (KeyError, ValueError, OSError) as exc:
            raise TeacherCacheError(f"{self.path}: cannot read the group's arrays ({exc})") from exc
        self._text_rows = {caption_id: row for row, caption_id in enumerate(self.text_ids)}
        self._video_cols = {video_id: col for col, video_id in enumerate(self.video_ids)}
        if in_memory is None:
            in_memory = self.layout.n_texts * self.layout.n_videos * 2 <= IN_MEMORY_LIMIT_BYTES
        if in_memory:
            self.load_into_memory()

    @property
    def frames_per_video(self) -> int:
        return self.layout.frames_per_video

    @property
    def in_memory(self) -> bool:
        return isinstance(self._similarity, np.ndarray)

    def load_into_memory(self) -> None:
        """Read the whole similarity matrix (fp16) and relevance into RAM: random batches at RAM speed."""
        self._similarity = self._read_checked(self._similarity, ...)
        if self._relevance is not None:
            self._relevance = self._read_checked(self._relevance, ...)

    def require_frames(self, frames_fingerprint: str) -> None:
        """Refuse a cache computed from other frames than the ones a consumer was given."""
        if frames_fingerprint != self.frames_fingerprint:
            raise TeacherCacheError(
                f"{self.path}: computed from frames {self.frames_fingerprint}, but the frames given have "
                f"fingerprint {frames_fingerprint}"
            )

    def text_index(self, caption_ids: Sequence[str]) -> np.ndarray:
        return self._lookup(self._text_rows, caption_ids, "caption")

    def video_index(self, video_ids: Sequence[str]) -> np.ndarray:
        return self._lookup(self._video_cols, video_ids, "video")

    def similarity_block(self, text_rows: Sequence[int] | np.ndarray, video_cols: Sequence[int] | np.ndarray) -> np.ndarray:
        """float32 [len(text_rows), len(video_cols)] teacher similarities (any order, repeats allowed)."""
        rows = np.asarray(text_rows, dtype=np.int64)
        cols = np.asarray(video_cols, dtype=np.int64)
        if self.in_memory:
            return self._similarity[np.ix_(rows, cols)].astype(np.float32)
        unique_rows, row_pos = np.unique(rows, return_inverse=True)
        unique_cols, col_pos = np.unique(cols, return_inverse=True)
        block = self._read_checked(self._similarity.oindex, (unique_rows, unique_cols))
        return block[np.ix_(row_pos, col_pos)].astype(np.float32)

    def frame_relevance(self, text_rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """float32 [len(text_rows), T] raw relevance of each caption against its own video's frames."""
        if self._relevance is None:
            raise TeacherCacheError(f"{self.path}: teacher {self.kind!r} has no frame relevance")
        rows = np.asarray(text_rows, dtype=np.int64)
        if isinstance(self._relevance, np.ndarray):
            return self._relevance[rows].astype(np.float32)
        unique_rows, row_pos = np.unique(rows, return_inverse=True)
        return self._read_checked(self._relevance.oindex, (unique_rows, slice(None)))[row_pos].astype(np.float32)

    def _lookup(self, table: dict[str, int], ids: Sequence[str], what: str) -> np.ndarray:
        missing = [i for i in ids if i not in table]
        if missing:
            raise TeacherCacheError(
                f"{self.path}: {len(missing)} {what} id(s) not in the cache, e.g. {missing[:3]} "
                f"(it holds the train split only)"
            )
        return np.fromiter((table[i] for i in ids), dtype=np.int64, count=len(ids))

    def _read_checked(self, source: Any, selection: Any) -> np.ndarray:
        try:
            return np.asarray(source[selection])
        except ValueError as exc:  # zarr's crc32c codec raises ValueError on a checksum mismatch
            raise TeacherCacheError(f"{self.path}: corrupt chunk ({exc}); run `teach cache verify`") from exc

    def __repr__(self) -> str:
        return (f"TeacherCacheGroup({self.name!r}, kind={self.kind!r}, {self.layout.n_texts}x{self.layout.n_videos}, "
                f"fingerprint={self.fingerprint[:12]}, complete={self.complete})")


def open_teacher_caches(spec: str | Path, in_memory: bool | None = None) -> list[TeacherCacheGroup]:
    """Open ``teachers.zarr`` (every group, sorted by name) or ``teachers.zarr/<name>`` (one group).

    ``in_memory=None`` loads each similarity matrix into RAM when it is at most
    ``IN_MEMORY_LIMIT_BYTES``; True/False force it.
    """
    path = Path(spec)
    if not path.exists():
        raise TeacherCacheError(f"{path}: teacher cache not found")
    if read_group_attributes(path) is not None:
        return [open_group(path, in_memory)]
    names = group_names(path)
    if not names:
        raise TeacherCacheError(f"{path}: no teacher groups (expected teachers.zarr or teachers.zarr/<name>)")
    return [open_group(path / name, in_memory) for name in names]


def open_group(path: Path, in_memory: bool | None = None) -> TeacherCacheGroup:
    """The reader of one group: dense, or sparse (teachclip.stores.sparse, same API) when it is one."""
    attrs = read_group_attributes(path)
    if attrs is not None and "sparse" in attrs:
        from teachclip.stores.sparse import SparseTeacherCacheGroup

        return SparseTeacherCacheGroup(path, in_memory)
    return TeacherCacheGroup(path, in_memory)


# ---- the partial/publish protocol --------------------------------------------------------------
#
# A group is built in ``<out>.partial/<name>/`` with one completion marker per finished block (and
# per finished unit of video features) in ``<out>.partial/_progress/`` and scratch data in
# ``<out>.partial/_scratch/<name>/``. When every block is written the group is marked complete and
# published: if ``<out>`` does not exist yet, the whole partial store is renamed to ``<out>`` (one
# atomic rename); if it does (a teacher added to a finished store), the group directory alone is
# renamed into ``<out>/``, so the groups already there are never touched nor recomputed.

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
    return partial / SCRATCH_DIR / name


def discard_partial_group(partial: Path, name: str) -> None:
    """Forget a group's partial work: its arrays, completion markers and scratch data."""
    shutil.rmtree(partial / name, ignore_errors=True)
    discard_bookkeeping(partial, name)


def publish_groups(partial: Path, out: Path, names: Sequence[str]) -> None:
    """Mark the finished groups ``names`` of ``partial`` complete and move them into ``out``.

    One rename of the whole partial store when ``out`` does not exist and nothing else is in
    progress there; otherwise one rename per group, leaving other groups of ``out`` untouched.
    """
    for name in names:
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
    shutil.rmtree(scratch_path(partial, name), ignore_errors=True)
    progress = partial / PROGRESS_DIR
    for marker in progress.glob(f"{name}.*") if progress.is_dir() else []:
        marker.unlink()
