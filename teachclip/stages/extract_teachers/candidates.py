"""Candidate-based extraction (``extract.candidates``): which videos the teacher scores per caption.

A cheap first stage (the *retriever*) gives one unit vector per caption and per video: the frozen
CLIP towers of ``student.backbone`` (``retriever: clip``: caption vectors against mean-pooled frame
vectors) or a trained student directory. For each block of ``layout.block_texts`` captions it takes
the ``k`` best videos by dot product (never the caption's own video, which the teacher always
scores), streaming over the videos ``block_videos`` at a time and keeping a running top-k, so its
memory is ``block_texts x block_videos`` scores and never ``captions x videos``. Then ``random``
further videos per caption are drawn uniformly from the rest by a generator seeded with
``(seed, block)``: a resumed run draws the same ones.

Each block's columns are written to ``<out>.partial/_scratch/_candidates-<selection>/`` (one ``.npy``
file per block, renamed into place when complete), so a killed run proposes only the blocks whose
file is missing, and every teacher of the run reuses them. The teacher side (:mod:`.worker`) then
scores the caption's own video and these columns only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from teachclip.core.config import BackboneConfig, CandidatesConfig, StudentConfig
from teachclip.core.device import autocast, pick_device
from teachclip.core.files import atomic_write
from teachclip.core.fingerprint import fingerprint, sha256_file, short
from teachclip.models.factory import load_model
from teachclip.models.io import CheckpointError, model_fingerprint, read_config
from teachclip.models.student import Student
from teachclip.stages.extract_teachers.requests import ExtractError
from teachclip.stages.extract_teachers.worker import CacheRows
from teachclip.stores.teacher_cache.publish import SCRATCH_DIR
from teachclip.stores.teacher_cache.schema import CacheLayout

CLIP = "clip"


@dataclass(frozen=True)
class CandidatePlan:
    """What every candidate group of one run shares: the retriever, the columns and where they are."""

    config: CandidatesConfig
    retriever_kind: str  # "clip" or "student"
    retriever_fingerprint: str
    k: int  # retrieved columns per caption (k, fewer when the collection is small)
    random: int  # random columns per caption
    folder: Path  # the per-block column files

    @property
    def columns(self) -> int:
        return self.k + self.random

    def attributes(self, n_texts: int) -> dict[str, Any]:
        """``sparse.candidates`` of the groups (the requested k and random: they are fingerprint inputs)."""
        return {"retriever": {"kind": self.retriever_kind, "fingerprint": self.retriever_fingerprint},
                "k": self.config.k, "random": self.config.random, "seed": self.config.seed,
                "teacher_evaluations": n_texts * (self.columns + 1)}

    def block_file(self, block: int) -> Path:
        return self.folder / f"block-{block:06d}.npy"


def plan_candidates(config: CandidatesConfig, backbone: BackboneConfig, layout: CacheLayout,
                    partial: Path) -> CandidatePlan:
    """The retriever's identity and the columns per caption; nothing is computed yet."""
    kind, retriever_fingerprint = retriever_identity(config.retriever, backbone)
    if layout.n_videos < 2:
        raise ExtractError(f"candidate extraction needs at least 2 train videos, found {layout.n_videos}")
    k = min(config.k, layout.n_videos - 1)
    random = min(config.random, layout.n_videos - 1 - k)
    selection = fingerprint("candidate-selection", {"retriever": retriever_fingerprint, "k": config.k,
                                                    "random": config.random, "seed": config.seed,
                                                    "block_texts": layout.block_texts, "n_texts": layout.n_texts,
                                                    "n_videos": layout.n_videos})
    # "_" never starts a group name: this folder cannot collide with a group's scratch folder
    folder = partial / SCRATCH_DIR / f"_candidates-{short(selection)}"
    return CandidatePlan(config, kind, retriever_fingerprint, k, random, folder)


def retriever_identity(retriever: str, backbone: BackboneConfig) -> tuple[str, str]:
    """(kind, fingerprint) of the retriever: the frozen CLIP towers of ``backbone`` (files replaced by
    their sha256), or a saved student (its weights and config)."""
    if retriever == CLIP:
        config = backbone.model_dump(mode="json")
        if config.get("pretrained") and Path(config["pretrained"]).is_file():
            config["pretrained"] = "sha256:" + sha256_file(config["pretrained"])
        elif not config.get("pretrained"):
            raise ExtractError("extract.candidates.retriever clip: student.backbone has no pretrained weights; a "
                               "random tower proposes random candidates")
        return CLIP, fingerprint("candidate-retriever", {"kind": CLIP, "backbone": config})
    path = Path(retriever)
    if not path.is_dir():
        raise ExtractError(f"{path}: extract.candidates.retriever is neither 'clip' nor a trained student directory")
    try:
        kind = read_config(path)["kind"]
    except CheckpointError as exc:
        raise ExtractError(f"{path}: extract.candidates.retriever: {exc}") from exc
    if kind != "student":
        raise ExtractError(f"{path}: extract.candidates.retriever holds a {kind!r} model, not a student")
    return "student", fingerprint("candidate-retriever", {"kind": "student", "model": model_fingerprint(path)})


def build_retriever(plan: CandidatePlan, backbone: BackboneConfig, device: torch.device) -> Student:
    if plan.retriever_kind == CLIP:  # meanP, no AFA: mean-pooled frame vectors of the frozen towers
        frozen = backbone.model_copy(update={"freeze_visual": True, "freeze_text": True})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # a meanP student has no weights the backbone does not set; be sure anyway
            model = Student(StudentConfig(backbone=frozen, head="meanP", afa=False))
        return model.to(device).eval()
    return load_model(plan.config.retriever, device)


def propose_candidates(plan: CandidatePlan, store: Any, rows: CacheRows, layout: CacheLayout, backbone: BackboneConfig,
                       device_name: str, batch: int, bar: Any = None) -> None:
    """Write every missing block's columns (module docstring); the retriever is loaded only if one is missing."""
    missing = [b for b in range(layout.n_blocks) if not plan.block_file(b).is_file()]
    if not missing:
        return
    plan.folder.mkdir(parents=True, exist_ok=True)
    device = pick_device(device_name)
    model = build_retriever(plan, backbone, device)
    store.check_model(model)  # frame features only serve the tower that made them
    scorer = model.scorer()
    amp = model.config.backbone.precision == "amp"
    videos = retriever_video_vectors(scorer, store, rows, batch, device, amp)
    task = bar.add_task("candidates", total=layout.n_blocks, completed=layout.n_blocks - len(missing),
                        status="") if bar is not None else None
    for block in missing:
        start, stop = layout.block_rows(block)
        texts = retriever_text_vectors(scorer, rows, start, stop, batch, device, amp)
        own = rows.text_video[start:stop].astype(np.int64)
        retrieved = top_k_columns(texts, videos, torch.as_tensor(own, device=device), plan.k,
                                  plan.config.block_videos)
        columns = np.concatenate([retrieved, random_columns(retrieved, own, layout.n_videos, plan.random,
                                                            np.random.default_rng([plan.config.seed, block]))], axis=1)
        atomic_write(plan.block_file(block), lambda tmp, c=columns: save_columns(tmp, c))
        if task is not None:
            bar.advance(task)


@torch.no_grad()
def retriever_video_vectors(scorer: Any, store: Any, rows: CacheRows, batch: int, device: torch.device,
                            amp: bool) -> torch.Tensor:
    """float32 [videos, d]: one unit vector per train video, ``batch`` videos per encode call."""
    parts = []
    for start in range(0, len(rows.video_ids), batch):
        frames, mask = store.read(rows.frame_rows[start : start + batch])
        videos = {"frames": torch.from_numpy(np.ascontiguousarray(frames)).to(device),
                  "mask": torch.from_numpy(np.asarray(mask, dtype=bool)).to(device),
                  "video_ids": rows.video_ids[start : start + batch]}
        with autocast(device, amp):
            parts.append(scorer.encode_videos(videos)["vector"].float())
    return torch.cat(parts)


@torch.no_grad()
def retriever_text_vectors(scorer: Any, rows: CacheRows, start: int, stop: int, batch: int, device: torch.device,
                           amp: bool) -> torch.Tensor:
    """float32 [stop - start, d]: the unit vectors of captions ``start:stop``."""
    parts = []
    for first in range(start, stop, batch):
        last = min(first + batch, stop)
        texts = scorer.text_batch(rows.texts[first:last], rows.caption_ids[first:last], rows.caption_videos[first:last])
        texts["tokens"] = texts["tokens"].to(device)
        with autocast(device, amp):
            parts.append(scorer.encode_texts(texts)["vector"].float())
    return torch.cat(parts)


@torch.no_grad()
def top_k_columns(texts: torch.Tensor, videos: torch.Tensor, own: torch.Tensor, k: int, block_videos: int) -> np.ndarray:
    """int64 [texts, k]: each text's k best videos by dot product, its own video excluded, best first.
    One [texts, block_videos] product at a time, merged into a running top-k: nothing of size
    texts x videos is ever allocated."""
    n = texts.shape[0]
    best_scores = torch.full((n, 0), float("-inf"), device=texts.device)
    best_columns = torch.zeros((n, 0), dtype=torch.long, device=texts.device)
    for start in range(0, videos.shape[0], block_videos):
        scores = texts @ videos[start : start + block_videos].T  # [texts, <= block_videos]
        columns = torch.arange(start, start + scores.shape[1], device=texts.device).expand(n, -1)
        scores = scores.masked_fill(columns == own[:, None], float("-inf"))
        merged_scores = torch.cat([best_scores, scores], dim=1)
        merged_columns = torch.cat([best_columns, columns], dim=1)
        keep = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1).indices
        best_scores, best_columns = merged_scores.gather(1, keep), merged_columns.gather(1, keep)
    return best_columns.cpu().numpy()


def random_columns(retrieved: np.ndarray, own: np.ndarray, n_videos: int, count: int,
                   rng: np.random.Generator) -> np.ndarray:
    """int64 [texts, count]: per row, ``count`` distinct videos drawn uniformly among those that are
    neither retrieved nor the row's own video (``count + k + 1 <= n_videos``)."""
    out = np.empty((len(retrieved), count), dtype=np.int64)
    if count == 0:
        return out
    draw = min(n_videos, count + retrieved.shape[1] + 1)  # enough that `count` survive the exclusions
    for row in range(len(retrieved)):
        drawn = rng.choice(n_videos, size=draw, replace=False)
        excluded = np.isin(drawn, retrieved[row]) | (drawn == own[row])
        out[row] = drawn[~excluded][:count]
    return out


def save_columns(path: Path, columns: np.ndarray) -> None:
    with open(path, "wb") as handle:  # np.save(path) would append ".npy" to the temporary name
        np.save(handle, columns.astype(np.int32), allow_pickle=False)
