"""Near-duplicate search of generations against training images (a replication check, Somepalli et al. CVPR
2023; Carlini et al. 2023): the SSCD copy-detection descriptor when its TorchScript file is given, else the
weight-free :class:`DCTDescriptor`."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ...errors import ImageReadError, InvalidArgumentError, ModelLoadError, ModelNotFoundError
from ...imageio import as_rgb

logger = logging.getLogger(__name__)

#: Cosine above which an SSCD match counts as a replication (Somepalli et al. 2023; Wen et al. 2024).
SSCD_REPLICATION_THRESHOLD = 0.5
#: The same for :class:`DCTDescriptor`: our heuristic, measured on the demo world (128 px): exact copies and
#: resized, blurred (3x3 box) or noisy (sigma 0.05) copies score >= 0.99; round trips through the demo VAE
#: (which is lossy) 0.73-0.99, mean 0.91; distinct images of one style mean 0.39, 99th percentile 0.91, max
#: 0.96. The two ranges overlap, so "replicated" by this descriptor is indicative only; the report always
#: gives the similarity itself and which training image matched.
DCT_REPLICATION_THRESHOLD = 0.9


def _dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix (n x n): rows are frequencies."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    matrix = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    matrix[0] /= math.sqrt(2.0)
    return matrix.float()


class DCTDescriptor:
    """Weight-free near-duplicate descriptor: low-frequency 2-D DCT of a small colour thumbnail.

    Each image is resized (antialiased bilinear, aspect ratio ignored) to ``size`` x ``size``; the
    orthonormal 2-D DCT of each RGB channel is taken and its ``keep`` x ``keep`` lowest frequencies kept;
    the mean of the three DC terms is subtracted (so a global brightness shift barely moves the descriptor
    while colour balance still counts) and the result is L2-normalised, so the cosine of two descriptors is a
    correlation of their low-pass thumbnails. Exact copies score 1; resizing, mild blur, noise and JPEG keep
    copies near 1, a lossy VAE round trip lower (see :data:`DCT_REPLICATION_THRESHOLD`). It is not SSCD: crops, flips, rotations and re-compositions are not
    matched, and two different images with similar layout and colours can score high.
    """

    name = "dct"
    threshold = DCT_REPLICATION_THRESHOLD

    def __init__(self, size: int = 32, keep: int = 8) -> None:
        if not 1 <= keep <= size:
            raise InvalidArgumentError(f"`keep` must be in [1, size={size}], but is {keep}.")
        self.size, self.keep = int(size), int(keep)
        self._dct = _dct_matrix(self.size)

    def describe(self) -> dict:
        return {"name": self.name, "size": self.size, "keep": self.keep, "replication_threshold": self.threshold}

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = _batch_rgb(images).float().cpu()
        thumb = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        coeffs = self._dct @ thumb @ self._dct.T
        low = coeffs[:, :, : self.keep, : self.keep].clone()
        low[:, :, 0, 0] -= low[:, :, 0, 0].mean(dim=1, keepdim=True)
        return F.normalize(low.flatten(1), dim=1)


class SSCDDescriptor:
    """SSCD copy-detection descriptor (Pizzi et al. CVPR 2022) from its TorchScript file.

    Preprocessing follows DCR (Somepalli et al.) and ConceptPrune's ``inference_mem.py``: resize the
    shorter side to 256, centre-crop 224, normalise with mean 0.5 / std 0.5; descriptors are L2-normalised.
    The file is a TorchScript archive, loaded with ``torch.jit.load`` (no pickle of Python objects).
    """

    name = "sscd"
    threshold = SSCD_REPLICATION_THRESHOLD

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu") -> None:
        self.path = Path(os.fspath(path))
        if not self.path.is_file():
            raise ModelNotFoundError(f"SSCD weights {self.path}: no such file (expected a .torchscript.pt file).")
        self.device = torch.device(device)
        try:
            self.model = torch.jit.load(str(self.path), map_location=self.device).eval()
        except (RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"SSCD weights {self.path}: not a TorchScript archive ({str(exc).splitlines()[0]}).") from exc

    def describe(self) -> dict:
        return {"name": self.name, "weights": str(self.path), "replication_threshold": self.threshold}

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for image in _batch_rgb(images).float():
            h, w = image.shape[-2:]
            scale = 256 / min(h, w)
            size = (max(224, round(h * scale)), max(224, round(w * scale)))
            resized = F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)
            top, left = (size[0] - 224) // 2, (size[1] - 224) // 2
            crop = resized[:, :, top : top + 224, left : left + 224]
            out.append(self.model(((crop - 0.5) / 0.5).to(self.device)).float().cpu())
        return F.normalize(torch.cat(out), dim=1)


def _batch_rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) from one image or a batch, greyscale repeated (:func:`artshield.imageio.as_rgb`)."""
    images = as_rgb(images)
    return images.unsqueeze(0) if images.dim() == 3 else images


Descriptor = DCTDescriptor | SSCDDescriptor


def load_descriptor(sscd: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> Descriptor:
    """SSCD when its TorchScript file is given, else the weight-free :class:`DCTDescriptor`."""
    if sscd is None:
        return DCTDescriptor()
    return SSCDDescriptor(sscd, device)


@dataclass
class Match:
    """Best training-image match of one generation."""

    similarity: float
    index: int
    path: str


@dataclass
class NearDuplicateIndex:
    """Descriptors of a folder of training images, queried by generations (max cosine similarity).

    Build it with :meth:`from_folder`; :meth:`query` returns each generation's best match.
    """

    descriptor: Descriptor
    paths: list[Path]
    features: torch.Tensor
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @classmethod
    def from_folder(
        cls, folder: str | os.PathLike, descriptor: Descriptor | None = None, *, recursive: bool = False
    ) -> NearDuplicateIndex:
        """Describe every image in `folder` (by content; unreadable files are skipped and listed)."""
        from ...imageio import iter_images, read_image

        descriptor = descriptor or DCTDescriptor()
        listing = iter_images(folder, recursive=recursive)
        paths, rows, skipped = [], [], list(listing.skipped)
        for path in listing:
            try:
                loaded = read_image(path)
            except ImageReadError as exc:
                skipped.append((path, str(exc)))
                continue
            rows.append(descriptor(loaded.rgb))
            paths.append(path)
        if not rows:
            raise ImageReadError(f"{folder}: no readable training images in this folder.")
        for path, reason in skipped:
            logger.info("training images: skipped %s (%s)", path, reason)
        return cls(descriptor=descriptor, paths=paths, features=torch.cat(rows), skipped=skipped)

    @classmethod
    def from_images(cls, images: torch.Tensor, names: Sequence[str], descriptor: Descriptor | None = None) -> NearDuplicateIndex:
        """Index in-memory images (B, 3, H, W) in [0, 1] under the given names."""
        descriptor = descriptor or DCTDescriptor()
        if len(names) != images.shape[0]:
            raise InvalidArgumentError(f"`names` has {len(names)} entries but there are {images.shape[0]} images.")
        return cls(descriptor=descriptor, paths=[Path(n) for n in names], features=descriptor(images))

    def similarities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, n_training) cosine similarities."""
        return self.descriptor(images) @ self.features.T

    def query(self, images: torch.Tensor) -> list[Match]:
        sims = self.similarities(images)
        best, index = sims.max(dim=1)
        return [Match(float(s), int(i), str(self.paths[int(i)])) for s, i in zip(best, index, strict=True)]


__all__ = [
    "DCT_REPLICATION_THRESHOLD",
    "SSCD_REPLICATION_THRESHOLD",
    "DCTDescriptor",
    "Descriptor",
    "Match",
    "NearDuplicateIndex",
    "SSCDDescriptor",
    "load_descriptor",
]
