"""Official teacher checkpoints: the released X-CLIP, TS2-Net and X-Pool weights in our teachers.

The public training code of each teacher saves a plain ``state_dict`` (X-CLIP and TS2-Net:
``torch.save(model.state_dict(), "pytorch_model.bin.N")``; X-Pool: ``{"epoch", "state_dict",
"optimizer"}`` in ``model_best.pth``). Such a file is read with ``torch.load(weights_only=True)`` (or
safetensors), never unpickled, and its key names are mapped onto our teachers' by the tables below.
``TeacherConfig.checkpoint`` may point at one: :func:`teachclip.models.teachers.build_teacher` detects
the format from the key names (``options.checkpoint_format: auto``, the default) or is told
(``official`` / ``teachclip``). ``options.checkpoint_ignore`` is a list of glob patterns of checkpoint
keys to drop and report instead of refusing (leftovers the mapping does not know).

CLIP towers (``clip.`` prefix in all three) -> ``backbone.clip.`` (open_clip):

- OpenAI names (X-CLIP's and TS2-Net's ``module_clip``, X-Pool without ``--huggingface``): open_clip
  keeps OpenAI's names, so ``clip.<name>`` -> ``backbone.clip.<name>`` for ``visual.conv1.weight``,
  ``visual.class_embedding``, ``visual.positional_embedding``, ``visual.ln_pre/ln_post.*``,
  ``visual.proj``, ``token_embedding.weight``, ``positional_embedding``, ``ln_final.*``,
  ``text_projection``, ``logit_scale`` and every block ``[visual.]transformer.resblocks.N.{attn.in_proj_weight,
  attn.in_proj_bias, attn.out_proj.*, ln_1.*, ln_2.*, mlp.c_fc.*, mlp.c_proj.*}``. TS2-Net wraps the
  attention of its shifted blocks: ``...resblocks.N.attn.net.*`` -> ``...resblocks.N.attn.*`` (those N
  give ``shift_layers``). ``input_resolution``/``context_length``/``vocab_size`` (OpenAI JIT leftovers)
  are dropped. ``visual.conv2`` (CLIP4Clip's 3D patch embedding) is refused: not supported.
- HF ``transformers`` CLIPModel names (X-Pool with ``--huggingface``, TeachCLIP's X-Pool):
  ``{vision,text}_model.encoder.layers.N.self_attn.{q,k,v}_proj.{weight,bias}`` -> one fused
  ``resblocks.N.attn.in_proj_{weight,bias}`` = concat(q, k, v) (nn.MultiheadAttention's layout);
  ``self_attn.out_proj`` -> ``attn.out_proj``; ``layer_norm1/2`` -> ``ln_1/ln_2``; ``mlp.fc1/fc2`` ->
  ``mlp.c_fc/c_proj``; ``vision_model.embeddings.{class_embedding, patch_embedding.weight,
  position_embedding.weight}`` -> ``visual.{class_embedding, conv1.weight, positional_embedding}``;
  ``vision_model.pre_layrnorm`` (sic) -> ``visual.ln_pre``; ``vision_model.post_layernorm`` ->
  ``visual.ln_post``; ``visual_projection.weight``.T -> ``visual.proj``;
  ``text_model.embeddings.{token_embedding.weight, position_embedding.weight}`` ->
  ``token_embedding.weight``, ``positional_embedding``; ``text_model.final_layer_norm`` ->
  ``ln_final``; ``text_projection.weight``.T -> ``text_projection``; ``logit_scale`` -> ``logit_scale``;
  the ``position_ids`` buffers are dropped.

Heads:

- X-Pool (``pool_frames.``, its ``modules/transformer.py``): ``layer_norm1`` -> ``head.ln_in``;
  ``cross_attn.{q,k,v,out}_proj`` -> ``head.{q,k,v,out}_proj`` (``pool_frames.q_proj`` etc. without
  ``cross_attn.`` accepted too); ``layer_norm2`` -> ``head.ln_attn``; ``linear_proj`` ->
  ``head.refine``; ``layer_norm3`` -> ``head.ln_out``.
- X-CLIP (``modules/modeling_xclip.py``): ``frame_position_embeddings.weight`` [77, d] ->
  ``temporal.frame_position_embeddings.weight`` (its first ``max_frames`` rows: the code only ever looks
  up rows 0..T-1); ``transformerClip.resblocks.N.*`` -> ``temporal.transformer.resblocks.N.*``; ``local_mat_weight`` ->
  ``word_projection``; ``word_mat_weight`` -> ``word_reweight``; ``frame_mat_weight`` ->
  ``frame_reweight``; ``frame_mat_weight2`` -> ``frame_reweight_2``; ``word_mat_weight2`` ->
  ``word_reweight_2``; ``global_mat_weight`` -> ``sentence_projection``; ``word_logit_weight`` ->
  ``video_word_reweight``; ``frame_logit_weight`` -> ``sentence_frame_reweight`` (the last three exist
  with ``options.full_reweighting: true``). Implied options: ``frame_features: clip`` (the code's
  ``use_original_clip_for_frame_features = True``), ``full_reweighting: true``, ``video_head`` and
  ``temporal_layers`` from the ``transformerClip`` blocks, ``max_frames`` from ``frame_mat_weight``.
- TS2-Net (``modules/modeling.py``): ``frame_position_embeddings.weight`` [77, d] -> the first
  ``max_frames * (1 + topk)`` rows of ``temporal.frame_position_embeddings.weight``;
  ``transformerClip.resblocks.N.*`` -> ``temporal.transformer.resblocks.N.*``; ``visual_token_selector.score_predictor.in_conv.{0,1}`` ->
  ``selector.token_mlp.{0,1}``; ``...out_conv.{0,2}`` -> ``selector.score_mlp.{0,2}``. Dropped by
  design (built but never used by the released forward): ``visual_prompt_encoder.*``,
  ``text_token_selector.*``. Implied options: ``positions: token`` (the code embeds position i of the
  joint frame-major token sequence), ``temporal_layers``, ``shift: token`` with ``shift_layers`` = the
  wrapped blocks (which must be the last ones), ``shift_div = (patches + 1) // 7`` and
  ``shift_next_offset: 3`` (the code's ``PatchShiftModule`` with n_div 7).

Refused (no counterpart): ``cross.*``/``similarity_dense.*`` (the ``tightTransf`` cross encoder) and
``lstm_visual.*`` (``seqLSTM``). An implied option that the teacher config sets to another value is an
error, so is a checkpoint key without a counterpart, a teacher parameter the checkpoint lacks, a shape
that differs, and a backbone whose blocks do not use QuickGELU (official checkpoints are OpenAI CLIP:
use the open_clip ``-quickgelu`` model names, e.g. ``ViT-B-32-quickgelu``).

Scoring: an official checkpoint scores as its released code does by default (``TeacherConfig.scoring``
left automatic: padded words and frames scored, X-Pool's 77-token captions and repeated last frame,
TS2-Net's tiled mask and perturbed top-k; :mod:`.released`, docs/distillation.md). What still differs
from the released code: the temporal transformers' LayerNorms use eps 1e-5 (CLIP4Clip's
``module_cross`` uses 1e-12); TS2-Net's perturbed top-k draws its noise from a seeded generator per
video (the code: the global generator, unseeded); the number of
attention heads is not stored in a state dict: X-Pool's pooling must have been trained with one head
(its default), and the backbone config must have OpenAI's heads (width / 64), as open_clip's do.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from teachclip.core.config import TeacherConfig
from teachclip.core.errors import MissingFileError
from teachclip.models.io import CheckpointError, read_state_dict

logger = logging.getLogger(__name__)

OFFICIAL_KINDS = ("xclip", "ts2net", "xpool")
FORMATS = ("auto", "teachclip", "official")
NAMES = {"xclip": "X-CLIP", "ts2net": "TS2-Net", "xpool": "X-Pool"}
TS2NET_SHIFT_DIV = 7  # n_div of make_patch_shift in TS2-Net's code
TS2NET_NEXT_OFFSET = 3  # its right-shift indices start at token 1 + 3

_BLOCK = r"(?:attn\.(?:in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)|ln_[12]\.(?:weight|bias)" \
         r"|mlp\.c_(?:fc|proj)\.(?:weight|bias))"
_OPENAI_NAMES = re.compile(
    r"(?:visual\.(?:conv1\.weight|class_embedding|positional_embedding|proj|ln_(?:pre|post)\.(?:weight|bias))"
    rf"|visual\.transformer\.resblocks\.\d+\.{_BLOCK}"
    r"|token_embedding\.weight|positional_embedding|text_projection|logit_scale|ln_final\.(?:weight|bias)"
    rf"|transformer\.resblocks\.\d+\.{_BLOCK})"
)
_OPENAI_LEFTOVERS = ("input_resolution", "context_length", "vocab_size")
_HF_LAYER = {
    "self_attn.out_proj.weight": "attn.out_proj.weight", "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight", "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight", "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight", "mlp.fc2.bias": "mlp.c_proj.bias",
}
_HF_PLAIN = {
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "logit_scale": "logit_scale",
}
_HF_TRANSPOSED = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text_projection"}
_HF_BUFFERS = ("vision_model.embeddings.position_ids", "text_model.embeddings.position_ids")
_HF_TOWER = {"vision_model": "visual.transformer.resblocks", "text_model": "transformer.resblocks"}

_XCLIP_MATRICES = {
    "local_mat_weight": "word_projection", "word_mat_weight": "word_reweight", "frame_mat_weight": "frame_reweight",
    "frame_mat_weight2": "frame_reweight_2", "word_mat_weight2": "word_reweight_2",
    "global_mat_weight": "sentence_projection", "word_logit_weight": "video_word_reweight",
    "frame_logit_weight": "sentence_frame_reweight",
}
_XPOOL_HEAD = {"layer_norm1": "ln_in", "layer_norm2": "ln_attn", "layer_norm3": "ln_out", "linear_proj": "refine"}
_TS2NET_SELECTOR = {
    "in_conv.0.weight": "token_mlp.0.weight", "in_conv.0.bias": "token_mlp.0.bias",
    "in_conv.1.weight": "token_mlp.1.weight", "out_conv.0.weight": "score_mlp.0.weight",
    "out_conv.2.weight": "score_mlp.2.weight",
}
_UNSUPPORTED = {
    "cross.": "the tightTransf cross encoder (CLIP4Clip's non-loose similarity) has no counterpart here",
    "similarity_dense.": "the tightTransf cross encoder (CLIP4Clip's non-loose similarity) has no counterpart here",
    "lstm_visual.": "the seqLSTM video head has no counterpart here (use a seqTransf or meanP checkpoint)",
    "clip.visual.conv2.": "the 3D patch embedding (linear_patch=3d) has no counterpart here",
}
_DEAD = {  # built by the released code but never used by its forward
    "ts2net": {"visual_prompt_encoder.": "built but unused by TS2-Net's forward",
               "text_token_selector.": "built but unused by TS2-Net's forward (its call is commented out)"},
}
# rows of a position table the code never reads beyond the frames it sees: sliced, not refused
_SLICED = ("temporal.frame_position_embeddings.weight",)


class OfficialCheckpointError(CheckpointError):
    """An official checkpoint that cannot be mapped onto the configured teacher (a ValueError)."""


@dataclass
class Conversion:
    """An official state dict in our teacher's names, and what happened on the way."""

    kind: str
    clip_names: str  # "openai" or "huggingface"
    state_dict: dict[str, torch.Tensor]
    sources: dict[str, str]  # our key -> the official key(s) it came from
    options: dict[str, Any]  # teacher options the checkpoint implies
    dropped: dict[str, str] = field(default_factory=dict)  # official key -> why (by design, always)
    ignored: list[str] = field(default_factory=list)  # keys matched by checkpoint_ignore patterns
    wrapper: list[str] = field(default_factory=list)  # top-level entries beside "state_dict" (epoch, optimizer)

    def summary(self) -> str:
        lines = [f"official {NAMES[self.kind]} checkpoint ({self.clip_names} CLIP names): "
                 f"{len(self.state_dict)} tensors mapped"]
        if self.options:
            lines.append("implied options: " + ", ".join(f"{k}={v!r}" for k, v in sorted(self.options.items())))
        if self.wrapper:
            lines.append("dropped file entries: " + ", ".join(self.wrapper))
        if self.dropped:
            lines.append(f"dropped {len(self.dropped)} key(s) by design: " + _abbreviate(sorted(self.dropped)))
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)} key(s) (checkpoint_ignore): " + _abbreviate(self.ignored))
        return "; ".join(lines)


# ---- reading ---------------------------------------------------------------------------------------


def checkpoint_keys(path: str | Path) -> list[str]:
    """The key names of a checkpoint file, cheaply where the format allows (safetensors header,
    memory-mapped torch zip)."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    return list(read_state_dict(path)[0])


def detect_kind(keys: Iterable[str]) -> str | None:
    """Which official teacher a set of key names comes from (None: none of them)."""
    keys = list(keys)
    if any(key.startswith("backbone.") for key in keys):
        return None  # our own format
    if any(key.startswith("pool_frames.") for key in keys):
        return "xpool"
    if any(key.startswith("visual_token_selector.") for key in keys):
        return "ts2net"
    if any(key in _XCLIP_MATRICES for key in keys):
        return "xclip"
    return None


# ---- mapping ---------------------------------------------------------------------------------------


def convert_official_state_dict(kind: str, state_dict: dict[str, Any], *, ignore: Sequence[str] = ()) -> dict:
    """An official ``kind`` state dict (xclip, ts2net, xpool) renamed to our teacher's parameter names.

    ``ignore``: glob patterns of official keys to drop instead of refusing. Keys without a
    counterpart raise :class:`OfficialCheckpointError` listing them. Shapes are checked against a
    teacher by :func:`load_official_state_dict`.
    """
    return convert_official_checkpoint(kind, state_dict, ignore=ignore).state_dict


def convert_official_checkpoint(kind: str, state_dict: dict[str, Any], *, ignore: Sequence[str] = (),
                                wrapper: Sequence[str] = ()) -> Conversion:
    """:func:`convert_official_state_dict` with the report: sources, implied options, dropped keys."""
    if kind not in OFFICIAL_KINDS:
        raise OfficialCheckpointError(f"no official checkpoint format for teacher kind {kind!r} "
                                      f"(official formats: {', '.join(OFFICIAL_KINDS)})")
    out: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    dropped: dict[str, str] = {}
    ignored: list[str] = []
    unmapped: list[str] = []
    refused: list[str] = []

    def put(ours: str, tensor: torch.Tensor, source: str) -> None:
        if ours in out:
            raise OfficialCheckpointError(f"{source} and {sources[ours]} both map to {ours}")
        out[ours], sources[ours] = tensor, source

    clip_state: dict[str, Any] = {}
    head_state: dict[str, Any] = {}
    for key, value in state_dict.items():
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in ignore):
            ignored.append(key)
            continue
        reason = next((why for prefix, why in _UNSUPPORTED.items() if key.startswith(prefix)), None)
        if reason is not None:
            refused.append(f"{key}: {reason}")
            continue
        dead = next((why for prefix, why in _DEAD.get(kind, {}).items() if key.startswith(prefix)), None)
        if dead is not None:
            dropped[key] = dead
            continue
        if not isinstance(value, torch.Tensor):
            unmapped.append(f"{key} (a {type(value).__name__}, not a tensor)")
            continue
        (clip_state if key.startswith("clip.") else head_state)[key] = value

    clip_names, shifted = _convert_clip(clip_state, put, dropped, unmapped)
    converter = {"xclip": _convert_xclip, "ts2net": _convert_ts2net, "xpool": _convert_xpool}[kind]
    options = converter(head_state, put, unmapped)
    if kind == "ts2net":
        options.update(_ts2net_shift_options(clip_state, shifted, clip_names))
    elif shifted:
        unmapped.extend(f"clip.visual.transformer.resblocks.{i}.attn.net.* (TS2-Net's token shift, in a "
                        f"{NAMES[kind]} checkpoint)" for i in sorted(shifted))

    problems = []
    if refused:
        problems.append("not supported:\n  " + "\n  ".join(refused))
    if unmapped:
        problems.append(f"no counterpart in the {NAMES[kind]} mapping (list known-unused ones in "
                        "options.checkpoint_ignore to drop them):\n  " + "\n  ".join(unmapped))
    if problems:
        raise OfficialCheckpointError(f"official {NAMES[kind]} checkpoint: " + "\n".join(problems))
    return Conversion(kind, clip_names, out, sources, options, dropped, sorted(ignored), list(wrapper))


def _convert_clip(state: dict[str, torch.Tensor], put, dropped: dict[str, str], unmapped: list[str]):
    """The ``clip.*`` keys (OpenAI or HF names) -> ``backbone.clip.*``; returns (names, shifted blocks)."""
    hf = any(key.startswith(("clip.vision_model.", "clip.text_model.")) for key in state)
    shifted: set[int] = set()
    if not hf:
        for key, value in state.items():
            name = key.removeprefix("clip.")
            if name in _OPENAI_LEFTOVERS:
                dropped[key] = "OpenAI JIT metadata, not a weight"
                continue
            match = re.fullmatch(r"(visual\.transformer\.resblocks\.(\d+)\.attn)\.net\.(.+)", name)
            if match:  # TS2-Net's PatchShiftModule around nn.MultiheadAttention
                shifted.add(int(match.group(2)))
                name = f"{match.group(1)}.{match.group(3)}"
            if _OPENAI_NAMES.fullmatch(name):
                put(f"backbone.clip.{name}", value, key)
            else:
                unmapped.append(key)
        return "openai", shifted

    qkv: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in state.items():
        name = key.removeprefix("clip.")
        if name in _HF_BUFFERS:
            dropped[key] = "HF position_ids buffer (arange), not a weight"
        elif name in _HF_PLAIN:
            put(f"backbone.clip.{_HF_PLAIN[name]}", value, key)
        elif name in _HF_TRANSPOSED:  # nn.Linear(width, embed) weight [embed, width] -> proj [width, embed]
            put(f"backbone.clip.{_HF_TRANSPOSED[name]}", value.t().contiguous(), f"{key} (transposed)")
        else:
            match = re.fullmatch(r"(vision_model|text_model)\.encoder\.layers\.(\d+)\.(.+)", name)
            if match is None:
                unmapped.append(key)
                continue
            tower, index, rest = match.groups()
            block = f"backbone.clip.{_HF_TOWER[tower]}.{index}"
            projection = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if projection:
                qkv.setdefault((block, projection.group(2)), {})[projection.group(1)] = (key, value)
            elif rest in _HF_LAYER:
                put(f"{block}.{_HF_LAYER[rest]}", value, key)
            else:
                unmapped.append(key)
    for (block, part), parts in sorted(qkv.items()):
        missing = [p for p in "qkv" if p not in parts]
        if missing:  # a lone q/k/v projection cannot be fused
            unmapped.extend(f"{parts[p][0]} (no {', '.join(m + '_proj' for m in missing)} to fuse with)"
                            for p in parts)
            continue
        shapes = {tuple(parts[p][1].shape) for p in "qkv"}
        if len(shapes) != 1:
            unmapped.append(f"{parts['q'][0]}: q/k/v projections of different shapes {sorted(shapes)}")
            continue
        # nn.MultiheadAttention's packed layout: rows [q; k; v]
        put(f"{block}.attn.in_proj_{part}", torch.cat([parts[p][1] for p in "qkv"]),
            " + ".join(parts[p][0] for p in "qkv") + " (fused)")
    return "huggingface", shifted


def _convert_temporal(state: dict[str, torch.Tensor], put, unmapped: list[str]) -> int:
    """``frame_position_embeddings`` + ``transformerClip`` -> ``temporal.*``; returns its layer count."""
    layers = set()
    for name, value in state.items():
        if name == "frame_position_embeddings.weight":
            put("temporal.frame_position_embeddings.weight", value, name)
            continue
        match = re.fullmatch(rf"transformerClip\.resblocks\.(\d+)\.({_BLOCK})", name)
        if match:
            layers.add(int(match.group(1)))
            put(f"temporal.transformer.resblocks.{match.group(1)}.{match.group(2)}", value, name)
        else:
            unmapped.append(name)
    if layers and layers != set(range(len(layers))):
        raise OfficialCheckpointError(f"transformerClip blocks {sorted(layers)} are not numbered 0..n-1")
    return len(layers)


def _convert_xclip(state: dict[str, torch.Tensor], put, unmapped: list[str]) -> dict[str, Any]:
    temporal_state = {k: v for k, v in state.items() if k not in _XCLIP_MATRICES}
    layers = _convert_temporal(temporal_state, put, unmapped)
    for name, ours in _XCLIP_MATRICES.items():
        if name in state:
            put(ours, state[name], name)
    options: dict[str, Any] = {"frame_features": "clip", "full_reweighting": True,
                               "video_head": "seqTransf" if layers else "meanP"}
    if layers:
        options["temporal_layers"] = layers
    if "frame_mat_weight" in state:
        options["max_frames"] = int(state["frame_mat_weight"].shape[0])
    return options


def _convert_ts2net(state: dict[str, torch.Tensor], put, unmapped: list[str]) -> dict[str, Any]:
    prefix = "visual_token_selector.score_predictor."
    rest = {}
    for name, value in state.items():
        if name.startswith(prefix) and name.removeprefix(prefix) in _TS2NET_SELECTOR:
            put(f"selector.{_TS2NET_SELECTOR[name.removeprefix(prefix)]}", value, name)
        else:
            rest[name] = value
    layers = _convert_temporal(rest, put, unmapped)
    if not layers:
        raise OfficialCheckpointError("official TS2-Net checkpoint without transformerClip blocks: only its "
                                      "seqTransf head has a counterpart here")
    return {"positions": "token", "temporal_layers": layers, "select_before_last": 0}


def _ts2net_shift_options(clip_state: dict[str, torch.Tensor], shifted: set[int], clip_names: str) -> dict:
    if not shifted:
        return {"shift": "none"}
    layer_keys = [k for k in clip_state if k.startswith("clip.visual.transformer.resblocks.")]
    blocks = {int(k.split(".")[4]) for k in layer_keys}
    expected = set(range(len(blocks) - len(shifted), len(blocks)))
    if shifted != expected:
        raise OfficialCheckpointError(
            f"TS2-Net token shift in ViT blocks {sorted(shifted)}: only the last blocks can shift here "
            f"(expected {sorted(expected)})")
    positions = clip_state.get("clip.visual.positional_embedding")
    if positions is None:
        raise OfficialCheckpointError("official TS2-Net checkpoint without clip.visual.positional_embedding")
    tokens = int(positions.shape[0])  # patches + CLS, as the code's patch_len
    fold = tokens // TS2NET_SHIFT_DIV
    if fold < 2:
        raise OfficialCheckpointError(f"{tokens} visual tokens: TS2-Net's shift step {fold} is not supported")
    return {"shift": "token", "shift_layers": len(shifted), "shift_div": fold, "shift_next_offset": TS2NET_NEXT_OFFSET}


def _convert_xpool(state: dict[str, torch.Tensor], put, unmapped: list[str]) -> dict[str, Any]:
    for name, value in state.items():
        match = re.fullmatch(r"pool_frames\.(?:cross_attn\.)?([qkv]|out)_proj\.(weight|bias)", name)
        if match:
            put(f"head.{match.group(1)}_proj.{match.group(2)}", value, name)
            continue
        match = re.fullmatch(r"pool_frames\.(layer_norm[123]|linear_proj)\.(weight|bias)", name)
        if match:
            put(f"head.{_XPOOL_HEAD[match.group(1)]}.{match.group(2)}", value, name)
        else:
            unmapped.append(name)
    return {}


# ---- writing (the inverse mapping) ------------------------------------------------------------------

# what OpenAI's ``clip.model.convert_weights`` (called by X-CLIP on its CLIP) stores in fp16: conv and
# linear weights and biases, attention in-projections, the two projection matrices
_CONVERTED_TO_HALF = re.compile(
    r"clip\.(?:visual\.conv1\.weight|visual\.proj|text_projection"
    r"|(?:visual\.)?transformer\.resblocks\.\d+\.(?:attn\.(?:in_proj_weight|in_proj_bias|out_proj\.(?:weight|bias))"
    r"|mlp\.c_(?:fc|proj)\.(?:weight|bias)))")


def official_state_dict(kind: str, state_dict: dict[str, torch.Tensor], *, clip_names: str = "openai",
                        context_length: int = 77, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A teacher's state dict (ours) in the official key names and layout of ``kind`` (xclip, xpool): the
    inverse of :func:`convert_official_checkpoint`, for writing real-size official files without a download
    (``teach rehearse``). ``clip_names``: "openai" or "huggingface" (X-Pool's ``--huggingface``). X-CLIP's
    position table gets its full ``context_length`` rows (random beyond the teacher's frames) and its
    CLIP conv/linear weights are stored in fp16, as its code's ``convert_weights`` leaves them."""
    if kind not in ("xclip", "xpool"):
        raise OfficialCheckpointError(f"writing official {kind!r} checkpoints is not supported (xclip, xpool)")
    if clip_names not in ("openai", "huggingface") or (clip_names == "huggingface" and kind != "xpool"):
        raise OfficialCheckpointError(f"{NAMES[kind]} checkpoints are not written with {clip_names!r} CLIP names")
    out: dict[str, torch.Tensor] = {}
    clip = {k.removeprefix("backbone.clip."): v for k, v in state_dict.items() if k.startswith("backbone.clip.")}
    head = {k: v for k, v in state_dict.items() if not k.startswith("backbone.clip.")}
    unknown = [name for name in clip if not _OPENAI_NAMES.fullmatch(name)]
    if clip_names == "openai":
        out |= {f"clip.{name}": value for name, value in clip.items() if name not in unknown}
    else:
        out |= _huggingface_clip(clip, unknown)
    if kind == "xclip":
        inverse = {ours: theirs for theirs, ours in _XCLIP_MATRICES.items()}
        for name, value in head.items():
            block = re.fullmatch(r"temporal\.transformer\.resblocks\.(\d+)\.(.+)", name)
            if name == "temporal.frame_position_embeddings.weight":
                extra = torch.randn(context_length - value.shape[0], value.shape[1], generator=generator)
                out["frame_position_embeddings.weight"] = torch.cat([value, extra.to(value.dtype) * value.std()])
            elif block:
                out[f"transformerClip.resblocks.{block.group(1)}.{block.group(2)}"] = value
            elif name in inverse:
                out[inverse[name]] = value
            else:
                unknown.append(name)
        out = {k: v.half() if _CONVERTED_TO_HALF.fullmatch(k) else v for k, v in out.items()}
    else:
        inverse_head = {ours: theirs for theirs, ours in _XPOOL_HEAD.items()}
        for name, value in head.items():
            match = re.fullmatch(r"head\.(\w+)\.(weight|bias)", name)
            part = match and match.group(1)
            if part in ("q_proj", "k_proj", "v_proj", "out_proj"):
                out[f"pool_frames.cross_attn.{part}.{match.group(2)}"] = value
            elif part in inverse_head:
                out[f"pool_frames.{inverse_head[part]}.{match.group(2)}"] = value
            else:
                unknown.append(name)
    if unknown:
        raise OfficialCheckpointError(f"no official {NAMES[kind]} name for: {_abbreviate(unknown)}")
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def _huggingface_clip(clip: dict[str, torch.Tensor], unknown: list[str]) -> dict[str, torch.Tensor]:
    """OpenAI/open_clip tower names -> HF CLIPModel names (q/k/v split out of the packed projection)."""
    plain = {ours: theirs for theirs, ours in _HF_PLAIN.items()}
    transposed = {ours: theirs for theirs, ours in _HF_TRANSPOSED.items()}
    layer = {ours: theirs for theirs, ours in _HF_LAYER.items()}
    towers = {ours: theirs for theirs, ours in _HF_TOWER.items()}
    out: dict[str, torch.Tensor] = {}
    for name, value in clip.items():
        if name in unknown:
            continue
        block = re.fullmatch(r"((?:visual\.)?transformer\.resblocks)\.(\d+)\.(.+)", name)
        if name in plain:
            out[f"clip.{plain[name]}"] = value
        elif name in transposed:
            out[f"clip.{transposed[name]}"] = value.t()
        elif block and block.group(3) in ("attn.in_proj_weight", "attn.in_proj_bias"):
            prefix = f"clip.{towers[block.group(1)]}.encoder.layers.{block.group(2)}.self_attn"
            part = block.group(3).rsplit("_", 1)[1]
            for letter, chunk in zip("qkv", value.chunk(3), strict=True):
                out[f"{prefix}.{letter}_proj.{part}"] = chunk
        elif block and block.group(3) in layer:
            out[f"clip.{towers[block.group(1)]}.encoder.layers.{block.group(2)}.{layer[block.group(3)]}"] = value
        else:
            unknown.append(name)
    for buffer, table in zip(_HF_BUFFERS, ("visual.positional_embedding", "positional_embedding"), strict=True):
        if table in clip:
            out[f"clip.{buffer}"] = torch.arange(clip[table].shape[0])[None]
    return out


# ---- options and loading ---------------------------------------------------------------------------


def split_checkpoint_options(config: TeacherConfig) -> tuple[TeacherConfig, str, tuple[str, ...]]:
    """Take ``checkpoint_format`` and ``checkpoint_ignore`` out of ``config.options`` (they are read
    here, not by the teacher, whose options refuse unknown keys)."""
    options = dict(config.options)
    fmt = options.pop("checkpoint_format", "auto")
    ignore = options.pop("checkpoint_ignore", [])
    if fmt not in FORMATS:
        raise OfficialCheckpointError(f"options.checkpoint_format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if isinstance(ignore, str) or not all(isinstance(pattern, str) for pattern in ignore):
        raise OfficialCheckpointError(f"options.checkpoint_ignore must be a list of glob patterns, got {ignore!r}")
    if len(options) != len(config.options):
        config = config.model_copy(update={"options": options})
    return config, fmt, tuple(ignore)


def is_official(config: TeacherConfig, fmt: str) -> bool:
    """Whether ``config.checkpoint`` is to be loaded as an official checkpoint (``fmt``: auto, official,
    teachclip). ``official`` with a file that does not look like one is an error naming what is wrong."""
    if fmt == "teachclip" or not config.checkpoint:
        return False
    path = Path(config.checkpoint)
    if fmt == "auto" and (path.is_dir() or config.kind not in OFFICIAL_KINDS or not path.is_file()):
        return False  # a save_teacher directory, or a missing file: the usual error path says so
    if fmt == "official":
        if config.kind not in OFFICIAL_KINDS:
            raise OfficialCheckpointError(f"checkpoint_format official: no official format for {config.kind!r} teachers "
                             f"(only {', '.join(OFFICIAL_KINDS)})")
        if not path.is_file():
            raise MissingFileError(f"{path}: official checkpoint not found (official checkpoints are files)")
    keys = checkpoint_keys(path)
    detected = detect_kind(keys)
    if detected is None:
        if fmt == "official":
            raise OfficialCheckpointError(
                f"{path}: checkpoint_format official, but none of X-CLIP's, TS2-Net's or X-Pool's head keys "
                f"are in it" + (" (it is in teachclip's own format)" if any(k.startswith("backbone.") for k in keys)
                                else ""))
        return False
    if detected != config.kind:
        raise OfficialCheckpointError(
            f"{path}: an official {NAMES[detected]} checkpoint, but the teacher is configured as "
            f"{config.kind!r}: use kind {detected!r}")
    return True


def merge_options(kind: str, configured: dict[str, Any], implied: dict[str, Any]) -> dict[str, Any]:
    """The teacher options with those the checkpoint implies; a configured value that differs is an error."""
    conflicts = [f"options.{key}: the checkpoint needs {value!r}, the teacher config sets {configured[key]!r}"
                 for key, value in sorted(implied.items()) if key in configured and configured[key] != value]
    if conflicts:
        raise OfficialCheckpointError(f"official {NAMES[kind]} checkpoint does not fit the teacher config:\n  "
                                      + "\n  ".join(conflicts))
    return {**configured, **implied}


def check_quick_gelu(teacher: nn.Module) -> None:
    """Official checkpoints are OpenAI CLIP models: every transformer block uses QuickGELU."""
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock

    wrong = [name for name, module in teacher.named_modules()
             if isinstance(module, ResidualAttentionBlock) and not isinstance(getattr(module.mlp, "gelu", None), QuickGELU)]
    if wrong:
        raise OfficialCheckpointError(
            f"official checkpoints are OpenAI CLIP models with QuickGELU, but {len(wrong)} block(s) of this "
            f"teacher use another activation ({_abbreviate(wrong)}): use an open_clip '-quickgelu' model name "
            f"for backbone.name (e.g. ViT-B-32-quickgelu, ViT-B-16-quickgelu) and no more temporal layers "
            f"than the text tower has")


def load_official_state_dict(teacher: nn.Module, conversion: Conversion, source: str = "checkpoint") -> None:
    """Load a converted official state dict into ``teacher``, strictly: every teacher tensor must come
    from the checkpoint with its shape (position tables may be longer: their first rows are used)."""
    check_quick_gelu(teacher)
    target = teacher.state_dict()
    state = conversion.state_dict
    problems = []
    for key in sorted(set(target) - set(state)):
        problems.append(f"{key}: not in the checkpoint")
    for key in sorted(set(state) - set(target)):
        problems.append(f"{conversion.sources[key]} -> {key}: the teacher has no such tensor")
    loadable = {}
    for key in sorted(set(state) & set(target)):
        value, want = state[key], target[key]
        if key in _SLICED and value.dim() == 2 and value.shape[1] == want.shape[1] and value.shape[0] >= want.shape[0]:
            value = value[: want.shape[0]]
        if tuple(value.shape) != tuple(want.shape):
            problems.append(f"{conversion.sources[key]} -> {key}: checkpoint shape {list(value.shape)}, "
                            f"teacher shape {list(want.shape)}")
            continue
        loadable[key] = value.to(dtype=want.dtype)
    if problems:
        raise OfficialCheckpointError(
            f"{source}: official {NAMES[conversion.kind]} weights do not fit this teacher config "
            f"(backbone.name, backbone.max_words and the options must match the checkpoint's model):\n  "
            + "\n  ".join(problems))
    teacher.load_state_dict(loadable, strict=True)


def build_official_teacher(config: TeacherConfig, teacher_class: type, ignore: Sequence[str] = ()) -> nn.Module:
    """Read ``config.checkpoint`` (an official file), build the teacher with the options it implies
    (without fetching pretrained weights: the checkpoint supplies every tensor) and load it."""
    state, wrapper = read_state_dict(config.checkpoint)
    try:
        conversion = convert_official_checkpoint(config.kind, state, ignore=ignore, wrapper=wrapper)
        options = merge_options(config.kind, dict(config.options), conversion.options)
    except OfficialCheckpointError as exc:
        raise OfficialCheckpointError(f"{config.checkpoint}: {exc}") from exc
    config = config.model_copy(update={"options": options})
    teacher = teacher_class(config, load_weights=False)
    load_official_state_dict(teacher, conversion, source=str(config.checkpoint))
    teacher.official_conversion = conversion  # what was mapped, dropped and ignored
    logger.info("%s: %s", config.checkpoint, conversion.summary())
    return teacher


def _abbreviate(items: Sequence[str], limit: int = 8) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" ... ({len(items) - limit} more)" if len(items) > limit else "")
