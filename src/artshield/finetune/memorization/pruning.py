"""``prune``: evaluate, locate, prune, evaluate again, re-check, and save the edited checkpoint, with the JSON
report of ``artshield memorization prune``."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ...models.handle import DiffusionModel
from .checkpoint import check_checkpoint_output, save_pruned_checkpoint
from .evaluation import (
    DEFAULT_PERTURBATIONS,
    ClipScorer,
    Evaluation,
    default_utility_prompts,
    evaluate_model,
    robustness_check,
)
from .location import MemorizationMasks, apply_masks, check_location_args, locate_memorization
from .near_duplicates import NearDuplicateIndex
from .sampling import SamplerConfig, check_prompts, check_seeds, check_text_to_image

logger = logging.getLogger(__name__)

@dataclass
class PruneResult:
    """What :func:`prune` returns: the masks, the report, the evaluations and where the checkpoint went."""

    masks: MemorizationMasks
    report: dict
    before: Evaluation | None
    after: Evaluation | None
    output: Path | None


def prune(
    model: DiffusionModel,
    memorized_prompts: Sequence[str],
    *,
    base_prompts: Sequence[str] = ("",),
    utility_prompts: Sequence[str] | None = None,
    layers: Sequence[str] = ("ffn2",),
    ratio: float = 0.01,
    timesteps: int = 10,
    locate_seeds: Sequence[int] = (0,),
    include_unconditional: bool = True,
    seeds: Sequence[int] = (0, 1, 2, 3),
    steps: int = 10,
    sampler: SamplerConfig | None = None,
    index: NearDuplicateIndex | None = None,
    style_metric=None,
    clip: ClipScorer | None = None,
    perturbations: Sequence[float] = DEFAULT_PERTURBATIONS,
    evaluate: bool = True,
    output: str | os.PathLike | None = None,
    overwrite: bool = False,
    save_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> PruneResult:
    """Evaluate, locate, prune (in place), evaluate again, re-check, and save the edited checkpoint.

    `model` is modified in place (its UNet loses the located weights). With ``evaluate=False`` only the
    location and pruning run. With `output` the checkpoint (with masks, statistics and this report) is
    written atomically there (converted to `save_dtype` when given).
    """
    check_text_to_image(model)
    memorized_prompts = check_prompts(memorized_prompts, "memorized_prompts")
    sampler = sampler or SamplerConfig()
    resolution = sampler.check(model)
    seeds = check_seeds(seeds)
    check_seeds(locate_seeds)
    check_prompts(base_prompts, "base_prompts")
    check_location_args(model, layers, ratio, timesteps, sampler)  # fail before minutes of evaluation
    if output is not None:  # fail before minutes of work, not after
        check_checkpoint_output(model.source, output, overwrite=overwrite)
    utility_prompts = check_prompts(utility_prompts, "utility_prompts") if utility_prompts is not None else default_utility_prompts(model)
    eval_kwargs = {"seeds": seeds, "steps": steps, "sampler": sampler, "index": index, "progress": progress}
    before = after = None
    robustness: dict = {}
    if evaluate:
        before = evaluate_model(model, memorized_prompts, utility_prompts, style_metric=style_metric, clip=clip, **eval_kwargs)
        if perturbations:
            robustness["before"] = robustness_check(model, memorized_prompts, perturbations, **eval_kwargs)
    masks = locate_memorization(
        model, memorized_prompts, base_prompts, layers=layers, ratio=ratio, timesteps=timesteps, seeds=locate_seeds,
        sampler=sampler, include_unconditional=include_unconditional, progress=progress,
    )
    pruned = apply_masks(model.unet, masks)
    logger.info("pruned %d weights", pruned)
    if evaluate:
        after = evaluate_model(
            model, memorized_prompts, utility_prompts, style_metric=style_metric, clip=clip, reference=before, **eval_kwargs
        )
        if perturbations:
            robustness["after"] = robustness_check(model, memorized_prompts, perturbations, **eval_kwargs)
    report: dict = {
        "tool": "artshield memorization prune",
        "model": model.source,
        "output": None if output is None else str(output),
        "config": {
            **sampler.report(seeds, steps, resolution),
            "utility_prompts": utility_prompts,
            "perturbations": [float(m) for m in perturbations],
        },
        "location": masks.stats(),
        "pruned_weights": pruned,
    }
    if evaluate:
        report["memorization"] = {"before": before.memorization, "after": after.memorization}
        report["utility"] = {"before": before.utility, "after": after.utility}
        if index is not None:
            report["near_duplicates"] = {"descriptor": index.descriptor.describe(), "training_images": len(index.paths)}
        if robustness:
            report["robustness"] = {
                "method": "random relative perturbations of the prompt token embeddings (Finding Dori re-check; "
                "random directions, not optimised)",
                **robustness,
            }
        report["summary"] = _summary(before, after, robustness, index)
    saved = None
    if output is not None:
        saved = save_pruned_checkpoint(model, masks, output, report=report, overwrite=overwrite, dtype=save_dtype)
    return PruneResult(masks=masks, report=report, before=before, after=after, output=saved)


def _summary(before: Evaluation, after: Evaluation, robustness: dict, index: NearDuplicateIndex | None) -> dict:
    summary = {
        "memorization_metric": [before.memorization["mean_metric"], after.memorization["mean_metric"]],
        "utility_text_conditional_norm": [
            before.utility["mean_text_conditional_norm"], after.utility["mean_text_conditional_norm"]
        ],
    }
    if index is not None:
        summary["max_similarity"] = [before.memorization["mean_max_similarity"], after.memorization["mean_max_similarity"]]
        summary["replicated_fraction"] = [before.memorization["replicated_fraction"], after.memorization["replicated_fraction"]]
    for key in ("style_accuracy", "style_score", "clip_score"):
        if key in before.utility and key in after.utility:
            summary[f"utility_{key}"] = [before.utility[key], after.utility[key]]
    if "ssim_to_original" in after.utility:
        summary["utility_ssim_to_original"] = after.utility["ssim_to_original"]
    if "after" in robustness:
        key = "mean_max_similarity" if index is not None else "mean_metric"
        summary[f"recheck_{key}_after"] = {str(r["magnitude"]): r[key] for r in robustness["after"]}
    summary["note"] = "pairs are [before, after] pruning"
    return summary


__all__ = ["PruneResult", "prune"]
