"""``teach search``: embed a collection once into ``index.zarr``, then answer text queries.

A query is one text encoding (the student's text tower) followed by **one matrix-vector product** over
the whole index and a top-k: the index is loaded into memory (on the model's device) once by
:class:`Searcher`, so answering a query never touches the disk. Scores are cosines (text and video
vectors are unit length). The index format lives in :mod:`teachclip.stores.search_index`; it records
the fingerprint of the model that embedded it, and a query with any other model is refused, because
vectors of two models live in different spaces and would give confidently wrong results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from teachclip.core.device import pick_device
from teachclip.core.progress import progress_bar
from teachclip.models.factory import load_model
from teachclip.models.io import model_fingerprint
from teachclip.models.student import Student
from teachclip.stores import open_video_store
from teachclip.stores.search_index import SearchIndexError, read_index, write_index
from teachclip.training.scoring import encode_videos, uses_amp


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
    """Embed every valid video of a frames (or frame-features) store with a student; write ``out``."""
    torch_device = pick_device(device)
    model = load_model(model_dir, device=torch_device)
    if not isinstance(model, Student):
        raise SearchIndexError(f"{model_dir}: not a student model (a search index needs one vector per video)")
    store = open_video_store(frames)
    store.check_model(model)
    positions = np.flatnonzero(np.asarray(store.valid, dtype=bool))
    video_ids = [store.video_ids[i] for i in positions]
    embeddings = np.zeros((0, model.backbone.embed_dim), np.float32)
    if len(positions):
        with progress_bar(progress) as bar:
            task = bar.add_task("index", total=len(positions), status="")
            features = encode_videos(model.scorer(), store, positions, video_ids, batch_videos=batch_videos,
                                     device=torch_device, amp=uses_amp(model), progress=(bar, task))
        embeddings = features["vector"].float().cpu().numpy()
    return write_index(out, embeddings, video_ids, dtype, model_fingerprint=model_fingerprint(model_dir),
                       model_path=str(Path(model_dir).resolve()), frames_fingerprint=store.fingerprint)


@dataclass(frozen=True)
class Hit:
    rank: int
    video_id: str
    score: float


class Searcher:
    """A loaded index plus the text side of the model that built it (checked by fingerprint)."""

    def __init__(self, index_path: str | Path, model_dir: str | Path | None = None, device: str = "auto"):
        self.device = pick_device(device)
        self.index = read_index(index_path)
        self.embeddings = torch.from_numpy(self.index.embeddings).to(self.device).contiguous()
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

    def top_k(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [k], rows [k]) of the best videos for one unit-length query vector [d]."""
        scores = self.embeddings @ query.to(device=self.embeddings.device, dtype=self.embeddings.dtype)
        best = torch.topk(scores, min(k, scores.shape[0]))
        return best.values.float(), best.indices

    def query(self, text: str, k: int = 5) -> list[Hit]:
        scores, rows = self.top_k(self.encode([text])[0], k)
        return [Hit(rank + 1, self.index.video_ids[int(row)], float(score))
                for rank, (score, row) in enumerate(zip(scores.tolist(), rows.tolist(), strict=True))]
