"""Small building blocks shared by the student and the teachers: masked reductions and the temporal
transformer over frames.

Masking rule used everywhere: a padded frame or word (mask False) takes no part in any softmax, mean
or max; a slice with no valid entry at all gives 0 (never NaN), so a fully padded video is harmless
downstream and nothing non-finite ever reaches a cache.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

# finite "minus infinity" that every float dtype can hold (fp16 tops out at 65504)
MASKED_LOGIT = -65504.0


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over the entries of ``dim`` where ``mask`` (broadcast to ``logits``) is True; masked
    entries get exactly 0, and a slice with no valid entry gives all zeros.

    Computed in float32 whatever the input dtype (under autocast a bf16 softmax would round the
    sharp distributions of AOSM and AFA), returned in float32.
    """
    mask = mask.to(device=logits.device, dtype=torch.bool).expand_as(logits)
    filled = logits.float().masked_fill(~mask, float("-inf"))
    # an all-masked slice would be softmax(-inf, ..., -inf) = NaN: give it finite logits, zero it below
    filled = torch.where(mask.any(dim, keepdim=True), filled, torch.zeros_like(filled))
    return filled.softmax(dim) * mask


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean over the valid entries of ``dim`` (0 where there are none); ``mask`` broadcasts to values."""
    mask = mask.to(device=values.device, dtype=torch.bool).expand_as(values)
    total = values.masked_fill(~mask, 0).sum(dim)
    return total / mask.sum(dim).clamp(min=1).to(total.dtype)


def masked_max(values: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Max over the valid entries of ``dim`` (0 where there are none)."""
    mask = mask.to(device=values.device, dtype=torch.bool).expand_as(values)
    best = values.masked_fill(~mask, MASKED_LOGIT).amax(dim)
    return best.masked_fill(~mask.any(dim), 0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dim; a zero vector (a padded frame) stays zero instead of NaN."""
    return F.normalize(x, dim=-1, eps=1e-6)


class Blocks(nn.Module):
    """A stack of transformer blocks under open_clip's names (``resblocks.N.*``), so that the temporal
    head's weights load into an ``open_clip.transformer.Transformer`` as they are."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)


class TemporalTransformer(nn.Module):
    """CLIP4Clip's ``seqTransf`` head, used by the student and by the X-CLIP and TS2-Net teachers:
    position embeddings + transformer blocks over the frame tokens + a residual to the input.

    ``text``: a CLIP text transformer (open_clip ``Transformer``); its first blocks are copied when
    their width equals ``width`` (CLIP4Clip initialises its temporal transformer so), later blocks are
    fresh, with the text blocks' activation and norm and ``heads`` heads (default: CLIP's 64-wide
    heads, ``width // 64``). ``position_init``: rows
    copied into the position embeddings (CLIP4Clip copies the text tower's positions; otherwise they
    start at N(0, 0.01)). Built block by block, then the positions: the order of random draws is part of
    what makes a seeded run reproducible.

    Tokens whose mask is False are never attended to as keys; their own outputs are meaningless and
    must be masked by the caller. A sequence with no valid token attends everywhere instead (its output
    is masked away anyway), so that no softmax row is all -inf.
    """

    def __init__(self, width: int, layers: int, positions: int, text: nn.Module | None = None,
                 position_init: torch.Tensor | None = None, heads: int | None = None):
        super().__init__()
        from open_clip.transformer import LayerNorm, ResidualAttentionBlock

        text_blocks = list(getattr(text, "resblocks", None) or [])
        act_layer = type(text_blocks[0].mlp.gelu) if text_blocks else nn.GELU
        norm_layer = type(text_blocks[0].ln_1) if text_blocks else LayerNorm
        blocks = []
        for i in range(layers):
            if i < len(text_blocks) and int(text_blocks[i].ln_1.normalized_shape[0]) == width:
                blocks.append(copy.deepcopy(text_blocks[i]))
            else:
                blocks.append(ResidualAttentionBlock(width, heads or max(1, width // 64), act_layer=act_layer,
                                                     norm_layer=norm_layer, batch_first=True))
        self.transformer = Blocks(blocks)
        self.frame_position_embeddings = nn.Embedding(positions, width)
        nn.init.normal_(self.frame_position_embeddings.weight, std=0.01)
        if position_init is not None:
            rows = min(positions, position_init.shape[0])
            with torch.no_grad():
                self.frame_position_embeddings.weight[:rows].copy_(position_init[:rows])
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)

    @property
    def heads(self) -> int:
        """Attention heads of every block (ValueError if the blocks differ)."""
        counts = {int(block.attn.num_heads) for block in self.transformer.resblocks}
        if len(counts) != 1:
            raise ValueError(f"the temporal transformer's blocks have different head counts {sorted(counts)}")
        return counts.pop()

    def forward(self, x: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, S, d]; mask [B, S] (valid tokens); positions [S] (the position embedding of each token;
        default 0 .. S-1, one per frame)."""
        mask = mask.to(device=x.device, dtype=torch.bool)
        if positions is None:
            positions = torch.arange(x.shape[1], device=x.device)
        table = self.frame_position_embeddings.num_embeddings
        if int(positions.max()) >= table:
            raise ValueError(f"{int(positions.max()) + 1} positions (frames) exceed the temporal transformer's "
                             f"{table} position embeddings (max_frames)")
        h = x + self.frame_position_embeddings(positions)[None].to(x.dtype)
        keys_allowed = mask | ~mask.any(dim=1, keepdim=True)
        additive = torch.zeros(keys_allowed.shape, dtype=h.dtype, device=h.device).masked_fill(~keys_allowed, float("-inf"))
        for block in self.transformer.resblocks:
            heads, steps = block.attn.num_heads, h.shape[1]
            # additive key mask per (batch, head): [B * heads, S, S] as nn.MultiheadAttention wants it
            attn_mask = additive[:, None, None, :].expand(-1, heads, steps, -1).reshape(-1, steps, steps)
            if block.attn.batch_first:
                h = block(h, attn_mask=attn_mask)
            else:
                h = block(h.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
        return h + x


def _rename_legacy_keys(module, state_dict, prefix, *args) -> None:
    """Teachers saved before the student and the teachers shared this module named its parts
    ``blocks.N.*`` and ``frame_position.weight``: load those files as they are."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        local = key[len(prefix):]
        if local.startswith("blocks."):
            state_dict[prefix + "transformer.resblocks." + local[len("blocks."):]] = state_dict.pop(key)
        elif local == "frame_position.weight":
            state_dict[prefix + "frame_position_embeddings.weight"] = state_dict.pop(key)
