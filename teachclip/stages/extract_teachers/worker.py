"""The units of work of ``extract-teachers`` and the worker side that runs them (on dask or in process).

1. *Video units* of ``encode_batch`` videos: a worker reads their frames, runs ``encode_videos``
   and writes the features to ``<out>.partial/_scratch/<name>/videos-NNNNNN.safetensors``.
   Features are computed once per video and shared with every worker through these files (rather
   than scattered through the scheduler): they survive a killed run, so a resume never re-encodes
   a video, and a worker on another machine reads them like it writes the output store.
2. *Blocks* of ``layout.block_texts`` captions x every video, one shard file of each score array:
   a worker encodes the block's captions once (each caption belongs to exactly one block), loads
   the video features once per worker (cached by its runtime), scores them in sub-blocks sized by
   the memory budget, and writes whole shards only (zarr-python 3 has no locks).

A worker plugin (:class:`TeacherPlugin`) loads the teacher once per worker; tasks find it by name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin
from safetensors.torch import load_file, save_file

from teachclip.core.config import ComputeConfig, ExtractConfig
from teachclip.core.device import autocast, pick_device
from teachclip.core.fingerprint import short
from teachclip.core.manifest import load_manifest, split_data
from teachclip.models.factory import create_teacher
from teachclip.models.scorer import batch_size, cat_features, features_to, slice_features
from teachclip.stages.extract_teachers.requests import ExtractError, TeacherRequest, load_failure
from teachclip.stores import open_video_store
from teachclip.stores.teacher_cache.dense import write_block
from teachclip.stores.teacher_cache.schema import SPLIT, CacheLayout, TeacherIdentity
from teachclip.stores.teacher_cache.sparse import write_candidate_block

BUILD_SEED = 0  # any weights a checkpoint does not overwrite are drawn alike on every worker
# a scoring sub-block may use this many bytes per (text, video) pair and feature element: the
# teachers' per-pair intermediates (attention logits, pooled vectors) are a few feature-sized tensors
WORKSPACE_FACTOR = 4


@dataclass(frozen=True)
class CacheRows:
    """The canonical rows and columns of every group computed from one frames store (the cache's
    ``order``: captions sorted by caption id, videos by video id)."""

    caption_ids: list[str]
    texts: list[str]
    caption_videos: list[str]  # each caption's own video id
    video_ids: list[str]
    frame_rows: np.ndarray  # row of each video in the frames store
    text_video: np.ndarray  # int32: column of each caption's own video


@dataclass(frozen=True)
class VideoUnit:
    index: int
    video_ids: list[str]
    frame_rows: np.ndarray
    scratch: Path  # where this unit's features go

    @property
    def file(self) -> Path:
        return video_feature_file(self.scratch, self.index)


def video_feature_file(scratch: Path, unit: int) -> Path:
    return scratch / f"videos-{unit:06d}.safetensors"


@dataclass(frozen=True)
class BlockUnit:
    index: int
    group: Path
    caption_ids: list[str]
    texts: list[str]
    caption_videos: list[str]
    own_columns: np.ndarray
    scratch: Path
    n_video_units: int
    memory_budget_mb: int
    encode_batch: int
    # candidate extraction: the block's columns file (.candidates); None: score every video (dense)
    candidates: Path | None = None
    random_columns: int = 0  # of them, the last ones are random videos (the first ones retrieved)


def video_units(rows: CacheRows, scratch: Path, encode_batch: int) -> list[VideoUnit]:
    return [
        VideoUnit(i, rows.video_ids[start : start + encode_batch], rows.frame_rows[start : start + encode_batch],
                  scratch)
        for i, start in enumerate(range(0, len(rows.video_ids), encode_batch))
    ]


def block_units(
    rows: CacheRows, layout: CacheLayout, group: Path, scratch: Path, n_video_units: int, config: ExtractConfig,
    candidates: Any = None,
) -> list[BlockUnit]:
    """The blocks of one group; ``candidates``: the run's CandidatePlan (None: dense blocks)."""
    units = []
    for block in range(layout.n_blocks):
        start, stop = layout.block_rows(block)
        units.append(BlockUnit(
            index=block, group=group, caption_ids=rows.caption_ids[start:stop],
            texts=rows.texts[start:stop], caption_videos=rows.caption_videos[start:stop],
            own_columns=rows.text_video[start:stop].astype(np.int64), scratch=scratch,
            n_video_units=n_video_units, memory_budget_mb=config.memory_budget_mb,
            encode_batch=config.encode_batch,
            candidates=None if candidates is None else candidates.block_file(block),
            random_columns=0 if candidates is None else candidates.random,
        ))
    return units


# ---- the worker side ---------------------------------------------------------------------------------


class TeacherRuntime:
    """A teacher loaded once on one worker (or in this process), with what its tasks reuse."""

    def __init__(self, request: TeacherRequest, frames_path: Path, manifest_dir: Path, device: str):
        self.request = request
        self.frames_path = frames_path
        self.manifest_dir = manifest_dir
        self.device_name = device
        self.teacher: Any = None
        self.device: Any = None
        self._frames: Any = None
        self._video_features: dict[Path, Any] = {}

    def load(self, worker_index: int = 0) -> TeacherRuntime:
        device = pick_device(self.device_name)
        pinned = "CUDA_VISIBLE_DEVICES" in os.environ  # dask-cuda (or the user) gave this process its GPU
        if device.type == "cuda" and device.index is None and not pinned and torch.cuda.device_count() > 1:
            # a plain LocalCluster: every worker sees every GPU, so worker i takes GPU i
            device = torch.device("cuda", worker_index % torch.cuda.device_count())
        self.device = device
        try:
            self.teacher = load_request_teacher(self.request).to(device).eval()
        except Exception as exc:  # bad checkpoint, missing pretrained weights, unknown model name
            raise ExtractError(load_failure(self.request, exc)) from exc
        self.teacher.bind_manifest(load_manifest(self.manifest_dir))
        return self

    @property
    def amp(self) -> bool:
        return self.request.config.backbone.precision == "amp"

    def frames(self) -> Any:
        if self._frames is None:
            self._frames = open_video_store(self.frames_path)
            self._frames.check_model(self.teacher)  # frame features only serve the tower that made them
        return self._frames

    def video_features(self, scratch: Path, n_units: int) -> dict[str, Any]:
        """Every train video's features, read from the scratch files once per worker."""
        if scratch not in self._video_features:
            parts = [load_file(str(video_feature_file(scratch, i))) for i in range(n_units)]
            # one teacher's features at a time: a worker never holds two feature sets
            self._video_features = {scratch: features_to(cat_features(parts), self.device)}
        return self._video_features[scratch]


def load_request_teacher(request: TeacherRequest) -> Any:
    """The teacher model of a request, with its trained weights when a checkpoint is given.

    Built under a fixed seed (without touching the caller's RNG): a parameter that neither the
    pretrained backbone nor the checkpoint sets must not differ between workers or between a run
    and its resume.
    """
    config = request.config
    if request.checkpoint is not None and config.checkpoint != request.checkpoint:
        # the cache records the request's checkpoint hash, so the weights must come from it too
        config = config.model_copy(update={"checkpoint": str(request.checkpoint)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BUILD_SEED)
        return create_teacher(config)


def encode_video_unit(unit: VideoUnit, runtime: Any) -> int:
    """Encode one unit of videos and write their features to the unit's scratch file."""
    runtime = resolve_runtime(runtime)
    frames, mask = runtime.frames().read(unit.frame_rows)
    batch = {"frames": torch.from_numpy(np.asarray(frames)), "mask": torch.from_numpy(np.asarray(mask, dtype=bool)),
             "video_ids": list(unit.video_ids)}
    with torch.inference_mode(), autocast(runtime.device, runtime.amp):
        features = runtime.teacher.encode_videos(batch)
    unit.scratch.mkdir(parents=True, exist_ok=True)
    tmp = unit.file.with_suffix(".tmp")
    save_file({key: value.detach().cpu().contiguous() for key, value in features.items()}, str(tmp))
    tmp.replace(unit.file)
    return len(unit.video_ids)


def score_block(unit: BlockUnit, runtime: Any) -> int:
    """Score one block of captions against every video (or, for candidate extraction, against its
    own video and its candidate columns) and write it; returns the pairs scored."""
    runtime = resolve_runtime(runtime)
    if unit.candidates is not None:
        return score_candidate_block(unit, runtime)
    teacher = runtime.teacher
    videos = runtime.video_features(unit.scratch, unit.n_video_units)
    n_texts, n_videos = len(unit.caption_ids), batch_size(videos)
    with torch.inference_mode(), autocast(runtime.device, runtime.amp):
        texts = encode_block_texts(unit, teacher)
        step_texts, step_videos = sub_block(texts, videos, n_texts, n_videos, unit.memory_budget_mb)
        similarity = np.empty((n_texts, n_videos), dtype=np.float32)
        for t0 in range(0, n_texts, step_texts):
            text_slice = slice_features(texts, t0, t0 + step_texts)
            for v0 in range(0, n_videos, step_videos):
                scores = teacher.score(text_slice, slice_features(videos, v0, v0 + step_videos))
                similarity[t0 : t0 + step_texts, v0 : v0 + step_videos] = scores.float().cpu().numpy()
        relevance = None
        if teacher.has_frame_relevance:
            own = torch.as_tensor(unit.own_columns, device=runtime.device)
            relevance = np.concatenate([
                teacher.relevance(slice_features(texts, t0, t0 + step_texts),
                                  {key: value[own[t0 : t0 + step_texts]] for key, value in videos.items()})
                .float().cpu().numpy()
                for t0 in range(0, n_texts, step_texts)
            ])
    write_block(unit.group, unit.index, similarity, relevance)
    return n_texts * n_videos


def encode_block_texts(unit: BlockUnit, teacher: Any) -> dict[str, Any]:
    """The teacher's features of the block's captions, ``encode_batch`` at a time."""
    text_parts = []
    for start in range(0, len(unit.caption_ids), unit.encode_batch):
        stop = start + unit.encode_batch
        batch = teacher.text_batch(unit.texts[start:stop], unit.caption_ids[start:stop],
                                   unit.caption_videos[start:stop])
        text_parts.append(teacher.encode_texts(batch))
    return cat_features(text_parts)


def score_candidate_block(unit: BlockUnit, runtime: TeacherRuntime) -> int:
    """Candidate extraction: each caption against its own video and its K columns only, one ``score``
    call of 1 x (K + 1) pairs per caption (the teachers have no pairwise API, and a shared column set
    per block would cost block x union evaluations). ``rest_mean`` = the mean score of the row's
    random columns (the last ``random_columns`` of the file), or its lowest score when
    every other video is a column."""
    teacher = runtime.teacher
    videos = runtime.video_features(unit.scratch, unit.n_video_units)
    columns = np.load(unit.candidates, allow_pickle=False).astype(np.int64)
    n_texts = len(unit.caption_ids)
    if columns.shape[0] != n_texts:
        raise ExtractError(f"{unit.candidates}: {columns.shape[0]} rows of candidates for a block of {n_texts} captions")
    n_random = unit.random_columns
    scores = np.empty((n_texts, columns.shape[1] + 1), dtype=np.float32)
    with torch.inference_mode(), autocast(runtime.device, runtime.amp):
        texts = encode_block_texts(unit, teacher)
        pairs = torch.as_tensor(np.concatenate([unit.own_columns[:, None], columns], axis=1), device=runtime.device)
        for row in range(n_texts):
            chosen = {key: value[pairs[row]] for key, value in videos.items()}
            scores[row] = teacher.score(slice_features(texts, row, row + 1), chosen).float().cpu().numpy()[0]
        relevance = None
        if teacher.has_frame_relevance:
            own = torch.as_tensor(unit.own_columns, device=runtime.device)
            step = max(1, unit.encode_batch)
            relevance = np.concatenate([
                teacher.relevance(slice_features(texts, t0, t0 + step),
                                  {key: value[own[t0 : t0 + step]] for key, value in videos.items()})
                .float().cpu().numpy()
                for t0 in range(0, n_texts, step)
            ])
    stored = scores[:, 1:]
    rest = stored[:, -n_random:].mean(axis=1) if n_random else stored.min(axis=1)
    write_candidate_block(unit.group, unit.index, columns, stored, scores[:, 0], rest, relevance)
    return int(scores.size)


def sub_block(texts: dict, videos: dict, n_texts: int, n_videos: int, memory_budget_mb: int) -> tuple[int, int]:
    """Texts x videos per ``score`` call so that its workspace fits half the memory budget."""
    elements = sum(v[0].numel() for v in texts.values()) + sum(v[0].numel() for v in videos.values())
    pair_bytes = WORKSPACE_FACTOR * 4 * max(1, elements)
    pairs = max(1, (memory_budget_mb << 20) // 2 // pair_bytes)
    step_videos = max(1, min(n_videos, pairs))
    step_texts = max(1, min(n_texts, pairs // step_videos))
    return step_texts, step_videos


# ---- dask: one teacher per worker, loaded once -----------------------------------------------------


def plugin_name(request: TeacherRequest, fingerprint: str) -> str:
    return f"teachclip-teacher-{request.name}-{short(fingerprint)}"


class TeacherPlugin(WorkerPlugin):
    """A dask WorkerPlugin that loads the teacher once per worker; tasks find it by name."""

    def __init__(self, request: TeacherRequest, frames: Path, manifest_dir: Path, device: str, threads: int):
        self.args = (request, frames, manifest_dir, device)
        self.threads = threads
        self.runtime: TeacherRuntime | None = None

    def setup(self, worker: Any) -> None:
        torch.set_num_threads(self.threads)  # the same thread count on every worker: same numerics
        index = worker.name if isinstance(worker.name, int) else 0
        self.runtime = TeacherRuntime(*self.args).load(index)

    def teardown(self, worker: Any) -> None:
        self.runtime = None


def resolve_runtime(runtime: TeacherRuntime | str) -> TeacherRuntime:
    """A task gets the runtime itself (in-process) or the name of the worker plugin holding it."""
    if isinstance(runtime, TeacherRuntime):
        return runtime
    return get_worker().plugins[runtime].runtime


def describe_teacher(_: int, runtime: TeacherRuntime | str) -> dict[str, Any]:
    """The score definitions of the loaded teacher (instance properties: they may depend on options)."""
    teacher = resolve_runtime(runtime).teacher
    has_relevance = bool(teacher.has_frame_relevance)
    return {"has_frame_relevance": has_relevance, "similarity_definition": str(teacher.similarity_definition),
            "relevance_definition": str(teacher.relevance_definition) if has_relevance else ""}


@contextlib.contextmanager
def teacher_on_workers(client: Any, request: TeacherRequest, identity: TeacherIdentity, frames_path: Path,
                        manifest_dir: Path, compute: ComputeConfig) -> Iterator[TeacherRuntime | str]:
    """Load the teacher once per worker (a worker plugin), or once here without dask."""
    if client is None:
        yield TeacherRuntime(request, frames_path, manifest_dir, compute.device).load()
        return
    name = plugin_name(request, identity.fingerprint)
    plugin = TeacherPlugin(request, frames_path, manifest_dir, compute.device, compute.threads_per_worker)
    try:
        client.register_plugin(plugin, name=name)
    except ExtractError:
        raise
    except Exception as exc:  # raised on a worker while loading the teacher
        raise ExtractError(load_failure(request, exc)) from exc
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):  # a worker that died has nothing left to unload
            client.unregister_worker_plugin(name)


def cache_rows(store: Any, manifest: Any) -> CacheRows:
    """Train captions x train videos that decoded (:func:`teachclip.core.manifest.split_data`), in the
    cache's canonical order: captions sorted by caption id, videos by video id."""
    data = split_data(manifest, SPLIT, store.video_ids, store.valid)
    order = sorted(range(len(data.caption_ids)), key=lambda i: data.caption_ids[i])
    return CacheRows(
        caption_ids=[data.caption_ids[i] for i in order],
        texts=[data.texts[i] for i in order],
        caption_videos=[data.caption_video_ids[i] for i in order],
        video_ids=data.video_ids,
        frame_rows=data.store_rows,
        text_video=data.caption_video[order].astype(np.int32),
    )
