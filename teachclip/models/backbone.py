"""A thin layer over open_clip: model creation, offline tokenizer, and CLIP preprocessing at model time.

Frames arrive as uint8 RGB [..., H, W, 3] straight from ``frames.zarr``; :meth:`Backbone.preprocess`
turns them into normalised float tensors on the model's device, so training, extraction, evaluation
and search all share one preprocessing (a train/inference mismatch is a classic bug of the public
code). Weights come from an open_clip ``pretrained`` tag or a local checkpoint path; local files are
read with ``safetensors`` or ``torch.load(weights_only=True)``, never unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from teachclip.core.config import BackboneConfig
from teachclip.core.errors import MissingFileError
from teachclip.models.io import load_state_dict_safely, weights_path

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"

open_clip.add_model_config(MODEL_CONFIG_DIR)  # registers teachclip-micro / -tiny / -small


@contextlib.contextmanager
def _quiet_random_init():
    """open_clip warns on the root logger for every randomly initialised model; for our tiny
    from-scratch models that is the intended state, so the warning is noise on every stage."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class Backbone(nn.Module):
    """An open_clip CLIP model plus its tokenizer; the embeddings are *not* normalised."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        pretrained = config.pretrained
        local = pretrained is not None and Path(pretrained).exists()
        if pretrained is not None and not local and not pretrained.startswith("hf-hub:") and (
                "/" in pretrained or Path(pretrained).suffix):
            # a tag never holds a slash or an extension: this is a missing file, not an unknown tag
            raise MissingFileError(f"{pretrained}: backbone checkpoint not found (backbone.pretrained of "
                                   f"{config.name}); for the demo, `dvc repro pretrain-backbone` writes it")
        with _quiet_random_init():
            self.clip = open_clip.create_model(
                config.name,
                pretrained=None if local else pretrained,
                weights_only=True,
                # OpenAI's weights were trained with QuickGELU; open_clip's plain ViT-B-32 config
                # uses GELU and only warns, which silently degrades every score
                force_quick_gelu=pretrained == "openai",
            )
        if local:  # a weights file, or a saved model directory (teach pretrain-backbone, train-student ...)
            state = load_state_dict_safely(weights_path(pretrained))
            # a teachclip student/teacher file holds the towers under "backbone.clip." (or "clip.")
            for prefix in ("backbone.clip.", "clip."):
                if "positional_embedding" not in state and any(k.startswith(prefix) for k in state):
                    state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            self.clip.load_state_dict(state)
        # stored visual/text towers in fp32; autocast handles fp16/bf16 on CUDA
        self.clip.float()
        context = self.clip.context_length
        self.max_words = min(config.max_words, context)
        self.tokenizer = open_clip.get_tokenizer(config.name, context_length=self.max_words)
        self._full_tokenizer = None  # built on first use (tokenize_full_context)
        size = self.clip.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.embed_dim = int(self.clip.text_projection.shape[-1]) if isinstance(
            self.clip.text_projection, torch.Tensor
        ) else int(self.clip.text_projection.out_features)
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(3, 1, 1), persistent=False)
        if config.freeze_visual:
            self.clip.visual.requires_grad_(False)
        if config.freeze_text:
            for parameter in self._text_parameters():
                parameter.requires_grad_(False)
        self.train()

    def _text_parameters(self) -> list[nn.Parameter]:
        """The text tower's parameters (everything but the image tower and the logit scale/bias)."""
        return [p for name, p in self.clip.named_parameters()
                if not name.startswith("visual.") and name not in ("logit_scale", "logit_bias")]

    def _text_modules(self) -> list[nn.Module]:
        return [module for name, module in self.clip.named_children() if name != "visual"]

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode and not (self.config.freeze_visual and self.config.freeze_text))
        # a frozen tower always runs in eval mode: it gives the features a frame-features store holds
        if self.config.freeze_visual:
            self.clip.visual.eval()
        if self.config.freeze_text:
            for module in self._text_modules():
                module.eval()
        return self

    @property
    def visual_frozen(self) -> bool:
        """True when no parameter of the image tower trains."""
        return not any(p.requires_grad for p in self.clip.visual.parameters())

    @property
    def text_frozen(self) -> bool:
        """True when no parameter of the text tower trains."""
        return not any(p.requires_grad for p in self._text_parameters())

    def visual_fingerprint(self) -> str:
        """sha256 of the image tower's weights (names, shapes, dtypes, bytes): what a frame-features
        store records, so that features are only used by a model whose tower computed them."""
        digest = hashlib.sha256(self.config.name.encode())
        for name, tensor in sorted(self.clip.visual.state_dict().items()):
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        return digest.hexdigest()

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ---- text ------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids [N, max_words] (truncated, end-of-text kept)."""
        return self.tokenizer(list(texts))

    def tokenize_full_context(self, texts: list[str]) -> torch.Tensor:
        """Token ids [N, context] at the model's whole context (CLIP: 77), whatever max_words says."""
        if self._full_tokenizer is None:
            import open_clip

            self._full_tokenizer = open_clip.get_tokenizer(self.config.name, context_length=self.clip.context_length)
        return self._full_tokenizer(list(texts))

    def encode_text_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sentence [N, d], word [N, L, d] features (projected) and the word mask [N, L].

        Works for token lengths L up to the model's context length (CLIP's 77 positions are sliced
        to L, as CLIP4Clip does for its 32 words).
        """
        clip = self.clip
        tokens = tokens.to(self.device)
        length = tokens.shape[1]
        x = clip.token_embedding(tokens)
        x = x + clip.positional_embedding[:length].to(x.dtype)
        attn_mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
        x = clip.transformer(x, attn_mask=attn_mask)
        x = clip.ln_final(x)
        if isinstance(clip.text_projection, nn.Linear):
            x = clip.text_projection(x)
        elif clip.text_projection is not None:
            x = x @ clip.text_projection
        eot = tokens.argmax(dim=-1)  # the end-of-text token has the largest id
        sentence = x[torch.arange(x.shape[0], device=x.device), eot]
        positions = torch.arange(length, device=x.device)
        word_mask = (positions[None, :] <= eot[:, None]) & (tokens != 0)
        return sentence, x, word_mask

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Sentence features [N, d]. The padding after the longest caption is cut off first: CLIP's
        text attention is causal, so the end-of-text feature never sees later positions and the
        result is the same, for less work (demo captions use about half of the 32 positions)."""
        if self.clip.attn_mask is None or not tokens.numel():  # not causal: padding is attended, keep it
            return self.encode_text_tokens(tokens)[0]
        longest = int((tokens != 0).sum(dim=1).max())
        return self.encode_text_tokens(tokens[:, : max(longest, 1)])[0]

    # ---- frames ----------------------------------------------------------------------------
    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> normalised float [N, 3, S, S] on the model device (S = image size)."""
        x = frames.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            # short side to S then centre crop, the same rule as decode
            scale = self.image_size / min(x.shape[-2:])
            height, width = round(x.shape[-2] * scale), round(x.shape[-1] * scale)
            x = F.interpolate(x, size=(max(height, self.image_size), max(width, self.image_size)),
                              mode="bicubic", align_corners=False, antialias=True)
            top = (x.shape[-2] - self.image_size) // 2
            left = (x.shape[-1] - self.image_size) // 2
            x = x[..., top : top + self.image_size, left : left + self.image_size]
        return (x - self.pixel_mean) / self.pixel_std

    def encode_images(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> image embeddings [N, d].

        Floating-point input [N, d] is taken as image embeddings already computed by this (frozen)
        tower, read from a frame-features store, and passed through: pixels are always uint8.
        """
        if frames.is_floating_point():
            if not self.visual_frozen:
                raise ValueError("precomputed frame features need a frozen image tower "
                                 "(backbone.freeze_visual: true): a trainable tower must see the pixels")
            if frames.shape[-1] != self.embed_dim:
                raise ValueError(f"frame features of dim {frames.shape[-1]}, but this backbone embeds in {self.embed_dim}")
            return frames.to(self.device, torch.float32)
        return self.clip.encode_image(self.preprocess(frames))

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [V, T, H, W, 3] -> per-frame embeddings [V, T, d] (padded frames included); or
        precomputed features [V, T, d] passed through (see :meth:`encode_images`)."""
        videos, steps = frames.shape[:2]
        flat = self.encode_images(frames.reshape(videos * steps, *frames.shape[2:]))
        return flat.view(videos, steps, -1)
