"""Image-processing purifications: none, JPEG, resize, Gaussian noise, Gaussian blur (see
:mod:`artshield.evaluate.purify` for the calling convention and the spec grammar)."""

from __future__ import annotations

import torch

from ..engine import transforms as T
from ..errors import InvalidArgumentError
from .purify_base import Purification, check_number


class NoPurification(Purification):
    """The identity: the baseline row ("no purification") of a robustness table."""

    name = "none"
    summary = "no purification (baseline)"

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return images.clone()


class JpegCompression(Purification):
    """Real JPEG compression: encode and decode through Pillow (libjpeg-turbo), not a differentiable model of it.

    The image is quantised to 8 bits, saved as a baseline JPEG at `quality` with Pillow's default 4:2:0 chroma
    subsampling, and decoded, exactly as a platform re-encoding an upload does. In PDM-Pure issue #1 a
    commenter argues plain JPEG suffices against non-adaptive protections (the authors disagree at
    ε = 16/255), so a robustness table should sweep the quality (``jpeg90``, ``jpeg75``, ``jpeg50``).

    Args:
        quality (`int`, defaults to 75): IJG quality in [1, 100] (Pillow's default is 75).
        subsampling (`str`, defaults to `"4:2:0"`): chroma subsampling, ``"4:2:0"``, ``"4:2:2"`` or ``"4:4:4"``.
    """

    name = "jpeg"
    summary = "real JPEG round trip through Pillow (quality 75)"
    primary = "quality"
    parameters = ("quality", "subsampling")

    def __init__(self, quality: int = 75, subsampling: str = "4:2:0"):
        self.quality = check_number(quality, "quality", 1, 100, integer=True)
        if subsampling not in ("4:2:0", "4:2:2", "4:4:4"):
            raise InvalidArgumentError(f"`subsampling` must be 4:2:0, 4:2:2 or 4:4:4, but is {subsampling!r}.")
        self.subsampling = subsampling

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return T.jpeg_pil(images, self.quality, subsampling=self.subsampling)


class DownUpscale(Purification):
    """Downscale by `factor` and upscale back to the original size (Mist ``postprocess.py``'s resize attack).

    Bicubic both ways, antialiased when shrinking (as Pillow resamples), clamped to [0, 1] after each resize.
    Each side becomes ``max(1, round(factor * side))``.

    Args:
        factor (`float`, defaults to 0.5): side scale in (0, 1].
        mode (`str`, defaults to `"bicubic"`): ``"bicubic"``, ``"bilinear"`` or ``"nearest"``.
    """

    name = "resize"
    summary = "downscale ×0.5 and back up (bicubic, antialiased)"
    primary = "factor"
    parameters = ("factor", "mode")

    def __init__(self, factor: float = 0.5, mode: str = "bicubic"):
        self.factor = check_number(factor, "factor", 0.0, 1.0, low_open=True)
        self.mode = mode
        self._transform = T.Resize(scale=self.factor, mode=mode)  # validates mode; a fixed scale draws nothing

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self._transform(images, generator)


class GaussianNoising(Purification):
    """Add i.i.d. Gaussian noise of standard deviation `sigma` (in [0, 1] pixel units) and clamp to [0, 1].

    Hönig et al. (2024) use σ = 0.05 as the "Gaussian noising" purification and σ = 0.1 as the first stage of
    Noisy Upscaling (``noise.py``: ``skimage.util.random_noise(mode='gaussian', var=σ², clip=True)``, which is
    what this computes).

    Args:
        sigma (`float`, defaults to 0.05): standard deviation in [0, 1].
    """

    name = "noise"
    summary = "Gaussian noise σ 0.05, clamped (Hönig et al.)"
    primary = "sigma"
    random = True
    parameters = ("sigma",)

    def __init__(self, sigma: float = 0.05):
        self.sigma = check_number(sigma, "sigma", 0.0, 1.0)
        self._transform = T.GaussianNoise(sigma=self.sigma)

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self._transform(images, generator)


class GaussianBlurring(Purification):
    """Gaussian blur of standard deviation `sigma` pixels (kernel radius ⌈3σ⌉, edge-replicated borders).

    Args:
        sigma (`float`, defaults to 1.0): standard deviation in pixels, in [0, 20].
    """

    name = "blur"
    summary = "Gaussian blur σ 1 px"
    primary = "sigma"
    parameters = ("sigma",)

    def __init__(self, sigma: float = 1.0):
        self.sigma = check_number(sigma, "sigma", 0.0, 20.0)
        self._transform = T.GaussianBlur(sigma=self.sigma)

    def _apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self._transform(images, generator)



__all__ = ["DownUpscale", "GaussianBlurring", "GaussianNoising", "JpegCompression", "NoPurification"]
