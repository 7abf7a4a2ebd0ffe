"""Sampling for the memorization tools: DDIM text-to-image generations with classifier-free guidance from
precomputed prompt embeddings, recording the text-conditional noise-prediction norm (Wen et al. 2024) on the
way, plus the argument checks every memorization step shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ...errors import IncompatibleModelError, InvalidArgumentError
from ...models.handle import DiffusionModel


@dataclass
class SamplerConfig:
    """How generations are sampled: DDIM with classifier-free guidance, as Wen et al. and ConceptPrune.

    Attributes:
        num_inference_steps: DDIM steps of a full generation (reference: 50).
        guidance_scale: classifier-free guidance weight (reference: 7.5); must be > 1, since detection
            compares the conditional and unconditional branches.
        resolution: square image side in pixels; None uses the model's native resolution.
        batch_size: images per UNet call.
    """

    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    resolution: int | None = None
    batch_size: int = 8

    def report(self, seeds, steps: int, resolution: int) -> dict:
        """The sampling settings a detection or pruning report records."""
        return {
            "seeds": seeds,
            "steps": int(steps),
            "num_inference_steps": int(self.num_inference_steps),
            "guidance_scale": float(self.guidance_scale),
            "resolution": resolution,
        }

    def check(self, model: DiffusionModel) -> int:
        """Validate against `model`; returns the resolution to use."""
        if int(self.num_inference_steps) < 1:
            raise InvalidArgumentError(f"`num_inference_steps` must be >= 1, but is {self.num_inference_steps!r}.")
        if not self.guidance_scale > 1.0:
            raise InvalidArgumentError(
                f"`guidance_scale` must be > 1 (detection compares the guided branches), but is {self.guidance_scale!r}."
            )
        if int(self.batch_size) < 1:
            raise InvalidArgumentError(f"`batch_size` must be >= 1, but is {self.batch_size!r}.")
        # An explicit 0 is an error, not "use the native resolution".
        resolution = int(model.native_resolution if self.resolution is None else self.resolution)
        if resolution < model.pixel_multiple or resolution % model.pixel_multiple:
            raise InvalidArgumentError(
                f"`resolution` must be a positive multiple of {model.pixel_multiple} for {model.source}, but is {resolution}."
            )
        return resolution


def check_text_to_image(model: DiffusionModel) -> None:
    """Memorization tools sample text-to-image; inpainting UNets take extra channels."""
    if model.is_inpainting:
        raise IncompatibleModelError(
            f"{model.source} is an inpainting model; memorization detection and pruning need a text-to-image checkpoint."
        )
    if getattr(model.unet.config, "time_cond_proj_dim", None) is not None:
        # Guidance-distilled UNets (LCM) take the guidance scale as an input and have no unconditional branch.
        raise IncompatibleModelError(
            f"{model.source} is guidance-distilled (time_cond_proj_dim is set); detection needs classifier-free guidance."
        )


def check_prompts(prompts: Sequence[str], name: str = "prompts") -> list[str]:
    """A non-empty list of strings (the empty prompt itself is allowed)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise InvalidArgumentError(f"`{name}` must hold at least one prompt, but is empty.")
    for p in prompts:
        if not isinstance(p, str):
            raise InvalidArgumentError(f"`{name}` must hold strings, but holds {type(p).__name__}.")
    return prompts


def check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise InvalidArgumentError("`seeds` must hold at least one seed, but is empty.")
    if len(set(seeds)) != len(seeds):
        raise InvalidArgumentError(f"`seeds` must be distinct, but is {seeds}.")
    return seeds


def epsilon_difference(model: DiffusionModel, diff: torch.Tensor, timestep: torch.Tensor | int) -> torch.Tensor:
    """Convert a difference of two UNet outputs at one noisy latent into epsilon units.

    With x_t = a x_0 + s eps (a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t)): for v-prediction
    eps = a v + s x_t, so eps_c - eps_u = a (v_c - v_u); for sample prediction eps = (x_t - a x_0) / s, so
    eps_c - eps_u = -(a / s) (x0_c - x0_u).
    """
    if model.prediction_type == "epsilon":
        return diff
    # The conversion is linear in the prediction and its x_t term cancels in a difference at one x_t, so the
    # difference converts as the ε estimate of a prediction `diff` at x_t = 0.
    t = int(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else int(timestep)
    eps, _ = model.noise_and_sample(diff, torch.zeros_like(diff), model.alphas_cumprod_at(t, diff))
    return eps


class _NoiseNormTracker:
    """Forward hook on the UNet: the per-image text-conditional norm at each of the first `steps` calls."""

    def __init__(self, model: DiffusionModel, batch: int, steps: int) -> None:
        self.model, self.batch, self.steps = model, batch, steps
        self.calls = 0
        self.norms: list[torch.Tensor] = []

    def __call__(self, module, args, output) -> None:
        step = self.calls
        self.calls += 1
        if step >= self.steps:
            return
        prediction = output[0] if isinstance(output, tuple) else output.sample
        if prediction.shape[0] != 2 * self.batch:
            raise RuntimeError("the pipeline did not batch the unconditional and conditional branches together")
        uncond, text = prediction.float().chunk(2)
        diff = epsilon_difference(self.model, text - uncond, args[1])
        self.norms.append(diff.flatten(1).norm(p=2, dim=1).cpu())


@dataclass
class SampleResult:
    """What :func:`sample` returns.

    Attributes:
        norms: (N, steps) text-conditional noise-prediction norms at the first `steps` DDIM steps.
        images: (N, 3, H, W) generations in [0, 1], or None when not decoded.
    """

    norms: torch.Tensor
    images: torch.Tensor | None


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


@torch.no_grad()
def sample(
    model: DiffusionModel,
    prompt_embeds: torch.Tensor,
    seeds: Sequence[int],
    sampler: SamplerConfig | None = None,
    *,
    track_steps: int = 0,
    decode: bool = True,
    stop_after: int | None = None,
    progress: bool = False,
    desc: str = "sampling",
    before_batch: Callable[[int], None] | None = None,
) -> SampleResult:
    """Run diffusers' DDIM text-to-image pipeline on precomputed prompt embeddings, one seed per image.

    Args:
        prompt_embeds: (N, L, D) conditional embeddings (from ``model.embed_prompt``, possibly perturbed);
            the unconditional branch is the empty prompt.
        seeds: N seeds; image i starts from noise drawn by its own ``torch.Generator`` seeded with
            ``seeds[i]``, so results do not depend on batching.
        track_steps: record the text-conditional norm at the first `track_steps` steps.
        decode: decode to images; when False the run stops after ``max(track_steps, stop_after)`` steps.
        stop_after: stop after this many steps (interrupting the pipeline, as diffusers documents with
            ``pipe._interrupt`` in ``callback_on_step_end``); defaults to all steps when decoding.
        before_batch: called with the batch size before each pipeline call (hooks that count steps reset).
    """
    check_text_to_image(model)
    sampler = sampler or SamplerConfig()
    resolution = sampler.check(model)
    seeds = [int(s) for s in seeds]
    n = prompt_embeds.shape[0]
    if len(seeds) != n:
        raise InvalidArgumentError(f"`seeds` has {len(seeds)} entries but there are {n} prompt embeddings.")
    total_steps = int(sampler.num_inference_steps)
    if track_steps > total_steps:
        raise InvalidArgumentError(
            f"cannot average the first {track_steps} steps of a {total_steps}-step sampler; lower --steps or raise "
            "--num-inference-steps."
        )
    if decode:
        stop = total_steps if stop_after is None else int(stop_after)
        if stop != total_steps:
            raise InvalidArgumentError("`stop_after` must be left unset when decoding full generations.")
    else:
        stop = max(int(track_steps), int(stop_after or 0), 1)
        stop = min(stop, total_steps)
    uncond = model.embed_prompt("")
    pipe = model.pipeline("text2img")

    def interrupt(pipeline, i, t, kwargs):
        # Detection and location only need the first steps; the rest of the trajectory is not computed.
        if i + 1 >= stop:
            pipeline._interrupt = True
        return kwargs

    norms, images = [], []
    bar = _progress(n, desc, progress)
    try:
        for start in range(0, n, int(sampler.batch_size)):
            chunk = prompt_embeds[start : start + int(sampler.batch_size)].to(device=model.device, dtype=model.dtype)
            b = chunk.shape[0]
            generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds[start : start + b]]
            tracker = _NoiseNormTracker(model, b, track_steps)
            if before_batch is not None:
                before_batch(b)
            handle = model.unet.register_forward_hook(tracker)
            try:
                out = pipe(
                    prompt_embeds=chunk,
                    negative_prompt_embeds=uncond.to(device=model.device, dtype=model.dtype).expand(b, -1, -1),
                    height=resolution,
                    width=resolution,
                    num_inference_steps=total_steps,
                    guidance_scale=float(sampler.guidance_scale),
                    generator=generators,
                    output_type="pt" if decode else "latent",
                    callback_on_step_end=interrupt if stop < total_steps else None,
                )
            finally:
                handle.remove()
            if track_steps:
                norms.append(torch.stack(tracker.norms, dim=1))
            if decode:
                images.append(out.images.float().clamp(0.0, 1.0).cpu())
            bar.update(b)
    finally:
        bar.close()
    norm_tensor = torch.cat(norms) if norms else torch.zeros(n, 0)
    return SampleResult(norms=norm_tensor, images=torch.cat(images) if decode else None)


def expand_prompts(prompts: Sequence[str], seeds: Sequence[int]) -> tuple[list[str], list[int]]:
    """Every prompt with every seed, prompt-major."""
    return [p for p in prompts for _ in seeds], [s for _ in prompts for s in seeds]


__all__ = [
    "SampleResult",
    "SamplerConfig",
    "check_prompts",
    "check_seeds",
    "check_text_to_image",
    "epsilon_difference",
    "expand_prompts",
    "sample",
]
