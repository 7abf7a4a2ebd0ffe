"""The evaluation harness: does a protection still spoil mimicry after the mimic purifies the images?

For a folder of an artist's clean images and one or more folders of their protected versions (matched by
file stem, as ``protect`` names its outputs; :mod:`.image_sets`), :func:`evaluate` runs every mimicry attack
(:mod:`.mimicry`) on

* the clean images (the baseline: what the mimic gets without protection), and
* each protected set after each purification (:mod:`.purify`; ``none`` included),

scores what the mimic obtains, and compares. Every attack produces *paired* outputs (same prompts, seeds
and masks for every input set), so the effect of a protection is measured on the same draws, and the
confidence intervals come from one paired bootstrap over output items shared by all conditions. The
headline is the **worst case over purifications** (the purification that restores mimicry best, chosen
inside each bootstrap resample, so its interval accounts for the choice), as Hönig et al. (2024) and
BlurGuard report.

Scores of the mimic's outputs (``SCORES``): the demo style metric's artist probability (when a style
metric is given; the demo model's by default) and a second, independent judge's (the demo world's colour-blind
structure judge, :mod:`artshield.models.demo.judge`), KID and Fréchet distance to the artist's clean images in a
handcrafted feature space (:mod:`.feature_distance`), CLIP score when its weights are present; for
image-to-image attacks also SSIM/PSNR/LPIPS of each output to the one made from the clean image with the
same seed (PhotoGuard's measure of how far protection pushes an edit). Scores of the protected images
themselves: PSNR, SSIM, LPIPS (when present) and L∞ against the originals.

A cell whose mimic is an external tool that fails (:class:`~.mimicry.CellFailed`) is listed in the report's
``failed`` with the reason and left out of the comparisons; the other cells go on. An attack that trains
several times (one run per training seed, ``MimicryOutput.groups``) gets a two-stage bootstrap: runs, then
outputs within runs.

Long runs resume: every (attack, input set) cell is stored under ``<output>/cells/`` with a fingerprint of
everything that determines it, and reused when the fingerprint matches; purified inputs likewise under
``<output>/inputs/``. Results are written atomically: ``report.json`` (:func:`evaluate` returns the same
dict), ``report.html`` with image grids and a plot (:mod:`.report`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import InvalidArgumentError, OutputWriteError
from ..fileio import write_json_atomic
from ..imageio import as_rgb, read_image, write_png
from ..metrics import image_report, lpips_distance, lpips_unavailable_reason, psnr, ssim
from . import feature_distance as fdist
from .clip_score import clip_score, clip_unavailable_reason
from .image_sets import CLEAN, ImageSets, check_output_folder, load_image_sets
from .mimicry import CellFailed, Mimicry, MimicryOutput, images_digest, settings_digest
from .purify_base import Purification, image_seed
from .purify_spec import get_purification
from .report import safe_name, write_report

logger = logging.getLogger(__name__)

NO_PURIFICATION = "none"

#: name -> (direction, kind, description). direction +1: higher means the mimic got closer to the artist;
#: -1: lower does. kind "item": one value per output (paired bootstrap of the mean); "set": a set statistic.
SCORES: dict[str, tuple[int, str, str]] = {
    "artist_score": (+1, "item", "probability of the artist's style by the style metric (demo world only)"),
    "structure_score": (+1, "item", "probability of the artist's style by the structure judge, a colour-blind CNN "
                                    "trained separately (demo world only)"),
    "clip_score": (+1, "item", "CLIP image-prompt similarity ×100 (when open_clip weights are present)"),
    "kid": (-1, "set", "KID to the artist's clean images in handcrafted colour/texture features (FID-like, unbiased)"),
    "fd": (-1, "set", "Fréchet distance to the artist's clean images in the same features (FID's formula)"),
    "ssim_to_clean": (+1, "item", "SSIM of each output to the output from the clean image with the same seed"),
    "psnr_to_clean": (+1, "item", "PSNR (dB) of each output to the output from the clean image with the same seed"),
    "lpips_to_clean": (-1, "item", "LPIPS of each output to the output from the clean image with the same seed"),
}
#: Scores that need a clean baseline different from themselves (the *_to_clean ones compare to it directly).
BASELINED = ("artist_score", "structure_score", "clip_score", "kid", "fd")


@dataclass
class Condition:
    """One input set a mimicry attack runs on: an image set (``clean`` or a protected label) after a purification."""

    image_set: str
    purification: str

    @property
    def name(self) -> str:
        return f"{self.image_set}+{self.purification}"

    @property
    def folder(self) -> str:
        return safe_name(self.name)


# ------------------------------------------------------------------------------------------------ caching
def _read_cached(folder: Path, fingerprint: str) -> dict | None:
    meta = folder / "cell.json"
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("fingerprint") != fingerprint:
        return None
    if not all((folder / "images" / f"{i:04d}.png").is_file() for i in range(len(data.get("keys", [])))):
        return None
    return data


def _store(folder: Path, fingerprint: str, images: Sequence[torch.Tensor], meta: dict) -> list[torch.Tensor]:
    """Write images as 8-bit PNGs and ``cell.json`` last; return the images as read back (quantised)."""
    if folder.exists():
        shutil.rmtree(folder / "images", ignore_errors=True)
    stored = []
    for i, image in enumerate(images):
        path = folder / "images" / f"{i:04d}.png"
        write_png(path, image)
        stored.append(read_image(path).rgb[0])
    write_json_atomic(folder / "cell.json", {**meta, "fingerprint": fingerprint})
    return stored


def _load_images(folder: Path, count: int) -> list[torch.Tensor]:
    return [read_image(folder / "images" / f"{i:04d}.png").rgb[0] for i in range(count)]


def purified_inputs(images: list[torch.Tensor], names: list[str], purification: Purification, folder: Path,
                    seed: int) -> list[torch.Tensor]:
    """The purified images, saved as 8-bit PNGs as a mimic would (reused when already made with the same settings)."""
    fingerprint = settings_digest({"inputs": images_digest(images), "purification": purification.config,
                           "name": purification.name, "seed": seed, "version": __version__})  # fmt: skip
    cached = _read_cached(folder, fingerprint)
    if cached is not None:
        return _load_images(folder, len(cached["keys"]))
    out = []
    for name, image in zip(names, images, strict=True):
        generator = torch.Generator().manual_seed(image_seed(seed, name))
        with torch.no_grad():
            out.append(purification(image[None], generator=generator)[0].clamp(0, 1))
    return _store(folder, fingerprint, out, {"keys": names, "purification": purification.spec})


def run_cell(mimicry: Mimicry, images: list[torch.Tensor], folder: Path) -> tuple[MimicryOutput, bool]:
    """Run (or reuse) one mimicry attack on one input set; outputs are 8-bit as saved. Returns (output, reused)."""
    fingerprint = settings_digest({"mimicry": mimicry.config, "inputs": images_digest(images), "version": __version__})
    cached = _read_cached(folder, fingerprint)
    if cached is not None:
        images_out = _load_images(folder, len(cached["keys"]))
        return MimicryOutput(images_out, cached["prompts"], cached["keys"], cached["sources"], cached["info"],
                             cached.get("groups", []), cached.get("stages", []), cached.get("seconds")), True
    start = time.perf_counter()
    output = mimicry(images, folder / "work")
    output.seconds = round(time.perf_counter() - start, 1)
    meta = {"keys": output.keys, "prompts": output.prompts, "sources": output.sources, "info": output.info,
            "groups": output.groups, "stages": output.stages, "seconds": output.seconds}  # fmt: skip
    output.images = _store(folder, fingerprint, output.images, meta)
    return output, False


# ------------------------------------------------------------------------------------------------ scoring
@dataclass
class Scorer:
    """Turns a mimicry output into per-item score arrays and feature sets."""

    reference: list[torch.Tensor]  # the artist's clean images
    style_metric: Any = None
    use_clip: bool = True
    judge: Any = None  # a second, independent style judge (the demo world's StructureJudge), or None
    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        mean = std = None
        if self.style_metric is not None:
            mean, std = self.style_metric.feature_mean, self.style_metric.feature_std
        else:
            # No fixed statistics: standardise by the artist's own images (floored so constant features stay finite).
            raw = torch.from_numpy(fdist.features(self.reference))
            mean = raw.mean(0)
            std = raw.std(0).clamp_min(1e-6) if len(self.reference) > 1 else torch.ones(raw.shape[1], dtype=raw.dtype)
        self._mean, self._std = mean, std
        self.reference_features = fdist.features(self.reference, mean, std)
        if self.style_metric is None:
            self.notes["artist_score"] = "no style metric (pass --style-metric; the demo model's is used with --model demo)"
        if self.judge is None:
            self.notes["structure_score"] = "no structure judge (pass --judge; the demo model's is used with --model demo)"
        if self.use_clip:
            reason = clip_unavailable_reason()
            if reason:
                self.notes["clip_score"] = reason
                self.use_clip = False
        else:
            self.notes["clip_score"] = "disabled"
        reason = lpips_unavailable_reason()
        if reason:
            self.notes["lpips_to_clean"] = reason
        if len(self.reference) < 2:
            self.notes["kid"] = self.notes["fd"] = "needs at least two clean images"

    def features(self, images: list[torch.Tensor]) -> np.ndarray:
        return fdist.features([as_rgb(im) for im in images], self._mean, self._std)

    def item_scores(self, output: MimicryOutput, clean: MimicryOutput | None) -> dict[str, np.ndarray]:
        scores: dict[str, np.ndarray] = {}
        with torch.no_grad():
            if self.style_metric is not None:
                scores["artist_score"] = np.array([float(self.style_metric.artist_score(as_rgb(im)[None])[0]) for im in output.images])
            if self.judge is not None:
                scores["structure_score"] = np.array([float(self.judge.artist_score(as_rgb(im)[None])[0]) for im in output.images])
            if self.use_clip:
                values = [clip_score(as_rgb(im)[None], [p]) for im, p in zip(output.images, output.prompts, strict=True)]
                if all(v is not None for v in values):
                    scores["clip_score"] = np.array([float(v[0]) for v in values])
            if clean is not None:
                pairs = [(a[None].double(), b[None].double()) for a, b in zip(output.images, clean.images, strict=True)]
                scores["ssim_to_clean"] = np.array([_ssim_or_nan(a, b) for a, b in pairs])
                scores["psnr_to_clean"] = np.array([min(float(psnr(a, b)[0]), 100.0) for a, b in pairs])
                if "lpips_to_clean" not in self.notes:
                    scores["lpips_to_clean"] = np.array([float(lpips_distance(a.float(), b.float())[0]) for a, b in pairs])
        return {k: v for k, v in scores.items() if np.all(np.isfinite(v))}


def _ssim_or_nan(a: torch.Tensor, b: torch.Tensor) -> float:
    try:
        return float(ssim(a, b)[0])
    except InvalidArgumentError:
        return float("nan")


# ------------------------------------------------------------------------------------------------ statistics
def _statistic(score: str, reference: np.ndarray) -> Callable[[np.ndarray, np.ndarray], float]:
    """stat(values_or_features, idx) for a score: a mean of per-item values, or a set distance to the reference."""
    if score == "kid":
        return lambda feats, idx: fdist.kid(feats[idx], reference)
    if score == "fd":
        return lambda feats, idx: fdist.frechet_distance(feats[idx], reference)
    return lambda values, idx: float(np.mean(values[idx]))


def bootstrap_conditions(data: dict[str, np.ndarray], stat: Callable, n: int, seed: int,
                         groups: Sequence[str] | None = None) -> tuple[dict[str, float], np.ndarray]:
    """Point estimates and a joint (paired) bootstrap: the same resampled output items for every condition.

    With `groups` (the training run of each output item, when an attack trains several times), the bootstrap
    is two-stage: resample runs, then output items within each drawn run, so intervals cover the variation
    between training runs and not only between generations. Returns ``(estimates, samples)`` with samples of
    shape (n, len(data)) in ``data``'s order.
    """
    names = list(data)
    count = len(next(iter(data.values())))
    full = np.arange(count)
    estimates = {name: stat(data[name], full) for name in names}
    rng = np.random.default_rng(seed)
    clusters = list(run_indices(groups, count).values()) or None
    samples = np.empty((int(n), len(names)))
    for b in range(int(n)):
        if clusters is None:
            idx = rng.integers(0, count, count)
        else:
            drawn = rng.integers(0, len(clusters), len(clusters))
            idx = np.concatenate([clusters[k][rng.integers(0, len(clusters[k]), len(clusters[k]))] for k in drawn])
        samples[b] = [stat(data[name], idx) for name in names]
    return estimates, samples


def run_indices(groups: Sequence[str] | None, count: int) -> dict[str, np.ndarray]:
    """The output items of each training run, in the runs' order; empty unless there are several runs."""
    if groups is None or len(groups) != count or len(set(groups)) < 2:
        return {}
    return {label: np.flatnonzero(np.asarray(groups) == label) for label in dict.fromkeys(groups)}


def _ci(values: np.ndarray, alpha: float) -> list[float]:
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return [float(low), float(high)]


def summarise_score(score: str, data: dict[str, np.ndarray], reference: np.ndarray,
                    protected_sets: dict[str, list[Condition]], n_boot: int, alpha: float, seed: int,
                    groups: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-condition estimate and interval; per protected set, the effect per purification and the worst case.

    ``effect`` = direction × (clean − protected): how much the protection reduced the mimic's success, positive
    when it protects; the worst case is the purification with the smallest effect, chosen per resample. When
    the clean images were purified too (``purify_clean``), ``effect_vs_purified_clean`` compares with the clean
    images under the same purification: the protection's effect net of what the purification does by itself.
    """
    direction = SCORES[score][0]
    stat = _statistic(score, reference)
    estimates, samples = bootstrap_conditions(data, stat, n_boot, seed, groups)
    runs = run_indices(groups, len(next(iter(data.values()))))
    columns = {name: i for i, name in enumerate(data)}
    result: dict[str, Any] = {"conditions": {name: {"value": estimates[name], "ci95": _ci(samples[:, i], alpha)}
                                             for name, i in columns.items()}}  # fmt: skip
    baseline = Condition(CLEAN, NO_PURIFICATION).name
    if score not in BASELINED or baseline not in columns:
        return result
    result["protection"] = {}
    for label, conditions in protected_sets.items():
        present = [c for c in conditions if c.name in columns]
        if not present:
            continue
        effects = np.stack([direction * (samples[:, columns[baseline]] - samples[:, columns[c.name]]) for c in present], axis=1)
        point = [direction * (estimates[baseline] - estimates[c.name]) for c in present]
        worst_per_sample = effects.min(axis=1)
        worst = int(np.argmin(point))
        per = {}
        for j, c in enumerate(present):
            entry = {"value": estimates[c.name], "ci95": result["conditions"][c.name]["ci95"], "effect": point[j],
                     "effect_ci95": _ci(effects[:, j], alpha)}  # fmt: skip
            if runs:  # each training run's own effect: does the sign hold from run to run?
                entry["effect_per_run"] = {run: direction * (stat(data[baseline], idx) - stat(data[c.name], idx))
                                           for run, idx in runs.items()}  # fmt: skip
            purified_clean = Condition(CLEAN, c.purification).name
            if c.purification != NO_PURIFICATION and purified_clean in columns:
                column = columns[purified_clean]
                entry["effect_vs_purified_clean"] = direction * (estimates[purified_clean] - estimates[c.name])
                entry["effect_vs_purified_clean_ci95"] = _ci(direction * (samples[:, column] - samples[:, columns[c.name]]), alpha)
            per[c.purification] = entry
        worst_ci = _ci(worst_per_sample, alpha)
        result["protection"][label] = {
            "per_purification": per,
            "worst_case": {"purification": present[worst].purification, "value": estimates[present[worst].name],
                           "ci95": result["conditions"][present[worst].name]["ci95"], "effect": point[worst],
                           "effect_ci95": worst_ci, "protects": bool(worst_ci[0] > 0)},
        }  # fmt: skip
        # Net of each purification's own effect (needs the clean images under every purification).
        paired = [columns.get(Condition(CLEAN, c.purification).name) for c in present]
        if all(column is not None for column in paired):
            net = np.stack([direction * (samples[:, k] - samples[:, columns[c.name]]) for k, c in zip(paired, present, strict=True)], axis=1)
            net_point = [direction * (estimates[Condition(CLEAN, c.purification).name] - estimates[c.name]) for c in present]
            j = int(np.argmin(net_point))
            net_ci = _ci(net.min(axis=1), alpha)
            result["protection"][label]["worst_case_vs_purified_clean"] = {
                "purification": present[j].purification, "effect": net_point[j], "effect_ci95": net_ci,
                "protects": bool(net_ci[0] > 0)}  # fmt: skip
    return result


# ------------------------------------------------------------------------------------------------ the run
@dataclass
class EvaluationSettings:
    """What to run. ``mimicries`` are configured attack objects; ``purifications`` specs or objects."""

    mimicries: list[Mimicry]
    purifications: list[str | Purification] = field(default_factory=lambda: [NO_PURIFICATION])
    purify_clean: bool = False
    style_metric: Any = None
    judge: Any = None
    use_clip: bool = True
    headline: str | None = None
    bootstrap: int = 1000
    alpha: float = 0.05
    seed: int = 0
    grid_columns: int = 8


def summarise_items(per_item: dict[str, dict[str, np.ndarray]], features: dict[str, np.ndarray], items: np.ndarray | None,
                    groups: Sequence[str] | None, scorer: Scorer, protected_conditions: dict[str, list[Condition]],
                    settings: EvaluationSettings) -> dict[str, Any]:
    """Every score's summary (:func:`summarise_score`) over the output items `items` (None: all of them) of one
    mimicry's conditions: `per_item` and `features` map each condition to its items' scores and features."""
    def pick(values: np.ndarray) -> np.ndarray:
        return values if items is None else values[items]

    if groups is not None and items is not None:
        groups = [groups[i] for i in items]
    summaries: dict[str, Any] = {}
    for score in SCORES:
        if score in ("kid", "fd"):
            if score in scorer.notes:
                continue
            data = {name: pick(values) for name, values in features.items()}
        else:
            data = {name: pick(values[score]) for name, values in per_item.items() if score in values}
            if not data:
                continue
        summaries[score] = summarise_score(score, data, scorer.reference_features, protected_conditions,
                                           settings.bootstrap, settings.alpha, settings.seed, groups)
    return summaries


def image_quality(sets: ImageSets) -> dict[str, Any]:
    """PSNR, SSIM, LPIPS and L∞ of every protected image against its clean original: per image and summarised."""
    from ..stats import bootstrap_ci

    quality: dict[str, Any] = {}
    for label, images in sets.protected.items():
        rows = []
        for name, clean, protected in zip(sets.names, sets.clean, images, strict=True):
            report = image_report(clean[None], protected[None])
            rows.append({"image": name, **{k: report[k] for k in ("linf_255", "psnr_db", "ssim", "lpips")}})
        summary: dict[str, Any] = {"linf_255_max": max(r["linf_255"] for r in rows)}
        for key in ("psnr_db", "ssim", "lpips"):
            values = [r[key] for r in rows if r[key] is not None]
            if values:
                mean, low, high = bootstrap_ci(np.array(values), np.mean, n=1000, seed=0)
                summary[key] = {"mean": mean, "ci95": [low, high]}
            else:
                summary[key] = None
        quality[label] = {"summary": summary, "per_image": rows}
    return quality


def _progress(total: int, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="evaluate", unit="cell", disable=quiet)


def evaluate(sets: ImageSets, settings: EvaluationSettings, output_dir: str | Path, *, purification_model=None,
             quiet: bool = False, command: str | None = None) -> dict[str, Any]:
    """Run every mimicry on every condition, score, compare, and write ``report.json`` and ``report.html``.

    Settings and the output folder are checked before any work (:func:`check_output_folder`)."""
    if not settings.mimicries:
        raise InvalidArgumentError("choose at least one mimicry attack.")
    names = [m.name for m in settings.mimicries]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"each mimicry attack may run once, but got {', '.join(names)}.")
    if isinstance(settings.bootstrap, bool) or not isinstance(settings.bootstrap, int) or settings.bootstrap < 1:
        raise InvalidArgumentError(f"`bootstrap` must be a positive number of resamples, but is {settings.bootstrap!r}.")
    if not 0.0 < float(settings.alpha) < 1.0:
        raise InvalidArgumentError(f"`alpha` must be in (0, 1), but is {settings.alpha!r}.")
    if int(settings.grid_columns) < 1:
        raise InvalidArgumentError(f"`grid_columns` must be at least 1, but is {settings.grid_columns!r}.")
    if len(sets.names) < 2:
        raise InvalidArgumentError("evaluation needs at least two clean images (bootstrap intervals and KID need pairs).")
    headline = settings.headline or ("artist_score" if settings.style_metric is not None else "kid")
    if headline not in BASELINED:
        raise InvalidArgumentError(f"the headline score must be one of {', '.join(BASELINED)}, but is {headline!r}.")
    if headline == "artist_score" and settings.style_metric is None:
        raise InvalidArgumentError("the headline score artist_score needs a style metric (--style-metric).")
    if headline == "structure_score" and settings.judge is None:
        raise InvalidArgumentError("the headline score structure_score needs a structure judge (--judge).")
    output = check_output_folder(output_dir, sets.folders)
    for mimicry in settings.mimicries:
        multiple = int(getattr(mimicry.model, "pixel_multiple", 1)) if mimicry.edits_inputs else 1
        for name, image in zip(sets.names, sets.clean, strict=True):
            if min(image.shape[-2:]) < multiple:
                raise InvalidArgumentError(
                    f"clean image {name} is {image.shape[-1]}×{image.shape[-2]} px, smaller than the pixel multiple "
                    f"{multiple} of the {mimicry.name} mimic's model; use larger images."
                )
    # Each purification is labelled as the user wrote it ("jpeg75"), or by its spec when given as an object.
    by_label: dict[str, Purification] = {}
    for item in settings.purifications:
        purification = get_purification(item, model=purification_model)
        label = NO_PURIFICATION if purification.name == NO_PURIFICATION else (
            item.strip() if isinstance(item, str) else purification.spec)
        if label in by_label or any(p.spec == purification.spec for p in by_label.values()):
            raise InvalidArgumentError(f"purification {label!r} is listed twice.")
        by_label[label] = purification
    if NO_PURIFICATION not in by_label:
        by_label = {NO_PURIFICATION: get_purification(NO_PURIFICATION), **by_label}
    specs = list(by_label)

    conditions = [Condition(CLEAN, NO_PURIFICATION)]
    if settings.purify_clean:
        conditions += [Condition(CLEAN, label) for label in specs if label != NO_PURIFICATION]
    for label in sets.protected:
        conditions += [Condition(label, spec) for spec in specs]

    scorer = Scorer(sets.clean, settings.style_metric, settings.use_clip, settings.judge)
    started = time.perf_counter()
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputWriteError(f"output {str(output)!r} cannot be created ({exc.strerror or exc}).") from exc
    inputs: dict[str, list[torch.Tensor]] = {}
    for condition in conditions:
        images = sets.clean if condition.image_set == CLEAN else sets.protected[condition.image_set]
        if condition.purification == NO_PURIFICATION:
            inputs[condition.name] = images
        else:
            inputs[condition.name] = purified_inputs(images, sets.names, by_label[condition.purification],
                                                     output / "inputs" / condition.folder, settings.seed)

    report: dict[str, Any] = {
        "artshield": __version__,
        "command": command,
        "seed": settings.seed,
        "bootstrap": {"resamples": settings.bootstrap, "alpha": settings.alpha,
                      "paired": "the same resampled output items (same prompt/seed/mask) for every condition"},
        "images": {"names": sets.names, "folders": sets.folders},
        "purifications": specs,
        "purification_settings": {label: p.config for label, p in by_label.items()},
        "conditions": [c.name for c in conditions],
        "scores": {name: {"direction": "higher = closer mimicry" if d > 0 else "lower = closer mimicry",
                          "kind": kind, "description": desc} for name, (d, kind, desc) in SCORES.items()},
        "notes": scorer.notes,
        "quality": image_quality(sets),
        "mimicry": {},
        "failed": [],
    }
    protected_conditions = {label: [c for c in conditions if c.image_set == label] for label in sets.protected}
    progress = _progress(len(conditions) * len(settings.mimicries), quiet)
    for mimicry in settings.mimicries:
        outputs: dict[str, MimicryOutput] = {}
        cells: dict[str, Any] = {}
        for condition in conditions:
            progress.set_postfix_str(f"{mimicry.name} on {condition.name}")
            cell_dir = output / "cells" / mimicry.name / condition.folder
            start = time.perf_counter()
            try:
                out, reused = run_cell(mimicry, inputs[condition.name], cell_dir)
            except CellFailed as exc:  # an external tool failed: record it, go on with the other cells
                logger.warning("%s on %s failed: %s", mimicry.name, condition.name, exc)
                report["failed"].append({"mimicry": mimicry.name, "condition": condition.name, "error": str(exc),
                                         "folder": str(cell_dir.relative_to(output))})  # fmt: skip
                progress.update(1)
                continue
            outputs[condition.name] = out
            cells[condition.name] = {"image_set": condition.image_set, "purification": condition.purification,
                                     "outputs": len(out.images), "folder": str(cell_dir.relative_to(output)),
                                     "reused": reused, "seconds": round(time.perf_counter() - start, 1),
                                     "made_in_seconds": out.seconds, "info": out.info}  # fmt: skip
            progress.update(1)
        baseline = conditions[0].name
        if baseline not in outputs:  # nothing to compare with: keep what ran, score nothing
            report["mimicry"][mimicry.name] = {"config": mimicry.config, "summary": mimicry.summary, "keys": [],
                                               "prompts": [], "conditions": cells, "scores": {}}  # fmt: skip
            for name in cells:
                cells[name]["scores"], cells[name]["per_item"] = {}, {}
            continue
        keys = outputs[baseline].keys
        for name, out in outputs.items():
            if out.keys != keys:
                raise RuntimeError(f"{mimicry.name}: condition {name} produced different items than the clean run.")
        groups = outputs[baseline].groups or None
        clean_out = outputs[baseline] if mimicry.edits_inputs else None
        per_item: dict[str, dict[str, np.ndarray]] = {
            name: scorer.item_scores(out, None if name == conditions[0].name else clean_out) for name, out in outputs.items()
        }
        features = {name: scorer.features(out.images) for name, out in outputs.items()}

        # With a checkpoint curve, the result is the last training step's outputs; every step is summarised too.
        stages = outputs[baseline].stages
        curve: dict[str, Any] = {}
        if stages:
            steps = sorted(set(stages))
            for step in steps:
                items = np.flatnonzero(np.asarray(stages) == step)
                curve[str(step)] = summarise_items(per_item, features, items, groups, scorer, protected_conditions, settings)
            summaries = curve[str(steps[-1])]
        else:
            summaries = summarise_items(per_item, features, None, groups, scorer, protected_conditions, settings)
        for name in cells:
            cells[name]["scores"] = {s: summaries[s]["conditions"][name] for s in summaries if name in summaries[s]["conditions"]}
            cells[name]["per_item"] = {s: [float(v) for v in per_item[name][s]] for s in per_item[name]}
        report["mimicry"][mimicry.name] = {"config": mimicry.config, "summary": mimicry.summary, "keys": keys,
                                           "prompts": outputs[baseline].prompts, "conditions": cells,
                                           "scores": summaries}  # fmt: skip
        if any(source is not None for source in outputs[baseline].sources):  # image-to-image: the input of each output
            report["mimicry"][mimicry.name]["sources"] = outputs[baseline].sources
        if groups:
            report["mimicry"][mimicry.name]["runs"] = list(dict.fromkeys(groups))
        if stages:
            report["mimicry"][mimicry.name]["stages"] = stages
            report["mimicry"][mimicry.name]["curve"] = curve
    progress.close()

    report["headline_score"] = headline
    report["headline"] = []
    for name, entry in report["mimicry"].items():
        summary = entry["scores"].get(headline)
        if summary is None:
            continue
        clean = summary["conditions"][Condition(CLEAN, NO_PURIFICATION).name]
        for label, protection in summary.get("protection", {}).items():
            row = {"mimicry": name, "protected": label, "score": headline, "clean": clean, **protection["worst_case"]}
            if "worst_case_vs_purified_clean" in protection:
                row["vs_purified_clean"] = protection["worst_case_vs_purified_clean"]
            report["headline"].append(row)
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_report(report, inputs, output, settings.grid_columns)
    write_json_atomic(output / "report.json", report)
    return report


__all__ = ["CLEAN", "SCORES", "Condition", "EvaluationSettings", "ImageSets", "bootstrap_conditions",
           "check_output_folder", "evaluate", "load_image_sets", "purified_inputs", "run_cell", "summarise_score"]
