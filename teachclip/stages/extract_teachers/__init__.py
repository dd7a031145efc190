"""Stage one, part 2: score every train caption against every train video, once per teacher.

``extract_teachers(frames, manifest_dir, out, requests, config, compute)`` fills
``teachers.zarr/<name>/`` (schema in :mod:`teachclip.stores.teacher_cache`, docs/teacher-cache.md).
Which teachers: :mod:`.requests`; the units of work and the worker side: :mod:`.worker`.

The work is cut into video units (features of ``encode_batch`` videos, computed once and shared
through scratch files) and blocks (``block_texts`` captions x every video = one shard file of each
score array), described in :mod:`.worker`. Every unit is deterministic in the arguments, never in the
worker count, so one worker and two workers give byte-identical stores.

The driver records a completion marker after each unit, so a killed run resumes with the missing
units only, and publishes the group when every block is written (the partial/publish protocol of
:mod:`teachclip.stores.teacher_cache.publish`).

With ``extract.candidates`` set, each group is a *candidate group* (a sparse group written directly):
a retriever proposes each caption's columns first (:mod:`.candidates`), and a block scores each of its
captions against its own video and those columns only. Same units, resume, publish and sharing.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from teachclip.core.config import BackboneConfig, ComputeConfig, ExtractConfig
from teachclip.core.fingerprint import short
from teachclip.core.manifest import load_manifest
from teachclip.core.parallel import compute_client, map_unordered
from teachclip.core.progress import progress_bar
from teachclip.models.io import software_versions
from teachclip.stages.extract_teachers.candidates import CandidatePlan, plan_candidates, propose_candidates
from teachclip.stages.extract_teachers.requests import (
    ExtractError,
    TeacherRequest,
    identity_of,
    resolve_teachers,
)
from teachclip.stages.extract_teachers.worker import (
    CacheRows,
    block_units,
    cache_rows,
    describe_teacher,
    encode_video_unit,
    score_block,
    teacher_on_workers,
    video_units,
)
from teachclip.stores import open_video_store, require_manifest
from teachclip.stores.teacher_cache.dense import create_group
from teachclip.stores.teacher_cache.publish import (
    block_unit,
    discard_partial_group,
    done_of,
    publish_groups,
    scratch_path,
    video_unit,
)
from teachclip.stores.teacher_cache.remote import fetch_into
from teachclip.stores.teacher_cache.schema import (
    CacheLayout,
    TeacherIdentity,
    check_store_or_absent,
    plan_layout,
    plan_sparse_layout,
    read_group_attributes,
)
from teachclip.stores.teacher_cache.sparse import candidate_fingerprint, create_candidate_group
from teachclip.stores.zarr_io import done_units, mark_done, partial_path, tree_bytes

__all__ = ["ExtractError", "ExtractReport", "TeacherRequest", "extract_teachers", "resolve_teachers"]


@dataclass
class TeacherReport:
    name: str
    kind: str
    fingerprint: str
    status: str  # "computed", "resumed", "cached" (already in the store), "pulled" (from the shared cache)
    n_texts: int = 0
    n_videos: int = 0
    blocks_total: int = 0
    blocks_computed: int = 0
    pairs_computed: int = 0
    seconds: float = 0.0  # the whole teacher: loading it, encoding videos, scoring
    evaluations: int = 0  # (caption, video) pairs the whole group holds scores of: texts x videos when dense
    scoring_seconds: float = 0.0  # the blocks alone (what pairs/s measures)

    @property
    def pairs_per_second(self) -> float:
        return self.pairs_computed / self.scoring_seconds if self.scoring_seconds > 0 else 0.0

    def line(self) -> str:
        work = (f"{self.blocks_computed}/{self.blocks_total} blocks computed, {self.pairs_per_second:,.0f} pairs/s"
                if self.status in ("computed", "resumed") else "nothing computed")
        dense = self.n_texts * self.n_videos
        scored = (f"; candidates: {self.evaluations:,} teacher evaluations = "
                  f"{100 * self.evaluations / max(1, dense):.2f}% of dense") if self.evaluations != dense else ""
        return (f"{self.name} ({self.kind}, {short(self.fingerprint)}): {self.status}; "
                f"{self.n_texts} texts x {self.n_videos} videos{scored}; {work}; {self.seconds:.1f} s")


@dataclass
class ExtractReport:
    out: Path
    teachers: list[TeacherReport] = field(default_factory=list)

    def summary(self) -> str:
        size = tree_bytes(self.out) if self.out.exists() else 0
        return "\n".join([*(t.line() for t in self.teachers),
                          f"{self.out}: {len(self.teachers)} teacher(s), {size / 1e6:.2f} MB"])


def extract_teachers(
    frames: str | Path,
    manifest_dir: str | Path,
    out: str | Path,
    requests: Sequence[TeacherRequest],
    config: ExtractConfig,
    compute: ComputeConfig,
    overwrite: bool = False,
    progress: bool = True,
    retriever_backbone: BackboneConfig | None = None,
) -> ExtractReport:
    """Fill ``out`` with one group per requested teacher; see the module docstring. The manifest is
    checked against the frames store before anything is computed. ``retriever_backbone``: the towers
    of ``extract.candidates.retriever: clip`` (the CLI passes ``student.backbone``)."""
    frames_path, manifest_dir, out = Path(frames).resolve(), Path(manifest_dir).resolve(), Path(out).resolve()
    partial = partial_path(out)
    check_store_or_absent(out)
    check_store_or_absent(partial)
    frames_store = open_video_store(frames_path)
    manifest = load_manifest(manifest_dir)
    rows = cache_rows(frames_store, manifest)
    plan: CandidatePlan | None = None
    if config.candidates is None:
        layout = plan_layout(len(rows.caption_ids), len(rows.video_ids), frames_store.frames_per_video,
                             config.block_texts, config.chunk_texts, config.block_videos, config.memory_budget_mb)
    else:
        layout = plan_sparse_layout(len(rows.caption_ids), len(rows.video_ids), frames_store.frames_per_video,
                                    config.block_texts)
        plan = plan_candidates(config.candidates, retriever_backbone or BackboneConfig(), layout, partial)
    report = ExtractReport(out)

    todo = []
    for request in requests:
        identity = identity_of(request, frames_store.fingerprint, frames_store.manifest_fingerprint)
        wanted = group_fingerprint(identity, plan)
        status = prepare_group(partial, out, request.name, wanted, overwrite)
        if status == "new" and config.shared_cache and fetch_into(config.shared_cache, wanted, partial, request.name):
            status = "pulled"
        evaluations = layout.n_texts * (layout.n_videos if plan is None else plan.columns + 1)
        entry = TeacherReport(request.name, identity.kind, wanted, status, layout.n_texts, layout.n_videos,
                              layout.n_blocks, evaluations=evaluations)
        report.teachers.append(entry)
        if status in ("new", "resumed"):
            entry.status = "computed" if status == "new" else "resumed"
            todo.append((request, identity, entry))

    if todo:  # the manifest's captions become the rows of the cache: it must be the frames' own
        require_manifest(frames_store, manifest)
        with compute_client(compute) as (client, resources), progress_bar(progress) as bar:
            versions = software_versions()
            if plan is not None:  # once for every teacher of the run (files per block: resumable)
                propose_candidates(plan, frames_store, rows, layout, retriever_backbone or BackboneConfig(),
                                   compute.device, config.encode_batch, bar)
            for request, identity, entry in todo:
                run_teacher(client, resources, bar, request, identity, entry, rows, layout, partial,
                            frames_path, manifest_dir, config, compute, versions, plan)
    finished = [t.name for t in report.teachers if t.status != "cached"]
    if finished:
        publish_groups(partial, out, finished)
    return report


def group_fingerprint(identity: TeacherIdentity, plan: CandidatePlan | None) -> str:
    """The fingerprint of the group a request produces: the teacher's (dense), or the candidate
    group's (the teacher's, the retriever's, k, random and seed)."""
    if plan is None:
        return identity.fingerprint
    return candidate_fingerprint(identity.fingerprint, plan.retriever_fingerprint, plan.config.k, plan.config.random,
                                 plan.config.seed)


def prepare_group(partial: Path, out: Path, name: str, wanted: str, overwrite: bool) -> str:
    """Decide what to do with one group: "cached" (done), "resumed" (partial work kept) or "new".

    A finished or partial group with another fingerprint is refused, naming both, unless
    ``overwrite``; with ``overwrite`` a finished group is recomputed, while partial work of the very
    same fingerprint is still resumed (it is exactly what would be recomputed).
    """
    finished = read_group_attributes(out / name)
    if finished is not None and not overwrite:
        if finished["fingerprint"] != wanted:
            raise ExtractError(
                f"{out / name}: holds teacher cache {finished['fingerprint']}, but the requested teacher "
                f"{name!r} on these frames has fingerprint {wanted}; pass --overwrite to replace it"
            )
        if finished.get("complete"):
            return "cached"
    if finished is not None and overwrite:
        shutil.rmtree(out / name)
    started = read_group_attributes(partial / name)
    if started is not None and started["fingerprint"] != wanted:
        if not overwrite:
            raise ExtractError(
                f"{partial / name}: unfinished teacher cache {started['fingerprint']}, but the requested teacher "
                f"{name!r} has fingerprint {wanted}; pass --overwrite to discard it"
            )
        discard_partial_group(partial, name)
        started = None
    return "resumed" if started is not None else "new"


def run_teacher(
    client: Any,
    resources: dict[str, float] | None,
    bar: Any,
    request: TeacherRequest,
    identity: TeacherIdentity,
    entry: TeacherReport,
    rows: CacheRows,
    layout: CacheLayout,
    partial: Path,
    frames_path: Path,
    manifest_dir: Path,
    config: ExtractConfig,
    compute: ComputeConfig,
    versions: dict[str, str],
    plan: CandidatePlan | None = None,
) -> None:
    """Compute the missing video units and blocks of one teacher's group in ``partial``."""
    name = request.name
    group = partial / name
    scratch = scratch_path(partial, name)
    videos = video_units(rows, scratch, config.encode_batch)
    blocks = block_units(rows, layout, group, scratch, len(videos), config, plan)
    wanted = entry.fingerprint
    if _resumable(partial, name, wanted, layout):
        done = done_units(partial)
        videos_left = [u for u in videos if u.index not in done_of(done, name, "videos")]
        blocks_left = [u for u in blocks if u.index not in done_of(done, name, "block")]
    else:
        videos_left, blocks_left = videos, blocks
    if not blocks_left:
        return

    started = time.perf_counter()
    with teacher_on_workers(client, request, identity, frames_path, manifest_dir, compute) as runtime:
        if not _resumable(partial, name, wanted, layout):
            # new, or partial work with another block layout (--block-texts, memory budget): start over
            definitions = next(map_unordered(client, describe_teacher, [0], resources=resources, runtime=runtime))[1]
            discard_partial_group(partial, name)
            if plan is None:
                create_group(partial, name, replace(identity, **definitions), layout, rows.caption_ids,
                             rows.video_ids, rows.text_video, versions)
            else:
                create_candidate_group(partial, name, replace(identity, **definitions), layout, plan.columns,
                                       plan.attributes(layout.n_texts), rows.caption_ids, rows.video_ids,
                                       rows.text_video, versions)
        if videos_left:
            task = bar.add_task(f"{name} videos", total=len(videos), completed=len(videos) - len(videos_left), status="")
            for unit, _ in map_unordered(client, encode_video_unit, videos_left, resources=resources, runtime=runtime):
                mark_done(partial, video_unit(name, unit.index))
                bar.advance(task)
        task = bar.add_task(f"{name} blocks", total=len(blocks), completed=len(blocks) - len(blocks_left), status="")
        scoring_started = time.perf_counter()
        for unit, pairs in map_unordered(client, score_block, blocks_left, resources=resources, runtime=runtime):
            mark_done(partial, block_unit(name, unit.index))
            entry.blocks_computed += 1
            entry.pairs_computed += pairs
            entry.scoring_seconds = time.perf_counter() - scoring_started
            bar.update(task, advance=1, status=f"{entry.pairs_per_second:,.0f} pairs/s")
    entry.seconds = time.perf_counter() - started


def _resumable(partial: Path, name: str, wanted: str, layout: CacheLayout) -> bool:
    """Partial work of this very fingerprint and block layout is there to continue."""
    attrs = read_group_attributes(partial / name)
    return attrs is not None and attrs["fingerprint"] == wanted and attrs["layout"] == asdict(layout)
