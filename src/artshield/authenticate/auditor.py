"""The auditor's API: did a suspect model learn an artist's images?

    >>> from artshield.authenticate import Auditor
    >>> auditor = Auditor("demo", lora="suspect_lora/", prompt="a painting in sks style")
    >>> result = auditor.audit("artist_images/", holdout="unpublished_images/", output="report/")
    >>> result.verdict["learned"], result.verdict["p_value"], result.metrics["cgidm"]["auc"]

For every image: CGI-DM (:mod:`.cgidm`; the paired cosine of the contrast recovery with its original, the
same minus the base-only recovery's, and Revelio's max cosine over the split) and each membership baseline
(:mod:`.baselines`), with the evidence images written next to the report. With a hold-out (the artist's
images that were surely *not* in training): image-level metrics, members vs hold-out
(:func:`.calibration.membership_metrics`). The model-level verdict compares the artist images' CGI-DM scores
with a *reference* set — the `calibration` images when given, else the hold-out — by
:func:`.calibration.model_verdict` (a permutation test: its p-value is the false-accusation rate). A
threshold is only ever fitted on the reference set, never on the images it judges.

Resumable: each image's result is a cell, ``output/cells/<key>.json`` plus its evidence PNGs in
``output/cells/<key>/``, where the key is the SHA-256 of the image file's bytes and every setting that
changes the result (models, prompt, CGI-DM settings, baselines, resolution, seed, feature space). A rerun
with the same settings reads the cells back and computes nothing new for them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..errors import ImageReadError, InvalidArgumentError
from ..fileio import sha256_file, write_json_atomic
from .cgidm import CGIDM, CGIDMConfig
from .features import FeatureSpace, max_cosine, paired_cosine

logger = logging.getLogger(__name__)

DEFAULT_BASELINES = ("loss", "loss-diff", "secmi", "pia")
#: The score the verdict and the headline metrics use.
PRIMARY = "cgidm"
SPLITS = ("artist", "holdout", "calibration")


@dataclass
class ImageResult:
    """One image's outcome.

    Attributes:
        name: file name. path: where it was read from. sha256: of the file's bytes. split: ``"artist"``,
        ``"holdout"`` or ``"calibration"``. key: the cell's key.
        scores: ``cgidm`` (paired cosine of the contrast recovery with the original), ``cgidm-gain``
            (that minus the base-only recovery's), ``cgidm-max`` (Revelio: max cosine over the split's
            recoveries), ``cgidm-latent-align`` / ``cgidm-latent-gain`` (the contrast recovery compared with the
            original in latent space on the removed cells, see :meth:`Recovery.latent_scores`),
            ``cgidm-suspect-align`` (the suspect-only recovery's, with ``suspect_recovery``) and one entry per
            baseline; higher = more likely a member.
        similarity: cosine of the ``degraded``, ``base`` and ``contrast`` images with the original.
        evidence: relative paths (from the output folder) of ``original``, ``degraded``, ``base``,
            ``contrast`` PNGs. flagged: above the reference set's 1 %-FPR threshold (artist images only,
            None without a reference). seconds: what computing the image took (for a reused cell, when it was
            computed). reused: read from the cache.
    """

    name: str
    path: str
    sha256: str
    split: str
    key: str
    scores: dict[str, float]
    similarity: dict[str, float]
    evidence: dict[str, str]
    moved: float = math.nan
    seconds: float = 0.0
    reused: bool = False
    flagged: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AuditResult:
    """What :meth:`Auditor.audit` returns (and ``report.json`` holds).

    Attributes:
        images: one :class:`ImageResult` per image, artist images first.
        metrics: per score name, :class:`MembershipMetrics` as a dict (artist vs hold-out), or {} without one.
        verdict: the model-level :class:`Verdict` as a dict (plus ``reference``: which set it was compared
            with), or None without a reference set.
        threshold: the 1 %-FPR threshold of the primary score fitted on the reference set, or None.
        settings: everything that made the result. feature_space / feature_note: similarity space used.
        computed / reused: cells computed now / read from the cache. seconds: wall time.
    """

    images: list[ImageResult]
    metrics: dict[str, dict]
    verdict: dict | None
    threshold: float | None
    settings: dict
    feature_space: str
    feature_note: str
    computed: int = 0
    reused: int = 0
    seconds: float = 0.0
    output: str | None = None
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[ImageResult]:
        return [image for image in self.images if image.split == name]

    def scores(self, split: str, score: str = PRIMARY) -> np.ndarray:
        return np.array([image.scores[score] for image in self.split(split)], dtype=float)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["artshield_version"] = __version__
        return out


def list_images(source, label: str) -> list[Path]:
    """The image files of a folder (sorted) or a sequence of paths; refuses an empty set."""
    from ..imageio import iter_images

    if isinstance(source, str | os.PathLike):
        listing = iter_images(source)
        if not listing.images:
            raise ImageReadError(f"{label} folder {os.fspath(source)} has no images.")
        return list(listing.images)
    paths = [Path(p) for p in source]
    if not paths:
        raise ImageReadError(f"{label}: no images given.")
    for p in paths:
        if not p.is_file():
            raise ImageReadError(f"{label} image {p}: no such file.")
    return paths


def load_square(path: Path, resolution: int) -> torch.Tensor:
    """(1, 3, r, r) in [0, 1]: shorter side resized to `resolution`, centre crop (as Revelio prepares images)."""
    from ..imageio import as_rgb, read_image

    rgb = as_rgb(read_image(path).rgb)
    h, w = rgb.shape[-2:]
    scale = resolution / min(h, w)
    size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
    if size != (h, w):
        rgb = F.interpolate(rgb, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return rgb[..., top : top + resolution, left : left + resolution].contiguous()


def _file_identity(path) -> str:
    """A suspect's identity for cache keys: the SHA-256 of a file, of a folder's weight files, else the spec."""
    p = Path(os.fspath(path)).expanduser()
    if p.is_file():
        return sha256_file(p)
    if p.is_dir():
        digest = hashlib.sha256()
        for f in sorted(p.rglob("*.safetensors")):
            digest.update(f.relative_to(p).as_posix().encode() + sha256_file(f).encode())
        return digest.hexdigest()
    return str(path)


class Auditor:
    """Audit a suspect model against an artist's images.

    Args:
        base: the public base model (a spec for :func:`artshield.models.load`, or a loaded model).
        suspect: a fine-tuned checkpoint (spec or loaded model), or
        lora: a LoRA folder / ``.safetensors`` file for `base` (one set of weights, adapter toggled).
        prompt: the prompt both models are conditioned on (the instance prompt used in training when known).
        cgidm: :class:`CGIDMConfig` or a dict of its fields.
        baselines: names in :data:`.baselines.BASELINES` to run alongside.
        resolution: square side images are resized and cropped to (default: the base's native resolution).
        features: ``"auto"`` (CLIP when local, else DCT), ``"clip"`` or ``"dct"``.
        alpha: the verdict's significance level (its false-accusation rate).
        verdict_score: the score the verdict and per-image flags use (default ``"cgidm"``; any CGI-DM score or
            a baseline that is run, e.g. ``"loss-diff"``, which did better on the demo world). seed: randomness.
        suspect_recovery: also recover each image with the suspect alone (score ``cgidm-suspect-align``;
            about 50 % more time).
        device, dtype: where and in which precision the weights live.
    """

    def __init__(
        self,
        base,
        suspect=None,
        lora=None,
        *,
        prompt: str = "",
        cgidm: CGIDMConfig | dict | None = None,
        baselines: Sequence[str] = DEFAULT_BASELINES,
        resolution: int | None = None,
        features: str = "auto",
        alpha: float = 0.01,
        verdict_score: str = PRIMARY,
        suspect_recovery: bool = False,
        seed: int = 0,
        device=None,
        dtype=None,
        pair=None,
    ) -> None:
        from .baselines import BASELINES

        if pair is None and (suspect is None) == (lora is None):
            raise InvalidArgumentError("give exactly one of `suspect` (a fine-tuned model) and `lora` (a LoRA for `base`).")
        unknown = [name for name in baselines if name not in BASELINES]
        if unknown:
            raise InvalidArgumentError(f"unknown baseline(s) {', '.join(map(repr, unknown))}; choose from {', '.join(BASELINES)}.")
        allowed = (PRIMARY, "cgidm-gain", "cgidm-max", "cgidm-latent-align", "cgidm-latent-gain",
                   *(["cgidm-suspect-align"] if suspect_recovery else []), *baselines)
        if verdict_score not in allowed:
            raise InvalidArgumentError(f"`verdict_score` must be one of {', '.join(allowed)}, but is {verdict_score!r}.")
        self.verdict_score, self.suspect_recovery = verdict_score, bool(suspect_recovery)
        if not 0 < alpha < 1:
            raise InvalidArgumentError(f"`alpha` must be in (0, 1), but is {alpha!r}.")
        self.cgidm_config = cgidm if isinstance(cgidm, CGIDMConfig) else CGIDMConfig(**(cgidm or {}))
        self.baselines = tuple(baselines)
        self.prompt, self.alpha, self.seed = prompt, float(alpha), int(seed)
        if pair is None:
            from .pair import ModelPair

            pair = ModelPair.load(base, suspect=suspect, lora=lora, prompt=prompt, device=device, dtype=dtype)
        self.pair = pair
        model = pair.base
        multiple = model.pixel_multiple
        resolution = resolution or model.native_resolution
        if resolution % multiple:
            raise InvalidArgumentError(f"`resolution` must be a multiple of {multiple} for this model, but is {resolution}.")
        self.resolution = int(resolution)
        self.features = FeatureSpace(features, device=getattr(model, "device", "cpu"))
        self.identity = {
            "base": getattr(model, "source", str(base)),
            "suspect": _file_identity(lora) if lora is not None else (str(suspect) if suspect is not None else "pair"),
            "kind": "lora" if lora is not None or getattr(pair, "is_lora", False) else "checkpoint",
        }
        self.method = CGIDM(pair, self.cgidm_config)

    @classmethod
    def from_pair(cls, pair, *, identity: dict | None = None, **options) -> Auditor:
        """An auditor on an already-built :class:`ModelPair` (`identity` names it in cache keys)."""
        auditor = cls(None, pair=pair, prompt=pair.prompt, **options)
        if identity:
            auditor.identity.update(identity)
        return auditor

    # ------------------------------------------------------------------ settings and cells
    @property
    def settings(self) -> dict:
        return {
            "models": self.identity,
            "prompt": self.pair.prompt,
            "cgidm": self.cgidm_config.to_dict(),
            "baselines": list(self.baselines),
            "resolution": self.resolution,
            "features": self.features.name,
            "seed": self.seed,
            "alpha": self.alpha,
            "verdict_score": self.verdict_score,
            "suspect_recovery": self.suspect_recovery,
        }

    def cell_key(self, sha256: str) -> str:
        keyed = {k: v for k, v in self.settings.items() if k not in ("alpha", "verdict_score")}  # not in a cell
        text = json.dumps({"image": sha256, "settings": keyed, "cell_version": 2}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def _compute_cell(self, path: Path, sha: str, key: str, split: str, cells: Path | None) -> dict:
        from ..imageio import write_png
        from .baselines import BASELINES

        started = time.perf_counter()
        image = load_square(path, self.resolution)
        recovery = self.method.recover(image, suspect=self.suspect_recovery)
        views = {"original": recovery.original, "degraded": recovery.degraded, "base": recovery.base,
                 "contrast": recovery.contrast}  # fmt: skip
        embeddings = {name: self.features.embed(view) for name, view in views.items()}
        similarity = {name: float(paired_cosine(embeddings[name], embeddings["original"])[0])
                      for name in ("degraded", "base", "contrast")}  # fmt: skip
        scores = {PRIMARY: similarity["contrast"], "cgidm-gain": similarity["contrast"] - similarity["base"]}
        latent = recovery.latent_scores("contrast")
        scores["cgidm-latent-align"], scores["cgidm-latent-gain"] = latent["latent-align"][0], latent["latent-gain"][0]
        if self.suspect_recovery:
            scores["cgidm-suspect-align"] = recovery.latent_scores("suspect")["latent-align"][0]
        for name in self.baselines:
            generator = torch.Generator().manual_seed(self.seed)
            value = BASELINES[name]().score(self.pair, image, generator=generator)
            scores[name] = float(np.asarray(value, dtype=float).reshape(-1)[0])
        evidence = {}
        if cells is not None:
            for name, view in views.items():
                relative = f"cells/{key}/{name}.png"
                write_png(cells.parent / relative, view[0])
                evidence[name] = relative
        return {
            "name": path.name, "sha256": sha, "split": split, "scores": scores, "similarity": similarity,
            "evidence": evidence, "moved": recovery.moved[0], "seconds": time.perf_counter() - started,
            "embeddings": {"original": embeddings["original"][0].tolist(), "contrast": embeddings["contrast"][0].tolist()},
            "contrast_losses": recovery.contrast_losses[:: max(1, len(recovery.contrast_losses) // 50)],
            "settings": self.settings,
        }  # fmt: skip

    # ------------------------------------------------------------------ public
    def audit(self, images, holdout=None, calibration=None, output=None, progress: bool = True) -> AuditResult:
        """Score every image and reach a verdict (see the module docstring). `images`, `holdout`,
        `calibration`: a folder or a sequence of image paths. `output`: a folder for cells, evidence and
        (through :func:`.report.write_report`) the report; None keeps nothing on disk (no resuming)."""
        from .calibration import fit_threshold, membership_metrics, model_verdict

        started = time.perf_counter()
        sets = {"artist": list_images(images, "images")}
        if holdout is not None:
            sets["holdout"] = list_images(holdout, "holdout")
        if calibration is not None:
            sets["calibration"] = list_images(calibration, "calibration")
        for label in ("holdout", "calibration"):
            if label in sets and len(sets[label]) < 2:
                raise InvalidArgumentError(f"the {label} set has {len(sets[label])} image; at least 2 are needed to compare against.")
        hashes = {split: [sha256_file(p) for p in paths] for split, paths in sets.items()}
        artist = set(hashes["artist"])
        for label in ("holdout", "calibration"):
            shared = artist.intersection(hashes.get(label, []))
            if shared:
                raise InvalidArgumentError(
                    f"the {label} set shares {len(shared)} image file(s) with the artist images (same SHA-256); "
                    "a reference set must not contain the images it judges."
                )
        cells = Path(output) / "cells" if output is not None else None
        todo = [(split, path, sha) for split in sets for path, sha in zip(sets[split], hashes[split], strict=True)]
        raw: list[dict] = []
        computed = reused = 0
        from tqdm.auto import tqdm

        for split, path, sha in tqdm(todo, desc="authenticate", unit="image", disable=not progress):
            key = self.cell_key(sha)
            cached = cells / f"{key}.json" if cells is not None else None
            cell = None
            if cached is not None and cached.is_file():
                try:
                    cell = json.loads(cached.read_text())
                    if not all((cells.parent / rel).is_file() for rel in cell["evidence"].values()):
                        cell = None
                except (OSError, ValueError, KeyError):
                    cell = None
            if cell is not None:
                reused += 1
                cell["reused"], cell["seconds_now"] = True, 0.0
            else:
                cell = self._compute_cell(path, sha, key, split, cells)
                if cached is not None:
                    write_json_atomic(cached, cell, what="cell")
                computed += 1
                cell["reused"] = False
            cell.update(split=split, path=str(path), key=key)
            raw.append(cell)
        # Revelio's max cosine: each original against every contrast recovery of its split.
        for split in sets:
            members = [c for c in raw if c["split"] == split]
            originals = torch.tensor([c["embeddings"]["original"] for c in members])
            recovered = torch.tensor([c["embeddings"]["contrast"] for c in members])
            for c, value in zip(members, max_cosine(recovered, originals).tolist(), strict=True):
                c["scores"]["cgidm-max"] = value
        results = [
            ImageResult(name=c["name"], path=c["path"], sha256=c["sha256"], split=c["split"], key=c["key"],
                        scores=c["scores"], similarity=c["similarity"], evidence=c["evidence"], moved=c["moved"],
                        seconds=c["seconds"], reused=c["reused"])
            for c in raw
        ]  # fmt: skip
        result = AuditResult(
            images=results, metrics={}, verdict=None, threshold=None, settings=self.settings,
            feature_space=self.features.name, feature_note=self.features.note, computed=computed, reused=reused,
            output=os.fspath(output) if output is not None else None,
        )  # fmt: skip
        if "holdout" in sets:
            for score in results[0].scores:
                result.metrics[score] = membership_metrics(result.scores("artist", score), result.scores("holdout", score),
                                                           seed=self.seed).to_dict()  # fmt: skip
        reference = "calibration" if "calibration" in sets else ("holdout" if "holdout" in sets else None)
        if reference is None:
            result.notes.append("no hold-out or calibration images: scores only, no verdict and no metrics.")
        else:
            score = self.verdict_score
            verdict = model_verdict(result.scores("artist", score), result.scores(reference, score), alpha=self.alpha,
                                    seed=self.seed)  # fmt: skip
            result.verdict = {**verdict.to_dict(), "reference": reference, "score": score}
            result.threshold = float(fit_threshold(result.scores(reference, score), 0.01))
            for image in result.split("artist"):
                image.flagged = bool(image.scores[score] > result.threshold)
            if len(sets[reference]) < 100:
                result.notes.append(
                    f"the 1 % FPR threshold is fitted on only {len(sets[reference])} {reference} images; per-image "
                    "flags are indicative, the model-level p-value is the calibrated statement."
                )
        result.seconds = time.perf_counter() - started
        if output is not None:
            from .report import write_report

            write_report(result, output)
        return result
