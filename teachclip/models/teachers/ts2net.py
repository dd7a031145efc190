"""TS2-Net (Liu et al., ECCV 2022): token shift and token selection around a CLIP ViT.

Video side, on our own forward over ``clip.visual``'s parts:
1. Token shift inside the last ``shift_layers`` ViT blocks: the input of the block's attention (after
   ``ln_1``; the residual stream itself is not shifted) has some patch tokens replaced by the same
   token of the previous / next frame, so attention inside one frame sees its neighbours. ``shift``
   "token" (TS2-Net's code, whole tokens): patch p comes from frame t-1 when ``p % shift_div == 0``
   and from frame t+1 when ``p % shift_div == shift_div // 2`` (shift_div 7 on a B/32 reproduces the
   public code's positions; ``shift_next_offset`` moves the second set, which the public code starts
   at patch 3 whatever shift_div is, e.g. shift_div 28 and offset 3 on a B/16); "channel" (TSM-style): the first C/shift_div channels of every patch come
   from t-1, the next C/shift_div from t+1. A token whose source frame is padding (or outside the
   clip) keeps its own value, so padded frames never leak into valid ones.
2. Token selection: a small scorer (LayerNorm-Linear-GELU on each token, concatenated with the same of
   the CLS token, then Linear-GELU-Linear-tanh) keeps the CLS token plus the ``topk`` best patch tokens
   of each frame. By default this happens on the ViT output (as TS2-Net's code does); with
   ``select_before_last = n`` the last n ViT blocks run on the selected tokens only. Training uses
   the perturbed (differentiable) top-k of the paper; eval uses the hard top-k (its limit as the
   noise goes to 0) with ``scoring.token_selection: hard``, or the perturbed top-k, as the released
   code does, with ``perturbed`` (the default of an official checkpoint), its noise drawn from
   (``scoring.selection_seed``, video id) so that scores are reproducible. Token shift runs only
   before selection (after it, token positions no longer line up across frames).
3. A temporal transformer over all selected tokens of all frames (frame position embeddings, padded
   frames masked, residual), whose CLS outputs are the frame embeddings. ``positions: token`` gives
   every token of the joint sequence its own position embedding instead, as the public code does.
Score: e_f = cos(sentence, frame f); alpha_f = softmax_f(4 e_f / ||e||) over valid frames (||e|| the
L2 norm of e over valid frames); s = sum_f alpha_f e_f. Frame relevance = e_f of a caption and its own
video. Per pair: T dot products + a softmax, about 12x a meanP dot product.

``scoring.padded_frames: released`` (the default of an official checkpoint) reproduces the released
code's padding (:mod:`.released`): a padded frame is an all-zero image after normalisation that the
token shift reads like any frame, and the temporal transformer and the pooling use the code's tiled
frame mask, so some padded frames are scored and some valid tokens are hidden.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from teachclip.models.layers import TemporalTransformer, masked_softmax, normalize
from teachclip.models.teachers.base import Features, TextBatch, VideoBatch
from teachclip.models.teachers.common import (
    ClipTeacher,
    Options,
    full_precision,
    matched_dot,
    matched_pairs,
    pairwise_dot,
)
from teachclip.models.teachers.released import ts2net_released_masks, video_generator


class TS2NetOptions(Options):
    shift: Literal["token", "channel", "none"] = "token"
    shift_layers: int = Field(2, ge=0, le=64)  # the last n ViT blocks (before selection) shift
    shift_div: int = Field(7, ge=2, le=4096)
    topk: int = Field(3, ge=1, le=4096)  # patch tokens kept per frame, besides CLS
    select_before_last: int = Field(0, ge=0, le=64)  # 0: select on the ViT output
    temporal_layers: int = Field(4, ge=1, le=48)
    max_frames: int = Field(12, ge=1, le=4096)
    pool_scale: float = Field(4.0, gt=0)  # the 4 of softmax_f(4 e_f / ||e||)
    topk_samples: int = Field(500, ge=1, le=100_000)  # perturbed top-k (training only)
    topk_sigma: float = Field(0.05, gt=0)
    # token shift from frame t+1: patches p >= offset with (p - offset) % shift_div == 0 (None: offset
    # shift_div // 2). TS2-Net's code uses shift_div = (patches + 1) // 7 and offset 3 (B/32: 7 and 3)
    shift_next_offset: int | None = Field(None, ge=0, le=4096)
    # positions of the temporal transformer: "frame" (every token of frame f gets embedding f) or
    # "token" (token i of the joint frame-major sequence gets embedding i, as TS2-Net's code; the table
    # then has max_frames * (1 + topk) rows)
    positions: Literal["frame", "token"] = "frame"

    @model_validator(mode="after")
    def _check(self):
        if self.shift == "token" and self.shift_div < 2:
            raise ValueError("token shift needs shift_div >= 2")
        if self.positions == "token" and self.max_frames * (1 + self.topk) > 65536:
            raise ValueError(f"positions: token needs max_frames x (1 + topk) = {self.max_frames * (1 + self.topk)} "
                             f"position embeddings; at most 65536")
        return self


def temporal_shift(tokens: torch.Tensor, mask: torch.Tensor, mode: str, div: int,
                   next_offset: int | None = None) -> torch.Tensor:
    """Shift part of the patch tokens [V, T, N, C] (CLS first) between adjacent frames; mask [V, T].

    "token" mode: patch p comes from frame t-1 when p % div == 0, from frame t+1 when p >= offset and
    (p - offset) % div == 0, offset = ``next_offset`` (None: div // 2).
    """
    if mode == "none":
        return tokens
    shifted = tokens.clone()
    from_prev_ok = mask[:, :-1, None, None]  # frame t may read frame t-1
    from_next_ok = mask[:, 1:, None, None]  # frame t may read frame t+1
    if mode == "token":
        patch = torch.arange(tokens.shape[2] - 1, device=tokens.device)
        prev_slots = patch[patch % div == 0] + 1  # +1 skips CLS
        offset = div // 2 if next_offset is None else next_offset
        next_slots = patch[(patch >= offset) & ((patch - offset) % div == 0)] + 1
        shifted[:, 1:, prev_slots] = torch.where(from_prev_ok, tokens[:, :-1, prev_slots], tokens[:, 1:, prev_slots])
        shifted[:, :-1, next_slots] = torch.where(from_next_ok, tokens[:, 1:, next_slots], tokens[:, :-1, next_slots])
    elif mode == "channel":
        fold = tokens.shape[-1] // div
        prev_part, next_part = slice(0, fold), slice(fold, 2 * fold)
        shifted[:, 1:, 1:, prev_part] = torch.where(
            from_prev_ok, tokens[:, :-1, 1:, prev_part], tokens[:, 1:, 1:, prev_part])
        shifted[:, :-1, 1:, next_part] = torch.where(
            from_next_ok, tokens[:, 1:, 1:, next_part], tokens[:, :-1, 1:, next_part])
    else:
        raise ValueError(f"unknown shift mode {mode!r}")
    return shifted


class PerturbedTopK(torch.autograd.Function):
    """Differentiable top-k (Berthet et al. 2020, as in TS2-Net): the mean over Gaussian perturbations
    of the position-sorted top-k one-hots [B, k, P]; gradient by the perturbation estimator."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int, samples: int, sigma: float, noise: torch.Tensor | None = None):
        batch, positions = scores.shape
        if noise is None:  # standard normal [B, samples, P]
            noise = torch.randn(batch, samples, positions, dtype=scores.dtype, device=scores.device)
        index = (scores[:, None] + sigma * noise).topk(k, dim=-1).indices.sort(dim=-1).values  # [B, S, k]
        indicators = scores.new_zeros(batch, k, positions)
        indicators.scatter_add_(2, index.transpose(1, 2), scores.new_full(index.transpose(1, 2).shape, 1.0 / samples))
        ctx.save_for_backward(noise, index)
        ctx.sigma = sigma
        return indicators

    @staticmethod
    def backward(ctx, grad_indicators: torch.Tensor):
        noise, index = ctx.saved_tensors
        batch, samples, k = index.shape
        # d E[Y] / d scores = E[Y noise^T] / sigma, contracted with the incoming gradient per sample
        picked = grad_indicators[:, None].expand(batch, samples, k, -1).gather(3, index[..., None]).squeeze(-1)
        per_sample = picked.sum(-1)  # [B, S]: <grad, one-hot of sample s>
        grad_scores = torch.einsum("bs,bsp->bp", per_sample, noise) / (samples * ctx.sigma)
        return grad_scores, None, None, None, None


class TokenSelector(nn.Module):
    """Keeps CLS + the k highest-scoring patch tokens of each frame, in their spatial order."""

    def __init__(self, dim: int, topk: int, samples: int = 500, sigma: float = 0.05):
        super().__init__()
        hidden = max(1, dim // 2)
        self.token_mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden, bias=False), nn.GELU())
        self.score_mlp = nn.Sequential(
            nn.Linear(2 * hidden, hidden, bias=False), nn.GELU(), nn.Linear(hidden, 1, bias=False), nn.Tanh()
        )
        self.topk, self.samples, self.sigma = topk, samples, sigma
        self.perturbed_eval = False  # eval: the perturbed top-k (released code) instead of the hard one

    def scores(self, tokens: torch.Tensor) -> torch.Tensor:
        """Scores [B, P] of the patch tokens of tokens [B, 1 + P, C], each judged next to its CLS."""
        local = self.token_mlp(tokens)
        both = torch.cat([local, local[:, :1].expand_as(local)], dim=-1)
        return self.score_mlp(both).squeeze(-1)[:, 1:]

    def forward(self, tokens: torch.Tensor, generators: list[torch.Generator] | None = None) -> torch.Tensor:
        """tokens [B, 1 + P, C] -> [B, 1 + k, C]. ``generators``: one per video (B divisible by their
        number), for the eval noise of the perturbed top-k (None: the global generator)."""
        patches = tokens[:, 1:]
        if self.topk > patches.shape[1]:
            raise ValueError(f"topk={self.topk} exceeds the {patches.shape[1]} patch tokens per frame")
        scores = self.scores(tokens)
        if self.training or self.perturbed_eval:
            noise = None
            if not self.training and generators:
                rows = scores.shape[0] // len(generators)
                noise = torch.cat([torch.randn(rows, self.samples, scores.shape[1], generator=generator)
                                   for generator in generators]).to(scores.device)
            indicators = PerturbedTopK.apply(scores.float(), self.topk, self.samples, self.sigma, noise)
            selected = torch.einsum("bkp,bpc->bkc", indicators.to(patches.dtype), patches)
        else:
            index = scores.topk(self.topk, dim=-1).indices.sort(dim=-1).values
            selected = patches.gather(1, index[..., None].expand(-1, -1, patches.shape[-1]))
        return torch.cat([tokens[:, :1], selected], dim=1)


class TS2NetTeacher(ClipTeacher):
    kind = "ts2net"
    options_class = TS2NetOptions
    score_version = 1
    similarity_definition = (
        "TS2-Net: sum_f alpha_f e_f, e_f = cos(sentence, frame f) with frames from a token-shift + "
        "token-selection CLIP ViT and a temporal transformer, alpha = softmax_f(4 e_f / ||e||) over valid frames"
    )
    relevance_definition = "e_f: cosine of the sentence and each TS2-Net frame embedding of its own video; padded frames 0"

    def __init__(self, config, load_weights: bool = True):
        super().__init__(config, load_weights)
        from open_clip.transformer import ResidualAttentionBlock

        visual = self.backbone.clip.visual
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if blocks is None or getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise ValueError(f"TS2-Net needs a plain CLIP ViT with a CLS token; {config.backbone.name} is not one")
        if not all(type(block) is ResidualAttentionBlock for block in blocks):
            raise ValueError(f"TS2-Net supports open_clip's standard ViT blocks only ({config.backbone.name})")
        options = self.options
        if options.select_before_last > len(blocks):
            raise ValueError(f"select_before_last={options.select_before_last} exceeds the {len(blocks)} ViT blocks")
        width = int(visual.conv1.out_channels)
        self.selector = TokenSelector(width if options.select_before_last else self.embed_dim, options.topk,
                                      options.topk_samples, options.topk_sigma)
        self.selector.perturbed_eval = self.scoring.token_selection == "perturbed"
        positions = options.max_frames * (1 + options.topk) if options.positions == "token" else options.max_frames
        self.temporal = TemporalTransformer(self.embed_dim, options.temporal_layers, positions,
                                            text=self.backbone.clip.transformer)

    def encode_texts(self, batch: TextBatch) -> Features:
        return {"sentence": self.encode_sentences(batch)}

    def frame_tokens(self, frames: torch.Tensor, mask: torch.Tensor,
                     generators: list[torch.Generator] | None = None) -> torch.Tensor:
        """uint8 frames [V, T, H, W, 3] -> selected, projected tokens [V, T, 1 + k, d]. With
        ``scoring.padded_frames: released`` a padded frame is an all-zero image after normalisation,
        shifted from like any frame; ``generators``: per video, for the perturbed selection's noise."""
        if frames.is_floating_point():
            raise ValueError("ts2net shifts tokens inside the image tower, so it needs the frames store, "
                             "not a frame-features store")
        visual = self.backbone.clip.visual
        videos, steps = mask.shape
        pixels = self.backbone.preprocess(frames.reshape(videos * steps, *frames.shape[2:]))
        if self.scoring.padded_frames == "released":
            pixels = pixels.masked_fill(~mask.reshape(-1, 1, 1, 1).to(pixels.device), 0)
            mask = torch.ones_like(mask)  # the code's shift reads every frame
        x = visual.conv1(pixels).flatten(2).transpose(1, 2)  # [B, P, W]
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(x)  # no patch dropout: it would break the token alignment that shift needs

        blocks = visual.transformer.resblocks
        select_at = len(blocks) - self.options.select_before_last
        first_shift = select_at - self.options.shift_layers
        for i, block in enumerate(blocks):
            if i == select_at:
                x = self.selector(x, generators)
            h = block.ln_1(x)
            if first_shift <= i < select_at:
                h = temporal_shift(h.view(videos, steps, *h.shape[1:]), mask, self.options.shift,
                                   self.options.shift_div, self.options.shift_next_offset).flatten(0, 1)
            if block.attn.batch_first:
                x = x + block.ls_1(block.attention(q_x=h))
            else:
                x = x + block.ls_1(block.attention(q_x=h.transpose(0, 1)).transpose(0, 1))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        x = visual.ln_post(x)
        if visual.proj is not None:
            x = x @ visual.proj
        if select_at == len(blocks):
            x = self.selector(x, generators)
        return x.view(videos, steps, *x.shape[1:])

    def encode_videos(self, batch: VideoBatch) -> Features:
        frames = torch.as_tensor(batch["frames"])
        mask = torch.as_tensor(batch["mask"], dtype=torch.bool).to(self.device)
        videos, steps = mask.shape
        if steps > self.options.max_frames:
            raise ValueError(f"{steps} frames per video exceed options.max_frames={self.options.max_frames}")
        generators = None
        if self.selector.perturbed_eval and not self.selector.training:
            ids = batch.get("video_ids") or [None] * videos
            generators = [video_generator(self.scoring.selection_seed, ids[i], i)
                          for i in range(videos)]
        tokens = self.frame_tokens(frames, mask, generators)  # [V, T, 1 + k, d]
        per_frame = tokens.shape[2]
        if self.options.positions == "token":
            frame_index = torch.arange(steps * per_frame, device=tokens.device)
        else:
            frame_index = torch.arange(steps, device=tokens.device).repeat_interleave(per_frame)
        released = self.scoring.padded_frames == "released"
        if released:
            token_mask, frame_mask = ts2net_released_masks(mask, per_frame)
        else:
            token_mask = mask.repeat_interleave(per_frame, dim=1)
        joint = self.temporal(tokens.flatten(1, 2), token_mask, positions=frame_index)
        frames = normalize(joint.view(videos, steps, per_frame, -1)[:, :, 0])  # the CLS of every frame
        if released:  # frame_mask: the frames the pooling reads; mask: the frames that exist (relevance)
            return {"frames": frames, "mask": mask, "frame_mask": frame_mask.contiguous()}
        return {"frames": frames.masked_fill(~mask[..., None], 0), "mask": mask}

    @full_precision
    def score(self, text_features: Features, video_features: Features) -> torch.Tensor:
        mask = video_features.get("frame_mask", video_features["mask"])[None]
        cosine = pairwise_dot(text_features["sentence"].float(), video_features["frames"].float())
        cosine = cosine.masked_fill(~mask, 0)
        norm = cosine.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        weights = masked_softmax(self.options.pool_scale * cosine / norm, mask)
        return (weights * cosine).sum(-1)

    @full_precision
    def relevance(self, text_features: Features, video_features: Features) -> torch.Tensor:
        matched_pairs(text_features, video_features)
        cosine = matched_dot(text_features["sentence"].float(), video_features["frames"].float())
        return cosine.masked_fill(~video_features["mask"], 0)
