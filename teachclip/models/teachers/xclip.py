"""X-CLIP (Ma et al., ACM MM 2022): cross-grained contrast with attention over similarity matrices.

Four scores, averaged:
- video-sentence: cos(sentence, video), the video being the mean of its (temporal-transformer) frames;
- video-word:     words scored against the video, aggregated over words by AOSM;
- sentence-frame: the sentence scored against each frame, aggregated over frames by AOSM;
- frame-word:     the word x frame matrix aggregated by AOSM over words then frames, and over frames
                  then words (the two averaged), with X-CLIP's learned reweighting matrices.
AOSM ("attention over the similarity matrix") of similarities s_i is ``sum_i softmax_i(s_i / tau) s_i``
with tau = 0.01. Every softmax runs over valid words / frames only; the learned reweighting matrices
(identity at init) mix the softmax weights across positions, and the mixed weights are masked again so
padding can never come back in. Frame relevance is the sentence-frame cosine of a caption and its own
video. Per pair X-CLIP costs about L*T*d (words x frames), roughly 470x a meanP dot product at B/32.
``frame_features: clip`` and ``full_reweighting: true`` reproduce X-CLIP's released code (its
fine-grained scores read the raw CLIP frames, and it has three more learned matrices); checkpoints of
that code load through ``teachers/official.py``, which sets both.

The released code does not mask (``scoring``, :mod:`.released`): ``mask_padded_words: false`` lets
every token position take part in the word softmaxes, padding included, and ``padded_frames:
released`` scores an all-zero frame's embedding at every padded frame in the sentence-frame and
frame-word softmaxes (the temporal transformer and the video mean still mask them, as the code does).
Both are the defaults of an official checkpoint.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from teachclip.models.layers import TemporalTransformer, masked_mean, masked_softmax, normalize
from teachclip.models.teachers.base import Features, TextBatch, VideoBatch
from teachclip.models.teachers.common import (
    ClipTeacher,
    Options,
    full_precision,
    matched_dot,
    matched_pairs,
    pairwise_dot,
)


class XClipOptions(Options):
    video_head: Literal["meanP", "seqTransf"] = "seqTransf"
    temporal_layers: int = Field(4, ge=1, le=48)
    max_frames: int = Field(12, ge=1, le=4096)  # size of the frame position embeddings and frame reweighting
    temperature: float = Field(0.01, gt=0)  # AOSM tau
    # frame features of the sentence-frame and frame-word scores (and of the frame relevance):
    # "temporal" = the video head's outputs; "clip" = the raw CLIP frame embeddings, as X-CLIP's code
    # does (use_original_clip_for_frame_features=True). The video vector always comes from the head.
    frame_features: Literal["temporal", "clip"] = "temporal"
    # X-CLIP's three other learned matrices (identity at init): global_mat_weight [d, d] inside the
    # video-sentence score, word_logit_weight [L, L] / frame_logit_weight [T, T] reweighting the
    # video-word / sentence-frame AOSM. Official checkpoints need them (teachers/official.py).
    full_reweighting: bool = False


def aosm(
    similarity: torch.Tensor, mask: torch.Tensor, dim: int, temperature: float,
    reweight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention over a similarity matrix along ``dim``: sum_i w_i s_i, w = softmax(s / tau) over valid i.

    ``reweight`` [n, n] (X-CLIP's learned matrix) mixes the weights: w'_j = sum_i w_i R_ij, then
    w' is masked again so a padded position j never contributes.
    """
    # aggregate along the last dim: softmax and matmul are much faster there than on a strided dim
    mask = mask.expand_as(similarity).movedim(dim, -1)
    similarity = similarity.movedim(dim, -1).contiguous()
    weights = masked_softmax(similarity / temperature, mask)
    if reweight is not None:
        size = similarity.shape[-1]
        if size > reweight.shape[0]:
            raise ValueError(f"{size} positions exceed the {reweight.shape[0]} of X-CLIP's reweighting matrix")
        weights = (weights @ reweight[:size, :size].to(weights.dtype)) * mask
    return (weights * similarity.masked_fill(~mask, 0)).sum(-1)


class XClipTeacher(ClipTeacher):
    kind = "xclip"
    options_class = XClipOptions
    score_version = 1
    similarity_definition = (
        "X-CLIP: mean of video-sentence cosine, video-word AOSM, sentence-frame AOSM and frame-word AOSM "
        "(tau 0.01, learned reweighting), over valid words and frames"
    )
    relevance_definition = (
        "cosine of the CLIP sentence embedding and each frame embedding of its own video (temporal-transformer "
        "outputs; the raw CLIP frame embeddings with options.frame_features=clip); padded frames 0"
    )

    def __init__(self, config, load_weights: bool = True):
        super().__init__(config, load_weights)
        dim, words, frames = self.embed_dim, self.backbone.max_words, self.options.max_frames
        self.temporal = None
        if self.options.video_head == "seqTransf":
            self.temporal = TemporalTransformer(dim, self.options.temporal_layers, frames,
                                                text=self.backbone.clip.transformer)
        self.word_projection = nn.Parameter(torch.eye(dim))  # X-CLIP's local_mat_weight
        self.word_reweight = nn.Parameter(torch.eye(words))  # over words, per frame (stage 1)
        self.frame_reweight = nn.Parameter(torch.eye(frames))  # over frames, per word (stage 1)
        self.frame_reweight_2 = nn.Parameter(torch.eye(frames))  # over frames (stage 2)
        self.word_reweight_2 = nn.Parameter(torch.eye(words))  # over words (stage 2)
        if self.options.full_reweighting:
            self.sentence_projection = nn.Parameter(torch.eye(dim))  # X-CLIP's global_mat_weight
            self.video_word_reweight = nn.Parameter(torch.eye(words))  # word_logit_weight
            self.sentence_frame_reweight = nn.Parameter(torch.eye(frames))  # frame_logit_weight

    def encode_texts(self, batch: TextBatch) -> Features:
        sentence, words, word_mask = self.backbone.encode_text_tokens(batch["tokens"].to(self.device))
        words = normalize(words)
        if self.scoring.mask_padded_words:
            words = words.masked_fill(~word_mask[..., None], 0)
        else:  # the released code: every position, the padding after end-of-text included
            word_mask = torch.ones_like(word_mask)
        # the word side of the frame-word matrix, projected once per caption rather than per block
        local_words = words @ self.word_projection.to(words.dtype)
        return {"sentence": normalize(sentence), "words": words, "local_words": local_words, "word_mask": word_mask}

    def encode_videos(self, batch: VideoBatch) -> Features:
        released = self.scoring.padded_frames == "released"
        raw, mask = self.encode_zero_padded_frames(batch) if released else self.encode_valid_frames(batch)
        if raw.shape[1] > self.options.max_frames:
            raise ValueError(f"{raw.shape[1]} frames per video exceed options.max_frames={self.options.max_frames}")
        head = self.temporal(raw, mask) if self.temporal is not None else raw
        video = normalize(masked_mean(normalize(head).masked_fill(~mask[..., None], 0), mask[..., None], dim=1))
        frames = normalize(raw if self.options.frame_features == "clip" else head)
        if released:  # frame_mask: the frames the score reads (every one, padding included)
            return {"frames": frames, "video": video, "mask": mask, "frame_mask": torch.ones_like(mask)}
        return {"frames": frames.masked_fill(~mask[..., None], 0), "video": video, "mask": mask}

    @full_precision
    def score(self, text_features: Features, video_features: Features) -> torch.Tensor:
        tau = self.options.temperature
        sentence, words = text_features["sentence"].float(), text_features["words"].float()
        word_mask = text_features["word_mask"]
        frames, video = video_features["frames"].float(), video_features["video"].float()
        mask = video_features.get("frame_mask", video_features["mask"])

        full = self.options.full_reweighting
        video_sentence = ((sentence @ self.sentence_projection.float()) if full else sentence) @ video.T
        video_word = aosm(pairwise_dot(words, video), word_mask[:, :, None], 1, tau,
                          self.video_word_reweight if full else None)
        sentence_frame = aosm(pairwise_dot(sentence, frames), mask[None], 2, tau,
                              self.sentence_frame_reweight if full else None)

        fine = pairwise_dot(text_features["local_words"].float(), frames)  # [N, L, V, T]
        word_level = aosm(fine, word_mask[:, :, None, None], 1, tau, self.word_reweight)  # [N, V, T]
        frame_level = aosm(fine, mask[None, None], 3, tau, self.frame_reweight)  # [N, L, V]
        sentence_to_frames = aosm(word_level, mask[None], 2, tau, self.frame_reweight_2)
        video_to_words = aosm(frame_level, word_mask[:, :, None], 1, tau, self.word_reweight_2)
        frame_word = (sentence_to_frames + video_to_words) / 2

        return (video_sentence + video_word + sentence_frame + frame_word) / 4

    @full_precision
    def relevance(self, text_features: Features, video_features: Features) -> torch.Tensor:
        matched_pairs(text_features, video_features)
        cosine = matched_dot(text_features["sentence"].float(), video_features["frames"].float())
        return cosine.masked_fill(~video_features["mask"], 0)
