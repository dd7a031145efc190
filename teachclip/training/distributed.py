"""Data-parallel training with torchrun (DDP): one process per GPU, one global batch.

The global batch is split over the ranks; features are gathered (:class:`GatherWithGrad`) so that
every rank computes the loss of the whole global batch, exactly as one process would; the gather's
backward sums the ranks' gradients of each slice and DDP averages, which together give the
single-process gradient (CLIP4Clip's AllGather is off by the world size).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from teachclip.core.device import pick_device


class GatherWithGrad(torch.autograd.Function):
    """``all_gather`` of per-rank slices of different lengths, with gradient (CLIP4Clip's AllGather).

    Every rank computes the same loss from the gathered global batch, so the gradient of a rank's
    slice is the *sum* of every rank's gradient for it (all_reduce); DDP then averages the parameter
    gradients over ranks, which gives exactly the single-process gradient.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def gather(local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    return local if len(sizes) == 1 else GatherWithGrad.apply(local, sizes)


def init_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; one process without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, pick_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def rank_slice(batch_length: int, world: int, rank: int) -> tuple[slice, list[int]]:
    """This rank's contiguous part of a global batch and every rank's part length."""
    sizes = [len(part) for part in np.array_split(np.arange(batch_length), world)]
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank]), sizes
