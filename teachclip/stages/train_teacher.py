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
    dvclive/                          one row per epoch, DVCLive's layout (teachclip.training.log)
    checkpoint/                       training state for --resume (safetensors + JSON)

The loop itself is :func:`teachclip.training.contrastive.train_contrastive`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from teachclip.core.config import ComputeConfig, EvaluateConfig, TeacherConfig, TrainTeacherConfig
from teachclip.core.device import pick_device
from teachclip.core.errors import InputError
from teachclip.core.manifest import load_manifest
from teachclip.models.factory import create_teacher, save_teacher
from teachclip.models.teachers import trainable_kinds
from teachclip.stores import open_for_manifest
from teachclip.training.contrastive import train_contrastive
from teachclip.training.optim import seed_everything
from teachclip.training.state import CHECKPOINT_DIR, RESUME_FREE_FIELDS


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
    if teacher_config.kind not in trainable_kinds():
        raise InputError(f"a {teacher_config.kind!r} teacher has nothing to train "
                         f"(trainable kinds: {', '.join(trainable_kinds())})")
    manifest = load_manifest(manifest_dir)
    store = open_for_manifest(frames, manifest)
    device = pick_device(compute.device)
    seed_everything(config.seed)  # the initial weights of the new modules
    teacher = create_teacher(teacher_config).to(device)
    teacher.bind_manifest(manifest)
    if not resume and (Path(out) / CHECKPOINT_DIR).exists():
        shutil.rmtree(Path(out) / CHECKPOINT_DIR)  # a fresh run never mixes with an old state
    identity = run_identity(config, teacher_config.model_dump(mode="json"), store)
    rows = train_contrastive(teacher, store, manifest, out, config, evaluate_config, device,
                             identity=identity, resume=resume, progress=progress)
    last = rows[-1] if rows else {}
    save_teacher(teacher, out, extra={"train_teacher": {"config": config.model_dump(mode="json"), "last_epoch": last}})
    return last

