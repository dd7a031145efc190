"""``teach encode-frames``: per-frame features of a frozen image tower, computed once.

When a backbone's image tower does not train (``backbone.freeze_visual: true``, LiT-style, or a
wholly frozen student), its per-frame embeddings are a fixed function of the frames. This stage runs
the tower once over every video of a frames store and writes a frame-features store
(:mod:`teachclip.stores.features`): ``features`` float16 [videos, T, d] next to the
frames store's mask, ids and attributes. Every stage that reads videos accepts it (``--features``) instead of
the pixels (train-teacher, extract-teachers, train-student, evaluate, search) and refuses it unless the
model's tower is frozen and has the recorded ``visual_fingerprint`` — so stale features can never be
used by a model whose tower changed. On the demo this turns the image tower's cost (the bulk of a
training step on a CPU) from once per step into once per pipeline.

Work is done per shard of the frames store (``videos_per_shard`` videos), each shard marked complete
when written: a crash resumes with the unfinished shards, and a partial store computed by another
tower or from other frames is refused (``--overwrite`` starts over).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from teachclip.core.config import BackboneConfig, ComputeConfig
from teachclip.core.device import autocast, pick_device
from teachclip.core.progress import progress_bar
from teachclip.models.backbone import Backbone
from teachclip.stores import features, open_video_store
from teachclip.stores.zarr_io import partial_path
from teachclip.training.batches import frames_batches


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
    store = open_video_store(frames, "frames")
    out, partial = Path(out), partial_path(out)
    device = pick_device(compute.device)
    backbone = Backbone(backbone_config.model_copy(update={"freeze_visual": True})).to(device).eval()
    tower = {"name": backbone.config.name, "pretrained": backbone.config.pretrained,
             "visual_fingerprint": backbone.visual_fingerprint()}
    attributes = features.store_attributes(store, tower, complete=False)

    if overwrite:  # a frame-features store or its partial store only
        features.remove(out)
        features.remove(partial)
    if out.exists():
        features.check_existing(out, attributes)
        return out
    pending = features.open_partial(partial, store, backbone.embed_dim, attributes)
    amp = backbone_config.precision == "amp"
    shards = -(-len(store) // int(attributes["videos_per_shard"]))
    with progress_bar(progress) as bar, torch.no_grad():
        task = bar.add_task("encode frames", total=shards, completed=shards - len(pending), status="")
        for rows, (pixels, mask) in zip(pending, frames_batches(store, pending), strict=True):
            with autocast(device, amp):
                values = backbone.encode_frames(pixels.to(device)).float()
            values = values * mask.to(device)[..., None]  # padding and failed videos stay 0
            features.write_shard(partial, rows, values.cpu().numpy().astype(np.float16))
            bar.update(task, advance=1)
    features.finish(partial, out, attributes)
    return out
