"""How the released X-CLIP, X-Pool and TS2-Net code scores, where it departs from teachclip's masking.

Each departure is one field of :class:`teachclip.core.config.TeacherScoringConfig` (``scoring:`` of a
teacher config); :func:`resolve_scoring` fills the fields left at ``None``: the released code's value
for an official checkpoint (it learnt its weights under that behaviour), teachclip's otherwise. The
resolved values are stored in the teacher's config, so a saved teacher and the teacher-cache
fingerprint carry them. What each released repository does (read from its code):

- X-CLIP (``modules/modeling_xclip.py``): every softmax over words runs over all ``max_words`` token
  positions, the padding after end-of-text included, and the reweighting matrices are not masked.
  Padded frames are zero tensors after normalisation (the dataloader's ``np.zeros``), encoded by the
  image tower; the temporal transformer and the video mean mask them, the sentence-frame and
  frame-word softmaxes do not.
- X-Pool (``datasets/video_capture.py``, ``modules/tokenization_clip.py``): a video with fewer frames
  than ``num_frames`` repeats its last frame (no mask anywhere); captions are tokenised at CLIP's 77
  positions (its HF path: truncation at 77).
- TS2-Net (``modules/modeling.py``, ``modules/differential_topk.py``): ``VisualTokenSelection`` always
  runs the perturbed top-k (500 samples, sigma 0.05), at test time too; padded frames are zero
  tensors, and the token shift reads them like any frame; the frame mask is tiled over the
  frame-major token sequence with ``repeat`` instead of ``repeat_interleave`` (token i gets the mask of
  frame ``i mod T``), and the frame pooling reads that tiled mask at every frame's CLS token
  (frame f gets the mask of frame ``f * (1 + topk) mod T``).
"""

from __future__ import annotations

import hashlib

import torch

from teachclip.core.config import TeacherScoringConfig

# kinds each setting applies to; elsewhere it stays None (and setting it is an error)
APPLIES_TO = {
    "mask_padded_words": ("xclip",),
    "padded_frames": ("xclip", "xpool", "ts2net"),
    "token_selection": ("ts2net",),
    "text_context": ("xpool", "ts2net"),
}
RELEASED = {
    "mask_padded_words": {"xclip": False},
    "padded_frames": {"xclip": "released", "xpool": "released", "ts2net": "released"},
    "token_selection": {"ts2net": "perturbed"},
    "text_context": {"xpool": "model", "ts2net": "max_words"},
}
TEACHCLIP = {"mask_padded_words": True, "padded_frames": "mask", "token_selection": "hard", "text_context": "max_words"}


class ScoringConfigError(ValueError):
    """A ``scoring`` setting that does not apply to the teacher's kind."""


def resolve_scoring(kind: str, scoring: TeacherScoringConfig, official: bool) -> TeacherScoringConfig:
    """``scoring`` with every applicable ``None`` replaced: the released code's behaviour when
    ``official``, teachclip's otherwise. Settings that do not apply to ``kind`` must be ``None``."""
    wrong = [f"scoring.{name}={getattr(scoring, name)!r} applies to {', '.join(kinds)} teachers only"
             for name, kinds in APPLIES_TO.items() if kind not in kinds and getattr(scoring, name) is not None]
    if wrong:
        raise ScoringConfigError(f"{kind} teacher: " + "; ".join(wrong))
    update = {}
    for name, kinds in APPLIES_TO.items():
        if kind in kinds and getattr(scoring, name) is None:
            update[name] = RELEASED[name][kind] if official else TEACHCLIP[name]
    return scoring.model_copy(update=update) if update else scoring


def departures(scoring: TeacherScoringConfig) -> list[str]:
    """The resolved settings that differ from teachclip's masked scoring, as ``name=value``."""
    return [f"{name}={getattr(scoring, name)}" for name, value in TEACHCLIP.items()
            if getattr(scoring, name) is not None and getattr(scoring, name) != value]


def ts2net_released_masks(mask: torch.Tensor, tokens_per_frame: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TS2-Net's tiled masks for frame masks [V, T]: the temporal transformer's token mask [V, T * k]
    (token i of the frame-major sequence gets frame ``i mod T``'s mask: ``repeat``, not
    ``repeat_interleave``) and the frame mask [V, T] of its pooling (that token mask at each frame's
    first token: frame f gets frame ``f * k mod T``'s mask); k = ``tokens_per_frame``."""
    steps = mask.shape[1]
    tokens = mask.repeat(1, tokens_per_frame)  # [m_0 .. m_T-1, m_0 .. m_T-1, ...]
    frames = tokens[:, torch.arange(0, steps * tokens_per_frame, tokens_per_frame, device=mask.device)]
    return tokens, frames


def video_generator(seed: int, video_id: str | None, index: int) -> torch.Generator:
    """A CPU generator for one video's perturbed token selection: a function of (seed, video id) only,
    so a video's scores depend neither on the batch it came in (index: its position, when ids are
    missing) nor on the device (CUDA generators draw other numbers)."""
    key = f"{seed}:{video_id}" if video_id is not None else f"{seed}:#{index}"
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & (2**63 - 1))
    return generator
