"""Diffusion-model machinery behind the model-based purifications (:mod:`.purify_model`).

Kept apart from the purification classes so that those read as configuration and references, and this
file as the mechanics:

* :func:`diffuse_denoise` — SDEdit / DiffPure on a latent diffusion model: encode, noise the latent to a
  timestep t*, run deterministic DDIM (or, with ``eta > 0``, stochastic) steps back to t = 0, decode.
* :func:`grid_boxes` / :func:`grid_purify` — GrIDPure's overlapping grid and corner composite (Zhao et al.,
  "Can Protective Perturbation Safeguard Personal Data from Being Exploited by Stable Diffusion?",
  CVPR 2024, arXiv 2312.00084; reference code ZhengyueZhao/GrIDPure ``gridpure.py``).
* :func:`load_upscaler` / :func:`run_upscaler` — the ``stabilityai/stable-diffusion-x4-upscaler`` that
  Hönig et al.'s Noisy Upscaling uses, loaded through diffusers when the user has it.

Nothing here writes a gradient loop: IMPRESS, the one optimisation-based purification, runs on
:class:`artshield.engine.Perturber`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..engine.transforms import pad_to_multiple
from ..errors import InvalidArgumentError, ModelLoadError, ModelNotFoundError
from ..models.handle import randn_like

logger = logging.getLogger(__name__)

#: The upscaler Hönig et al. (2024) use for Noisy Upscaling (``upscale.py`` in ethz-spylab/robust-style-mimicry).
X4_UPSCALER_ID = "stabilityai/stable-diffusion-x4-upscaler"
#: Short names accepted for ``upscaler=`` on the command line.
UPSCALER_ALIASES = {"x4": X4_UPSCALER_ID, "sd-x4": X4_UPSCALER_ID}


# --------------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------------


def like_input(rgb: torch.Tensor, channels: int) -> torch.Tensor:
    """Back to the input's channel count: a grey input gets the mean of the model's three channels."""
    return rgb.mean(dim=1, keepdim=True) if channels == 1 else rgb


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize to ``size`` (H, W), antialiased when shrinking (as Pillow resamples), clamped to
    [0, 1] because bicubic overshoots at edges and a saved image cannot hold the overshoot."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrink = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    out = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=shrink)
    return out.clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Diffuse and denoise (SDEdit / DiffPure on a latent diffusion model)
# --------------------------------------------------------------------------------------------------


def start_timestep(model, t_star: float) -> int:
    """The integer timestep of a fraction `t_star` of the training schedule, kept inside [1, T - 1]."""
    total = model.num_train_timesteps
    return int(min(max(round(t_star * total), 1), total - 1))


def ddim_timesteps(t_start: int, steps: int) -> list[int]:
    """`steps` evenly spaced timesteps from `t_start` down to ``t_start / steps`` (strictly decreasing; at most
    one per integer timestep). The last step jumps from the smallest of them to the clean sample."""
    if t_start < 1 or steps < 1:
        raise InvalidArgumentError(f"need t_start >= 1 and steps >= 1, but got t_start={t_start}, steps={steps}.")
    steps = min(steps, t_start)
    return [round(t_start * (steps - i) / steps) for i in range(steps)]


def check_text_to_image(model, what: str) -> None:
    """Diffuse-and-denoise needs a plain (4-channel) UNet: an inpainting UNet would need a mask condition."""
    if getattr(model, "is_inpainting", False):
        raise InvalidArgumentError(
            f"{what} needs a text-to-image model, but {model.source} is an inpainting model; load the matching "
            "text-to-image checkpoint (e.g. stable-diffusion-2-1-base) instead."
        )


@torch.no_grad()
def diffuse_denoise(
    model,
    images: torch.Tensor,
    t_start: int,
    steps: int,
    generator: torch.Generator,
    *,
    prompt: str = "",
    eta: float = 0.0,
) -> torch.Tensor:
    """One SDEdit / DiffPure pass on RGB images in [0, 1] whose sides are multiples of the model's pixel multiple.

    z0 = E(x) (posterior mean), z_t* = sqrt(ᾱ) z0 + sqrt(1 − ᾱ) ε, then DDIM steps (Song et al., ICLR 2021)
    at :func:`ddim_timesteps` back to a clean latent, decoded by the VAE. With ``eta = 0`` the only
    randomness is ε (one draw per call from `generator`); ``eta = 1`` adds DDPM-like fresh noise each step.
    The UNet is conditioned on `prompt` (default ``""``: the unconditional branch, as DiffPure's
    unconditional models are), without classifier-free guidance.
    """
    batch = images.shape[0]
    latents = model.encode(images, mode="mean")
    alphas = model.scheduler.alphas_cumprod.to(device=latents.device, dtype=torch.float32)
    embeds = model.embed_prompt(prompt, batch_size=batch)
    t_tensor = torch.full((batch,), t_start, dtype=torch.long, device=latents.device)
    z = model.add_noise(latents, randn_like(latents, generator), t_tensor)
    schedule = ddim_timesteps(t_start, steps)
    for index, t in enumerate(schedule):
        alpha = alphas[t]
        alpha_prev = alphas[schedule[index + 1]] if index + 1 < len(schedule) else torch.ones_like(alpha)
        output = model.predict_noise(z, torch.full((batch,), t, dtype=torch.long, device=latents.device), embeds)
        eps, x0 = model.noise_and_sample(output, z, alpha)
        sigma = eta * torch.sqrt((1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)) if eta else 0.0
        direction = torch.sqrt((1 - alpha_prev - sigma**2).clamp_min(0.0)) * eps
        z = alpha_prev.sqrt() * x0 + direction
        if eta:
            z = z + sigma * randn_like(z, generator)
    return model.decode(z)


def purify_region(
    model,
    images: torch.Tensor,
    t_start: int,
    steps: int,
    generator: torch.Generator,
    *,
    prompt: str = "",
    eta: float = 0.0,
) -> torch.Tensor:
    """:func:`diffuse_denoise` on any (B, 3, H, W) batch: pad to the model's pixel multiple, run, crop back."""
    height, width = images.shape[-2:]
    padded = pad_to_multiple(images.to(model.device), model.pixel_multiple)
    out = diffuse_denoise(model, padded, t_start, steps, generator, prompt=prompt, eta=eta)
    return out[..., :height, :width].to(images.device)


# --------------------------------------------------------------------------------------------------
# GrIDPure grid
# --------------------------------------------------------------------------------------------------

Box = tuple[int, int, int, int]  # top, left, height, width


def _axis_starts(length: int, patch: int, stride: int) -> list[int]:
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)  # the last patch is flush with the edge, as GrIDPure's get_crop_box
    return starts


def grid_boxes(height: int, width: int, patch: int) -> list[Box]:
    """GrIDPure's grid: patches of side `patch` at a stride of half a patch, the last row/column flush with the
    image edge. A side shorter than `patch` gets one patch of its own length."""
    stride = max(patch // 2, 1)
    rows = _axis_starts(height, patch, stride)
    cols = _axis_starts(width, patch, stride)
    return [(top, left, min(patch, height), min(patch, width)) for top in rows for left in cols]


def grid_purify(
    purify: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    patch: int,
    *,
    corners: bool = True,
    progress: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Purify overlapping patches with `purify` and average them where they overlap (GrIDPure's ``merge_imgs``).

    Only the image corners are covered by a single grid patch; GrIDPure therefore also purifies a *corner
    composite* — the four ``patch/2`` corners pasted into one ``patch × patch`` image — and adds each corner
    back into the average. Done here too when both sides are at least `patch`.
    """
    height, width = images.shape[-2:]
    total = torch.zeros_like(images)
    count = torch.zeros((1, 1, height, width), dtype=images.dtype, device=images.device)
    for top, left, h, w in grid_boxes(height, width, patch):
        total[..., top : top + h, left : left + w] += purify(images[..., top : top + h, left : left + w])
        count[..., top : top + h, left : left + w] += 1
        if progress is not None:
            progress()
    half = patch // 2
    if corners and patch % 2 == 0 and height >= patch and width >= patch:
        # (source top, source left) of each corner and where it sits in the composite.
        places = [((0, 0), (0, 0)), ((0, width - half), (0, half)), ((height - half, 0), (half, 0)),
                  ((height - half, width - half), (half, half))]  # fmt: skip
        composite = torch.empty((*images.shape[:2], patch, patch), dtype=images.dtype, device=images.device)
        for (st, sl), (ct, cl) in places:
            composite[..., ct : ct + half, cl : cl + half] = images[..., st : st + half, sl : sl + half]
        cleaned = purify(composite)
        for (st, sl), (ct, cl) in places:
            total[..., st : st + half, sl : sl + half] += cleaned[..., ct : ct + half, cl : cl + half]
            count[..., st : st + half, sl : sl + half] += 1
        if progress is not None:
            progress()
    return total / count


def grid_passes(height: int, width: int, patch: int, corners: bool = True) -> int:
    """How many calls :func:`grid_purify` makes for an image of this size (for progress bars)."""
    extra = 1 if corners and patch % 2 == 0 and height >= patch and width >= patch else 0
    return len(grid_boxes(height, width, patch)) + extra


# --------------------------------------------------------------------------------------------------
# The Stable Diffusion x4 upscaler (optional)
# --------------------------------------------------------------------------------------------------


def load_upscaler(spec: str, device: torch.device, dtype: torch.dtype):
    """Load a ``StableDiffusionUpscalePipeline`` from a hub id (read from the Hugging Face cache; downloaded only
    when the hub is reachable and offline mode is off) or a local diffusers folder.

    Raises:
        ModelNotFoundError: one line saying what to do, never the hub client's traceback.
    """
    from ..models.components import quiet_loading
    from ..models.hub import first_line, hub_error_message, hub_online, looks_like_hub_id

    spec = UPSCALER_ALIASES.get(spec, spec)
    path = Path(os.path.expanduser(spec))
    online = False
    if path.is_dir():
        source, kwargs = str(path), {}
    elif looks_like_hub_id(spec):
        online = hub_online()
        source, kwargs = spec, {"local_files_only": not online}
    else:
        raise ModelNotFoundError(
            f"upscaler {spec!r} is neither a local diffusers folder nor a hub id (owner/name); pass e.g. "
            f"upscaler={X4_UPSCALER_ID} or leave it unset for the model-based fallback."
        )
    try:
        from diffusers import StableDiffusionUpscalePipeline

        with quiet_loading(), warnings.catch_warnings():
            # Recent diffusers renamed torch_dtype to dtype (with a warning); older releases only know torch_dtype.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = StableDiffusionUpscalePipeline.from_pretrained(source, torch_dtype=dtype, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub/diffusers raise many kinds; the user needs one line
        message = hub_error_message(spec, exc, what="upscaler")
        if message is None and not path.is_dir() and not online:
            # The hub client's own wording ("pass local_files_only=False") would mislead here.
            message = (
                f"upscaler {spec!r} is not in the local Hugging Face cache and the hub cannot be reached (or offline "
                f"mode is on). Download it once on a connected machine (`hf download {spec}`), pass a local folder, "
                "or leave `upscaler` unset to use the model-based fallback."
            )
        elif message is None:
            message = (
                f"upscaler {spec!r} could not be loaded: {first_line(exc).rstrip('.')}. Pass a diffusers folder or hub "
                "id of a Stable Diffusion x4 upscaler, or leave `upscaler` unset to use the model-based fallback."
            )
        raise ModelNotFoundError(message) from None
    if not hasattr(pipe, "low_res_scheduler"):
        raise ModelLoadError(f"upscaler {spec!r} is not a Stable Diffusion x4 upscaler pipeline.")
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def run_upscaler(
    pipe,
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    prompt: str = "",
    noise_level: int = 320,
    steps: int = 75,
    guidance_scale: float = 9.0,
) -> torch.Tensor:
    """Upscale RGB images in [0, 1] ×4 with the x4 upscaler and return them resized back to their own size.

    Sides are padded to a multiple of 8 first (the upscaler's UNet halves them three times) and the ×4
    output is cropped accordingly before the antialiased resize back.
    """
    from PIL import Image

    batch, _, height, width = images.shape
    padded = pad_to_multiple(images, 8)
    arrays = (padded.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    pil_images = [Image.fromarray(a) for a in arrays]
    out = pipe(
        prompt=[prompt] * batch,
        image=pil_images,
        noise_level=noise_level,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=generator,
        output_type="pt",
    ).images
    out = out.float().to(images.device)[..., : 4 * height, : 4 * width]
    return resize(out, (height, width))


__all__ = [
    "UPSCALER_ALIASES",
    "X4_UPSCALER_ID",
    "check_text_to_image",
    "ddim_timesteps",
    "diffuse_denoise",
    "grid_boxes",
    "grid_passes",
    "grid_purify",
    "like_input",
    "load_upscaler",
    "purify_region",
    "resize",
    "run_upscaler",
    "start_timestep",
]
