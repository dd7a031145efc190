"""The frame-features store: per-frame embeddings of a frozen image tower (``features.zarr``).

Layout (docs/stores.md; written by ``teach encode-frames``)::

    features.zarr/
      features     float16 [videos, T, d]; 0 for padding and failed videos; one shard per
                   ``videos_per_shard`` videos of the frames store it was computed from
      frame_mask   bool [videos, T] and video_ids: copied from the frames store
      attributes   the frames store's (``fingerprint`` is the *frames* fingerprint: with the tower
                   fixed, features are a function of the frames, so teacher caches and evaluations
                   computed from either agree), kind "teachclip-frame-features",
                   ``features_fingerprint`` and ``backbone``: the tower's name, pretrained source and
                   ``visual_fingerprint`` (sha256 of its weights), which readers require of a model

Written shard by shard in ``<out>.partial`` (one completion marker each); a partial or finished store
computed by another tower or from other frames is refused, naming both fingerprints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from teachclip.core.fingerprint import fingerprint
from teachclip.stores.frames import (
    FORMAT_VERSION,
    MASK,
    VIDEO_IDS,
    FramesStore,
    FramesStoreError,
    StoreMismatchError,
    read_attributes,
)
from teachclip.stores.zarr_io import (
    PROGRESS_DIR,
    create_array,
    done_units,
    finalize,
    mark_done,
    remove_store,
    write_strings,
)

STORE_KIND = "teachclip-frame-features"
FEATURES = "features"


# ---- writer -------------------------------------------------------------------------------------


def store_attributes(frames: FramesStore, tower: dict[str, Any], complete: bool) -> dict:
    """Attributes of the features of ``frames`` computed by ``tower`` ({name, pretrained,
    visual_fingerprint})."""
    source = read_attributes(frames.path)
    return {
        "kind": STORE_KIND,
        "format_version": FORMAT_VERSION,
        "fingerprint": frames.fingerprint,  # the frames these features were computed from
        "manifest_fingerprint": frames.manifest_fingerprint,
        "manifest_fingerprint_mode": frames.manifest_fingerprint_mode,
        "features_fingerprint": fingerprint("frame-features", {"frames": frames.fingerprint, "backbone": tower}),
        "backbone": tower,
        "sampling": source["sampling"],
        "videos": len(frames),
        "videos_per_shard": source["videos_per_shard"],
        "failures": frames.failures,
        "complete": complete,
    }


def check_existing(path: Path, attributes: dict) -> None:
    """Refuse a store or partial store at ``path`` of another tower or other frames."""
    wanted = attributes["features_fingerprint"]
    try:
        found = read_attributes(path, (STORE_KIND,), "frame-features store").get("features_fingerprint")
    except FramesStoreError as exc:
        raise StoreMismatchError(f"{path}: exists and is not a frame-features store ({exc}); "
                                 f"remove it or pass --overwrite") from exc
    if found != wanted:
        raise StoreMismatchError(
            f"{path}: holds frame features {found}, but these frames and this image tower give {wanted}; "
            f"pass --overwrite to recompute, or choose another --out")


def open_partial(partial: Path, frames: FramesStore, dim: int, attributes: dict) -> list[np.ndarray]:
    """Create ``<out>.partial`` (or check the one a previous run left); returns the frames-store rows
    of every shard still to compute."""
    if partial.exists():
        check_existing(partial, attributes)
    else:
        root = zarr.open_group(str(partial), mode="w", zarr_format=3)
        steps, per_shard = frames.frames_per_video, int(attributes["videos_per_shard"])
        # one shard per frames-store shard: a resumed run rewrites whole shards only
        create_array(root, FEATURES, (len(frames), steps, dim), (1, steps, dim), "float16",
                     shards=(per_shard, steps, dim))
        mask = frames.frame_mask
        create_array(root, MASK, mask.shape, (max(per_shard, 1), steps), "bool", fill_value=False)[...] = mask
        write_strings(root, VIDEO_IDS, frames.video_ids)
        root.attrs.update(attributes)
    per_shard = int(attributes["videos_per_shard"])
    shards = [np.arange(start, min(start + per_shard, len(frames))) for start in range(0, len(frames), per_shard)]
    done = done_units(partial)
    return [shard for shard in shards if _unit(shard) not in done]


def write_shard(partial: Path, rows: np.ndarray, features: np.ndarray) -> None:
    """Write the features [len(rows), T, d] of one shard (consecutive ``rows``) and mark it done."""
    zarr.open_array(str(partial / FEATURES), mode="r+")[int(rows[0]) : int(rows[-1]) + 1] = features.astype(np.float16)
    mark_done(partial, _unit(rows))


def finish(partial: Path, out: Path, attributes: dict) -> None:
    zarr.open_group(str(partial), mode="r+", zarr_format=3).attrs.update({**attributes, "complete": True})
    finalize(partial, out, STORE_KIND)


def remove(path: Path) -> None:
    """``--overwrite``: delete a frame-features store or its partial store, and nothing else."""
    remove_store(path, STORE_KIND, unfinished_entries=frozenset({"zarr.json", FEATURES, MASK, VIDEO_IDS, PROGRESS_DIR}))


def _unit(rows: np.ndarray) -> str:
    return f"shard-{int(rows[0]):08d}"


# ---- reader -------------------------------------------------------------------------------------


class FrameFeaturesStore(FramesStore):
    """The frames store's reader API over per-frame embeddings [n, T, d] (float16); :meth:`check_model`
    accepts only a model whose frozen image tower computed them."""

    holds_features = True
    kind = STORE_KIND
    data_array = FEATURES
    description = "frame-features store"
    written_by = "teach encode-frames"

    def __init__(self, path: Path, group: zarr.Group, attributes: dict) -> None:
        backbone = attributes.get("backbone")
        if not isinstance(backbone, dict) or not isinstance(backbone.get("visual_fingerprint"), str) or not isinstance(
                attributes.get("features_fingerprint"), str):
            raise FramesStoreError(f"{path}: malformed {self.description} attributes: no backbone identity")
        super().__init__(path, group, attributes)
        self.backbone: dict = dict(backbone)
        self.features_fingerprint: str = attributes["features_fingerprint"]

    def __repr__(self) -> str:
        return (f"FrameFeaturesStore({str(self.path)!r}, videos={len(self)}, T={self.frames_per_video}, "
                f"dim={self.item_shape[0]}, backbone={self.backbone['name']})")

    def check_model(self, model: Any) -> None:
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
