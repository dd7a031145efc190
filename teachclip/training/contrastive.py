"""The symmetric-InfoNCE training loop: how ``teach train-teacher`` trains a teacher, and how the slow
test trains the meanP baseline with the same recipe.

Data: one caption per training video per epoch, CLIP4Clip style. Loss: ``info_nce(logit_scale * S)``
with ``S`` the model's own [B, B] similarity of the batch (through its scorer) and its learned logit
scale. After every ``eval_every`` epochs (and the last) the evaluation split is scored, and the
training state is checkpointed at every epoch end, so ``--resume`` ends on the same weights as an
uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from teachclip.core.config import EvaluateConfig, TrainTeacherConfig
from teachclip.core.device import autocast, grad_scaler
from teachclip.core.manifest import Manifest
from teachclip.core.progress import progress_bar
from teachclip.models.losses import info_nce
from teachclip.training.batches import caption_per_video_batches, frames_batches, training_data
from teachclip.training.log import RunningLosses
from teachclip.training.optim import build_optimizer, optimizer_step, param_groups_by_name, warmup_cosine
from teachclip.training.scoring import TEST_COLUMNS, evaluate_split, uses_amp
from teachclip.training.state import CHECKPOINT_DIR, save_training_state, start_or_resume


def logit_scale_of(model: nn.Module) -> torch.Tensor:
    """The model's learned, clamped logit scale: a property on teachers, a method on the student."""
    scale = getattr(model, "logit_scale", None)
    if scale is None:
        raise TypeError(f"{type(model).__name__} exposes no logit_scale to train with InfoNCE")
    return scale() if callable(scale) else scale


def batch_similarity(
    model: nn.Module, texts: list[str], caption_ids: list[str], video_ids: list[str],
    frames: torch.Tensor, mask: torch.Tensor,
) -> torch.Tensor:
    """[B, B] similarity of caption i and video j of a batch (caption i belongs to video i)."""
    scorer = model.scorer()
    text_batch = scorer.text_batch(texts, caption_ids, video_ids)
    text_batch["tokens"] = text_batch["tokens"].to(frames.device)
    video_batch = {"frames": frames, "mask": mask, "video_ids": video_ids}
    return scorer.score(scorer.encode_texts(text_batch), scorer.encode_videos(video_batch))


def train_contrastive(
    model: nn.Module,
    store,
    manifest: Manifest,
    out: str | Path,
    config: TrainTeacherConfig,
    evaluate_config: EvaluateConfig,
    device: torch.device,
    *,
    identity: dict[str, Any],
    resume: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train ``model`` (on ``device``) with symmetric InfoNCE; returns the per-epoch metric rows.

    ``identity`` (JSON) describes the run; a resume refuses a checkpoint of a different run.
    """
    out = Path(out)
    checkpoint = out / CHECKPOINT_DIR
    store.check_model(model)
    data = training_data(store, manifest)
    amp = uses_amp(model)
    evaluate_on = evaluate_config.split if manifest.videos_in(evaluate_config.split) else None

    optimizer = build_optimizer(param_groups_by_name(model), {"backbone": config.lr_backbone, "new": config.lr},
                                config.weight_decay)
    steps_per_epoch = len(caption_per_video_batches(data.captions_of_video, config.batch_size, config.seed, 0))
    scheduler = warmup_cosine(optimizer, steps_per_epoch * config.epochs, config.warmup_fraction)
    scaler = grad_scaler(device, amp)
    start_epoch, step, log = start_or_resume(out, checkpoint, identity, resume, model=model, optimizer=optimizer,
                                             scheduler=scheduler, scaler=scaler)

    with progress_bar(progress) as bar:
        for epoch in range(start_epoch, config.epochs):
            model.train()
            batches = caption_per_video_batches(data.captions_of_video, config.batch_size, config.seed, epoch)
            reader = frames_batches(store, [data.store_rows[b.videos] for b in batches], config.prefetch)
            running = RunningLosses()
            task = bar.add_task(f"epoch {epoch + 1}/{config.epochs}", total=len(batches), status="")
            for batch, (frames, mask) in zip(batches, reader, strict=True):
                with autocast(device, amp):
                    similarity = batch_similarity(
                        model, [data.texts[i] for i in batch.captions], [data.caption_ids[i] for i in batch.captions],
                        [data.video_ids[v] for v in batch.videos], frames.to(device), mask.to(device))
                    loss = info_nce(logit_scale_of(model) * similarity.float())
                optimizer_step({"loss": loss}, step + 1, model.parameters(), optimizer, scheduler, scaler, config.grad_clip)
                step += 1
                running.update({"loss": loss.detach()})
                bar.update(task, advance=1, status=running.status())

            row: dict[str, Any] = {"epoch": epoch + 1, "step": step, **running.means(),
                                   "logit_scale": float(logit_scale_of(model).detach())}
            row |= {f"lr_{group['name'].split('/')[0]}": group["lr"] for group in optimizer.param_groups}
            last = epoch + 1 == config.epochs
            if evaluate_on is not None and ((epoch + 1) % config.eval_every == 0 or last):
                metrics = evaluate_split(model, store, manifest, evaluate_config, device, config.prefetch).metrics
                for key in TEST_COLUMNS:
                    row[f"{evaluate_on}_{key}"] = metrics[key]
                bar.update(task, status=f"{running.status()} | {evaluate_on} R@1 {metrics['t2v_R1']:.1f}")
            log.append(row)
            save_training_state(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                epoch=epoch + 1, step=step, extra={"identity": identity, "history": log.rows})
    return log.rows


