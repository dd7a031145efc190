"""Official X-CLIP / TS2-Net / X-Pool checkpoints, loaded through ``create_teacher``.

Each test writes a state dict with the official key names and shapes (random values) at a shrunk
ViT-B/32-like size: towers of width 64 with 2 layers of 2 heads, 32-px frames in 8-px patches, 77 text
positions, embeddings of 64 (text width == embedding size, as at B/32, where X-CLIP's and TS2-Net's
``transformerClip`` runs on the frame embeddings with the text width). The file is saved with
``torch.save`` (plain tensors only), loaded through ``create_teacher``, and the teacher's outputs are
compared with each method's formula written here straight from the official tensors: a small CLIP
forward that reads both OpenAI names (``attn.in_proj_weight``, q/k/v packed as nn.MultiheadAttention
does) and HF CLIPModel names (separate ``q_proj``/``k_proj``/``v_proj``), X-Pool's pooling from
``pool_frames.*``, X-CLIP's four scores from ``global_mat_weight`` & co., TS2-Net's patch shift,
token selection and frame-weighted score. An official checkpoint scores as the released code by
default (``scoring``: padded words and padded frames scored, X-Pool's repeated last frame, TS2-Net's
tiled mask and perturbed top-k); the references compute both that and teachclip's masked scoring,
and each test says which. The LayerNorm eps of the temporal blocks is ours (1e-5) in both.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from teachclip.core.config import TeacherConfig
from teachclip.models.factory import create_teacher, load_teacher, save_teacher
from teachclip.models.teachers.official import (
    OfficialCheckpointError,
    convert_official_state_dict,
    detect_kind,
)

WIDTH, EMBED, LAYERS, HEADS, PATCH, IMAGE, CONTEXT, VOCAB = 64, 64, 2, 2, 8, 32, 77, 49408
PATCHES = (IMAGE // PATCH) ** 2
MODEL = "official-test-quickgelu"
MODEL_GELU = "official-test-gelu"
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
TEXTS = ["a man is cooking pasta in a kitchen", "a dog runs", "two people are playing tennis on a court"]


def _register_models() -> None:
    directory = Path(tempfile.mkdtemp(prefix="official-test-models-"))
    base = {"embed_dim": EMBED,
            "vision_cfg": {"image_size": IMAGE, "layers": LAYERS, "width": WIDTH, "head_width": WIDTH // HEADS,
                           "patch_size": PATCH},
            "text_cfg": {"context_length": CONTEXT, "vocab_size": VOCAB, "width": WIDTH, "heads": HEADS,
                         "layers": LAYERS}}
    (directory / f"{MODEL}.json").write_text(json.dumps({**base, "quick_gelu": True}))
    (directory / f"{MODEL_GELU}.json").write_text(json.dumps(base))
    open_clip.add_model_config(directory)


_register_models()


# ---- official state dicts ---------------------------------------------------------------------------


class Random:
    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, *shape, std: float = 0.02, mean: float = 0.0) -> torch.Tensor:
        return mean + std * torch.randn(*shape, generator=self.generator)

    def near_identity(self, size: int, std: float = 0.3) -> torch.Tensor:
        return torch.eye(size) + self(size, size, std=std)


def openai_block(rnd: Random, prefix: str, width: int = WIDTH) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}attn.in_proj_weight": rnd(3 * width, width, std=width ** -0.5),
        f"{prefix}attn.in_proj_bias": rnd(3 * width, std=0.1),
        f"{prefix}attn.out_proj.weight": rnd(width, width, std=width ** -0.5),
        f"{prefix}attn.out_proj.bias": rnd(width, std=0.1),
        f"{prefix}ln_1.weight": rnd(width, std=0.1, mean=1.0), f"{prefix}ln_1.bias": rnd(width, std=0.1),
        f"{prefix}mlp.c_fc.weight": rnd(4 * width, width, std=width ** -0.5),
        f"{prefix}mlp.c_fc.bias": rnd(4 * width, std=0.1),
        f"{prefix}mlp.c_proj.weight": rnd(width, 4 * width, std=(4 * width) ** -0.5),
        f"{prefix}mlp.c_proj.bias": rnd(width, std=0.1),
        f"{prefix}ln_2.weight": rnd(width, std=0.1, mean=1.0), f"{prefix}ln_2.bias": rnd(width, std=0.1),
    }


def layer_norm(rnd: Random, name: str, width: int = WIDTH) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": rnd(width, std=0.1, mean=1.0), f"{name}.bias": rnd(width, std=0.1)}


def openai_clip(rnd: Random, shifted: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
    """OpenAI CLIP names under ``clip.`` (X-CLIP's / TS2-Net's module_clip, X-Pool's clip_model);
    blocks in ``shifted`` have their attention wrapped as TS2-Net's PatchShiftModule (``attn.net.``)."""
    sd = {"visual.conv1.weight": rnd(WIDTH, 3, PATCH, PATCH, std=0.05),
          "visual.class_embedding": rnd(WIDTH, std=0.3), "visual.positional_embedding": rnd(PATCHES + 1, WIDTH, std=0.3)}
    sd |= layer_norm(rnd, "visual.ln_pre")
    for i in range(LAYERS):
        block = openai_block(rnd, f"visual.transformer.resblocks.{i}.")
        if i in shifted:
            block = {k.replace(".attn.", ".attn.net."): v for k, v in block.items()}
        sd |= block
    sd |= layer_norm(rnd, "visual.ln_post")
    sd["visual.proj"] = rnd(WIDTH, EMBED, std=WIDTH ** -0.5)
    sd["token_embedding.weight"] = rnd(VOCAB, WIDTH, std=0.3)
    sd["positional_embedding"] = rnd(CONTEXT, WIDTH, std=0.1)
    for i in range(LAYERS):
        sd |= openai_block(rnd, f"transformer.resblocks.{i}.")
    sd |= layer_norm(rnd, "ln_final")
    sd["text_projection"] = rnd(WIDTH, EMBED, std=WIDTH ** -0.5)
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    return {f"clip.{k}": v for k, v in sd.items()}


def hf_layer(rnd: Random, prefix: str) -> dict[str, torch.Tensor]:
    sd = {}
    for name in ("q", "k", "v", "out"):
        sd[f"{prefix}self_attn.{name}_proj.weight"] = rnd(WIDTH, WIDTH, std=WIDTH ** -0.5)
        sd[f"{prefix}self_attn.{name}_proj.bias"] = rnd(WIDTH, std=0.1)
    sd |= layer_norm(rnd, f"{prefix}layer_norm1") | layer_norm(rnd, f"{prefix}layer_norm2")
    sd |= {f"{prefix}mlp.fc1.weight": rnd(4 * WIDTH, WIDTH, std=WIDTH ** -0.5), f"{prefix}mlp.fc1.bias": rnd(4 * WIDTH, std=0.1),
           f"{prefix}mlp.fc2.weight": rnd(WIDTH, 4 * WIDTH, std=(4 * WIDTH) ** -0.5), f"{prefix}mlp.fc2.bias": rnd(WIDTH, std=0.1)}
    return sd


def hf_clip(rnd: Random) -> dict[str, torch.Tensor]:
    """HF transformers CLIPModel names under ``clip.`` (X-Pool with --huggingface, TeachCLIP's X-Pool)."""
    sd = {"text_model.embeddings.token_embedding.weight": rnd(VOCAB, WIDTH, std=0.3),
          "text_model.embeddings.position_embedding.weight": rnd(CONTEXT, WIDTH, std=0.1),
          "text_model.embeddings.position_ids": torch.arange(CONTEXT)[None]}
    for i in range(LAYERS):
        sd |= hf_layer(rnd, f"text_model.encoder.layers.{i}.")
    sd |= layer_norm(rnd, "text_model.final_layer_norm")
    sd |= {"vision_model.embeddings.class_embedding": rnd(WIDTH, std=0.3),
           "vision_model.embeddings.patch_embedding.weight": rnd(WIDTH, 3, PATCH, PATCH, std=0.05),
           "vision_model.embeddings.position_embedding.weight": rnd(PATCHES + 1, WIDTH, std=0.3),
           "vision_model.embeddings.position_ids": torch.arange(PATCHES + 1)[None]}
    sd |= layer_norm(rnd, "vision_model.pre_layrnorm")
    for i in range(LAYERS):
        sd |= hf_layer(rnd, f"vision_model.encoder.layers.{i}.")
    sd |= layer_norm(rnd, "vision_model.post_layernorm")
    sd |= {"visual_projection.weight": rnd(EMBED, WIDTH, std=WIDTH ** -0.5),
           "text_projection.weight": rnd(EMBED, WIDTH, std=WIDTH ** -0.5),
           "logit_scale": torch.tensor(math.log(1 / 0.07))}
    return {f"clip.{k}": v for k, v in sd.items()}


def xpool_head(rnd: Random) -> dict[str, torch.Tensor]:
    """X-Pool's modules/transformer.py (pool_frames): identity-initialised projections, trained away."""
    sd = {}
    for name in ("q", "k", "v", "out"):
        sd[f"pool_frames.cross_attn.{name}_proj.weight"] = rnd.near_identity(EMBED)
        sd[f"pool_frames.cross_attn.{name}_proj.bias"] = rnd(EMBED, std=0.1)
    sd |= {"pool_frames.linear_proj.weight": rnd.near_identity(EMBED), "pool_frames.linear_proj.bias": rnd(EMBED, std=0.1)}
    for i in (1, 2, 3):
        sd |= layer_norm(rnd, f"pool_frames.layer_norm{i}", EMBED)
    return sd


def temporal_head(rnd: Random, layers: int = 2) -> dict[str, torch.Tensor]:
    """CLIP4Clip's seqTransf: frame_position_embeddings [77, d] and transformerClip (module_cross)."""
    sd = {"frame_position_embeddings.weight": rnd(CONTEXT, EMBED, std=0.3)}
    for i in range(layers):
        sd |= openai_block(rnd, f"transformerClip.resblocks.{i}.", EMBED)
    return sd


def xclip_state(rnd: Random, max_frames: int, max_words: int = 32) -> dict[str, torch.Tensor]:
    sd = openai_clip(rnd) | temporal_head(rnd)
    sd |= {"global_mat_weight": rnd.near_identity(EMBED, 0.1), "local_mat_weight": rnd.near_identity(EMBED, 0.1),
           "word_logit_weight": rnd.near_identity(max_words), "frame_logit_weight": rnd.near_identity(max_frames),
           "frame_mat_weight": rnd.near_identity(max_frames), "word_mat_weight": rnd.near_identity(max_words),
           "frame_mat_weight2": rnd.near_identity(max_frames), "word_mat_weight2": rnd.near_identity(max_words)}
    # X-CLIP runs convert_weights(self.clip): its CLIP linear/conv/attention weights are saved in fp16
    for key, value in sd.items():
        if key.startswith("clip.") and key.endswith(("weight", "proj", "in_proj_bias")) and ".ln" not in key \
                and "embedding" not in key:
            sd[key] = value.half()
    return sd


def ts2net_state(rnd: Random) -> dict[str, torch.Tensor]:
    half = EMBED // 2
    sd = openai_clip(rnd, shifted=(LAYERS - 1,)) | temporal_head(rnd)
    sd |= {"visual_token_selector.score_predictor.in_conv.0.weight": rnd(EMBED, std=0.1, mean=1.0),
           "visual_token_selector.score_predictor.in_conv.0.bias": rnd(EMBED, std=0.1),
           "visual_token_selector.score_predictor.in_conv.1.weight": rnd(half, EMBED, std=EMBED ** -0.5),
           "visual_token_selector.score_predictor.out_conv.0.weight": rnd(half, EMBED, std=EMBED ** -0.5),
           "visual_token_selector.score_predictor.out_conv.2.weight": rnd(1, half, std=half ** -0.5)}
    # built by TS2-Net's __init__ but unused by its forward
    sd |= {"visual_prompt_encoder.conv1.weight": rnd(WIDTH, 3, PATCH, PATCH),
           "visual_prompt_encoder.positional_embedding": rnd(4, WIDTH),
           "visual_prompt_encoder.layer_norm.weight": rnd(WIDTH, mean=1.0),
           "visual_prompt_encoder.layer_norm.bias": rnd(WIDTH),
           "text_token_selector.score_predictor.in_conv.0.weight": rnd(EMBED, mean=1.0),
           "text_token_selector.score_predictor.in_conv.0.bias": rnd(EMBED),
           "text_token_selector.score_predictor.in_conv.1.weight": rnd(half, EMBED),
           "text_token_selector.score_predictor.in_conv.1.bias": rnd(half),
           "text_token_selector.score_predictor.out_conv.0.weight": rnd(half, EMBED),
           "text_token_selector.score_predictor.out_conv.2.weight": rnd(1, half)}
    return sd


# ---- a CLIP written from the official tensors ------------------------------------------------------


@dataclass
class Block:
    q_w: torch.Tensor
    q_b: torch.Tensor
    k_w: torch.Tensor
    k_b: torch.Tensor
    v_w: torch.Tensor
    v_b: torch.Tensor
    o_w: torch.Tensor
    o_b: torch.Tensor
    ln1: tuple[torch.Tensor, torch.Tensor]
    ln2: tuple[torch.Tensor, torch.Tensor]
    fc1: tuple[torch.Tensor, torch.Tensor]
    fc2: tuple[torch.Tensor, torch.Tensor]


def openai_names(sd: dict, prefix: str) -> Block:
    """nn.MultiheadAttention packs [q; k; v] in in_proj_weight / in_proj_bias."""
    t = {k.removeprefix(prefix): v.float() for k, v in sd.items() if k.startswith(prefix)}
    q_w, k_w, v_w = t["attn.in_proj_weight"].chunk(3)
    q_b, k_b, v_b = t["attn.in_proj_bias"].chunk(3)
    return Block(q_w, q_b, k_w, k_b, v_w, v_b, t["attn.out_proj.weight"], t["attn.out_proj.bias"],
                 (t["ln_1.weight"], t["ln_1.bias"]), (t["ln_2.weight"], t["ln_2.bias"]),
                 (t["mlp.c_fc.weight"], t["mlp.c_fc.bias"]), (t["mlp.c_proj.weight"], t["mlp.c_proj.bias"]))


def hf_names(sd: dict, prefix: str) -> Block:
    t = {k.removeprefix(prefix): v.float() for k, v in sd.items() if k.startswith(prefix)}
    return Block(t["self_attn.q_proj.weight"], t["self_attn.q_proj.bias"], t["self_attn.k_proj.weight"],
                 t["self_attn.k_proj.bias"], t["self_attn.v_proj.weight"], t["self_attn.v_proj.bias"],
                 t["self_attn.out_proj.weight"], t["self_attn.out_proj.bias"],
                 (t["layer_norm1.weight"], t["layer_norm1.bias"]), (t["layer_norm2.weight"], t["layer_norm2.bias"]),
                 (t["mlp.fc1.weight"], t["mlp.fc1.bias"]), (t["mlp.fc2.weight"], t["mlp.fc2.bias"]))


def ln(x: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor], eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], params[0].float(), params[1].float(), eps)


def attention(h: torch.Tensor, b: Block, heads: int, additive_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head self-attention of h [B, S, w], written out head by head."""
    batch, steps, width = h.shape
    split = lambda x: x.view(batch, steps, heads, width // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(h @ b.q_w.T + b.q_b), split(h @ b.k_w.T + b.k_b), split(h @ b.v_w.T + b.v_b)
    logits = q @ k.transpose(-1, -2) / math.sqrt(width // heads)
    if additive_mask is not None:
        logits = logits + additive_mask
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(batch, steps, width)
    return out @ b.o_w.T + b.o_b


def residual_block(x, b: Block, heads=HEADS, additive_mask=None, eps=1e-5, shift=None) -> torch.Tensor:
    """CLIP's ResidualAttentionBlock with QuickGELU; ``shift`` rewrites the attention input (TS2-Net)."""
    h = ln(x, b.ln1, eps)
    if shift is not None:
        h = shift(h)
    x = x + attention(h, b, heads, additive_mask)
    h = ln(x, b.ln2, eps) @ b.fc1[0].T + b.fc1[1]
    h = h * torch.sigmoid(1.702 * h)
    return x + h @ b.fc2[0].T + b.fc2[1]


@dataclass
class ReferenceClip:
    conv1: torch.Tensor
    class_embedding: torch.Tensor
    visual_positions: torch.Tensor
    ln_pre: tuple
    visual_blocks: list[Block]
    ln_post: tuple
    visual_proj: torch.Tensor  # [width, embed]
    token_embedding: torch.Tensor
    text_positions: torch.Tensor
    text_blocks: list[Block]
    ln_final: tuple
    text_proj: torch.Tensor  # [width, embed]

    @classmethod
    def from_openai(cls, sd: dict) -> ReferenceClip:
        sd = {k.removeprefix("clip.").replace(".attn.net.", ".attn."): v.float() for k, v in sd.items()
              if k.startswith("clip.")}
        return cls(sd["visual.conv1.weight"], sd["visual.class_embedding"], sd["visual.positional_embedding"],
                   (sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"]),
                   [openai_names(sd, f"visual.transformer.resblocks.{i}.") for i in range(LAYERS)],
                   (sd["visual.ln_post.weight"], sd["visual.ln_post.bias"]), sd["visual.proj"],
                   sd["token_embedding.weight"], sd["positional_embedding"],
                   [openai_names(sd, f"transformer.resblocks.{i}.") for i in range(LAYERS)],
                   (sd["ln_final.weight"], sd["ln_final.bias"]), sd["text_projection"])

    @classmethod
    def from_hf(cls, sd: dict) -> ReferenceClip:
        sd = {k.removeprefix("clip."): v.float() for k, v in sd.items() if k.startswith("clip.")}
        return cls(sd["vision_model.embeddings.patch_embedding.weight"], sd["vision_model.embeddings.class_embedding"],
                   sd["vision_model.embeddings.position_embedding.weight"],
                   (sd["vision_model.pre_layrnorm.weight"], sd["vision_model.pre_layrnorm.bias"]),
                   [hf_names(sd, f"vision_model.encoder.layers.{i}.") for i in range(LAYERS)],
                   (sd["vision_model.post_layernorm.weight"], sd["vision_model.post_layernorm.bias"]),
                   sd["visual_projection.weight"].T,  # nn.Linear(width, embed, bias=False)
                   sd["text_model.embeddings.token_embedding.weight"],
                   sd["text_model.embeddings.position_embedding.weight"],
                   [hf_names(sd, f"text_model.encoder.layers.{i}.") for i in range(LAYERS)],
                   (sd["text_model.final_layer_norm.weight"], sd["text_model.final_layer_norm.bias"]),
                   sd["text_projection.weight"].T)

    def image_tokens(self, frames: torch.Tensor, shift_layers=(), shift=None) -> torch.Tensor:
        """uint8 frames [N, H, W, 3] (or normalised pixels [N, 3, H, W]) -> every token after ln_post and
        the projection [N, 1 + P, embed]."""
        pixels = frames if frames.is_floating_point() else (frames.permute(0, 3, 1, 2).float() / 255 - MEAN) / STD
        x = F.conv2d(pixels, self.conv1, stride=PATCH).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + self.visual_positions
        x = ln(x, self.ln_pre)
        for i, block in enumerate(self.visual_blocks):
            x = residual_block(x, block, shift=shift if i in shift_layers else None)
        return ln(x, self.ln_post) @ self.visual_proj

    def text(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [N, L] -> (end-of-text feature [N, embed], every token's feature [N, L, embed])."""
        length = tokens.shape[1]
        x = self.token_embedding[tokens] + self.text_positions[:length]
        causal = torch.full((length, length), float("-inf")).triu(1)
        for block in self.text_blocks:
            x = residual_block(x, block, additive_mask=causal)
        hidden = ln(x, self.ln_final) @ self.text_proj
        return hidden[torch.arange(len(tokens)), tokens.argmax(-1)], hidden


def temporal_reference(sd: dict, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None = None):
    """CLIP4Clip's seqTransf from frame_position_embeddings + transformerClip, keys of masked tokens
    pushed to -1e6 as the code's ``extended_video_mask``; the LayerNorm eps is ours (1e-5;
    module_cross uses 1e-12, a difference far below the tolerances)."""
    h = x + sd["frame_position_embeddings.weight"].float()[positions]
    additive = None if mask is None else (1.0 - mask.float())[:, None, None, :] * -1e6
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformerClip.")})
    for i in range(layers):
        h = residual_block(h, openai_names(sd, f"transformerClip.resblocks.{i}."), additive_mask=additive)
    return h + x


def released_pixels(videos: dict) -> torch.Tensor:
    """Normalised pixels [V * T, 3, H, W], an all-zero tensor at every padded frame (the released
    X-CLIP / TS2-Net dataloaders' ``np.zeros`` frames)."""
    pixels = (videos["frames"].flatten(0, 1).permute(0, 3, 1, 2).float() / 255 - MEAN) / STD
    return pixels * videos["mask"].flatten().float()[:, None, None, None]


def pad_videos(videos: dict, valid: list[int]) -> dict:
    """The same videos with only their first ``valid[i]`` frames valid (the rest: padding, black)."""
    mask = torch.arange(videos["mask"].shape[1])[None] < torch.tensor(valid)[:, None]
    return videos | {"frames": videos["frames"] * mask[..., None, None, None], "mask": mask}


def make_frames(videos: int, steps: int, seed: int = 5) -> dict:
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (videos, steps, IMAGE, IMAGE, 3), dtype=torch.uint8, generator=generator)
    return {"frames": frames, "mask": torch.ones(videos, steps, dtype=torch.bool),
            "video_ids": [f"v{i}" for i in range(videos)]}


def teacher_config(kind: str, checkpoint: Path, model: str = MODEL, scoring: dict | None = None,
                   **options) -> TeacherConfig:
    return TeacherConfig(kind=kind, backbone={"name": model, "pretrained": None}, checkpoint=str(checkpoint),
                         options=options, scoring=scoring or {})


def scores(teacher, texts, videos):
    with torch.no_grad():
        text_features = teacher.encode_texts(teacher.text_batch(texts, [f"c{i}" for i in range(len(texts))],
                                                                [f"v{i}" for i in range(len(texts))]))
        video_features = teacher.encode_videos(videos)
        matched = len(texts) == len(videos["video_ids"])  # relevance: caption i against video i
        return (teacher.score(text_features, video_features),
                teacher.relevance(text_features, video_features) if matched else None)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


# ---- X-Pool --------------------------------------------------------------------------------------------


def xpool_reference(sd: dict, reference: ReferenceClip, tokens: torch.Tensor, videos: dict, released: bool = True):
    """X-Pool's pool_frames (modules/transformer.py) and cos(text, pooled), from the official tensors.
    ``released``: a padded frame is a copy of the video's last valid frame (video_capture.py appends
    ``frames[-1]``), attended like any frame; otherwise (teachclip) padded frames get no weight."""
    p = {k.removeprefix("pool_frames."): v.float() for k, v in sd.items() if k.startswith("pool_frames.")}
    text, _ = reference.text(tokens)  # [N, E]
    mask = videos["mask"]
    v, t = mask.shape
    frames = reference.image_tokens(videos["frames"].flatten(0, 1))[:, 0].view(v, t, -1)  # [V, T, E]
    if released:
        last = mask.sum(1) - 1
        frames = torch.stack([torch.cat([frames[j, : last[j] + 1], frames[j, last[j]].expand(t - 1 - last[j], -1)])
                              for j in range(v)])
    text_n = ln(text, (p["layer_norm1.weight"], p["layer_norm1.bias"]))
    frames_n = ln(frames, (p["layer_norm1.weight"], p["layer_norm1.bias"]))
    q = text_n @ p["cross_attn.q_proj.weight"].T + p["cross_attn.q_proj.bias"]
    k = frames_n @ p["cross_attn.k_proj.weight"].T + p["cross_attn.k_proj.bias"]
    values = frames_n @ p["cross_attn.v_proj.weight"].T + p["cross_attn.v_proj.bias"]
    logits = torch.einsum("vtd,nd->nvt", k, q) / math.sqrt(EMBED)  # one head
    weights = logits.softmax(-1) if released else logits.masked_fill(~mask[None], float("-inf")).softmax(-1)
    attended = torch.einsum("nvt,vtd->nvd", weights, values)
    out = attended @ p["cross_attn.out_proj.weight"].T + p["cross_attn.out_proj.bias"]
    out = ln(out, (p["layer_norm2.weight"], p["layer_norm2.bias"]))
    out = ln(out + out @ p["linear_proj.weight"].T + p["linear_proj.bias"], (p["layer_norm3.weight"], p["layer_norm3.bias"]))
    similarity = torch.einsum("nd,nvd->nv", normalize(text), normalize(out))
    return similarity, logits


def xpool_file(tmp_path: Path, sd: dict, name: str = "model_best.pth") -> Path:
    """X-Pool's trainer saves {epoch, state_dict, optimizer}."""
    path = tmp_path / name
    optimizer = {"state": {0: {"step": torch.tensor(12.0), "exp_avg": torch.zeros(3)}},
                 "param_groups": [{"lr": 1e-5, "weight_decay": 0.2, "params": [0]}]}
    torch.save({"epoch": 5, "state_dict": sd, "optimizer": optimizer}, path)
    return path


@pytest.fixture(scope="module")
def xpool_hf(tmp_path_factory):
    sd = hf_clip(Random(1)) | xpool_head(Random(2))
    path = xpool_file(tmp_path_factory.mktemp("xpool"), sd)
    return sd, path, create_teacher(teacher_config("xpool", path)).eval()


def test_xpool_hf_checkpoint_matches_the_formula(xpool_hf):
    sd, path, teacher = xpool_hf
    videos = make_frames(3, 5)
    similarity, relevance = scores(teacher, TEXTS, videos)
    expected, logits = xpool_reference(sd, ReferenceClip.from_hf(sd), teacher.tokenize(TEXTS), videos)
    torch.testing.assert_close(similarity, expected, atol=2e-5, rtol=0)
    matched = torch.stack([logits[i, i] for i in range(3)])
    torch.testing.assert_close(relevance, matched, atol=2e-5, rtol=0)
    assert similarity.std() > 1e-3  # the check is not between constants
    report = teacher.official_conversion
    assert report.clip_names == "huggingface"
    assert report.wrapper == ["epoch", "optimizer"]
    assert set(report.dropped) == {"clip.text_model.embeddings.position_ids", "clip.vision_model.embeddings.position_ids"}


def test_xpool_openai_names_match_the_formula(tmp_path):
    sd = openai_clip(Random(3)) | xpool_head(Random(4))
    teacher = create_teacher(teacher_config("xpool", xpool_file(tmp_path, sd))).eval()
    videos = make_frames(2, 4)
    similarity, _ = scores(teacher, TEXTS, videos)
    expected, _ = xpool_reference(sd, ReferenceClip.from_openai(sd), teacher.tokenize(TEXTS), videos)
    torch.testing.assert_close(similarity, expected, atol=2e-5, rtol=0)
    assert teacher.official_conversion.clip_names == "openai"


def test_xpool_released_and_masked_scoring(xpool_hf, tmp_path):
    """Default (released code): captions at CLIP's 77 tokens, padded frames = the last frame repeated;
    scoring.text_context: max_words and padded_frames: mask give teachclip's. Both against the reference."""
    sd, path, teacher = xpool_hf
    assert (teacher.scoring.text_context, teacher.scoring.padded_frames) == ("model", "released")
    long_caption = " ".join(["a red ball rolls past a small green box"] * 5)  # > 32 tokens
    texts = [*TEXTS[:2], long_caption]
    assert teacher.tokenize(texts).shape[1] == CONTEXT
    videos = pad_videos(make_frames(3, 5, seed=13), [5, 3, 1])
    released, _ = scores(teacher, texts, videos)
    expected, _ = xpool_reference(sd, ReferenceClip.from_hf(sd), teacher.tokenize(texts), videos, released=True)
    torch.testing.assert_close(released, expected, atol=2e-5, rtol=0)

    masked_teacher = create_teacher(teacher_config(
        "xpool", path, scoring={"text_context": "max_words", "padded_frames": "mask"})).eval()
    tokens = masked_teacher.tokenize(texts)
    assert tokens.shape[1] == 32 and int(tokens[2, -1]) == int(tokens.max())  # cut at 32, end-of-text kept
    masked, _ = scores(masked_teacher, texts, videos)
    expected_masked, _ = xpool_reference(sd, ReferenceClip.from_hf(sd), tokens, videos, released=False)
    torch.testing.assert_close(masked, expected_masked, atol=2e-5, rtol=0)
    # short captions agree on the full video and on the 1-frame video (copies of one frame pool to
    # that frame); the long caption and the 3-of-5-frame video do not
    torch.testing.assert_close(masked[:2, [0, 2]], released[:2, [0, 2]], atol=2e-5, rtol=0)
    assert float((masked[2] - released[2]).abs().min()) > 1e-4
    assert float((masked[:2, 1] - released[:2, 1]).abs().min()) > 1e-4


def test_hf_qkv_fusion_reproduces_an_attention_block(xpool_hf):
    """The fused in_proj of an HF layer gives the same block output as separate q/k/v projections."""
    sd, _, teacher = xpool_hf
    x = torch.randn(3, PATCHES + 1, WIDTH, generator=torch.Generator().manual_seed(9))
    for tower, ours in (("vision_model", teacher.backbone.clip.visual.transformer.resblocks),
                        ("text_model", teacher.backbone.clip.transformer.resblocks)):
        for i in range(LAYERS):
            expected = residual_block(x, hf_names({k.removeprefix("clip."): v for k, v in sd.items()},
                                                  f"{tower}.encoder.layers.{i}."))
            with torch.no_grad():
                got = ours[i](x) if ours[i].attn.batch_first else ours[i](x.transpose(0, 1)).transpose(0, 1)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    converted = convert_official_state_dict("xpool", sd)
    block = "backbone.clip.visual.transformer.resblocks.0.attn."
    layer = "clip.vision_model.encoder.layers.0.self_attn."
    torch.testing.assert_close(converted[block + "in_proj_weight"],
                               torch.cat([sd[layer + f"{p}_proj.weight"] for p in "qkv"]))
    torch.testing.assert_close(converted["backbone.clip.visual.proj"], sd["clip.visual_projection.weight"].T)
    torch.testing.assert_close(converted["head.refine.weight"], sd["pool_frames.linear_proj.weight"])


# ---- X-CLIP --------------------------------------------------------------------------------------------


def aosm(similarity: torch.Tensor, reweight: torch.Tensor, tau: float = 0.01) -> torch.Tensor:
    """X-CLIP's sum_i (softmax(s / tau) @ R)_i s_i over the last dim."""
    return ((similarity / tau).softmax(-1) @ reweight * similarity).sum(-1)


def xclip_reference(sd: dict, reference: ReferenceClip, tokens: torch.Tensor, videos: dict,
                    released: bool = True) -> torch.Tensor:
    """modeling_xclip.py's _loose_similarity (seqTransf, use_original_clip_for_frame_features=True).
    ``released``: as the code, every word position (padding included) and every frame (a padded one is
    an all-zero normalised image) in the softmaxes; otherwise teachclip's masking: the valid words
    (start..end of text) and the valid frames only. The temporal head and the video mean mask padded
    frames in both, as the code does."""
    m = {k: v.float() for k, v in sd.items() if "mat_weight" in k or "logit_weight" in k}
    sentence, hidden = reference.text(tokens)
    mask = videos["mask"]
    v, t = mask.shape
    raw = reference.image_tokens(released_pixels(videos))[:, 0].view(v, t, -1)
    temporal = temporal_reference(sd, raw, torch.arange(t), mask)
    video = normalize((normalize(temporal) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
    frames = normalize(raw)
    sentence, words = normalize(sentence), normalize(hidden)
    out = torch.zeros(len(tokens), v)
    for n in range(len(tokens)):
        valid = torch.arange(tokens.shape[1] if released else int(tokens[n].argmax()) + 1)
        w = words[n, valid]
        rw = {name: m[name][valid][:, valid] for name in ("word_logit_weight", "word_mat_weight", "word_mat_weight2")}
        for j in range(v):
            shown = torch.arange(t) if released else torch.arange(t)[mask[j]]
            f = frames[j, shown]
            rf = {name: m[name][shown][:, shown] for name in ("frame_logit_weight", "frame_mat_weight", "frame_mat_weight2")}
            video_sentence = sentence[n] @ m["global_mat_weight"] @ video[j]
            video_word = aosm(w @ video[j], rw["word_logit_weight"])
            sentence_frame = aosm(f @ sentence[n], rf["frame_logit_weight"])
            fine = (w @ m["local_mat_weight"]) @ f.T  # [words, frames]
            word_level = aosm(fine.T, rw["word_mat_weight"])  # per frame, over words
            frame_level = aosm(fine, rf["frame_mat_weight"])  # per word, over frames
            frame_word = (aosm(word_level, rf["frame_mat_weight2"]) + aosm(frame_level, rw["word_mat_weight2"])) / 2
            out[n, j] = (video_sentence + video_word + sentence_frame + frame_word) / 4
    return out, frames * mask[..., None]


@pytest.fixture(scope="module")
def xclip_official(tmp_path_factory):
    steps = 6
    sd = xclip_state(Random(11), max_frames=steps)
    path = tmp_path_factory.mktemp("xclip") / "pytorch_model.bin.4"
    torch.save(sd, path)
    return sd, path, create_teacher(teacher_config("xclip", path)).eval(), steps


def test_xclip_checkpoint_matches_the_four_scores(xclip_official):
    sd, _, teacher, steps = xclip_official
    assert teacher.options.frame_features == "clip" and teacher.options.full_reweighting
    assert teacher.options.temporal_layers == 2 and teacher.options.max_frames == steps
    videos = make_frames(3, steps)
    similarity, relevance = scores(teacher, TEXTS, videos)
    tokens = teacher.tokenize(TEXTS)
    expected, frames = xclip_reference(sd, ReferenceClip.from_openai(sd), tokens, videos)
    torch.testing.assert_close(similarity, expected, atol=5e-5, rtol=0)
    sentence = normalize(ReferenceClip.from_openai(sd).text(tokens)[0])
    torch.testing.assert_close(relevance, torch.einsum("nd,ntd->nt", sentence, frames), atol=2e-5, rtol=0)
    assert similarity.std() > 1e-3


def test_xclip_released_and_masked_scoring_with_padding(xclip_official):
    """Default (released code): padded words and padded frames are scored; scoring.mask_padded_words
    and scoring.padded_frames: mask give teachclip's masked scores. Both against the reference."""
    sd, path, teacher, steps = xclip_official
    assert (teacher.scoring.mask_padded_words, teacher.scoring.padded_frames) == (False, "released")
    videos = pad_videos(make_frames(3, steps, seed=12), [steps, 4, 2])
    tokens = teacher.tokenize(TEXTS)
    assert bool((tokens == 0).any())  # the captions leave padding positions
    reference = ReferenceClip.from_openai(sd)
    released, relevance = scores(teacher, TEXTS, videos)
    expected, frames = xclip_reference(sd, reference, tokens, videos, released=True)
    torch.testing.assert_close(released, expected, atol=5e-5, rtol=0)
    assert bool((relevance[~videos["mask"]] == 0).all())  # relevance is never read on padding

    masked_teacher = create_teacher(teacher_config(
        "xclip", path, scoring={"mask_padded_words": True, "padded_frames": "mask"})).eval()
    masked, _ = scores(masked_teacher, TEXTS, videos)
    expected_masked, _ = xclip_reference(sd, reference, tokens, videos, released=False)
    torch.testing.assert_close(masked, expected_masked, atol=5e-5, rtol=0)
    assert float((released - masked).abs().max()) > 1e-3  # the two behaviours differ measurably


def test_official_teacher_survives_save_and_load(xclip_official, tmp_path):
    _, _, teacher, steps = xclip_official
    save_teacher(teacher, tmp_path / "saved")
    reloaded = load_teacher(tmp_path / "saved")
    videos = make_frames(2, steps, seed=8)
    torch.testing.assert_close(scores(teacher, TEXTS, videos)[0], scores(reloaded, TEXTS, videos)[0])
    assert reloaded.options.full_reweighting and reloaded.options.frame_features == "clip"


def test_implied_options_may_not_be_contradicted(xclip_official):
    _, path, _, _ = xclip_official
    with pytest.raises(OfficialCheckpointError, match=r"options\.frame_features: the checkpoint needs 'clip'"):
        create_teacher(teacher_config("xclip", path, frame_features="temporal"))


def test_official_file_for_another_kind_is_refused(xclip_official):
    _, path, _, _ = xclip_official
    with pytest.raises(OfficialCheckpointError, match="official X-CLIP checkpoint.*use kind 'xclip'"):
        create_teacher(teacher_config("xpool", path))


# ---- TS2-Net -------------------------------------------------------------------------------------------


def patch_shift(h: torch.Tensor, steps: int, n_div: int = 7, mask: torch.Tensor | None = None) -> torch.Tensor:
    """TS2-Net's PatchShiftModule on [videos * steps, tokens, C]: tokens 1, 1 + fold, ... from frame t-1,
    tokens 4, 4 + fold, ... from frame t+1, fold = tokens // n_div. ``mask`` [V, T] (teachclip's
    masking): a token whose source frame is padding keeps its own value; the code shifts regardless."""
    x = h.reshape(-1, steps, *h.shape[1:])
    out = x.clone()
    fold = x.shape[2] // n_div
    left, right = torch.arange(1, x.shape[2], fold), torch.arange(4, x.shape[2], fold)
    out[:, 1:, left] = x[:, :-1, left]
    out[:, :-1, right] = x[:, 1:, right]
    if mask is not None:
        out[:, 1:, left] = torch.where(mask[:, :-1, None, None], out[:, 1:, left], x[:, 1:, left])
        out[:, :-1, right] = torch.where(mask[:, 1:, None, None], out[:, :-1, right], x[:, :-1, right])
    return out.reshape(h.shape)


def ts2net_reference(sd: dict, reference: ReferenceClip, tokens: torch.Tensor, videos: dict, topk: int = 3,
                     released: bool = True):
    """modeling.py: shifted ViT, VisualTokenSelection (hard top-k, the zero-noise limit of the code's
    perturbed top-k), seqTransf over all selected tokens with per-token positions, frame-weighted score.
    ``released``: padded frames are all-zero normalised images that the shift reads, and the frame
    mask is tiled as the code tiles it (``video_mask.unsqueeze(1).repeat(1, 1, k)``: token i gets frame
    i mod T's mask; the pooling reads it at every frame's CLS); otherwise teachclip's masking."""
    s = {k.removeprefix("visual_token_selector.score_predictor."): v.float() for k, v in sd.items()
         if k.startswith("visual_token_selector.")}
    mask = videos["mask"]
    v, t = mask.shape
    shifted = {int(k.split(".")[4]) for k in sd if ".attn.net." in k}
    shift = (lambda h: patch_shift(h, t)) if released else (lambda h: patch_shift(h, t, mask=mask))
    all_tokens = reference.image_tokens(released_pixels(videos), shifted, shift)
    local = F.gelu(ln(all_tokens, (s["in_conv.0.weight"], s["in_conv.0.bias"])) @ s["in_conv.1.weight"].T)
    both = torch.cat([local, local[:, :1].expand_as(local)], dim=-1)
    score = torch.tanh(F.gelu(both @ s["out_conv.0.weight"].T) @ s["out_conv.2.weight"].T).squeeze(-1)[:, 1:]
    index = score.topk(topk, dim=-1).indices.sort(-1).values
    patches = all_tokens[:, 1:]
    selected = torch.cat([all_tokens[:, :1], torch.stack([patches[i, index[i]] for i in range(len(index))])], 1)
    joint = selected.reshape(v, t * (1 + topk), -1)
    sequence = torch.arange(joint.shape[1])
    token_mask = mask[:, sequence % t] if released else mask[:, sequence // (1 + topk)]
    out = temporal_reference(sd, joint, sequence, token_mask)
    frames = normalize(out[:, :: 1 + topk])  # every frame's CLS
    pooled = token_mask[:, :: 1 + topk]  # the frames the code's pooling reads
    sentence = normalize(reference.text(tokens)[0])
    cosine = torch.einsum("nd,vtd->nvt", sentence, frames)
    weighted = cosine * pooled[None]
    weighted = (weighted / weighted.norm(dim=-1, keepdim=True)).masked_fill(~pooled[None], -1e18)
    weights = (4 * weighted).softmax(-1)
    return (weights * cosine).sum(-1), cosine * mask[None]


def ts2net_file(tmp_path: Path) -> tuple[dict, Path]:
    sd = ts2net_state(Random(21))
    path = tmp_path / "pytorch_model.bin.2"
    torch.save(sd, path)
    return sd, path


def test_ts2net_checkpoint_matches_the_formula(tmp_path):
    sd, path = ts2net_file(tmp_path)
    teacher = create_teacher(teacher_config("ts2net", path, scoring={"token_selection": "hard"})).eval()
    options = teacher.options
    assert (options.positions, options.shift, options.shift_layers) == ("token", "token", 1)
    assert (options.shift_div, options.shift_next_offset) == ((PATCHES + 1) // 7, 3)
    videos = make_frames(3, 4)
    similarity, relevance = scores(teacher, TEXTS, videos)
    expected, cosine = ts2net_reference(sd, ReferenceClip.from_openai(sd), teacher.tokenize(TEXTS), videos)
    torch.testing.assert_close(similarity, expected, atol=2e-5, rtol=0)
    torch.testing.assert_close(relevance, torch.stack([cosine[i, i] for i in range(3)]), atol=2e-5, rtol=0)
    assert similarity.std() > 1e-3
    dropped = teacher.official_conversion.dropped
    assert "clip.visual.transformer.resblocks.1.attn.net.in_proj_weight" not in dropped
    assert {k for k in sd if k.startswith(("visual_prompt_encoder.", "text_token_selector."))} == set(dropped)


def test_ts2net_padded_frames_released_and_masked(tmp_path):
    """Default (released code): zero frames read by the shift and the tiled mask; padded_frames: mask
    gives teachclip's masking. Both with the hard top-k, against the reference."""
    sd, path = ts2net_file(tmp_path)
    teacher = create_teacher(teacher_config("ts2net", path, scoring={"token_selection": "hard"})).eval()
    assert teacher.scoring.padded_frames == "released"
    videos = pad_videos(make_frames(3, 4, seed=14), [4, 3, 2])
    tokens = teacher.tokenize(TEXTS)
    released, relevance = scores(teacher, TEXTS, videos)
    expected, cosine = ts2net_reference(sd, ReferenceClip.from_openai(sd), tokens, videos, released=True)
    torch.testing.assert_close(released, expected, atol=2e-5, rtol=0)
    torch.testing.assert_close(relevance, torch.stack([cosine[i, i] for i in range(3)]), atol=2e-5, rtol=0)

    masked_teacher = create_teacher(teacher_config(
        "ts2net", path, scoring={"token_selection": "hard", "padded_frames": "mask"})).eval()
    masked, _ = scores(masked_teacher, TEXTS, videos)
    expected_masked, _ = ts2net_reference(sd, ReferenceClip.from_openai(sd), tokens, videos, released=False)
    torch.testing.assert_close(masked, expected_masked, atol=2e-5, rtol=0)
    torch.testing.assert_close(masked[:, 0], released[:, 0], atol=2e-5, rtol=0)  # no padding: no difference
    assert float((masked[:, 1:] - released[:, 1:]).abs().min()) > 1e-4


def test_ts2net_perturbed_selection_is_the_default_and_reproducible(tmp_path):
    """The released code averages 500 noisy top-k picks at test time: the default here, with noise
    from (selection_seed, video id), so a video scores the same in any batch; a tiny sigma gives the
    hard top-k back."""
    sd, path = ts2net_file(tmp_path)
    teacher = create_teacher(teacher_config("ts2net", path)).eval()
    assert (teacher.scoring.token_selection, teacher.scoring.selection_seed) == ("perturbed", 0)
    videos = make_frames(3, 4)
    first, _ = scores(teacher, TEXTS, videos)
    again, _ = scores(teacher, TEXTS, videos)
    assert torch.equal(first, again)
    alone = {"frames": videos["frames"][2:], "mask": videos["mask"][2:], "video_ids": videos["video_ids"][2:]}
    with torch.no_grad():
        text_features = teacher.encode_texts(teacher.text_batch(TEXTS, ["c0", "c1", "c2"], ["v0", "v1", "v2"]))
        torch.testing.assert_close(teacher.score(text_features, teacher.encode_videos(alone))[:, 0], first[:, 2],
                                   atol=1e-6, rtol=0)
    hard, _ = scores(create_teacher(teacher_config("ts2net", path, scoring={"token_selection": "hard"})).eval(),
                     TEXTS, videos)
    assert float((first - hard).abs().max()) > 1e-4
    other_seed, _ = scores(create_teacher(teacher_config("ts2net", path, scoring={"selection_seed": 1})).eval(),
                           TEXTS, videos)
    assert not torch.equal(first, other_seed)
    sharp, _ = scores(create_teacher(teacher_config("ts2net", path, topk_sigma=1e-9)).eval(), TEXTS, videos)
    torch.testing.assert_close(sharp, hard, atol=1e-6, rtol=0)


# ---- errors and formats --------------------------------------------------------------------------------


calls: list[str] = []


def record_call(*args) -> None:
    calls.append(repr(args))


class PickledCode:
    """Unpickling this would call record_call: weights_only loading must refuse it."""

    def __reduce__(self):
        return (record_call, ("unpickled",))


def test_pickled_code_is_refused(tmp_path):
    sd = hf_clip(Random(1)) | xpool_head(Random(2))
    path = tmp_path / "model_best.pth"
    torch.save({"state_dict": sd, "hook": PickledCode()}, path)
    with pytest.raises(ValueError, match="refused to load"):
        create_teacher(teacher_config("xpool", path, checkpoint_format="official"))
    with pytest.raises(ValueError, match="refused to load"):
        create_teacher(teacher_config("xpool", path))
    assert calls == []


def test_missing_extra_and_misshapen_keys_are_listed(tmp_path):
    sd = hf_clip(Random(1)) | xpool_head(Random(2))
    missing = {k: v for k, v in sd.items() if k != "pool_frames.layer_norm2.bias"}
    with pytest.raises(OfficialCheckpointError, match=r"head\.ln_attn\.bias: not in the checkpoint"):
        create_teacher(teacher_config("xpool", xpool_file(tmp_path, missing, "missing.pth")))

    misshapen = sd | {"pool_frames.linear_proj.weight": torch.zeros(EMBED, EMBED // 2)}
    with pytest.raises(OfficialCheckpointError,
                       match=r"pool_frames\.linear_proj\.weight -> head\.refine\.weight: checkpoint shape \[64, 32\], "
                             r"teacher shape \[64, 64\]"):
        create_teacher(teacher_config("xpool", xpool_file(tmp_path, misshapen, "misshapen.pth")))

    extra = sd | {"pool_frames.gate.weight": torch.zeros(3), "clip.text_model.pooler.weight": torch.zeros(2)}
    path = xpool_file(tmp_path, extra, "extra.pth")
    with pytest.raises(OfficialCheckpointError, match="no counterpart") as error:
        create_teacher(teacher_config("xpool", path))
    assert "pool_frames.gate.weight" in str(error.value) and "clip.text_model.pooler.weight" in str(error.value)
    teacher = create_teacher(teacher_config("xpool", path, checkpoint_ignore=["pool_frames.gate.*", "clip.*.pooler.*"]))
    assert teacher.official_conversion.ignored == ["clip.text_model.pooler.weight", "pool_frames.gate.weight"]


def test_unsupported_heads_are_refused():
    sd = xclip_state(Random(11), max_frames=4) | {"cross.embeddings.word_embeddings.weight": torch.zeros(2, 2)}
    with pytest.raises(OfficialCheckpointError, match="cross.embeddings.word_embeddings.weight: the tightTransf"):
        convert_official_state_dict("xclip", sd)


def test_a_gelu_backbone_is_refused(tmp_path):
    sd = hf_clip(Random(1)) | xpool_head(Random(2))
    with pytest.raises(OfficialCheckpointError, match="QuickGELU.*ViT-B-32-quickgelu"):
        create_teacher(teacher_config("xpool", xpool_file(tmp_path, sd), model=MODEL_GELU))


def test_our_own_weight_files_still_load_and_are_not_official(tmp_path, xpool_hf):
    _, _, teacher = xpool_hf
    path = tmp_path / "ours.pt"
    torch.save(teacher.state_dict(), path)
    assert detect_kind(teacher.state_dict()) is None
    again = create_teacher(teacher_config("xpool", path)).eval()  # auto: our own names
    videos = make_frames(2, 3)
    torch.testing.assert_close(scores(again, TEXTS, videos)[0], scores(teacher, TEXTS, videos)[0])
    with pytest.raises(OfficialCheckpointError, match="teachclip's own format"):
        create_teacher(teacher_config("xpool", path, checkpoint_format="official"))


def test_cache_identity_records_the_resolved_scoring(xclip_official):
    """The teacher-cache fingerprint covers the scoring: an official checkpoint's automatic settings are
    recorded as the released code's, and teachclip's masking is another cache entry."""
    from teachclip.stages.extract_teachers.requests import TeacherRequest, identity_of

    _, path, _, _ = xclip_official
    released = identity_of(TeacherRequest("xclip", teacher_config("xclip", path), str(path)), "frames", "manifest")
    assert released.config["scoring"]["mask_padded_words"] is False
    assert released.config["scoring"]["padded_frames"] == "released"
    explicit = identity_of(TeacherRequest("xclip", teacher_config(
        "xclip", path, scoring={"mask_padded_words": False, "padded_frames": "released"}), str(path)), "frames", "manifest")
    assert explicit.fingerprint == released.fingerprint  # automatic = the same settings written out
    masked = identity_of(TeacherRequest("xclip", teacher_config(
        "xclip", path, scoring={"mask_padded_words": True}), str(path)), "frames", "manifest")
    assert masked.fingerprint != released.fingerprint


# ---- writing official files (the inverse mapping, used by `teach rehearse`) -------------------------


@pytest.mark.parametrize("kind,clip_names", [("xclip", "openai"), ("xpool", "huggingface"), ("xpool", "openai")])
def test_written_official_files_load_back_as_the_teacher_they_came_from(tmp_path, kind, clip_names):
    from teachclip.tools.rehearse.model_files import XCLIP_OPTIONS, write_official_teacher

    path = write_official_teacher(kind, tmp_path / kind / "ckpt.pth", MODEL, clip_names=clip_names, seed=3)
    raw = torch.load(path, weights_only=True)
    state = raw["state_dict"] if kind == "xpool" else raw
    if kind == "xpool":
        assert set(raw) == {"epoch", "state_dict", "optimizer"}
        assert any(k.startswith("clip.vision_model.") for k in state) == (clip_names == "huggingface")
    else:  # X-CLIP's convert_weights leaves the CLIP conv/linear weights in fp16; 77 frame positions
        assert state["clip.visual.conv1.weight"].dtype == torch.float16
        assert state["clip.ln_final.weight"].dtype == torch.float32
        assert state["frame_position_embeddings.weight"].shape[0] == CONTEXT
    assert detect_kind(state) == kind

    options = dict(XCLIP_OPTIONS) if kind == "xclip" else {}
    loaded = create_teacher(teacher_config(kind, path, **options))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        source = create_teacher(TeacherConfig(kind=kind, backbone={"name": MODEL, "pretrained": None, "max_words": 32},
                                              options=options), load_weights=False)
    expected, got = source.state_dict(), loaded.state_dict()
    assert set(expected) == set(got)
    for key, value in expected.items():
        want = value.half().float() if kind == "xclip" and got[key].dtype == torch.float32 and value.dtype == torch.float32 \
            and state.get("clip." + key.removeprefix("backbone.clip."), value).dtype == torch.float16 else value
        torch.testing.assert_close(got[key], want, rtol=0, atol=0, msg=key)


def test_official_state_dict_refuses_what_it_cannot_write():
    from teachclip.models.teachers.official import official_state_dict

    with pytest.raises(OfficialCheckpointError, match="ts2net"):
        official_state_dict("ts2net", {})
    with pytest.raises(OfficialCheckpointError, match="huggingface"):
        official_state_dict("xclip", {}, clip_names="huggingface")
    with pytest.raises(OfficialCheckpointError, match="no official X-Pool name for: stray"):
        official_state_dict("xpool", {"stray": torch.zeros(1)})
