"""Purify a folder of images: :func:`purify_folder`, and :func:`plan_folder_run`, the checks a run passes
before any work (the output folder and the report must not be, or overwrite, an input)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import ArtshieldError, ImageReadError, InvalidArgumentError, OutputWriteError
from ..fileio import check_output_file, check_output_folder, same_path
from .purify_base import Purification, image_seed
from .purify_spec import get_purification

logger = logging.getLogger(__name__)

#: PNG text key carrying the purification settings. Deliberately not ``artshield`` (the key that marks a
#: *protected* image): a purified copy must not be mistaken for a protected one.
METADATA_KEY = "artshield-purification"


def output_names(sources: Sequence[Path]) -> list[str]:
    """The PNG name of each source: ``<stem>.png``, or ``<stem>_<ext>.png`` (then ``..._2.png``, ...) when that is
    taken, compared without case so that no two outputs share a file even on a case-insensitive disk."""
    names, used = [], set()
    for source in sources:
        ext = source.suffix.lstrip(".").lower()
        candidates = [f"{source.stem}.png", f"{source.stem}_{ext}.png"]
        name = next((c for c in candidates if c.casefold() not in used), None)
        k = 2
        while name is None:
            candidate = f"{source.stem}_{ext}_{k}.png"
            name = candidate if candidate.casefold() not in used else None
            k += 1
        used.add(name.casefold())
        names.append(name)
    return names


@dataclass
class FolderPlan:
    """What a folder run will read and write, checked before any work by :func:`plan_folder_run`."""

    input_dir: Path
    output_dir: Path
    sources: list[Path]
    outputs: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def plan_folder_run(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    report: tuple[str, str | os.PathLike] | None = None,
) -> FolderPlan:
    """List the images of `input_dir` and refuse, before any work, a run that would write over an input.

    Refused: `output_dir` that is the input folder (by any spelling or link), a file, or under a file; an
    output image that is an input file (e.g. through a link); and `report` (``(label, path)``, optional) that
    is a folder, under a file, an input file (image or not) or one of the output images.

    Raises:
        ImageReadError: `input_dir` is missing or not a folder.
        InvalidArgumentError: the output folder is the input folder.
        OutputWriteError: any other output that cannot or must not be written.
    """
    from ..imageio import iter_images

    in_dir = Path(os.fspath(input_dir)).expanduser()
    out_dir = Path(os.fspath(output_dir)).expanduser()
    listing = iter_images(in_dir)
    check_output_folder("output folder", out_dir)
    if same_path(out_dir, in_dir):
        raise InvalidArgumentError(
            f"output folder {str(out_dir)!r} is the input folder; choose another so originals are never replaced."
        )
    sources = list(listing.images)
    outputs = [out_dir / name for name in output_names(sources)]
    inputs = {_resolved(p): ("input file", p) for p in [*sources, *(p for p, _ in listing.skipped)]}
    for path in outputs:
        if _resolved(path) in inputs:
            label, source = inputs[_resolved(path)]
            raise OutputWriteError(
                f"output image {str(path)!r} is the {label} {str(source)!r} (through a link); it would be overwritten."
            )
    if report is not None:
        label, report_path = report
        report_path = check_output_file(label, report_path)
        taken = {**inputs, _resolved(in_dir): ("input folder", in_dir),
                 **{_resolved(p): ("output image", p) for p in outputs}}  # fmt: skip
        if _resolved(report_path) in taken:
            what, path = taken[_resolved(report_path)]
            raise OutputWriteError(
                f"{label} {str(report_path)!r} is the {what} {str(path)!r}; it would be overwritten. Choose another path."
            )
    return FolderPlan(in_dir, out_dir, sources, outputs, list(listing.skipped))


def _change_metrics(original: torch.Tensor, purified: torch.Tensor) -> dict[str, float | None]:
    """How far the purification moved the image: L-inf in grey levels, PSNR (capped) and SSIM (None if too small)."""
    from ..metrics import finite_psnr, linf, ssim

    with torch.no_grad():
        a, b = original.double(), purified.double()
        out: dict[str, float | None] = {
            "linf_255": round(float(linf(a, b)[0]) * 255.0, 4),
            "psnr_db": round(float(finite_psnr(a, b)[0]), 4),
        }
        try:
            out["ssim"] = round(float(ssim(a, b)[0]), 6)
        except InvalidArgumentError:
            out["ssim"] = None
    return out


def purify_folder(
    purification: Purification | str,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    seed: int = 0,
    *,
    model=None,
    progress: bool = False,
    on_skip: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Purify every image in `input_dir` into `output_dir` and return a JSON-serialisable report.

    Each output is a PNG named after its source (``<stem>.png``; ``<stem>_<ext>.png`` when two sources share a
    stem), the same size, bit depth, alpha and ICC profile as its source, written atomically; the settings are
    stored in a PNG text chunk (:data:`METADATA_KEY`). Each image gets its own generator seeded by
    :func:`image_seed` from `seed` and its file name. Files that are not images, or cannot be read, are
    skipped with a reason; so is an image whose purification fails with a user error (recorded as
    ``"error: ..."``, and counted in ``"failed"``). Existing outputs are replaced; originals never are
    (see :func:`plan_folder_run` for what is refused before any work).

    Args:
        purification: a purification or a spec (then `model` as in :func:`get_purification`).
        input_dir, output_dir: folders; the output folder is created and must differ from the input folder.
        seed: the run's seed.
        progress: a tqdm bar over images.
        on_skip: called with (input path, reason) for each skipped file as the run meets it; by default an
            image that fails is logged as a warning.

    Returns:
        ``{"artshield_version", "purification" (its config), "spec", "input_dir", "output_dir", "seed",
        "images": [{"input", "output", "width", "height", "seed", "seconds", "linf_255", "psnr_db", "ssim"}],
        "skipped": [{"input", "reason"}], "failed", "total_seconds"}``.

    Raises:
        ImageReadError: `input_dir` is missing or not a folder.
        InvalidArgumentError: bad output folder or spec.
    """
    from ..imageio import read_image, write_png

    started = time.perf_counter()
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgumentError(f"`seed` must be an integer, but is {seed!r}.")
    plan = plan_folder_run(input_dir, output_dir)
    purification = get_purification(purification, model=model, progress=False)
    config = purification.config
    report: dict[str, Any] = {
        "artshield_version": __version__,
        "purification": config,
        "spec": purification.spec,
        "input_dir": str(plan.input_dir),
        "output_dir": str(plan.output_dir),
        "seed": seed,
        "images": [],
        "skipped": [],
        "failed": 0,
    }

    def skip(source: Path, reason: str, failed: bool = False) -> None:
        report["skipped"].append({"input": str(source), "reason": reason})
        if on_skip is not None:
            on_skip(str(source), reason)
        elif failed:
            logger.warning("%s: %s", source, reason)

    for path, reason in plan.skipped:
        skip(path, reason)
    iterator: Any = plan.sources
    bar = None
    if progress and len(plan.sources) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(plan.sources, desc=purification.name, unit="img", dynamic_ncols=True, file=sys.stderr)
        iterator = bar
    destinations = dict(zip(plan.sources, plan.outputs, strict=True))
    try:
        for source in iterator:
            try:
                loaded = read_image(source)
            except ImageReadError as exc:
                skip(source, str(exc))
                continue
            file_seed = image_seed(seed, source.name)
            generator = torch.Generator(device="cpu").manual_seed(file_seed)
            began = time.perf_counter()
            try:
                purified = purification(loaded.rgb, generator)
                destination = write_png(
                    destinations[source],
                    purified,
                    alpha=loaded.alpha,
                    bit_depth=loaded.bit_depth,
                    icc_profile=loaded.icc_profile,
                    text={METADATA_KEY: json.dumps({"source_name": source.name, "seed": file_seed, **config}, sort_keys=True)},
                    reference=loaded,
                )
            except ArtshieldError as exc:
                report["failed"] += 1
                skip(source, f"error: {exc}", failed=True)
                continue
            report["images"].append({
                "input": str(source),
                "output": str(destination),
                "width": int(loaded.rgb.shape[-1]),
                "height": int(loaded.rgb.shape[-2]),
                "seed": file_seed,
                "seconds": round(time.perf_counter() - began, 4),
                **_change_metrics(loaded.rgb, purified),
            })  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    report["total_seconds"] = round(time.perf_counter() - started, 3)
    return report


__all__ = ["METADATA_KEY", "FolderPlan", "output_names", "plan_folder_run", "purify_folder"]
