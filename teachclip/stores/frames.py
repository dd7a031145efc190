"""The frames store: schema, fingerprint, writer and reader of ``frames.zarr`` (Zarr v3).

Layout (docs/stores.md; written by the decode stage)::

    frames.zarr/
      frames       uint8 [videos, T, size, size, 3]; one video per chunk, ``videos_per_shard`` videos
                   per shard file; zero for padding and for videos that failed
      frame_mask   bool [videos, T]; False for padding and failed videos; one chunk per shard
      video_ids    every manifest video, sorted by id (failed ones included: positions are stable)
      attributes   kind, format_version, fingerprint (frames), manifest_fingerprint,
                   manifest_fingerprint_mode, sampling, videos, videos_per_shard,
                   failures [{video_id, path, reason}] sorted by id, complete

Writing: the store is built in ``<out>.partial`` one shard at a time (:func:`write_shard`, then
:func:`record_shard` stores the shard's failures and its completion marker), so a killed run resumes
with the unmarked shards; :func:`finish` writes the final attributes and renames the directory.
Nothing written depends on timing or completion order: the same inputs give byte-identical stores.

Reading: :class:`FramesStore` serves random batches (``read``); :func:`require_manifest` refuses a
store decoded from another manifest. The frame-features store (:mod:`teachclip.stores.features`)
shares the reader API; :func:`teachclip.stores.open_video_store` opens either.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from teachclip.core.columns import IdColumn
from teachclip.core.errors import InputError
from teachclip.core.fingerprint import fingerprint
from teachclip.stores.zarr_io import (
    PROGRESS_DIR,
    chunk_presence,
    create_array,
    done_units,
    finalize,
    mark_done,
    read_id_column,
    remove_store,
    write_strings,
)

STORE_KIND = "teachclip-frames"
FORMAT_VERSION = 1
FRAMES, MASK, VIDEO_IDS = "frames", "frame_mask", "video_ids"
FAILURES_DIR = "_failures"  # per-shard failure records inside <out>.partial until finish()
STORE_ENTRIES = {"zarr.json", FRAMES, MASK, VIDEO_IDS}


class FramesStoreError(InputError):
    """A frames (or frame-features) store that cannot be used; the message names the path and the reason."""


class StoreMismatchError(FramesStoreError):
    """An existing store (or partial store) built from other inputs than the ones asked for."""


# ---- identity -----------------------------------------------------------------------------------


def frames_fingerprint(manifest_fingerprint: str, sampling: dict) -> str:
    """Identity of the frames: the manifest they come from and everything that decides the pixels."""
    return fingerprint("frames", {"manifest": manifest_fingerprint, "sampling": sampling})


def read_attributes(path: str | Path, kinds: Sequence[str] = (STORE_KIND,), what: str = "frames store") -> dict:
    """The attributes of a store of one of ``kinds`` (finished or partial); FramesStoreError if it is none."""
    path = Path(path)
    if not path.exists():
        raise FramesStoreError(f"{path}: {what} not found")
    try:
        attributes = dict(zarr.open_group(str(path), mode="r", zarr_format=3).attrs)
    except Exception as exc:  # zarr raises several types for "not a group"
        raise FramesStoreError(f"{path}: not a Zarr v3 {what} ({type(exc).__name__}: {exc})") from exc
    if attributes.get("kind") not in kinds:
        raise FramesStoreError(f"{path}: not a {what} (attribute kind={attributes.get('kind')!r})")
    if attributes.get("format_version") != FORMAT_VERSION:
        raise FramesStoreError(
            f"{path}: store format {attributes.get('format_version')!r}, this code reads {FORMAT_VERSION}"
        )
    return attributes


# ---- writer -------------------------------------------------------------------------------------


def store_attributes(*, frames_fp: str, manifest_fp: str, manifest_fp_mode: str, sampling: dict, videos: int,
                     videos_per_shard: int, failures: list[dict], complete: bool) -> dict:
    """The store's attributes, in one fixed key order (the group's zarr.json must be byte-identical)."""
    return {
        "kind": STORE_KIND,
        "format_version": FORMAT_VERSION,
        "fingerprint": frames_fp,
        "manifest_fingerprint": manifest_fp,
        # how the manifest was fingerprinted, so readers recompute only that one ("content" hashes
        # every video file)
        "manifest_fingerprint_mode": manifest_fp_mode,
        "sampling": sampling,
        "videos": videos,
        "videos_per_shard": videos_per_shard,
        "failures": failures,
        "complete": complete,
    }


def check_existing(path: Path, attributes: dict, finished: bool) -> None:
    """Refuse a store (``finished``) or partial store at ``path`` built from other inputs than
    ``attributes`` describe (StoreMismatchError naming both fingerprints)."""
    what = "frames store" if finished else "partial frames store"
    try:
        found = read_attributes(path)
    except FramesStoreError as exc:
        raise StoreMismatchError(f"{exc}; refusing to replace it (pass overwrite / --overwrite)") from exc
    if found.get("fingerprint") != attributes["fingerprint"]:
        raise StoreMismatchError(
            f"{path}: existing {what} has frames fingerprint {found.get('fingerprint')} "
            f"(manifest {found.get('manifest_fingerprint')}), but this run's inputs give frames "
            f"fingerprint {attributes['fingerprint']} (manifest {attributes['manifest_fingerprint']}); the "
            "manifest or the sampling config differ. Pass overwrite / --overwrite to rebuild, or choose another output."
        )
    if not finished and found.get("videos_per_shard") != attributes["videos_per_shard"]:
        raise StoreMismatchError(
            f"{path}: partial frames store was started with videos_per_shard="
            f"{found.get('videos_per_shard')}, this run asks for {attributes['videos_per_shard']}; rerun with the "
            "same value to resume, or pass overwrite / --overwrite to start again."
        )


def open_partial(partial: Path, video_ids: list[str], attributes: dict, frames_per_video: int, size: int) -> set[int]:
    """Create ``<out>.partial`` (or check the one a previous run left, see :func:`check_existing`);
    returns the indices of the shards already written."""
    if partial.exists() and not _discard_if_empty(partial):
        check_existing(partial, attributes, finished=False)
        if read_attributes(partial).get("complete"):  # killed after the final attributes
            return set(range(_n_shards(len(video_ids), attributes["videos_per_shard"])))
    else:
        _create(partial, video_ids, frames_per_video, size, attributes)
    return {int(unit.removeprefix("shard-")) for unit in done_units(partial) if unit.startswith("shard-")}


def _n_shards(videos: int, per_shard: int) -> int:
    return -(-videos // per_shard)


def _discard_if_empty(partial: Path) -> bool:
    """A partial store killed before it recorded any work (no readable attributes, no markers,
    nothing but store entries) is removed; True when that happened."""
    try:
        read_attributes(partial)
        return False
    except FramesStoreError:
        pass
    entries = {p.name for p in partial.iterdir()}
    if done_units(partial) or not entries <= STORE_ENTRIES:
        return False
    shutil.rmtree(partial)
    return True


def _create(partial: Path, video_ids: list[str], t: int, s: int, attributes: dict) -> None:
    v = attributes["videos_per_shard"]
    root = zarr.open_group(str(partial), mode="w", zarr_format=3)
    create_array(root, FRAMES, (len(video_ids), t, s, s, 3), (1, t, s, s, 3), "uint8", shards=(v, t, s, s, 3))
    create_array(root, MASK, (len(video_ids), t), (v, t), "bool", fill_value=False)
    write_strings(root, VIDEO_IDS, video_ids)
    root.attrs.put(attributes)  # last: a store with a fingerprint is a usable store


def write_shard(partial: Path, shard: int, start: int, frames: np.ndarray, mask: np.ndarray) -> None:
    """Write the whole shard ``shard`` (videos ``start`` .. ``start + len(frames)``) of both arrays: the
    only write a worker does (zarr-python 3 has no locks; no two workers ever touch one file)."""
    stop = start + len(frames)
    for name, block in ((FRAMES, frames), (MASK, mask)):
        array = zarr.open_array(str(partial / name), mode="r+", zarr_format=3)
        # a killed run may have left this shard half written; an edge shard would be merged
        # with (and fail the checksum of) that debris instead of replaced
        key = array.metadata.encode_chunk_key((shard,) + (0,) * (array.ndim - 1))
        (partial / name / key).unlink(missing_ok=True)
        array[start:stop] = block


def record_shard(partial: Path, shard: int, failures: list[dict]) -> None:
    """Record a written shard: its failures first, its completion marker second (a marked shard
    always has its failure record)."""
    directory = partial / FAILURES_DIR
    directory.mkdir(exist_ok=True)
    (directory / f"{_unit(shard)}.json").write_text(json.dumps(failures, sort_keys=True))
    mark_done(partial, _unit(shard))


def recorded_failures(partial: Path) -> int:
    """How many videos of the shards recorded so far failed."""
    done = done_units(partial)
    directory = partial / FAILURES_DIR
    return sum(len(json.loads(p.read_text())) for p in directory.glob("*.json") if p.stem in done)


def finish(partial: Path, out: Path, n_shards: int, attributes: dict) -> list[dict]:
    """Write the final attributes (every shard's failures, ``complete``), drop the bookkeeping and
    rename ``partial`` to ``out``; returns the failures."""
    root = zarr.open_group(str(partial), mode="r+", zarr_format=3)
    found = dict(root.attrs)
    if found.get("complete"):  # killed after the attributes were final: only the rename is left
        failures = found["failures"]
    else:
        done = done_units(partial)
        missing = [_unit(i) for i in range(n_shards) if _unit(i) not in done]
        if missing:
            raise FramesStoreError(f"{partial}: shards {', '.join(missing[:5])} were not written")
        failures = []
        for shard in range(n_shards):
            failures += json.loads((partial / FAILURES_DIR / f"{_unit(shard)}.json").read_text())
        failures.sort(key=lambda record: record["video_id"])
        root.attrs.put(attributes | {"failures": failures, "complete": True})
    shutil.rmtree(partial / FAILURES_DIR, ignore_errors=True)
    finalize(partial, out, STORE_KIND)
    return failures


def remove(path: Path) -> None:
    """``--overwrite``: delete a frames store or its partial store, and nothing else."""
    remove_store(path, STORE_KIND, unfinished_entries=frozenset(STORE_ENTRIES | {PROGRESS_DIR, FAILURES_DIR}))


def _unit(shard: int) -> str:
    return f"shard-{shard:06d}"


# ---- reader -------------------------------------------------------------------------------------


class FramesStore:
    """Read access to a finished frames store; ``read`` serves random batches.

    ``video_ids`` is an :class:`~teachclip.core.columns.IdColumn` (the sorted ids in one byte array, a
    read-only sequence of ``str``), ``valid`` a bool array (False: the decode failed) and ``index``
    a binary search: the reader holds no Python object per video.

    :class:`teachclip.stores.features.FrameFeaturesStore` has the same API and serves per-frame
    embeddings [n, T, d] instead of pixels.
    """

    holds_features = False
    kind = STORE_KIND
    data_array = FRAMES
    description = "frames store"
    written_by = "teach decode"

    def __init__(self, path: Path, group: zarr.Group, attributes: dict) -> None:
        self.path = path
        _check_attributes(path, attributes, self.description)
        self.fingerprint: str = attributes["fingerprint"]
        self.manifest_fingerprint: str = attributes["manifest_fingerprint"]
        # "stat" or "content"; None for stores written before the mode was recorded
        self.manifest_fingerprint_mode: str | None = attributes.get("manifest_fingerprint_mode")
        self.sampling: dict = attributes["sampling"]
        self.failures: list[dict] = list(attributes["failures"])
        self.videos_per_shard: int = int(attributes["videos_per_shard"])
        self.frames_per_video: int = int(self.sampling["frames_per_video"])
        self.size: int = int(self.sampling["size"])
        try:
            self._frames = group[self.data_array]
            ids_shape = tuple(group[VIDEO_IDS].shape)
            self._check_shapes(self._frames.shape, group[MASK].shape, ids_shape)
            # sorted ids in one byte array: no Python object per video (a list and an id -> row dict
            # were ~150 bytes per video for every process that opened the store)
            self.video_ids: IdColumn = read_id_column(path / VIDEO_IDS, ids_shape[0])
            self._mask = np.asarray(group[MASK][...], dtype=bool)  # small: kept in memory
        except (KeyError, ValueError, TypeError, OSError) as exc:  # zarr: bad metadata, checksum, truncation
            raise FramesStoreError(f"{path}: unreadable {self.description} ({type(exc).__name__}: {exc})") from exc
        self._check_ids()
        self.item_shape: tuple[int, ...] = tuple(self._frames.shape[2:])  # (H, W, 3) or (d,)
        self.valid = np.ones(len(self.video_ids), dtype=bool)
        # a failure record naming no video of the store marks nothing (no id holds a NUL character)
        failed = self.video_ids.positions([r["video_id"] for r in self.failures if "\x00" not in r["video_id"]])
        self.valid[failed[failed >= 0]] = False
        self._check_contents()

    def _check_shapes(self, data_shape: tuple[int, ...], mask_shape: tuple[int, ...],
                      ids_shape: tuple[int, ...]) -> None:
        n, t = (ids_shape[0] if len(ids_shape) == 1 else -1), self.frames_per_video
        item = (self.size, self.size, 3) if not self.holds_features else data_shape[2:]
        if (tuple(data_shape[:2]) != (n, t) or tuple(data_shape[2:]) != tuple(item) or tuple(mask_shape) != (n, t)
                or (self.holds_features and not 1 <= len(item) == 1 <= item[0] <= 65536)):
            raise FramesStoreError(
                f"{self.path}: array shapes disagree with the store ({self.data_array} {list(data_shape)}, "
                f"{MASK} {list(mask_shape)}, {VIDEO_IDS} {list(ids_shape)}, {t} frames of {self.size} px)")

    def _check_ids(self) -> None:
        """The ids must be sorted and unique (as :func:`finish` writes them): :meth:`index` and
        ``valid`` find rows by binary search."""
        if not self.video_ids.is_sorted_unique():
            repeated = self.video_ids.repeated()
            found = (f"{len(repeated)} repeated, e.g. {list(repeated[:3])}" if len(repeated)
                     else "not in sorted order")
            raise FramesStoreError(f"{self.path}: {VIDEO_IDS} are not sorted and unique ({found}): the store was altered")

    def _check_contents(self) -> None:
        """Zarr reads a deleted chunk as zeros: demand the chunk of every decoded video (failed videos
        hold no data) and of every mask row group holding one, and a mask that fits the failures."""
        try:
            stored = chunk_presence(self.path / self.data_array)
            masks = chunk_presence(self.path / MASK)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FramesStoreError(f"{self.path}: unreadable chunk layout ({exc})") from exc
        n = len(self.video_ids)
        per_video = stored.reshape(stored.shape[0], -1).all(axis=1)[:n]
        holes = np.flatnonzero(self.valid & ~per_video)
        if holes.size:
            raise FramesStoreError(
                f"{self.path}: {self.data_array} of {holes.size} decoded video(s) missing from disk, e.g. "
                f"{[self.video_ids[i] for i in holes[:3]]} (a deleted chunk or shard); decode again")
        rows_per_chunk = -(-n // max(masks.shape[0], 1)) if n else 1
        chunk_of = np.arange(n) // max(rows_per_chunk, 1)
        needed = np.zeros(masks.shape[0], dtype=bool)
        needed[chunk_of[self.valid]] = True
        if (needed & ~masks.reshape(masks.shape[0], -1).all(axis=1)).any():
            raise FramesStoreError(f"{self.path}: {MASK} chunks of decoded videos are missing from disk; decode again")
        if self._mask[~self.valid].any() or (self.valid & ~self._mask.any(axis=1)).any():
            raise FramesStoreError(f"{self.path}: {MASK} does not fit the recorded failures (a failed video with "
                                   f"frames, or a decoded one without any): the store was altered")

    @classmethod
    def open(cls, path: str | Path) -> Any:
        """Open a finished store of this class's kind (refusing partial and unfinished stores)."""
        path = Path(path)
        if path.name.endswith(".partial") or (path / PROGRESS_DIR).exists():
            raise FramesStoreError(f"{path}: unfinished (partial) {cls.description}; rerun `{cls.written_by}` to finish it")
        attributes = read_attributes(path, (cls.kind,), cls.description)
        if not attributes.get("complete"):
            raise FramesStoreError(f"{path}: {cls.description} is not complete; rerun `{cls.written_by}` to finish it")
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
        missing = [name for name in (cls.data_array, MASK, VIDEO_IDS) if name not in group]
        if missing:
            raise FramesStoreError(f"{path}: {cls.description} lacks array(s) {', '.join(missing)}")
        return cls(path, group, attributes)

    def check_model(self, model: Any) -> None:
        """Refuse a model that cannot use this store's data (pixels suit every model)."""

    @property
    def frame_mask(self) -> np.ndarray:
        """bool [videos, T]: False for padding and failed videos (a copy)."""
        return self._mask.copy()

    def __len__(self) -> int:
        return len(self.video_ids)

    def __repr__(self) -> str:
        return (
            f"FramesStore({str(self.path)!r}, videos={len(self)}, T={self.frames_per_video}, "
            f"size={self.size}, failed={len(self.failures)})"
        )

    def index(self, video_ids: Iterable[str] | IdColumn) -> np.ndarray:
        """Positions (int64) of ``video_ids`` (strings or an IdColumn), found by binary search in the
        sorted ids; FramesStoreError naming the ids this store does not hold."""
        if not isinstance(video_ids, IdColumn):
            video_ids = list(video_ids)
        positions = self.video_ids.positions(video_ids)  # an id no store can hold (a NUL) is absent
        missing = np.flatnonzero(positions < 0)
        if missing.size:
            shown = ", ".join(repr(video_ids[int(i)]) for i in missing[:5]) + (
                f" and {missing.size - 5} more" if missing.size > 5 else ""
            )
            raise FramesStoreError(f"{self.path}: unknown video id(s) {shown}")
        return positions

    def read(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Data [n, T, ...] (uint8 frames or float16 features) and mask bool [n, T] of the videos at
        ``indices`` (any order, repeats allowed).

        Each run of consecutive positions is one slice read (a random batch: one chunk per video,
        found through its shard's index; a sequential pass: whole shards). Zarr's orthogonal
        integer-array selection is avoided: on sharded arrays it costs seconds per video.
        """
        positions = np.asarray(indices, dtype=np.int64).reshape(-1)
        if positions.size and (positions.min() < -len(self) or positions.max() >= len(self)):
            raise IndexError(f"{self.path}: video index out of range 0..{len(self) - 1}")
        positions = positions % max(len(self), 1)
        unique, inverse = np.unique(positions, return_inverse=True)
        frames = np.empty((len(unique), self.frames_per_video, *self.item_shape), dtype=self._frames.dtype)
        try:
            for start, stop in _runs(unique):
                first = int(unique[start])
                frames[start:stop] = self._frames[first : first + stop - start]
        except (ValueError, RuntimeError, OSError) as exc:  # crc32c mismatch, truncated or undecodable chunk
            raise FramesStoreError(f"{self.path}: corrupt {self.data_array} data ({type(exc).__name__}: {exc})") from exc
        if self.holds_features and not np.isfinite(frames).all():
            raise FramesStoreError(f"{self.path}: non-finite values in {self.data_array}: the store was altered")
        return frames[inverse], self._mask[positions]


HEX64 = frozenset("0123456789abcdef")


def _check_attributes(path: Path, attributes: dict, description: str) -> None:
    """Types and ranges of the attributes a reader relies on, before anything is sized from them."""
    def fingerprint_like(value: Any) -> bool:
        return isinstance(value, str) and len(value) == 64 and set(value) <= HEX64

    sampling = attributes.get("sampling")
    failures = attributes.get("failures")
    problems = []
    if not (fingerprint_like(attributes.get("fingerprint")) and fingerprint_like(attributes.get("manifest_fingerprint"))):
        problems.append("fingerprints are not sha256 hex digests")
    if not isinstance(sampling, dict) or not all(
            isinstance(sampling.get(key), int) and not isinstance(sampling.get(key), bool) and low <= sampling[key] <= high
            for key, low, high in (("frames_per_video", 1, 4096), ("size", 8, 4096))):
        problems.append("sampling lacks frames_per_video (1..4096) or size (8..4096)")
    if not isinstance(failures, list) or not all(isinstance(f, dict) and isinstance(f.get("video_id"), str) for f in failures):
        problems.append("failures is not a list of {video_id, ...} records")
    per_shard = attributes.get("videos_per_shard")
    if not isinstance(per_shard, int) or isinstance(per_shard, bool) or per_shard < 1:
        problems.append("videos_per_shard is not a positive integer")
    if problems:
        raise FramesStoreError(f"{path}: malformed {description} attributes: {'; '.join(problems)}")


def _runs(sorted_unique: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) offsets of the runs of consecutive integers in a sorted unique array."""
    breaks = np.flatnonzero(np.diff(sorted_unique) != 1) + 1
    bounds = [0, *breaks.tolist(), len(sorted_unique)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


# ---- the store and its manifest -------------------------------------------------------------------


def require_manifest(store: FramesStore, manifest: Any) -> None:
    """Refuse a store (frames or features) unless it was decoded from ``manifest`` (StoreMismatchError
    naming both fingerprints). Only the manifest fingerprint mode the store records is computed; for
    an older store without it, the cheap ``stat`` fingerprint is tried first and ``content`` (a hash of
    every file) after."""
    computed = {}
    modes = [store.manifest_fingerprint_mode] if store.manifest_fingerprint_mode else ["stat", "content"]
    for mode in modes:
        computed[mode] = manifest.fingerprint(mode)
        if computed[mode] == store.manifest_fingerprint:
            return
    found = "; ".join(f"{value} in {mode} mode" for mode, value in computed.items())
    raise StoreMismatchError(
        f"{store.path} was decoded from another manifest: its manifest fingerprint is {store.manifest_fingerprint}, "
        f"but {manifest.root} has fingerprint {found}; re-run `teach decode` for this manifest"
    )
