"""The student: CLIP4Clip (``meanP`` or ``seqTransf``) with optional AFA pooling.

Video path, for frames uint8 [V, T, H, W, 3] and a frame mask bool [V, T] (False = padding)::

    frame_features  = backbone per frame                    [V, T, d]   (cacheable when frozen)
    head            = identity (meanP) or                   [V, T, d]
                      temporal transformer(x + pos) + x     (seqTransf, padded frames masked as keys)
    pooling         = masked mean of L2-normalised frames   [V, d]      (no AFA)
                      or AFA: softmax(w / 0.1)-weighted sum (AFA)
    video vector    = L2-normalised

Text path: the CLIP text tower's end-of-text feature, L2-normalised. Retrieval logits are
``logit_scale() * text @ video.T``. The video vector never sees a text, so retrieval costs the same as
CLIP4Clip whatever the training was.

Frozen towers (``backbone.freeze_visual`` / ``backbone.freeze_text``): a frozen tower runs under
``no_grad`` in eval mode. With both frozen only the temporal head, AFA and the logit scale train;
per-frame features and text vectors then never change, so the training stage computes them once and
feeds them to the ``*_from_features`` methods. CLIP4Clip itself fine-tunes both towers (at lr 1e-7).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from teachclip.core.config import StudentConfig
from teachclip.models.afa import AFA
from teachclip.models.backbone import Backbone
from teachclip.models.layers import TemporalTransformer, masked_mean
from teachclip.models.scorer import VectorScorer

MAX_LOGIT_SCALE = 100.0


class Student(nn.Module):
    """CLIP4Clip + optional AFA; see the module docstring for the data flow."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        self.config = config
        self.backbone = Backbone(config.backbone)
        dim = self.backbone.embed_dim
        clip = self.backbone.clip

        init = config.logit_scale_init
        log_init = math.log(init) if init is not None else float(clip.logit_scale.detach())
        # the student owns its scale; CLIP's own one is unused, so it must not look trainable (DDP)
        self.log_logit_scale = nn.Parameter(torch.tensor(log_init))
        clip.logit_scale.requires_grad_(False)

        self.temporal = self._build_temporal(config, dim) if config.head == "seqTransf" else None
        self.afa = AFA(dim, config.afa_pool_temperature, config.afa_weight_temperature) if config.afa else None

    def _build_temporal(self, config: StudentConfig, dim: int) -> TemporalTransformer:
        """CLIP4Clip's init (``temporal_init: text``): the first layers copy the text tower's, the frame
        positions its positions; ``random``: fresh layers, positions N(0, 0.01)."""
        text = getattr(self.backbone.clip, "transformer", None)
        if config.temporal_init != "text" or getattr(text, "width", None) != dim:
            return TemporalTransformer(dim, config.temporal_layers, config.max_frames)
        return TemporalTransformer(dim, config.temporal_layers, config.max_frames, text=text,
                                   position_init=self.backbone.clip.positional_embedding.detach(),
                                   heads=text.resblocks[0].attn.num_heads)

    @property
    def device(self) -> torch.device:
        return self.log_logit_scale.device

    # ---- text ------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.backbone.tokenize(texts)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised sentence features [N, d]."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone.text_frozen):
            features = self.backbone.encode_text(tokens)
        return F.normalize(features.float(), dim=-1)

    # ---- video -----------------------------------------------------------------------------
    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Raw per-frame backbone features [V, T, d] of uint8 frames [V, T, H, W, 3] (padding
        included); what the frozen mode caches."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone.visual_frozen):
            return self.backbone.encode_frames(frames).float()

    def video_and_frame_weights_from_features(
        self, frame_features: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(video vectors [V, d], AFA supervised frame weights [V, T] or None without AFA), from one
        pass through the head: what a training step needs."""
        features = frame_features.to(device=self.device, dtype=self.log_logit_scale.dtype)
        mask = mask.to(device=self.device, dtype=torch.bool)
        if self.temporal is not None:
            features = self.temporal(features, mask)
        if self.afa is None:
            video = F.normalize(masked_mean(F.normalize(features, dim=-1), mask[..., None], dim=1), dim=-1)
            return video, None
        return self.afa(features, mask)

    def video_and_frame_weights(
        self, frames: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.video_and_frame_weights_from_features(self.frame_features(frames), mask)

    def encode_video_from_features(self, frame_features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One L2-normalised vector [V, d] per video, independent of any text."""
        return self.video_and_frame_weights_from_features(frame_features, mask)[0]

    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encode_video_from_features(self.frame_features(frames), mask)

    def frame_weights_from_features(self, frame_features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """AFA's ``softmax_f(w_f / weight_temperature)`` [V, T], 0 on padding (for the fine loss)."""
        if self.afa is None:
            raise ValueError("frame_weights needs the AFA block: this student has afa: false")
        weights = self.video_and_frame_weights_from_features(frame_features, mask)[1]
        assert weights is not None
        return weights

    def frame_weights(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.afa is None:  # fail before running the backbone
            raise ValueError("frame_weights needs the AFA block: this student has afa: false")
        return self.frame_weights_from_features(self.frame_features(frames), mask)

    def scorer(self) -> VectorScorer:
        """The scoring interface of evaluation and search (:mod:`teachclip.models.scorer`)."""
        return VectorScorer(self)

    # ---- training ----------------------------------------------------------------------------
    def logit_scale(self) -> torch.Tensor:
        """exp(learned log scale), clamped at 100 (no gradient pushes it further)."""
        return self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        frames: torch.Tensor | None = None,
        frame_features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """One training forward (what DDP wraps): texts, videos from ``frames`` or cached
        ``frame_features``; returns text [N, d], video [V, d], frame_weights [V, T] or None,
        logit_scale (scalar)."""
        if (frames is None) == (frame_features is None):
            raise ValueError("pass exactly one of frames or frame_features")
        if frame_features is None:
            frame_features = self.frame_features(frames)
        video, weights = self.video_and_frame_weights_from_features(frame_features, mask)
        return {"text": self.encode_text(tokens), "video": video, "frame_weights": weights,
                "logit_scale": self.logit_scale()}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by learning-rate group: "backbone" (open_clip), "new" (temporal head,
        logit scale), "afa". Frozen parameters are left out, so the groups partition the trainable ones."""
        def trainable(module: nn.Module | None) -> list[nn.Parameter]:
            return [p for p in module.parameters() if p.requires_grad] if module is not None else []

        new = trainable(self.temporal) + ([self.log_logit_scale] if self.log_logit_scale.requires_grad else [])
        return {"backbone": trainable(self.backbone), "new": new, "afa": trainable(self.afa)}
