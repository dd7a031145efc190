"""``teach evaluate``: text-to-video and video-to-text retrieval metrics of saved models on one split.

Works for student and teacher directories alike (the kind is read from ``config.json``): each model
is scored through its scorer (:mod:`teachclip.training.scoring`): a student by the dot product of
its vectors, a teacher by its own similarity, in blocks. Videos whose decoding failed are left out,
with their captions, and counted in the output. Several models share one manifest read, fingerprint
check and store. Metrics and the tie rule: :mod:`teachclip.models.metrics` and docs/training.md.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from teachclip.core.config import ComputeConfig, EvaluateConfig
from teachclip.core.device import pick_device
from teachclip.core.errors import InputError
from teachclip.core.files import write_json
from teachclip.core.manifest import load_manifest
from teachclip.models.factory import is_retrieval_model, load_model
from teachclip.models.io import CONFIG_FILE, MAX_CONFIG_BYTES, CheckpointError, read_config
from teachclip.stores import open_for_manifest
from teachclip.training.scoring import evaluate_split, save_similarity


def evaluable_models(paths: Sequence[str | Path]) -> list[Path]:
    """Saved model directories to evaluate: each path is one (it has ``config.json``) or holds them
    directly inside (every student and teacher there, sorted by name; other kinds, such as a
    pretrained backbone, are not retrieval models and are left out)."""
    models: list[Path] = []
    for path in map(Path, paths):
        if (path / CONFIG_FILE).is_file() or not path.is_dir():
            models.append(path)  # read_config names a missing or bad file
            continue
        inside = [child for child in sorted(path.iterdir()) if _is_retrieval_model_directory(child)]
        if not inside:
            raise InputError(f"{path}: neither a saved model nor a directory of saved students/teachers")
        models.extend(inside)
    return models


def _is_retrieval_model_directory(path: Path) -> bool:
    """A saved student or teacher (a `teach export` folder, a pretrained backbone ... are not)."""
    if not (path / CONFIG_FILE).is_file():
        return False
    try:
        return is_retrieval_model(read_config(path)["kind"])
    except CheckpointError:
        if _names_no_model_kind(path / CONFIG_FILE):
            return False  # a config.json of another format (an export): not a saved model
        raise  # a damaged model config is reported, never silently left out of the metrics


def _names_no_model_kind(config: Path) -> bool:
    """A readable JSON object without the ``kind`` every saved model records."""
    try:
        if config.stat().st_size > MAX_CONFIG_BYTES:
            return False
        document = json.loads(config.read_text())
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False
    return isinstance(document, dict) and "kind" not in document


def evaluate(
    models: Sequence[tuple[str | Path, str | Path]],
    frames: str | Path,
    manifest_dir: str | Path,
    config: EvaluateConfig,
    compute: ComputeConfig,
    *,
    dump_similarity: str | Path | None = None,
) -> list[dict[str, float]]:
    """Evaluate every (model directory, metrics JSON file) pair on ``config.split``; returns the
    metrics of each. ``dump_similarity`` (one model only): also save the matrix and ids (.npz)."""
    if dump_similarity is not None and len(models) != 1:
        raise InputError("dump_similarity takes exactly one model")
    manifest = load_manifest(manifest_dir)
    store = open_for_manifest(frames, manifest)
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
        write_json(out, evaluation.metrics)
        if dump_similarity is not None:
            save_similarity(dump_similarity, evaluation)
        print(f"{kind} {model_dir} on {config.split}: t2v R@1 {evaluation.metrics['t2v_R1']:.1f} "
              f"R@5 {evaluation.metrics['t2v_R5']:.1f} R@10 {evaluation.metrics['t2v_R10']:.1f} | "
              f"v2t R@1 {evaluation.metrics['v2t_R1']:.1f}", file=sys.stderr)
        results.append(evaluation.metrics)
    return results
