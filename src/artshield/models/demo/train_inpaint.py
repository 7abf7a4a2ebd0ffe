"""Train the demo model's inpainting variant (a 9-channel UNet) from the demo model, on a CPU, from a seed.

    python -m artshield.models.demo.train_inpaint --output-dir DIR [--base demo|FOLDER] [--seed 0]
        [--steps N] [--batch-size N] [--lr LR] [--condition-lr-multiplier M] [--images-per-style N]
        [--masks-per-image N] [--threads N] [--samples-png PNG] [--tiny]

It writes ``DIR/unet_inpaint/`` (a diffusers ``UNet2DConditionModel`` folder, fp16 safetensors) and
``DIR/inpaint_training_info.json``, each replaced atomically, leaving everything else in DIR alone. The
shipped ``artshield/models/demo/weights/unet_inpaint`` is one run of this script with its defaults, and
``models.load("demo-inpaint")`` is the demo model with that UNet; run it with ``--output-dir`` set to the
demo weights folder to rebuild it in place.

Recipe, after Stable Diffusion's inpainting model (``runwayml/stable-diffusion-inpainting``'s model card):

a. the UNet takes 9 input channels — the noisy latents, the mask at latent resolution and the VAE latents
   of the masked image — and is initialised from the base (text-to-image) UNet: every weight copied, the
   first 4 input channels of ``conv_in`` copied, the 5 extra ones zero, so that before training it is
   exactly the base model ignoring its condition;
b. images of the demo world's training styles (:func:`.world.make_dataset`, seeds distinct from the demo
   model's own) with their captions, the caption dropped to ``""`` 30% of the time (classifier-free
   guidance; SD dropped 10%, which on this budget taught the UNet to follow the prompt and ignore the masked
   image, so ``--caption-dropout`` defaults to 0.3);
c. masks (1 = region to repaint): the whole image 25% of the time, as SD did; otherwise a LaMa-style
   synthetic mask — 1 to 3 random rectangles (40%), 1 to 3 thick random-walk brush strokes (40%) or one
   random ellipse (20%), inverted a quarter of the time so that the surroundings are repainted and the
   shapes kept (DiffusionGuard's default editable region is of that kind), and redrawn until it covers
   5–95% of the image;
d. the condition built as diffusers' ``StableDiffusionInpaintPipeline`` builds it (and as
   ``DiffusionGuard.objective`` does): the binary mask nearest-downsampled to the latent size, and the
   masked image — the image in [-1, 1] times (1 - mask), i.e. mid-grey in [0, 1] pixel units — encoded by
   the VAE as a posterior *sample* scaled by its ``scaling_factor``;
e. the VAE and the text encoder frozen; the UNet trained on the ordinary diffusion loss over the whole
   latent (epsilon or v, per the base scheduler's ``prediction_type``), AdamW with warmup and cosine
   decay and an EMA of the weights, as :mod:`.train` trains the base UNet. ``--condition-lr-multiplier``
   (default 1, SD's recipe) scales the steps of the 5 new input channels; at 10 they grow 2.5x larger in
   the same time, which improved the kept region a little but not the masked-region loss, so the shipped
   UNet does not use it. ``--masked-loss-weight`` (default 1, SD's recipe) weighs the repainted region's
   latent elements that much more than the kept region's. Tried on 2026-12-03 at 4, with 50 % of captions
   dropped and otherwise the defaults (1427 s on two cores): the masked-region denoising loss fell a little
   further (0.0907 -> 0.0884) but the repainted region's PSNR did not rise (11.4 -> 10.9 dB with the
   caption, 8.9 -> 8.6 dB without), so the shipped UNet does not use it either.

The frozen VAE encoder costs about as much as a UNet step on a CPU, so the VAE posteriors (mean and std)
of every training image, and of ``--masks-per-image`` masked copies of it, are computed once; each step
then draws fresh posterior samples from them, and a fresh choice of mask among the cached ones (or the
whole-image mask). Only the number of distinct (image, partial mask) pairs is bounded by this.

Evaluation, on held-out images of the training styles with fixed partial masks, for the zero-initialised
UNet (= the base model) and the trained one: the denoising loss inside the masked region (and outside it)
at fixed timesteps and noise, and the PSNR of the region :class:`StableDiffusionInpaintPipeline` repaints
(and of the part it should keep) against the true image, with the PSNR of a plain VAE round trip as the
ceiling.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ...cli_support import ArgumentParser, bounded, non_negative_int, positive_float, positive_int
from ...errors import InvalidArgumentError
from ...fileio import publish_folder, sha256_file, staging_folder, write_json_atomic
from ..handle import DiffusionModel
from .training import (
    CAPTION_DROPOUT,
    GUIDANCE_SCALE,
    SAMPLING_STEPS,
    PhaseCheckpoints,
    WorkFolder,
    cpu_settings,
    encode_posteriors,
    environment_info,
    folder_size,
    log,
    log_progress,
    round_to_fp16,
    run_script,
    save_fp16,
    save_grid,
    to_tensor,
)
from .world import STYLES, make_dataset

# 6000 steps at batch 16: about 45 min of training on two CPU cores, plus ~2 min of VAE encoding for the
# posterior caches (inpaint_training_info.json of the shipped weights has the measured time). 3000 steps
# (19 min) left a twin whose fill told nothing reached 10.4 dB in the masked region; 6000 reach 13.6 dB, 5.2 dB
# above the base model told nothing (benchmarks/demo_world.py, the same renders and masks).
DEFAULTS = {
    "demo": {"steps": 6000, "batch_size": 16, "lr": 2.5e-4, "images_per_style": 200, "masks_per_image": 3,
             "eval_per_style": 6, "eval_sampling_steps": SAMPLING_STEPS},
    "tiny": {"steps": 2, "batch_size": 2, "lr": 2.5e-4, "images_per_style": 1, "masks_per_image": 1,
             "eval_per_style": 1, "eval_sampling_steps": 2},
}
# Dataset seeds: the demo model used 0, 1 and 2 (training, style-metric fit and evaluation) for --seed 0.
TRAIN_SEED_OFFSET, EVAL_SEED_OFFSET = 1000, 2000
FULL_MASK_PROBABILITY = 0.25
INVERT_PROBABILITY = 0.25
MASK_KINDS = (("rectangles", 0.4), ("strokes", 0.4), ("ellipse", 0.2))
MIN_COVERAGE, MAX_COVERAGE = 0.05, 0.95
# SD dropped 10 % of captions; with so few steps that taught this UNet to lean on the prompt and barely use the
# masked image (world v1: masked-region PSNR 10.2 -> 10.6 dB). Dropping more makes the surroundings the only
# guide more often.
DEFAULT_CAPTION_DROPOUT = 0.3
DEFAULT_MASKED_LOSS_WEIGHT = 1.0
EVAL_TIMESTEPS = 8  # evenly spaced timesteps per held-out image for the denoising loss
UNET_FOLDER, INFO_FILE = "unet_inpaint", "inpaint_training_info.json"

NOTE = (
    "The demo model's UNet turned into a 9-channel inpainting UNet (noisy latents + mask + masked-image latents), "
    "initialised as Stable Diffusion's inpainting model was (extra input channels zero) and fine-tuned for minutes "
    "on a CPU with random masks on the demo world. It exists so that inpainting code paths (DiffusionGuard, "
    "PhotoGuard's diffusion attack, inpainting mimicry) run and are tested offline; it says nothing about how a "
    "protection fares against a real inpainting checkpoint such as runwayml/stable-diffusion-inpainting."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m artshield.models.demo.train_inpaint",
        description="Train the demo model's inpainting UNet (9 input channels) from the demo model.",
    )
    parser.add_argument("--output-dir", required=True,
                        help=f"folder to write {UNET_FOLDER}/ and {INFO_FILE} into (each replaced atomically)")
    parser.add_argument("--base", default="demo", help="the text-to-image model to start from: demo or a diffusers folder")
    parser.add_argument("--tiny", action="store_true", help="a few-second configuration for tests")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--steps", type=non_negative_int, default=None)
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument("--lr", type=positive_float, default=None, help="peak learning rate (warmup, then cosine decay)")
    parser.add_argument("--condition-lr-multiplier", type=positive_float, default=1.0,
                        help="learning-rate multiplier of conv_in's 5 new (zero-initialised) input channels")
    parser.add_argument("--masked-loss-weight", type=positive_float, default=DEFAULT_MASKED_LOSS_WEIGHT,
                        help="weight of the repainted region's latent elements in the loss, the kept region's "
                             f"being 1 (SD's recipe: 1; default {DEFAULT_MASKED_LOSS_WEIGHT})")
    parser.add_argument("--images-per-style", type=positive_int, default=None)
    parser.add_argument("--masks-per-image", type=positive_int, default=None, help="cached partial masks per training image")
    parser.add_argument("--eval-per-style", type=positive_int, default=None,
                        help="held-out images per style for the evaluation")
    parser.add_argument("--eval-sampling-steps", type=positive_int, default=None,
                        help="DDIM steps of the inpainting evaluation")
    parser.add_argument("--caption-dropout", type=bounded(float, 0.0, 1.0), default=None,
                        help=f"share of captions dropped to \"\" (SD's recipe: {CAPTION_DROPOUT}; default "
                             f"{DEFAULT_CAPTION_DROPOUT}, so that it learns to fill from the surroundings)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (results depend on it slightly)")
    parser.add_argument("--work-dir", default=None,
                        help=f"checkpoints of an unfinished run (default: OUTPUT_DIR/{UNET_FOLDER}.partial); rerunning "
                             "the same command resumes from them; deleted once the UNet is written")
    parser.add_argument("--checkpoint-every", type=positive_int, default=250, help="steps between checkpoints")
    parser.add_argument("--samples-png", default=None, help="also save a grid (truth, masked, zero-init, trained) here")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS["tiny" if args.tiny else "demo"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.caption_dropout is None:
        args.caption_dropout = DEFAULT_CAPTION_DROPOUT
    return args


# ----------------------------------------------------------------------------------- UNet
def inpainting_unet(base_unet: torch.nn.Module) -> torch.nn.Module:
    """A 9-input-channel copy of `base_unet`: same config and weights, ``conv_in`` widened with zero weights
    for the 5 extra channels (mask, masked-image latents), as SD's inpainting model was initialised."""
    from diffusers import UNet2DConditionModel

    if base_unet.config.in_channels != 4:
        raise InvalidArgumentError(
            f"the base UNet must be a text-to-image UNet with 4 input channels, but has {base_unet.config.in_channels}."
        )
    config = {k: v for k, v in base_unet.config.items() if not k.startswith("_")}
    unet = UNet2DConditionModel.from_config({**config, "in_channels": 9})
    state = {k: v.detach().clone().float() for k, v in base_unet.state_dict().items()}
    weight = state["conv_in.weight"]
    widened = torch.zeros(weight.shape[0], 9, *weight.shape[2:], dtype=weight.dtype)
    widened[:, :4] = weight
    state["conv_in.weight"] = widened
    unet.load_state_dict(state, strict=True)
    return unet.float().eval().requires_grad_(False)


# ----------------------------------------------------------------------------------- masks
def _segment_distance(ys: np.ndarray, xs: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = ((ys - a[0]) * ab[0] + (xs - a[1]) * ab[1]) / max(float(ab @ ab), 1e-9)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(ys - (a[0] + t * ab[0]), xs - (a[1] + t * ab[1]))


def random_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """One partial mask (size x size float32, 1 = repaint): rectangles, brush strokes or an ellipse (see the
    module docstring), possibly inverted, covering MIN_COVERAGE..MAX_COVERAGE of the image."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    kinds, weights = zip(*MASK_KINDS, strict=True)
    for _ in range(100):
        mask = np.zeros((size, size), dtype=bool)
        kind = kinds[rng.choice(len(kinds), p=np.array(weights))]
        if kind == "rectangles":
            for _ in range(rng.integers(1, 4)):
                h, w = rng.uniform(0.1, 0.6, size=2) * size
                top, left = rng.uniform(-0.1 * size, size - 0.9 * h), rng.uniform(-0.1 * size, size - 0.9 * w)
                mask |= (ys >= top) & (ys < top + h) & (xs >= left) & (xs < left + w)
        elif kind == "strokes":
            for _ in range(rng.integers(1, 4)):
                width = rng.uniform(0.04, 0.15) * size
                point = rng.uniform(0, size, size=2)
                angle = rng.uniform(0, 2 * np.pi)
                for _ in range(rng.integers(3, 9)):
                    angle += rng.uniform(-0.6 * np.pi, 0.6 * np.pi)
                    step = rng.uniform(0.08, 0.3) * size
                    nxt = np.clip(point + step * np.array([np.sin(angle), np.cos(angle)]), 0, size)
                    mask |= _segment_distance(ys, xs, point, nxt) <= width / 2
                    point = nxt
        else:
            cy, cx = rng.uniform(0.25, 0.75, size=2) * size
            ry, rx = rng.uniform(0.15, 0.45, size=2) * size
            mask |= ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0
        if rng.random() < INVERT_PROBABILITY:
            mask = ~mask
        if MIN_COVERAGE <= mask.mean() <= MAX_COVERAGE:
            break
    return mask.astype(np.float32)


def random_masks(count: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """(count, 1, size, size) partial masks."""
    return torch.from_numpy(np.stack([random_mask(size, rng) for _ in range(count)]))[:, None]


# ----------------------------------------------------------------------------------- condition
# The condition itself (mask at latent resolution + masked-image latents, as diffusers' inpainting pipeline
# builds it) is :meth:`DiffusionModel.inpaint_condition`; training caches the VAE posteriors of the masked
# images instead and draws the latents from them each step (:func:`_scaled`).
def _scaled(model, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A posterior sample of cached (unscaled) VAE posteriors, scaled as the UNet sees latents."""
    return model.scale_latents(mean + std * torch.randn(mean.shape, generator=generator))


# ----------------------------------------------------------------------------------- training
def train_inpaint_unet(model, data: dict, args, generator: torch.Generator,
                       checkpoints: PhaseCheckpoints | None = None) -> list[float]:
    """Train ``model.unet`` (9 channels) on the cached posteriors in `data`; returns per-step losses."""
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    unet = model.unet
    params = list(unet.parameters())
    unet.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    schedule = get_cosine_schedule_with_warmup(optimizer, min(50, args.steps // 10 + 1), max(args.steps, 1))
    ema = EMAModel(params, decay=0.999, use_ema_warmup=True, power=2 / 3)
    n_images, n_masks = data["masked_means"].shape[:2]
    full_mask = torch.ones(1, *data["latent_masks"].shape[2:])
    objects = {"unet": unet, "optimizer": optimizer, "schedule": schedule, "ema": ema}
    checkpoints = checkpoints or PhaseCheckpoints(None, "inpaint", 1)
    first, losses = checkpoints.restore(objects, generator)
    start = time.time()
    for step in range(first, args.steps):
        index = torch.randint(0, n_images, (args.batch_size,), generator=generator)
        which = torch.randint(0, n_masks, (args.batch_size,), generator=generator)
        full = torch.rand(args.batch_size, generator=generator) < FULL_MASK_PROBABILITY
        latents = _scaled(model, data["means"][index], data["stds"][index], generator)
        masked_mean = torch.where(full.view(-1, 1, 1, 1), data["full_mean"], data["masked_means"][index, which])
        masked_std = torch.where(full.view(-1, 1, 1, 1), data["full_std"], data["masked_stds"][index, which])
        masks = torch.where(full.view(-1, 1, 1, 1), full_mask, data["latent_masks"][index, which])
        condition = torch.cat([masks, _scaled(model, masked_mean, masked_std, generator)], dim=1)
        drop = torch.rand(args.batch_size, generator=generator) < args.caption_dropout
        prompts = ["" if d else data["captions"][i] for d, i in zip(drop.tolist(), index.tolist(), strict=True)]
        embeds = model.embed_prompt(prompts)  # frozen text encoder: cached per caption
        # The kept region is a copy task the masked-image latents solve; weighting the repainted region stresses
        # the hard part, filling from the surroundings (a whole-image mask weighs every element alike).
        weight = 1.0 + (args.masked_loss_weight - 1.0) * masks if args.masked_loss_weight != 1.0 else None
        loss = model.training_loss(latents, embeds, generator=generator, inpaint_condition=condition,
                                   weight=weight).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaled = args.condition_lr_multiplier != 1.0
        before = unet.conv_in.weight.detach()[:, 4:].clone() if scaled else None
        optimizer.step()
        if scaled:  # AdamW's step on the new channels, scaled
            with torch.no_grad():
                new = unet.conv_in.weight[:, 4:]
                new.copy_(before + args.condition_lr_multiplier * (new - before))
        schedule.step()
        ema.step(params)
        losses.append(float(loss.detach()))
        log_progress("inpaint unet", step, args.steps, losses, start, first=first)
        checkpoints.step_done(step + 1, args.steps, objects, generator, losses)
    if args.steps:
        ema.copy_to(params)
    unet.eval().requires_grad_(False)
    return losses


def loss_summary(losses: list[float], chunks: int = 10) -> dict:
    """Mean loss over each tenth of training (the curve), plus first/last 50-step means."""
    if not losses:
        return {"curve": [], "first_50": None, "last_50": None}
    parts = np.array_split(np.array(losses), min(chunks, len(losses)))
    return {
        "curve": [round(float(p.mean()), 5) for p in parts],
        "curve_chunks": len(parts),
        "first_50": float(np.mean(losses[:50])),
        "last_50": float(np.mean(losses[-50:])),
    }


# ----------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def denoising_losses(model, latents, conditions, embeds, noise, timesteps) -> dict:
    """Mean squared error of the UNet's prediction inside / outside / over the whole latent mask, on fixed
    (latents, condition, noise, timestep) tuples."""
    inside = outside = total = 0.0
    n_inside = n_outside = 0.0
    for k in range(timesteps.shape[1]):
        t = timesteps[:, k]
        noisy = model.add_noise(latents, noise[:, k], t)
        prediction = model.predict_noise(noisy, t, embeds, inpaint_condition=conditions)
        error = (prediction - model.training_target(latents, noise[:, k], t)).square().mean(dim=1, keepdim=True)
        mask = conditions[:, :1]
        inside += float((error * mask).sum())
        outside += float((error * (1 - mask)).sum())
        total += float(error.sum())
        n_inside += float(mask.sum())
        n_outside += float((1 - mask).sum())
    count = n_inside + n_outside
    return {"masked_region": inside / max(n_inside, 1.0), "kept_region": outside / max(n_outside, 1.0),
            "whole_latent": total / max(count, 1.0)}


def psnr(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> float:
    """PSNR (dB, images in [0, 1]) over the pixels where `weight` is 1, pooled over the batch."""
    weight = weight.expand_as(a)
    mse = float(((a - b).square() * weight).sum() / weight.sum().clamp(min=1.0))
    return float(10.0 * np.log10(1.0 / max(mse, 1e-10)))


@torch.no_grad()
def inpaint(model, images, masks, prompts, steps: int, seed: int) -> torch.Tensor:
    pipe = model.pipeline("inpaint")
    result = pipe(prompt=prompts, image=images, mask_image=masks, height=images.shape[-2], width=images.shape[-1],
                  num_inference_steps=steps, guidance_scale=GUIDANCE_SCALE,
                  generator=torch.Generator().manual_seed(seed), output_type="pt")
    return result.images.float().clamp(0.0, 1.0).cpu()


def evaluate(model, evalset: dict, args, label: str) -> tuple[dict, torch.Tensor]:
    tick = time.time()
    embeds = model.embed_prompt(evalset["captions"])
    losses = denoising_losses(model, evalset["latents"], evalset["conditions"], embeds, evalset["noise"],
                              evalset["timesteps"])
    inpainted = inpaint(model, evalset["images"], evalset["masks"], evalset["captions"], args.eval_sampling_steps,
                        seed=args.seed + EVAL_SEED_OFFSET)
    images, masks = evalset["images"], evalset["masks"]
    result = {
        "denoising_loss": losses,
        "psnr_masked_region_db": psnr(inpainted, images, masks),
        "psnr_kept_region_db": psnr(inpainted, images, 1 - masks),
        "seconds": round(time.time() - tick, 1),
    }
    log(f"evaluation ({label}): " + json.dumps(result))
    return result, inpainted


def build_evalset(model, args, resolution: int, latent_size: tuple[int, int]) -> dict:
    seed = args.seed + EVAL_SEED_OFFSET
    images_np, captions, _ = make_dataset(args.eval_per_style, STYLES, (resolution, resolution), seed=seed)
    images = to_tensor(images_np)
    masks = random_masks(len(images), resolution, np.random.default_rng(seed))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latents = model.encode(images, "sample", generator)
        conditions = model.inpaint_condition(images, masks, generator)
    n = len(images)
    # Evenly spaced timesteps (0.5/K .. (K-0.5)/K of the schedule), shifted per image by a random offset.
    base = (torch.arange(EVAL_TIMESTEPS) + 0.5) / EVAL_TIMESTEPS * model.num_train_timesteps
    jitter = (torch.rand(n, 1, generator=generator) - 0.5) * model.num_train_timesteps / EVAL_TIMESTEPS
    timesteps = (base.view(1, -1) + jitter).long().clamp(0, model.num_train_timesteps - 1)
    noise = torch.randn(n, EVAL_TIMESTEPS, *latents.shape[1:], generator=generator)
    return {"images": images, "masks": masks, "captions": captions, "latents": latents, "conditions": conditions,
            "timesteps": timesteps, "noise": noise, "mask_coverage": float(masks.mean())}


@torch.no_grad()
def vae_ceiling(model, images: torch.Tensor, masks: torch.Tensor, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    recon = torch.cat([model.decode(model.encode(images[i : i + 32], "mean", generator))
                       for i in range(0, len(images), 32)])
    return {"psnr_masked_region_db": psnr(recon, images, masks), "psnr_kept_region_db": psnr(recon, images, 1 - masks)}


# ----------------------------------------------------------------------------------- output
def recipe(args: argparse.Namespace) -> dict:
    """The settings that decide a run's result (what a work folder must match to be resumed)."""
    keys = ("base", "seed", "steps", "batch_size", "lr", "condition_lr_multiplier", "caption_dropout",
            "masked_loss_weight", "images_per_style", "masks_per_image", "threads")
    return {"script": "artshield.models.demo.train_inpaint", **{k: getattr(args, k) for k in keys}}


def _base_folder(spec: str) -> Path | None:
    if spec == "demo":
        from . import DEMO_WEIGHTS

        return DEMO_WEIGHTS
    path = Path(spec).expanduser()
    return path.resolve() if path.is_dir() else None


def write_outputs(unet, info: dict, output: Path) -> dict:
    """Save `unet` (fp16) as ``output/unet_inpaint`` and `info` as ``output/inpaint_training_info.json``: the
    UNet folder staged beside its destination and swapped into place, then the JSON written atomically."""
    target = output / UNET_FOLDER
    with staging_folder(target) as staged:
        save_fp16(unet, staged)  # weights were rounded to fp16 already
        info["size_bytes"] = folder_size(staged)
        publish_folder(staged, target)
    write_json_atomic(output / INFO_FILE, info, what="training info")
    return info


# ----------------------------------------------------------------------------------- main
def train(args: argparse.Namespace) -> dict:
    """Build, train, evaluate and write the inpainting UNet; returns the training info. The process-wide
    torch settings it changes (threads; flushing denormals, which keeps CPU kernels fast) are restored."""
    with cpu_settings(args.threads):
        return _train(args)


def _train(args: argparse.Namespace) -> dict:
    from ..loading import load

    torch.manual_seed(args.seed)
    output = Path(args.output_dir).expanduser().resolve()
    if output.exists() and not output.is_dir():
        raise InvalidArgumentError(f"--output-dir {output} exists and is not a folder.")
    started, cpu_started = time.time(), time.process_time()
    seconds: dict[str, float] = {}

    # (a) base model and the widened UNet
    tick = time.time()
    base = load(args.base, device="cpu", dtype="fp32")
    if base.is_inpainting:
        raise InvalidArgumentError(f"--base {args.base} is already an inpainting model; pass a text-to-image model.")
    unet = inpainting_unet(base.unet)
    model = DiffusionModel(vae=base.vae, unet=unet, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                           scheduler=base.scheduler, source=f"{args.base} (inpainting)")
    resolution = base.native_resolution
    latent_size = (resolution // base.vae_scale_factor,) * 2
    seconds["build"] = time.time() - tick

    # (b, c) data, masks and the VAE posterior caches
    tick = time.time()
    images_np, captions, _ = make_dataset(args.images_per_style, STYLES, (resolution, resolution),
                                          seed=args.seed + TRAIN_SEED_OFFSET)
    images = to_tensor(images_np)
    rng = np.random.default_rng(args.seed + TRAIN_SEED_OFFSET)
    means, stds = encode_posteriors(model.vae, images)
    masked_means, masked_stds, latent_masks = [], [], []
    for _ in range(args.masks_per_image):
        masks = random_masks(len(images), resolution, rng)
        mean, std = encode_posteriors(model.vae, DiffusionModel.masked_images(images, masks))
        masked_means.append(mean)
        masked_stds.append(std)
        latent_masks.append(DiffusionModel.latent_mask(masks, latent_size))
    full_mean, full_std = encode_posteriors(model.vae, torch.full((1, 3, resolution, resolution), 0.5))
    data = {
        "means": means, "stds": stds, "captions": captions, "full_mean": full_mean, "full_std": full_std,
        "masked_means": torch.stack(masked_means, 1), "masked_stds": torch.stack(masked_stds, 1),
        "latent_masks": torch.stack(latent_masks, 1),
    }
    seconds["data_and_vae_cache"] = time.time() - tick
    log(f"{len(images)} training images at {resolution} px, {args.masks_per_image} cached masks each "
        f"(coverage {float(data['latent_masks'].mean()):.2f}) ({seconds['data_and_vae_cache']:.0f} s)")

    # (d) evaluation of the zero-initialised UNet (= the base model ignoring its condition)
    tick = time.time()
    evalset = build_evalset(model, args, resolution, latent_size)
    before, inpainted_before = evaluate(model, evalset, args, "zero-init")
    seconds["evaluation"] = time.time() - tick

    # (e) training
    tick = time.time()
    generator = torch.Generator().manual_seed(args.seed)
    work = WorkFolder(Path(args.work_dir) if args.work_dir else output / f"{UNET_FOLDER}.partial", recipe(args))
    losses = train_inpaint_unet(model, data, args, generator, PhaseCheckpoints(work, "inpaint", args.checkpoint_every))
    round_to_fp16(model.unet)  # what we evaluate is what we ship
    seconds["training"] = time.time() - tick
    log(f"training done ({seconds['training']:.0f} s)")

    tick = time.time()
    after, inpainted_after = evaluate(model, evalset, args, "trained")
    # The same UNet told nothing: what it paints from the surroundings alone.
    unprompted, _ = evaluate(model, {**evalset, "captions": [""] * len(evalset["captions"])}, args,
                             "trained, empty prompt")
    seconds["evaluation"] += time.time() - tick
    ceiling = vae_ceiling(model, evalset["images"], evalset["masks"], args.seed + EVAL_SEED_OFFSET)
    if args.samples_png:
        rows = min(len(evalset["images"]), 8)
        shown = [evalset["images"][:rows], DiffusionModel.masked_images(evalset["images"][:rows], evalset["masks"][:rows]),
                 inpainted_before[:rows], inpainted_after[:rows]]
        save_grid(torch.stack(shown, 1).flatten(0, 1), 4, args.samples_png)
        log(f"samples grid (truth, masked, zero-init, trained) written to {args.samples_png}")
    seconds["total"] = time.time() - started
    base_folder = _base_folder(args.base)
    info = {
        "base": args.base,
        "base_files_sha256": {
            name: sha256_file(base_folder / name) if base_folder and (base_folder / name).is_file() else None
            for name in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                         "text_encoder/model.safetensors")
        },
        "resolution": resolution,
        "seed": args.seed,
        "threads": args.threads,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "condition_lr_multiplier": args.condition_lr_multiplier,
        "schedule": "AdamW (weight decay 1e-2), linear warmup then cosine decay, grad-norm clip 1, EMA 0.999 with warmup",
        "prediction_type": model.prediction_type,
        "trained": "UNet only (VAE and text encoder frozen)",
        "initialisation": "base UNet copied; conv_in channels 0-3 copied, channels 4-8 (mask, masked-image latents) zero",
        "images_per_style": args.images_per_style,
        "training_styles": list(STYLES),
        "dataset_seed": args.seed + TRAIN_SEED_OFFSET,
        "caption_dropout": args.caption_dropout,
        "masked_loss_weight": args.masked_loss_weight,
        "masks": {
            "whole_image_probability": FULL_MASK_PROBABILITY,
            "partial_kinds": dict(MASK_KINDS),
            "invert_probability": INVERT_PROBABILITY,
            "coverage_range": [MIN_COVERAGE, MAX_COVERAGE],
            "cached_partial_masks_per_image": args.masks_per_image,
            "condition": "nearest-downsampled mask + VAE posterior sample of image*(1-mask) in [-1,1], scaled",
        },
        "loss": loss_summary(losses),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
        "evaluation": {
            "held_out_images": len(evalset["images"]),
            "dataset_seed": args.seed + EVAL_SEED_OFFSET,
            "mask_coverage": evalset["mask_coverage"],
            "denoising_timesteps_per_image": EVAL_TIMESTEPS,
            "inpainting": {"pipeline": "StableDiffusionInpaintPipeline", "sampler": "DDIM",
                           "steps": args.eval_sampling_steps, "guidance_scale": GUIDANCE_SCALE},
            "zero_init": before,
            "trained": after,
            "trained_empty_prompt": unprompted,
            "vae_round_trip_ceiling": ceiling,
        },
        **environment_info("artshield.models.demo.train_inpaint", args),
        "note": NOTE,
    }
    tick = time.time()
    write_outputs(model.unet, info, output)
    work.remove()
    log(f"wrote {output / UNET_FOLDER} ({info['size_bytes'] / 1e6:.1f} MB) and {INFO_FILE}; "
        f"{seconds['total'] + time.time() - tick:.0f} s total")
    return info


def main(argv: list[str] | None = None) -> int:
    return run_script("artshield.models.demo.train_inpaint", train, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["DEFAULTS", "inpainting_unet", "main", "parse_args", "random_mask", "train"]
