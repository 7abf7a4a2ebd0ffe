"""Corruption-stage monitor: fidelity scores of validation images during few-shot fine-tuning.

Wu, Zhang et al. (arXiv 2405.19931) observe that in few-shot fine-tuning of diffusion models the fidelity of
generations first rises, then *drops* while noisy patterns appear (the "corruption stage"), then recovers into
overfitting, ending in copies of the training images. Their evaluation (``eval_updated_v2.py`` of
``Nicholas0228/BNN-Finetuning-DMs``) measures CLIP-I/CLIP-T, DINO, LPIPS diversity and CLIP-IQA/BRISQUE on
the final model. :class:`FidelityMonitor` scores the trainer's validation images *at every validation step*,
so the three stages show up as curves, and writes them to ``<output_dir>/fidelity.jsonl`` (one JSON object
per validation: ``{"step": ..., "n_images": ..., <score>: ...}``) and to the accelerate trackers.

Scores, each present only when it can be computed here (the rest are skipped with one logged reason):

* ``style_score`` / ``artist_score`` -- the demo world's :class:`~artshield.models.demo.style.StyleMetric`:
  mean probability of the style named in the prompt / of the held-out artist style. Only for the demo model
  or a prompt that names a demo-world style (elsewhere its probabilities are meaningless).
* ``clip_i`` -- mean CLIP image-embedding cosine between generations and the instance images (the paper's
  CLIP-I; ViT-B-32 ``openai`` through open_clip), when :func:`artshield.models.clip.load_clip` finds the
  weights on disk (the local Hugging Face cache, or a given file). Nothing is downloaded; a ``.bin`` is
  read only with ``torch.load(weights_only=True)``.
* ``lpips_diversity`` -- mean pairwise LPIPS among the generations (the paper's diversity measure), via
  :func:`artshield.metrics.lpips_distance`, when its backbone weights are present.
* Weight-free scores, always available (instance images needed for the relative ones):

  - ``hf_energy`` -- mean squared 3x3 Laplacian response of the luminance (fine-grain noise energy), and
    ``hf_energy_ratio`` -- the same relative to the instance images: the corruption stage's noisy patterns
    push it well above 1;
  - ``nn_ssim`` / ``nn_rmse`` -- mean over generations of the SSIM to (RMSE from) the *nearest* instance
    image: they approach 1 / 0 when the model starts copying its training images;
  - ``dct_similarity`` -- mean over generations of the best cosine, over instance images, of the
    low-frequency colour-DCT descriptor of :class:`artshield.finetune.memorization.DCTDescriptor`: a
    weight-free stand-in for the paper's CLIP-I/DINO fidelity (layout and colours, tolerant of blur and
    small shifts), continuous where the style probability jumps between 0 and 1;
  - ``pixel_diversity`` -- mean pairwise RMSE among the generations (collapses when overfitting);
  - ``color_similarity`` -- histogram intersection of the generations' joint RGB histogram (8 bins a
    channel) with the instance images' (1 = same palette).

All images are centre-cropped to a square and resized to ``size`` pixels before scoring, so scores of runs at
different resolutions compare.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InvalidArgumentError
from ..models.demo.world import find_style as find_demo_style  # the demo world reads its own captions
from .memorization import DCTDescriptor

if TYPE_CHECKING:
    from ..models.clip import ClipModel

logger = logging.getLogger(__name__)

JSONL_NAME = "fidelity.jsonl"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_REFERENCE_IMAGES = 64  # few-shot sets are small; a large train_data_dir is subsampled (first files)
CLIP_MODEL = "ViT-B-32"
CLIP_PRETRAINED = "openai"

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


# --------------------------------------------------------------------------------------------------
# image helpers
# --------------------------------------------------------------------------------------------------


def _square(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize to ``size`` (bicubic), RGB."""
    image = image.convert("RGB")
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return image.resize((size, size), Image.BICUBIC) if side != size else image


def _to_tensor(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """(B, 3, size, size) float in [0, 1]."""
    arrays = [np.asarray(_square(im, size), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _luminance(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def high_frequency_energy(x: torch.Tensor) -> torch.Tensor:
    """Per image (B,): mean squared 3x3 Laplacian of the luminance (replicate padding), in [0, 1]^2 units."""
    lum = F.pad(_luminance(x), (1, 1, 1, 1), mode="replicate")
    return F.conv2d(lum, _LAPLACIAN.to(x)[None, None]).square().flatten(1).mean(dim=1)


def _rgb_histogram(x: torch.Tensor, bins: int = 8) -> torch.Tensor:
    """Normalised joint RGB histogram of all pixels of the batch, (bins^3,)."""
    q = (x.clamp(0, 1) * (bins - 1e-6)).long()
    index = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    hist = torch.bincount(index.flatten(), minlength=bins**3).double()
    return hist / hist.sum()


def _mean_pairwise(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _is_demo_model(spec: Any) -> bool:
    if spec is None:
        return False
    if str(spec) == "demo":
        return True
    try:
        from ..models.demo import DEMO_WEIGHTS

        return Path(spec).resolve() == DEMO_WEIGHTS.resolve()
    except (OSError, TypeError, ValueError):
        return False


def load_reference_images(folder: str | os.PathLike | None, limit: int = MAX_REFERENCE_IMAGES) -> list[Image.Image]:
    """The images of `folder` (sorted by name, at most `limit`); unreadable files are skipped with a log line."""
    if folder is None:
        return []
    path = Path(folder)
    if not path.is_dir():
        return []
    images = []
    for file in sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if len(images) >= limit:
            break
        try:
            with Image.open(file) as im:
                images.append(im.convert("RGB"))
        except OSError as exc:
            logger.info("fidelity monitor: skipping unreadable reference image %s (%s)", file, exc)
    return images


# --------------------------------------------------------------------------------------------------
# the monitor
# --------------------------------------------------------------------------------------------------


class FidelityMonitor:
    """Scores validation images for the corruption stage (Wu et al., arXiv 2405.19931) and logs them.

    Args:
        output_dir: where ``fidelity.jsonl`` is appended to (created if needed).
        reference_images: the instance / training images (PIL), for the relative scores; may be empty.
        style: a demo-world style to score (``style_score``), or None.
        use_style_metric: whether to load the demo style metric at all (demo model or a demo style prompt).
        size: side of the square every image is brought to before scoring.
        clip_model, clip_pretrained: the open_clip model and tag (or a local weights file) for ``clip_i``;
            only used when the weights are already on disk (:func:`artshield.models.clip.load_clip`).
        use_lpips: whether to try LPIPS diversity.

    Attributes:
        unavailable: score name -> why it is skipped (each was logged once).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        reference_images: Sequence[Image.Image] = (),
        style: str | None = None,
        use_style_metric: bool = False,
        size: int = 128,
        clip_model: str = CLIP_MODEL,
        clip_pretrained: str = CLIP_PRETRAINED,
        use_lpips: bool = True,
    ) -> None:
        if int(size) < 16:
            raise InvalidArgumentError(f"`size` must be at least 16 pixels, but is {size!r}.")
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / JSONL_NAME
        self.size = int(size)
        self.style = style
        self.reference_images = [im.convert("RGB") for im in reference_images]
        self._reference = _to_tensor(self.reference_images, self.size) if self.reference_images else None
        self._descriptor = DCTDescriptor()
        self._reference_descriptors = self._descriptor(self._reference) if self._reference is not None else None
        self.unavailable: dict[str, str] = {}
        self.style_metric = None
        if use_style_metric or style is not None:
            self._load_style_metric(style)
        else:
            self._skip("style_score", "the model is not the demo model and the prompt names no demo-world style")
            self.unavailable["artist_score"] = self.unavailable["style_score"]
        self._clip: ClipModel | None = None
        self._clip_reference: torch.Tensor | None = None
        if not self.reference_images:
            self._skip("clip_i", "no instance images to compare with")
            for name in ("hf_energy_ratio", "nn_ssim", "nn_rmse", "dct_similarity", "color_similarity"):
                self.unavailable[name] = "no instance images to compare with"
        else:
            from ..models.clip import load_clip

            self._clip, reason = load_clip(clip_model, clip_pretrained)
            if self._clip is None:
                self._skip("clip_i", reason)
        self.use_lpips = False
        if use_lpips:
            from ..metrics import lpips_unavailable_reason

            reason = lpips_unavailable_reason("alex")  # logs its own reason (with how to enable) once
            if reason is None:
                self.use_lpips = True
            else:
                self.unavailable["lpips_diversity"] = reason
        logger.info(
            "fidelity monitor: writing %s; skipped scores: %s", self.path, ", ".join(sorted(self.unavailable)) or "none"
        )

    def _skip(self, name: str, reason: str) -> None:
        self.unavailable[name] = reason
        logger.info("fidelity monitor: no %s: %s.", name, reason)

    def _load_style_metric(self, style: str | None) -> None:
        from ..errors import ModelLoadError
        from ..models.demo.style import StyleMetric

        try:
            self.style_metric = StyleMetric.load_default()
        except ModelLoadError as exc:
            self._skip("style_score", str(exc).rstrip("."))
            self.unavailable["artist_score"] = self.unavailable["style_score"]
            return
        if style is not None and style not in self.style_metric.styles:
            self._skip("style_score", f"the demo style metric does not know the style {style!r}")
            self.style = None
        elif style is None:
            self._skip("style_score", "the prompt names no demo-world style (artist_score only)")

    # ------------------------------------------------------------------ construction from a trainer's args
    @classmethod
    def from_args(cls, args: argparse.Namespace, output_dir: str | os.PathLike) -> FidelityMonitor:
        """Configure from a trainer's diffusers-style namespace (reads, never adds, flags).

        Uses ``validation_prompt`` / ``instance_prompt`` (which demo style to score), ``instance_data_dir`` or
        ``train_data_dir`` (the reference images), ``pretrained_model_name_or_path`` (demo model or not) and
        ``resolution`` (the scoring size, at most 256).
        """
        prompts = (getattr(args, "validation_prompt", None), getattr(args, "instance_prompt", None))
        style = find_demo_style(*prompts)
        is_demo = _is_demo_model(getattr(args, "pretrained_model_name_or_path", None))
        folder = getattr(args, "instance_data_dir", None) or getattr(args, "train_data_dir", None)
        references = load_reference_images(folder)
        resolution = getattr(args, "resolution", None)
        size = min(int(resolution), 256) if isinstance(resolution, int) and resolution >= 16 else 128
        return cls(
            output_dir,
            reference_images=references,
            style=style,
            use_style_metric=is_demo or style is not None,
            size=size,
        )

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def scores(self, images: Sequence[Image.Image], device: torch.device | str | None = None) -> dict[str, float]:
        """Every available score of `images` (PIL), as plain floats (non-finite values are dropped)."""
        if not images:
            raise InvalidArgumentError("`images` must hold at least one validation image, but is empty.")
        x = _to_tensor(images, self.size)
        out: dict[str, float | None] = {}
        if self.style_metric is not None:
            probs = self.style_metric.probabilities(x)
            out["artist_score"] = float(probs[:, self.style_metric.artist_index].mean())
            if self.style is not None:
                out["style_score"] = float(probs[:, self.style_metric.styles.index(self.style)].mean())
        hf = high_frequency_energy(x)
        out["hf_energy"] = float(hf.mean())
        pairs = list(itertools.combinations(range(x.shape[0]), 2))
        out["pixel_diversity"] = _mean_pairwise([float((x[i] - x[j]).square().mean().sqrt()) for i, j in pairs])
        if self._reference is not None:
            from ..metrics import ssim

            ref = self._reference
            ref_hf = float(high_frequency_energy(ref).mean())
            out["hf_energy_ratio"] = out["hf_energy"] / ref_hf if ref_hf > 0 else None
            rmse = (x[:, None] - ref[None]).square().flatten(2).mean(dim=2).sqrt()  # (G, R)
            out["nn_rmse"] = float(rmse.min(dim=1).values.mean())
            best = []
            for g in range(x.shape[0]):
                sims = ssim(x[g : g + 1].expand(ref.shape[0], -1, -1, -1), ref)
                best.append(float(sims.max()))
            out["nn_ssim"] = float(np.mean(best))
            cosines = self._descriptor(x) @ self._reference_descriptors.T  # (G, R)
            out["dct_similarity"] = float(cosines.max(dim=1).values.mean())
            out["color_similarity"] = float(torch.minimum(_rgb_histogram(x), _rgb_histogram(ref)).sum())
        if self._clip is not None:
            dev = torch.device(device) if device is not None else torch.device("cpu")
            self._clip.to(dev)
            if self._clip_reference is None:
                self._clip_reference = self._clip.embed_pil(self.reference_images)
            gen = self._clip.embed_pil(images)
            out["clip_i"] = float((gen @ self._clip_reference.T).mean())
        if self.use_lpips and pairs:
            from ..metrics import lpips_distance

            a = torch.stack([x[i] for i, _ in pairs])
            b = torch.stack([x[j] for _, j in pairs])
            dist = lpips_distance(a, b)
            if dist is not None:
                out["lpips_diversity"] = float(dist.mean())
        return {k: v for k, v in out.items() if v is not None and math.isfinite(v)}

    def log(self, step: int, images: list[Image.Image], accelerator=None) -> dict[str, Any]:
        """Score `images` at `step`, append ``{"step", "n_images", scores...}`` to ``fidelity.jsonl``, log.

        With an accelerate `accelerator`, the scores also go to its trackers as ``fidelity/<name>`` (every
        process calls ``accelerator.log``, which only the main process acts on); only the main process writes
        the file. Returns the record.
        """
        device = getattr(accelerator, "device", None)
        record: dict[str, Any] = {"step": int(step), "n_images": len(images), **self.scores(images, device)}
        if accelerator is None or getattr(accelerator, "is_main_process", True):
            self.output_dir.mkdir(parents=True, exist_ok=True)
            # One write of one complete line (append mode): an interruption never leaves half a record.
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        if accelerator is not None:
            accelerator.log({f"fidelity/{k}": v for k, v in record.items() if k not in ("step", "n_images")}, step=step)
        logger.info(
            "fidelity @ step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k not in ("step", "n_images"))
        )
        return record


def read_fidelity_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``fidelity.jsonl`` (a file or its folder), in file order; a torn last line is ignored."""
    path = Path(path)
    if path.is_dir():
        path = path / JSONL_NAME
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


__all__ = ["FidelityMonitor", "find_demo_style", "high_frequency_energy", "load_reference_images", "read_fidelity_log"]
