"""``teach search``: embed a collection once into ``index.zarr``, then answer text queries.

A query is one text encoding (the student's text tower, through :mod:`teachclip.api`) followed by **one matrix-vector product** over
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

import torch

from teachclip.api import load_student, student_fingerprint
from teachclip.core.device import pick_device
from teachclip.core.progress import progress_bar
from teachclip.stores import open_video_store
from teachclip.stores.search_index import SearchIndexError, read_index, write_index


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
    """Embed every valid video of a frames (or frame-features) store with a student (saved or
    exported; :func:`teachclip.api.load_student`); write ``out``."""
    student = load_student(model_dir, device=device)
    with progress_bar(progress) as bar:
        task = bar.add_task("index", total=None, status="")
        video_ids, embeddings = student.embed_store(frames, batch_videos=batch_videos, progress=(bar, task))
    return write_index(out, embeddings, video_ids, dtype, model_fingerprint=student.fingerprint,
                       model_path=str(Path(model_dir).resolve()), frames_fingerprint=open_video_store(frames).fingerprint)


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
        given = student_fingerprint(model_dir)
        if given != self.index.model_fingerprint:
            raise SearchIndexError(
                f"{index_path} was built by model {self.index.model_fingerprint[:12]}, but {model_dir} is model "
                f"{given[:12]}: its text vectors would not match the index; rebuild the index with this model"
            )
        self.student = load_student(model_dir, device=str(self.device))

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-length text vectors [N, d] on the index's device (the part of a query that is not the
        index scan)."""
        return torch.from_numpy(self.student.embed_texts(texts)).to(self.device)

    def top_k(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [k], rows [k]) of the best videos for one unit-length query vector [d]."""
        scores = self.embeddings @ query.to(device=self.embeddings.device, dtype=self.embeddings.dtype)
        best = torch.topk(scores, min(k, scores.shape[0]))
        return best.values.float(), best.indices

    def query(self, text: str, k: int = 5) -> list[Hit]:
        scores, rows = self.top_k(self.encode([text])[0], k)
        return [Hit(rank + 1, self.index.video_ids[int(row)], float(score))
                for rank, (score, row) in enumerate(zip(scores.tolist(), rows.tolist(), strict=True))]
