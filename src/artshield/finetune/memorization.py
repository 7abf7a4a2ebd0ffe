"""Memorization in text-to-image diffusion models: detect it, locate it in the UNet, prune it, and re-check.

Four pieces, each usable alone and all driven by :mod:`artshield.finetune.memorization_cli`:

**Detection** (Wen et al., "Detecting, Explaining, and Mitigating Memorization in Diffusion Models",
ICLR 2024, ``YuxinWenRick/diffusion_memorization``). While sampling with DDIM and classifier-free guidance,
the magnitude of the text-conditional noise prediction ``||eps(x_t, c) - eps(x_t, "")||_2`` (per image,
over the whole latent) is recorded at every step; its mean over the first ``steps`` steps and over several
seeds is the prompt's score, high for memorized prompts. As in the reference, the latents follow the
guided trajectory and the unconditional branch is the empty prompt; the defaults (50 DDIM steps, guidance
7.5, four seeds) are the reference's. Deviations: the score is converted to epsilon units for
v-prediction and sample-prediction checkpoints (the reference only handles epsilon models); a threshold
can be calibrated from prompts known not to be memorized (the reference reports AUC only). The score is a
raw L2 norm over the latent, so it grows with resolution: compare prompts at one resolution.

**Near-duplicate search** of generations against a folder of training images, as a replication check
(Somepalli et al. CVPR 2023; Carlini et al. 2023). With an SSCD TorchScript file
(``sscd_disc_large.torchscript.pt``, Pizzi et al. 2022) descriptors are computed as DCR/ConceptPrune do
(resize 256, centre-crop 224, normalise to [-1, 1]) and "replicated" means cosine > 0.5. Without it a
weight-free descriptor is used (:class:`DCTDescriptor`: the low-frequency 2-D DCT of a 32x32 thumbnail);
it finds exact and lightly degraded copies, not crops or flips, and its threshold is our own heuristic.

**Location and pruning** (Chavhan et al., "Memorized Images in Diffusion Models share a Subspace that can
be Located and Deleted", arXiv 2406.18566, via the authors' ConceptPrune code
``ruchikachavhan/concept-prune``). Forward pre-hooks record the inputs of the second FFN linear
(``ff.net.2``) of every ``BasicTransformerBlock`` (options: ``ff.net.0.proj``, cross-attention
``attn2.to_k`` / ``attn2.to_v``) during the first ``tau`` denoising steps of generations for the memorized
prompts (target) and for a base prompt (default ``""``). Every activation row (token) is L2-normalised;
per step and layer the per-input-feature L2 norm ``||X_j||`` of those rows gives the WANDA score
``|W_ij| * ||X_j||`` (Sun et al. 2023). For each output row the top ``ratio`` (default 1%) weights by
target score are kept where the target score exceeds the base score; the union over the first ``tau``
(default 10) steps is zeroed (``weight *= 1 - mask``), and the edited model is saved as a static diffusers
checkpoint with the masks. Deviation: ``||X_j||`` is divided by sqrt(number of rows) (an RMS, as WANDA's
own ``scaler_row`` averages), so target and base sets of different sizes are comparable; ConceptPrune
pairs one base run with every target prompt and so compares raw norms of equal row counts, which gives
the same masks when the counts match. Like ConceptPrune, both halves of the classifier-free-guidance batch
are recorded by default (``include_unconditional``).

**Re-check** (Finding Dori, arXiv 2507.16880: after pruning, small perturbations of the text embedding can
re-trigger replication). The memorization metrics are measured again with each prompt's token embeddings
perturbed by random directions of a few relative magnitudes. Deviation: Finding Dori *optimises* the
perturbation; random directions are a cheaper and weaker probe, so a clean re-check is not a proof of
robustness.

Utility before and after pruning is measured on other prompts: on the demo world with its style metric
(:class:`artshield.models.demo.style.StyleMetric`) when the prompts are world captions; on any model by how
close the pruned model's generations stay to the original's at the same seeds (SSIM, PSNR, LPIPS when its
weights exist), by the strength of text conditioning on those prompts, and by CLIP score when open_clip
weights are given.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import (
    ImageReadError,
    ImageWriteError,
    IncompatibleModelError,
    InvalidArgumentError,
    ModelLoadError,
    ModelNotFoundError,
)
from ..models.handle import DiffusionModel

logger = logging.getLogger(__name__)

#: Layer choices: CLI name -> submodule path inside a ``BasicTransformerBlock`` (ConceptPrune's
#: ``hook_module`` values ``unet``, ``unet-ffn-1``, ``attn_key``, ``attn_val``).
LAYER_CHOICES: dict[str, str] = {
    "ffn2": "ff.net.2",
    "ffn1": "ff.net.0.proj",
    "attn_k": "attn2.to_k",
    "attn_v": "attn2.to_v",
}
MASKS_FILE = "memorization_masks.safetensors"
MASK_STATS_FILE = "memorization_masks.json"
REPORT_FILE = "memorization_report.json"
MASKS_FORMAT = "artshield-memorization-masks-v1"
#: Cosine above which an SSCD match counts as a replication (Somepalli et al. 2023; Wen et al. 2024).
SSCD_REPLICATION_THRESHOLD = 0.5
#: The same for :class:`DCTDescriptor`: our heuristic, measured on the demo world (128 px): exact copies and
#: resized, blurred (3x3 box) or noisy (sigma 0.05) copies score >= 0.99; round trips through the demo VAE
#: (which is lossy) 0.73-0.99, mean 0.91; distinct images of one style mean 0.39, 99th percentile 0.91, max
#: 0.96. The two ranges overlap, so "replicated" by this descriptor is indicative only; the report always
#: gives the similarity itself and which training image matched.
DCT_REPLICATION_THRESHOLD = 0.9
DEFAULT_PERTURBATIONS = (0.01, 0.05, 0.1)
#: Utility prompts for models other than the demo (generic scenes, COCO-like captions).
GENERIC_UTILITY_PROMPTS = (
    "a photo of a dog sitting on a sofa",
    "a bowl of fruit on a wooden table",
    "a city street at night with cars",
    "a mountain lake under a cloudy sky",
)
_CAPTION_RE = re.compile(r"^an? (?P<subject>[a-z]+) in (?P<style>[a-z]+) style$")


# ================================================================================================ sampling
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
        resolution = int(self.resolution or model.native_resolution)
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
    kind = model.prediction_type
    if kind == "epsilon":
        return diff
    t = int(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else int(timestep)
    alpha_bar = float(model.scheduler.alphas_cumprod[t])
    a, s = math.sqrt(alpha_bar), math.sqrt(max(1.0 - alpha_bar, 1e-12))
    if kind == "v_prediction":
        return diff * a
    if kind == "sample":
        return diff * (-a / s)
    raise IncompatibleModelError(f"unsupported scheduler prediction_type {kind!r} in {model.source}.")


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


def _expand(prompts: Sequence[str], seeds: Sequence[int]) -> tuple[list[str], list[int]]:
    """Every prompt with every seed, prompt-major."""
    return [p for p in prompts for _ in seeds], [s for _ in prompts for s in seeds]


# ================================================================================================ near duplicates
def _dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix (n x n): rows are frequencies."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    matrix = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    matrix[0] /= math.sqrt(2.0)
    return matrix.float()


class DCTDescriptor:
    """Weight-free near-duplicate descriptor: low-frequency 2-D DCT of a small colour thumbnail.

    Each image is resized (antialiased bilinear, aspect ratio ignored) to ``size`` x ``size``; the
    orthonormal 2-D DCT of each RGB channel is taken and its ``keep`` x ``keep`` lowest frequencies kept;
    the mean of the three DC terms is subtracted (so a global brightness shift barely moves the descriptor
    while colour balance still counts) and the result is L2-normalised, so the cosine of two descriptors is a
    correlation of their low-pass thumbnails. Exact copies score 1; resizing, mild blur, noise and JPEG keep
    copies near 1, a lossy VAE round trip lower (see :data:`DCT_REPLICATION_THRESHOLD`). It is not SSCD: crops, flips, rotations and re-compositions are not
    matched, and two different images with similar layout and colours can score high.
    """

    name = "dct"
    threshold = DCT_REPLICATION_THRESHOLD

    def __init__(self, size: int = 32, keep: int = 8) -> None:
        if not 1 <= keep <= size:
            raise InvalidArgumentError(f"`keep` must be in [1, size={size}], but is {keep}.")
        self.size, self.keep = int(size), int(keep)
        self._dct = _dct_matrix(self.size)

    def describe(self) -> dict:
        return {"name": self.name, "size": self.size, "keep": self.keep, "replication_threshold": self.threshold}

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = _as_rgb(images).float().cpu()
        thumb = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        coeffs = self._dct @ thumb @ self._dct.T
        low = coeffs[:, :, : self.keep, : self.keep].clone()
        low[:, :, 0, 0] -= low[:, :, 0, 0].mean(dim=1, keepdim=True)
        return F.normalize(low.flatten(1), dim=1)


class SSCDDescriptor:
    """SSCD copy-detection descriptor (Pizzi et al. CVPR 2022) from its TorchScript file.

    Preprocessing follows DCR (Somepalli et al.) and ConceptPrune's ``inference_mem.py``: resize the
    shorter side to 256, centre-crop 224, normalise with mean 0.5 / std 0.5; descriptors are L2-normalised.
    The file is a TorchScript archive, loaded with ``torch.jit.load`` (no pickle of Python objects).
    """

    name = "sscd"
    threshold = SSCD_REPLICATION_THRESHOLD

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu") -> None:
        self.path = Path(os.fspath(path))
        if not self.path.is_file():
            raise ModelNotFoundError(f"SSCD weights {self.path}: no such file (expected a .torchscript.pt file).")
        self.device = torch.device(device)
        try:
            self.model = torch.jit.load(str(self.path), map_location=self.device).eval()
        except (RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"SSCD weights {self.path}: not a TorchScript archive ({str(exc).splitlines()[0]}).") from exc

    def describe(self) -> dict:
        return {"name": self.name, "weights": str(self.path), "replication_threshold": self.threshold}

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for image in _as_rgb(images).float():
            h, w = image.shape[-2:]
            scale = 256 / min(h, w)
            size = (max(224, round(h * scale)), max(224, round(w * scale)))
            resized = F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)
            top, left = (size[0] - 224) // 2, (size[1] - 224) // 2
            crop = resized[:, :, top : top + 224, left : left + 224]
            out.append(self.model(((crop - 0.5) / 0.5).to(self.device)).float().cpu())
        return F.normalize(torch.cat(out), dim=1)


def _as_rgb(images: torch.Tensor) -> torch.Tensor:
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise InvalidArgumentError(f"images must be (B, 3, H, W) or (B, 1, H, W) in [0, 1], but are {tuple(images.shape)}.")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


Descriptor = DCTDescriptor | SSCDDescriptor


def load_descriptor(sscd: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> Descriptor:
    """SSCD when its TorchScript file is given, else the weight-free :class:`DCTDescriptor`."""
    if sscd is None:
        return DCTDescriptor()
    return SSCDDescriptor(sscd, device)


@dataclass
class Match:
    """Best training-image match of one generation."""

    similarity: float
    index: int
    path: str


@dataclass
class NearDuplicateIndex:
    """Descriptors of a folder of training images, queried by generations (max cosine similarity).

    Build it with :meth:`from_folder`; :meth:`query` returns each generation's best match.
    """

    descriptor: Descriptor
    paths: list[Path]
    features: torch.Tensor
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @classmethod
    def from_folder(
        cls, folder: str | os.PathLike, descriptor: Descriptor | None = None, *, recursive: bool = False
    ) -> NearDuplicateIndex:
        """Describe every image in `folder` (by content; unreadable files are skipped and listed)."""
        from ..imageio import iter_images, read_image

        descriptor = descriptor or DCTDescriptor()
        listing = iter_images(folder, recursive=recursive)
        paths, rows, skipped = [], [], list(listing.skipped)
        for path in listing:
            try:
                loaded = read_image(path)
            except ImageReadError as exc:
                skipped.append((path, str(exc)))
                continue
            rows.append(descriptor(loaded.rgb))
            paths.append(path)
        if not rows:
            raise ImageReadError(f"{folder}: no readable training images in this folder.")
        for path, reason in skipped:
            logger.info("training images: skipped %s (%s)", path, reason)
        return cls(descriptor=descriptor, paths=paths, features=torch.cat(rows), skipped=skipped)

    @classmethod
    def from_images(cls, images: torch.Tensor, names: Sequence[str], descriptor: Descriptor | None = None) -> NearDuplicateIndex:
        """Index in-memory images (B, 3, H, W) in [0, 1] under the given names."""
        descriptor = descriptor or DCTDescriptor()
        if len(names) != images.shape[0]:
            raise InvalidArgumentError(f"`names` has {len(names)} entries but there are {images.shape[0]} images.")
        return cls(descriptor=descriptor, paths=[Path(n) for n in names], features=descriptor(images))

    def similarities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, n_training) cosine similarities."""
        return self.descriptor(images) @ self.features.T

    def query(self, images: torch.Tensor) -> list[Match]:
        sims = self.similarities(images)
        best, index = sims.max(dim=1)
        return [Match(float(s), int(i), str(self.paths[int(i)])) for s, i in zip(best, index, strict=True)]


# ================================================================================================ detection
@dataclass
class PromptScore:
    """Detection result for one prompt over its seeds."""

    prompt: str
    metric: float
    per_seed: list[float]
    per_step: list[float]
    near_duplicate: dict | None = None

    def to_json(self) -> dict:
        out = {"prompt": self.prompt, "metric": self.metric, "per_seed": self.per_seed, "per_step": self.per_step}
        if self.near_duplicate is not None:
            out["near_duplicate"] = self.near_duplicate
        return out


def score_prompts(
    model: DiffusionModel,
    prompts: Sequence[str],
    *,
    seeds: Sequence[int] = (0, 1, 2, 3),
    steps: int = 10,
    sampler: SamplerConfig | None = None,
    index: NearDuplicateIndex | None = None,
    decode: bool | None = None,
    embed_transform: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None,
    progress: bool = False,
    desc: str = "detect",
) -> tuple[list[PromptScore], torch.Tensor | None]:
    """Wen et al.'s detection metric for every prompt, and near-duplicate matches when `index` is given.

    Each prompt is generated once per seed; its metric is the mean over seeds of the mean over the first
    `steps` DDIM steps of ``||eps(x_t, c) - eps(x_t, "")||_2``. With `index`, the full generations are
    decoded and matched against the training images; ``near_duplicate`` holds the best similarity over seeds,
    the training image it matched, per-seed similarities and the fraction of seeds above the descriptor's
    replication threshold.

    Args:
        embed_transform: optional ``f(embeds (1, L, D), prompt_index, seed) -> embeds`` applied to each
            prompt embedding before sampling (the robustness re-check perturbs embeddings with it).
        decode: decode full generations even without `index` (to save or score them); default: only with
            `index`.

    Returns:
        (scores, images): images are (len(prompts) * len(seeds), 3, H, W), prompt-major, or None.
    """
    prompts = check_prompts(prompts)
    seeds = check_seeds(seeds)
    if int(steps) < 1:
        raise InvalidArgumentError(f"`steps` must be >= 1, but is {steps!r}.")
    decode = index is not None if decode is None else bool(decode or index is not None)
    base = model.embed_prompt(prompts)
    rows = []
    for i in range(len(prompts)):
        for s in seeds:
            e = base[i : i + 1]
            rows.append(embed_transform(e, i, s) if embed_transform is not None else e)
    embeds = torch.cat(rows)
    _, all_seeds = _expand(prompts, seeds)
    result = sample(model, embeds, all_seeds, sampler, track_steps=int(steps), decode=decode, progress=progress, desc=desc)
    per_image = result.norms.mean(dim=1).view(len(prompts), len(seeds))
    per_step = result.norms.view(len(prompts), len(seeds), -1).mean(dim=1)
    matches = index.query(result.images) if index is not None else None
    scores = []
    for i, prompt in enumerate(prompts):
        near = None
        if matches is not None:
            mine = matches[i * len(seeds) : (i + 1) * len(seeds)]
            best = max(range(len(mine)), key=lambda k: mine[k].similarity)
            near = {
                "max_similarity": mine[best].similarity,
                "matched": mine[best].path,
                "matched_seed": seeds[best],
                "per_seed": [m.similarity for m in mine],
                "per_seed_matched": [m.path for m in mine],
                "replicated_fraction": float(np.mean([m.similarity > index.descriptor.threshold for m in mine])),
            }
        scores.append(
            PromptScore(
                prompt=prompt,
                metric=float(per_image[i].mean()),
                per_seed=[float(v) for v in per_image[i]],
                per_step=[float(v) for v in per_step[i]],
                near_duplicate=near,
            )
        )
    return scores, result.images


def calibrate_threshold(reference_scores: Sequence[float], fpr: float = 0.05) -> float:
    """The smallest threshold that flags at most `fpr` of the reference (non-memorized) prompts.

    ``score > threshold`` flags a prompt; the threshold is the k-th smallest reference score with
    ``k = n - floor(fpr * n)``, so at most ``floor(fpr * n)`` references lie above it (with fewer than
    ``1 / fpr`` references it is their maximum).
    """
    ref = np.asarray(list(reference_scores), dtype=np.float64)
    if ref.size == 0:
        raise InvalidArgumentError("`reference_scores` must hold at least one score, but is empty.")
    if not 0.0 <= fpr < 1.0:
        raise InvalidArgumentError(f"`fpr` must be in [0, 1), but is {fpr!r}.")
    k = ref.size - math.floor(fpr * ref.size)
    return float(np.sort(ref)[k - 1])


def detect(
    model: DiffusionModel,
    prompts: Sequence[str],
    *,
    reference_prompts: Sequence[str] | None = None,
    threshold: float | None = None,
    fpr: float = 0.05,
    seeds: Sequence[int] = (0, 1, 2, 3),
    steps: int = 10,
    sampler: SamplerConfig | None = None,
    index: NearDuplicateIndex | None = None,
    decode: bool = False,
    progress: bool = False,
) -> tuple[dict, torch.Tensor | None]:
    """Score `prompts` (and `reference_prompts`), flag memorized ones, and build the JSON report.

    The threshold is `threshold` when given, else calibrated on the reference prompts at `fpr`, else
    none (scores only). With reference prompts the report holds the ROC AUC of prompts vs references (with
    a bootstrap CI), meaningful when `prompts` are the suspected-memorized set.

    Returns:
        (report, images): images of `prompts` (prompt-major, seeds inner) when decoded, else None.
    """
    from ..stats import bootstrap_ci, roc_auc

    check_text_to_image(model)
    sampler = sampler or SamplerConfig()
    resolution = sampler.check(model)
    seeds = check_seeds(seeds)
    scores, images = score_prompts(
        model, prompts, seeds=seeds, steps=steps, sampler=sampler, index=index, decode=decode, progress=progress
    )
    references = None
    if reference_prompts is not None:
        references, _ = score_prompts(
            model, reference_prompts, seeds=seeds, steps=steps, sampler=sampler, index=index, progress=progress,
            desc="reference",
        )
    if threshold is not None:
        threshold_info = {"value": float(threshold), "source": "given"}
    elif references is not None:
        threshold = calibrate_threshold([r.metric for r in references], fpr)
        threshold_info = {"value": threshold, "source": "calibrated on reference prompts", "fpr": fpr}
    else:
        threshold_info = {"value": None, "source": "none (pass --threshold or --reference-prompts to flag prompts)"}
    rows = []
    for s in scores:
        row = s.to_json()
        row["flagged"] = None if threshold is None else bool(s.metric > threshold)
        rows.append(row)
    report: dict = {
        "tool": "artshield memorization detect",
        "method": "Wen et al. ICLR 2024: mean ||eps(x_t,c) - eps(x_t,'')||_2 over the first DDIM steps and seeds",
        "model": model.source,
        "config": {
            "seeds": seeds,
            "steps": int(steps),
            "num_inference_steps": int(sampler.num_inference_steps),
            "guidance_scale": float(sampler.guidance_scale),
            "resolution": resolution,
            "prediction_type": model.prediction_type,
        },
        "threshold": threshold_info,
        "prompts": rows,
        "summary": {
            "n_prompts": len(scores),
            "mean_metric": float(np.mean([s.metric for s in scores])),
            "n_flagged": None if threshold is None else int(sum(r["flagged"] for r in rows)),
        },
    }
    if index is not None:
        report["near_duplicates"] = {
            "descriptor": index.descriptor.describe(),
            "training_images": len(index.paths),
            "skipped": [f"{p}: {why}" for p, why in index.skipped],
        }
        report["summary"]["n_replicated"] = int(
            sum(s.near_duplicate["max_similarity"] > index.descriptor.threshold for s in scores)
        )
    if references is not None:
        ref_rows = [r.to_json() for r in references]
        for row, r in zip(ref_rows, references, strict=True):
            row["flagged"] = bool(r.metric > threshold) if threshold is not None else None
        report["reference_prompts"] = ref_rows
        pos, neg = np.array([s.metric for s in scores]), np.array([r.metric for r in references])
        auc = roc_auc(pos, neg)
        _, low, high = bootstrap_ci((pos, neg), roc_auc, n=1000, seed=0)
        report["auc"] = {"value": auc, "ci95": [low, high], "note": "prompts (positives) vs reference prompts"}
        if index is not None:
            pos_sim = np.array([s.near_duplicate["max_similarity"] for s in scores])
            neg_sim = np.array([r.near_duplicate["max_similarity"] for r in references])
            report["auc_near_duplicate"] = {"value": roc_auc(pos_sim, neg_sim), "note": "max similarity, same split"}
    return report, images


# ================================================================================================ location
def find_target_layers(unet: torch.nn.Module, layers: Sequence[str] = ("ffn2",)) -> dict[str, torch.nn.Linear]:
    """The linear layers to locate memorization in, by qualified name inside `unet`, in module order.

    `layers` are keys of :data:`LAYER_CHOICES`; each picks one submodule of every diffusers
    ``BasicTransformerBlock`` (16 blocks in SD 1.x: ConceptPrune's hooked layers).
    """
    from diffusers.models.attention import BasicTransformerBlock

    layers = list(layers)
    if not layers:
        raise InvalidArgumentError(f"`layers` must name at least one of {', '.join(LAYER_CHOICES)}.")
    unknown = [name for name in layers if name not in LAYER_CHOICES]
    if unknown:
        raise InvalidArgumentError(f"`layers` must be among {', '.join(LAYER_CHOICES)}, but includes {', '.join(unknown)}.")
    found: dict[str, torch.nn.Linear] = {}
    for block_name, block in unet.named_modules():
        if not isinstance(block, BasicTransformerBlock):
            continue
        for choice in layers:
            sub = LAYER_CHOICES[choice]
            try:
                module = block.get_submodule(sub)
            except AttributeError:
                continue
            if isinstance(module, torch.nn.Linear):
                found[f"{block_name}.{sub}"] = module
    if not found:
        raise IncompatibleModelError(
            f"the UNet has no {', '.join(LAYER_CHOICES[c] for c in layers)} linear layers in BasicTransformerBlocks "
            "(is it a Stable Diffusion UNet2DConditionModel?)."
        )
    order = {name: i for i, (name, _) in enumerate(unet.named_modules())}
    return dict(sorted(found.items(), key=lambda item: order[item[0]]))


class ActivationRecorder:
    """Forward pre-hooks that accumulate WANDA activation statistics per denoising step and layer.

    Inside ``with recorder:`` every UNet call advances the step counter (one call per step: the pipeline
    batches both guidance branches) and, for the first `max_steps` steps, every hooked linear layer adds the
    squared, row-L2-normalised rows of its input to ``sumsq[group][step][layer]`` (a vector over input
    features) and their count to ``rows[group][step][layer]``. Call :meth:`start_run` before each pipeline
    call and set :attr:`group` to say whose activations these are ("target" or "base"). The hooks are
    removed on exit, even after an error.

    Args:
        include_unconditional: also record the unconditional half of the guidance batch (ConceptPrune does);
            False records the conditional half only.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        modules: dict[str, torch.nn.Linear],
        max_steps: int,
        *,
        include_unconditional: bool = True,
    ) -> None:
        self.unet, self.modules, self.max_steps = unet, modules, int(max_steps)
        self.include_unconditional = include_unconditional
        self.group = "target"
        self.step = -1
        self.sumsq: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
        self.rows: dict[str, dict[int, dict[str, int]]] = {}
        self.calls: dict[str, int] = {name: 0 for name in modules}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def start_run(self, group: str) -> None:
        """Reset the step counter before a pipeline call whose activations belong to `group`."""
        self.group, self.step = group, -1

    def __enter__(self) -> ActivationRecorder:
        self._handles.append(self.unet.register_forward_pre_hook(self._advance))
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._make_hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _advance(self, module, args) -> None:
        self.step += 1

    def _make_hook(self, name: str):
        def hook(module, args) -> None:
            step = self.step
            if not 0 <= step < self.max_steps:
                return
            x = args[0].detach()
            if not self.include_unconditional:
                # The guidance batch is [unconditional, conditional] (diffusers' order): keep the second half.
                x = x[x.shape[0] // 2 :]
            rows = F.normalize(x.reshape(-1, x.shape[-1]).float(), p=2, dim=1)
            sq = rows.square().sum(dim=0)
            per_step = self.sumsq.setdefault(self.group, {}).setdefault(step, {})
            counts = self.rows.setdefault(self.group, {}).setdefault(step, {})
            per_step[name] = per_step[name] + sq if name in per_step else sq
            counts[name] = counts.get(name, 0) + rows.shape[0]
            self.calls[name] += 1

        return hook

    def column_norms(self, group: str, step: int, name: str) -> torch.Tensor:
        """RMS over rows of the normalised activations, per input feature: sqrt(sum x^2 / rows)."""
        try:
            return (self.sumsq[group][step][name] / self.rows[group][step][name]).sqrt()
        except KeyError as exc:
            raise RuntimeError(f"no activations recorded for {group} at step {step} in {name}") from exc


@dataclass
class MemorizationMasks:
    """Per-layer boolean masks (True = weight to zero) over UNet weight matrices, with their provenance.

    Attributes:
        masks: module name -> bool tensor shaped like that module's weight (out, in).
        per_step: module name -> how many weights each of the first `timesteps` steps selected (before
            the union).
        config: how they were found (layers, ratio, timesteps, prompts, seeds ...), JSON-able.
    """

    masks: dict[str, torch.Tensor]
    per_step: dict[str, list[int]] = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def stats(self) -> dict:
        """JSON-able mask statistics: per layer and overall counts and fractions."""
        layers = []
        for name, mask in self.masks.items():
            selected = int(mask.sum())
            layers.append(
                {
                    "name": name,
                    "shape": list(mask.shape),
                    "selected": selected,
                    "fraction": selected / mask.numel(),
                    "rows_touched": int(mask.any(dim=1).sum()),
                    "per_step_selected": self.per_step.get(name, []),
                }
            )
        weights = sum(m.numel() for m in self.masks.values())
        return {
            "format": MASKS_FORMAT,
            "config": self.config,
            "total_selected": self.total,
            "total_weights": int(weights),
            "fraction": self.total / weights if weights else 0.0,
            "layers": layers,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the masks as safetensors (bool tensors keyed ``<module>.weight``, as in the UNet state dict)."""
        from safetensors.torch import save_file

        path = Path(os.fspath(path))
        tensors = {f"{name}.weight": mask.to(torch.bool).contiguous().cpu() for name, mask in self.masks.items()}
        metadata = {"format": MASKS_FORMAT, "config": json.dumps(self.config), "per_step": json.dumps(self.per_step)}
        save_file(tensors, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> MemorizationMasks:
        """Read masks written by :meth:`save`."""
        from safetensors import safe_open

        path = Path(os.fspath(path))
        if not path.is_file():
            raise ModelNotFoundError(f"masks file {path}: no such file.")
        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata = fh.metadata() or {}
                masks = {key.removesuffix(".weight"): fh.get_tensor(key).to(torch.bool) for key in fh.keys()}
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise ModelLoadError(f"masks file {path}: not a readable safetensors file ({exc}).") from exc
        if metadata.get("format") != MASKS_FORMAT:
            raise ModelLoadError(f"masks file {path}: not an artshield memorization-masks file.")
        return cls(masks=masks, per_step=json.loads(metadata.get("per_step", "{}")), config=json.loads(metadata.get("config", "{}")))


def wanda_select(
    weight: torch.Tensor, norm_target: torch.Tensor, norm_base: torch.Tensor, ratio: float
) -> torch.Tensor:
    """ConceptPrune's per-step selection: per output row, the top ``int(ratio * in_features)`` weights by
    target WANDA score ``|W| * ||X_target||`` whose target score exceeds the base score."""
    abs_w = weight.detach().float().abs()
    score_target = abs_w * norm_target.to(abs_w)[None, :]
    score_base = abs_w * norm_base.to(abs_w)[None, :]
    k = int(ratio * weight.shape[1])
    mask = torch.zeros_like(abs_w, dtype=torch.bool)
    if k > 0:
        top = score_target.topk(k, dim=1).indices
        mask.scatter_(1, top, True)
    return mask & (score_target > score_base)


def _check_location_args(
    model: DiffusionModel, layers: Sequence[str], ratio: float, timesteps: int, sampler: SamplerConfig
) -> dict[str, torch.nn.Linear]:
    if not 0.0 < ratio <= 1.0:
        raise InvalidArgumentError(f"`ratio` must be in (0, 1], but is {ratio!r}.")
    if not 1 <= int(timesteps) <= int(sampler.num_inference_steps):
        raise InvalidArgumentError(
            f"`timesteps` must be in [1, num_inference_steps={sampler.num_inference_steps}], but is {timesteps!r}."
        )
    return find_target_layers(model.unet, layers)


def locate_memorization(
    model: DiffusionModel,
    memorized_prompts: Sequence[str],
    base_prompts: Sequence[str] = ("",),
    *,
    layers: Sequence[str] = ("ffn2",),
    ratio: float = 0.01,
    timesteps: int = 10,
    seeds: Sequence[int] = (0,),
    sampler: SamplerConfig | None = None,
    include_unconditional: bool = True,
    progress: bool = False,
) -> MemorizationMasks:
    """Locate the memorization subspace (Chavhan et al. 2024, ConceptPrune's WANDA variant).

    Generations for every memorized prompt and every base prompt, for each seed, are run for the first
    `timesteps` DDIM steps with :class:`ActivationRecorder` hooks; per step and layer the weights are
    selected by :func:`wanda_select`, and the masks are the union over steps. The model is not modified.
    """
    check_text_to_image(model)
    memorized_prompts = check_prompts(memorized_prompts, "memorized_prompts")
    base_prompts = check_prompts(base_prompts, "base_prompts")
    seeds = check_seeds(seeds)
    sampler = sampler or SamplerConfig()
    resolution = sampler.check(model)
    modules = _check_location_args(model, layers, ratio, timesteps, sampler)
    small = [name for name, m in modules.items() if int(ratio * m.in_features) == 0]
    if small:
        logger.warning(
            "ratio %.4g selects no weight in %d layer(s) with fewer than %d inputs (e.g. %s); raise --ratio.",
            ratio, len(small), math.ceil(1 / ratio), small[0],
        )
    recorder = ActivationRecorder(model.unet, modules, int(timesteps), include_unconditional=include_unconditional)
    with recorder:
        for group, prompts in (("target", memorized_prompts), ("base", base_prompts)):
            texts, all_seeds = _expand(prompts, seeds)
            sample(
                model, model.embed_prompt(texts), all_seeds, sampler, decode=False, stop_after=int(timesteps),
                progress=progress, desc=f"locate ({group})",
                before_batch=lambda _b, group=group: recorder.start_run(group),
            )
    masks: dict[str, torch.Tensor] = {}
    per_step: dict[str, list[int]] = {}
    for name, module in modules.items():
        union = torch.zeros_like(module.weight, dtype=torch.bool, device="cpu")
        counts = []
        for t in range(int(timesteps)):
            step_mask = wanda_select(
                module.weight.cpu(),
                recorder.column_norms("target", t, name).cpu(),
                recorder.column_norms("base", t, name).cpu(),
                ratio,
            )
            counts.append(int(step_mask.sum()))
            union |= step_mask
        masks[name] = union
        per_step[name] = counts
    config = {
        "method": "Chavhan et al. 2024 / ConceptPrune WANDA: |W|*||X||, top ratio per row, target > base, union over steps",
        "layers": list(layers),
        "ratio": float(ratio),
        "timesteps": int(timesteps),
        "seeds": seeds,
        "memorized_prompts": memorized_prompts,
        "base_prompts": base_prompts,
        "include_unconditional": include_unconditional,
        "num_inference_steps": int(sampler.num_inference_steps),
        "guidance_scale": float(sampler.guidance_scale),
        "resolution": resolution,
    }
    result = MemorizationMasks(masks=masks, per_step=per_step, config=config)
    logger.info("located %d weights (%.4f%% of %d layers)", result.total, 100 * result.stats()["fraction"], len(masks))
    return result


@torch.no_grad()
def apply_masks(unet: torch.nn.Module, masks: MemorizationMasks | dict[str, torch.Tensor]) -> int:
    """Zero the masked weights of `unet` in place; returns how many weights were selected.

    Equivalent to ConceptPrune's ``weight *= (1 - mask)``, written as ``masked_fill_`` so zeros are +0 and
    non-finite weights cannot turn into NaN. Nothing else changes.
    """
    mapping = masks.masks if isinstance(masks, MemorizationMasks) else masks
    modules = dict(unet.named_modules())
    for name, mask in mapping.items():  # check everything before touching anything
        module = modules.get(name)
        if not isinstance(module, torch.nn.Linear):
            raise IncompatibleModelError(f"mask for {name!r}: the UNet has no linear layer of that name.")
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise IncompatibleModelError(
                f"mask for {name!r} has shape {tuple(mask.shape)} but the weight is {tuple(module.weight.shape)}."
            )
    total = 0
    for name, mask in mapping.items():
        weight = modules[name].weight
        weight.masked_fill_(mask.to(device=weight.device, dtype=torch.bool), 0.0)
        total += int(mask.sum())
    return total


# ================================================================================================ saving
def write_json_atomic(path: str | os.PathLike, data: dict) -> Path:
    """Write JSON to a temporary file beside `path`, then rename it into place."""
    path = Path(os.fspath(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ImageWriteError(f"{path}: cannot write here ({exc.strerror or exc}).") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, allow_nan=False)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def save_pruned_checkpoint(
    model: DiffusionModel,
    masks: MemorizationMasks,
    output: str | os.PathLike,
    *,
    report: dict | None = None,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """Save `model` (already pruned with :func:`apply_masks`) as a diffusers folder, atomically.

    `dtype` (e.g. ``torch.float16`` to ship half-size weights) converts `model` in place before saving;
    None saves the weights in the precision they were loaded in.

    The folder is written by ``StableDiffusionPipeline.save_pretrained(safe_serialization=True)`` (with the
    model's own training scheduler and no safety checker) plus :data:`MASKS_FILE` (the masks),
    :data:`MASK_STATS_FILE` (their statistics) and, when given, :data:`REPORT_FILE`, into a temporary folder
    beside `output` that is then renamed into place: an interruption leaves no half-written checkpoint.
    It loads with ``artshield.models.load`` and ``StableDiffusionPipeline.from_pretrained``.
    """
    from diffusers import StableDiffusionPipeline

    from ..models.loading import quiet_loading

    out = Path(os.fspath(output))
    source = Path(model.source)
    if model.source != "demo" and source.exists() and (_same_path(out, source) or _same_path(out, source.parent)):
        raise ImageWriteError(f"{out}: refusing to overwrite the original model {model.source}; choose another output.")
    if model.source == "demo":
        from ..models.demo import DEMO_WEIGHTS

        if _same_path(out, DEMO_WEIGHTS):
            raise ImageWriteError(f"{out}: refusing to overwrite the shipped demo weights; choose another output.")
    if out.exists() and not overwrite:
        raise ImageWriteError(f"{out}: already exists; pass --overwrite to replace it.")
    if out.exists() and not out.is_dir():
        raise ImageWriteError(f"{out}: exists and is not a folder.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise ImageWriteError(f"{out}: cannot create a folder in {out.parent} ({exc.strerror or exc}).") from exc
    if dtype is not None and dtype != model.dtype:
        model.to(dtype=dtype)
    try:
        pipe = StableDiffusionPipeline(
            vae=model.vae,
            text_encoder=model.text_encoder,
            tokenizer=model.tokenizer,
            unet=model.unet,
            scheduler=model.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        with quiet_loading():
            pipe.save_pretrained(str(tmp), safe_serialization=True)
        masks.save(tmp / MASKS_FILE)
        write_json_atomic(tmp / MASK_STATS_FILE, masks.stats())
        if report is not None:
            write_json_atomic(tmp / REPORT_FILE, report)
        os.chmod(tmp, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            old.rmdir()
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ImageWriteError(f"{out}: could not write the checkpoint ({exc.strerror or exc}).") from exc
        raise
    return out


# ================================================================================================ utility
def parse_world_caption(prompt: str) -> tuple[str, str] | None:
    """(subject, style) when `prompt` is a demo-world caption such as ``"a tree in ink style"``."""
    from ..models.demo.world import ALL_STYLES, SUBJECTS, caption

    match = _CAPTION_RE.match(prompt.strip())
    if not match:
        return None
    subject, style = match["subject"], match["style"]
    if subject not in SUBJECTS or style not in ALL_STYLES or caption(style, subject) != prompt.strip():
        return None
    return subject, style


class ClipScorer:
    """CLIP score (cosine of open_clip image and text embeddings, as ConceptPrune reports it) from local
    weights: `weights` is a file open_clip's ``pretrained=`` accepts (a path; nothing is downloaded)."""

    def __init__(self, weights: str | os.PathLike, arch: str = "ViT-B-32", device: torch.device | str = "cpu") -> None:
        path = Path(os.fspath(weights))
        if not path.is_file():
            raise ModelNotFoundError(f"CLIP weights {path}: no such file.")
        try:
            import open_clip
        except ImportError as exc:
            raise ModelLoadError("CLIP score needs open_clip_torch (pip install 'artshield[metrics]').") from exc
        self.device = torch.device(device)
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(path), device=self.device)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"CLIP weights {path} do not fit architecture {arch}: {str(exc).splitlines()[0]}") from exc
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.arch, self.path = arch, path

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        from ..imageio import to_pil

        batch = torch.stack([self.preprocess(to_pil(img)) for img in images]).to(self.device)
        image_features = F.normalize(self.model.encode_image(batch).float(), dim=-1)
        text_features = F.normalize(self.model.encode_text(self.tokenizer(list(prompts)).to(self.device)).float(), dim=-1)
        return (image_features * text_features).sum(dim=-1).cpu()


@dataclass
class Evaluation:
    """Memorization and utility of one model state (before or after pruning)."""

    memorization: dict
    utility: dict
    memorized_images: torch.Tensor | None
    utility_images: torch.Tensor | None


def _mean(values) -> float:
    return float(np.mean(list(values)))


def evaluate_model(
    model: DiffusionModel,
    memorized_prompts: Sequence[str],
    utility_prompts: Sequence[str],
    *,
    seeds: Sequence[int] = (0, 1, 2, 3),
    steps: int = 10,
    sampler: SamplerConfig | None = None,
    index: NearDuplicateIndex | None = None,
    style_metric=None,
    clip: ClipScorer | None = None,
    reference: Evaluation | None = None,
    progress: bool = False,
) -> Evaluation:
    """Measure memorization on `memorized_prompts` and utility on `utility_prompts`.

    Memorization: Wen et al.'s metric per prompt and, with `index`, the best near-duplicate similarity.
    Utility: the text-conditional norm on the utility prompts (how strongly text still steers them); the
    demo style metric's accuracy and mean probability of the captioned style when every utility prompt is a
    demo-world caption and `style_metric` is given; CLIP score with `clip`; and with `reference` (the
    evaluation before pruning, same seeds) SSIM / PSNR / LPIPS of each generation to the original one.
    """
    from ..metrics import finite_psnr, lpips_distance, ssim

    seeds = check_seeds(seeds)
    mem_scores, mem_images = score_prompts(
        model, memorized_prompts, seeds=seeds, steps=steps, sampler=sampler, index=index, decode=True,
        progress=progress, desc="memorized prompts",
    )
    memorization: dict = {
        "mean_metric": _mean(s.metric for s in mem_scores),
        "prompts": [s.to_json() for s in mem_scores],
    }
    if index is not None:
        memorization["mean_max_similarity"] = _mean(s.near_duplicate["max_similarity"] for s in mem_scores)
        memorization["replicated_fraction"] = _mean(s.near_duplicate["replicated_fraction"] for s in mem_scores)
    util_scores, util_images = score_prompts(
        model, utility_prompts, seeds=seeds, steps=steps, sampler=sampler, decode=True, progress=progress,
        desc="utility prompts",
    )
    utility: dict = {
        "prompts": list(utility_prompts),
        "mean_text_conditional_norm": _mean(s.metric for s in util_scores),
    }
    texts, _ = _expand(utility_prompts, seeds)
    parsed = [parse_world_caption(p) for p in utility_prompts]
    if style_metric is not None and all(parsed):
        wanted = [parsed[i][1] for i in range(len(utility_prompts)) for _ in seeds]
        with torch.no_grad():
            probs = style_metric.probabilities(util_images)
        predicted = [style_metric.styles[i] for i in probs.argmax(dim=1).tolist()]
        utility["style_accuracy"] = _mean(p == w for p, w in zip(predicted, wanted, strict=True))
        utility["style_score"] = _mean(float(probs[i, style_metric.styles.index(w)]) for i, w in enumerate(wanted))
    elif style_metric is not None:
        utility["style_note"] = "style metric skipped: not every utility prompt is a demo-world caption"
    if clip is not None:
        utility["clip_score"] = float(clip(util_images, texts).mean())
        utility["clip_model"] = f"{clip.arch} ({clip.path.name})"
    if reference is not None and reference.utility_images is not None:
        before = reference.utility_images
        utility["ssim_to_original"] = float(ssim(util_images, before).mean())
        utility["psnr_to_original_db"] = float(finite_psnr(util_images, before).mean())
        distance = lpips_distance(util_images, before)
        if distance is not None:
            utility["lpips_to_original"] = float(distance.mean())
        ref_norm = reference.utility["mean_text_conditional_norm"]
        utility["text_conditional_norm_ratio"] = utility["mean_text_conditional_norm"] / ref_norm if ref_norm else None
        if reference.memorized_images is not None:
            memorization["ssim_to_original"] = float(ssim(mem_images, reference.memorized_images).mean())
    return Evaluation(memorization=memorization, utility=utility, memorized_images=mem_images, utility_images=util_images)


# ================================================================================================ re-check
def perturb_embedding(embeds: torch.Tensor, magnitude: float, generator: torch.Generator) -> torch.Tensor:
    """Add to each token embedding a random direction of norm ``magnitude * ||token||`` (relative noise)."""
    noise = torch.randn(embeds.shape, generator=generator, dtype=torch.float32)
    noise = F.normalize(noise, dim=-1) * embeds.float().norm(dim=-1, keepdim=True).cpu() * float(magnitude)
    return (embeds.float() + noise.to(embeds.device)).to(embeds.dtype)


def robustness_check(
    model: DiffusionModel,
    memorized_prompts: Sequence[str],
    magnitudes: Sequence[float] = DEFAULT_PERTURBATIONS,
    *,
    seeds: Sequence[int] = (0, 1, 2, 3),
    steps: int = 10,
    sampler: SamplerConfig | None = None,
    index: NearDuplicateIndex | None = None,
    progress: bool = False,
) -> list[dict]:
    """Memorization metrics with randomly perturbed prompt embeddings (the Finding-Dori re-check).

    For each relative magnitude, every prompt/seed pair gets its own perturbation, drawn from a generator
    seeded by (seed, prompt, magnitude), so the same perturbations are used before and after pruning.
    """
    seeds = check_seeds(seeds)
    results = []
    for m_index, magnitude in enumerate(magnitudes):
        if not magnitude >= 0:
            raise InvalidArgumentError(f"perturbation magnitudes must be >= 0, but include {magnitude!r}.")

        def transform(e: torch.Tensor, p_index: int, seed: int, magnitude=magnitude, m_index=m_index) -> torch.Tensor:
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + p_index * 1_009 + m_index + 7)
            return perturb_embedding(e, magnitude, g)

        scores, _ = score_prompts(
            model, memorized_prompts, seeds=seeds, steps=steps, sampler=sampler, index=index,
            embed_transform=transform, progress=progress, desc=f"re-check {magnitude:g}",
        )
        row = {"magnitude": float(magnitude), "mean_metric": _mean(s.metric for s in scores)}
        if index is not None:
            row["mean_max_similarity"] = _mean(s.near_duplicate["max_similarity"] for s in scores)
            row["replicated_fraction"] = _mean(s.near_duplicate["replicated_fraction"] for s in scores)
        results.append(row)
    return results


# ================================================================================================ orchestration
@dataclass
class PruneResult:
    """What :func:`prune` returns: the masks, the report, the evaluations and where the checkpoint went."""

    masks: MemorizationMasks
    report: dict
    before: Evaluation | None
    after: Evaluation | None
    output: Path | None


def default_utility_prompts(model: DiffusionModel) -> list[str]:
    """Utility prompts when none are given: one world caption per training style for the demo model,
    generic scenes otherwise."""
    if model.source == "demo":
        from ..models.demo.world import STYLES, SUBJECTS, caption

        return [caption(style, SUBJECTS[i % len(SUBJECTS)]) for i, style in enumerate(STYLES)]
    return list(GENERIC_UTILITY_PROMPTS)


def prune(
    model: DiffusionModel,
    memorized_prompts: Sequence[str],
    *,
    base_prompts: Sequence[str] = ("",),
    utility_prompts: Sequence[str] | None = None,
    layers: Sequence[str] = ("ffn2",),
    ratio: float = 0.01,
    timesteps: int = 10,
    locate_seeds: Sequence[int] = (0,),
    include_unconditional: bool = True,
    seeds: Sequence[int] = (0, 1, 2, 3),
    steps: int = 10,
    sampler: SamplerConfig | None = None,
    index: NearDuplicateIndex | None = None,
    style_metric=None,
    clip: ClipScorer | None = None,
    perturbations: Sequence[float] = DEFAULT_PERTURBATIONS,
    evaluate: bool = True,
    output: str | os.PathLike | None = None,
    overwrite: bool = False,
    save_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> PruneResult:
    """Evaluate, locate, prune (in place), evaluate again, re-check, and save the edited checkpoint.

    `model` is modified in place (its UNet loses the located weights). With ``evaluate=False`` only the
    location and pruning run. With `output` the checkpoint (with masks, statistics and this report) is
    written atomically there (converted to `save_dtype` when given).
    """
    check_text_to_image(model)
    memorized_prompts = check_prompts(memorized_prompts, "memorized_prompts")
    sampler = sampler or SamplerConfig()
    resolution = sampler.check(model)
    seeds = check_seeds(seeds)
    check_seeds(locate_seeds)
    check_prompts(base_prompts, "base_prompts")
    _check_location_args(model, layers, ratio, timesteps, sampler)  # fail before minutes of evaluation
    if output is not None:
        out = Path(os.fspath(output))
        if out.exists() and not overwrite:  # fail before minutes of work, not after
            raise ImageWriteError(f"{out}: already exists; pass --overwrite to replace it.")
    utility_prompts = check_prompts(utility_prompts, "utility_prompts") if utility_prompts is not None else default_utility_prompts(model)
    eval_kwargs = {"seeds": seeds, "steps": steps, "sampler": sampler, "index": index, "progress": progress}
    before = after = None
    robustness: dict = {}
    if evaluate:
        before = evaluate_model(model, memorized_prompts, utility_prompts, style_metric=style_metric, clip=clip, **eval_kwargs)
        if perturbations:
            robustness["before"] = robustness_check(model, memorized_prompts, perturbations, **eval_kwargs)
    masks = locate_memorization(
        model, memorized_prompts, base_prompts, layers=layers, ratio=ratio, timesteps=timesteps, seeds=locate_seeds,
        sampler=sampler, include_unconditional=include_unconditional, progress=progress,
    )
    pruned = apply_masks(model.unet, masks)
    logger.info("pruned %d weights", pruned)
    if evaluate:
        after = evaluate_model(
            model, memorized_prompts, utility_prompts, style_metric=style_metric, clip=clip, reference=before, **eval_kwargs
        )
        if perturbations:
            robustness["after"] = robustness_check(model, memorized_prompts, perturbations, **eval_kwargs)
    report: dict = {
        "tool": "artshield memorization prune",
        "model": model.source,
        "output": None if output is None else str(output),
        "config": {
            "seeds": seeds,
            "steps": int(steps),
            "num_inference_steps": int(sampler.num_inference_steps),
            "guidance_scale": float(sampler.guidance_scale),
            "resolution": resolution,
            "utility_prompts": utility_prompts,
            "perturbations": [float(m) for m in perturbations],
        },
        "location": masks.stats(),
        "pruned_weights": pruned,
    }
    if evaluate:
        report["memorization"] = {"before": before.memorization, "after": after.memorization}
        report["utility"] = {"before": before.utility, "after": after.utility}
        if index is not None:
            report["near_duplicates"] = {"descriptor": index.descriptor.describe(), "training_images": len(index.paths)}
        if robustness:
            report["robustness"] = {
                "method": "random relative perturbations of the prompt token embeddings (Finding Dori re-check; "
                "random directions, not optimised)",
                **robustness,
            }
        report["summary"] = _summary(before, after, robustness, index)
    saved = None
    if output is not None:
        saved = save_pruned_checkpoint(model, masks, output, report=report, overwrite=overwrite, dtype=save_dtype)
    return PruneResult(masks=masks, report=report, before=before, after=after, output=saved)


def _summary(before: Evaluation, after: Evaluation, robustness: dict, index: NearDuplicateIndex | None) -> dict:
    summary = {
        "memorization_metric": [before.memorization["mean_metric"], after.memorization["mean_metric"]],
        "utility_text_conditional_norm": [
            before.utility["mean_text_conditional_norm"], after.utility["mean_text_conditional_norm"]
        ],
    }
    if index is not None:
        summary["max_similarity"] = [before.memorization["mean_max_similarity"], after.memorization["mean_max_similarity"]]
        summary["replicated_fraction"] = [before.memorization["replicated_fraction"], after.memorization["replicated_fraction"]]
    for key in ("style_accuracy", "style_score", "clip_score"):
        if key in before.utility and key in after.utility:
            summary[f"utility_{key}"] = [before.utility[key], after.utility[key]]
    if "ssim_to_original" in after.utility:
        summary["utility_ssim_to_original"] = after.utility["ssim_to_original"]
    if "after" in robustness:
        key = "mean_max_similarity" if index is not None else "mean_metric"
        summary[f"recheck_{key}_after"] = {str(r["magnitude"]): r[key] for r in robustness["after"]}
    summary["note"] = "pairs are [before, after] pruning"
    return summary


__all__ = [
    "LAYER_CHOICES",
    "ActivationRecorder",
    "ClipScorer",
    "DCTDescriptor",
    "Evaluation",
    "Match",
    "MemorizationMasks",
    "NearDuplicateIndex",
    "PromptScore",
    "PruneResult",
    "SSCDDescriptor",
    "SampleResult",
    "SamplerConfig",
    "apply_masks",
    "calibrate_threshold",
    "default_utility_prompts",
    "detect",
    "evaluate_model",
    "find_target_layers",
    "load_descriptor",
    "locate_memorization",
    "parse_world_caption",
    "perturb_embedding",
    "prune",
    "robustness_check",
    "sample",
    "save_pruned_checkpoint",
    "score_prompts",
    "wanda_select",
]
