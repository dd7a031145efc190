"""The teacher cache's schema: names, identity (fingerprint), layout and attributes of a group.

One store holds one group per teacher (docs/teacher-cache.md)::

    teachers.zarr/                 root attrs: {"teachclip_store": "teacher-cache", "schema_version": 1}
      <name>/                      group attrs: identity, fingerprints, layout, versions, complete
        similarity       float16 [texts, videos]  every train caption x every train video
        frame_relevance  float32 [texts, T]       raw scores of each caption vs its own video's frames
                                                  (absent when the teacher has no frame relevance)
        text_ids         str [texts]              caption ids, sorted (train split, valid videos only)
        video_ids        str [videos]             video ids, sorted (train split, failed videos excluded)
        text_video       int32 [texts]            column of each caption's own video in video_ids

A sparse group (:mod:`.sparse`) replaces ``similarity`` by each caption's top-k videos and scores.

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
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zarr

from teachclip.core.errors import InputError
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


class TeacherCacheError(InputError):
    """A teacher cache that cannot be used; the message names the path and the reason."""


class SharingError(TeacherCacheError):
    """A push, pull, export or import that cannot proceed; the message names what and why."""


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
    rows = min(block_texts, budget_rows, round_up(n_texts, chunk_texts))
    rows = max(chunk_texts, rows // chunk_texts * chunk_texts)  # whole chunks per shard
    return CacheLayout(n_texts, n_videos, frames_per_video, rows, chunk_texts, chunk_videos)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def group_attributes(identity: TeacherIdentity, layout: CacheLayout, complete: bool,
                     versions: dict[str, str]) -> dict[str, Any]:
    """The group's attributes, keys sorted so the metadata bytes are canonical. No timestamps.
    ``versions``: the libraries that computed the scores (provenance; not part of the fingerprint)."""
    attrs = asdict(identity) | {
        "complete": complete,
        "fingerprint": identity.fingerprint,
        "layout": asdict(layout),
        "order": ORDER,
        "schema_version": SCHEMA_VERSION,
        "split": SPLIT,
        "teachclip_store": STORE_KIND,
        "versions": dict(versions),
    }
    return json.loads(canonical_json(attrs))


def identity_from_attributes(attrs: dict[str, Any]) -> TeacherIdentity:
    return TeacherIdentity(**{name: attrs[name] for name in TeacherIdentity.__dataclass_fields__})


def layout_from_attributes(attrs: dict[str, Any]) -> CacheLayout:
    return CacheLayout(**attrs["layout"])


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


