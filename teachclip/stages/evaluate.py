"""``teach evaluate``: text-to-video and video-to-text retrieval metrics of a saved model on one split.

Works for a student directory and for a teacher directory (the kind is read from ``config.json``):
a student is scored by the dot product of its vectors, a teacher by its own similarity, in blocks
(:func:`teachclip.training.score_collection`). Videos whose decoding failed
(``FramesStore.valid`` False) are left out, with their captions, and counted in the output.
Metrics and the tie rule: :mod:`teachclip.models.metrics` and docs/training.md.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from teachclip.stores.frames import FramesStore, StoreMismatchError
from teachclip.models.backbone import pick_device
from teachclip.models.metrics import retrieval_metrics
from teachclip.core.config import ComputeConfig, EvaluateConfig
from teachclip.core.manifest import Manifest, load_manifest
from teachclip.training import atomic_write, score_collection


@dataclass
class Evaluation:
    metrics: dict[str, float]  # t2v_* / v2t_* (retrieval_metrics) plus the counts below
    similarity: np.ndarray  # float32 [texts, videos]
    text_ids: list[str]  # caption ids, manifest order
    video_ids: list[str]  # evaluated videos, store (sorted) order
    text_video_index: np.ndarray  # int64 [texts]: column of each caption's video
    excluded_video_ids: list[str]  # failed decodes left out of the split


def open_frames_for(frames: str | Path, manifest: Manifest) -> FramesStore:
    """Open ``frames`` and refuse it unless it was decoded from ``manifest`` (message naming both
    fingerprints). Only the manifest fingerprint mode the store records is computed; for an older
    store without it, the cheap ``stat`` fingerprint is tried first and ``content`` (a hash of every
    file) after."""
    store = FramesStore.open(frames)
    computed = {}
    modes = [store.manifest_fingerprint_mode] if store.manifest_fingerprint_mode else ["stat", "content"]
    for mode in modes:
        computed[mode] = manifest.fingerprint(mode)
        if computed[mode] == store.manifest_fingerprint:
            return store
    found = "; ".join(f"{value} in {mode} mode" for mode, value in computed.items())
    raise StoreMismatchError(
        f"{frames} was decoded from another manifest: its manifest fingerprint is {store.manifest_fingerprint}, "
        f"but {manifest.root} has fingerprint {found}; re-run `teach decode` for this manifest"
    )


def uses_amp(model: nn.Module) -> bool:
    """Mixed precision as the model's backbone config asks (it only takes effect on CUDA)."""
    return model.config.backbone.precision == "amp"


def evaluate_split(
    model: nn.Module,
    store,
    manifest: Manifest,
    config: EvaluateConfig,
    device: torch.device,
    prefetch: bool = True,
) -> Evaluation:
    """Score every caption of ``config.split`` against every valid video of the split."""
    store.check_model(model)  # a frame-features store only serves the frozen tower that made it
    split_ids = sorted(video.video_id for video in manifest.videos_in(config.split))
    if not split_ids:
        raise ValueError(f"{manifest.root}: no videos in split {config.split!r}")
    indices = store.index(split_ids)
    valid = np.asarray(store.valid)[indices]
    video_ids = [video_id for video_id, ok in zip(split_ids, valid, strict=True) if ok]
    excluded = [video_id for video_id, ok in zip(split_ids, valid, strict=True) if not ok]
    column = {video_id: position for position, video_id in enumerate(video_ids)}
    captions = [caption for caption in manifest.captions_in(config.split) if caption.video_id in column]
    if not captions:
        raise ValueError(f"{manifest.root}: no captions of valid videos in split {config.split!r}")
    text_video_index = np.array([column[caption.video_id] for caption in captions], dtype=np.int64)

    was_training = model.training
    model.eval()
    timings: dict[str, float] = {}
    similarity = score_collection(
        model, store, indices[valid], video_ids,
        [c.text for c in captions], [c.caption_id for c in captions], [c.video_id for c in captions],
        batch_videos=config.batch_videos, batch_texts=config.batch_texts,
        block_texts=config.block_texts, block_videos=config.block_videos,
        device=device, amp=uses_amp(model), prefetch=prefetch, timings=timings,
    ).numpy()
    model.train(was_training)
    metrics = retrieval_metrics(similarity, text_video_index)
    metrics |= {
        "texts": len(captions),
        "videos": len(video_ids),
        "excluded_videos": len(excluded),
        "excluded_captions": len(manifest.captions_in(config.split)) - len(captions),
        # search-time cost of one query against this split's videos, from encoded features (wall
        # clock on this machine: compare models measured in the same run)
        "score_ms_per_query": round(1000 * timings["score_seconds"] / len(captions), 4),
    }
    return Evaluation(metrics, similarity, [c.caption_id for c in captions], video_ids, text_video_index, excluded)


def save_similarity(path: str | Path, evaluation: Evaluation) -> Path:
    """``np.savez`` of the matrix, ids as unicode arrays and the ground truth: loads with
    ``np.load(path)`` (``allow_pickle=False``, the default)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        similarity=evaluation.similarity.astype(np.float32),
        text_ids=np.array(evaluation.text_ids, dtype=str),
        video_ids=np.array(evaluation.video_ids, dtype=str),
        text_video_index=evaluation.text_video_index,
        excluded_video_ids=np.array(evaluation.excluded_video_ids, dtype=str),
    )
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))  # exact name: savez would add .npz
    return path


def evaluate(
    model_dir: str | Path,
    frames: str | Path,
    manifest_dir: str | Path,
    out: str | Path,
    config: EvaluateConfig,
    compute: ComputeConfig,
    dump_similarity: str | Path | None = None,
) -> dict[str, float]:
    """Load a saved student or teacher, evaluate it on ``config.split``, write ``out`` (JSON metrics)."""
    return evaluate_many([(model_dir, out)], frames, manifest_dir, config, compute, dump_similarity)[0]


def evaluate_many(
    models: Sequence[tuple[str | Path, str | Path]],
    frames: str | Path,
    manifest_dir: str | Path,
    config: EvaluateConfig,
    compute: ComputeConfig,
    dump_similarity: str | Path | None = None,
) -> list[dict[str, float]]:
    """:func:`evaluate` for several (model directory, metrics file) pairs: the manifest is read, its
    fingerprint checked against the store and the store opened once for all of them."""
    from teachclip.models.io import load_model, read_config

    if dump_similarity is not None and len(models) != 1:
        raise ValueError("dump_similarity takes exactly one model")
    manifest = load_manifest(manifest_dir)
    store = open_frames_for(frames, manifest)
    device = pick_device(compute.device)
    results = []
    for model_dir, out in models:
        kind = read_config(model_dir)["kind"]
        model = load_model(model_dir, device)
        if hasattr(model, "bind_manifest"):  # teachers may read the dataset (caption-similarity teacher)
            model.bind_manifest(manifest)
        evaluation = evaluate_split(model, store, manifest, config, device)
        if evaluation.excluded_video_ids:
            shown = ", ".join(evaluation.excluded_video_ids[:5])
            more = "" if len(evaluation.excluded_video_ids) <= 5 else f" (+{len(evaluation.excluded_video_ids) - 5})"
            print(f"note: {len(evaluation.excluded_video_ids)} {config.split} video(s) failed to decode and were "
                  f"left out: {shown}{more}", file=sys.stderr)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(evaluation.metrics, indent=2, sort_keys=True) + "\n"
        atomic_write(out, lambda tmp, text=text: tmp.write_text(text))
        if dump_similarity is not None:
            save_similarity(dump_similarity, evaluation)
        print(f"{kind} {model_dir} on {config.split}: t2v R@1 {evaluation.metrics['t2v_R1']:.1f} "
              f"R@5 {evaluation.metrics['t2v_R5']:.1f} R@10 {evaluation.metrics['t2v_R10']:.1f} | "
              f"v2t R@1 {evaluation.metrics['v2t_R1']:.1f}", file=sys.stderr)
        results.append(evaluation.metrics)
    return results
