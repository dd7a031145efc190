"""Training state checkpoints that make ``--resume`` land on the same final weights as an
uninterrupted run: safetensors + JSON, never pickles.

Resume exactness rests on two rules: the data order depends only on ``(seed, epoch)``
(:mod:`teachclip.training.batches`), and a checkpoint is written only at the end of an epoch, with
every RNG state; a killed run restarts the epoch it was in.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from teachclip.core.errors import InputError
from teachclip.core.files import atomic_write
from teachclip.training.log import MetricsLog

STATE_FORMAT_VERSION = 1
STATE_JSON = "training_state.json"
CHECKPOINT_DIR = "checkpoint"  # inside a run's output directory
# fields of a training config that do not change the trained weights: a resume may change them
RESUME_FREE_FIELDS = {"prefetch", "eval_every", "cache_in_memory"}


class TrainingStateError(InputError):
    """A training state that cannot be resumed (another run's, or written by a newer teachclip)."""


def has_training_state(directory: str | Path) -> bool:
    return (Path(directory) / STATE_JSON).is_file()


def save_training_state(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    epoch: int,
    step: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write everything needed to continue training after ``epoch`` completed epochs.

    Layout: ``training_state-step<step>.safetensors`` (model weights, optimizer moments, torch/CUDA
    RNG states, numpy's MT19937 key) and ``training_state.json`` (epoch, step, optimizer
    hyper-parameters, scheduler, grad scaler, numpy/python RNG scalars, ``extra``), which names the
    tensors file. The tensors file is written first and the JSON replaced atomically after it, so a
    kill at any moment leaves the previous complete state readable. Returns the JSON path.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        tensors[f"model.{name}"] = value
    optimizer_state = optimizer.state_dict()
    optimizer_scalars: dict[str, dict[str, Any]] = {}
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                optimizer_scalars.setdefault(str(index), {})[key] = value
    rng_tensors, rng_json = capture_rng()
    tensors |= rng_tensors
    # clone: safetensors refuses tensors that share storage (views, tied weights)
    tensors = {key: value.detach().to("cpu", copy=True).contiguous() for key, value in tensors.items()}

    tensors_name = f"training_state-step{step:09d}.safetensors"
    document = {
        "format_version": STATE_FORMAT_VERSION,
        "epoch": epoch,
        "step": step,
        "tensors": tensors_name,
        "optimizer": {"param_groups": optimizer_state["param_groups"], "scalars": optimizer_scalars},
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_json,
        "extra": extra or {},
    }
    # insertion order kept (no sort_keys): the metric history's columns come back in their order
    text = json.dumps(document, indent=1, allow_nan=True) + "\n"  # fails early on non-JSON state
    atomic_write(directory / tensors_name, lambda path: save_file(tensors, str(path)))
    atomic_write(directory / STATE_JSON, lambda path: path.write_text(text))
    for old in directory.glob("training_state-step*.safetensors"):
        if old.name != tensors_name:
            old.unlink()
    return directory / STATE_JSON


def load_training_state(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load what :func:`save_training_state` wrote into the given objects (built the same way as
    when saving); returns ``{"epoch", "step", "extra"}``. Only safetensors and JSON are read."""
    from safetensors.torch import load_file

    directory = Path(directory)
    document = json.loads((directory / STATE_JSON).read_text())
    if document.get("format_version", 0) > STATE_FORMAT_VERSION:
        raise TrainingStateError(f"{directory / STATE_JSON}: written by a newer teachclip (format "
                         f"{document['format_version']} > {STATE_FORMAT_VERSION})")
    tensors = load_file(str(directory / document["tensors"]), device="cpu")
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    if optimizer is not None:
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        for index, scalars in document["optimizer"]["scalars"].items():
            state.setdefault(int(index), {}).update(scalars)
        groups = [
            {key: tuple(value) if isinstance(value, list) and key != "params" else value
             for key, value in group.items()}
            for group in document["optimizer"]["param_groups"]
        ]
        optimizer.load_state_dict({"state": state, "param_groups": groups})  # moves moments to param devices
    if scheduler is not None:
        scheduler.load_state_dict(document["scheduler"])
    if scaler is not None and document["scaler"]:
        scaler.load_state_dict(document["scaler"])
    if restore_rng:
        restore_rng_state({k: v for k, v in tensors.items() if k.startswith("rng.")}, document["rng"])
    return {"epoch": document["epoch"], "step": document["step"], "extra": document["extra"]}


def check_same_run(saved: dict[str, Any], current: dict[str, Any], checkpoint: Path) -> None:
    """A resume must continue the same run: same data, model and weight-relevant settings."""
    differences = [key for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
    if differences:
        details = "; ".join(f"{key}: checkpoint {saved.get(key)!r}, now {current.get(key)!r}" for key in differences)
        raise TrainingStateError(f"{checkpoint} belongs to a different run ({details}); drop --resume to start over")


def start_or_resume(
    out: str | Path, checkpoint: Path, identity: dict[str, Any], resume: bool, *,
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler,
    announce: bool = True,
) -> tuple[int, int, MetricsLog]:
    """(first epoch, step, metrics log) of a training run: after the last completed epoch saved in
    ``checkpoint`` when ``resume`` (refusing the state of another run, see :func:`check_same_run`;
    model, optimizer, schedule, scaler and RNG restored), else from the start."""
    if resume and has_training_state(checkpoint):
        state = load_training_state(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
        check_same_run(state["extra"]["identity"], identity, checkpoint)
        return state["epoch"], state["step"], MetricsLog(out, state["extra"]["history"])
    if resume and announce:
        print(f"note: no training state in {checkpoint}; starting from epoch 1", file=sys.stderr)
    return 0, 0, MetricsLog(out)


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch/CUDA states and numpy's key as tensors; the remaining scalars (numpy, python) as JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = cuda_state
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    tensors["rng.numpy.keys"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss_next = random.getstate()
    document = {
        "numpy": {"name": name, "pos": int(position), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
    }
    return tensors, document


def restore_rng_state(tensors: dict[str, torch.Tensor], document: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(sum(k.startswith("rng.cuda.") for k in tensors))]
    if cuda_states and torch.cuda.is_available():  # a CPU-only resume of a GPU run keeps going
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    numpy_state = document["numpy"]
    np.random.set_state((numpy_state["name"], tensors["rng.numpy.keys"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = document["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))
