"""The model file format: ``model.safetensors`` (weights) + ``config.json`` (how to rebuild).

A saved model is a directory::

    model.safetensors   every tensor of the state dict (shared/tied tensors stored once)
    config.json         {"config": ..., "extra": ..., "format_version": 1, "kind": "student"}

This module reads and writes the two files; which module a ``kind`` rebuilds is the registry's job
(:func:`teachclip.models.factory.load_model`). Weights are read with safetensors, or a foreign
checkpoint with ``torch.load(weights_only=True)``: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from teachclip.core.errors import InputError, MissingFileError
from teachclip.core.files import atomic_write
from teachclip.core.fingerprint import fingerprint, sha256_file

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 4 << 20  # a config.json is a few KB; anything near this is not one

# ``teach export``'s directory (written by teachclip/tools/export.py, read back by factory.load_export)
EXPORT_FORMAT = "teachclip-export"
EXPORT_VERSION = 1
EXPORT_OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
EXPORT_HEAD_WEIGHTS = "head.safetensors"
EXPORT_MODEL_CONFIGS = "model_configs"


class CheckpointError(InputError):
    """A saved model or checkpoint that cannot be used: unknown kind, bad config, weights that do not fit."""


def save_model(
    directory: str | Path,
    model: nn.Module,
    kind: str,
    config: dict[str, Any] | BaseModel,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``directory`` (created if missing).

    ``config`` is what the builder of ``kind`` needs to rebuild ``model`` (a pydantic config is
    dumped to JSON); ``extra`` holds anything else worth keeping (epoch, metrics, provenance).
    Each file is written to a temporary name and renamed, so a killed save never leaves a
    half-written file under the final name.
    """
    from safetensors.torch import save_model as save_safetensors

    broken = [name for name, tensor in model.state_dict().items()
              if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if broken:  # a diverged model must never become a file someone evaluates, exports or shares
        raise CheckpointError(f"{directory}: refusing to save a model with non-finite weights "
                              f"({', '.join(broken[:5])}{' ...' if len(broken) > 5 else ''})")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(config, BaseModel):
        config = config.model_dump(mode="json")
    document = {"config": config, "extra": extra or {}, "format_version": FORMAT_VERSION, "kind": kind}
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"  # fails early on non-JSON values

    # save_model (rather than save_file) drops duplicate names of shared/tied tensors. One metadata
    # key only: safetensors writes its metadata map in hash order, and the same model must give the
    # same bytes (DVC hashes).
    atomic_write(directory / WEIGHTS_FILE,
                 lambda tmp: save_safetensors(model, str(tmp), metadata={"teachclip": f"{kind}/v{FORMAT_VERSION}"},
                                              force_contiguous=True))
    atomic_write(directory / CONFIG_FILE, lambda tmp: tmp.write_text(text))
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a saved model: {"kind", "config", "extra", "format_version"}."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise MissingFileError(f"{path}: no saved model config (expected {CONFIG_FILE} next to {WEIGHTS_FILE})")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes; a model config is at most {MAX_CONFIG_BYTES}")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(document).__name__}")
    missing = {"kind", "config", "format_version"} - set(document)
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {', '.join(sorted(missing))}")
    version = document["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path}: format_version {version!r} is not a positive integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version} is newer than this code reads ({FORMAT_VERSION})")
    for key, kind in (("kind", str), ("config", dict), ("extra", dict)):
        if key in document and not isinstance(document[key], kind):
            raise CheckpointError(f"{path}: {key!r} must be a {kind.__name__}, found {type(document[key]).__name__}")
    document.setdefault("extra", {})
    return document


def load_weights(model: nn.Module, directory: str | Path) -> None:
    """Load ``directory/model.safetensors`` into ``model`` (strict: every name and shape must fit)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model as load_safetensors

    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise MissingFileError(f"{weights}: weights not found (saved models keep them in {WEIGHTS_FILE})")
    try:
        load_safetensors(model, str(weights), strict=True, device="cpu")
    except (RuntimeError, SafetensorError) as exc:  # missing/unexpected keys, size mismatch, corrupt file
        raise CheckpointError(f"{weights}: weights do not fit the model in {CONFIG_FILE}: {exc}") from exc


def model_fingerprint(model_dir: str | Path) -> str:
    """Identity of a saved model: the sha256 of its weights and its config file."""
    model_dir = Path(model_dir)
    hashes = {}
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        path = model_dir / name
        if not path.is_file():
            raise MissingFileError(f"{path}: not found (a saved model has {CONFIG_FILE} and {WEIGHTS_FILE})")
        hashes[name] = sha256_file(path)
    return fingerprint("model", hashes)


def is_export(directory: str | Path) -> bool:
    """Whether ``directory`` holds a ``teach export`` (its config.json names the export format)."""
    path = Path(directory) / CONFIG_FILE
    try:
        return path.is_file() and path.stat().st_size <= MAX_CONFIG_BYTES and \
            json.loads(path.read_text()).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def export_fingerprint(directory: str | Path) -> str:
    """Identity of an export: the sha256 of its config and both weight files."""
    directory = Path(directory)
    hashes = {}
    for name in (CONFIG_FILE, EXPORT_OPEN_CLIP_WEIGHTS, EXPORT_HEAD_WEIGHTS):
        path = directory / name
        if not path.is_file():
            raise MissingFileError(f"{path}: not found (an export has {CONFIG_FILE}, {EXPORT_OPEN_CLIP_WEIGHTS} "
                                   f"and {EXPORT_HEAD_WEIGHTS})")
        hashes[name] = sha256_file(path)
    return fingerprint("export", hashes)


def weights_path(path: str | Path) -> Path:
    """A weights file as given, or the weights file of a saved-model directory."""
    path = Path(path)
    return path / WEIGHTS_FILE if path.is_dir() else path


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict of a weights file and the names of the wrapper entries left out, without
    unpickling arbitrary objects.

    ``.safetensors`` files go through safetensors; anything else through
    ``torch.load(weights_only=True)`` (memory-mapped when the file is in torch's zip format), which
    refuses pickled code. A ``{"state_dict": ...}`` (X-Pool) or ``{"model": ...}`` wrapper is unwrapped
    and a ``module.`` prefix (DataParallel/DDP) stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu")), []
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # pickled code, truncated file, not a torch file
        raise CheckpointError(
            f"{path}: refused to load: not a weights-only checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    wrapper: list[str] = []
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            wrapper = sorted(str(k) for k in state if k != key)
            state = state[key]
            break
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    state = {str(key): value for key, value in state.items()}
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state, wrapper


def load_state_dict_safely(path: str | Path) -> dict[str, torch.Tensor]:
    """:func:`read_state_dict` without the wrapper names."""
    return read_state_dict(path)[0]


def without_pretrained(config: Any) -> Any:
    """A copy of a (nested) config dict with every ``pretrained`` entry set to None.

    Builders use it so that rebuilding a saved model never downloads or reads the original
    pretrained weights: they are overwritten by the checkpoint anyway. A backbone trained from
    ``pretrained: openai`` was built with QuickGELU (``Backbone`` forces it for OpenAI weights), which a
    null ``pretrained`` would no longer force: its name becomes open_clip's ``-quickgelu`` variant, so
    the rebuilt model computes what the trained one did.
    """
    if isinstance(config, dict):
        copy = {key: None if key == "pretrained" else without_pretrained(value) for key, value in config.items()}
        name = config.get("name")
        if config.get("pretrained") == "openai" and isinstance(name, str) and not name.endswith("-quickgelu"):
            copy["name"] = f"{name}-quickgelu"
        return copy
    if isinstance(config, list):
        return [without_pretrained(value) for value in config]
    return config


def software_versions() -> dict[str, str]:
    """The libraries that compute scores and weights (provenance recorded in stores and models)."""
    from importlib.metadata import version

    import numpy
    import open_clip
    import zarr

    return {"numpy": numpy.__version__, "open_clip": open_clip.__version__, "teachclip": version("teachclip"),
            "torch": torch.__version__, "zarr": zarr.__version__}

