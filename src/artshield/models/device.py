"""Device and precision policy: CUDA when present, else MPS, else CPU.

Two precisions are chosen. The *weights'* dtype: half precision on accelerators, fp32 on the CPU (half-precision
weights there lose accuracy in group norms and softmaxes for little gain). The *compute* dtype: on a CPU with
native bf16 arithmetic (x86 AVX512-BF16 or AMX, ARM's BF16 extension) the VAE and UNet run under bf16 autocast
over those fp32 weights for models of Stable Diffusion size, which ``benchmarks/sd_scale.py`` measured much
faster with input gradients within cosine 0.999 of fp32; on CPUs without it oneDNN emulates bf16 and it is
slower, so they stay in fp32, as do small models (the demo), where the casts cost more than they save. Gradients with respect to inputs are always returned in fp32.
"""

from __future__ import annotations

import functools
from pathlib import Path

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


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86 AVX512-BF16 or AMX tiles; ARM's BF16 extension), where bf16
    autocast is faster than fp32; elsewhere oneDNN emulates bf16 and it is slower. Detected, never assumed."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except RuntimeError:
            pass
    return _arm_cpu_flags_have_bf16()


def _arm_cpu_flags_have_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return any(line.startswith("Features") and "bf16" in line.split() for line in text.splitlines())


#: ``"auto"`` autocasts to bf16 only from this UNet size on: at Stable Diffusion size (860 M) it cut an AdvDM
#: step by half, but on the 6 M-parameter demo model at 128² the casts cost more than the faster kernels save
#: (1.13x slower), and the demo's proofs stay exactly reproducible in fp32.
BF16_AUTO_MIN_PARAMETERS = 100_000_000


def resolve_compute_dtype(
    compute_dtype: str | torch.dtype | None,
    device: torch.device,
    weights_dtype: torch.dtype,
    parameters: int | None = None,
) -> torch.dtype | None:
    """The autocast dtype of the VAE and UNet, or None to compute in the weights' own dtype.

    ``"auto"``/None: bf16 on a CPU with native bf16 (:func:`cpu_has_native_bf16`) when the weights are fp32
    and the UNet has at least :data:`BF16_AUTO_MIN_PARAMETERS` `parameters` (None: assume it has), else None
    (accelerators already hold half-precision weights). ``"fp32"``: None (exact fp32; needs fp32 weights).
    ``"bf16"``/``"fp16"``: autocast to that dtype.
    """
    if compute_dtype is None or compute_dtype == "auto":
        large = parameters is None or parameters >= BF16_AUTO_MIN_PARAMETERS
        if device.type == "cpu" and weights_dtype == torch.float32 and large and cpu_has_native_bf16():
            return torch.bfloat16
        return None
    if isinstance(compute_dtype, str):
        if compute_dtype not in _DTYPES:
            raise InvalidArgumentError(
                f"`compute_dtype` must be one of auto, {', '.join(sorted(_DTYPES))}, but is {compute_dtype!r}."
            )
        compute_dtype = _DTYPES[compute_dtype]
    if compute_dtype == weights_dtype:
        return None
    if compute_dtype == torch.float32:
        raise InvalidArgumentError(
            f"`compute_dtype` fp32 needs fp32 weights, but the weights are {str(weights_dtype).replace('torch.', '')}; "
            "use --dtype fp32."
        )
    return compute_dtype


def prefers_channels_last(device: torch.device, compute_dtype: torch.dtype | None) -> bool:
    """Whether the VAE's and UNet's weights go channels-last by default: on the CPU under bf16 autocast, where
    ``benchmarks/sd_scale.py`` measured oneDNN's NHWC convolutions faster (an SD-size AdvDM step at 512²: 11.2 s
    NCHW, 10.1 s with the VAE channels-last, 9.2 s with the UNet too; at 256² 2.22, 2.22, 2.05 s); in fp32 it
    made no difference and on GPUs it is not measured here."""
    return device.type == "cpu" and compute_dtype == torch.bfloat16
