"""Save and rebuild models: ``model.safetensors`` (weights) + ``config.json`` (how to rebuild).

A saved model is a directory::

    model.safetensors   every tensor of the state dict (shared/tied tensors stored once)
    config.json         {"config": ..., "extra": ..., "format_version": 1, "kind": "student"}

``load_model`` looks ``kind`` up in a registry of builders (``config dict -> nn.Module``), builds the
module and loads the weights with safetensors only: nothing is ever unpickled. ``student`` is
registered here; the teachers package registers its kinds (xpool, xclip, ts2net, frame_clip,
caption_sim) when imported, and ``load_model`` imports it on demand.

Builders must not fetch pretrained weights: the checkpoint supplies every tensor, so a builder strips
``pretrained`` from the config it is given (see :func:`without_pretrained`) and a saved model loads
offline, wherever its original pretrained checkpoint lives.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

Builder = Callable[[dict[str, Any]], nn.Module]
_BUILDERS: dict[str, Builder] = {}


class CheckpointError(ValueError):
    """A saved model that cannot be rebuilt: unknown kind, bad config, weights that do not fit."""


def register_kind(kind: str, builder: Builder) -> None:
    """Make ``load_model`` able to rebuild modules saved with ``kind``.

    Registering the same builder again (a re-imported module) is fine; a different builder for a
    kind that is already taken is an error, so two modules cannot silently fight over a name.
    """
    current = _BUILDERS.get(kind)
    if current is not None and _qualified_name(current) != _qualified_name(builder):
        raise ValueError(
            f"model kind {kind!r} is already registered to {_qualified_name(current)}; "
            f"refusing {_qualified_name(builder)}"
        )
    _BUILDERS[kind] = builder


def registered_kinds() -> list[str]:
    return sorted(_BUILDERS)


def without_pretrained(config: Any) -> Any:
    """A copy of a (nested) config dict with every ``pretrained`` entry set to None.

    Builders use it so that rebuilding a saved model never downloads or reads the original
    pretrained weights: they are overwritten by the checkpoint anyway.
    """
    if isinstance(config, dict):
        return {key: None if key == "pretrained" else without_pretrained(value) for key, value in config.items()}
    if isinstance(config, list):
        return [without_pretrained(value) for value in config]
    return config


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

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(config, BaseModel):
        config = config.model_dump(mode="json")
    document = {"config": config, "extra": extra or {}, "format_version": FORMAT_VERSION, "kind": kind}
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"  # fails early on non-JSON values

    weights_tmp = _temporary_path(directory, WEIGHTS_FILE)
    try:
        # save_model (rather than save_file) drops duplicate names of shared/tied tensors. One
        # metadata key only: safetensors writes its metadata map in hash order, and the same model
        # must give the same bytes (DVC hashes).
        save_safetensors(model, str(weights_tmp), metadata={"teachclip": f"{kind}/v{FORMAT_VERSION}"},
                         force_contiguous=True)
        os.replace(weights_tmp, directory / WEIGHTS_FILE)
    finally:
        weights_tmp.unlink(missing_ok=True)
    config_tmp = _temporary_path(directory, CONFIG_FILE)
    try:
        config_tmp.write_text(text)
        os.replace(config_tmp, directory / CONFIG_FILE)
    finally:
        config_tmp.unlink(missing_ok=True)
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a saved model: {"kind", "config", "extra", "format_version"}."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved model config (expected {CONFIG_FILE} next to {WEIGHTS_FILE})")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from exc
    missing = {"kind", "config", "format_version"} - set(document)
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {', '.join(sorted(missing))}")
    if document["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {document['format_version']} is newer than this code reads ({FORMAT_VERSION})"
        )
    document.setdefault("extra", {})
    return document


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved model from ``config.json`` and load ``model.safetensors`` into it.

    Returns the module on ``device`` in eval mode (call ``.train()`` to continue training).
    Missing or unexpected tensor names and shape mismatches are errors naming the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model as load_safetensors

    directory = Path(directory)
    document = read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: weights not found (saved models keep them in {WEIGHTS_FILE})")
    kind = document["kind"]
    builder = _builder_for(kind, directory / CONFIG_FILE)
    try:
        model = builder(document["config"])
    except Exception as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: cannot build a {kind!r} model: {exc}") from exc
    try:
        load_safetensors(model, str(weights), strict=True, device="cpu")
    except (RuntimeError, SafetensorError) as exc:  # missing/unexpected keys, size mismatch, corrupt file
        raise CheckpointError(f"{weights}: weights do not fit the {kind!r} model in {CONFIG_FILE}: {exc}") from exc
    return model.to(device).eval()


def _builder_for(kind: str, config_path: Path) -> Builder:
    if kind not in _BUILDERS:
        try:  # the teachers package registers its kinds on import
            import teachclip.models.teachers  # noqa: F401
        except ImportError as exc:
            raise CheckpointError(
                f"{config_path}: unknown model kind {kind!r} and the teachers package failed to import: {exc}"
            ) from exc
    if kind not in _BUILDERS:
        raise CheckpointError(
            f"{config_path}: unknown model kind {kind!r}; registered kinds: {', '.join(registered_kinds())}"
        )
    return _BUILDERS[kind]


def _temporary_path(directory: Path, name: str) -> Path:
    handle, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(handle)
    return Path(path)


def _qualified_name(builder: Callable) -> str:
    return f"{getattr(builder, '__module__', '?')}.{getattr(builder, '__qualname__', repr(builder))}"


def _build_student(config: dict[str, Any]) -> nn.Module:
    from teachclip.models.student import Student
    from teachclip.core.config import StudentConfig

    saved = StudentConfig.model_validate(config)
    model = Student(StudentConfig.model_validate(without_pretrained(config)))
    # keep the saved config (with its pretrained source) as provenance of the rebuilt model
    model.config = saved
    model.backbone.config = saved.backbone
    return model


register_kind("student", _build_student)
