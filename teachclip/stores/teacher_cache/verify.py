"""Check and describe teacher caches: ``teach cache verify`` and ``teach cache info``.

``verify`` validates the attributes (types, ranges, layout), checks the identity they record against
the fingerprint (dense and sparse groups), every array's metadata against the layout, demands every
chunk and shard on disk (Zarr would read an absent one as its fill value without a word), checks the
ids (sorted, unique, columns in range: always, even when something else is wrong), then reads every
value once (crc32c, finite scores, neighbour columns) and recomputes the **content hash**, which
must equal the recorded ``content_sha256``. The fingerprint says "computed from these inputs" (a
claim only a recomputation can check); the content hash says "these exact values" (verify proves
it). Groups completed before content hashes existed pass with the note "no content hash".
``info`` lists what a store holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from teachclip.stores.teacher_cache import sparse
from teachclip.stores.teacher_cache.checks import (
    check_group_files,
    check_ids,
    read_ids,
    scan_group,
)
from teachclip.stores.teacher_cache.publish import done_of
from teachclip.stores.teacher_cache.schema import (
    SIMILARITY,
    TEXT_IDS,
    TEXT_VIDEO,
    VIDEO_IDS,
    GroupAttributes,
    TeacherCacheError,
    group_names,
    identity_from_attributes,
    layout_from_attributes,
    parse_group_attributes,
    read_group_attributes,
)
from teachclip.stores.zarr_io import (
    MAX_PROBLEMS,
    done_units,
    partial_path,
    tree_bytes,
)

NO_CONTENT_HASH = "no content hash (completed before content hashes existed): its values cannot be proven"


@dataclass
class GroupCheck:
    path: Path
    chunks_read: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what verify could not prove, without being a problem
    content_sha256: str | None = None  # recomputed from the values (when every value could be read)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, problems: list[str]) -> None:
        """Add problems (no repeats), keeping the list bounded."""
        for problem in problems:
            if problem not in self.problems and len(self.problems) < 4 * MAX_PROBLEMS:
                self.problems.append(problem)


def verify_store(path: str | Path) -> list[GroupCheck]:
    """Check every group of a store (or one group): completeness, identity, every chunk's presence
    and crc32c checksum, the content hash. Intact only if every returned check has no problems."""
    path = Path(path)
    try:
        if read_group_attributes(path) is not None:
            return [verify_group(path)]
    except TeacherCacheError:
        return [verify_group(path)]
    names = group_names(path)
    if not names:
        check = GroupCheck(path)
        check.problems.append("no teacher groups here" if path.exists() else "not found")
        return [check]
    return [verify_group(path / name) for name in names]


def verify_group(path: str | Path, require_complete: bool = True) -> GroupCheck:
    """The checks of :func:`verify_store` for one group, dense or sparse (``teach cache sparsify``).
    ``require_complete=False``: the same checks for a group about to be completed (import)."""
    path = Path(path)
    check = GroupCheck(path)
    try:
        raw = read_group_attributes(path)
    except TeacherCacheError as exc:
        check.problems.append(str(exc))
        return check
    if raw is None:
        check.problems.append("not a teacher cache group")
        return check
    attrs = parse_group_attributes(raw, path / "zarr.json")
    if require_complete and not attrs.complete:
        check.problems.append("incomplete: the extraction that writes it has not finished")
    identity = identity_from_attributes(raw)
    if attrs.sparse is not None:
        _check_sparse_identity(attrs, identity, check)
    elif identity.fingerprint != attrs.fingerprint:
        check.problems.append(
            f"fingerprint {attrs.fingerprint} does not match the identity in the attributes "
            f"({identity.fingerprint}): the metadata was altered"
        )
    grids, file_problems = check_group_files(path, attrs)
    check.add(file_problems)
    check.add(_id_problems(path, attrs, file_problems))
    if file_problems:
        return check
    scan = scan_group(path, attrs, grids)
    check.chunks_read = scan.reads
    check.add(scan.problems)
    check.content_sha256 = scan.content_sha256
    if scan.content_sha256 is not None:
        if attrs.content_sha256 is None:
            if attrs.complete:
                check.notes.append(NO_CONTENT_HASH)
        elif attrs.content_sha256 != scan.content_sha256:
            check.add([f"content hash {attrs.content_sha256} recorded, but the values hash to {scan.content_sha256}: "
                       f"the data or its metadata was altered"])
    return check


def _id_problems(path: Path, attrs: GroupAttributes, file_problems: list[str]) -> list[str]:
    """The id checks (sorted unique ids, text_video in range), run whenever the id arrays are intact,
    whatever else is wrong."""
    damaged = {p.split(":", 1)[0] for p in file_problems}
    if damaged & {TEXT_IDS, VIDEO_IDS, TEXT_VIDEO}:
        return []
    try:
        text_ids = read_ids(path / TEXT_IDS, attrs.layout.n_texts)
        video_ids = read_ids(path / VIDEO_IDS, attrs.layout.n_videos)
        text_video = np.asarray(zarr.open_array(path / TEXT_VIDEO, mode="r")[...])
    except TeacherCacheError as exc:
        return [str(exc)]
    except Exception as exc:  # a corrupt text_video chunk
        return [f"{TEXT_VIDEO}: corrupt data ({type(exc).__name__}: {exc})"]
    return check_ids(text_ids, video_ids, text_video, attrs.layout.n_videos)


def _check_sparse_identity(attrs: GroupAttributes, identity, check: GroupCheck) -> None:
    """A sparse group's identity: its dense source's (recomputed from the attributes) and its own
    fingerprint ``sparse_fingerprint(dense_fingerprint, top_k)``."""
    meta = attrs.sparse
    assert meta is not None
    if identity.fingerprint != meta.dense_fingerprint:
        check.problems.append(
            f"sparse dense_fingerprint {meta.dense_fingerprint} does not match the identity in the attributes "
            f"({identity.fingerprint}): the metadata was altered"
        )
    candidates = meta.candidates
    if candidates is None:
        expected = sparse.sparse_fingerprint(meta.dense_fingerprint, meta.top_k)
        inputs = f"dense_fingerprint and top_k {meta.top_k}"
    else:  # a candidate group: the teacher, the retriever and which columns were scored
        expected = sparse.candidate_fingerprint(meta.dense_fingerprint, candidates.retriever.fingerprint, candidates.k,
                                                candidates.random, candidates.seed)
        inputs = f"dense_fingerprint, the retriever, k {candidates.k}, random {candidates.random}, seed {candidates.seed}"
        if candidates.teacher_evaluations != attrs.layout.n_texts * (meta.top_k + 1):
            check.problems.append(f"sparse.candidates.teacher_evaluations {candidates.teacher_evaluations} is not "
                                  f"texts x (columns + 1) = {attrs.layout.n_texts * (meta.top_k + 1)}")
    if attrs.fingerprint != expected:
        check.problems.append(
            f"fingerprint {attrs.fingerprint} is not the sparse fingerprint of {inputs} ({expected}): "
            f"the metadata was altered"
        )
    if meta.fill != sparse.fill_rule(meta):
        check.problems.append(f"sparse fill rule {meta.fill!r}: this code reads {sparse.fill_rule(meta)!r}")


def _sparse_arrays(layout, top_k: int) -> dict[str, tuple[int, ...]]:
    """The score arrays of a sparse group (:mod:`teachclip.stores.teacher_cache.sparse`) and their shapes."""
    return {
        sparse.NEIGHBOUR_VIDEOS: (layout.n_texts, top_k),
        sparse.NEIGHBOUR_SCORES: (layout.n_texts, top_k),
        sparse.OWN_SCORE: (layout.n_texts,),
        sparse.REST_MEAN: (layout.n_texts,),
    }


# ---- info ----------------------------------------------------------------------------------------


def cache_info(path: str | Path) -> dict[str, Any]:
    """What a store holds (JSON-able): per group identity, fingerprints, content hash, shape, size,
    completeness; plus the progress of groups still being extracted in ``<path>.partial``. A group
    whose metadata cannot be used is listed with its ``error``."""
    path = Path(path)
    try:
        single = read_group_attributes(path) is not None
    except TeacherCacheError:
        single = True
    groups = [path] if single else [path / n for n in group_names(path)]
    info: dict[str, Any] = {"path": str(path), "bytes": tree_bytes(path) if path.exists() else 0,
                            "groups": [_group_info(g) for g in groups]}
    partial = partial_path(path)
    if partial.is_dir():
        done = done_units(partial)
        info["in_progress"] = []
        for name in group_names(partial):
            try:
                attrs = parse_group_attributes(read_group_attributes(partial / name), partial / name / "zarr.json")
            except TeacherCacheError as exc:
                info["in_progress"].append({"name": name, "error": str(exc)})
                continue
            info["in_progress"].append({"name": name, "kind": attrs.kind, "fingerprint": attrs.fingerprint,
                                        "blocks_done": len(done_of(done, name, "block")),
                                        "blocks_total": layout_from_attributes(attrs.model_dump()).n_blocks})
    return info


def _group_info(path: Path) -> dict[str, Any]:
    try:
        raw = read_group_attributes(path)
        if raw is None:
            raise TeacherCacheError(f"{path}: not a teacher cache group")
        attrs = parse_group_attributes(raw, path / "zarr.json")
    except TeacherCacheError as exc:
        return {"name": path.name, "error": str(exc)}
    layout = layout_from_attributes(raw)
    info = {
        "name": path.name,
        "kind": attrs.kind,
        "fingerprint": attrs.fingerprint,
        "content_sha256": attrs.content_sha256,
        "frames_fingerprint": attrs.frames_fingerprint,
        "manifest_fingerprint": attrs.manifest_fingerprint,
        "checkpoint_sha256": attrs.checkpoint_sha256,
        "score_version": attrs.score_version,
        "complete": attrs.complete,
        "has_frame_relevance": attrs.has_frame_relevance,
        "texts": layout.n_texts,
        "videos": layout.n_videos,
        "frames_per_video": layout.frames_per_video,
        "blocks": layout.n_blocks,
        "bytes": tree_bytes(path),
        "versions": attrs.versions,
    }
    if attrs.sparse is None:
        similarity_bytes = tree_bytes(path / SIMILARITY)
        info["similarity_bytes_per_entry"] = similarity_bytes / max(1, layout.n_texts * layout.n_videos)
        return info
    # a sparse group: K scores per caption, not a [texts, videos] matrix; its size is per caption
    top_k = attrs.sparse.top_k
    score_bytes = sum(tree_bytes(path / name) for name in _sparse_arrays(layout, top_k))
    info |= {"top_k": top_k, "dense_fingerprint": attrs.sparse.dense_fingerprint, "sparse_bytes": score_bytes,
             "sparse_bytes_per_caption": score_bytes / max(1, layout.n_texts)}
    candidates = attrs.sparse.candidates
    if candidates is not None:  # what the teacher did, against a dense extraction's texts x videos
        info["candidates"] = candidates.model_dump() | {
            "dense_evaluations": layout.n_texts * layout.n_videos,
            "evaluation_fraction": candidates.teacher_evaluations / max(1, layout.n_texts * layout.n_videos)}
    return info


def format_info(info: dict[str, Any]) -> str:
    lines = [f"{info['path']}: {len(info['groups'])} teacher group(s), {info['bytes'] / 1e6:.2f} MB"]
    for g in info["groups"]:
        if "error" in g:
            lines.append(f"  {g['name']}: UNREADABLE: {g['error']}")
            continue
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
        if "candidates" in g:
            c = g["candidates"]
            lines.append(f"    candidates  {c['k']} from retriever {c['retriever']['kind']} "
                         f"({c['retriever']['fingerprint'][:12]}) + {c['random']} random (seed {c['seed']}); "
                         f"{c['teacher_evaluations']:,} teacher evaluations = {100 * c['evaluation_fraction']:.2f}% "
                         f"of dense")
        lines.append(f"    content     {g['content_sha256'] or '(no content hash: completed before content hashes existed)'}")
        lines.append(f"    frames      {g['frames_fingerprint']}")
        lines.append(f"    manifest    {g['manifest_fingerprint']}")
        lines.append(f"    checkpoint  {g['checkpoint_sha256'] or '(none: pretrained/zero-shot weights)'}")
    for g in info.get("in_progress", []):
        if "error" in g:
            lines.append(f"  {g['name']} (in progress): UNREADABLE: {g['error']}")
            continue
        lines.append(f"  {g['name']} (in progress): {g['kind']}, {g['blocks_done']}/{g['blocks_total']} blocks, "
                     f"fingerprint {g['fingerprint']}")
    return "\n".join(lines)
