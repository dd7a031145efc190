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
from typing import Annotated, Any, Literal

import zarr
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from teachclip.core.errors import InputError
from teachclip.core.files import read_at_most
from teachclip.core.fingerprint import canonical_json, fingerprint

STORE_KIND = "teacher-cache"
SCHEMA_VERSION = 1
SIMILARITY = "similarity"
RELEVANCE = "frame_relevance"
TEXT_IDS = "text_ids"
VIDEO_IDS = "video_ids"
TEXT_VIDEO = "text_video"
# a sparse group's score arrays (teachclip.stores.teacher_cache.sparse)
NEIGHBOUR_VIDEOS = "neighbour_videos"
NEIGHBOUR_SCORES = "neighbour_scores"
OWN_SCORE = "own_score"
REST_MEAN = "rest_mean"
ID_ARRAYS = (TEXT_IDS, VIDEO_IDS)
ROOT_ATTRIBUTES = {"schema_version": SCHEMA_VERSION, "teachclip_store": STORE_KIND}
SPLIT = "train"
ORDER = (
    "text_ids: train captions of valid train videos, sorted by caption id; "
    "video_ids: train videos that decoded, sorted by video id"
)
# open_teacher_caches(in_memory=None) loads a similarity matrix into RAM when it is at most this big
IN_MEMORY_LIMIT_BYTES = 4 << 30

# ---- limits: what a group may declare (checked before anything is allocated or enumerated) ----------
# Generous for real caches (MSR-VTT 9k: 180,000 x 9,000; WebVid-10M sparse: 10.7M captions), so that a
# small hostile document cannot declare a cost beyond what a real group of its shape would have.
MAX_TEXTS = 100_000_000
MAX_VIDEOS = 100_000_000
MAX_FRAMES = 4096
MAX_TOP_K = 65536
MAX_CHUNK_BYTES = 1 << 30  # one chunk, decoded (float32 accounting)
MAX_BLOCK_BYTES = 4 << 30  # one block (= shard) of float32 rows, as plan_layout accounts for it
MAX_ID_LENGTH = 1024  # characters of one caption or video id
MAX_METADATA_BYTES = 1 << 20  # one zarr.json document


class TeacherCacheError(InputError):
    """A teacher cache that cannot be used; the message names the path and the reason."""


class SharingError(TeacherCacheError):
    """A push, pull, export or import that cannot proceed; the message names what and why."""


GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
FINGERPRINT = r"^[0-9a-f]{64}$"


def check_group_name(name: str) -> str:
    """Group names become directory names and completion-marker prefixes: keep them plain. Every name
    that comes from outside (an HDF5 group, a remote entry, ``--name``) passes here before it touches
    a path, and every function that builds a path from a group name calls it again."""
    if not isinstance(name, str) or not GROUP_NAME.fullmatch(name):
        raise TeacherCacheError(
            f"teacher name {str(name)[:80]!r}: use letters, digits, '_' and '-' (starting with a letter or "
            f"digit, at most 128 characters)"
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
    budget_rows = min((memory_budget_mb << 20) // 2, MAX_BLOCK_BYTES) // row_bytes
    rows = min(block_texts, budget_rows, round_up(n_texts, chunk_texts))
    rows = max(chunk_texts, rows // chunk_texts * chunk_texts)  # whole chunks per shard
    layout = CacheLayout(n_texts, n_videos, frames_per_video, rows, chunk_texts, chunk_videos)
    try:  # never write a group that the readers would refuse
        problem = LayoutAttributes.model_validate(asdict(layout)).dense_block_problem()
    except ValidationError as exc:
        raise TeacherCacheError(f"cannot lay out {n_texts} captions x {n_videos} videos: "
                                f"{validation_message(exc)}") from exc
    if problem:
        raise TeacherCacheError(f"cannot lay out {n_texts} captions x {n_videos} videos: {problem}")
    return layout


def plan_sparse_layout(n_texts: int, n_videos: int, frames_per_video: int, block_texts: int) -> CacheLayout:
    """The layout of a group written sparse from the start (candidate extraction): blocks of
    ``block_texts`` rows, each one chunk of every (K-column) array; no dense columns (``chunk_videos`` 1)."""
    if n_texts < 1 or n_videos < 1:
        raise TeacherCacheError(f"nothing to score: {n_texts} train captions x {n_videos} train videos")
    rows = max(1, min(block_texts, n_texts))
    layout = CacheLayout(n_texts, n_videos, frames_per_video, rows, rows, 1)
    try:
        LayoutAttributes.model_validate(asdict(layout))
    except ValidationError as exc:
        raise TeacherCacheError(f"cannot lay out {n_texts} captions x {n_videos} videos: "
                                f"{validation_message(exc)}") from exc
    return layout


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# ---- the attribute documents, validated in one place ------------------------------------------------

Count = Annotated[int, Field(ge=1)]
Text = Annotated[str, Field(max_length=4096)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class LayoutAttributes(_Strict):
    """``layout``: the shape and the block/chunk partition, range-checked before anything is sized by it."""

    n_texts: Annotated[int, Field(ge=1, le=MAX_TEXTS)]
    n_videos: Annotated[int, Field(ge=1, le=MAX_VIDEOS)]
    frames_per_video: Annotated[int, Field(ge=1, le=MAX_FRAMES)]
    block_texts: Count
    chunk_texts: Count
    chunk_videos: Count

    @model_validator(mode="after")
    def _partition(self) -> LayoutAttributes:
        if self.chunk_texts > self.n_texts or self.chunk_videos > self.n_videos:
            raise ValueError(f"chunks of {self.chunk_texts} x {self.chunk_videos} exceed the {self.n_texts} x "
                             f"{self.n_videos} entries")
        if self.block_texts % self.chunk_texts or self.block_texts > round_up(self.n_texts, self.chunk_texts):
            raise ValueError(f"block_texts {self.block_texts} is not a whole number of chunk_texts {self.chunk_texts} "
                             f"rows within the {self.n_texts} texts")
        if self.chunk_texts * max(self.chunk_videos, self.frames_per_video) * 4 > MAX_CHUNK_BYTES:
            raise ValueError(f"a chunk of {self.chunk_texts} rows exceeds {MAX_CHUNK_BYTES >> 20} MiB")
        return self

    def dense_block_problem(self) -> str | None:
        """A dense block (every video of ``block_texts`` rows) must fit ``MAX_BLOCK_BYTES``; a sparse
        group's rows hold K scores, so this bound is the dense groups' only."""
        if self.block_texts * (self.n_videos + self.frames_per_video) * 4 > MAX_BLOCK_BYTES:
            return f"a block of {self.block_texts} rows exceeds {MAX_BLOCK_BYTES >> 30} GiB"
        return None


class RetrieverAttributes(_Strict):
    """``sparse.candidates.retriever``: the first stage that proposed the candidates."""

    kind: Literal["clip", "student"]
    fingerprint: Annotated[str, Field(pattern=FINGERPRINT)]


class CandidateAttributes(_Strict):
    """``sparse.candidates`` of a group written by candidate extraction (:mod:`.sparse`): the columns
    hold ``k`` retrieved and ``random`` random videos per caption (fewer when the collection is small)."""

    retriever: RetrieverAttributes
    k: Annotated[int, Field(ge=1, le=MAX_TOP_K)]
    random: Annotated[int, Field(ge=0, le=MAX_TOP_K)]
    seed: int
    teacher_evaluations: Annotated[int, Field(ge=0)]  # (caption, video) pairs the teacher scored


class SparseAttributes(_Strict):
    """``sparse`` of a sparse group (:mod:`.sparse`). ``dense_fingerprint``: the fingerprint of the
    dense group the same teacher computes from the same frames (the source of ``teach cache
    sparsify``; for a candidate group, the one it was *not* necessary to compute). ``top_k``: the
    columns stored per caption. ``candidates``: present on groups from candidate extraction only."""

    top_k: Annotated[int, Field(ge=1, le=MAX_TOP_K)]
    dense_fingerprint: Annotated[str, Field(pattern=FINGERPRINT)]
    fill: Annotated[str, Field(max_length=64)]
    candidates: CandidateAttributes | None = None


class GroupAttributes(_Strict):
    """Every attribute of a teacher group (docs/stores.md), types and ranges checked.

    ``content_sha256`` is absent in groups completed before content hashes existed (they stay
    readable; ``verify`` and ``info`` say "no content hash")."""

    teachclip_store: Literal["teacher-cache"]
    schema_version: Literal[1]
    kind: Annotated[str, Field(min_length=1, max_length=128)]
    config: dict[str, Any]
    checkpoint_sha256: Annotated[str, Field(max_length=128)] | None
    score_version: int
    has_frame_relevance: bool
    similarity_definition: Text
    relevance_definition: Text
    fingerprint: Annotated[str, Field(pattern=FINGERPRINT)]
    frames_fingerprint: Annotated[str, Field(max_length=128)]
    manifest_fingerprint: Annotated[str, Field(max_length=128)]
    layout: LayoutAttributes
    order: Text
    split: Annotated[str, Field(max_length=64)]
    versions: dict[str, Annotated[str, Field(max_length=256)]]
    complete: bool
    content_sha256: Annotated[str, Field(pattern=FINGERPRINT)] | None = None
    sparse: SparseAttributes | None = None

    @model_validator(mode="after")
    def _top_k(self) -> GroupAttributes:
        if self.sparse is not None and self.sparse.top_k > self.layout.n_videos:
            raise ValueError(f"sparse top_k {self.sparse.top_k} outside 1..{self.layout.n_videos} (the videos in "
                             f"the layout)")
        if self.sparse is None and (problem := self.layout.dense_block_problem()):
            raise ValueError(problem)
        return self


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as one short line: where in the document, and what is wrong."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "document"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def parse_group_attributes(attrs: Any, where: str | Path) -> GroupAttributes:
    """Validate a group's attributes (from a zarr.json, an HDF5 file or a remote); TeacherCacheError
    naming ``where`` and the first problem."""
    if isinstance(attrs, dict) and type(attrs.get("schema_version")) is int and attrs["schema_version"] != SCHEMA_VERSION:
        raise TeacherCacheError(f"{where}: schema_version {attrs['schema_version']} (this code reads {SCHEMA_VERSION})")
    try:
        return GroupAttributes.model_validate(attrs)
    except ValidationError as exc:
        raise TeacherCacheError(f"{where}: malformed teacher group attributes: {validation_message(exc)}") from exc


def read_document(path: str | Path, max_bytes: int = MAX_METADATA_BYTES) -> dict[str, Any]:
    """A JSON object from a metadata file, read with a size limit; TeacherCacheError naming the file
    and the reason (missing, too big, not UTF-8, not JSON, not an object)."""
    path = Path(path)
    try:
        if path.is_symlink():
            raise TeacherCacheError(f"{path}: a symbolic link where a metadata file belongs")
        with open(path, "rb") as handle:
            data = read_at_most(handle, max_bytes)
    except OSError as exc:
        raise TeacherCacheError(f"{path}: unreadable metadata ({exc.strerror or exc})") from exc
    return parse_document(data, path, max_bytes)


def parse_document(data: bytes, where: str | Path, max_bytes: int = MAX_METADATA_BYTES) -> dict[str, Any]:
    """:func:`read_document` for bytes already read."""
    if len(data) > max_bytes:
        raise TeacherCacheError(f"{where}: metadata larger than {max_bytes} bytes")
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TeacherCacheError(f"{where}: metadata is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise TeacherCacheError(f"{where}: metadata is not JSON ({str(exc)[:120]})") from exc
    if not isinstance(document, dict):
        raise TeacherCacheError(f"{where}: metadata is a JSON {type(document).__name__}, not an object")
    return document


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
    """The layout of (validated) attributes; TeacherCacheError if the layout is malformed."""
    layout = attrs.get("layout") if isinstance(attrs, dict) else None
    try:
        return CacheLayout(**LayoutAttributes.model_validate(layout).model_dump())
    except ValidationError as exc:
        raise TeacherCacheError(f"malformed layout: {validation_message(exc)}") from exc


def _claims_teacher_group(document: dict[str, Any]) -> bool:
    attrs = document.get("attributes")
    return (document.get("node_type") == "group" and isinstance(attrs, dict)
            and attrs.get("teachclip_store") == STORE_KIND and "fingerprint" in attrs)


def read_group_attributes(group_path: str | Path) -> dict[str, Any] | None:
    """The attributes of a teacher group (validated: :class:`GroupAttributes`), or None where there is
    no teacher group. A zarr.json that claims to be a teacher group but is malformed (not JSON, wrong
    types, values out of range) raises TeacherCacheError naming it."""
    meta = Path(group_path) / "zarr.json"
    if not meta.is_file() and not meta.is_symlink():
        return None
    document = read_document(meta)
    if not _claims_teacher_group(document):
        return None
    attrs = document["attributes"]
    parse_group_attributes(attrs, meta)
    return attrs


def group_names(store: str | Path) -> list[str]:
    """Names of the teacher groups in a store directory (sorted), bookkeeping folders ignored. A folder
    whose zarr.json cannot be read counts as a (damaged) group, so that readers and ``verify`` report
    it instead of passing over it."""
    store = Path(store)
    if not store.is_dir():
        return []
    names = []
    for child in store.iterdir():
        if not child.is_dir() or child.is_symlink() or not (child / "zarr.json").exists():
            continue
        try:
            claims = _claims_teacher_group(read_document(child / "zarr.json"))
        except TeacherCacheError:
            claims = True
        if claims:
            names.append(child.name)
    return sorted(names)


def check_store_or_absent(path: str | Path) -> None:
    """Refuse to write teacher groups into something that exists and is not a teacher cache store."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    try:
        attrs = read_document(path / "zarr.json").get("attributes") if path.is_dir() and not path.is_symlink() else None
    except TeacherCacheError:
        attrs = None
    if not isinstance(attrs, dict) or attrs.get("teachclip_store") != STORE_KIND:
        raise TeacherCacheError(f"{path}: exists and is not a teacher cache store; choose another output path")


def open_root(path: str | Path) -> zarr.Group:
    """The root group of a teacher cache store, created with its marker attributes if missing."""
    root = zarr.open_group(Path(path), mode="a")
    if dict(root.attrs) != ROOT_ATTRIBUTES:
        root.attrs.update(ROOT_ATTRIBUTES)
    return root


