"""Device and dtype policy: CUDA when present, else MPS, else CPU; frozen weights in half precision on
accelerators, full precision on the CPU (where half precision is slow and sometimes unsupported)."""

from __future__ import annotations

import torch

from ..errors import InvalidArgumentError

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return the device to run on; `None` or ``"auto"`` picks CUDA, then MPS, then CPU."""
    if device is None or (isinstance(device, str) and device == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError(f"`device` must be auto, cpu, cuda[:N] or mps, but is {device!r}.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"`device` is {device!r}, but no CUDA device is available here; use --device cpu.")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidArgumentError(f"`device` is {device!r}, but MPS is not available here; use --device cpu.")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Return the dtype for frozen weights: bf16 on CUDA where supported (fp16 otherwise), fp16 on MPS,
    fp32 on the CPU. Gradients with respect to inputs are always taken in fp32 by the callers."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise InvalidArgumentError(f"`dtype` must be one of auto, {', '.join(sorted(_DTYPES))}, but is {dtype!r}.")
    return _DTYPES[dtype]
