"""``teach train-teacher``: train an X-Pool, X-CLIP, TS2-Net or frame-CLIP teacher with symmetric InfoNCE.

Data: the manifest's train split, read from ``frames.zarr`` (the exact frames the teacher cache and
the student will see); one caption per video per epoch, CLIP4Clip style. Loss:
``info_nce(logit_scale * S)`` with ``S`` the teacher's own [B, B] similarity of the batch and its
learned logit scale (CLIP's, clamped at 100; it lives in the teacher's weights). After every epoch
(``eval_every``) the test split is scored by the teacher's own similarity, and the training state
(weights, AdamW moments, schedule, RNG) is checkpointed: ``--resume`` restarts from the last completed
epoch and ends on the same weights as an uninterrupted run.

Output directory::

    config.json, model.safetensors    the teacher (save_teacher): what extract-teachers loads
    metrics.tsv, metrics.json         one row per epoch (dvc plots / dvc metrics)
    checkpoint/                       training state for --resume (safetensors + JSON)

:func:`train_contrastive` is the loop itself; it also trains a student with the same recipe (the
meanP baseline the teachers are compared with in the slow test).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from teachclip.models.backbone import autocast, pick_device
from teachclip.models.losses import info_nce
from teachclip.models.teachers import TRAINABLE_KINDS, Teacher, build_teacher, save_teacher
from teachclip.core.config import ComputeConfig, EvaluateConfig, TeacherConfig, TrainTeacherConfig
from teachclip.core.manifest import Manifest, load_manifest
from teachclip.training import (
    RunningLosses,
    build_optimizer,
    caption_per_video_batches,
    frames_batches,
    grad_scaler,
    optimizer_step,
    save_training_state,
    seed_everything,
    start_or_resume,
    training_progress,
    training_set,
    warmup_cosine,
)
from teachclip.stages.evaluate import evaluate_split, open_frames_for, uses_amp

CHECKPOINT_DIR = "checkpoint"
# fields that do not change the trained weights: a resume may change them
RESUME_FREE_FIELDS = {"prefetch", "eval_every"}


def param_groups_by_name(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """``backbone``: the open_clip towers (``backbone.*``); ``new``: the rest, logit scales included."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"backbone": [], "new": []}
    for name, parameter in model.named_parameters():
        in_backbone = name.startswith("backbone.") and "logit_scale" not in name
        groups["backbone" if in_backbone else "new"].append((name, parameter))
    return groups


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
    device = frames.device
    if isinstance(model, Teacher):
        text_batch = model.text_batch(texts, caption_ids, video_ids)
        text_batch["tokens"] = text_batch["tokens"].to(device)
        video_batch = {"frames": frames, "mask": mask, "video_ids": video_ids}
        return model.score(model.encode_texts(text_batch), model.encode_videos(video_batch))
    tokens = model.tokenize(texts).to(device)
    return model.encode_text(tokens) @ model.encode_video(frames, mask).T


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
    data = training_set(store, manifest, "train")
    amp = uses_amp(model)
    evaluate_on = evaluate_config.split if manifest.videos_in(evaluate_config.split) else None

    optimizer = build_optimizer(param_groups_by_name(model), {"backbone": config.lr_backbone, "new": config.lr},
                                config.weight_decay)
    steps_per_epoch = len(caption_per_video_batches(data.captions_of_video, config.batch_size, config.seed, 0))
    scheduler = warmup_cosine(optimizer, steps_per_epoch * config.epochs, config.warmup_fraction)
    scaler = grad_scaler(device, amp)
    start_epoch, step, log = start_or_resume(out, checkpoint, identity, resume, model=model, optimizer=optimizer,
                                             scheduler=scheduler, scaler=scaler)

    with training_progress(progress) as bar:
        for epoch in range(start_epoch, config.epochs):
            model.train()
            batches = caption_per_video_batches(data.captions_of_video, config.batch_size, config.seed, epoch)
            reader = frames_batches(store, [data.store_indices[b.videos] for b in batches], config.prefetch)
            running = RunningLosses()
            task = bar.add_task(f"epoch {epoch + 1}/{config.epochs}", total=len(batches), status="")
            for batch, (frames, mask) in zip(batches, reader, strict=True):
                with autocast(device, amp):
                    similarity = batch_similarity(
                        model, [data.texts[i] for i in batch.captions], [data.caption_ids[i] for i in batch.captions],
                        [data.video_ids[v] for v in batch.videos], frames.to(device), mask.to(device))
                    loss = info_nce(logit_scale_of(model) * similarity.float())
                optimizer_step(loss, model.parameters(), optimizer, scheduler, scaler, config.grad_clip)
                step += 1
                running.update({"loss": loss.detach()})
                bar.update(task, advance=1, status=running.status())

            row: dict[str, Any] = {"epoch": epoch + 1, "step": step, **running.means(),
                                   "logit_scale": float(logit_scale_of(model).detach())}
            row |= {f"lr_{group['name'].split('/')[0]}": group["lr"] for group in optimizer.param_groups}
            last = epoch + 1 == config.epochs
            if evaluate_on is not None and ((epoch + 1) % config.eval_every == 0 or last):
                metrics = evaluate_split(model, store, manifest, evaluate_config, device, config.prefetch).metrics
                for key in ("t2v_R1", "t2v_R5", "t2v_R10", "t2v_MdR", "v2t_R1", "v2t_R5", "v2t_R10"):
                    row[f"{evaluate_on}_{key}"] = metrics[key]
                bar.update(task, status=f"{running.status()} | {evaluate_on} R@1 {metrics['t2v_R1']:.1f}")
            log.append(row)
            save_training_state(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                epoch=epoch + 1, step=step, extra={"identity": identity, "history": log.rows})
    return log.rows


def run_identity(config: TrainTeacherConfig, model_config: dict[str, Any], store) -> dict[str, Any]:
    return {
        "train": config.model_dump(mode="json", exclude=RESUME_FREE_FIELDS),
        "model": model_config,
        "frames_fingerprint": store.fingerprint,
    }


def train_teacher(
    teacher_config: TeacherConfig,
    frames: str | Path,
    manifest_dir: str | Path,
    out: str | Path,
    config: TrainTeacherConfig,
    evaluate_config: EvaluateConfig,
    compute: ComputeConfig,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a teacher and save it to ``out`` (``save_teacher``); returns the last epoch's row."""
    if teacher_config.kind not in TRAINABLE_KINDS:
        raise ValueError(f"a {teacher_config.kind!r} teacher has nothing to train "
                         f"(trainable kinds: {', '.join(TRAINABLE_KINDS)})")
    manifest = load_manifest(manifest_dir)
    store = open_frames_for(frames, manifest)
    device = pick_device(compute.device)
    seed_everything(config.seed)  # the initial weights of the new modules
    teacher = build_teacher(teacher_config).to(device)
    teacher.bind_manifest(manifest)
    if not resume and (Path(out) / CHECKPOINT_DIR).exists():
        shutil.rmtree(Path(out) / CHECKPOINT_DIR)  # a fresh run never mixes with an old state
    identity = run_identity(config, teacher_config.model_dump(mode="json"), store)
    rows = train_contrastive(teacher, store, manifest, out, config, evaluate_config, device,
                             identity=identity, resume=resume, progress=progress)
    last = rows[-1] if rows else {}
    save_teacher(teacher, out, extra={"train_teacher": {"config": config.model_dump(mode="json"), "last_epoch": last}})
    return last

