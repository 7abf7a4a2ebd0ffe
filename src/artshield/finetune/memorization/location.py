"""Location and pruning of the memorization subspace (Chavhan et al., "Memorized Images in Diffusion Models
share a Subspace that can be Located and Deleted", arXiv 2406.18566, via ConceptPrune's WANDA variant):
activation recording hooks, per-step WANDA selection, the masks (with their safetensors file), and zeroing
the masked weights."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ...errors import IncompatibleModelError, InvalidArgumentError, ModelLoadError, ModelNotFoundError
from ...models.handle import DiffusionModel
from .sampling import SamplerConfig, check_prompts, check_seeds, check_text_to_image, expand_prompts, sample

logger = logging.getLogger(__name__)

#: Layer choices: CLI name -> submodule path inside a ``BasicTransformerBlock`` (ConceptPrune's
#: ``hook_module`` values ``unet``, ``unet-ffn-1``, ``attn_key``, ``attn_val``).
LAYER_CHOICES: dict[str, str] = {
    "ffn2": "ff.net.2",
    "ffn1": "ff.net.0.proj",
    "attn_k": "attn2.to_k",
    "attn_v": "attn2.to_v",
}
MASKS_FORMAT = "artshield-memorization-masks-v1"


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


def check_location_args(
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
    modules = check_location_args(model, layers, ratio, timesteps, sampler)
    small = [name for name, m in modules.items() if int(ratio * m.in_features) == 0]
    if small:
        logger.warning(
            "ratio %.4g selects no weight in %d layer(s) with fewer than %d inputs (e.g. %s); raise --ratio.",
            ratio, len(small), math.ceil(1 / ratio), small[0],
        )
    recorder = ActivationRecorder(model.unet, modules, int(timesteps), include_unconditional=include_unconditional)
    with recorder:
        for group, prompts in (("target", memorized_prompts), ("base", base_prompts)):
            texts, all_seeds = expand_prompts(prompts, seeds)
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


__all__ = [
    "LAYER_CHOICES",
    "MASKS_FORMAT",
    "ActivationRecorder",
    "MemorizationMasks",
    "apply_masks",
    "check_location_args",
    "find_target_layers",
    "locate_memorization",
    "wanda_select",
]
