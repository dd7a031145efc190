"""The trained student from Python: load it, embed texts and videos, compare them.

    from teachclip import load_student

    student = load_student("runs/both-s0")                 # a train-student directory or a teach export
    texts = student.embed_texts(["a red square moves left"])      # [N, d] float32, unit length
    videos = student.embed_videos(["clip1.mp4", "clip2.mp4"])     # decoded as decode: params say
    scores = texts @ videos.T                                      # cosines

Videos come as files (sampled and decoded by :func:`teachclip.video.sample_frames` with a
:class:`DecodeConfig`), as frames arrays (``embed_frames``) or as a frames / frame-features store
(``embed_store``). Every result is a CPU numpy array of unit-length float32 vectors, whatever device
the model runs on (``device="auto"``: CUDA when present). ``teach search`` is built on this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from teachclip.core.config import DecodeConfig
from teachclip.core.device import autocast, pick_device
from teachclip.core.errors import InputError
from teachclip.models import io
from teachclip.models.factory import load_export, load_model
from teachclip.models.student import Student
from teachclip.stores import open_video_store
from teachclip.training.scoring import encode_texts, encode_videos, uses_amp
from teachclip.video import VideoDecodeError, sample_frames


class EmbedInputError(InputError):
    """Frames, masks or video files that cannot be embedded (the message names the input)."""


def load_student(path: str | Path, device: str = "auto", decode: DecodeConfig | None = None) -> StudentEmbedder:
    """The student saved in ``path`` (``teach train-student --out``) or exported there (``teach export``),
    on ``device`` in eval mode. ``decode``: how :meth:`StudentEmbedder.embed_videos` samples video
    files (default: ``DecodeConfig()`` with frames of the model's image size)."""
    path = Path(path)
    torch_device = pick_device(device)
    fingerprint = student_fingerprint(path)
    if io.is_export(path):
        model = load_export(path, torch_device)
    else:
        model = load_model(path, torch_device)
        if not isinstance(model, Student):
            raise io.CheckpointError(f"{path}: holds a {type(model).__name__}, not a student (the API embeds "
                                     f"one vector per text and per video)")
    return StudentEmbedder(model, fingerprint, path, decode)


def student_fingerprint(path: str | Path) -> str:
    """Identity of a saved or exported student: the sha256 of its files (what a search index records)."""
    return io.export_fingerprint(path) if io.is_export(path) else io.model_fingerprint(path)


class StudentEmbedder:
    """A loaded student and what it embeds; see the module docstring."""

    def __init__(self, model: Student, fingerprint: str, path: Path, decode: DecodeConfig | None = None):
        self.model = model
        self.fingerprint = fingerprint  # sha256 of the files it was loaded from (search indexes record it)
        self.path = path
        self.device = model.device
        self.amp = uses_amp(model)
        self.decode = decode or DecodeConfig(size=model.backbone.image_size)

    @property
    def dim(self) -> int:
        return self.model.backbone.embed_dim

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_texts: int = 256) -> np.ndarray:
        """Unit-length text vectors float32 [len(texts), d]."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        ids = [str(i) for i in range(len(texts))]
        features = encode_texts(self.model.scorer(), list(texts), ids, ids, batch_texts=batch_texts,
                                device=self.device, amp=self.amp)
        return features["vector"].float().cpu().numpy()

    @torch.no_grad()
    def embed_frames(self, frames: Any, mask: Any = None) -> np.ndarray:
        """Unit-length video vectors float32 [V, d] of uint8 RGB frames [V, T, H, W, 3] (or one video
        [T, H, W, 3]); ``mask`` bool [V, T] marks real frames (default: all). Frame features [V, T, d]
        of a frozen image tower (a frame-features store's rows) are accepted in place of pixels."""
        frames = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
        if frames.dtype == torch.uint8 and frames.ndim == 4 or frames.is_floating_point() and frames.ndim == 2:
            frames = frames[None]
        pixels = frames.dtype == torch.uint8 and frames.ndim == 5 and frames.shape[-1] == 3
        if not pixels and not (frames.is_floating_point() and frames.ndim == 3):
            raise EmbedInputError(f"frames of shape {tuple(frames.shape)} and dtype {frames.dtype}: expected uint8 "
                                  f"[V, T, H, W, 3] RGB (or float frame features [V, T, d])")
        mask = torch.ones(frames.shape[:2], dtype=torch.bool) if mask is None else torch.as_tensor(np.asarray(mask))
        if mask.ndim == 1:
            mask = mask[None]
        if tuple(mask.shape) != tuple(frames.shape[:2]) or mask.dtype != torch.bool:
            raise EmbedInputError(f"mask of shape {tuple(mask.shape)} and dtype {mask.dtype}: expected bool "
                                  f"{list(frames.shape[:2])} (videos, frames)")
        if not bool(mask.any(dim=1).all()):
            raise EmbedInputError("a video with no valid frame (its mask row is all False) has no vector")
        try:
            with autocast(self.device, self.amp):
                vectors = self.model.encode_video(frames.to(self.device), mask.to(self.device))
        except ValueError as exc:  # features of another dim, or features for a trainable image tower
            raise EmbedInputError(f"frames of shape {tuple(frames.shape)}: {exc}") from exc
        return vectors.float().cpu().numpy()

    def sample(self, video: str | Path) -> tuple[np.ndarray, np.ndarray]:
        """Frames uint8 [T, S, S, 3] and mask [T] of one video file, sampled as ``self.decode`` says."""
        config = self.decode
        try:
            return sample_frames(video, config.frames_per_video, config.sample_fps, config.size, config.backend,
                                 config.ffmpeg_binary, threads=config.decoder_threads)
        except VideoDecodeError as exc:
            raise EmbedInputError(str(exc)) from exc

    def embed_videos(self, videos: Sequence[str | Path], batch_videos: int = 8) -> np.ndarray:
        """Unit-length vectors float32 [len(videos), d] of video files, ``batch_videos`` decoded at a time."""
        if isinstance(videos, (str, Path)):
            videos = [videos]
        parts = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(videos), batch_videos):
            sampled = [self.sample(video) for video in videos[start : start + batch_videos]]
            parts.append(self.embed_frames(np.stack([f for f, _ in sampled]), np.stack([m for _, m in sampled])))
        return np.concatenate(parts)

    def embed_store(self, store_path: str | Path, batch_videos: int = 32,
                    progress: Any = None) -> tuple[list[str], np.ndarray]:
        """(video ids, unit-length vectors float32 [videos, d]) of every valid video of a frames store or
        frame-features store (failed decodes left out). ``progress``: a (bar, task) to advance."""
        store = open_video_store(store_path)
        store.check_model(self.model)  # a frame-features store only serves the tower that computed it
        positions = np.flatnonzero(np.asarray(store.valid, dtype=bool))
        video_ids = [store.video_ids[i] for i in positions]
        if not len(positions):
            return video_ids, np.zeros((0, self.dim), np.float32)
        if progress is not None:
            progress[0].update(progress[1], total=len(positions))
        features = encode_videos(self.model.scorer(), store, positions, video_ids, batch_videos=batch_videos,
                                 device=self.device, amp=self.amp, progress=progress)
        return video_ids, features["vector"].float().cpu().numpy()
