"""Where training examples come from, listed (not yet decoded): the two folder layouts diffusers' training
examples read, and ``datasets`` datasets.

* **DreamBooth** (``train_dreambooth_lora.py``): a folder of instance images that all share one prompt.
* **Text-to-image** (``train_text_to_image_lora.py``): a folder of captioned images, captions from a
  ``metadata.jsonl`` / ``metadata.csv`` (Hugging Face ``imagefolder``) or a ``.txt`` beside each image.
* **A ``datasets`` dataset** (``--dataset_name``: a hub id, a local ``imagefolder`` or a ``save_to_disk``
  folder), read with the optional ``datasets`` package (``pip install 'artshield[finetune]'``).

A missing or empty folder, or an image without a caption, is a named error before training starts.
"""


from __future__ import annotations

import csv
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageReadError, InvalidArgumentError
from ..imageio import iter_images

logger = logging.getLogger(__name__)

#: Files that may sit beside training images without being images themselves.
CAPTION_SUFFIX = ".txt"
METADATA_FILES = ("metadata.jsonl", "metadata.csv")


@dataclass(frozen=True)
class Example:
    """One training image and its caption.

    Attributes:
        source: the image file, or an in-memory PIL image (hub datasets).
        caption: the prompt the model is trained to associate with the image.
        name: how errors and logs refer to the image (the path, or ``dataset[index]``).
    """

    source: Any
    caption: str
    name: str



def _list_image_folder(folder: str | os.PathLike, flag: str, *, recursive: bool, sidecars: bool) -> list[Path]:
    """The images of a training folder, sorted; every other visible file is an error unless it is a caption
    or metadata file (when `sidecars`)."""
    try:
        listing = iter_images(folder, recursive=recursive)
    except ImageReadError as exc:
        raise ImageReadError(f"{flag}: {exc}") from exc
    for path, reason in listing.skipped:
        if sidecars and (path.suffix.lower() == CAPTION_SUFFIX or path.name in METADATA_FILES):
            continue
        raise ImageReadError(f"{flag}: {path}: {reason}; remove it from the folder or fix it.")
    if not listing.images:
        raise InvalidArgumentError(f"{flag} {os.fspath(folder)!r} holds no images.")
    return list(listing.images)


# ------------------------------------------------------------------------------------------- DreamBooth
def dreambooth_examples(folder: str | os.PathLike, prompt: str, flag: str = "--instance_data_dir") -> list[Example]:
    """Every image of `folder` (not recursive, as diffusers' DreamBoothDataset) with the same `prompt`."""
    if not prompt or not prompt.strip():
        raise InvalidArgumentError(f"the prompt for {flag} must be a non-empty string.")
    # Caption files beside the images (common in datasets prepared for other trainers) are tolerated.
    files = _list_image_folder(folder, flag, recursive=False, sidecars=True)
    return [Example(path, prompt, str(path)) for path in files]


# ------------------------------------------------------------------------------------------- text-to-image
def caption_folder_examples(
    folder: str | os.PathLike,
    caption_column: str = "text",
    image_column: str = "file_name",
    flag: str = "--train_data_dir",
) -> list[Example]:
    """Captioned images of `folder`: from ``metadata.jsonl``/``metadata.csv`` if present, else ``.txt`` files.

    Raises:
        ImageReadError: the folder is missing, a listed image is missing, or a file is not an image.
        InvalidArgumentError: no images, a metadata line without the caption, or an image without a ``.txt``.
    """
    root = Path(os.fspath(folder))
    files = _list_image_folder(root, flag, recursive=True, sidecars=True)
    metadata = [root / name for name in METADATA_FILES if (root / name).is_file()]
    if metadata:
        return _metadata_examples(root, metadata[0], files, caption_column, image_column, flag)
    examples = []
    for path in files:
        caption_file = path.with_suffix(CAPTION_SUFFIX)
        if not caption_file.is_file():
            raise InvalidArgumentError(
                f"{flag}: {path} has no caption: add {caption_file.name} beside it, or a metadata.jsonl with "
                f"'file_name' and {caption_column!r} columns."
            )
        try:
            caption = caption_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(f"{flag}: cannot read the caption file {caption_file} ({exc}).") from exc
        if not caption:
            raise InvalidArgumentError(f"{flag}: the caption file {caption_file} of {path} is empty.")
        examples.append(Example(path, caption, str(path)))
    return examples


def _read_metadata(path: Path, flag: str) -> list[tuple[int, dict]]:
    """Rows of metadata.jsonl / metadata.csv as (line number, dict)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"{flag}: cannot read {path} ({exc}).") from exc
    if path.suffix == ".csv":
        return [(i + 2, dict(row)) for i, row in enumerate(csv.DictReader(text.splitlines()))]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(f"{flag}: {path} line {number} is not valid JSON ({exc.msg}).") from exc
        if not isinstance(row, dict):
            raise InvalidArgumentError(f"{flag}: {path} line {number} must be a JSON object.")
        rows.append((number, row))
    return rows


def _metadata_examples(
    root: Path, metadata: Path, files: list[Path], caption_column: str, image_column: str, flag: str
) -> list[Example]:
    examples: list[Example] = []
    listed: set[Path] = set()
    available = {p.resolve() for p in files}
    for number, row in _read_metadata(metadata, flag):
        where = f"{metadata} line {number}"
        file_name = row.get(image_column)
        if not isinstance(file_name, str) or not file_name:
            raise InvalidArgumentError(f"{flag}: {where} has no {image_column!r} entry.")
        path = (root / file_name).resolve()
        if root.resolve() not in path.parents:
            raise InvalidArgumentError(f"{flag}: {where} names {file_name!r}, which is outside {root}.")
        if not path.is_file():
            raise ImageReadError(f"{flag}: {where} names {file_name!r}, but {path} does not exist.")
        if path not in available:
            raise ImageReadError(f"{flag}: {where} names {path}, which is not an image file.")
        caption = row.get(caption_column)
        if not isinstance(caption, str) or not caption.strip():
            columns = ", ".join(repr(k) for k in row if k != image_column) or "none"
            raise InvalidArgumentError(
                f"{flag}: {where} ({file_name}) has no caption in column {caption_column!r} (columns: {columns}); "
                "pass --caption_column to pick another."
            )
        examples.append(Example(path, caption.strip(), str(path)))
        listed.add(path)
    unlisted = sorted(available - listed)
    if unlisted:
        logger.warning(
            "%s: %d image(s) are not listed in %s and are not used (e.g. %s).",
            flag, len(unlisted), metadata.name, unlisted[0],
        )
    if not examples:
        raise InvalidArgumentError(f"{flag}: {metadata} lists no images.")
    return examples


#: Files ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` write at the top of their folder.
SAVED_DATASET_MARKERS = (("dataset_dict.json",), ("state.json", "dataset_info.json"))
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


@dataclass(frozen=True, eq=False)
class DatasetImage:
    """An image cell of a ``datasets`` dataset, read when needed (row `index` of `column`).

    Holding the (memory-mapped) dataset rather than decoded images keeps large datasets out of memory, as
    diffusers' lazily transformed datasets do; :func:`load_image` decodes it and names the row on failure.
    """

    dataset: Any
    index: int
    column: str

    def value(self) -> Any:
        """The raw cell: ``{"bytes", "path"}`` for an ``Image`` column (read undecoded), else what it holds."""
        return self.dataset[self.index][self.column]


def decode_dataset_image(source: DatasetImage, name: str) -> Any:
    """A PIL image or a file path for a dataset cell; ImageReadError naming the row if it holds no image."""
    import io

    from PIL import Image

    try:
        value = source.value()
    except Exception as exc:  # noqa: BLE001 - arrow/decoding errors of one row
        raise ImageReadError(f"{name}: cannot read the row ({exc}).") from exc
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        if value.get("bytes"):
            try:
                image = Image.open(io.BytesIO(value["bytes"]))
                image.load()
            except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds on corrupt data
                raise ImageReadError(
                    f"{name}: column {source.column!r} does not hold a readable image ({exc or type(exc).__name__})."
                ) from exc
            return image
        return value["path"]
    if isinstance(value, (str, os.PathLike)) and Path(os.fspath(value)).is_file():
        return value
    if hasattr(value, "mode") and hasattr(value, "size") and hasattr(value, "load"):  # a PIL image
        return value
    raise ImageReadError(
        f"{name}: column {source.column!r} holds {type(value).__name__}, not an image; pass --image_column to "
        "pick the image column."
    )


def _is_saved_dataset(folder: Path) -> bool:
    return folder.is_dir() and any(all((folder / f).is_file() for f in files) for files in SAVED_DATASET_MARKERS)


def _train_split(loaded: Any, dataset_name: str) -> Any:
    """The ``train`` split of a DatasetDict (or its only split), or the Dataset itself."""
    if not isinstance(loaded, dict):  # a Dataset (DatasetDict is a dict of splits)
        return loaded
    splits = list(loaded.keys())
    if "train" in splits:
        return loaded["train"]
    if len(splits) == 1:
        logger.info("--dataset_name %s has no 'train' split; using its only split %r.", dataset_name, splits[0])
        return loaded[splits[0]]
    raise InvalidArgumentError(
        f"--dataset_name {dataset_name!r} has no 'train' split (splits: {', '.join(splits) or 'none'})."
    )


def _load_hub_dataset(datasets: Any, dataset_name: str, config_name: str | None, cache_dir: str | None) -> Any:
    """``load_dataset`` for a hub id: online as usual; offline (or hub unreachable) from the cache only, with
    one clear line when the dataset is not cached (instead of half a minute of retries and a traceback)."""
    from ..models.hub import first_line, hub_online

    online = hub_online()
    switches = [k for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if hasattr(datasets.config, k)]
    saved = {k: getattr(datasets.config, k) for k in switches}
    try:
        if not online:
            for key in switches:  # use only the local cache, at once
                setattr(datasets.config, key, True)
        return datasets.load_dataset(dataset_name, config_name, cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - hub, network and format errors all mean "cannot read it"
        if not online:
            raise InvalidArgumentError(
                f"--dataset_name {dataset_name!r}: the dataset is not in the local Hugging Face cache"
                f"{' (' + cache_dir + ')' if cache_dir else ''} and the hub cannot be reached (there is no local "
                f"folder {dataset_name!r} either). Download it once on a connected machine "
                f"(`hf download --repo-type dataset {dataset_name}`, or run once online with the same --cache_dir), "
                "or pass a local imagefolder, a save_to_disk folder or --train_data_dir."
            ) from exc
        raise InvalidArgumentError(f"--dataset_name {dataset_name!r}: cannot load it ({first_line(exc)}).") from exc
    finally:
        for key, value in saved.items():
            setattr(datasets.config, key, value)


def hub_dataset_examples(
    dataset_name: str,
    dataset_config_name: str | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
    cache_dir: str | None = None,
) -> list[Example]:
    """Captioned images of a ``datasets`` dataset (``--dataset_name``, as diffusers' ``train_text_to_image.py``).

    `dataset_name` may be a hub id (``load_dataset(name, config, cache_dir=...)``; from the cache when
    offline), a local folder ``load_dataset`` reads (an ``imagefolder`` with ``metadata.jsonl``/``.csv``, or
    parquet/csv/json files), or a folder written by ``save_to_disk`` (read with ``load_from_disk``). The
    ``train`` split is used. Columns: `image_column` and `caption_column` when given (they must exist); else
    ``image``/``text`` when present, else the first column for the images and the first other one (the
    second, usually) for the captions. A caption cell holding a list contributes its first caption.

    Images stay in the dataset and are decoded by :class:`TrainingDataset` (before training, as every image).

    Raises:
        InvalidArgumentError: `datasets` is not installed, the dataset cannot be loaded (not cached offline,
            no such dataset), no ``train`` split, a missing column, no rows, a row without a caption.
        ImageReadError: (when decoded) a row whose image cannot be read; the message names the row.
    """
    try:
        import datasets
    except ImportError as exc:
        raise InvalidArgumentError(
            "--dataset_name needs the `datasets` package: pip install 'artshield[finetune]' (or download the "
            "images and pass --train_data_dir with a metadata.jsonl)."
        ) from exc
    from ..models.hub import first_line

    local = Path(dataset_name).expanduser()
    if _is_saved_dataset(local):
        if dataset_config_name:
            logger.warning("--dataset_config_name is ignored for a save_to_disk folder (%s).", local)
        try:
            loaded = datasets.load_from_disk(str(local))
        except Exception as exc:  # noqa: BLE001 - a damaged or incompatible arrow folder
            raise InvalidArgumentError(f"--dataset_name {dataset_name!r}: cannot read it ({first_line(exc)}).") from exc
    elif local.is_dir():
        try:
            loaded = datasets.load_dataset(str(local), dataset_config_name, cache_dir=cache_dir)
        except Exception as exc:  # noqa: BLE001 - no data files, bad metadata, unknown format
            raise InvalidArgumentError(f"--dataset_name {dataset_name!r}: cannot load it ({first_line(exc)}).") from exc
    elif local.exists():
        raise InvalidArgumentError(
            f"--dataset_name {dataset_name!r} is a file; pass a folder (imagefolder or save_to_disk) or a hub id."
        )
    elif not _HUB_ID.match(dataset_name):
        raise InvalidArgumentError(f"--dataset_name {dataset_name!r}: no such folder, and not a hub dataset id.")
    else:
        loaded = _load_hub_dataset(datasets, dataset_name, dataset_config_name, cache_dir)
    dataset = _train_split(loaded, dataset_name)

    columns = list(dataset.column_names)
    for column, flag in ((image_column, "--image_column"), (caption_column, "--caption_column")):
        if column is not None and column not in columns:
            raise InvalidArgumentError(
                f"{flag} {column!r} is not a column of --dataset_name {dataset_name!r} "
                f"(columns: {', '.join(columns) or 'none'})."
            )
    if image_column is None:
        image_column = "image" if "image" in columns else (columns[0] if columns else None)
    if caption_column is None:
        others = [c for c in columns if c != image_column]
        caption_column = "text" if "text" in others else (others[0] if others else None)
    if image_column is None or caption_column is None:
        raise InvalidArgumentError(
            f"--dataset_name {dataset_name!r} needs an image column and a caption column, but has the columns: "
            f"{', '.join(columns) or 'none'}."
        )
    if image_column == caption_column:
        raise InvalidArgumentError(f"--image_column and --caption_column are both {image_column!r}.")
    if len(dataset) == 0:
        raise InvalidArgumentError(f"--dataset_name {dataset_name!r}: its train split is empty (no rows).")
    logger.info("--dataset_name %s: %d rows, images from %r, captions from %r.",
                dataset_name, len(dataset), image_column, caption_column)  # fmt: skip
    if isinstance(dataset.features.get(image_column), datasets.Image):
        # Undecoded cells ({"bytes", "path"}): decoded one at a time, so a bad one names its row.
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))

    examples = []
    for index, caption in enumerate(dataset[caption_column]):
        if isinstance(caption, (list, tuple)):
            caption = caption[0] if caption else ""  # diffusers picks one of several captions; take the first
        name = f"--dataset_name {dataset_name!r} row {index}"
        if not isinstance(caption, str) or not caption.strip():
            raise InvalidArgumentError(
                f"{name} has no caption in column {caption_column!r} (it holds {caption!r}); pass --caption_column "
                "to pick another."
            )
        examples.append(Example(DatasetImage(dataset, index, image_column), caption.strip(), name))
    return examples


def select_examples(examples: list[Example], max_samples: int | None, seed: int | None) -> list[Example]:
    """Keep a seeded random subset of `max_samples` examples (diffusers: ``shuffle(seed).select(range(n))``)."""
    if max_samples is None or max_samples >= len(examples):
        return examples
    order = np.random.default_rng(seed).permutation(len(examples))[:max_samples]
    return [examples[i] for i in sorted(order)]


__all__ = [
    "CAPTION_SUFFIX",
    "METADATA_FILES",
    "DatasetImage",
    "Example",
    "caption_folder_examples",
    "decode_dataset_image",
    "dreambooth_examples",
    "hub_dataset_examples",
    "select_examples",
]
