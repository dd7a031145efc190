"""The pieces every training stage shares (train-teacher now, train-student later): one copy each.

- seeding, AdamW over named parameter groups (per-group lr; no weight decay on biases, norms,
  embeddings, logit scales), warmup + cosine schedule, AMP's grad scaler;
- the CLIP4Clip batch sampler (one caption per training video per epoch, re-drawn every epoch, a pure
  function of ``(seed, epoch)``) and a frames reader with background prefetch;
- training state checkpoints (safetensors + JSON, never pickles) that make ``--resume`` land on the
  same final weights as an uninterrupted run;
- per-epoch metrics as TSV (``dvc plots``) and JSON (``dvc metrics``), running losses for the progress
  bar;
- :func:`embed_collection` / :func:`score_collection`: a model's similarity matrix over a collection,
  in blocks (students by their vectors, teachers by their own ``score_blocked``).

The training step itself stays in each stage, written out in full, so a reader sees it on one screen.
Resume exactness rests on two rules: the data order depends only on ``(seed, epoch)``, and a checkpoint
is written only at the end of an epoch, with every RNG state; a killed run restarts the epoch it was in.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from teachclip.models.backbone import autocast
from teachclip.core.parallel import progress_bar

STATE_FORMAT_VERSION = 1
STATE_JSON = "training_state.json"
METRICS_TSV = "metrics.tsv"
METRICS_JSON = "metrics.json"


# ---- seeding -------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices). Data order does not use these: see the sampler."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- optimiser, schedule, mixed precision ----------------------------------------------------

NamedParameters = Sequence[tuple[str, nn.Parameter]]


def decays(name: str, parameter: nn.Parameter) -> bool:
    """Weight decay only on weight matrices: biases, norm gains, scalars (logit scale) have ndim < 2,
    and embedding tables (token, position, class) are named ``*embedding*``."""
    return parameter.ndim >= 2 and "embedding" not in name.lower()


def build_optimizer(
    groups: Mapping[str, NamedParameters],
    lrs: Mapping[str, float],
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
) -> torch.optim.AdamW:
    """AdamW with one ``lr`` per named group, each split into decayed and non-decayed parameters.

    ``groups``: name -> [(parameter name, parameter)] (frozen parameters are skipped, empty groups
    dropped); ``lrs`` must name every group. Betas/eps are CLIP4Clip's. The optimizer's param groups
    carry their ``name`` (``"backbone"``, ``"backbone/no_decay"``, ...) for logging.
    """
    missing = [name for name in groups if name not in lrs]
    if missing:
        raise ValueError(f"no learning rate for parameter group(s): {', '.join(missing)}")
    seen: dict[int, str] = {}
    param_groups = []
    for group, named in groups.items():
        decayed, not_decayed = [], []
        for name, parameter in named:
            if not parameter.requires_grad:
                continue
            if id(parameter) in seen:
                raise ValueError(f"parameter {name} is in group {group} and in group {seen[id(parameter)]}")
            seen[id(parameter)] = group
            (decayed if decays(name, parameter) else not_decayed).append(parameter)
        for suffix, params, decay in (("", decayed, weight_decay), ("/no_decay", not_decayed, 0.0)):
            if params:
                param_groups.append({"params": params, "lr": lrs[group], "weight_decay": decay,
                                     "name": group + suffix})
    if not param_groups:
        raise ValueError("no trainable parameters")
    # foreach: one fused kernel per group instead of a Python loop over tensors (PyTorch only picks
    # it by itself on CUDA); about half the optimizer time of a small model's step on a CPU
    return torch.optim.AdamW(param_groups, betas=betas, eps=eps, foreach=True)


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup to 1 over ``warmup_steps`` (the first step already moves), then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float):
    """LambdaLR applying :func:`lr_factor` to every group's lr; call ``.step()`` after every batch."""
    warmup_steps = int(round(warmup_fraction * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps)
    )


def optimizer_step(loss: torch.Tensor, parameters, optimizer: torch.optim.Optimizer, scheduler,
                   scaler: torch.amp.GradScaler, grad_clip: float) -> None:
    """One update: backward through the (AMP-scaled) loss, unscale so that the clip sees the true
    gradients, clip, AdamW step (skipped by the scaler on inf/NaN), scaler and schedule, zero grads."""
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    """A loss scaler for fp16 autocast; a pass-through (``enabled=False``) on CPU and for bf16.

    Mirrors :func:`teachclip.models.backbone.autocast`, which picks bf16 where the GPU supports it.
    """
    fp16 = device.type == "cuda" and amp and not torch.cuda.is_bf16_supported()
    return torch.amp.GradScaler(device.type, enabled=fp16)


# ---- data order -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    videos: np.ndarray  # positions in the training video list, each at most once per epoch
    captions: np.ndarray  # one caption index per video, drawn uniformly among its captions


@dataclass(frozen=True)
class TrainingSet:
    """The videos and captions a training epoch draws from: a split's valid videos (store order)."""

    video_ids: list[str]
    store_indices: np.ndarray  # int64 [videos]: rows of the frames store
    caption_ids: list[str]  # every caption of those videos, manifest order
    texts: list[str]
    caption_video: np.ndarray  # int64 [captions]: position of each caption's video in video_ids
    captions_of_video: list[list[int]]  # caption positions per video (the sampler's input)
    excluded_video_ids: list[str]  # failed decodes and videos without captions, left out


def training_set(store, manifest, split: str = "train") -> TrainingSet:
    """Valid videos of ``split`` that have at least one caption, with their captions."""
    split_ids = sorted(video.video_id for video in manifest.videos_in(split))
    if not split_ids:
        raise ValueError(f"{manifest.root}: no videos in split {split!r}")
    indices = store.index(split_ids)
    valid = np.asarray(store.valid)[indices]
    by_video = manifest.captions_by_video(split)
    kept = [position for position, video_id in enumerate(split_ids) if valid[position] and by_video[video_id]]
    if len(kept) < 2:
        raise ValueError(f"{manifest.root}: split {split!r} has {len(kept)} usable video(s); training needs 2")
    video_ids = [split_ids[position] for position in kept]
    column = {video_id: position for position, video_id in enumerate(video_ids)}
    captions = [caption for caption in manifest.captions_in(split) if caption.video_id in column]
    captions_of_video: list[list[int]] = [[] for _ in video_ids]
    for position, caption in enumerate(captions):
        captions_of_video[column[caption.video_id]].append(position)
    return TrainingSet(
        video_ids=video_ids,
        store_indices=np.asarray(indices)[kept],
        caption_ids=[caption.caption_id for caption in captions],
        texts=[caption.text for caption in captions],
        caption_video=np.array([column[caption.video_id] for caption in captions], dtype=np.int64),
        captions_of_video=captions_of_video,
        excluded_video_ids=[video_id for video_id in split_ids if video_id not in column],
    )


def caption_per_video_batches(
    captions_of_video: Sequence[Sequence[int]], batch_size: int, seed: int, epoch: int
) -> list[Batch]:
    """CLIP4Clip's epoch: every video once, in a shuffled order, with one of its captions.

    A pure function of ``(seed, epoch)`` (its own generator, no global RNG), so a resumed run sees
    exactly the batches of an uninterrupted one. A last batch of a single video is dropped (InfoNCE
    needs negatives). Videos without captions must not be passed.
    """
    counts = np.array([len(c) for c in captions_of_video], dtype=np.int64)
    if (counts == 0).any():
        raise ValueError(f"video position {int(np.argmin(counts))} has no captions")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(counts))
    choice = rng.integers(0, counts[order])
    captions = np.array([captions_of_video[v][c] for v, c in zip(order, choice, strict=True)], dtype=np.int64)
    batches = [
        Batch(order[start : start + batch_size], captions[start : start + batch_size])
        for start in range(0, len(order), batch_size)
    ]
    return [batch for batch in batches if len(batch.videos) >= 2]


def frames_batches(
    store, indices: Sequence[np.ndarray], prefetch: bool = True
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(frames uint8 [n, T, H, W, 3], mask bool [n, T])`` for each index array, read from a
    FramesStore; with ``prefetch`` the next batch is read in a background thread while the caller
    computes on the current one (zarr decompression releases the GIL)."""

    def read(batch_indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        frames, mask = store.read(np.asarray(batch_indices))
        return torch.from_numpy(np.ascontiguousarray(frames)), torch.from_numpy(np.asarray(mask, dtype=bool))

    if not prefetch:
        for batch_indices in indices:
            yield read(batch_indices)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, indices[0]) if len(indices) else None
        for position in range(len(indices)):
            current = pending.result()
            if position + 1 < len(indices):
                pending = pool.submit(read, indices[position + 1])
            yield current


# ---- training state ---------------------------------------------------------------------------


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
        raise ValueError(f"{directory / STATE_JSON}: written by a newer teachclip (format "
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
        raise ValueError(f"{checkpoint} belongs to a different run ({details}); drop --resume to start over")


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


def atomic_write(path: Path, write) -> None:
    """``write(tmp)`` then rename to ``path``: a killed write never leaves a half file under the name."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---- metrics log and running losses -----------------------------------------------------------


class MetricsLog:
    """One row per epoch: ``metrics.tsv`` (every row; ``dvc plots show``) and ``metrics.json`` (the
    last row; ``dvc metrics show``). Both files are rewritten from ``rows`` on every append, so a
    resumed run (which restores ``rows`` from its checkpoint) never duplicates an epoch."""

    def __init__(self, directory: str | Path, rows: Sequence[dict[str, Any]] = ()):
        self.directory = Path(directory)
        self.rows: list[dict[str, Any]] = [dict(row) for row in rows]

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(dict(row))
        self.write()

    def write(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        columns: list[str] = []
        for row in self.rows:
            columns += [key for key in row if key not in columns]

        def write_tsv(path: Path) -> None:
            with open(path, "w", newline="") as handle:
                writer = csv.DictWriter(handle, columns, delimiter="\t", lineterminator="\n", restval="")
                writer.writeheader()
                writer.writerows(self.rows)

        atomic_write(self.directory / METRICS_TSV, write_tsv)
        last = self.rows[-1] if self.rows else {}
        atomic_write(self.directory / METRICS_JSON,
                     lambda path: path.write_text(json.dumps(last, indent=2, sort_keys=True) + "\n"))


class RunningLosses:
    """Mean of each loss term over the batches seen so far in the epoch (progress bar, epoch row)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def update(self, losses: Mapping[str, float | torch.Tensor]) -> None:
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1

    def means(self) -> dict[str, float]:
        return {key: total / max(self.count, 1) for key, total in self.sums.items()}

    def status(self) -> str:
        return " ".join(f"{key} {value:.4f}" for key, value in self.means().items())


def training_progress(enabled: bool = True):
    """The project's progress bar (:func:`progress_bar`), silent when ``enabled`` is False."""
    bar = progress_bar()
    bar.disable = not enabled  # rich's Progress skips its live display when disabled
    return bar


# ---- similarity over a collection ------------------------------------------------------------------


@torch.no_grad()
def embed_collection(
    model: nn.Module,
    store,
    video_indices: np.ndarray,
    texts: Sequence[str],
    *,
    batch_videos: int,
    batch_texts: int,
    device: torch.device,
    amp: bool = True,
    prefetch: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text vectors [N, d] and video vectors [V, d] (float32, CPU) of a model with ``tokenize``,
    ``encode_text(tokens)`` and ``encode_video(frames, mask)``; the caller puts it in eval mode."""
    text_vectors = []
    for start in range(0, len(texts), batch_texts):
        tokens = model.tokenize(list(texts[start : start + batch_texts])).to(device)
        with autocast(device, amp):
            text_vectors.append(model.encode_text(tokens).float().cpu())
    chunks = [video_indices[start : start + batch_videos] for start in range(0, len(video_indices), batch_videos)]
    video_vectors = []
    for frames, mask in frames_batches(store, chunks, prefetch):
        with autocast(device, amp):
            video_vectors.append(model.encode_video(frames.to(device), mask.to(device)).float().cpu())
    return torch.cat(text_vectors), torch.cat(video_vectors)


@torch.no_grad()
def score_collection(
    model: nn.Module,
    store,
    video_indices: np.ndarray,
    video_ids: Sequence[str],
    texts: Sequence[str],
    caption_ids: Sequence[str],
    caption_video_ids: Sequence[str],
    *,
    batch_videos: int,
    batch_texts: int,
    block_texts: int,
    block_videos: int,
    device: torch.device,
    amp: bool = True,
    prefetch: bool = True,
    timings: dict[str, float] | None = None,
) -> torch.Tensor:
    """Similarity [texts, videos] (float32, CPU) of any evaluable model over a collection.

    ``timings`` (optional) receives wall seconds: ``encode_seconds`` (every caption and video encoded
    once: for the videos that is index time, paid once) and ``score_seconds`` (every query scored
    against every encoded video: what separates a student from a teacher at search time).

    A :class:`~teachclip.models.teachers.base.Teacher` encodes every caption and every video once
    (features kept on ``device``) and is scored by its own similarity with ``score_blocked`` in
    ``block_texts x block_videos`` blocks; anything else is treated as a student (one vector per
    text and per video; the similarity is their dot product, computed in row blocks).
    """
    from teachclip.models.teachers.base import Teacher, cat_features

    timings = {} if timings is None else timings
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    if not isinstance(model, Teacher):
        text_vectors, video_vectors = embed_collection(
            model, store, video_indices, texts, batch_videos=batch_videos, batch_texts=batch_texts,
            device=device, amp=amp, prefetch=prefetch)
        lap("encode_seconds")

        def dot_products() -> torch.Tensor:
            return torch.cat([text_vectors[start : start + block_texts].to(device) @ video_vectors.to(device).T
                              for start in range(0, len(texts), block_texts)]).float().cpu()

        similarity = dot_products()
        lap("score_seconds")
        fastest, spent = timings["score_seconds"], timings["score_seconds"]
        while spent < 0.2:  # a millisecond matrix product: repeat it and keep the fastest reading
            start = time.perf_counter()
            dot_products()
            took = time.perf_counter() - start
            fastest, spent = min(fastest, took), spent + took
        timings["score_seconds"] = fastest
        return similarity
    text_features = []
    for start in range(0, len(texts), batch_texts):
        stop = start + batch_texts
        batch = model.text_batch(list(texts[start:stop]), list(caption_ids[start:stop]),
                                 list(caption_video_ids[start:stop]))
        batch["tokens"] = batch["tokens"].to(device)
        with autocast(device, amp):
            text_features.append(model.encode_texts(batch))
    chunks = [np.arange(start, min(start + batch_videos, len(video_indices)))
              for start in range(0, len(video_indices), batch_videos)]
    video_features = []
    for chunk, (frames, mask) in zip(chunks, frames_batches(store, [video_indices[c] for c in chunks], prefetch), strict=True):
        batch = {"frames": frames.to(device), "mask": mask.to(device), "video_ids": [video_ids[i] for i in chunk]}
        with autocast(device, amp):
            video_features.append(model.encode_videos(batch))
    lap("encode_seconds")
    with autocast(device, amp):
        similarity = model.score_blocked(cat_features(text_features), cat_features(video_features),
                                         block_texts, block_videos).float()
    lap("score_seconds")
    return similarity
