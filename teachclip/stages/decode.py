"""Stage ``decode``: sample every manifest video into the frames store (see docs/decode.md).

The unit of work is one shard of ``videos_per_shard`` videos (in video-id order): a worker decodes
its videos and writes the whole shard of ``frames`` and the chunk of ``frame_mask`` (zarr 3 has no
locks, so no two workers ever touch one file). The driver records each finished shard's failures
and a completion marker in ``<out>.partial``; a killed run rerun with the same arguments decodes
only unmarked shards. When every shard is done the attributes get the sorted failure list and
``complete: true`` and the directory is renamed to ``<out>``. Nothing written depends on timing or
order of completion, so the store is byte-identical however the run was split or interrupted.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from teachclip.stores.frames import (
    FORMAT_VERSION,
    FRAMES,
    MASK,
    STORE_KIND,
    VIDEO_IDS,
    FramesStore,
    FramesStoreError,
    StoreMismatchError,
    read_attributes,
)
from teachclip.stores.zarr_io import (
    create_array,
    done_units,
    finalize,
    mark_done,
    partial_path,
    write_strings,
)
from teachclip.core.config import ComputeConfig, DecodeConfig
from teachclip.core.fingerprint import fingerprint
from teachclip.core.manifest import Manifest, load_manifest
from teachclip.core.parallel import dask_client, map_unordered, progress_bar
from teachclip.video import VideoDecodeError, decoder_identity, sample_frames

FAILURES_DIR = "_failures"  # per-shard failure records inside <out>.partial until finalize
SAMPLING_RULE = "clip4clip-v1"  # bump when the meaning of the sampling fields changes


class TooManyFailuresError(RuntimeError):
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
        "decoder": decoder_identity(config.backend, config.ffmpeg_binary),
    }


def frames_fingerprint(manifest_fingerprint: str, sampling: dict) -> str:
    return fingerprint("frames", {"manifest": manifest_fingerprint, "sampling": sampling})


def _store_attributes(
    frames_fp: str,
    manifest_fp: str,
    sampling: dict,
    config: DecodeConfig,
    videos: int,
    failures: list[dict],
    complete: bool,
) -> dict:
    # one fixed key order: the group's zarr.json must come out byte-identical on every run
    return {
        "kind": STORE_KIND,
        "format_version": FORMAT_VERSION,
        "fingerprint": frames_fp,
        "manifest_fingerprint": manifest_fp,
        # how the manifest was fingerprinted, so readers recompute only that one ("content" hashes
        # every video file)
        "manifest_fingerprint_mode": config.fingerprint_mode,
        "sampling": sampling,
        "videos": videos,
        "videos_per_shard": config.videos_per_shard,
        "failures": failures,
        "complete": complete,
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
    out = Path(out)
    partial = partial_path(out)
    manifest_fp = manifest.fingerprint(config.fingerprint_mode)
    sampling = sampling_config(config)
    frames_fp = frames_fingerprint(manifest_fp, sampling)
    jobs = _shard_jobs(manifest, config.videos_per_shard)
    videos = sum(len(job.video_ids) for job in jobs)

    if overwrite:
        for path in (out, partial):
            if path.exists():
                shutil.rmtree(path)
    if out.exists():
        _check_fingerprint(out, frames_fp, manifest_fp, finished=True)
        failures = FramesStore.open(out).failures
        result = DecodeResult(out, frames_fp, videos, failures, len(jobs), 0, already_complete=True)
    else:
        base = dict(
            frames_fp=frames_fp, manifest_fp=manifest_fp, sampling=sampling, config=config, videos=videos
        )
        pending = _open_partial(partial, jobs, config, base)
        if pending:
            _run_jobs(pending, partial, config, compute, videos, progress)
        failures = _finish(partial, out, jobs, base)
        result = DecodeResult(out, frames_fp, videos, failures, len(jobs), len(pending))
    if result.failure_fraction > config.max_failure_fraction:
        raise TooManyFailuresError(result, config.max_failure_fraction)
    return result


def _open_partial(partial: Path, jobs: list[ShardJob], config: DecodeConfig, base: dict) -> list[ShardJob]:
    """Create ``<out>.partial`` or check the one a previous run left; returns the shards to do."""
    if partial.exists() and not _discard_if_empty(partial):
        _check_fingerprint(
            partial,
            base["frames_fp"],
            base["manifest_fp"],
            finished=False,
            videos_per_shard=config.videos_per_shard,
        )
        if read_attributes(partial).get("complete"):  # killed after the final attributes
            return []
    else:
        video_ids = [v for job in jobs for v in job.video_ids]
        _create_store(partial, video_ids, config, _store_attributes(failures=[], complete=False, **base))
    done = done_units(partial)
    return [job for job in jobs if _unit(job.index) not in done]


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


def _unit(index: int) -> str:
    return f"shard-{index:06d}"


def _check_fingerprint(
    path: Path, frames_fp: str, manifest_fp: str, finished: bool, videos_per_shard: int = 0
) -> None:
    what = "frames store" if finished else "partial frames store"
    try:
        attributes = read_attributes(path)
    except FramesStoreError as exc:
        raise StoreMismatchError(f"{exc}; refusing to replace it (pass overwrite / --overwrite)") from exc
    if attributes.get("fingerprint") != frames_fp:
        raise StoreMismatchError(
            f"{path}: existing {what} has frames fingerprint {attributes.get('fingerprint')} "
            f"(manifest {attributes.get('manifest_fingerprint')}), but this run's inputs give frames "
            f"fingerprint {frames_fp} (manifest {manifest_fp}); the manifest or the sampling config "
            "differ. Pass overwrite / --overwrite to rebuild, or choose another output."
        )
    if not finished and attributes.get("videos_per_shard") != videos_per_shard:
        raise StoreMismatchError(
            f"{path}: partial frames store was started with videos_per_shard="
            f"{attributes.get('videos_per_shard')}, this run asks for {videos_per_shard}; rerun with the "
            "same value to resume, or pass overwrite / --overwrite to start again."
        )


_STORE_ENTRIES = {"zarr.json", FRAMES, MASK, VIDEO_IDS}


def _discard_if_empty(partial: Path) -> bool:
    """A partial store killed before it recorded any work (no readable attributes, no markers,
    nothing but store entries) is removed; True when that happened."""
    try:
        read_attributes(partial)
        return False
    except FramesStoreError:
        pass
    entries = {p.name for p in partial.iterdir()}
    if done_units(partial) or not entries <= _STORE_ENTRIES:
        return False
    shutil.rmtree(partial)
    return True


def _create_store(partial: Path, video_ids: list[str], config: DecodeConfig, attributes: dict) -> None:
    t, s, v = config.frames_per_video, config.size, config.videos_per_shard
    root = zarr.open_group(str(partial), mode="w", zarr_format=3)
    create_array(root, FRAMES, (len(video_ids), t, s, s, 3), (1, t, s, s, 3), "uint8", shards=(v, t, s, s, 3))
    create_array(root, MASK, (len(video_ids), t), (v, t), "bool", fill_value=False)
    write_strings(root, VIDEO_IDS, video_ids)
    root.attrs.put(attributes)  # last: a store with a fingerprint is a usable store


def _run_jobs(
    pending: list[ShardJob],
    partial: Path,
    config: DecodeConfig,
    compute: ComputeConfig,
    videos: int,
    show: bool,
) -> None:
    failures_dir = partial / FAILURES_DIR
    failures_dir.mkdir(exist_ok=True)
    done = done_units(partial)
    failed = sum(len(json.loads(p.read_text())) for p in failures_dir.glob("*.json") if p.stem in done)
    already = videos - sum(len(job.video_ids) for job in pending)
    bar = progress_bar() if show else None
    if compute.scheduler == "local":  # no idle worker processes to start for a few shards
        compute = compute.model_copy(update={"workers": min(compute.workers, len(pending))})
    with bar if bar is not None else contextlib.nullcontext(), dask_client(compute) as client:
        task = None
        if bar is not None:
            task = bar.add_task("decode", total=videos, completed=already, status=f"{failed} failed")
        for job, result in map_unordered(client, decode_shard, pending, partial=str(partial), config=config):
            # failures first, marker second: a marked shard always has its failure record
            (failures_dir / f"{_unit(job.index)}.json").write_text(
                json.dumps(result.failures, sort_keys=True)
            )
            mark_done(partial, _unit(job.index))
            failed += len(result.failures)
            if bar is not None:
                bar.update(task, advance=len(job.video_ids), status=f"{failed} failed")


def _finish(partial: Path, out: Path, jobs: list[ShardJob], base: dict) -> list[dict]:
    """Write the final attributes, drop bookkeeping, rename to ``out``; returns the failures."""
    root = zarr.open_group(str(partial), mode="r+", zarr_format=3)
    attributes = dict(root.attrs)
    if attributes.get("complete"):  # killed after the attributes were final: only the rename is left
        failures = attributes["failures"]
    else:
        missing = [_unit(j.index) for j in jobs if _unit(j.index) not in done_units(partial)]
        if missing:
            raise RuntimeError(f"{partial}: shards {', '.join(missing[:5])} were not written")
        failures = []
        for job in jobs:
            failures += json.loads((partial / FAILURES_DIR / f"{_unit(job.index)}.json").read_text())
        failures.sort(key=lambda record: record["video_id"])
        root.attrs.put(_store_attributes(failures=failures, complete=True, **base))
    shutil.rmtree(partial / FAILURES_DIR, ignore_errors=True)
    finalize(partial, out)
    return failures


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
            )
        except VideoDecodeError as exc:
            result.failures.append({"video_id": video_id, "path": shown, "reason": exc.reason})
        except Exception as exc:  # a decoder bug must not stop the run; record it like bad input
            reason = f"unexpected {type(exc).__name__}: {exc}".replace(path, shown)
            result.failures.append({"video_id": video_id, "path": shown, "reason": reason})
    _write_shard(Path(partial), job, frames, mask)
    return result


def _write_shard(partial: Path, job: ShardJob, frames: np.ndarray, mask: np.ndarray) -> None:
    stop = job.start + len(job.video_ids)
    for name, block in ((FRAMES, frames), (MASK, mask)):
        array = zarr.open_array(str(partial / name), mode="r+", zarr_format=3)
        # a killed run may have left this shard half written; an edge shard would be merged
        # with (and fail the checksum of) that debris instead of replaced
        key = array.metadata.encode_chunk_key((job.index,) + (0,) * (array.ndim - 1))
        (partial / name / key).unlink(missing_ok=True)
        array[job.start : stop] = block
