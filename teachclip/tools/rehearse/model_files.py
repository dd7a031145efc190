"""Real-size weight files without a download: the files a user's params resolve to, with random values.

- **OpenAI CLIP** (``student.backbone.pretrained: openai``): open_clip resolves the ``openai`` tag of
  ``ViT-B-32(-quickgelu)`` to the Hugging Face Hub file ``timm/vit_base_patch32_clip_224.openai/
  open_clip_model.safetensors`` (OpenAI's tensor names, as open_clip keeps them) whenever
  ``huggingface_hub`` is installed, which open_clip requires. :func:`write_openai_clip` writes that file
  into a Hub cache folder (``models--timm--.../snapshots/REV/`` + ``refs/main``); with ``HF_HUB_CACHE``
  pointing there and ``HF_HUB_OFFLINE=1``, ``open_clip.create_model(..., pretrained="openai")`` loads it
  through its own code path, untouched.
- **X-CLIP** ``pytorch_model.bin.N``: ``torch.save(model.state_dict())`` in X-CLIP's key names, CLIP
  conv/linear weights in fp16 (its ``convert_weights``), the 77-row frame position table.
- **X-Pool** ``model_best.pth``: ``{"epoch", "state_dict", "optimizer"}`` with HF CLIPModel names
  (X-Pool's ``--huggingface``, as its README trains) or OpenAI names.

The values come from each model's own random initialisation under a fixed seed; the names, shapes,
dtypes and containers are the released ones, which is what the loaders and every stage exercise.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

from teachclip.core.config import BackboneConfig, TeacherConfig
from teachclip.core.errors import InputError
from teachclip.core.files import atomic_write

# open_clip's default file name for a Hub entry without one (its safetensors alternative is tried first)
HUB_WEIGHTS_FILE = "open_clip_model.safetensors"
# the options an official X-CLIP checkpoint implies (official.py), at CLIP4Clip's 12 frames
XCLIP_OPTIONS = {"frame_features": "clip", "full_reweighting": True, "video_head": "seqTransf",
                 "temporal_layers": 4, "max_frames": 12}


class ModelFilesError(InputError):
    """A model name or tag whose weight file cannot be written locally."""


def hub_location(model_name: str, tag: str) -> tuple[str, str]:
    """(repo id, file name) of the Hub file open_clip loads for ``model_name`` + ``tag``."""
    import open_clip

    config = open_clip.get_pretrained_cfg(model_name, tag)
    hub = config.get("hf_hub", "") if config else ""
    if not hub:
        raise ModelFilesError(f"open_clip has no Hugging Face Hub file for {model_name} pretrained={tag!r}")
    repo_id, file_name = os.path.split(hub)  # as open_clip splits it: "org/name/" has no file name
    return repo_id, file_name or HUB_WEIGHTS_FILE


def write_openai_clip(hub_cache: str | Path, model_name: str = "ViT-B-32-quickgelu", tag: str = "openai",
                      seed: int = 0) -> Path:
    """A random-valued ``model_name`` in the file ``pretrained: tag`` resolves to, inside the Hugging Face
    Hub cache folder ``hub_cache`` (use with ``HF_HUB_CACHE=hub_cache HF_HUB_OFFLINE=1``)."""
    import open_clip
    from safetensors.torch import save_file

    repo_id, file_name = hub_location(model_name, tag)
    revision = hashlib.sha1(f"teachclip-rehearsal:{repo_id}:{seed}".encode()).hexdigest()
    repo = Path(hub_cache) / f"models--{repo_id.replace('/', '--')}"
    path = repo / "snapshots" / revision / file_name
    if not path.exists():
        root = logging.getLogger()  # open_clip warns on the root logger that the model is random: intended
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = open_clip.create_model(model_name, pretrained=None)
        finally:
            root.setLevel(level)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return path


def write_official_teacher(kind: str, path: str | Path, backbone_name: str = "ViT-B-32-quickgelu", *,
                           max_words: int = 32, clip_names: str | None = None, seed: int = 0) -> Path:
    """A random-valued official ``kind`` checkpoint (xclip: ``pytorch_model.bin.N``; xpool:
    ``model_best.pth``) at ``backbone_name``'s size, in the released code's key names and container."""
    from teachclip.models.factory import create_teacher
    from teachclip.models.teachers.official import official_state_dict

    path = Path(path)
    if path.exists():
        return path
    options = XCLIP_OPTIONS if kind == "xclip" else {}
    clip_names = clip_names or ("huggingface" if kind == "xpool" else "openai")
    config = TeacherConfig(kind=kind, backbone=BackboneConfig(name=backbone_name, pretrained=None, max_words=max_words),
                           options=options)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        teacher = create_teacher(config, load_weights=False)
    state = official_state_dict(kind, teacher.state_dict(), clip_names=clip_names, generator=generator)
    del teacher
    if kind == "xpool":  # X-Pool's trainer saves a wrapper around the state dict
        document = {"epoch": 5, "state_dict": state,
                    "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "weight_decay": 0.2, "params": [0]}]}}
    else:
        document = state
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(document, tmp))
    return path
