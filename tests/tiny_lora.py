"""Test helper: a LoRA written by artshield's own trainer (``artshield finetune --method lora``), in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from artshield.models.demo.world import ARTIST_STYLE, caption, render


def train_lora(base: str | Path, folder: Path, *, resolution: int, text_encoder: bool = True, steps: int = 1) -> Path:
    """Train a rank-4 LoRA on two artist-style images for `steps` steps at a high learning rate (so that it
    visibly changes the model) and return its output folder (``pytorch_lora_weights.safetensors`` inside)."""
    from artshield.finetune.train import main

    data = folder / "images"
    data.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        Image.fromarray(np.ascontiguousarray(render(ARTIST_STYLE, "tree", (resolution, resolution), seed=i))).save(
            data / f"{i}.png"
        )
    output = folder / "lora"
    argv = [
        "--method", "lora", "--pretrained_model_name_or_path", str(base), "--instance_data_dir", str(data),
        "--instance_prompt", caption(ARTIST_STYLE, "tree"), "--output_dir", str(output),
        "--resolution", str(resolution), "--train_batch_size", "1", "--max_train_steps", str(steps),
        "--learning_rate", "0.05", "--rank", "4", "--seed", "0", "--report_to", "none",
    ] + (["--train_text_encoder"] if text_encoder else [])  # fmt: skip
    assert main(argv) == 0
    assert (output / "pytorch_lora_weights.safetensors").is_file()
    return output


def local_lora(base: str | Path, path: Path, *, steps: int) -> Path:
    """A rank-4 LoRA from `steps` high-learning-rate LocalTrainer steps on two random images of the model's
    native size, saved (safetensors, diffusers' keys) at `path`; returns `path`."""
    import torch
    from safetensors.torch import save_file

    from artshield.finetune import LocalTrainer
    from artshield.models import load

    model = load(str(base), device="cpu", dtype="fp32")
    side = model.native_resolution
    gen = torch.Generator().manual_seed(3)
    images = [torch.rand(3, side, side, generator=gen) for _ in range(2)]
    update = LocalTrainer(model, rank=4, learning_rate=0.05, resolution=side, seed=0).train_steps(images, steps, prompt="sks")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in update.state_dict.items()}, str(path))
    return path
