"""What the demo model's two training scripts (:mod:`.train`, the text-to-image model, and
:mod:`.train_inpaint`, its inpainting UNet) share: the sampling settings they evaluate with, logging and
progress lines, tensor conversion, the VAE posterior cache, fp16 rounding and saving, CPU settings, the
environment record of a training-info JSON, and the ``main`` of a script. (Output folders are written with
:func:`artshield.fileio.staging_folder` and :func:`artshield.fileio.publish_folder`.)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

CAPTION_DROPOUT = 0.1  # captions dropped to "" so that classifier-free guidance works
GUIDANCE_SCALE, SAMPLING_STEPS = 5.0, 20  # DDIM settings of the evaluations


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def log_progress(phase: str, step: int, total: int, losses: list[float], start: float, what: str = "loss",
                 first: int = 0) -> None:
    """Every 50 steps and at the last: the mean of the last 50 losses, time per step and the time left
    (`first`: the step this process started from, when it resumed a run)."""
    done = step + 1
    if done % 50 and done != total:
        return
    per_step = (time.time() - start) / max(done - first, 1)
    log(f"{phase} step {done}/{total} {what} {np.mean(losses[-50:]):.4f} "
        f"({per_step:.2f} s/step, eta {per_step * (total - done):.0f} s)")


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def encode_posteriors(vae, images: torch.Tensor, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Unscaled posterior mean and std of every image (the UNet phase samples from them)."""
    means, stds = [], []
    for i in range(0, images.shape[0], batch):
        posterior = vae.encode(images[i : i + batch] * 2.0 - 1.0).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def round_to_fp16(*modules: torch.nn.Module) -> None:
    """Round weights to fp16 precision in place (still fp32 tensors): what we evaluate is what we ship."""
    with torch.no_grad():
        for module in modules:
            for tensor in (*module.parameters(), *module.buffers()):
                if tensor.is_floating_point():
                    tensor.copy_(tensor.half().float())


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def save_grid(images: torch.Tensor, columns: int, path: str) -> None:
    from PIL import Image

    rows = -(-images.shape[0] // columns)
    pad = torch.zeros(rows * columns - images.shape[0], *images.shape[1:])
    grid = torch.cat([images, pad]).reshape(rows, columns, *images.shape[1:])
    grid = grid.permute(0, 3, 1, 4, 2).reshape(rows * images.shape[2], columns * images.shape[3], 3)
    Image.fromarray((grid.numpy() * 255 + 0.5).astype(np.uint8)).save(path)


def environment_info(module: str, args: argparse.Namespace) -> dict:
    """Library versions, the machine and the command line, for a training-info JSON."""
    import diffusers
    import transformers

    return {
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "command": " ".join(["python", "-m", module, *getattr(args, "argv", [])]),
    }


def _flush_denormal_enabled() -> bool:
    return float(torch.tensor(1e-40) * 1.0) == 0.0  # a float32 subnormal survives unless flushed


@contextmanager
def cpu_settings(threads: int) -> Iterator[None]:
    """Run with `threads` torch CPU threads and denormal floats flushed to zero (tiny weights and gradients
    early in training can slow CPU kernels manyfold), restoring both process-wide settings afterwards."""
    saved_threads, saved_flush = torch.get_num_threads(), _flush_denormal_enabled()
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        torch.set_flush_denormal(saved_flush)


def save_fp16(module: torch.nn.Module, folder: Path) -> None:
    """``save_pretrained`` in fp16 safetensors (halves the files; ``torch_dtype=float32`` upcasts exactly,
    since :func:`round_to_fp16` rounded the weights already), leaving `module` in fp32."""
    from diffusers.utils import logging as diffusers_logging

    saved = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # diffusers warns that .to() casting may differ from torch_dtype=
    try:
        module.to(torch.float16).save_pretrained(str(folder), safe_serialization=True)
    finally:
        module.float()
        diffusers_logging.set_verbosity(saved)


class WorkFolder:
    """Where a training script keeps its checkpoints until the output is published, so that an interrupted run
    resumes where it stopped (a run that resumes draws exactly the random numbers it would have drawn).

    ``recipe.json`` records the settings the run started with; a second run with other settings refuses the
    folder rather than mixing two recipes. Checkpoints are ``torch.save`` files of tensors, numbers and lists
    only, read back with ``torch.load(weights_only=True)`` (no arbitrary unpickling), each written atomically.
    """

    def __init__(self, folder: Path, recipe: dict[str, Any]) -> None:
        import json

        from ...errors import InvalidArgumentError
        from ...fileio import write_json_atomic

        self.folder = Path(folder)
        recorded = self.folder / "recipe.json"
        if recorded.is_file():
            try:
                previous = json.loads(recorded.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InvalidArgumentError(f"work folder {str(self.folder)!r}: recipe.json is unreadable ({exc}); "
                                           "delete the folder to start over.") from exc
            if previous != recipe:
                changed = sorted(k for k in {*previous, *recipe} if previous.get(k) != recipe.get(k))
                raise InvalidArgumentError(
                    f"work folder {str(self.folder)!r} holds a run with other settings ({', '.join(changed)}); "
                    "delete it to start over, or pass the same settings to resume it.")
        else:
            write_json_atomic(recorded, recipe, what="training recipe")

    def load(self, name: str) -> dict[str, Any] | None:
        from ...errors import InvalidArgumentError

        path = self.folder / f"{name}.pt"
        if not path.is_file():
            return None
        try:
            return torch.load(path, weights_only=True)
        except Exception as exc:  # truncated, foreign or pickled-object files all land here
            raise InvalidArgumentError(f"checkpoint {str(path)!r} cannot be read ({type(exc).__name__}); delete "
                                       f"{str(self.folder)!r} to start over.") from exc

    def save(self, name: str, state: dict[str, Any]) -> None:
        from ...fileio import atomic_write

        atomic_write(self.folder / f"{name}.pt", lambda fh: torch.save(state, fh), what="training checkpoint")

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


class PhaseCheckpoints:
    """Checkpoints of one training loop inside a :class:`WorkFolder`: every `every` steps (and at the end),
    the state of each object that has ``state_dict``/``load_state_dict`` (modules, optimizer, schedule, EMA),
    the generator's state, the losses so far and the number of steps done."""

    def __init__(self, work: WorkFolder | None, phase: str, every: int) -> None:
        self.work, self.phase, self.every = work, phase, every

    def restore(self, objects: dict[str, Any], generator: torch.Generator) -> tuple[int, list[float]]:
        """Load the latest checkpoint into `objects` and `generator`; returns (steps done, losses so far)."""
        state = self.work.load(self.phase) if self.work is not None else None
        if state is None:
            return 0, []
        for name, obj in objects.items():
            obj.load_state_dict(state["objects"][name])
        generator.set_state(state["generator"])
        log(f"{self.phase}: resumed from {self.work.folder} at step {state['step']}")
        return int(state["step"]), list(state["losses"])

    def step_done(self, step: int, total: int, objects: dict[str, Any], generator: torch.Generator,
                  losses: list[float]) -> None:
        if self.work is None or (step % self.every and step != total):
            return
        self.work.save(self.phase, {"step": step, "losses": losses, "generator": generator.get_state(),
                                    "objects": {name: obj.state_dict() for name, obj in objects.items()}})


def run_script(module: str, train_fn: Callable, parse_args_fn: Callable, argv: list[str] | None) -> int:
    """The ``main`` of a training script: offline, user errors as one line and exit status 2."""
    from ...cli_support import run_command

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args_fn(argv)
    args.argv = argv
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def body() -> int:
        train_fn(args)
        return 0

    return run_command(f"python -m {module}", body, "no partial output folder was left.")


__all__ = [
    "CAPTION_DROPOUT",
    "PhaseCheckpoints",
    "WorkFolder",
    "GUIDANCE_SCALE",
    "SAMPLING_STEPS",
    "cpu_settings",
    "encode_posteriors",
    "environment_info",
    "folder_size",
    "log",
    "log_progress",
    "round_to_fp16",
    "run_script",
    "save_fp16",
    "save_grid",
    "to_tensor",
]
