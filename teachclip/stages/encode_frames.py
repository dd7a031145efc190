"""``teach encode-frames``: per-frame features of a frozen image tower, computed once.

When a backbone's image tower does not train (``backbone.freeze_visual: true``, LiT-style, or a
wholly frozen student), its per-frame embeddings are a fixed function of the frames. This stage runs
the tower once over every video of a frames store and writes a frame-features store
(:class:`~teachclip.stores.frames.FrameFeaturesStore`): ``features`` float16 [videos, T, d] next to the
frames store's mask, ids and attributes. Every stage that takes ``--frames`` accepts it instead of the
pixels (train-teacher, extract-teachers, train-student, evaluate, search) and refuses it unless the
model's tower is frozen and has the recorded ``visual_fingerprint`` — so stale features can never be
used by a model whose tower changed. On the demo this turns the image tower's cost (the bulk of a
training step on a CPU) from once per step into once per pipeline.

Work is done per shard of the frames store (``videos_per_shard`` videos), each shard marked complete
when written: a crash resumes with the unfinished shards, and a partial store computed by another
tower or from other frames is refused (``--overwrite`` starts over).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import zarr

from teachclip.stores.frames import (
    FEATURES,
    FEATURES_KIND,
    FORMAT_VERSION,
    MASK,
    VIDEO_IDS,
    FramesStore,
    FramesStoreError,
    StoreMismatchError,
    read_attributes,
)
from teachclip.stores.zarr_io import create_array, done_units, finalize, mark_done, partial_path, write_strings
from teachclip.models.backbone import Backbone, autocast, pick_device
from teachclip.core.config import BackboneConfig, ComputeConfig
from teachclip.core.fingerprint import fingerprint
from teachclip.training import frames_batches, training_progress


def features_attributes(frames: FramesStore, backbone: Backbone, complete: bool) -> dict:
    source = read_attributes(frames.path)
    tower = {"name": backbone.config.name, "pretrained": backbone.config.pretrained,
             "visual_fingerprint": backbone.visual_fingerprint()}
    return {
        "kind": FEATURES_KIND,
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


def encode_frames(
    frames: str | Path,
    out: str | Path,
    backbone_config: BackboneConfig,
    compute: ComputeConfig,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the frame-features store ``out`` for the frames store ``frames``; returns ``out``.

    Does nothing when ``out`` already holds this tower's features of these frames; refuses (naming both
    fingerprints) an ``out`` or partial store of another tower or other frames unless ``overwrite``.
    """
    store = FramesStore.open(frames)
    if store.holds_features:
        raise FramesStoreError(f"{frames}: already a frame-features store; give the frames store it came from")
    out, partial = Path(out), partial_path(out)
    device = pick_device(compute.device)
    backbone = Backbone(backbone_config.model_copy(update={"freeze_visual": True})).to(device).eval()
    attributes = features_attributes(store, backbone, complete=False)
    wanted = attributes["features_fingerprint"]

    if overwrite:
        for path in (out, partial):
            if path.exists():
                shutil.rmtree(path)
    if out.exists():
        _check_same(out, wanted)
        return out
    if partial.exists():
        _check_same(partial, wanted)
    else:
        _create(partial, store, backbone.embed_dim, attributes)

    per_shard = int(attributes["videos_per_shard"])
    shards = [np.arange(start, min(start + per_shard, len(store))) for start in range(0, len(store), per_shard)]
    done = done_units(partial)
    pending = [shard for shard in shards if _unit(shard) not in done]
    features_array = zarr.open_array(str(partial / FEATURES), mode="r+")
    amp = backbone_config.precision == "amp"
    with training_progress(progress) as bar, torch.no_grad():
        task = bar.add_task("encode frames", total=len(shards), completed=len(shards) - len(pending), status="")
        for shard, (pixels, mask) in zip(pending, frames_batches(store, pending), strict=True):
            with autocast(device, amp):
                features = backbone.encode_frames(pixels.to(device)).float()
            features = features * mask.to(device)[..., None]  # padding and failed videos stay 0
            features_array[int(shard[0]) : int(shard[-1]) + 1] = features.cpu().numpy().astype(np.float16)
            mark_done(partial, _unit(shard))
            bar.update(task, advance=1)
    group = zarr.open_group(str(partial), mode="r+", zarr_format=3)
    group.attrs.update({**attributes, "complete": True})
    finalize(partial, out)
    return out


def _unit(shard: np.ndarray) -> str:
    return f"shard-{int(shard[0]):08d}"


def _create(partial: Path, store: FramesStore, dim: int, attributes: dict) -> None:
    root = zarr.open_group(str(partial), mode="w", zarr_format=3)
    steps, per_shard = store.frames_per_video, int(attributes["videos_per_shard"])
    # one shard per frames-store shard: a resumed run rewrites whole shards only
    create_array(root, FEATURES, (len(store), steps, dim), (1, steps, dim), "float16", shards=(per_shard, steps, dim))
    mask = store.frame_mask
    create_array(root, MASK, mask.shape, (max(per_shard, 1), steps), "bool", fill_value=False)[...] = mask
    write_strings(root, VIDEO_IDS, store.video_ids)
    root.attrs.update(attributes)


def _check_same(path: Path, wanted: str) -> None:
    try:
        found = read_attributes(path).get("features_fingerprint")
    except FramesStoreError as exc:
        raise StoreMismatchError(f"{path}: exists and is not a frame-features store ({exc}); "
                                 f"remove it or pass --overwrite") from exc
    if found != wanted:
        raise StoreMismatchError(
            f"{path}: holds frame features {found}, but these frames and this image tower give {wanted}; "
            f"pass --overwrite to recompute, or choose another --out")
