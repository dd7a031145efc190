"""``teach search``: embed a collection once into ``index.zarr``, then answer text queries.

A query is one text encoding (the student's text tower, through :mod:`teachclip.api`) followed by **one matrix-vector product** over
the whole index and a top-k: the index is loaded into memory (on the model's device) once by
:class:`Searcher`, so answering a query never touches the disk. A collection of at least
``search.ann_threshold`` videos also gets an approximate index (faiss IVF with 8-bit codes); the
searcher then loads that instead of the vectors and a query scans only ``search.ann_probe`` of its lists. Scores are cosines (text and video
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
from teachclip.core.config import SearchConfig
from teachclip.core.device import pick_device
from teachclip.core.progress import progress_bar
from teachclip.stores import open_video_store
from teachclip.stores.search_index import AnnIndex, SearchIndexError, read_index, write_index


def build_index(
    model_dir: str | Path,
    frames: str | Path,
    out: str | Path,
    *,
    search: SearchConfig | None = None,
    batch_videos: int = 32,
    device: str = "auto",
    progress: bool = True,
) -> Path:
    """Embed every valid video of a frames (or frame-features) store with a student (saved or exported;
    :func:`teachclip.api.load_student`); write ``out``, with an approximate index when the store holds
    at least ``search.ann_threshold`` valid videos."""
    search = search or SearchConfig()
    student = load_student(model_dir, device=device)
    with progress_bar(progress) as bar:
        task = bar.add_task("index", total=None, status="")
        video_ids, embeddings = student.embed_store(frames, batch_videos=batch_videos, progress=(bar, task))
    ann = None
    if len(video_ids) >= search.ann_threshold:
        # trained on the stored precision's values, so exact and approximate search see the same vectors
        stored = embeddings.astype(search.dtype)
        with progress_bar(progress) as bar:
            task = bar.add_task("ann index", total=len(video_ids), status="")
            ann = AnnIndex.build(stored, lists=search.ann_lists, train_videos=search.ann_train_videos,
                                 seed=search.ann_seed, progress=lambda done: bar.update(task, completed=done))
    return write_index(out, embeddings, video_ids, search.dtype, model_fingerprint=student.fingerprint,
                       model_path=str(Path(model_dir).resolve()), frames_fingerprint=open_video_store(frames).fingerprint,
                       ann=ann)


@dataclass(frozen=True)
class Hit:
    rank: int
    video_id: str
    score: float


class Searcher:
    """A loaded index plus the text side of the model that built it (checked by fingerprint). An index
    with an approximate part is searched through it (``ann_probe`` lists per query) unless ``exact``."""

    def __init__(self, index_path: str | Path, model_dir: str | Path | None = None, device: str = "auto", *,
                 exact: bool = False, ann_probe: int = SearchConfig().ann_probe):
        self.device = pick_device(device)
        self.index = read_index(index_path, approximate=not exact)
        self.ann, self.ann_probe = self.index.ann, ann_probe
        self.embeddings = None if self.ann is not None else torch.from_numpy(
            self.index.embeddings).to(self.device).contiguous()
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

    @property
    def approximate(self) -> bool:
        return self.ann is not None

    def top_k(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [k], rows [k]) of the best videos for one unit-length query vector [d] (fewer than k when
        the approximate index's probed lists hold fewer videos)."""
        if self.ann is not None:
            scores, rows = self.ann.search(query.detach().float().cpu().numpy()[None], k, self.ann_probe)
            found = rows[0] >= 0
            return torch.from_numpy(scores[0][found]), torch.from_numpy(rows[0][found])
        scores = self.embeddings @ query.to(device=self.embeddings.device, dtype=self.embeddings.dtype)
        best = torch.topk(scores, min(k, scores.shape[0]))
        return best.values.float(), best.indices

    def query(self, text: str, k: int = 5) -> list[Hit]:
        scores, rows = self.top_k(self.encode([text])[0], k)
        return [Hit(rank + 1, self.index.video_ids[int(row)], float(score))
                for rank, (score, row) in enumerate(zip(scores.tolist(), rows.tolist(), strict=True))]
