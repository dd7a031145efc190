"""Stage ``decode``: sample every manifest video into the frames store (see docs/decode.md).

The unit of work is one shard of ``videos_per_shard`` videos (in video-id order): a worker decodes
its videos and writes the whole shard (:func:`teachclip.stores.frames.write_shard`); the driver
records each finished shard's failures and its completion marker, so a killed run rerun with the
same arguments decodes only unmarked shards. The store's schema, fingerprint and writer live in
:mod:`teachclip.stores.frames`; this module plans the shards, runs them on dask and decodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from teachclip.core.config import ComputeConfig, DecodeConfig
from teachclip.core.errors import InputError
from teachclip.core.manifest import Manifest, load_manifest
from teachclip.core.parallel import dask_client, map_unordered
from teachclip.core.progress import progress_bar
from teachclip.stores import frames as store
from teachclip.stores.frames import FramesStore
from teachclip.stores.zarr_io import partial_path
from teachclip.video import VideoDecodeError, decoder_identity, sample_frames

SAMPLING_RULE = "clip4clip-v1"  # bump when the meaning of the sampling fields changes


class TooManyFailuresError(InputError):
    """More videos failed than ``max_failure_fraction`` allows; the store is written anyway."""

    def __init__(self, result: DecodeResult, limit: float) -> None:
        self.result = result
        super().__init__(
            f"{len(result.failures)} of {result.videos} videos failed to decode "
            f"({result.failure_fraction:.1%} > max_failure_fraction {limit:.1%}); "
            f"the store was written to {result.path} and lists every failure"
        )


@dataclass
class DecodeResult:
    path: Path
    fingerprint: str
    videos: int
    failures: list[dict]
    shards: int
    shards_decoded: int  # in this run (0: the store was already complete)
    already_complete: bool = False

    @property
    def failure_fraction(self) -> float:
        return len(self.failures) / self.videos if self.videos else 0.0

    def summary(self) -> str:
        if self.already_complete:
            head = f"{self.path}: already complete, nothing to do"
        else:
            head = f"{self.path}: decoded {self.shards_decoded} of {self.shards} shards in this run"
        return f"{head}; {self.videos - len(self.failures)} of {self.videos} videos ok, {len(self.failures)} failed"


@dataclass(frozen=True)
class ShardJob:
    index: int
    start: int  # position of the shard's first video
    video_ids: tuple[str, ...]
    paths: tuple[str, ...]  # absolute, for decoding
    shown_paths: tuple[str, ...]  # as recorded in failures (relative to the manifest when inside it)
    clips: tuple[tuple[float | None, float | None] | None, ...] = ()  # manifest start,end per video


@dataclass
class ShardResult:
    index: int
    failures: list[dict] = field(default_factory=list)


# ---- identity ---------------------------------------------------------------------------------


def sampling_config(config: DecodeConfig) -> dict:
    """Everything that decides the pixels: part of the frames fingerprint and stored as ``sampling``."""
    return {
        "rule": SAMPLING_RULE,
        "frames_per_video": config.frames_per_video,
        "sample_fps": config.sample_fps,
        "size": config.size,
        "resize": "short side, bicubic",
        "crop": "center",
        "decoder": decoder_identity(config.backend, config.ffmpeg_binary, config.device),
    }


# ---- the stage ----------------------------------------------------------------------------------


def decode(
    manifest_dir: str | Path,
    out: str | Path,
    config: DecodeConfig,
    compute: ComputeConfig,
    overwrite: bool = False,
    progress: bool = True,
) -> DecodeResult:
    """Decode every video of the manifest into the frames store ``out``.

    Resumes ``<out>.partial`` when its fingerprint matches, does nothing when ``out`` is already the
    requested store, and refuses (StoreMismatchError naming both fingerprints) a store or partial
    store built from other inputs unless ``overwrite``. Raises TooManyFailuresError after writing
    the store when the failure share exceeds ``config.max_failure_fraction``.
    """
    manifest = load_manifest(manifest_dir)
    out = Path(out).absolute()  # workers of a remote scheduler run in other directories
    partial = partial_path(out)
    manifest_fp = manifest.fingerprint(config.fingerprint_mode)
    sampling = sampling_config(config)
    attributes = store.store_attributes(
        frames_fp=store.frames_fingerprint(manifest_fp, sampling), manifest_fp=manifest_fp,
        manifest_fp_mode=config.fingerprint_mode, sampling=sampling, videos=len(manifest.videos),
        videos_per_shard=config.videos_per_shard, failures=[], complete=False)
    jobs = _shard_jobs(manifest, config.videos_per_shard)

    if overwrite:  # a frames store or its partial store only: never a folder that is something else
        store.remove(out)
        store.remove(partial)
    if out.exists():
        store.check_existing(out, attributes, finished=True)
        result = DecodeResult(out, attributes["fingerprint"], len(manifest.videos), FramesStore.open(out).failures,
                              len(jobs), 0, already_complete=True)
    else:
        video_ids = [video_id for job in jobs for video_id in job.video_ids]
        done = store.open_partial(partial, video_ids, attributes, config.frames_per_video, config.size)
        pending = [job for job in jobs if job.index not in done]
        if pending:
            _run_jobs(pending, partial, config, compute, len(manifest.videos), progress)
        failures = store.finish(partial, out, len(jobs), attributes)
        result = DecodeResult(out, attributes["fingerprint"], len(manifest.videos), failures, len(jobs), len(pending))
    if result.failure_fraction > config.max_failure_fraction:
        raise TooManyFailuresError(result, config.max_failure_fraction)
    return result


def _shard_jobs(manifest: Manifest, videos_per_shard: int) -> list[ShardJob]:
    videos = sorted(manifest.videos, key=lambda v: v.video_id)
    jobs = []
    for index, start in enumerate(range(0, len(videos), videos_per_shard)):
        block = videos[start : start + videos_per_shard]
        jobs.append(
            ShardJob(
                index=index,
                start=start,
                video_ids=tuple(v.video_id for v in block),
                paths=tuple(str(v.path) for v in block),
                shown_paths=tuple(_shown_path(v.path, manifest.root) for v in block),
                clips=tuple(
                    None if v.start is None and v.end is None else (v.start, v.end) for v in block
                ),
            )
        )
    return jobs


def _shown_path(path: Path, root: Path) -> str:
    """Relative to the manifest when inside it: the store does not depend on where data lives."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _run_jobs(
    pending: list[ShardJob],
    partial: Path,
    config: DecodeConfig,
    compute: ComputeConfig,
    videos: int,
    show: bool,
) -> None:
    failed = store.recorded_failures(partial)
    already = videos - sum(len(job.video_ids) for job in pending)
    if compute.scheduler == "local":  # no idle worker processes to start for a few shards
        compute = compute.model_copy(update={"workers": min(compute.workers, len(pending))})
    with progress_bar(show) as bar, dask_client(compute) as client:
        task = bar.add_task("decode", total=videos, completed=already, status=f"{failed} failed")
        for job, result in map_unordered(client, decode_shard, pending, partial=str(partial), config=config):
            store.record_shard(partial, job.index, result.failures)
            failed += len(result.failures)
            bar.update(task, advance=len(job.video_ids), status=f"{failed} failed")


# ---- the unit of work (runs on a dask worker) ----------------------------------------------------


def decode_shard(job: ShardJob, *, partial: str, config: DecodeConfig) -> ShardResult:
    """Decode the videos of one shard and write the whole shard; per-video problems become
    failure records, never exceptions."""
    t, s = config.frames_per_video, config.size
    frames = np.zeros((len(job.video_ids), t, s, s, 3), dtype=np.uint8)
    mask = np.zeros((len(job.video_ids), t), dtype=bool)
    result = ShardResult(job.index)
    for i, (video_id, path, shown) in enumerate(zip(job.video_ids, job.paths, job.shown_paths, strict=True)):
        try:
            frames[i], mask[i] = sample_frames(
                path,
                t,
                config.sample_fps,
                s,
                config.backend,
                config.ffmpeg_binary,
                threads=config.decoder_threads,
                clip=job.clips[i] if job.clips else None,
                device=config.device,
            )
        except VideoDecodeError as exc:
            result.failures.append({"video_id": video_id, "path": shown, "reason": exc.reason})
        except Exception as exc:  # a decoder bug must not stop the run; record it like bad input
            reason = f"unexpected {type(exc).__name__}: {exc}".replace(path, shown)
            result.failures.append({"video_id": video_id, "path": shown, "reason": reason})
    store.write_shard(Path(partial), job.index, job.start, frames, mask)
    return result
