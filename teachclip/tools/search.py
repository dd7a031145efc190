"""``teach search``: embed a collection once into ``index.zarr``, then answer text queries.

Index layout (Zarr v3)::

    index.zarr/        attrs: teachclip_store "search-index", schema_version, model_fingerprint,
                       model_path, frames_fingerprint, dim, dtype, n_videos
      embeddings       float16 | float32 [videos, d]   one L2-normalised vector per video
      video_ids        str [videos]                    frames-store order, failed videos left out

A query is one text encoding (the student's text tower) followed by **one matrix-vector product** over
the whole index and a top-k: the index is loaded into memory once (:class:`SearchIndex`), so
answering a query never touches the disk. Scores are cosines (text and video vectors are unit length).

The index records the fingerprint of the model that embedded it (sha256 of the model's files, see
:func:`model_fingerprint`); a query with any other model is refused, because vectors of two models
live in different spaces and would give confidently wrong results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from teachclip.stores.zarr_io import create_array, finalize, partial_path, read_strings, write_strings
from teachclip.core.fingerprint import fingerprint, sha256_file

STORE_KIND = "search-index"
SCHEMA_VERSION = 1
MODEL_FILES = ("config.json", "model.safetensors")
INDEX_DTYPES = ("float16", "float32")
ROWS_PER_CHUNK = 65536


class SearchIndexError(ValueError):
    """An index that cannot be used (missing, wrong store, or built by another model)."""


def model_fingerprint(model_dir: str | Path) -> str:
    """Identity of a saved model: the sha256 of its weights and its config file."""
    model_dir = Path(model_dir)
    hashes = {}
    for name in MODEL_FILES:
        path = model_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (a saved model has {' and '.join(MODEL_FILES)})")
        hashes[name] = sha256_file(path)
    return fingerprint("model", hashes)


def build_index(
    model_dir: str | Path,
    frames: str | Path,
    out: str | Path,
    *,
    dtype: str = "float16",
    batch_videos: int = 32,
    device: str = "auto",
    progress: bool = True,
) -> Path:
    """Embed every valid video of a frames store with a student; write ``out`` (via ``out.partial``)."""
    from teachclip.stores.frames import FramesStore
    from teachclip.models.backbone import autocast, pick_device
    from teachclip.models.io import load_model
    from teachclip.training import frames_batches, training_progress

    if dtype not in INDEX_DTYPES:
        raise ValueError(f"index dtype {dtype!r}: expected one of {', '.join(INDEX_DTYPES)}")
    torch_device = pick_device(device)
    model = load_model(model_dir, device=torch_device)
    if not hasattr(model, "encode_video"):
        raise SearchIndexError(f"{model_dir}: not a student model (a search index needs one vector per video)")
    store = FramesStore.open(frames)
    store.check_model(model)
    positions = np.flatnonzero(np.asarray(store.valid, dtype=bool))
    video_ids = [store.video_ids[i] for i in positions]
    chunks = [positions[start : start + batch_videos] for start in range(0, len(positions), batch_videos)]

    vectors = []
    with torch.no_grad(), training_progress(progress) as bar:
        task = bar.add_task("index", total=len(positions), status="")
        for frames_batch, mask in frames_batches(store, chunks):
            with autocast(torch_device, model.config.backbone.precision == "amp"):
                video = model.encode_video(frames_batch.to(torch_device), mask.to(torch_device))
            vectors.append(video.float().cpu())
            bar.advance(task, len(mask))
    embeddings = torch.cat(vectors).numpy() if vectors else np.zeros((0, model.backbone.embed_dim), np.float32)

    out = Path(out)
    partial = partial_path(out)
    root = zarr.open_group(partial, mode="w")
    create_array(root, "embeddings", shape=embeddings.shape, dtype=dtype, compress=False,
                 chunks=(max(1, min(ROWS_PER_CHUNK, len(embeddings))), embeddings.shape[1]))[...] = embeddings.astype(dtype)
    write_strings(root, "video_ids", video_ids)
    root.attrs.put({
        "teachclip_store": STORE_KIND,
        "schema_version": SCHEMA_VERSION,
        "model_fingerprint": model_fingerprint(model_dir),
        "model_path": str(Path(model_dir).resolve()),
        "frames_fingerprint": store.fingerprint,
        "dim": int(embeddings.shape[1]),
        "dtype": dtype,
        "n_videos": len(video_ids),
    })
    finalize(partial, out)
    return out


class SearchIndex:
    """An index held in memory: ``scores = embeddings @ query`` and a top-k, nothing else."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise SearchIndexError(f"{self.path}: search index not found")
        root = zarr.open_group(self.path, mode="r")
        self.attrs = dict(root.attrs)
        if self.attrs.get("teachclip_store") != STORE_KIND:
            raise SearchIndexError(f"{self.path}: not a search index (made by `teach search index`)")
        if self.attrs.get("schema_version") != SCHEMA_VERSION:
            raise SearchIndexError(
                f"{self.path}: schema_version {self.attrs.get('schema_version')} (this code reads {SCHEMA_VERSION})"
            )
        self.model_fingerprint: str = self.attrs["model_fingerprint"]
        self.video_ids: list[str] = read_strings(root["video_ids"])
        self.embeddings = torch.from_numpy(np.asarray(root["embeddings"][...])).to(device).contiguous()

    def top_k(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [k], rows [k]) of the best videos for one unit-length query vector [d]."""
        scores = self.embeddings @ query.to(device=self.embeddings.device, dtype=self.embeddings.dtype)
        best = torch.topk(scores, min(k, scores.shape[0]))
        return best.values.float(), best.indices


@dataclass(frozen=True)
class Hit:
    rank: int
    video_id: str
    score: float


class Searcher:
    """A loaded index plus the text side of the model that built it (checked by fingerprint)."""

    def __init__(self, index_path: str | Path, model_dir: str | Path | None = None, device: str = "auto"):
        from teachclip.models.backbone import pick_device
        from teachclip.models.io import load_model

        self.device = pick_device(device)
        self.index = SearchIndex(index_path, self.device)
        model_dir = Path(model_dir if model_dir is not None else self.index.attrs["model_path"])
        given = model_fingerprint(model_dir)
        if given != self.index.model_fingerprint:
            raise SearchIndexError(
                f"{index_path} was built by model {self.index.model_fingerprint[:12]}, but {model_dir} is model "
                f"{given[:12]}: its text vectors would not match the index; rebuild the index with this model"
            )
        self.model = load_model(model_dir, device=self.device)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-length text vectors [N, d] (the part of a query that is not the index scan)."""
        return self.model.encode_text(self.model.tokenize(list(texts)).to(self.device)).float()

    def query(self, text: str, k: int = 5) -> list[Hit]:
        scores, rows = self.index.top_k(self.encode([text])[0], k)
        return [Hit(rank + 1, self.index.video_ids[int(row)], float(score))
                for rank, (score, row) in enumerate(zip(scores.tolist(), rows.tolist(), strict=True))]
