"""Measuring a model state for memorization pruning: memorization of the memorized prompts, utility on other
prompts (the demo style metric, CLIP score, closeness to the unpruned generations), and the Finding-Dori
re-check with perturbed prompt embeddings (arXiv 2507.16880; random directions, not optimised)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InvalidArgumentError, ModelLoadError, ModelNotFoundError
from ...models.demo.world import parse_world_caption, style_captions
from ...models.handle import DiffusionModel
from .detection import score_prompts
from .near_duplicates import NearDuplicateIndex
from .sampling import SamplerConfig, check_seeds, expand_prompts

DEFAULT_PERTURBATIONS = (0.01, 0.05, 0.1)
#: Utility prompts for models other than the demo (generic scenes, COCO-like captions).
GENERIC_UTILITY_PROMPTS = (
    "a photo of a dog sitting on a sofa",
    "a bowl of fruit on a wooden table",
    "a city street at night with cars",
    "a mountain lake under a cloudy sky",
)


def default_utility_prompts(model: DiffusionModel) -> list[str]:
    """Utility prompts when none are given: one world caption per training style for the demo model
    (:func:`artshield.models.demo.world.style_captions`), generic scenes otherwise."""
    if model.source == "demo":
        return style_captions()
    return list(GENERIC_UTILITY_PROMPTS)


class ClipScorer:
    """CLIP score (cosine of open_clip image and text embeddings, as ConceptPrune reports it) from a local
    weights file, loaded by :func:`artshield.models.clip.load_clip` (nothing is downloaded; a ``.bin``/``.pt``
    only through ``torch.load(weights_only=True)``). A file that is missing or does not load is an error:
    the user asked for this score."""

    def __init__(self, weights: str | os.PathLike, arch: str = "ViT-B-32", device: torch.device | str = "cpu") -> None:
        from ...models.clip import load_clip

        path = Path(os.fspath(weights)).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"CLIP weights {path}: no such file.")
        loaded, reason = load_clip(arch, str(path), device=device)
        if loaded is None:
            raise ModelLoadError(f"CLIP weights {path}: {reason}.")
        self.clip = loaded
        self.arch, self.path = arch, path

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """(B,) cosine of each [0, 1] image (B, 3, H, W) with its prompt."""
        return (self.clip.embed_images(images) * self.clip.embed_text(prompts)).sum(dim=-1)


@dataclass
class Evaluation:
    """Memorization and utility of one model state (before or after pruning)."""

    memorization: dict
    utility: dict
    memorized_images: torch.Tensor | None
    utility_images: torch.Tensor | None


def _mean(values) -> float:
    return float(np.mean(list(values)))


def evaluate_model(
    model: DiffusionModel,
    memorized_prompts: Sequence[str],
    utility_prompts: Sequence[str],
    *,
    seeds: Sequence[int] = (0, 1, 2, 3),
    steps: int = 10,
    sampler: SamplerConfig | None = None,
    index: NearDuplicateIndex | None = None,
    style_metric=None,
    clip: ClipScorer | None = None,
    reference: Evaluation | None = None,
    progress: bool = False,
) -> Evaluation:
    """Measure memorization on `memorized_prompts` and utility on `utility_prompts`.

    Memorization: Wen et al.'s metric per prompt and, with `index`, the best near-duplicate similarity.
    Utility: the text-conditional norm on the utility prompts (how strongly text still steers them); the
    demo style metric's accuracy and mean probability of the captioned style when every utility prompt is a
    demo-world caption and `style_metric` is given; CLIP score with `clip`; and with `reference` (the
    evaluation before pruning, same seeds) SSIM / PSNR / LPIPS of each generation to the original one.
    """
    from ...metrics import finite_psnr, lpips_distance, ssim

    seeds = check_seeds(seeds)
    mem_scores, mem_images = score_prompts(
        model, memorized_prompts, seeds=seeds, steps=steps, sampler=sampler, index=index, decode=True,
        progress=progress, desc="memorized prompts",
    )
    memorization: dict = {
        "mean_metric": _mean(s.metric for s in mem_scores),
        "prompts": [s.to_json() for s in mem_scores],
    }
    if index is not None:
        memorization["mean_max_similarity"] = _mean(s.near_duplicate["max_similarity"] for s in mem_scores)
        memorization["replicated_fraction"] = _mean(s.near_duplicate["replicated_fraction"] for s in mem_scores)
    util_scores, util_images = score_prompts(
        model, utility_prompts, seeds=seeds, steps=steps, sampler=sampler, decode=True, progress=progress,
        desc="utility prompts",
    )
    utility: dict = {
        "prompts": list(utility_prompts),
        "mean_text_conditional_norm": _mean(s.metric for s in util_scores),
    }
    texts, _ = expand_prompts(utility_prompts, seeds)
    parsed = [parse_world_caption(p) for p in utility_prompts]
    if style_metric is not None and all(parsed):
        wanted = [parsed[i][1] for i in range(len(utility_prompts)) for _ in seeds]
        with torch.no_grad():
            probs = style_metric.probabilities(util_images)
        predicted = [style_metric.styles[i] for i in probs.argmax(dim=1).tolist()]
        utility["style_accuracy"] = _mean(p == w for p, w in zip(predicted, wanted, strict=True))
        utility["style_score"] = _mean(float(probs[i, style_metric.styles.index(w)]) for i, w in enumerate(wanted))
    elif style_metric is not None:
        utility["style_note"] = "style metric skipped: not every utility prompt is a demo-world caption"
    if clip is not None:
        utility["clip_score"] = float(clip(util_images, texts).mean())
        utility["clip_model"] = f"{clip.arch} ({clip.path.name})"
    if reference is not None and reference.utility_images is not None:
        before = reference.utility_images
        utility["ssim_to_original"] = float(ssim(util_images, before).mean())
        utility["psnr_to_original_db"] = float(finite_psnr(util_images, before).mean())
        distance = lpips_distance(util_images, before)
        if distance is not None:
            utility["lpips_to_original"] = float(distance.mean())
        ref_norm = reference.utility["mean_text_conditional_norm"]
        utility["text_conditional_norm_ratio"] = utility["mean_text_conditional_norm"] / ref_norm if ref_norm else None
        if reference.memorized_images is not None:
            memorization["ssim_to_original"] = float(ssim(mem_images, reference.memorized_images).mean())
    return Evaluation(memorization=memorization, utility=utility, memorized_images=mem_images, utility_images=util_images)


def perturb_embedding(embeds: torch.Tensor, magnitude: float, generator: torch.Generator) -> torch.Tensor:
    """Add to each token embedding a random direction of norm ``magnitude * ||token||`` (relative noise)."""
    noise = torch.randn(embeds.shape, generator=generator, dtype=torch.float32)
    noise = F.normalize(noise, dim=-1) * embeds.float().norm(dim=-1, keepdim=True).cpu() * float(magnitude)
    return (embeds.float() + noise.to(embeds.device)).to(embeds.dtype)


def robustness_check(
    model: DiffusionModel,
    memorized_prompts: Sequence[str],
    magnitudes: Sequence[float] = DEFAULT_PERTURBATIONS,
    *,
    seeds: Sequence[int] = (0, 1, 2, 3),
    steps: int = 10,
    sampler: SamplerConfig | None = None,
    index: NearDuplicateIndex | None = None,
    progress: bool = False,
) -> list[dict]:
    """Memorization metrics with randomly perturbed prompt embeddings (the Finding-Dori re-check).

    For each relative magnitude, every prompt/seed pair gets its own perturbation, drawn from a generator
    seeded by (seed, prompt, magnitude), so the same perturbations are used before and after pruning.
    """
    seeds = check_seeds(seeds)
    results = []
    for m_index, magnitude in enumerate(magnitudes):
        if not magnitude >= 0:
            raise InvalidArgumentError(f"perturbation magnitudes must be >= 0, but include {magnitude!r}.")

        def transform(e: torch.Tensor, p_index: int, seed: int, magnitude=magnitude, m_index=m_index) -> torch.Tensor:
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + p_index * 1_009 + m_index + 7)
            return perturb_embedding(e, magnitude, g)

        scores, _ = score_prompts(
            model, memorized_prompts, seeds=seeds, steps=steps, sampler=sampler, index=index,
            embed_transform=transform, progress=progress, desc=f"re-check {magnitude:g}",
        )
        row = {"magnitude": float(magnitude), "mean_metric": _mean(s.metric for s in scores)}
        if index is not None:
            row["mean_max_similarity"] = _mean(s.near_duplicate["max_similarity"] for s in scores)
            row["replicated_fraction"] = _mean(s.near_duplicate["replicated_fraction"] for s in scores)
        results.append(row)
    return results


__all__ = [
    "DEFAULT_PERTURBATIONS",
    "GENERIC_UTILITY_PROMPTS",
    "ClipScorer",
    "Evaluation",
    "default_utility_prompts",
    "evaluate_model",
    "perturb_embedding",
    "robustness_check",
]
