"""The frames store: sampled, resized RGB frames of every manifest video (Zarr v3).

Layout of ``frames.zarr`` (written by ``teachclip.stages.decode``, see docs/decode.md):

- ``frames``      uint8 [videos, T, size, size, 3]; one video per chunk, ``videos_per_shard``
  videos per shard file; zero for padding and for videos that failed;
- ``frame_mask``  bool [videos, T]; False for padding and failed videos; one chunk per shard;
- ``video_ids``   every manifest video, sorted by id (failed ones included, so positions are stable);
- attributes: ``kind``, ``format_version``, ``fingerprint`` (frames), ``manifest_fingerprint``,
  ``sampling`` (frames per video, rate, size, decoder name and versions), ``videos_per_shard``,
  ``failures`` ([{video_id, path, reason}] sorted by id) and ``complete``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import zarr

from teachclip.stores.zarr_io import PROGRESS_DIR, read_strings

STORE_KIND = "teachclip-frames"
FEATURES_KIND = "teachclip-frame-features"  # FrameFeaturesStore: per-frame embeddings of a frozen tower
FORMAT_VERSION = 1
FRAMES, MASK, VIDEO_IDS = "frames", "frame_mask", "video_ids"
FEATURES = "features"


class FramesStoreError(ValueError):
    """A frames store that cannot be used; the message names the path and the reason."""


class StoreMismatchError(FramesStoreError):
    """An existing store (or partial store) built from other inputs than the ones asked for."""


def read_attributes(path: str | Path) -> dict:
    """The attributes of a frames store (finished or partial); FramesStoreError if it is none."""
    path = Path(path)
    if not path.exists():
        raise FramesStoreError(f"{path}: frames store not found")
    try:
        attributes = dict(zarr.open_group(str(path), mode="r", zarr_format=3).attrs)
    except Exception as exc:  # zarr raises several types for "not a group"
        raise FramesStoreError(f"{path}: not a Zarr v3 frames store ({type(exc).__name__}: {exc})") from exc
    if attributes.get("kind") not in (STORE_KIND, FEATURES_KIND):
        raise FramesStoreError(f"{path}: not a frames store (attribute kind={attributes.get('kind')!r})")
    if attributes.get("format_version") != FORMAT_VERSION:
        raise FramesStoreError(
            f"{path}: frames store format {attributes.get('format_version')!r}, this code reads {FORMAT_VERSION}"
        )
    return attributes


class FramesStore:
    """Read access to a finished frames store; ``read`` serves random batches.

    :meth:`open` returns a :class:`FrameFeaturesStore` for a frame-features store: the same API,
    serving per-frame embeddings [n, T, d] instead of pixels.
    """

    holds_features = False
    data_array = FRAMES

    def __init__(self, path: Path, group: zarr.Group, attributes: dict) -> None:
        self.path = path
        self.fingerprint: str = attributes["fingerprint"]
        self.manifest_fingerprint: str = attributes["manifest_fingerprint"]
        # "stat" or "content"; None for stores written before the mode was recorded
        self.manifest_fingerprint_mode: str | None = attributes.get("manifest_fingerprint_mode")
        self.sampling: dict = attributes["sampling"]
        self.failures: list[dict] = list(attributes["failures"])
        self.frames_per_video: int = int(self.sampling["frames_per_video"])
        self.size: int = int(self.sampling["size"])
        self._frames = group[self.data_array]
        self.item_shape: tuple[int, ...] = tuple(self._frames.shape[2:])  # (H, W, 3) or (d,)
        self.video_ids: list[str] = read_strings(group[VIDEO_IDS])
        self._positions = {video_id: i for i, video_id in enumerate(self.video_ids)}
        self._mask = np.asarray(group[MASK][...], dtype=bool)  # small: kept in memory
        failed = {record["video_id"] for record in self.failures}
        self.valid = np.array([video_id not in failed for video_id in self.video_ids], dtype=bool)

    @classmethod
    def open(cls, path: str | Path) -> FramesStore:
        path = Path(path)
        if path.name.endswith(".partial") or (path / PROGRESS_DIR).exists():
            raise FramesStoreError(
                f"{path}: unfinished (partial) frames store; rerun `teach decode` to finish it"
            )
        attributes = read_attributes(path)
        if not attributes.get("complete"):
            raise FramesStoreError(f"{path}: frames store is not complete; rerun `teach decode` to finish it")
        store_class = FrameFeaturesStore if attributes["kind"] == FEATURES_KIND else FramesStore
        if cls is not FramesStore and store_class is not cls:
            raise FramesStoreError(f"{path}: a {attributes['kind']} store, not a {cls.__name__}")
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
        missing = [name for name in (store_class.data_array, MASK, VIDEO_IDS) if name not in group]
        if missing:
            raise FramesStoreError(f"{path}: frames store lacks array(s) {', '.join(missing)}")
        return store_class(path, group, attributes)

    def check_model(self, model) -> None:
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

    def index(self, video_ids: Iterable[str]) -> np.ndarray:
        """Positions of ``video_ids``; KeyError naming the ids this store does not hold."""
        video_ids = list(video_ids)
        unknown = [v for v in video_ids if v not in self._positions]
        if unknown:
            shown = ", ".join(map(repr, unknown[:5])) + (
                f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            )
            raise KeyError(f"{self.path}: unknown video id(s) {shown}")
        return np.array([self._positions[v] for v in video_ids], dtype=np.int64)

    def read(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames uint8 [n, T, H, W, 3] and mask bool [n, T] of the videos at ``indices`` (any order,
        repeats allowed).

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
        for start, stop in _runs(unique):
            first = int(unique[start])
            frames[start:stop] = self._frames[first : first + stop - start]
        return frames[inverse], self._mask[positions]


class FrameFeaturesStore(FramesStore):
    """Per-frame image embeddings of a frozen image tower (written by ``teach encode-frames``).

    ``features`` float16 [videos, T, d] (0 for padding and failed videos), plus the frames store's
    ``frame_mask``, ``video_ids`` and attributes (``fingerprint`` is the *frames* fingerprint: with the
    tower fixed, features are a function of the frames, so teacher caches and evaluations computed
    from either agree), and ``backbone``: the tower's name, pretrained source and
    ``visual_fingerprint`` (Backbone.visual_fingerprint), which :meth:`check_model` requires.
    """

    holds_features = True
    data_array = FEATURES

    def __init__(self, path: Path, group: zarr.Group, attributes: dict) -> None:
        super().__init__(path, group, attributes)
        self.backbone: dict = dict(attributes["backbone"])
        self.features_fingerprint: str = attributes["features_fingerprint"]

    def __repr__(self) -> str:
        return (f"FrameFeaturesStore({str(self.path)!r}, videos={len(self)}, T={self.frames_per_video}, "
                f"dim={self.item_shape[0]}, backbone={self.backbone['name']})")

    def check_model(self, model) -> None:
        """The model's image tower must be frozen and be the one that computed these features."""
        backbone = getattr(model, "backbone", None)
        if backbone is None or not hasattr(backbone, "visual_fingerprint"):
            raise FramesStoreError(f"{self.path}: holds frame features; a {type(model).__name__} has no "
                                   f"open_clip image tower to match them against, give it a frames store")
        if not backbone.visual_frozen:
            raise FramesStoreError(
                f"{self.path}: holds features of a frozen image tower, but this model's tower trains; "
                f"set backbone.freeze_visual: true or give the frames store instead")
        ours = backbone.visual_fingerprint()
        if ours != self.backbone["visual_fingerprint"]:
            raise FramesStoreError(
                f"{self.path}: features were computed by image tower {self.backbone['visual_fingerprint'][:16]} "
                f"({self.backbone['name']}, pretrained={self.backbone.get('pretrained')}), but this model's tower "
                f"is {ours[:16]}; rerun `teach encode-frames` with this model's backbone")


def _runs(sorted_unique: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) offsets of the runs of consecutive integers in a sorted unique array."""
    breaks = np.flatnonzero(np.diff(sorted_unique) != 1) + 1
    bounds = [0, *breaks.tolist(), len(sorted_unique)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
