"""Validation images during training: generated with the current weights, logged to the trackers and the
fidelity monitor, and saved as PNGs under ``output_dir/validation``.

Imports torch and diffusers only when called (the command line's ``--help`` and argument errors stay fast).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

MONITOR_MODULE = "artshield.finetune.monitor"


def log_validation(
    model,
    unet,
    text_encoder,
    config,
    accelerator,
    step: int,
    monitor=None,
    phase: str = "validation",
) -> list:
    """Generate ``num_validation_images`` for ``validation_prompt`` with the current weights (eval mode:
    Bayesian layers use their means), log them to the trackers and the fidelity monitor, save them as PNGs
    under ``output_dir/validation``; the global RNG is left untouched (so validation never changes training).

    `config` is the run's :class:`~artshield.finetune.config.TrainConfig`.
    """
    import numpy as np
    import torch
    from diffusers import DPMSolverMultistepScheduler

    from ..imageio import from_pil, write_png

    logger.info("Running %s: %d images of %r", phase, config.num_validation_images, config.validation_prompt)
    weight_dtype = model.dtype
    unet = accelerator.unwrap_model(unet)
    text_encoder = accelerator.unwrap_model(text_encoder) if text_encoder is not None else model.text_encoder
    scheduler_args = {}
    variance_type = model.scheduler.config.get("variance_type")
    if variance_type in ("learned", "learned_range"):
        scheduler_args["variance_type"] = "fixed_small"
    current = dataclasses.replace(model, unet=unet, text_encoder=text_encoder)
    pipeline = current.pipeline("text2img", scheduler=DPMSolverMultistepScheduler.from_config(model.scheduler.config, **scheduler_args))
    modes = [(m, m.training) for m in (unet, text_encoder)]
    for m, _ in modes:
        m.eval()
    generator = torch.Generator(device="cpu").manual_seed(config.seed) if config.seed is not None else None
    images = []
    try:
        # Explicit autocast: accelerate enables none for fp16 on the CPU, where frozen fp16 parts meet fp32 ones.
        autocast = torch.autocast(accelerator.device.type, dtype=weight_dtype, enabled=weight_dtype != torch.float32)
        with torch.random.fork_rng(devices=[]), torch.no_grad(), autocast:
            for _ in range(config.num_validation_images):
                images.append(
                    pipeline(
                        config.validation_prompt,
                        num_inference_steps=config.validation_inference_steps,
                        height=config.resolution,
                        width=config.resolution,
                        generator=generator,
                    ).images[0]
                )
    finally:
        for m, training in modes:
            m.train(training)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images(phase, np.stack([np.asarray(img) for img in images]), step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log(
                {phase: [wandb.Image(img, caption=f"{i}: {config.validation_prompt}") for i, img in enumerate(images)]}
            )
    folder = Path(config.output_dir) / "validation"
    for i, image in enumerate(images):
        write_png(folder / f"{phase}-step{step:06d}-{i}.png", from_pil(image).rgb)
    if monitor is not None:
        monitor.log(step, images, accelerator)
    return images


def make_monitor(config):
    """The fidelity monitor (``artshield.finetune.monitor``) for runs with a validation prompt, or None when
    there is no prompt or the module cannot be imported."""
    import importlib

    if config.validation_prompt is None:
        return None
    try:
        module = importlib.import_module(MONITOR_MODULE)
    except ImportError as exc:
        logger.info("No fidelity monitor (%s).", exc)
        return None
    return module.FidelityMonitor.from_args(config, config.output_dir)


__all__ = ["MONITOR_MODULE", "log_validation", "make_monitor"]
