"""Protecting files: plan outputs for an image or a folder, skip what is done, write, measure, report.

Kept apart from the argument parsing in :mod:`.cli` so scripts can drive folders the same way the
command does. Originals are never overwritten; outputs are lossless PNGs written atomically, carrying the
settings in a PNG text chunk (``artshield``), which is also how already-protected files are recognised.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InvalidArgumentError, MaskError
from ..fileio import check_output_folder, sha256_file
from ..imageio import LoadedImage, iter_images, read_image, write_png

logger = logging.getLogger(__name__)

METADATA_KEY = "artshield"


@dataclass(frozen=True)
class Job:
    """One image to protect: where it comes from and where the protected copy goes."""

    source: Path
    output: Path


def plan_jobs(target: str | os.PathLike, output: str | os.PathLike | None = None) -> tuple[list[Job], list[tuple[Path, str]]]:
    """Turn a file or folder (and an optional output) into jobs, plus (path, reason) pairs skipped as non-images.

    A file goes to ``<stem>.protected.png`` beside it unless `output` names a ``.png`` file or an existing
    folder. A folder goes to ``<folder>_protected/<stem>.png`` unless `output` names another folder; when
    the output folder is the input folder, outputs are named ``<stem>.protected.png``.
    """
    target = Path(target).expanduser()
    if not target.exists():
        raise InvalidArgumentError(f"input {str(target)!r}: no such file or folder.")
    if not target.is_file() and not target.is_dir():
        raise InvalidArgumentError(
            f"input {str(target)!r} is not a regular file or a folder (a device, pipe or socket); give an image or a folder."
        )
    if target.is_file():
        if output is None:
            destination = target.with_name(f"{target.stem}.protected.png")
        else:
            output = Path(output).expanduser()
            if output.is_dir():
                destination = output / f"{target.stem}.protected.png"
            elif output.suffix.lower() == ".png":
                destination = output
            else:
                raise InvalidArgumentError(
                    f"output {str(output)!r} must end in .png (protected images are saved lossless) or be an existing folder."
                )
        return [Job(target, destination)], []
    out_dir = Path(output).expanduser() if output is not None else target.with_name(f"{target.name}_protected")
    check_output_folder("output", out_dir)  # the input is a folder, so the output must be one
    listing = iter_images(target)
    images, skipped = listing.images, listing.skipped
    same_folder = out_dir.resolve() == target.resolve()
    jobs, used = [], set()
    for source in images:
        stem = f"{source.stem}.protected" if same_folder else source.stem
        name = f"{stem}.png"
        if name in used:  # painting.jpg and painting.png both present
            name = f"{stem}_{source.suffix.lstrip('.').lower()}.png"
        used.add(name)
        jobs.append(Job(source, out_dir / name))
    return jobs, [(Path(p), reason) for p, reason in skipped]


#: SHA-256 of a file's bytes (identifies the source an output was made from).
fingerprint = sha256_file


def read_metadata(info: dict) -> dict | None:
    """The artshield metadata stored in a PNG's text chunks, or None."""
    raw = info.get(METADATA_KEY) if info else None
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def skip_reason(
    job: Job, settings: dict | None, source_hash: str, overwrite: bool, loaded: LoadedImage | None = None
) -> str | None:
    """Why `job` needs no work (or may not be done), or None to go ahead. `loaded` is the source already
    read (read here otherwise). With `settings` None (not known yet: no model loaded), an existing output
    made from this source is taken to be up to date only after the settings are known, so it gives None."""
    loaded = read_image(job.source) if loaded is None else loaded
    if read_metadata(loaded.info) is not None:
        return "already protected by artshield (its PNG carries protection metadata)"
    if job.output.exists():
        try:
            existing = read_metadata(read_image(job.output).info)
        except Exception:  # an unreadable old output is simply replaced when allowed
            existing = None
        if existing and existing.get("source_sha256") == source_hash:
            if settings is None:
                return None
            if existing.get("settings") == settings:
                return f"up to date: {job.output} was made from this image with the same settings"
        if not overwrite:
            return f"output {job.output} exists (pass --overwrite to replace it)"
    return None


def run_settings(method, mask_path: str | os.PathLike | None = None) -> dict:
    """What an output's metadata records as its settings: the method's config, plus the mask's SHA-256."""
    settings = method.config
    if mask_path is not None:
        settings = {**settings, "mask_sha256": fingerprint(Path(mask_path).expanduser())}
    return settings


def protect_file(
    method,
    job: Job,
    *,
    eval_samples: int = 8,
    source_hash: str | None = None,
    mask: torch.Tensor | None = None,
    mask_path: str | os.PathLike | None = None,
    loaded: LoadedImage | None = None,
    notes: dict | None = None,
) -> dict:
    """Protect one file and return its report entry (sizes, budget, image metrics, objective, time).
    `mask` (from :func:`read_mask` of `mask_path`) must have the image's size. `loaded` is the source
    already read (read here otherwise); `notes` (e.g. ``{"demo_model_warning": ...}``) go into the PNG's
    artshield metadata and the report entry."""
    from ..metrics import image_report

    started = time.perf_counter()
    loaded = read_image(job.source) if loaded is None else loaded
    source_hash = source_hash or fingerprint(job.source)
    original = loaded.rgb
    if mask is not None and tuple(mask.shape[-2:]) != tuple(original.shape[-2:]):
        (mh, mw), (ih, iw) = mask.shape[-2:], original.shape[-2:]
        raise MaskError(f"mask {mask_path or ''} is {mw}×{mh} pixels but image {job.source} is {iw}×{ih}; they must match.")
    result = method.protect(original, mask=mask)
    settings = run_settings(method, mask_path if mask is not None else None)
    metadata = {
        "tool": "artshield",
        "source_name": job.source.name,
        "source_sha256": source_hash,
        "settings": settings,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(notes or {}),
    }
    budget = method.eps if method.engine_config.norm == "linf" else None
    write_png(
        job.output,
        result.images,
        alpha=loaded.alpha,
        bit_depth=loaded.bit_depth,
        text={METADATA_KEY: json.dumps(metadata, sort_keys=True)},
        icc_profile=loaded.icc_profile,
        reference=loaded,
        max_abs_change=budget,
    )
    # Measure what was actually saved (after quantisation), not the float result.
    saved = read_image(job.output).rgb
    with torch.no_grad():
        before = float(method.evaluate(original, samples=eval_samples, mask=mask).mean()) if eval_samples else None
        after = float(method.evaluate(saved, samples=eval_samples, mask=mask).mean()) if eval_samples else None
    entry = {
        "input": str(job.source),
        "output": str(job.output),
        "mask": None if mask is None else str(mask_path),
        "width": int(original.shape[-1]),
        "height": int(original.shape[-2]),
        "channels": int(original.shape[1]),
        "has_alpha": loaded.alpha is not None,
        "bit_depth": loaded.bit_depth,
        **image_report(original, saved),
        "objective_before": before,
        "objective_after": after,
        "objective_samples": eval_samples,
        "steps_run": result.steps_run,
        "protect_seconds": round(result.seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
        **(notes or {}),
    }
    return entry
