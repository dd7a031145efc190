"""Attentional frame-feature aggregation (AFA, TeachCLIP): learned per-frame weights for pooling.

A small MLP scores each frame, ``w_f = Linear(d, 1)(ReLU(Linear(d, d)(phi_f)))``, from the frame
features as they leave the temporal head. Two softmaxes of the same scores are used:

- pooling: ``softmax_f(w_f / pool_temperature)`` (0.1, sharp) weights the L2-normalised frame
  features; the sum is re-normalised into the video vector;
- supervision: ``softmax_f(w_f / weight_temperature)`` (1.0) is what the fine teaching loss matches
  to the teacher's frame relevance.

Padded frames are masked out of both softmaxes (the public code forgets). The video vector does not
depend on any text, so retrieval costs one dot product per pair, as for CLIP4Clip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from teachclip.models.layers import masked_softmax


class AFA(nn.Module):
    """Frame scoring MLP plus the two masked softmaxes of its scores."""

    def __init__(self, dim: int, pool_temperature: float = 0.1, weight_temperature: float = 1.0):
        super().__init__()
        self.pool_temperature = pool_temperature
        self.weight_temperature = weight_temperature
        self.hidden = nn.Linear(dim, dim)
        self.score = nn.Linear(dim, 1)

    def frame_scores(self, frame_features: torch.Tensor) -> torch.Tensor:
        """Raw scores w [V, T] of frame features [V, T, d]."""
        return self.score(F.relu(self.hidden(frame_features))).squeeze(-1)

    def pooling_weights(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_softmax(scores / self.pool_temperature, mask)

    def supervised_weights(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_softmax(scores / self.weight_temperature, mask)

    def pool(self, frame_features: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Video vectors [V, d]: weighted sum of normalised frames, re-normalised (all padding: zeros)."""
        weights = self.pooling_weights(scores, mask)
        frames = F.normalize(frame_features.float(), dim=-1)
        return F.normalize((weights.unsqueeze(-1) * frames).sum(dim=1), dim=-1)

    def forward(self, frame_features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(video vectors [V, d], supervised frame weights [V, T]) from one scoring pass."""
        scores = self.frame_scores(frame_features)
        return self.pool(frame_features, scores, mask), self.supervised_weights(scores, mask)
