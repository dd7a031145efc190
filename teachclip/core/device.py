"""Where computation runs: device choice and mixed precision, the same on CPU and CUDA.

torch is imported inside the functions: the rest of ``teachclip.core`` (and every store) stays
importable without it, so ``teach cache verify`` or ``teach --help`` never load torch.
"""

from __future__ import annotations

from typing import Any


def pick_device(name: str = "auto") -> Any:
    """``"auto"``: CUDA when available, else CPU; anything else is a torch device string."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: Any, enabled: bool = True) -> Any:
    """Mixed precision on CUDA (bf16 where supported, else fp16); a no-op context on CPU."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not enabled:
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def grad_scaler(device: Any, amp: bool) -> Any:
    """A loss scaler for fp16 autocast; a pass-through (``enabled=False``) on CPU and for bf16.

    Mirrors :func:`autocast`, which picks bf16 where the GPU supports it.
    """
    import torch

    fp16 = device.type == "cuda" and amp and not torch.cuda.is_bf16_supported()
    return torch.amp.GradScaler(device.type, enabled=fp16)


def local_gpu_count() -> int:
    """CUDA devices this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
