"""How the demo world's small fitted models (the style metric, the structure judge) are kept on disk: a folder
with one safetensors file of tensors and a ``config.json`` of everything else. Nothing is ever unpickled."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ...errors import ModelLoadError, ModelNotFoundError

CONFIG_FILE = "config.json"


def save_folder(module: torch.nn.Module, folder: str | os.PathLike, weights_file: str, config: dict) -> Path:
    """Write `module`'s state as ``weights_file`` (safetensors) and `config` as ``config.json`` in `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(folder / weights_file))
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def read_config(folder: str | os.PathLike, weights_file: str, what: str) -> dict:
    """The ``config.json`` of a folder written by :func:`save_folder`; `what` names the model in errors."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / weights_file).is_file():
        raise ModelNotFoundError(f"{what} folder {folder}: expected {CONFIG_FILE} and {weights_file}.")
    try:
        return json.loads((folder / CONFIG_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{what} folder {folder}: {CONFIG_FILE} is not valid JSON ({exc}).") from exc


def load_weights(module: torch.nn.Module, folder: str | os.PathLike, weights_file: str, what: str) -> torch.nn.Module:
    """Fill `module` from ``weights_file`` in `folder`; returns it in eval mode."""
    from safetensors.torch import load_file

    try:
        module.load_state_dict(load_file(str(Path(folder) / weights_file)))
    except RuntimeError as exc:
        raise ModelLoadError(f"{what} folder {folder}: {str(exc).splitlines()[0]}") from exc
    return module.eval()


def shipped_folder(name: str, what: str, remedy: str) -> Path:
    """``DEMO_WEIGHTS / name``, or a one-line error saying how to make it."""
    from . import DEMO_WEIGHTS

    folder = DEMO_WEIGHTS / name
    if not folder.is_dir():
        raise ModelNotFoundError(f"the demo {what} is missing from {folder}; reinstall artshield or {remedy}.")
    return folder


__all__ = ["CONFIG_FILE", "load_weights", "read_config", "save_folder", "shipped_folder"]
