"""What ``artshield evaluate`` reads and where it writes: the clean and protected image sets (matched by file
stem, as ``protect`` names its outputs) and the checks its output folder passes before any work."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ImageReadError, InvalidArgumentError, OutputWriteError
from ..fileio import check_output_file, same_path
from ..imageio import iter_images, read_image
from .report import safe_name

#: The label of the artist's original images.
CLEAN = "clean"


@dataclass
class ImageSets:
    """The clean images and each protected set, matched by file stem, as float (C, H, W) tensors in [0, 1]."""

    names: list[str]
    clean: list[torch.Tensor]
    protected: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    folders: dict[str, str] = field(default_factory=dict)


def _read_folder(folder: Path, what: str) -> dict[str, torch.Tensor]:
    listing = iter_images(folder)
    images: dict[str, torch.Tensor] = {}
    for path in listing:
        if path.stem in images:
            raise InvalidArgumentError(f"{what} folder {folder}: two images share the name {path.stem!r}.")
        images[path.stem] = read_image(path).rgb[0]
    if not images:
        raise ImageReadError(f"{what} folder {folder} holds no images.")
    return images


def load_image_sets(clean_dir: str | Path, protected: dict[str, str | Path], max_images: int | None = None) -> ImageSets:
    """Read the clean folder and every protected folder; every clean image needs its protected version.

    Refused (InvalidArgumentError): `max_images` below 1; a protected folder that is the clean folder (by any
    spelling or link) or whose images are the clean images unchanged (the comparison would be meaningless);
    two protected labels that would share a report folder.
    """
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1):
        raise InvalidArgumentError(f"`max_images` must be a positive integer or None, but is {max_images!r}.")
    folders: dict[str, str] = {}
    for label, folder in protected.items():
        if same_path(folder, clean_dir):
            raise InvalidArgumentError(
                f"protected folder {str(folder)!r} ({label}) is the clean folder {str(clean_dir)!r}; pass the "
                "protected images (what `protect` wrote)."
            )
        clash = next((other for other in folders if safe_name(other) == safe_name(label)), None)
        if label == CLEAN or clash is not None:
            raise InvalidArgumentError(f"protected label {label!r} clashes with {clash or CLEAN!r}; choose distinct labels.")
        folders[label] = str(folder)
    clean = _read_folder(Path(clean_dir), "clean")
    names = sorted(clean)[:max_images]
    sets = ImageSets(names=names, clean=[clean[n] for n in names], folders={CLEAN: str(clean_dir)})
    for label, folder in protected.items():
        found = _read_folder(Path(folder), f"protected ({label})")
        missing = [n for n in names if n not in found]
        if missing:
            raise InvalidArgumentError(
                f"protected folder {folder} ({label}) lacks {len(missing)} of the clean images: {', '.join(missing[:5])}"
                + (" ..." if len(missing) > 5 else "") + " (images are matched by file name without extension)."
            )
        for n in names:
            if found[n].shape[-2:] != clean[n].shape[-2:]:
                raise InvalidArgumentError(
                    f"protected image {n} in {folder} is {tuple(found[n].shape[-2:])} but its clean version is "
                    f"{tuple(clean[n].shape[-2:])}; protections keep the size, so these are not the same image."
                )
        if all(torch.equal(found[n], clean[n]) for n in names):
            raise InvalidArgumentError(
                f"protected folder {folder} ({label}) holds the clean images unchanged; pass the protected images "
                "(what `protect` wrote)."
            )
        sets.protected[label] = [found[n] for n in names]
        sets.folders[label] = str(folder)
    return sets


#: What :func:`evaluate` writes under its output folder.
OUTPUT_FILES = ("report.json", "report.html")
OUTPUT_FOLDERS = ("cells", "inputs", "grids")


def check_output_folder(output_dir: str | Path, inputs: dict[str, str | Path]) -> Path:
    """Refuse, before any work, an output folder :func:`evaluate` must not write to: a file, a path under a
    file, one of the input folders (`inputs`: label -> folder), or a folder whose ``cells``, ``inputs`` or
    ``grids`` (which a run rewrites) holds an input folder. Returns the expanded path."""
    output = Path(output_dir).expanduser()
    if output.exists() and not output.is_dir():
        raise OutputWriteError(f"output {str(output)!r} is a file; give a folder (report.json, report.html and "
                               "cells/ are written in it).")  # fmt: skip
    for parent in output.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputWriteError(f"output {str(output)!r}: {str(parent)!r} is a file, not a folder.")
            break
    for label, folder in inputs.items():
        what = "the clean folder" if label == CLEAN else f"the protected folder ({label})"
        if same_path(output, folder):
            raise OutputWriteError(f"output {str(output)!r} is {what} {str(folder)!r}; choose another folder.")
        resolved = Path(folder).expanduser().resolve()
        for name in OUTPUT_FOLDERS:
            managed = (output / name).resolve()
            if resolved == managed or managed in resolved.parents:
                raise OutputWriteError(f"output {str(output)!r}: {what} {str(folder)!r} lies in its {name}/, which "
                                       "a run rewrites; choose another output folder.")  # fmt: skip
    for name in OUTPUT_FILES:
        check_output_file("output", output / name)
    return output


__all__ = ["CLEAN", "OUTPUT_FILES", "OUTPUT_FOLDERS", "ImageSets", "check_output_folder", "load_image_sets"]
