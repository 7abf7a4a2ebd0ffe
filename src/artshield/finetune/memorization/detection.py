"""Detection of memorized prompts (Wen et al., "Detecting, Explaining, and Mitigating Memorization in Diffusion
Models", ICLR 2024): the text-conditional noise-prediction magnitude over the first DDIM steps, a threshold
calibrated on non-memorized prompts, and the JSON report of ``artshield memorization detect``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import InvalidArgumentError
from ...models.handle import DiffusionModel
from .near_duplicates import NearDuplicateIndex
from .sampling import SamplerConfig, check_prompts, check_seeds, check_text_to_image, expand_prompts, sample


@dataclass
class PromptScore:
    """Detection result for one prompt over its seeds."""

    prompt: str
    metric: float
    per_seed: list[float]
    per_step: list[float]
    near_duplicate: dict | None = None

    def to_json(self) -> dict:
        out = {"prompt": self.prompt, "metric": self.metric, "per_seed": self.per_seed, "per_step": self.per_step}
        if self.near_duplicate is not None:
            out["near_duplicate"] = self.near_duplicate
        return out


def score_prompts(
    model: DiffusionModel,
    prompts: Sequence[str],
    *,
    seeds: Sequence[int] = (0, 1, 2, 3),
    steps: int = 10,
    sampler: SamplerConfig | None = None,
    index: NearDuplicateIndex | None = None,
    decode: bool | None = None,
    embed_transform: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None,
    progress: bool = False,
    desc: str = "detect",
) -> tuple[list[PromptScore], torch.Tensor | None]:
    """Wen et al.'s detection metric for every prompt, and near-duplicate matches when `index` is given.

    Each prompt is generated once per seed; its metric is the mean over seeds of the mean over the first
    `steps` DDIM steps of ``||eps(x_t, c) - eps(x_t, "")||_2``. With `index`, the full generations are
    decoded and matched against the training images; ``near_duplicate`` holds the best similarity over seeds,
    the training image it matched, per-seed similarities and the fraction of seeds above the descriptor's
    replication threshold.

    Args:
        embed_transform: optional ``f(embeds (1, L, D), prompt_index, seed) -> embeds`` applied to each
            prompt embedding before sampling (the robustness re-check perturbs embeddings with it).
        decode: decode full generations even without `index` (to save or score them); default: only with
            `index`.

    Returns:
        (scores, images): images are (len(prompts) * len(seeds), 3, H, W), prompt-major, or None.
    """
    prompts = check_prompts(prompts)
    seeds = check_seeds(seeds)
    if int(steps) < 1:
        raise InvalidArgumentError(f"`steps` must be >= 1, but is {steps!r}.")
    decode = index is not None if decode is None else bool(decode or index is not None)
    base = model.embed_prompt(prompts)
    rows = []
    for i in range(len(prompts)):
        for s in seeds:
            e = base[i : i + 1]
            rows.append(embed_transform(e, i, s) if embed_transform is not None else e)
    embeds = torch.cat(rows)
    _, all_seeds = expand_prompts(prompts, seeds)
    result = sample(model, embeds, all_seeds, sampler, track_steps=int(steps), decode=decode, progress=progress, desc=desc)
    per_image = result.norms.mean(dim=1).view(len(prompts), len(seeds))
    per_step = result.norms.view(len(prompts), len(seeds), -1).mean(dim=1)
    matches = index.query(result.images) if index is not None else None
    scores = []
    for i, prompt in enumerate(prompts):
        near = None
        if matches is not None:
            mine = matches[i * len(seeds) : (i + 1) * len(seeds)]
            best = max(range(len(mine)), key=lambda k: mine[k].similarity)
            near = {
                "max_similarity": mine[best].similarity,
                "matched": mine[best].path,
                "matched_seed": seeds[best],
                "per_seed": [m.similarity for m in mine],
                "per_seed_matched": [m.path for m in mine],
                "replicated_fraction": float(np.mean([m.similarity > index.descriptor.threshold for m in mine])),
            }
        scores.append(
            PromptScore(
                prompt=prompt,
                metric=float(per_image[i].mean()),
                per_seed=[float(v) for v in per_image[i]],
                per_step=[float(v) for v in per_step[i]],
                near_duplicate=near,
            )
        )
    return scores, result.images


def calibrate_threshold(reference_scores: Sequence[float], fpr: float = 0.05) -> float:
    """The smallest threshold that flags at most `fpr` of the reference (non-memorized) prompts.

    ``score > threshold`` flags a prompt; the threshold is the k-th smallest reference score with
    ``k = n - floor(fpr * n)``, so at most ``floor(fpr * n)`` references lie above it (with fewer than
    ``1 / fpr`` references it is their maximum).
    """
    ref = np.asarray(list(reference_scores), dtype=np.float64)
    if ref.size == 0:
        raise InvalidArgumentError("`reference_scores` must hold at least one score, but is empty.")
    if not 0.0 <= fpr < 1.0:
        raise InvalidArgumentError(f"`fpr` must be in [0, 1), but is {fpr!r}.")
    k = ref.size - math.floor(fpr * ref.size)
    return float(np.sort(ref)[k - 1])


def detect(
    model: DiffusionModel,
    prompts: Sequence[str],
    *,
    reference_prompts: Sequence[str] | None = None,
    threshold: float | None = None,
    fpr: float = 0.05,
    seeds: Sequence[int] = (0, 1, 2, 3),
    steps: int = 10,
    sampler: SamplerConfig | None = None,
    index: NearDuplicateIndex | None = None,
    decode: bool = False,
    progress: bool = False,
) -> tuple[dict, torch.Tensor | None]:
    """Score `prompts` (and `reference_prompts`), flag memorized ones, and build the JSON report.

    The threshold is `threshold` when given, else calibrated on the reference prompts at `fpr`, else
    none (scores only). With reference prompts the report holds the ROC AUC of prompts vs references (with
    a bootstrap CI), meaningful when `prompts` are the suspected-memorized set.

    Returns:
        (report, images): images of `prompts` (prompt-major, seeds inner) when decoded, else None.
    """
    from ...stats import bootstrap_ci, roc_auc

    check_text_to_image(model)
    sampler = sampler or SamplerConfig()
    resolution = sampler.check(model)
    seeds = check_seeds(seeds)
    scores, images = score_prompts(
        model, prompts, seeds=seeds, steps=steps, sampler=sampler, index=index, decode=decode, progress=progress
    )
    references = None
    if reference_prompts is not None:
        references, _ = score_prompts(
            model, reference_prompts, seeds=seeds, steps=steps, sampler=sampler, index=index, progress=progress,
            desc="reference",
        )
    if threshold is not None:
        threshold_info = {"value": float(threshold), "source": "given"}
    elif references is not None:
        threshold = calibrate_threshold([r.metric for r in references], fpr)
        threshold_info = {"value": threshold, "source": "calibrated on reference prompts", "fpr": fpr}
    else:
        threshold_info = {"value": None, "source": "none (pass --threshold or --reference-prompts to flag prompts)"}
    rows = []
    for s in scores:
        row = s.to_json()
        row["flagged"] = None if threshold is None else bool(s.metric > threshold)
        rows.append(row)
    report: dict = {
        "tool": "artshield memorization detect",
        "method": "Wen et al. ICLR 2024: mean ||eps(x_t,c) - eps(x_t,'')||_2 over the first DDIM steps and seeds",
        "model": model.source,
        "config": {**sampler.report(seeds, steps, resolution), "prediction_type": model.prediction_type},
        "threshold": threshold_info,
        "prompts": rows,
        "summary": {
            "n_prompts": len(scores),
            "mean_metric": float(np.mean([s.metric for s in scores])),
            "n_flagged": None if threshold is None else int(sum(r["flagged"] for r in rows)),
        },
    }
    if index is not None:
        report["near_duplicates"] = {
            "descriptor": index.descriptor.describe(),
            "training_images": len(index.paths),
            "skipped": [f"{p}: {why}" for p, why in index.skipped],
        }
        report["summary"]["n_replicated"] = int(
            sum(s.near_duplicate["max_similarity"] > index.descriptor.threshold for s in scores)
        )
    if references is not None:
        ref_rows = [r.to_json() for r in references]
        for row, r in zip(ref_rows, references, strict=True):
            row["flagged"] = bool(r.metric > threshold) if threshold is not None else None
        report["reference_prompts"] = ref_rows
        pos, neg = np.array([s.metric for s in scores]), np.array([r.metric for r in references])
        auc = roc_auc(pos, neg)
        _, low, high = bootstrap_ci((pos, neg), roc_auc, n=1000, seed=0)
        report["auc"] = {"value": auc, "ci95": [low, high], "note": "prompts (positives) vs reference prompts"}
        if index is not None:
            pos_sim = np.array([s.near_duplicate["max_similarity"] for s in scores])
            neg_sim = np.array([r.near_duplicate["max_similarity"] for r in references])
            report["auc_near_duplicate"] = {"value": roc_auc(pos_sim, neg_sim), "note": "max similarity, same split"}
    return report, images


__all__ = ["PromptScore", "calibrate_threshold", "detect", "score_prompts"]
