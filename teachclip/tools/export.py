"""``teach export``: the retrieval-time student as plain weights that open_clip alone can load.

An export directory holds::

    open_clip_model.safetensors    the open_clip CLIP state dict: open_clip.create_model(name).load_state_dict(...)
    model_configs/<name>.json      the open_clip model config (registers project configs such as
                                   teachclip-tiny with open_clip.add_model_config; harmless for stock names)
    head.safetensors               the small video head: temporal.* (seqTransf: frame position embeddings +
                                   an open_clip Transformer), afa.* (two Linear layers), log_logit_scale
    config.json                    everything needed to rebuild the pipeline: model name, preprocessing,
                                   head kind, AFA temperature, temporal transformer shape

docs/export-and-search.md has the loader (open_clip + torch + safetensors, no teachclip) that gives the
same embeddings as the student; tests/test_export.py runs that snippet against the student.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

from teachclip.core.errors import InputError
from teachclip.models.backbone import CLIP_MEAN, CLIP_STD
from teachclip.models.factory import load_model, temporal_spec
from teachclip.models.io import CONFIG_FILE as CONFIG
from teachclip.models.io import EXPORT_FORMAT, EXPORT_MODEL_CONFIGS, EXPORT_VERSION, model_fingerprint
from teachclip.models.io import EXPORT_HEAD_WEIGHTS as HEAD_WEIGHTS
from teachclip.models.io import EXPORT_OPEN_CLIP_WEIGHTS as OPEN_CLIP_WEIGHTS
from teachclip.models.student import Student
from teachclip.stores.zarr_io import partial_path


def _plain(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors sharing storage; copies on CPU are always safe
    return {name: value.detach().to("cpu", copy=True).contiguous() for name, value in tensors.items()}


def export_student(model_dir: str | Path, out: str | Path) -> Path:
    """Write the export of the student saved in ``model_dir`` to ``out`` (via ``out.partial``)."""
    from open_clip.transformer import QuickGELU

    student = load_model(model_dir)
    if not isinstance(student, Student):
        raise InputError(f"{model_dir}: not a student model (export writes CLIP4Clip/AFA students)")
    config = student.config
    clip = student.backbone.clip
    name = config.backbone.name
    text_block = clip.transformer.resblocks[0]

    head = {"log_logit_scale": student.log_logit_scale}
    temporal_config = None
    if student.temporal is not None:
        head |= {f"temporal.{k}": v for k, v in student.temporal.state_dict().items()}
        temporal_config = temporal_spec(student)
    if student.afa is not None:
        head |= {f"afa.{k}": v for k, v in student.afa.state_dict().items()}

    document = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "open_clip_model": name,
        "force_quick_gelu": isinstance(text_block.mlp.gelu, QuickGELU),
        "context_length": student.backbone.max_words,
        "image_size": student.backbone.image_size,
        "mean": list(CLIP_MEAN),
        "std": list(CLIP_STD),
        "embed_dim": student.backbone.embed_dim,
        "head": config.head,
        "temporal": temporal_config,
        "afa": student.afa is not None,
        "afa_pool_temperature": config.afa_pool_temperature,
        "logit_scale": float(student.logit_scale().detach()),
        "source_model_fingerprint": model_fingerprint(model_dir),
    }

    out = Path(out)
    partial = partial_path(out)
    for path in (out, partial):  # replaced only if it is an earlier export: never another folder
        _remove_export(path)
    (partial / EXPORT_MODEL_CONFIGS).mkdir(parents=True)
    save_file(_plain(clip.state_dict()), str(partial / OPEN_CLIP_WEIGHTS), metadata={"format": EXPORT_FORMAT})
    save_file(_plain(head), str(partial / HEAD_WEIGHTS), metadata={"format": EXPORT_FORMAT})
    model_config = open_clip.get_model_config(name)
    if model_config is None:
        raise InputError(f"open_clip does not know the model config {name!r}")
    (partial / EXPORT_MODEL_CONFIGS / f"{name}.json").write_text(json.dumps(model_config, indent=2) + "\n")
    (partial / CONFIG).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    os.replace(partial, out)
    return out


def _remove_export(path: Path) -> None:
    """Delete ``path`` if it is an export (its config.json says so) or a partial one (only the export's
    own entries); refuse anything else by name."""
    if not path.exists() and not path.is_symlink():
        return
    entries = {p.name for p in path.iterdir()} if path.is_dir() and not path.is_symlink() else None
    try:
        ours = entries is not None and json.loads((path / CONFIG).read_text()).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if entries is not None and (ours or entries <= {CONFIG, OPEN_CLIP_WEIGHTS, HEAD_WEIGHTS, EXPORT_MODEL_CONFIGS}):
        shutil.rmtree(path)
        return
    raise InputError(f"{path}: exists and is not a teachclip export; refusing to delete or replace it")
