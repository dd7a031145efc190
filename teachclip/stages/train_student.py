"""``teach train-student``: a CLIP4Clip/AFA student taught by cached teacher soft labels.

The student never runs a teacher. Each batch holds one caption per training video (CLIP4Clip style,
re-drawn every epoch); its soft labels are read from ``teachers.zarr``: the teacher similarity block
``T[batch captions, batch videos]`` and the raw frame relevance of the matched (caption, own video)
pairs. The loss of a batch with student logits ``S = logit_scale * text @ video.T``::

    loss = w_nce * InfoNCE(S)
         + w_coarse * sum_k a_k coarse(S, T_k / teacher_temperature) / sum_k a_k     (every teacher k)
         + w_fine   * sum_k a_k fine(AFA weights, relevance_k, tau) / sum_k a_k      (teachers with relevance)
         + w_relational * relational(S, T_k), w_margin * margin(cosines, T_k)   (same weighting; default off)

``relational`` and ``margin`` are the MCKD-style options of docs/distillation.md. ``caption_mask`` (from
``teach audit-captions``) removes flagged captions from the sampler.

A sparse teacher (``teach cache sparsify`` or a candidate group) holds only some pairs of a batch:
with ``unknown_pairs: mask`` (the default) the coarse term runs over the pairs it holds
(:mod:`teachclip.models.losses`, "Known pairs"); InfoNCE uses every pair. ``sampler: candidates``
builds batches whose pairs the cache mostly holds (:func:`teachclip.training.batches.candidate_batches`).

``a_k`` are the per-teacher weights (``train_student.teachers``); ``huber`` averages the teachers'
matrices first (TeachText) instead of their losses. Defaults are TeachCLIP's code: 0.2 / 1 / 2,
Pearson + CE. A term whose weight is 0 is not computed at all (its cache arrays are not even read).
With no teacher (``teachers: []`` or no cache given) the same step trains the CLIP4Clip/AFA baseline
with InfoNCE alone at weight **1**, not 0.2: the 0.2 only balances InfoNCE against teaching terms,
and with those gone it would merely scale the learning rate down five-fold.

Learning rates per group (``Student.param_groups``): backbone / new modules (temporal head, logit
scale) / AFA; AdamW, warmup + cosine, gradient clipping, AMP on CUDA. With both towers frozen
(``backbone.freeze_text`` and ``backbone.freeze_visual``) every training caption's text vector is
computed once and kept in memory (4 d bytes per caption), and
the steps only run the head (fast on CPU); every training video's per-frame features are computed once
and kept in memory too when the input is a frames store, while a frame-features store is read batch by
batch like in any other run (its features *are* that computation, and a collection of millions of
videos does not fit in RAM). What a run holds per training caption or video is a few numpy columns:
ids (fixed-width bytes, joined by binary search), index arrays of the sampler and the joins; the
manifest is read as columns (objects only for the evaluation split), caption texts wait in a
temporary file until their batch, and frames, features and teacher scores are read per batch (a
sparse group over 64 MiB, or any group with ``cache_in_memory: false``). ``bench/scale_training.py``
measures it (docs/benchmarks.md).

Distributed: launch with ``torchrun --nproc_per_node N -m teachclip.cli train-student ...``. The
global batch (``batch_size``) is split over the ranks; text vectors, video vectors, AFA weights and
frame masks are gathered and every rank computes the loss of the whole global batch, exactly as one
process would (:mod:`teachclip.training.distributed`).

Output directory::

    config.json, model.safetensors    the student (save_model kind "student"): teach evaluate/search/export
    dvclive/                          per epoch: loss by term, logit scale, lr, test R@1/5/10 ... (DVCLive)
    checkpoint/                       training state for --resume (weights, AdamW, schedule, RNG)
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from teachclip.core.config import (
    ComputeConfig,
    EvaluateConfig,
    StudentConfig,
    TeacherWeight,
    TrainStudentConfig,
)
from teachclip.core.device import autocast, grad_scaler
from teachclip.core.errors import InputError
from teachclip.core.manifest import SplitData, load_manifest
from teachclip.core.progress import progress_bar
from teachclip.models.io import save_model
from teachclip.models.losses import coarse_loss, fine_loss, info_nce, margin_loss, relational_loss
from teachclip.models.student import Student
from teachclip.stores import open_for_manifest
from teachclip.stores.caption_mask import load_caption_mask
from teachclip.stores.teacher_cache import GroupReader, SparseGroup, open_teacher_caches
from teachclip.training.batches import (
    Batch,
    CaptionGroups,
    candidate_batches,
    caption_per_video_batches,
    epoch_size,
    frames_batches,
    mask_captions,
    neighbourhood_batches,
    prefetched,
    read_frames,
    training_data,
    training_neighbours,
)
from teachclip.training.distributed import gather, init_distributed, rank_slice
from teachclip.training.log import RunningLosses
from teachclip.training.optim import build_optimizer, optimizer_step, seed_everything, warmup_cosine
from teachclip.training.scoring import TEST_COLUMNS, evaluate_split
from teachclip.training.state import CHECKPOINT_DIR, RESUME_FREE_FIELDS, save_training_state, start_or_resume


class TrainStudentError(InputError):
    """A run that cannot start: unusable teacher caches, a resume of another run, bad settings."""


# ---- teachers -----------------------------------------------------------------------------------


@dataclass
class CachedTeacher:
    """One cached teacher of this run, with where each training caption and video sits in its cache."""

    group: GroupReader
    weight: float
    rows: np.ndarray  # cache row of every training caption (SplitData.caption_ids order)
    cols: np.ndarray  # cache column of every training video (SplitData.video_ids order)


def select_teachers(
    specs: list[str | Path], wanted: list[TeacherWeight] | None, frames_fingerprint: str, data: SplitData,
    in_memory: bool | None = None,
) -> list[CachedTeacher]:
    """Open the caches, pick the configured groups, refuse incomplete ones and ones computed from
    other frames (naming both fingerprints), and map the training set into each cache."""
    if wanted is not None and len(wanted) == 0:
        return []  # the untaught baseline, whatever caches were given
    groups: dict[str, GroupReader] = {}
    for spec in specs:
        for group in open_teacher_caches(spec, in_memory):
            if group.name in groups:
                raise TrainStudentError(f"teacher {group.name!r} given twice: {groups[group.name].path} and {group.path}")
            groups[group.name] = group
    if wanted is None:
        chosen = [(name, 1.0) for name in groups]
    else:
        unknown = [t.name for t in wanted if t.name not in groups]
        if unknown:
            raise TrainStudentError(f"teacher(s) {', '.join(unknown)} not in the given caches "
                                    f"(they hold: {', '.join(groups) or 'nothing'})")
        chosen = [(t.name, t.weight) for t in wanted]
    teachers = []
    for name, weight in chosen:
        group = groups[name]
        if not group.complete:
            raise TrainStudentError(f"{group.path}: teacher cache {group.fingerprint} is incomplete; "
                                    f"finish it with `teach extract-teachers` first")
        group.require_frames(frames_fingerprint)  # TeacherCacheError naming both fingerprints
        if weight > 0:  # a zero-weight teacher takes no part at all
            teachers.append(CachedTeacher(group, weight, group.text_index(data.caption_ids), group.video_index(data.video_ids)))
    return teachers


def loss_weights(config: TrainStudentConfig, teachers: list[CachedTeacher]) -> dict[str, float]:
    """The terms in the loss and their weights; a term with weight 0 is absent (never computed)."""
    if not teachers:
        return {"nce": 1.0}  # the baseline: see the module docstring
    weights = {"nce": config.weight_nce, "coarse": config.weight_coarse,
               "relational": config.weight_relational, "margin": config.weight_margin}
    if any(t.group.has_frame_relevance for t in teachers):
        weights["fine"] = config.weight_fine
    return {term: weight for term, weight in weights.items() if weight > 0}


SIMILARITY_TERMS = {"coarse", "relational", "margin"}  # the terms that read the teachers' similarity blocks


@dataclass
class SoftLabels:
    """The global batch's teacher outputs: [(weight, similarity [B, B])], [(weight, relevance [B, T])],
    and per similarity the pairs the teacher's cache holds (bool [B, B]; None: every pair)."""

    similarities: list[tuple[float, torch.Tensor]]
    relevances: list[tuple[float, torch.Tensor]]
    known: list[torch.Tensor | None] | None = None


def gather_soft_labels(teachers: list[CachedTeacher], captions: np.ndarray, videos: np.ndarray,
                       terms: dict[str, float], unknown_pairs: str = "mask") -> SoftLabels:
    """Rows = the batch's captions, columns = the batch's videos (caption i belongs to video i)."""
    similarities, known = [], []
    if terms.keys() & SIMILARITY_TERMS:
        for t in teachers:
            rows, cols = t.rows[captions], t.cols[videos]
            similarities.append((t.weight, torch.from_numpy(t.group.similarity_block(rows, cols))))
            masked = unknown_pairs == "mask" and isinstance(t.group, SparseGroup)
            known.append(torch.from_numpy(t.group.known_mask(rows, cols)) if masked else None)
    relevances = [(t.weight, torch.from_numpy(t.group.frame_relevance(t.rows[captions])))
                  for t in teachers if t.group.has_frame_relevance] if "fine" in terms else []
    return SoftLabels(similarities, relevances, known)


# ---- the step ---------------------------------------------------------------------------------


class StudentStep(nn.Module):
    """The student's training forward on one (local) batch: the module DDP wraps.

    Text vectors come from tokens, or precomputed (frozen backbone); video vectors and AFA weights from
    frames, or from precomputed per-frame features (frozen backbone)."""

    def __init__(self, student: Student):
        super().__init__()
        self.student = student

    def forward(self, mask, tokens=None, text=None, frames=None, frame_features=None) -> dict[str, Any]:
        student = self.student
        text = student.encode_text(tokens) if text is None else text
        frame_features = student.frame_features(frames) if frame_features is None else frame_features
        video, frame_weights = student.video_and_frame_weights_from_features(frame_features, mask)
        return {"text": text, "video": video, "frame_weights": frame_weights, "mask": mask,
                "logit_scale": student.logit_scale()}


def batch_losses(outputs: dict[str, Any], labels: SoftLabels, terms: dict[str, float],
                 config: TrainStudentConfig, sizes: list[int]) -> dict[str, torch.Tensor]:
    """Every loss term of the *global* batch from this rank's outputs, and their weighted sum."""
    text, video = gather(outputs["text"].float(), sizes), gather(outputs["video"].float(), sizes)
    cosines = text @ video.T
    logits = outputs["logit_scale"] * cosines
    losses = {"nce": info_nce(logits)}
    if "coarse" in terms:
        losses["coarse"] = coarse_teaching(logits, labels.similarities, config, labels.known)
    if "fine" in terms:
        frame_weights = gather(outputs["frame_weights"].float(), sizes)
        mask = gather(outputs["mask"].float(), sizes) > 0.5
        losses["fine"] = weighted_mean(
            [(w, fine_loss(config.fine_loss, frame_weights, relevance.to(frame_weights.device), mask,
                           tau=config.fine_temperature, reduction=config.fine_reduction))
             for w, relevance in labels.relevances])
    if "relational" in terms:
        losses["relational"] = weighted_mean([(w, relational_loss(logits, sim.to(logits.device)))
                                              for w, sim in labels.similarities])
    if "margin" in terms:
        losses["margin"] = weighted_mean(
            [(w, margin_loss(cosines, sim.to(logits.device), margin=config.margin,
                             hard_negatives=config.margin_negatives)) for w, sim in labels.similarities])
    losses["loss"] = sum(weight * losses[term] for term, weight in terms.items())
    return losses


def coarse_teaching(logits: torch.Tensor, similarities: list[tuple[float, torch.Tensor]],
                    config: TrainStudentConfig, known: list[torch.Tensor | None] | None = None) -> torch.Tensor:
    """The coarse term; ``known``: per teacher, the pairs its cache holds (None: all), see SoftLabels."""
    options = {"teacher_temperature": config.teacher_temperature, "delta": config.huber_delta}
    known = known or [None] * len(similarities)
    if config.coarse_loss == "huber":  # TeachText: one target, the teachers' weighted mean matrix
        target = weighted_mean([(w, sim.to(logits.device)) for w, sim in similarities])
        masks = [m for m in known if m is not None]
        mask = torch.stack(masks).all(dim=0) if masks else None  # the pairs every teacher holds
        return coarse_loss("huber", logits, target, known=mask, **options)
    return weighted_mean([(w, coarse_loss(config.coarse_loss, logits, sim.to(logits.device), known=mask, **options))
                          for (w, sim), mask in zip(similarities, known, strict=True)])


def weighted_mean(items: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    return sum(weight * value for weight, value in items) / sum(weight for weight, _ in items)


# ---- frozen backbone --------------------------------------------------------------------------


@dataclass
class FrozenInputs:
    """Backbone outputs of the whole training set, computed once (the backbone never changes)."""

    text: torch.Tensor  # [captions, d] unit-length, SplitData caption order
    # [videos, T, d], SplitData video order, and [videos, T]; None for a frame-features store, which the
    # steps read batch by batch (the same float32 values: the features pass through the frozen tower)
    frame_features: torch.Tensor | None
    mask: torch.Tensor | None


@torch.no_grad()
def precompute_frozen_inputs(student: Student, store, data: SplitData, device: torch.device,
                             amp: bool, batch_videos: int = 32, batch_texts: int = 512) -> FrozenInputs:
    text = []
    for start in range(0, len(data.texts), batch_texts):
        tokens = student.tokenize(data.texts[start : start + batch_texts]).to(device)
        with autocast(device, amp):
            text.append(student.encode_text(tokens).float().cpu())
    if store.holds_features:
        return FrozenInputs(torch.cat(text), None, None)
    chunks = [data.store_rows[start : start + batch_videos] for start in range(0, len(data.video_ids), batch_videos)]
    features, masks = [], []
    for frames, mask in frames_batches(store, chunks):
        with autocast(device, amp):
            features.append(student.frame_features(frames.to(device)).float().cpu())
        masks.append(mask)
    return FrozenInputs(torch.cat(text), torch.cat(features), torch.cat(masks))


def masked_captions(mask_path: str | None, data: SplitData, verbose: bool) -> CaptionGroups:
    """The sampler's captions per video: all of them, or those a ``teach audit-captions`` mask keeps
    (a video whose every caption is masked keeps all of them, and is named)."""
    groups = data.captions_of_video
    if mask_path is None:
        return groups
    sampled, fallback = mask_captions(groups, data.caption_ids, load_caption_mask(mask_path))
    if verbose:
        dropped = len(groups.members) - len(sampled.members)
        print(f"caption mask {mask_path}: {dropped} of {len(data.caption_ids)} training captions masked"
              + (f"; {len(fallback)} video(s) with every caption masked keep theirs: "
                 f"{', '.join(data.video_ids[v] for v in fallback[:10])}" if fallback else ""), file=sys.stderr)
    return sampled


# ---- the stage --------------------------------------------------------------------------------


def train_student(
    frames: str | Path,
    manifest_dir: str | Path,
    teachers: list[str | Path],
    out: str | Path,
    config: TrainStudentConfig,
    student_config: StudentConfig,
    evaluate_config: EvaluateConfig,
    compute: ComputeConfig,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a student on the train split of ``manifest_dir`` and save it to ``out``; returns the last
    epoch's metrics row (see the module docstring for the loss and the outputs)."""
    rank, world, device = init_distributed(compute.device)
    out = Path(out)
    checkpoint = out / CHECKPOINT_DIR
    # objects for the evaluation split only: the training split is read as columns (split_data)
    manifest = load_manifest(manifest_dir, keep=[evaluate_config.split])
    store = open_for_manifest(frames, manifest)
    data = training_data(store, manifest)
    sampled_captions = masked_captions(config.caption_mask, data, rank == 0)
    chosen = select_teachers(list(teachers), config.teachers, store.fingerprint, data, config.cache_in_memory)
    terms = loss_weights(config, chosen)
    if "fine" in terms and not student_config.afa:
        raise TrainStudentError("fine teaching supervises AFA's frame weights: set student.afa: true, or train_student.weight_fine: 0")
    evaluate_on = evaluate_config.split if manifest.videos_in(evaluate_config.split) else None

    seed_everything(config.seed)  # the initial weights of the new modules
    student = Student(student_config).to(device)
    store.check_model(student)
    amp = student_config.backbone.precision == "amp"
    both_frozen = student.backbone.text_frozen and student.backbone.visual_frozen
    frozen = precompute_frozen_inputs(student, store, data, device, amp) if both_frozen else None
    step_module: nn.Module = StudentStep(student)
    if world > 1:
        step_module = nn.parallel.DistributedDataParallel(step_module, device_ids=[device] if device.type == "cuda" else None)

    names = {id(p): name for name, p in student.named_parameters()}
    groups = {group: [(names[id(p)], p) for p in params] for group, params in student.param_groups().items()}
    optimizer = build_optimizer(groups, {"backbone": config.lr_backbone, "new": config.lr_new, "afa": config.lr_afa},
                                config.weight_decay)

    neighbours = None  # "neighbourhood", "candidates": batches from a sparse teacher's stored videos (training/batches.py)
    if config.sampler in ("neighbourhood", "candidates"):
        if not chosen:
            raise TrainStudentError(f"sampler {config.sampler!r} needs a (sparse) teacher cache")
        neighbours = training_neighbours(chosen[0].group, chosen[0].rows, chosen[0].cols)

    def epoch_batches(epoch: int) -> Iterator[Batch]:
        if config.sampler == "candidates":
            batches = candidate_batches(sampled_captions, neighbours, config.batch_size, config.hard_fraction,
                                        config.seed, epoch)
        elif config.sampler == "neighbourhood":
            batches = neighbourhood_batches(sampled_captions, neighbours, config.batch_size, config.seed, epoch)
        else:
            batches = caption_per_video_batches(sampled_captions, config.batch_size, config.seed, epoch)
        return (b for b in batches if len(b.videos) >= world)  # every rank needs at least one video

    steps_per_epoch = epoch_size(len(data.video_ids), config.batch_size, world)
    scheduler = warmup_cosine(optimizer, steps_per_epoch * config.epochs, config.warmup_fraction)
    scaler = grad_scaler(device, amp)
    identity = {
        "train": config.model_dump(mode="json", exclude=RESUME_FREE_FIELDS),
        "student": student_config.model_dump(mode="json"),
        "frames_fingerprint": store.fingerprint,
        "teachers": [{"name": t.group.name, "fingerprint": t.group.fingerprint, "weight": t.weight} for t in chosen],
    }
    if rank == 0 and not resume and checkpoint.exists():
        shutil.rmtree(checkpoint)  # a fresh run never mixes with an old state
    start_epoch, step, log = start_or_resume(out, checkpoint, identity, resume, model=student, optimizer=optimizer,
                                             scheduler=scheduler, scaler=scaler, announce=rank == 0)

    with progress_bar(progress and rank == 0) as bar:
        for epoch in range(start_epoch, config.epochs):
            student.train()
            planned = ((b, *rank_slice(len(b.videos), world, rank)) for b in epoch_batches(epoch))
            if frozen is None or frozen.frame_features is None:  # each rank reads its own slice only
                stream = prefetched(planned, lambda item: read_frames(store, data.store_rows[item[0].videos[item[1]]]),
                                    config.prefetch)
            else:
                stream = ((item, (None, None)) for item in planned)
            running = RunningLosses()
            task = bar.add_task(f"epoch {epoch + 1}/{config.epochs}", total=steps_per_epoch, status="")
            done = 0
            for (batch, local, sizes), (frames_local, mask_local) in stream:
                done += 1
                captions, videos = batch.captions[local], batch.videos[local]
                if frozen is None:  # tokenized per batch: nothing per caption is held for the whole run
                    inputs = {"tokens": student.tokenize([data.texts[c] for c in captions]).to(device)}
                else:
                    inputs = {"text": frozen.text[captions].to(device)}
                if frames_local is not None:
                    inputs |= {"frames": frames_local.to(device), "mask": mask_local.to(device)}
                else:
                    inputs |= {"mask": frozen.mask[videos].to(device),
                               "frame_features": frozen.frame_features[videos].to(device)}
                labels = gather_soft_labels(chosen, batch.captions, batch.videos, terms, config.unknown_pairs)
                # the step: forward on this rank's slice, loss of the global batch, one AdamW update
                with autocast(device, amp):
                    outputs = step_module(**inputs)
                losses = batch_losses(outputs, labels, terms, config, sizes)
                optimizer_step(losses, step + 1, student.parameters(), optimizer, scheduler, scaler, config.grad_clip)
                step += 1
                running.update({term: value.detach() for term, value in losses.items()})
                bar.update(task, advance=1, status=running.status())
            if done != steps_per_epoch:  # the schedule was sized by epoch_size: a sampler broke its rule
                raise RuntimeError(f"epoch {epoch + 1} gave {done} batches where epoch_size says {steps_per_epoch}")

            row: dict[str, Any] = {"epoch": epoch + 1, "step": step, **running.means(),
                                   "logit_scale": float(student.logit_scale().detach()),
                                   **{f"lr_{g['name'].split('/')[0]}": g["lr"] for g in optimizer.param_groups}}
            if rank == 0 and evaluate_on is not None and ((epoch + 1) % config.eval_every == 0
                                                          or epoch + 1 == config.epochs):
                metrics = evaluate_split(student, store, manifest, evaluate_config, device, config.prefetch).metrics
                row |= {f"{evaluate_on}_{key}": metrics[key] for key in TEST_COLUMNS}
                bar.update(task, status=f"{running.status()} | {evaluate_on} R@1 {metrics['t2v_R1']:.1f}")
            if rank == 0:
                log.append(row)
                save_training_state(checkpoint, model=student, optimizer=optimizer, scheduler=scheduler,
                                    scaler=scaler, epoch=epoch + 1, step=step,
                                    extra={"identity": identity, "history": log.rows})
            else:
                log.rows.append(row)

    last = log.rows[-1] if log.rows else {}
    if rank == 0:
        save_model(out, student, "student", student_config, extra={"train_student": {
            "config": config.model_dump(mode="json"), "teachers": identity["teachers"],
            "loss_weights": terms, "frames_fingerprint": store.fingerprint, "last_epoch": last}})
    if world > 1:
        dist.barrier()  # the model is on disk before any rank returns
    return last

