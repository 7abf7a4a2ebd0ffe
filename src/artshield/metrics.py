"""Image-quality metrics for protection reports: L-inf, L2, PSNR, SSIM and (when its weights exist) LPIPS.

All metrics take two (B, C, H, W) float tensors in [0, 1] (a (C, H, W) tensor is treated as a batch of
one), return one value per image, shape (B,), and are differentiable, so that an objective can use them
as well as a report.

LPIPS is optional. The ``lpips`` package needs two sets of weights: its own small linear layers (shipped
inside the package) and an ImageNet backbone (AlexNet by default) that torchvision downloads into the
torch hub cache the first time. Offline, that download fails (or, behind some firewalls, hangs), so
:func:`lpips_distance` never lets it start: it constructs the model only when the backbone file is
already in the cache, and otherwise returns None and logs one message saying how to enable it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from .errors import InvalidArgumentError

logger = logging.getLogger(__name__)

#: Wang et al. (2004) SSIM constants, and the Gaussian window scikit-image uses with
#: ``gaussian_weights=True, sigma=1.5`` (radius int(3.5 * 1.5 + 0.5) = 5, so 11 taps).
SSIM_SIGMA = 1.5
SSIM_WIN_SIZE = 11
SSIM_K1 = 0.01
SSIM_K2 = 0.03

#: The torchvision backbone file each LPIPS network needs in ``<torch hub dir>/checkpoints``.
LPIPS_BACKBONE_FILES = {
    "alex": ("alexnet-owt-7be5be79.pth", "alexnet", "AlexNet_Weights.IMAGENET1K_V1"),
    "vgg": ("vgg16-397923af.pth", "vgg16", "VGG16_Weights.IMAGENET1K_V1"),
    "squeeze": ("squeezenet1_1-b8a52dc0.pth", "squeezenet1_1", "SqueezeNet1_1_Weights.IMAGENET1K_V1"),
}

# net -> loaded LPIPS module, or the reason it is unavailable (str). Filled once per net per process.
_LPIPS_CACHE: dict[str, Any] = {}
_LPIPS_LOCK = threading.Lock()


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two image batches and bring them to (B, C, H, W), same dtype and device."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise InvalidArgumentError(f"`{name}` must be a torch.Tensor, but is {type(t).__name__}.")
    if a.dim() == 3:
        a = a.unsqueeze(0)
    if b.dim() == 3:
        b = b.unsqueeze(0)
    if a.dim() != 4 or a.shape != b.shape:
        raise InvalidArgumentError(
            f"images must both have shape (B, C, H, W) and match, but have {tuple(a.shape)} and {tuple(b.shape)}."
        )
    if not a.is_floating_point():
        a = a.float()
    return a, b.to(device=a.device, dtype=a.dtype)


def linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Largest absolute difference per image, shape (B,), in the images' units ([0, 1])."""
    a, b = _pair(a, b)
    return (a - b).abs().flatten(1).amax(dim=1)


def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of the difference per image, shape (B,) (not a mean: it grows with image size)."""
    a, b = _pair(a, b)
    return (a - b).flatten(1).norm(p=2, dim=1)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference per image, shape (B,)."""
    a, b = _pair(a, b)
    return (a - b).pow(2).flatten(1).mean(dim=1)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, shape (B,): 10 log10(data_range² / MSE).

    Identical images give ``inf``, which JSON cannot hold: reports should use :func:`image_report`
    (null plus a note) or :func:`finite_psnr`.
    """
    if not data_range > 0:
        raise InvalidArgumentError(f"`data_range` must be positive, but is {data_range!r}.")
    err = mse(a, b)
    return 10.0 * torch.log10(data_range**2 / err)


def finite_psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, cap_db: float = 100.0) -> torch.Tensor:
    """PSNR capped at ``cap_db`` (identical images give the cap), for averaging and JSON.

    100 dB is an RMS error of 1e-5 of the range, far below one 16-bit level, so the cap only ever
    replaces "identical".
    """
    return psnr(a, b, data_range).clamp(max=cap_db)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The normalised 1-D Gaussian scipy.ndimage uses (sampled at integer offsets, then summed to 1)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image, shape (B,), differentiable.

    11×11 Gaussian window with σ = 1.5, K1 = 0.01, K2 = 0.03, population (co)variances, computed per
    channel on the "valid" region (no padding) and averaged over pixels and channels. This is what
    ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=...)`` computes (it filters with reflection,
    then crops the 5-pixel border the reflection affected).

    Raises:
        InvalidArgumentError: an image side is smaller than 11 pixels. No smaller window is substituted,
            because SSIM values from different windows are not comparable (scikit-image refuses too);
            :func:`image_report` reports such an image's SSIM as null with this reason.
    """
    a, b = _pair(a, b)
    if not data_range > 0:
        raise InvalidArgumentError(f"`data_range` must be positive, but is {data_range!r}.")
    height, width = a.shape[-2:]
    if height < SSIM_WIN_SIZE or width < SSIM_WIN_SIZE:
        raise InvalidArgumentError(
            f"SSIM needs images of at least {SSIM_WIN_SIZE}x{SSIM_WIN_SIZE} pixels (its Gaussian window), "
            f"but the images are {width}x{height}."
        )
    # Variances are differences of nearly equal means: do them in at least float32.
    if a.dtype in (torch.float16, torch.bfloat16):
        a, b = a.float(), b.float()
    batch, channels = a.shape[:2]
    g = _gaussian_window(SSIM_WIN_SIZE, SSIM_SIGMA, a.dtype, a.device)
    # Separable filtering on every channel independently: fold channels into the batch.
    gy = g.view(1, 1, -1, 1)
    gx = g.view(1, 1, 1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, gy), gx)

    x = a.reshape(batch * channels, 1, height, width)
    y = b.reshape(batch * channels, 1, height, width)
    stacked = blur(torch.cat([x, y, x * x, y * y, x * y], dim=0))
    ux, uy, uxx, uyy, uxy = stacked.chunk(5, dim=0)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.reshape(batch, -1).mean(dim=1)


# --------------------------------------------------------------------------------------------------
# LPIPS (optional)
# --------------------------------------------------------------------------------------------------


def _lpips_backbone_path(net: str) -> str:
    filename = LPIPS_BACKBONE_FILES[net][0]
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def _load_lpips(net: str) -> Any:
    """Build the LPIPS module for ``net``, or return the reason (str) it is unavailable. No network."""
    how = (
        "To enable it: pip install 'artshield[metrics]', and put the torchvision {weights} file at {path} "
        "(e.g. run `python -c \"import torchvision; torchvision.models.{fn}(weights='IMAGENET1K_V1')\"` once "
        "on a machine with network access and copy the file, or set TORCH_HOME to a folder that has it)."
    )
    filename, fn, weights = LPIPS_BACKBONE_FILES[net]
    path = _lpips_backbone_path(net)
    try:
        import lpips  # noqa: F401 - imported here: it pulls in torchvision, slow and optional
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken torchvision underneath it.
        return (f"LPIPS is unavailable: the `lpips` package cannot be imported ({exc}). "
                + how.format(weights=weights, path=path, fn=fn))
    if not os.path.isfile(path):
        # lpips would ask torchvision to download the backbone here, which fails slowly or hangs offline.
        return (f"LPIPS is unavailable: its {net} backbone weights ({filename}) are not in the torch hub "
                "cache, and artshield does not download them. " + how.format(weights=weights, path=path, fn=fn))
    try:
        with warnings.catch_warnings():
            # lpips calls torchvision with the deprecated `pretrained=` argument.
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(net=net, verbose=False)
    except Exception as exc:  # noqa: BLE001 - a corrupt or mismatched weights file.
        return (f"LPIPS is unavailable: building it from {path} failed ({type(exc).__name__}: {exc}). "
                + how.format(weights=weights, path=path, fn=fn))
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def _lpips_model(net: str) -> Any:
    """The cached LPIPS module, or the cached reason string; logs the reason once per net."""
    if net not in LPIPS_BACKBONE_FILES:
        raise InvalidArgumentError(f"`net` must be one of {sorted(LPIPS_BACKBONE_FILES)}, but is {net!r}.")
    with _LPIPS_LOCK:
        if net not in _LPIPS_CACHE:
            result = _load_lpips(net)
            _LPIPS_CACHE[net] = result
            if isinstance(result, str):
                logger.warning("%s", result)
        return _LPIPS_CACHE[net]


def lpips_unavailable_reason(net: str = "alex") -> str | None:
    """None when LPIPS with ``net`` works here, else the reason (with how to enable it)."""
    result = _lpips_model(net)
    return result if isinstance(result, str) else None


def clear_lpips_cache() -> None:
    """Forget the loaded LPIPS models and cached failures (after installing weights, or in tests)."""
    with _LPIPS_LOCK:
        _LPIPS_CACHE.clear()


def lpips_distance(a: torch.Tensor, b: torch.Tensor, net: str = "alex") -> torch.Tensor | None:
    """LPIPS perceptual distance per image, shape (B,), or None when LPIPS is unavailable here.

    Inputs are [0, 1] images (rescaled to [-1, 1] as LPIPS expects); greyscale is repeated to three
    channels. Differentiable with respect to the inputs. The model is built once per ``net`` and
    cached; when it cannot be built (see the module docstring) one warning is logged and every call
    returns None, without touching the network.
    """
    a, b = _pair(a, b)
    model = _lpips_model(net)
    if isinstance(model, str):
        return None
    if a.shape[1] == 1:
        a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
    elif a.shape[1] != 3:
        raise InvalidArgumentError(f"LPIPS needs 1 or 3 channels, but the images have {a.shape[1]}.")
    model = model.to(a.device)
    a32, b32 = a.float(), b.float()
    return model(a32, b32, normalize=True).reshape(a.shape[0]).to(a.dtype)


def available_metrics() -> list[str]:
    """Names of the metrics that work here: the built-in ones always, ``"lpips"`` when its weights exist."""
    names = ["linf", "l2", "mse", "psnr", "ssim"]
    if lpips_unavailable_reason("alex") is None:
        names.append("lpips")
    return names


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _as_image_tensor(x: Any, name: str) -> torch.Tensor:
    """Accept a tensor, a PIL image or a path (the public API's image kinds) as a (1, C, H, W) tensor."""
    if isinstance(x, torch.Tensor):
        t = x.unsqueeze(0) if x.dim() == 3 else x
    else:
        from PIL import Image

        from .imageio import from_pil, read_image

        if isinstance(x, Image.Image):
            t = from_pil(x).rgb
        elif isinstance(x, (str, os.PathLike)):
            t = read_image(x).rgb
        else:
            raise InvalidArgumentError(f"`{name}` must be a tensor, a PIL image or a path, but is {type(x).__name__}.")
    if t.dim() != 4 or t.shape[0] != 1:
        raise InvalidArgumentError(f"`{name}` must be one image, (1, C, H, W) or (C, H, W), but has {tuple(t.shape)}.")
    return t


def _json_number(value: float, name: str, notes: dict[str, str], why_not_finite: str) -> float | None:
    if math.isfinite(value):
        return value
    notes[name] = why_not_finite
    return None


def image_report(original: Any, protected: Any, *, lpips_net: str = "alex") -> dict[str, Any]:
    """Quality of a protected image against its original, as a JSON-serialisable dict.

    Keys: ``linf`` ([0, 1] units), ``linf_255`` (the same in 8-bit levels), ``l2``, ``mse``, ``psnr_db``,
    ``ssim``, ``lpips``, ``lpips_net``, ``shape`` ([C, H, W]), and ``notes``: for every metric that is
    null, why (identical images for PSNR, too small for SSIM, weights missing for LPIPS). Values are
    plain floats or None; never inf or NaN.

    Args:
        original, protected: one image each, as (1, C, H, W) / (C, H, W) tensors in [0, 1], PIL images
            or paths; same shape.
        lpips_net: the LPIPS backbone ("alex", "vgg" or "squeeze").
    """
    if lpips_net not in LPIPS_BACKBONE_FILES:
        raise InvalidArgumentError(f"`lpips_net` must be one of {sorted(LPIPS_BACKBONE_FILES)}, but is {lpips_net!r}.")
    a = _as_image_tensor(original, "original")
    b = _as_image_tensor(protected, "protected")
    a, b = _pair(a, b)
    notes: dict[str, str] = {}
    with torch.no_grad():
        a64, b64 = a.double(), b.double()
        linf_v = float(linf(a64, b64)[0])
        report: dict[str, Any] = {
            "shape": list(a.shape[1:]),
            "linf": linf_v,
            "linf_255": round(linf_v * 255.0, 4),  # float32 pixels carry ~1e-5 grey-level noise
            "l2": float(l2(a64, b64)[0]),
            "mse": float(mse(a64, b64)[0]),
        }
        report["psnr_db"] = _json_number(
            float(psnr(a64, b64)[0]), "psnr_db", notes, "the images are identical (PSNR is infinite)"
        )
        try:
            report["ssim"] = _json_number(float(ssim(a64, b64)[0]), "ssim", notes, "SSIM is not finite")
        except InvalidArgumentError as exc:
            report["ssim"] = None
            notes["ssim"] = str(exc)
        report["lpips_net"] = lpips_net
        try:
            dist = lpips_distance(a, b, net=lpips_net)
        except Exception as exc:  # noqa: BLE001 - e.g. an image too small for the backbone's strides.
            dist = None
            notes["lpips"] = f"LPIPS failed on these images ({type(exc).__name__}: {exc})"
        if dist is None:
            report["lpips"] = None
            if "lpips" not in notes:
                notes["lpips"] = lpips_unavailable_reason(lpips_net) or "LPIPS is unavailable"
        else:
            report["lpips"] = _json_number(float(dist[0]), "lpips", notes, "LPIPS is not finite")
    report["notes"] = notes
    return report


__all__ = [
    "LPIPS_BACKBONE_FILES",
    "available_metrics",
    "clear_lpips_cache",
    "finite_psnr",
    "image_report",
    "l2",
    "linf",
    "lpips_distance",
    "lpips_unavailable_reason",
    "mse",
    "psnr",
    "ssim",
]
