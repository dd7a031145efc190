"""On-disk stores, one home each (schema, writer, reader, checks); none imports torch.

- :mod:`.frames`: ``frames.zarr``, the decoded frames of every manifest video;
- :mod:`.features`: ``features.zarr``, per-frame embeddings of a frozen image tower;
- :mod:`.teacher_cache`: ``teachers.zarr``, the teachers' soft labels (dense and sparse groups, verify,
  remotes, HDF5 interchange);
- :mod:`.search_index`: ``index.zarr``, one vector per video of a collection;
- :mod:`.caption_mask`: ``caption_mask.json`` of the caption audit;
- :mod:`.zarr_io`: what every Zarr store shares (checksummed arrays, partial/publish, chunk checks).

:func:`open_video_store` opens the video input of a stage: a frames store or a frame-features store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from teachclip.stores import features, frames
from teachclip.stores.features import FrameFeaturesStore
from teachclip.stores.frames import FramesStore, FramesStoreError, require_manifest

VideoStoreKind = Literal["frames", "features"]
_CLASSES = {frames.STORE_KIND: FramesStore, features.STORE_KIND: FrameFeaturesStore}
_NAMES: dict[type, VideoStoreKind] = {FramesStore: "frames", FrameFeaturesStore: "features"}
_CLASS_OF = {name: cls for cls, name in _NAMES.items()}


def video_store_kind(path: str | Path) -> VideoStoreKind:
    """"frames" or "features": what kind of video store ``path`` is (FramesStoreError if neither)."""
    attributes = frames.read_attributes(path, tuple(_CLASSES), "frames or frame-features store")
    return _NAMES[_CLASSES[attributes["kind"]]]


def open_video_store(path: str | Path, kind: VideoStoreKind | None = None) -> FramesStore:
    """Open a finished frames store or frame-features store; ``kind`` ("frames" or "features") refuses
    the other one (so that ``--frames`` never silently gets features, nor ``--features`` pixels)."""
    found = video_store_kind(path)
    if kind is not None and found != kind:
        wanted = FramesStore.description if kind == "frames" else FrameFeaturesStore.description
        raise FramesStoreError(f"{path}: a {_CLASS_OF[found].description}, but a {wanted} is needed here")
    return _CLASS_OF[found].open(path)


def open_for_manifest(path: str | Path, manifest) -> FramesStore:
    """:func:`open_video_store`, refusing a store decoded from another manifest than ``manifest``."""
    store = open_video_store(path)
    require_manifest(store, manifest)
    return store
