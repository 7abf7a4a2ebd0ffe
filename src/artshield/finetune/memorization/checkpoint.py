"""Saving a pruned model: a static diffusers folder with the memorization masks, their statistics and the
report, published atomically through :mod:`artshield.fileio`."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ...errors import OutputWriteError
from ...fileio import check_output_folder, publish_folder, same_path, staging_folder, write_json_atomic
from ...models.handle import DiffusionModel
from .location import MemorizationMasks

MASKS_FILE = "memorization_masks.safetensors"
MASK_STATS_FILE = "memorization_masks.json"
REPORT_FILE = "memorization_report.json"


def check_checkpoint_output(model_source: str, output: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Refuse, before any work, an output folder that is the model being edited (or its file's folder), the
    shipped demo weights, an existing file, or an existing folder without `overwrite`. Returns the path."""
    out = Path(os.fspath(output)).expanduser()
    source = Path(model_source).expanduser()
    if model_source != "demo" and source.exists() and (same_path(out, source) or same_path(out, source.parent)):
        raise OutputWriteError(f"output {str(out)!r} is the model {model_source!r}; refusing to overwrite the "
                               "original model. Choose another output.")
    from ...models.demo import DEMO_WEIGHTS

    if same_path(out, DEMO_WEIGHTS) or (model_source == "demo" and same_path(out, DEMO_WEIGHTS.parent)):
        raise OutputWriteError(f"output {str(out)!r}: refusing to overwrite the shipped demo weights; choose another output.")
    check_output_folder("output", out)
    if out.exists() and not overwrite:
        raise OutputWriteError(f"output {str(out)!r} already exists; pass --overwrite to replace it.")
    return out


def save_pruned_checkpoint(
    model: DiffusionModel,
    masks: MemorizationMasks,
    output: str | os.PathLike,
    *,
    report: dict | None = None,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """Save `model` (already pruned with :func:`~.location.apply_masks`) as a diffusers folder, atomically.

    `dtype` (e.g. ``torch.float16`` to ship half-size weights) converts `model` in place before saving;
    None saves the weights in the precision they were loaded in.

    The folder is written by ``StableDiffusionPipeline.save_pretrained(safe_serialization=True)`` (with the
    model's own training scheduler and no safety checker) plus :data:`MASKS_FILE` (the masks),
    :data:`MASK_STATS_FILE` (their statistics) and, when given, :data:`REPORT_FILE`, into a hidden staging
    folder beside `output` that is then swapped into place (:func:`artshield.fileio.publish_folder`): an
    interruption leaves no half-written checkpoint. It loads with ``artshield.models.load`` and
    ``StableDiffusionPipeline.from_pretrained``.
    """
    from ...models.components import quiet_loading

    out = check_checkpoint_output(model.source, output, overwrite=overwrite)
    with staging_folder(out) as tmp:
        if dtype is not None and dtype != model.dtype:
            model.to(dtype=dtype)
        pipe = model.pipeline("text2img", scheduler=model.scheduler)
        try:
            with quiet_loading():
                pipe.save_pretrained(str(tmp), safe_serialization=True)
            masks.save(tmp / MASKS_FILE)
        except OSError as exc:
            raise OutputWriteError(f"output {str(out)!r}: could not write the checkpoint ({exc.strerror or exc}).") from exc
        write_json_atomic(tmp / MASK_STATS_FILE, masks.stats(), what="mask statistics")
        if report is not None:
            write_json_atomic(tmp / REPORT_FILE, report)
        publish_folder(tmp, out)
    return out


__all__ = ["MASKS_FILE", "MASK_STATS_FILE", "REPORT_FILE", "check_checkpoint_output", "save_pruned_checkpoint"]
