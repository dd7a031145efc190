"""``teach pretrain-backbone``: the demo's stand-in for OpenAI's CLIP pretraining.

Real TeachCLIP starts every model from OpenAI's CLIP, whose image tower already recognises objects
from 400M image-text pairs; teachers and students then mostly learn how to *pool frames* and align
captions (CLIP4Clip fine-tunes the towers at lr 1e-7). A tiny CLIP trained from scratch on a CPU
for minutes recognises almost nothing, which buries every teacher-student difference in noise.

This stage gives the demo the same starting point honestly: it trains a tiny open_clip model with
CLIP's own objective on (single frame, caption of what that frame shows) pairs from a **separate**
set of demo videos (``pretrain_backbone.data``: another seed, never the benchmark's videos). The
labels come from that set's ``demo.json`` timeline, exactly as web alt-text labels an image: junk
seconds have no caption and are left out; each epoch draws a fresh wording of every frame's object
(random template and synonyms, the scene named with the demo's probability). The captions describe
single frames, never videos, so nothing about the benchmark's video-level task leaks in.

Output directory (a saved model of kind ``backbone``, :mod:`teachclip.models.io`)::

    model.safetensors       the open_clip towers (``clip.*``): use the file (or the directory) as
                            ``backbone.pretrained``
    config.json             the backbone config; extra: pretraining config, data fingerprint, last metrics
    dvclive/                per epoch: loss, held-out text->frame R@1/R@5 (frames of the data's test split)
    checkpoint/             training state for --resume
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from teachclip.core.config import ComputeConfig, PretrainBackboneConfig
from teachclip.core.device import autocast, grad_scaler, pick_device
from teachclip.core.errors import InputError
from teachclip.core.manifest import load_manifest
from teachclip.core.progress import progress_bar
from teachclip.demo.vocabulary import META_FILE, TEMPLATES, ObjectSpec, compose_caption
from teachclip.models.backbone import Backbone
from teachclip.models.factory import BACKBONE
from teachclip.models.io import save_model
from teachclip.models.losses import info_nce
from teachclip.models.metrics import retrieval_metrics
from teachclip.stores import open_for_manifest
from teachclip.training.log import RunningLosses
from teachclip.training.optim import build_optimizer, optimizer_step, seed_everything, warmup_cosine
from teachclip.training.state import CHECKPOINT_DIR, save_training_state, start_or_resume
from teachclip.video import uniform_picks


class PretrainError(InputError):
    """Data this stage cannot pretrain on; the message names the file and the reason."""


@dataclass
class FramePairs:
    """Labelled single frames: pixels uint8 [N, H, W, 3] and the object each one shows."""

    pixels: torch.Tensor
    objects: list[ObjectSpec]
    scene_mention_fraction: float


def labelled_frames(manifest_dir: str | Path, store, splits: set[str]) -> FramePairs:
    """Every valid frame of the ``splits`` videos that shows an object (junk seconds have no label)."""
    meta_path = Path(manifest_dir) / META_FILE
    if not meta_path.is_file():
        raise PretrainError(f"{meta_path}: not found; pretrain-backbone needs the ground truth that "
                            f"`teach demo-data` writes (it labels every second of every video)")
    meta = json.loads(meta_path.read_text())
    sample_fps = float(store.sampling["sample_fps"])
    videos = [video for video in meta["videos"] if video["split"] in splits]
    if not videos:
        raise PretrainError(f"{meta_path}: no videos in split(s) {', '.join(sorted(splits))}")
    positions = store.index([video["video_id"] for video in videos])
    pixels, mask = store.read(positions)
    keep_video, keep_frame, objects = [], [], []
    for row, video in enumerate(videos):
        timeline = video["timeline"]
        # decode takes sample_fps candidates per second, then linspaces them down to T (video.py)
        candidates = max(1, math.ceil(len(timeline) * sample_fps))
        for frame, candidate in enumerate(uniform_picks(candidates, store.frames_per_video)):
            second = min(int(candidate / sample_fps), len(timeline) - 1)
            kind, _, which = timeline[second].partition(":")
            if kind == "object" and mask[row, frame]:
                keep_video.append(row)
                keep_frame.append(frame)
                objects.append(ObjectSpec(**video["objects"][int(which)]))
    selected = pixels[np.array(keep_video, dtype=np.int64), np.array(keep_frame, dtype=np.int64)]
    return FramePairs(torch.from_numpy(np.ascontiguousarray(selected)), objects,
                      float(meta["config"]["scene_mention_fraction"]))


def captions_for(pairs: FramePairs, indices: np.ndarray, rng: np.random.Generator) -> list[str]:
    """A fresh random wording of each frame's object (template, synonyms, scene or not)."""
    return [compose_caption(rng, pairs.objects[i], TEMPLATES[int(rng.integers(len(TEMPLATES)))],
                            bool(rng.random() < pairs.scene_mention_fraction)) for i in indices]


@torch.no_grad()
def held_out_recall(model: Backbone, pairs: FramePairs, captions: list[str], device: torch.device,
                    amp: bool, batch: int = 256) -> dict[str, float]:
    """Text -> frame R@1/R@5 of each held-out caption among all held-out frames (ties pessimistic)."""
    model.eval()
    images, texts = [], []
    for start in range(0, len(captions), batch):
        with autocast(device, amp):
            images.append(F.normalize(model.encode_images(pairs.pixels[start : start + batch]).float(), dim=-1))
            tokens = model.tokenize(captions[start : start + batch]).to(device)
            texts.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    metrics = retrieval_metrics(torch.cat(texts) @ torch.cat(images).T, np.arange(len(captions)))
    return {"heldout_R1": metrics["t2v_R1"], "heldout_R5": metrics["t2v_R5"]}


def pretrain_backbone(
    manifest_dir: str | Path,
    frames: str | Path,
    out: str | Path,
    config: PretrainBackboneConfig,
    compute: ComputeConfig,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain ``config.backbone`` on labelled frames of ``manifest_dir`` (a demo set); returns the last row."""
    if config.backbone.freeze_visual:
        raise PretrainError("pretrain-backbone trains the image tower: set pretrain_backbone.backbone.freeze_visual: false")
    out, device = Path(out), pick_device(compute.device)
    checkpoint = out / CHECKPOINT_DIR
    manifest = load_manifest(manifest_dir)
    store = open_for_manifest(frames, manifest)
    if store.holds_features:
        raise PretrainError(f"{frames}: a frame-features store; pretraining needs the frames themselves")
    train = labelled_frames(manifest_dir, store, {"train", "val"})
    held = labelled_frames(manifest_dir, store, {"test"})
    pick = np.random.default_rng(config.seed).permutation(len(held.objects))[: config.eval_pairs]
    held = FramePairs(held.pixels[torch.from_numpy(pick)], [held.objects[i] for i in pick], held.scene_mention_fraction)
    held_captions = captions_for(held, np.arange(len(held.objects)), np.random.default_rng([config.seed, 1]))

    seed_everything(config.seed)
    model = Backbone(config.backbone).to(device)
    amp = config.backbone.precision == "amp"
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    optimizer = build_optimizer({"backbone": named}, {"backbone": config.lr}, config.weight_decay)
    steps_per_epoch = len(train.objects) // config.batch_size  # full batches only: InfoNCE needs negatives
    if steps_per_epoch == 0:
        raise PretrainError(f"{manifest_dir}: {len(train.objects)} labelled frames, fewer than one batch of "
                            f"{config.batch_size}; generate more pretraining videos")
    scheduler = warmup_cosine(optimizer, steps_per_epoch * config.epochs, config.warmup_fraction)
    scaler = grad_scaler(device, amp)
    identity = {"train": config.model_dump(mode="json"), "frames_fingerprint": store.fingerprint}
    if not resume and checkpoint.exists():
        shutil.rmtree(checkpoint)
    start_epoch, step, log = start_or_resume(out, checkpoint, identity, resume, model=model, optimizer=optimizer,
                                             scheduler=scheduler, scaler=scaler)

    with progress_bar(progress) as bar:
        for epoch in range(start_epoch, config.epochs):
            model.train()
            rng = np.random.default_rng([config.seed, epoch])  # order and wordings of this epoch
            order = rng.permutation(len(train.objects))[: steps_per_epoch * config.batch_size]
            running = RunningLosses()
            task = bar.add_task(f"epoch {epoch + 1}/{config.epochs}", total=steps_per_epoch, status="")
            for batch in order.reshape(steps_per_epoch, config.batch_size):
                tokens = model.tokenize(captions_for(train, batch, rng)).to(device)
                with autocast(device, amp):
                    image = F.normalize(model.encode_images(train.pixels[torch.from_numpy(batch)]).float(), dim=-1)
                    text = F.normalize(model.encode_text(tokens).float(), dim=-1)
                    logit_scale = model.clip.logit_scale.exp().clamp(max=100)
                    loss = info_nce(logit_scale * text @ image.T)
                optimizer_step({"loss": loss}, step + 1, model.parameters(), optimizer, scheduler, scaler, config.grad_clip)
                step += 1
                running.update({"loss": loss.detach()})
                bar.update(task, advance=1, status=running.status())
            row = {"epoch": epoch + 1, "step": step, **running.means(),
                   "logit_scale": float(model.clip.logit_scale.exp().detach()),
                   **held_out_recall(model, held, held_captions, device, amp)}
            bar.update(task, status=f"{running.status()} | held-out R@1 {row['heldout_R1']:.1f}")
            log.append(row)
            save_training_state(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                epoch=epoch + 1, step=step, extra={"identity": identity, "history": log.rows})

    last = log.rows[-1] if log.rows else {}
    save_model(out, model, BACKBONE, config.backbone, extra={
        "pretrain_backbone": config.model_dump(mode="json"), "frames_fingerprint": store.fingerprint,
        "train_frames": len(train.objects), "heldout_frames": len(held.objects), "last_epoch": last})
    return last
