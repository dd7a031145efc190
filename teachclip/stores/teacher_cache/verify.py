"""Check and describe teacher caches: ``teach cache verify`` and ``teach cache info``.

``verify`` demands every chunk and shard of every array on disk (Zarr would read an absent one as
its fill value without a word), reads every chunk (crc32c), checks the identity recorded in the
attributes against the fingerprint (dense and sparse groups), the array shapes against the layout,
and the ids (sorted, unique, columns in range). ``info`` lists what a store holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from teachclip.stores.teacher_cache import sparse
from teachclip.stores.teacher_cache.publish import done_of
from teachclip.stores.teacher_cache.schema import (
    RELEVANCE,
    SIMILARITY,
    TEXT_IDS,
    TEXT_VIDEO,
    VIDEO_IDS,
    CacheLayout,
    TeacherCacheError,
    TeacherIdentity,
    group_names,
    identity_from_attributes,
    layout_from_attributes,
    read_group_attributes,
)
from teachclip.stores.zarr_io import (
    check_chunk_presence,
    done_units,
    partial_path,
    read_strings,
    regions,
    tree_bytes,
)


@dataclass
class GroupCheck:
    path: Path
    chunks_read: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(path: str | Path) -> list[GroupCheck]:
    """Check every group of a store (or one group): completeness, identity, every chunk's presence
    and crc32c checksum. Intact only if every returned check has no problems."""
    path = Path(path)
    if read_group_attributes(path) is not None:
        return [verify_group(path)]
    names = group_names(path)
    if not names:
        check = GroupCheck(path)
        check.problems.append("no teacher groups here" if path.exists() else "not found")
        return [check]
    return [verify_group(path / name) for name in names]


def verify_group(path: str | Path) -> GroupCheck:
    """The checks of :func:`verify_store` for one group, dense or sparse (``teach cache sparsify``)."""
    path = Path(path)
    check = GroupCheck(path)
    try:
        attrs = read_group_attributes(path)
    except TeacherCacheError as exc:
        check.problems.append(str(exc))
        return check
    if attrs is None:
        check.problems.append("not a teacher cache group")
        return check
    if not attrs.get("complete"):
        check.problems.append("incomplete: the extraction that writes it has not finished")
    try:
        identity = identity_from_attributes(attrs)
        layout = layout_from_attributes(attrs)
    except (KeyError, TypeError) as exc:
        check.problems.append(f"attributes lack the teacher identity or layout ({exc})")
        return check
    top_k = None
    if "sparse" in attrs:
        top_k = _check_sparse_identity(attrs, identity, layout, check)
        if top_k is None:
            return check
        expected = _sparse_arrays(layout, top_k)
    else:
        if identity.fingerprint != attrs.get("fingerprint"):
            check.problems.append(
                f"fingerprint {attrs.get('fingerprint')} does not match the identity in the attributes "
                f"({identity.fingerprint}): the metadata was altered"
            )
        expected = {SIMILARITY: (layout.n_texts, layout.n_videos)}
    expected |= {
        TEXT_IDS: (layout.n_texts,),
        VIDEO_IDS: (layout.n_videos,),
        TEXT_VIDEO: (layout.n_texts,),
    }
    if identity.has_frame_relevance:
        expected[RELEVANCE] = (layout.n_texts, layout.frames_per_video)
    for name, shape in expected.items():
        check.problems.extend(_check_array(path / name, shape, check))
    if not check.problems:
        check.problems.extend(_check_ids(path, layout, top_k))
    return check


def _sparse_arrays(layout: CacheLayout, top_k: int) -> dict[str, tuple[int, ...]]:
    """The score arrays of a sparse group (:mod:`teachclip.stores.teacher_cache.sparse`) and their shapes."""
    return {
        sparse.NEIGHBOUR_VIDEOS: (layout.n_texts, top_k),
        sparse.NEIGHBOUR_SCORES: (layout.n_texts, top_k),
        sparse.OWN_SCORE: (layout.n_texts,),
        sparse.REST_MEAN: (layout.n_texts,),
    }


def _check_sparse_identity(attrs: dict[str, Any], identity: TeacherIdentity, layout: CacheLayout,
                           check: GroupCheck) -> int | None:
    """A sparse group's identity: its dense source's (recomputed from the attributes) and its own
    fingerprint ``sparse_fingerprint(dense_fingerprint, top_k)``. Returns top_k, None if unusable."""
    meta = attrs["sparse"]
    top_k = meta.get("top_k") if isinstance(meta, dict) else None
    dense_fingerprint = meta.get("dense_fingerprint") if isinstance(meta, dict) else None
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not isinstance(dense_fingerprint, str):
        check.problems.append(f"attribute sparse {meta!r} lacks an integer top_k or a dense_fingerprint")
        return None
    if not 1 <= top_k <= layout.n_videos:
        check.problems.append(f"sparse top_k {top_k} outside 1..{layout.n_videos} (the videos in the layout)")
        return None
    if identity.fingerprint != dense_fingerprint:
        check.problems.append(
            f"sparse dense_fingerprint {dense_fingerprint} does not match the identity in the attributes "
            f"({identity.fingerprint}): the metadata was altered"
        )
    expected = sparse.sparse_fingerprint(dense_fingerprint, top_k)
    if attrs.get("fingerprint") != expected:
        check.problems.append(
            f"fingerprint {attrs.get('fingerprint')} is not the sparse fingerprint of dense_fingerprint and "
            f"top_k {top_k} ({expected}): the metadata was altered"
        )
    if meta.get("fill") != sparse.FILL_RULE:
        check.problems.append(f"sparse fill rule {meta.get('fill')!r}: this code reads {sparse.FILL_RULE!r}")
    return top_k


def _check_array(array_path: Path, shape: tuple[int, ...], check: GroupCheck) -> list[str]:
    """Presence of every chunk (and shard) on disk, then a read of every chunk (crc32c)."""
    name = array_path.name
    try:
        meta = json.loads((array_path / "zarr.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return [f"{name}: missing or unreadable array metadata ({exc})"]
    if tuple(meta.get("shape", ())) != shape:
        return [f"{name}: shape {meta.get('shape')} where the layout says {list(shape)}"]
    problems = check_chunk_presence(array_path, meta)
    if len(problems) > 5:
        problems = [*problems[:5], f"{name}: ... and {len(problems) - 5} more"]
    if problems:
        return problems
    try:
        array = zarr.open_array(array_path, mode="r")
    except Exception as exc:  # zarr raises several types for bad metadata
        return [f"{name}: cannot open ({type(exc).__name__}: {exc})"]
    for region in regions(array.shape, array.shards or array.chunks):
        try:
            values = array[region]
        except Exception as exc:  # crc32c mismatch, truncated or undecodable chunk
            return [f"{name}: corrupt data in rows {region[0].start}:{region[0].stop} ({type(exc).__name__}: {exc})"]
        check.chunks_read += 1
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            return [f"{name}: non-finite values in rows {region[0].start}:{region[0].stop} (unwritten data reads as NaN)"]
    return []


def _check_ids(path: Path, layout: CacheLayout, top_k: int | None = None) -> list[str]:
    """Ids sorted and unique, every column in range (``top_k``: a sparse group's neighbour columns too)."""
    group = zarr.open_group(path, mode="r")
    text_ids, video_ids = read_strings(group[TEXT_IDS]), read_strings(group[VIDEO_IDS])
    text_video = np.asarray(group[TEXT_VIDEO][...])
    problems = []
    if len(set(text_ids)) != len(text_ids) or text_ids != sorted(text_ids):
        problems.append("text_ids: not sorted and unique")
    if len(set(video_ids)) != len(video_ids) or video_ids != sorted(video_ids):
        problems.append("video_ids: not sorted and unique")
    if len(text_video) and (text_video.min() < 0 or text_video.max() >= layout.n_videos):
        problems.append("text_video: column out of range")
    if top_k is not None:
        neighbours = np.sort(np.asarray(group[sparse.NEIGHBOUR_VIDEOS][...]), axis=1)
        if neighbours.size and (neighbours.min() < 0 or neighbours.max() >= layout.n_videos):
            problems.append(f"{sparse.NEIGHBOUR_VIDEOS}: column out of range")
        elif (neighbours[:, 1:] == neighbours[:, :-1]).any():
            problems.append(f"{sparse.NEIGHBOUR_VIDEOS}: a video listed twice in one row")
    return problems


# ---- info ----------------------------------------------------------------------------------------


def cache_info(path: str | Path) -> dict[str, Any]:
    """What a store holds (JSON-able): per group identity, fingerprints, shape, size, completeness;
    plus the progress of groups still being extracted in ``<path>.partial``."""
    path = Path(path)
    groups = [path] if read_group_attributes(path) is not None else [path / n for n in group_names(path)]
    info: dict[str, Any] = {"path": str(path), "bytes": tree_bytes(path) if path.exists() else 0,
                            "groups": [_group_info(g) for g in groups]}
    partial = partial_path(path)
    if partial.is_dir():
        done = done_units(partial)
        info["in_progress"] = []
        for name in group_names(partial):
            attrs = read_group_attributes(partial / name)
            layout = layout_from_attributes(attrs)
            info["in_progress"].append({"name": name, "kind": attrs["kind"], "fingerprint": attrs["fingerprint"],
                                        "blocks_done": len(done_of(done, name, "block")),
                                        "blocks_total": layout.n_blocks})
    return info


def _group_info(path: Path) -> dict[str, Any]:
    attrs = read_group_attributes(path)
    layout = layout_from_attributes(attrs)
    info = {
        "name": path.name,
        "kind": attrs["kind"],
        "fingerprint": attrs["fingerprint"],
        "frames_fingerprint": attrs["frames_fingerprint"],
        "manifest_fingerprint": attrs["manifest_fingerprint"],
        "checkpoint_sha256": attrs["checkpoint_sha256"],
        "score_version": attrs["score_version"],
        "complete": attrs["complete"],
        "has_frame_relevance": attrs["has_frame_relevance"],
        "texts": layout.n_texts,
        "videos": layout.n_videos,
        "frames_per_video": layout.frames_per_video,
        "blocks": layout.n_blocks,
        "bytes": tree_bytes(path),
        "versions": attrs["versions"],
    }
    sparse = attrs.get("sparse")
    if sparse is None:
        similarity_bytes = tree_bytes(path / SIMILARITY)
        info["similarity_bytes_per_entry"] = similarity_bytes / max(1, layout.n_texts * layout.n_videos)
        return info
    # a sparse group: K scores per caption, not a [texts, videos] matrix; its size is per caption
    top_k = sparse["top_k"]
    score_bytes = sum(tree_bytes(path / name) for name in _sparse_arrays(layout, top_k))
    return info | {"top_k": top_k, "dense_fingerprint": sparse["dense_fingerprint"], "sparse_bytes": score_bytes,
                   "sparse_bytes_per_caption": score_bytes / max(1, layout.n_texts)}


def format_info(info: dict[str, Any]) -> str:
    lines = [f"{info['path']}: {len(info['groups'])} teacher group(s), {info['bytes'] / 1e6:.2f} MB"]
    for g in info["groups"]:
        if "top_k" in g:
            size = f"sparse top-{g['top_k']}: {g['sparse_bytes_per_caption']:.1f} B/caption"
        else:
            size = f"{g['similarity_bytes_per_entry']:.3f} B/similarity"
        lines.append(
            f"  {g['name']}: {g['kind']}, {g['texts']} texts x {g['videos']} videos x {g['frames_per_video']} frames, "
            f"{'complete' if g['complete'] else 'INCOMPLETE'}, {g['bytes'] / 1e6:.2f} MB ({size})"
        )
        lines.append(f"    fingerprint {g['fingerprint']}")
        if "top_k" in g:
            lines.append(f"    dense       {g['dense_fingerprint']}")
        lines.append(f"    frames      {g['frames_fingerprint']}")
        lines.append(f"    manifest    {g['manifest_fingerprint']}")
        lines.append(f"    checkpoint  {g['checkpoint_sha256'] or '(none: pretrained/zero-shot weights)'}")
    for g in info.get("in_progress", []):
        lines.append(f"  {g['name']} (in progress): {g['kind']}, {g['blocks_done']}/{g['blocks_total']} blocks, "
                     f"fingerprint {g['fingerprint']}")
    return "\n".join(lines)


