"""Stage one, part 2: score every train caption against every train video, once per teacher.

``extract_teachers(frames, manifest_dir, out, requests, config, compute)`` fills
``teachers.zarr/<name>/`` (schema in :mod:`teachclip.stores.teachers`, docs/teacher-cache.md).

How the work is cut (every unit is deterministic in the arguments, never in the worker count, so
one worker and two workers give byte-identical stores):

1. *Video units* of ``encode_batch`` videos: a worker reads their frames, runs ``encode_videos``
   and writes the features to ``<out>.partial/_scratch/<name>/videos-NNNNNN.safetensors``.
   Features are computed once per video and shared with every worker through these files (rather
   than scattered through the scheduler): they survive a killed run, so a resume never re-encodes
   a video, and a worker on another machine reads them like it writes the output store.
2. *Blocks* of ``layout.block_texts`` captions x every video, one shard file of each score array:
   a worker encodes the block's captions once (each caption belongs to exactly one block), loads
   the video features once per worker (cached by its runtime), scores them in sub-blocks sized by
   the memory budget, and writes whole shards only (zarr-python 3 has no locks).

The driver records a completion marker after each unit, so a killed run resumes with the missing
units only, and publishes the group when every block is written (the partial/publish protocol of
:mod:`teachclip.stores.teachers`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from teachclip.stores import teachers as cache
from teachclip.stores.zarr_io import done_units, mark_done, partial_path, tree_bytes
from teachclip.core.config import ComputeConfig, ExtractConfig, TeacherConfig
from teachclip.core.fingerprint import sha256_file, short
from teachclip.core.parallel import dask_client, map_unordered, progress_bar

BUILD_SEED = 0  # any weights a checkpoint does not overwrite are drawn alike on every worker
# a scoring sub-block may use this many bytes per (text, video) pair and feature element: the
# teachers' per-pair intermediates (attention logits, pooled vectors) are a few feature-sized tensors
WORKSPACE_FACTOR = 4


class ExtractError(ValueError):
    """Inputs or an existing cache that the extraction refuses; the message says which and why."""


# ---- which teachers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherRequest:
    """One teacher to extract: its group name, config and (optional) trained checkpoint."""

    name: str
    config: TeacherConfig  # for a trained-teacher directory: the config saved with it
    checkpoint: str | None = None  # a trained-teacher directory or a weights file

    @property
    def weights_file(self) -> Path | None:
        if self.checkpoint is None:
            return None
        path = Path(self.checkpoint)
        return path / "model.safetensors" if path.is_dir() else path


def resolve_teachers(arguments: Sequence[str], configured: dict[str, TeacherConfig]) -> list[TeacherRequest]:
    """Turn ``NAME[=CHECKPOINT]`` arguments into requests.

    NAME is an entry of the params ``teachers:`` section or, without one, a teacher kind with its
    default config, or any name when CHECKPOINT is a trained-teacher directory. CHECKPOINT is a
    trained-teacher directory (``config.json`` + ``model.safetensors`` from ``teach train-teacher``,
    whose saved config then defines the teacher) or a weights file. Teachers with no weights at all
    (no checkpoint, no pretrained backbone) are refused: they would score noise.
    """
    from teachclip.models.teachers import TEACHERS, TRAINABLE_KINDS

    if not arguments:
        raise ExtractError("no teachers requested: pass --teacher NAME[=CHECKPOINT] or set extract.teachers")
    requests, seen = [], set()
    for argument in arguments:
        name, _, checkpoint = argument.partition("=")
        name = cache.check_group_name(name.strip())
        if name in seen:
            raise ExtractError(f"teacher {name!r} requested twice")
        seen.add(name)
        checkpoint = checkpoint.strip()
        if name in configured:
            config = configured[name]
        elif name in TEACHERS:
            config = TeacherConfig(kind=name)
        elif checkpoint and Path(checkpoint).is_dir():
            config = None  # the trained-teacher directory says what it is
        else:
            raise ExtractError(
                f"unknown teacher {name!r}: not in params.yaml `teachers:` ({', '.join(sorted(configured)) or 'empty'}),"
                f" not a teacher kind ({', '.join(TEACHERS)}) and no trained-teacher directory given"
            )
        checkpoint = checkpoint or (config.checkpoint if config is not None else None)
        if checkpoint:
            checkpoint = str(Path(checkpoint).resolve())  # workers may run elsewhere than this directory
            config = _config_for_checkpoint(name, config, Path(checkpoint))
        elif config.kind in TRAINABLE_KINDS and not config.backbone.pretrained:  # caption_sim brings its own
            raise ExtractError(
                f"teacher {name!r} ({config.kind}) has no weights: pass {name}=CHECKPOINT (a trained teacher from "
                f"`teach train-teacher`) or set backbone.pretrained; a randomly initialised teacher scores noise"
            )
        requests.append(TeacherRequest(name, config, checkpoint or None))
    return requests


def _config_for_checkpoint(name: str, config: TeacherConfig | None, checkpoint: Path) -> TeacherConfig:
    if checkpoint.is_file() and config is not None:
        return config.model_copy(update={"checkpoint": str(checkpoint)})
    if not checkpoint.is_dir():
        raise ExtractError(f"{checkpoint}: checkpoint of teacher {name!r} not found")
    from teachclip.models.io import CONFIG_FILE, WEIGHTS_FILE, read_config

    if not (checkpoint / WEIGHTS_FILE).is_file():
        raise ExtractError(f"{checkpoint}: not a trained-teacher directory (no {WEIGHTS_FILE})")
    document = read_config(checkpoint)
    try:
        saved = TeacherConfig.model_validate(document["config"])
    except ValueError as exc:
        raise ExtractError(f"{checkpoint / CONFIG_FILE}: not a teacher config: {exc}") from exc
    if config is not None and saved.kind != config.kind:
        raise ExtractError(
            f"{checkpoint}: holds a {saved.kind!r} teacher, but {name!r} is configured as {config.kind!r}"
        )
    return saved.model_copy(update={"checkpoint": str(checkpoint)})


def identity_of(request: TeacherRequest, frames_fingerprint: str, manifest_fingerprint: str) -> cache.TeacherIdentity:
    """The cache identity of a request; paths are replaced by the sha256 of the files they name.

    The score definitions are left empty here: they are instance properties of a loaded teacher,
    filled in by :func:`describe_teacher` on a worker (they are not part of the fingerprint).
    """
    from teachclip.models.teachers import TEACHERS

    cls = TEACHERS[request.config.kind]
    config = request.config.model_dump(mode="json") | {"checkpoint": None}
    pretrained = config["backbone"].get("pretrained")
    if pretrained and Path(pretrained).is_file():
        config["backbone"]["pretrained"] = "sha256:" + sha256_file(pretrained)
    weights = request.weights_file
    return cache.TeacherIdentity(
        kind=request.config.kind,
        config=config,
        checkpoint_sha256=sha256_file(weights) if weights is not None else None,
        score_version=int(cls.score_version),
        has_frame_relevance=bool(cls.has_frame_relevance),
        similarity_definition="",
        relevance_definition="",
        frames_fingerprint=frames_fingerprint,
        manifest_fingerprint=manifest_fingerprint,
    )


# ---- what to score -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSet:
    """The canonical rows and columns of every group computed from one frames store."""

    caption_ids: list[str]  # sorted
    texts: list[str]
    caption_videos: list[str]  # each caption's own video id
    video_ids: list[str]  # sorted
    frame_rows: np.ndarray  # row of each video in the frames store
    text_video: np.ndarray  # column of each caption's own video


def train_set(frames: Any, manifest: Any) -> TrainSet:
    """Train captions x train videos that decoded, in the canonical (sorted-id) order."""
    in_frames = set(frames.video_ids)
    train_videos = [v.video_id for v in manifest.videos_in("train")]
    absent = [v for v in train_videos if v not in in_frames]
    if absent:
        raise ExtractError(
            f"{frames.path}: {len(absent)} train video(s) of the manifest are not in the frames store, e.g. "
            f"{absent[:3]}: was it decoded from another manifest?"
        )
    valid = {video_id for video_id, ok in zip(frames.video_ids, frames.valid, strict=True) if ok}
    video_ids = sorted(v for v in train_videos if v in valid)
    captions = sorted((c for c in manifest.captions_in("train") if c.video_id in valid), key=lambda c: c.caption_id)
    if not video_ids or not captions:
        raise ExtractError(f"{frames.path}: no decoded train videos with captions to score")
    column = {video_id: i for i, video_id in enumerate(video_ids)}
    return TrainSet(
        caption_ids=[c.caption_id for c in captions],
        texts=[c.text for c in captions],
        caption_videos=[c.video_id for c in captions],
        video_ids=video_ids,
        frame_rows=np.asarray(frames.index(video_ids), dtype=np.int64),
        text_video=np.asarray([column[c.video_id] for c in captions], dtype=np.int32),
    )


def check_manifest(frames: Any, manifest: Any, manifest_dir: Path, fingerprint_mode: str) -> None:
    """Refuse a manifest other than the one the frames store was decoded from (its captions become
    the rows of the cache). ``fingerprint_mode`` is the decode setting that produced the store."""
    actual = manifest.fingerprint(fingerprint_mode)
    if actual != frames.manifest_fingerprint:
        raise ExtractError(
            f"{frames.path}: decoded from manifest {frames.manifest_fingerprint}, but {manifest_dir} has "
            f"fingerprint {actual} (decode.fingerprint_mode={fingerprint_mode!r}): pass the manifest the frames "
            f"were decoded from, or decode again"
        )


# ---- units of work ---------------------------------------------------------------------------------


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


def video_units(train: TrainSet, scratch: Path, encode_batch: int) -> list[VideoUnit]:
    return [
        VideoUnit(i, train.video_ids[start : start + encode_batch], train.frame_rows[start : start + encode_batch],
                  scratch)
        for i, start in enumerate(range(0, len(train.video_ids), encode_batch))
    ]


def block_units(
    train: TrainSet, layout: cache.CacheLayout, group: Path, scratch: Path, n_video_units: int, config: ExtractConfig
) -> list[BlockUnit]:
    units = []
    for block in range(layout.n_blocks):
        start, stop = layout.block_rows(block)
        units.append(BlockUnit(
            index=block, group=group, caption_ids=train.caption_ids[start:stop],
            texts=train.texts[start:stop], caption_videos=train.caption_videos[start:stop],
            own_columns=train.text_video[start:stop].astype(np.int64), scratch=scratch,
            n_video_units=n_video_units, memory_budget_mb=config.memory_budget_mb,
            encode_batch=config.encode_batch,
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
        import torch

        from teachclip.models.backbone import pick_device
        from teachclip.core.manifest import load_manifest

        device = pick_device(self.device_name)
        pinned = "CUDA_VISIBLE_DEVICES" in os.environ  # dask-cuda (or the user) gave this process its GPU
        if device.type == "cuda" and device.index is None and not pinned and torch.cuda.device_count() > 1:
            # a plain LocalCluster: every worker sees every GPU, so worker i takes GPU i
            device = torch.device("cuda", worker_index % torch.cuda.device_count())
        self.device = device
        try:
            self.teacher = build_teacher(self.request).to(device).eval()
        except Exception as exc:  # bad checkpoint, missing pretrained weights, unknown model name
            raise ExtractError(load_failure(self.request, exc)) from exc
        self.teacher.bind_manifest(load_manifest(self.manifest_dir))
        return self

    @property
    def amp(self) -> bool:
        return self.request.config.backbone.precision == "amp"

    def frames(self) -> Any:
        if self._frames is None:
            from teachclip.stores.frames import FramesStore

            self._frames = FramesStore.open(self.frames_path)
            self._frames.check_model(self.teacher)  # frame features only serve the tower that made them
        return self._frames

    def video_features(self, scratch: Path, n_units: int) -> dict[str, Any]:
        """Every train video's features, read from the scratch files once per worker."""
        if scratch not in self._video_features:
            from safetensors.torch import load_file

            from teachclip.models.teachers.base import cat_features, features_to

            parts = [load_file(str(video_feature_file(scratch, i))) for i in range(n_units)]
            # one teacher's features at a time: a worker never holds two feature sets
            self._video_features = {scratch: features_to(cat_features(parts), self.device)}
        return self._video_features[scratch]


def build_teacher(request: TeacherRequest) -> Any:
    """The teacher model of a request, with its trained weights when a checkpoint is given.

    Built under a fixed seed (without touching the caller's RNG): a parameter that neither the
    pretrained backbone nor the checkpoint sets must not differ between workers or between a run
    and its resume.
    """
    import torch

    from teachclip.models.teachers import build_teacher as build

    config = request.config
    if request.checkpoint is not None and config.checkpoint != request.checkpoint:
        # the cache records the request's checkpoint hash, so the weights must come from it too
        config = config.model_copy(update={"checkpoint": str(request.checkpoint)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BUILD_SEED)
        return build(config)


def encode_video_unit(unit: VideoUnit, runtime: Any) -> int:
    """Encode one unit of videos and write their features to the unit's scratch file."""
    import torch
    from safetensors.torch import save_file

    from teachclip.models.backbone import autocast

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
    """Score one block of captions against every video and write its shards; returns the pairs scored."""
    import torch

    from teachclip.models.backbone import autocast
    from teachclip.models.teachers.base import cat_features, slice_features

    runtime = resolve_runtime(runtime)
    teacher = runtime.teacher
    videos = runtime.video_features(unit.scratch, unit.n_video_units)
    n_texts, n_videos = len(unit.caption_ids), _batch_size(videos)
    with torch.inference_mode(), autocast(runtime.device, runtime.amp):
        text_parts = []
        for start in range(0, n_texts, unit.encode_batch):
            stop = start + unit.encode_batch
            batch = teacher.text_batch(unit.texts[start:stop], unit.caption_ids[start:stop],
                                       unit.caption_videos[start:stop])
            text_parts.append(teacher.encode_texts(batch))
        texts = cat_features(text_parts)
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
    cache.write_block(unit.group, unit.index, similarity, relevance)
    return n_texts * n_videos


def sub_block(texts: dict, videos: dict, n_texts: int, n_videos: int, memory_budget_mb: int) -> tuple[int, int]:
    """Texts x videos per ``score`` call so that its workspace fits half the memory budget."""
    elements = sum(v[0].numel() for v in texts.values()) + sum(v[0].numel() for v in videos.values())
    pair_bytes = WORKSPACE_FACTOR * 4 * max(1, elements)
    pairs = max(1, (memory_budget_mb << 20) // 2 // pair_bytes)
    step_videos = max(1, min(n_videos, pairs))
    step_texts = max(1, min(n_texts, pairs // step_videos))
    return step_texts, step_videos


def _batch_size(features: dict) -> int:
    return int(next(iter(features.values())).shape[0])


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
        import torch

        torch.set_num_threads(self.threads)  # the same thread count on every worker: same numerics
        index = worker.name if isinstance(worker.name, int) else 0
        self.runtime = TeacherRuntime(*self.args).load(index)

    def teardown(self, worker: Any) -> None:
        self.runtime = None


def resolve_runtime(runtime: TeacherRuntime | str) -> TeacherRuntime:
    """A task gets the runtime itself (in-process) or the name of the worker plugin holding it."""
    if isinstance(runtime, TeacherRuntime):
        return runtime
    from distributed import get_worker

    return get_worker().plugins[runtime].runtime


@contextlib.contextmanager
def compute_client(compute: ComputeConfig) -> Iterator[tuple[Any, dict[str, float] | None]]:
    """A dask client (None for ``scheduler="sync"``) and the resources each task asks for.

    On a local machine with GPUs, workers are one per GPU with a ``GPU`` resource: dask-cuda's
    LocalCUDACluster when installed (it pins each worker with CUDA_VISIBLE_DEVICES), else a
    LocalCluster whose workers pick ``cuda:<worker index>``.
    """
    from teachclip.models.backbone import pick_device

    gpus = _local_gpus() if compute.scheduler == "local" and pick_device(compute.device).type == "cuda" else 0
    if gpus:
        compute = compute.model_copy(update={"workers": min(compute.workers, gpus)})
        cuda_cluster = _local_cuda_cluster(compute)
        if cuda_cluster is not None:
            from distributed import Client

            with cuda_cluster as cluster, Client(cluster) as client:
                yield client, {"GPU": 1}
            return
    with dask_client(compute, resources={"GPU": 1} if gpus else None) as client:
        yield client, (_declared_gpu_resources(client) if client is not None else None)


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _local_cuda_cluster(compute: ComputeConfig) -> Any:
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        return None
    return LocalCUDACluster(n_workers=compute.workers, threads_per_worker=compute.threads_per_worker,
                            resources={"GPU": 1}, dashboard_address=None)


def _declared_gpu_resources(client: Any) -> dict[str, float] | None:
    """Ask for a GPU per task only where the workers declare GPUs (else tasks would wait forever)."""
    workers = client.scheduler_info().get("workers", {}).values()
    return {"GPU": 1} if any("GPU" in (w.get("resources") or {}) for w in workers) else None


# ---- the stage -----------------------------------------------------------------------------------------


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
    scoring_seconds: float = 0.0  # the blocks alone (what pairs/s measures)

    @property
    def pairs_per_second(self) -> float:
        return self.pairs_computed / self.scoring_seconds if self.scoring_seconds > 0 else 0.0

    def line(self) -> str:
        work = (f"{self.blocks_computed}/{self.blocks_total} blocks computed, {self.pairs_per_second:,.0f} pairs/s"
                if self.status in ("computed", "resumed") else "nothing computed")
        return (f"{self.name} ({self.kind}, {short(self.fingerprint)}): {self.status}; "
                f"{self.n_texts} texts x {self.n_videos} videos; {work}; {self.seconds:.1f} s")


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
    fingerprint_mode: str = "content",
) -> ExtractReport:
    """Fill ``out`` with one group per requested teacher; see the module docstring.

    ``fingerprint_mode`` is how the frames store fingerprinted its manifest (``decode.fingerprint_mode``);
    the manifest is checked against the frames store before anything is computed.
    """
    from teachclip.stores.frames import FramesStore
    from teachclip.core.manifest import load_manifest

    frames_path, manifest_dir, out = Path(frames).resolve(), Path(manifest_dir).resolve(), Path(out).resolve()
    partial = partial_path(out)
    cache.check_store_or_absent(out)
    cache.check_store_or_absent(partial)
    frames_store = FramesStore.open(frames_path)
    manifest = load_manifest(manifest_dir)
    train = train_set(frames_store, manifest)
    layout = cache.plan_layout(len(train.caption_ids), len(train.video_ids), frames_store.frames_per_video,
                               config.block_texts, config.chunk_texts, config.block_videos, config.memory_budget_mb)
    report = ExtractReport(out)

    todo = []
    for request in requests:
        identity = identity_of(request, frames_store.fingerprint, frames_store.manifest_fingerprint)
        status = prepare_group(partial, out, request.name, identity, overwrite)
        if status == "new" and config.shared_cache and pull_shared(config.shared_cache, identity, partial, request.name):
            status = "pulled"
        entry = TeacherReport(request.name, identity.kind, identity.fingerprint, status,
                              layout.n_texts, layout.n_videos, layout.n_blocks)
        report.teachers.append(entry)
        if status in ("new", "resumed"):
            entry.status = "computed" if status == "new" else "resumed"
            todo.append((request, identity, entry))

    if todo:
        # the mode the frames store records wins over the caller's (older stores do not record it)
        check_manifest(frames_store, manifest, manifest_dir, frames_store.manifest_fingerprint_mode or fingerprint_mode)
        with compute_client(compute) as (client, resources), _maybe_progress(progress) as bar:
            for request, identity, entry in todo:
                run_teacher(client, resources, bar, request, identity, entry, train, layout, partial,
                            frames_path, manifest_dir, config, compute)
    finished = [t.name for t in report.teachers if t.status != "cached"]
    if finished:
        cache.publish_groups(partial, out, finished)
    return report


def prepare_group(partial: Path, out: Path, name: str, identity: cache.TeacherIdentity, overwrite: bool) -> str:
    """Decide what to do with one group: "cached" (done), "resumed" (partial work kept) or "new".

    A finished or partial group with another fingerprint is refused, naming both, unless
    ``overwrite``; with ``overwrite`` a finished group is recomputed, while partial work of the very
    same fingerprint is still resumed (it is exactly what would be recomputed).
    """
    wanted = identity.fingerprint
    finished = cache.read_group_attributes(out / name)
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
    started = cache.read_group_attributes(partial / name)
    if started is not None and started["fingerprint"] != wanted:
        if not overwrite:
            raise ExtractError(
                f"{partial / name}: unfinished teacher cache {started['fingerprint']}, but the requested teacher "
                f"{name!r} has fingerprint {wanted}; pass --overwrite to discard it"
            )
        cache.discard_partial_group(partial, name)
        started = None
    return "resumed" if started is not None else "new"


def pull_shared(url: str, identity: cache.TeacherIdentity, partial: Path, name: str) -> bool:
    """Fetch the group from the shared cache into ``partial`` when it holds this fingerprint."""
    from teachclip.stores import sharing

    return sharing.fetch_into(url, identity.fingerprint, partial, name)


def run_teacher(
    client: Any,
    resources: dict[str, float] | None,
    bar: Any,
    request: TeacherRequest,
    identity: cache.TeacherIdentity,
    entry: TeacherReport,
    train: TrainSet,
    layout: cache.CacheLayout,
    partial: Path,
    frames_path: Path,
    manifest_dir: Path,
    config: ExtractConfig,
    compute: ComputeConfig,
) -> None:
    """Compute the missing video units and blocks of one teacher's group in ``partial``."""
    name = request.name
    group = partial / name
    scratch = cache.scratch_path(partial, name)
    videos = video_units(train, scratch, config.encode_batch)
    blocks = block_units(train, layout, group, scratch, len(videos), config)
    if _resumable(partial, name, identity, layout):
        done = done_units(partial)
        videos_left = [u for u in videos if u.index not in cache.done_of(done, name, "videos")]
        blocks_left = [u for u in blocks if u.index not in cache.done_of(done, name, "block")]
    else:
        videos_left, blocks_left = videos, blocks
    if not blocks_left:
        return

    started = time.perf_counter()
    with _teacher_on_workers(client, request, identity, frames_path, manifest_dir, compute) as runtime:
        if not _resumable(partial, name, identity, layout):
            # new, or partial work with another block layout (--block-texts, memory budget): start over
            definitions = next(map_unordered(client, describe_teacher, [0], resources=resources, runtime=runtime))[1]
            cache.discard_partial_group(partial, name)
            cache.create_group(partial, name, replace(identity, **definitions), layout, train.caption_ids,
                               train.video_ids, train.text_video)
        if videos_left:
            task = _task(bar, f"{name} videos", len(videos), len(videos) - len(videos_left))
            for unit, _ in map_unordered(client, encode_video_unit, videos_left, resources=resources, runtime=runtime):
                mark_done(partial, cache.video_unit(name, unit.index))
                _advance(bar, task, "")
        task = _task(bar, f"{name} blocks", len(blocks), len(blocks) - len(blocks_left))
        scoring_started = time.perf_counter()
        for unit, pairs in map_unordered(client, score_block, blocks_left, resources=resources, runtime=runtime):
            mark_done(partial, cache.block_unit(name, unit.index))
            entry.blocks_computed += 1
            entry.pairs_computed += pairs
            entry.scoring_seconds = time.perf_counter() - scoring_started
            _advance(bar, task, f"{entry.pairs_per_second:,.0f} pairs/s")
    entry.seconds = time.perf_counter() - started


def _resumable(partial: Path, name: str, identity: cache.TeacherIdentity, layout: cache.CacheLayout) -> bool:
    """Partial work of this very fingerprint and block layout is there to continue."""
    attrs = cache.read_group_attributes(partial / name)
    return attrs is not None and attrs["fingerprint"] == identity.fingerprint and attrs["layout"] == asdict(layout)


def describe_teacher(_: int, runtime: TeacherRuntime | str) -> dict[str, Any]:
    """The score definitions of the loaded teacher (instance properties: they may depend on options)."""
    teacher = resolve_runtime(runtime).teacher
    has_relevance = bool(teacher.has_frame_relevance)
    return {"has_frame_relevance": has_relevance, "similarity_definition": str(teacher.similarity_definition),
            "relevance_definition": str(teacher.relevance_definition) if has_relevance else ""}


@contextlib.contextmanager
def _teacher_on_workers(client: Any, request: TeacherRequest, identity: cache.TeacherIdentity, frames_path: Path,
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


def load_failure(request: TeacherRequest, exc: BaseException, limit: int = 600) -> str:
    """A readable one-paragraph reason (state-dict mismatches run to pages)."""
    reason = str(exc.args[-1] if isinstance(exc, ValueError) and exc.args and exc.args[0] == "Long error message"
                 else exc)
    reason = reason if len(reason) <= limit else reason[:limit] + " ..."
    return f"teacher {request.name!r} ({request.config.kind}, checkpoint {request.checkpoint}) failed to load: {reason}"


@contextlib.contextmanager
def _maybe_progress(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    with progress_bar() as bar:
        yield bar


def _task(bar: Any, description: str, total: int, completed: int) -> Any:
    return None if bar is None else bar.add_task(description, total=total, completed=completed, status="")


def _advance(bar: Any, task: Any, status: str) -> None:
    if bar is not None:
        bar.update(task, advance=1, status=status)
