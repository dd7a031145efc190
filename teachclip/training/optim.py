"""Seeding, AdamW over named parameter groups, the warmup + cosine schedule and one optimizer step.

AdamW groups get one learning rate each and no weight decay on biases, norms, embeddings and logit
scales; betas/eps are CLIP4Clip's. :func:`optimizer_step` is the end of every training step of the
project (train-teacher, train-student, pretrain-backbone).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from teachclip.core.errors import InputError


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices). Data order does not use these: see the sampler."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


NamedParameters = Sequence[tuple[str, nn.Parameter]]


# CLIP's own embedding tables (open_clip's names; any ``*.token_embedding.*`` ... of a model) are not decayed
UNDECAYED_TABLES = ("token_embedding", "positional_embedding", "class_embedding")


def decays(name: str, parameter: nn.Parameter) -> bool:
    """Weight decay only on weight matrices: biases, norm gains and scalars (logit scale) have
    ndim < 2, and CLIP's token, position and class embedding tables are left alone. The temporal
    head's frame position table is decayed like any weight matrix, as in CLIP4Clip and TeachCLIP."""
    return parameter.ndim >= 2 and not any(table in name for table in UNDECAYED_TABLES)


def build_optimizer(
    groups: Mapping[str, NamedParameters],
    lrs: Mapping[str, float],
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
) -> torch.optim.AdamW:
    """AdamW with one ``lr`` per named group, each split into decayed and non-decayed parameters.

    ``groups``: name -> [(parameter name, parameter)] (frozen parameters are skipped, empty groups
    dropped); ``lrs`` must name every group. Betas/eps are CLIP4Clip's. The optimizer's param groups
    carry their ``name`` (``"backbone"``, ``"backbone/no_decay"``, ...) for logging.
    """
    missing = [name for name in groups if name not in lrs]
    if missing:
        raise ValueError(f"no learning rate for parameter group(s): {', '.join(missing)}")
    seen: dict[int, str] = {}
    param_groups = []
    for group, named in groups.items():
        decayed, not_decayed = [], []
        for name, parameter in named:
            if not parameter.requires_grad:
                continue
            if id(parameter) in seen:
                raise ValueError(f"parameter {name} is in group {group} and in group {seen[id(parameter)]}")
            seen[id(parameter)] = group
            (decayed if decays(name, parameter) else not_decayed).append(parameter)
        for suffix, params, decay in (("", decayed, weight_decay), ("/no_decay", not_decayed, 0.0)):
            if params:
                param_groups.append({"params": params, "lr": lrs[group], "weight_decay": decay,
                                     "name": group + suffix})
    if not param_groups:
        raise ValueError("no trainable parameters")
    # foreach: one fused kernel per group instead of a Python loop over tensors (PyTorch only picks
    # it by itself on CUDA); about half the optimizer time of a small model's step on a CPU
    return torch.optim.AdamW(param_groups, betas=betas, eps=eps, foreach=True)


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup to 1 over ``warmup_steps`` (the first step already moves), then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float):
    """LambdaLR applying :func:`lr_factor` to every group's lr; call ``.step()`` after every batch."""
    warmup_steps = int(round(warmup_fraction * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps)
    )


class NonFiniteLossError(InputError):
    """A loss term became NaN or infinite: training stops before the update (the model stays finite)."""


def optimizer_step(losses: Mapping[str, torch.Tensor], step: int, parameters, optimizer: torch.optim.Optimizer,
                   scheduler, scaler: torch.amp.GradScaler, grad_clip: float) -> None:
    """One update of training step ``step`` (1-based) from ``losses`` (every term, the total under
    ``"loss"``): refuse a non-finite term (naming the step and the term: a hole in the soft labels or a
    diverging run, never something to train on), backward through the (AMP-scaled) total, unscale so
    that the clip sees the true gradients, clip, AdamW step (skipped by the scaler on inf/NaN
    gradients), scaler and schedule, zero grads."""
    bad = [term for term, value in losses.items() if not bool(torch.isfinite(value.detach()).all())]
    if bad:
        values = ", ".join(f"{term} = {float(losses[term].detach().float().mean())}" for term in bad)
        raise NonFiniteLossError(f"training step {step}: non-finite loss ({values}); stopped before updating the "
                                 f"model (check the soft labels with `teach cache verify`, or lower the learning rates)")
    scaler.scale(losses["loss"]).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def param_groups_by_name(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """``backbone``: the open_clip towers (``backbone.*``); ``new``: the rest, logit scales included."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"backbone": [], "new": []}
    for name, parameter in model.named_parameters():
        in_backbone = name.startswith("backbone.") and "logit_scale" not in name
        groups["backbone" if in_backbone else "new"].append((name, parameter))
    return groups
