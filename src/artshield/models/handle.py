"""One handle over a Stable Diffusion checkpoint: its components and the few operations every method needs.

Images cross this boundary as float tensors in [0, 1] of shape (B, 3, H, W) — the convention of the whole
toolkit — and latents as the *scaled* latents the UNet sees (``(z - shift) * scaling_factor``). The handle
casts inputs to the weights' dtype and returns float32, so gradients with respect to images stay in fp32
even when the frozen weights are fp16/bf16.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from ..errors import IncompatibleModelError, InvalidArgumentError, ModelLoadError, ModelNotFoundError
from .device import prefers_channels_last
from .hub import first_line

LatentMode = str  # "sample" (draw from the VAE posterior) or "mean" (its mean)


@dataclass
class DiffusionModel:
    """A loaded Stable Diffusion 1.x/2.x model (text-to-image or inpainting), or the demo model.

    Attributes:
        vae (`AutoencoderKL`), unet (`UNet2DConditionModel`), text_encoder (`CLIPTextModel`),
        tokenizer (`CLIPTokenizer`): the diffusers/transformers components, frozen and in eval mode.
        scheduler (`DDPMScheduler`): the training noise schedule (betas, prediction type).
        source (`str`): what was loaded (``"demo"``, a hub id, a folder or a file), for reports.
        device, dtype: where the weights live and in which precision.
        compute_dtype (`torch.dtype`, *optional*): when set and different from `dtype`, the VAE and UNet run
            under ``torch.autocast`` in this precision (bf16 on CPUs with native bf16 arithmetic, see
            :func:`artshield.models.device.resolve_compute_dtype`); the text encoder never does (its output is
            cached and costs nothing). Outputs are float32 either way.
    """

    vae: torch.nn.Module
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    source: str = "unknown"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    compute_dtype: torch.dtype | None = None
    # Not an init field: every copy (``dataclasses.replace``, :meth:`with_lora`) starts with its own cache, so
    # prompts embedded by a copy whose text encoder differs never reach the original, nor the other way round.
    _prompt_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ properties
    @property
    def is_inpainting(self) -> bool:
        """True for 9-channel inpainting UNets (noisy latent + mask + masked-image latent)."""
        return self.unet.config.in_channels == 9

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def pixel_multiple(self) -> int:
        """Image sides must be a multiple of this for the VAE and every UNet down-sampling to divide evenly."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def native_resolution(self) -> int:
        """The square resolution the model was trained at (512 for SD 1.x, 768 for SD 2.x, 128 for the demo)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    # ------------------------------------------------------------------ housekeeping
    def freeze(self) -> DiffusionModel:
        """Put every component in eval mode without gradients (methods differentiate inputs, not weights)."""
        for module in (self.vae, self.unet, self.text_encoder):
            module.requires_grad_(False)
            module.eval()
        return self

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> DiffusionModel:
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        for module in (self.vae, self.unet, self.text_encoder):
            module.to(device=device, dtype=dtype)
        if device.type != self.device.type or dtype != self.dtype:
            self.compute_dtype = None  # chosen for the old device and weights; load() chooses anew
        self.device, self.dtype = device, dtype
        self._prompt_cache.clear()
        return self

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the VAE and UNet run in: autocast to `compute_dtype`, or nothing."""
        if self.compute_dtype is None or self.compute_dtype == self.dtype:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    @property
    def low_memory(self) -> bool:
        """Whether gradient checkpointing is on (see :meth:`enable_low_memory`)."""
        return bool(getattr(self.unet, "is_gradient_checkpointing", False))

    def enable_low_memory(self, enabled: bool = True) -> DiffusionModel:
        """Trade compute for memory when differentiating through the model: gradient checkpointing of the VAE
        (its encoder and decoder) and the UNet keeps only block inputs and recomputes the rest in the backward
        pass (about a third more compute, roughly half the activation memory; see the README's size and time
        section). Weights are untouched; forward passes without gradients are unaffected."""
        for module in (self.vae, self.unet):
            if enabled:
                module.enable_gradient_checkpointing()
            else:
                module.disable_gradient_checkpointing()
        return self

    def use_channels_last(self, vae: bool = True, unet: bool = False) -> DiffusionModel:
        """Store the convolution weights of the VAE and/or UNet in channels-last (NHWC) order, which oneDNN's
        CPU convolutions run faster on for some layer shapes; the tensors' values and every output are the same."""
        for module, wanted in ((self.vae, vae), (self.unet, unet)):
            module.to(memory_format=torch.channels_last if wanted else torch.contiguous_format)
        return self

    def use_preferred_layout(self) -> DiffusionModel:
        """Store the weights in the layout measured fastest for this device and compute dtype
        (:func:`~artshield.models.device.prefers_channels_last`); what :func:`~artshield.models.load` applies."""
        wanted = prefers_channels_last(self.device, self.compute_dtype)
        return self.use_channels_last(vae=wanted, unet=wanted)

    def clear_prompt_cache(self) -> None:
        """Forget cached prompt embeddings (call after changing the text encoder's weights)."""
        self._prompt_cache.clear()

    # ------------------------------------------------------------------ VAE
    def encode(
        self, images: torch.Tensor, mode: LatentMode = "sample", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Encode images in [0, 1] to scaled latents; differentiable with respect to `images`.

        `mode="sample"` draws from the VAE posterior (as LDM training and AdvDM do), `"mean"` takes its mean
        (as PhotoGuard and Mist-v2 do).
        """
        if mode not in ("sample", "mean"):
            raise InvalidArgumentError(f"`mode` must be 'sample' or 'mean', but is {mode!r}.")
        x = images.to(device=self.device, dtype=self.dtype) * 2.0 - 1.0
        with self.autocast():
            moments = self.vae.encode(x).latent_dist.parameters
        # The posterior in float32 (as diffusers builds it, from the encoder's moments): its exp and the sample
        # are cheap, and bf16 there would cost accuracy under autocast.
        posterior = DiagonalGaussianDistribution(moments.float())
        if mode == "mean":
            latents = posterior.mean
        else:
            # Draw the noise ourselves so a CPU generator works with weights on any device.
            noise = randn_like(posterior.mean, generator)
            latents = posterior.mean + posterior.std * noise
        return self.scale_latents(latents)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode scaled latents to images in [0, 1] (differentiable; clamp is a straight clip)."""
        z = self.unscale_latents(latents).to(device=self.device, dtype=self.dtype)
        with self.autocast():
            images = self.vae.decode(z).sample.float()
        return ((images + 1.0) / 2.0).clamp(0.0, 1.0)

    def scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents (a posterior sample or mean) to the scaled latents the UNet sees."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (z - shift) * self.vae.config.scaling_factor

    def unscale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`scale_latents`: what the VAE decoder takes."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return z / self.vae.config.scaling_factor + shift

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def embed_prompt(self, prompt: str | Sequence[str], batch_size: int | None = None) -> torch.Tensor:
        """Return CLIP hidden states (B, L, D) for one prompt or a list; repeated to `batch_size` if given.

        Embeddings are cached per prompt: frozen-model methods embed the same prompt every step.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        rows = []
        for text in prompts:
            if text not in self._prompt_cache:
                self._prompt_cache[text] = self.encode_prompt_uncached([text])
            rows.append(self._prompt_cache[text])
        embeds = torch.cat(rows, dim=0)
        if batch_size is not None and embeds.shape[0] != batch_size:
            if embeds.shape[0] != 1:
                raise InvalidArgumentError(
                    f"`prompt` has {embeds.shape[0]} entries but the batch has {batch_size} images; give one prompt "
                    "or one per image."
                )
            embeds = embeds.expand(batch_size, -1, -1)
        return embeds

    def encode_prompt_uncached(self, prompts: Sequence[str]) -> torch.Tensor:
        """Tokenise and encode prompts with gradients enabled where the caller enables them (for training)."""
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return self.text_encoder(tokens)[0]

    # ------------------------------------------------------------------ diffusion
    def sample_timesteps(
        self, batch_size: int, generator: torch.Generator | None = None, t_min: int = 0, t_max: int | None = None
    ) -> torch.Tensor:
        """Uniform integer timesteps in [t_min, t_max) on the model's device."""
        t_max = self.num_train_timesteps if t_max is None else t_max
        if not 0 <= t_min < t_max <= self.num_train_timesteps:
            raise InvalidArgumentError(
                f"timestep range must satisfy 0 <= t_min < t_max <= {self.num_train_timesteps}, but is [{t_min}, {t_max})."
            )
        device = generator.device if generator is not None else torch.device("cpu")
        t = torch.randint(t_min, t_max, (batch_size,), generator=generator, device=device)
        return t.to(self.device)

    def alphas_cumprod_at(self, timesteps: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t of the training schedule at `timesteps`, float32 on `like`'s device: shaped (B, 1, ..., 1) to
        broadcast over a batch like `like` for a (B,) tensor of timesteps, a 0-d tensor for one int timestep."""
        alphas = self.scheduler.alphas_cumprod.to(device=like.device, dtype=torch.float32)[timesteps]
        return alphas if alphas.dim() == 0 else alphas.view(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward diffusion q(z_t | z_0) with the model's own noise schedule."""
        alphas = self.alphas_cumprod_at(timesteps, latents)
        return alphas.sqrt() * latents + (1.0 - alphas).sqrt() * noise

    def training_target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet is trained to predict: the noise (epsilon), the velocity (v) or the sample."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            alphas = self.alphas_cumprod_at(timesteps, latents)
            return alphas.sqrt() * noise - (1.0 - alphas).sqrt() * latents
        if self.prediction_type == "sample":
            return latents
        raise InvalidArgumentError(f"unsupported scheduler prediction_type {self.prediction_type!r} in {self.source}.")

    def noise_and_sample(
        self, prediction: torch.Tensor, noisy: torch.Tensor, alpha_bar: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The noise (ε) and clean-sample (x₀) estimates behind a UNet output of any prediction type.

        `prediction` is the UNet's output at `noisy` = √ᾱ x₀ + √(1 − ᾱ) ε, `alpha_bar` that ᾱ (a 0-d tensor or
        one broadcastable over the batch, e.g. :meth:`alphas_cumprod_at`). Inverts :meth:`training_target`:
        ε itself, v = √ᾱ ε − √(1 − ᾱ) x₀, or x₀ itself.
        """
        sqrt_a, sqrt_1ma = alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()
        kind = self.prediction_type
        if kind == "epsilon":
            eps = prediction
            x0 = (noisy - sqrt_1ma * eps) / sqrt_a
        elif kind == "v_prediction":
            x0 = sqrt_a * noisy - sqrt_1ma * prediction
            eps = sqrt_a * prediction + sqrt_1ma * noisy
        elif kind == "sample":
            x0 = prediction
            eps = (noisy - sqrt_a * x0) / sqrt_1ma
        else:
            raise InvalidArgumentError(f"unsupported scheduler prediction_type {kind!r} in {self.source}.")
        return eps, x0

    def ddim_scheduler(self):
        """A fresh DDIM sampler with the model's training schedule and prediction type, as diffusers'
        pipelines build one from a checkpoint's scheduler config (``DDIMScheduler.from_config``)."""
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler.config)

    # ------------------------------------------------------------------ inpainting condition
    @staticmethod
    def masked_images(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] with the region to repaint (mask 1) mid-grey: 0 in the pipeline's [-1, 1] units,
        what ``StableDiffusionInpaintPipeline`` hands its VAE."""
        return images * (1 - mask) + 0.5 * mask

    @staticmethod
    def latent_mask(mask: torch.Tensor, latent_size: Sequence[int]) -> torch.Tensor:
        """The mask at latent resolution, resized as the inpainting pipeline resizes it (nearest)."""
        return F.interpolate(mask, size=tuple(latent_size))

    def inpaint_condition(
        self,
        images: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None = None,
        mode: LatentMode = "sample",
    ) -> torch.Tensor:
        """The (B, 5, h, w) condition an inpainting (9-channel) UNet takes after the noisy latents: the mask at
        latent resolution, then the latents of the masked image — built as
        ``StableDiffusionInpaintPipeline.prepare_mask_latents`` builds it (mask binarised at 0.5, masked part
        mid-grey, VAE posterior sample by default, scaled). Differentiable with respect to `images`.

        Args:
            images: (B, 3, H, W) in [0, 1]. mask: (B or 1, 1, H, W), 1 = the region to repaint.
            generator, mode: as :meth:`encode`.
        """
        mask = (mask >= 0.5).float()  # the pipeline binarises the mask at 0.5
        if mask.shape[0] != images.shape[0]:
            mask = mask.expand(images.shape[0], -1, -1, -1)
        latents = self.encode(self.masked_images(images, mask), mode=mode, generator=generator)
        return torch.cat([self.latent_mask(mask, latents.shape[-2:]).to(latents), latents], dim=1)

    def predict_noise(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        prompt_embeds: torch.Tensor,
        inpaint_condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the UNet; returns its prediction (noise, v or sample, per `prediction_type`) in float32.

        For inpainting UNets `inpaint_condition` is the (B, 5, h, w) stack of the latent-resolution mask and
        the masked image's latents, concatenated after the noisy latents as diffusers' inpainting pipeline does.
        """
        x = noisy_latents
        if self.is_inpainting:
            if inpaint_condition is None:
                raise InvalidArgumentError(
                    f"{self.source} is an inpainting model: `inpaint_condition` (mask and masked-image latents) is required."
                )
            x = torch.cat([x, inpaint_condition.to(device=x.device, dtype=x.dtype)], dim=1)
        elif inpaint_condition is not None:
            raise InvalidArgumentError(f"{self.source} is not an inpainting model; `inpaint_condition` must be None.")
        with self.autocast():
            out = self.unet(
                x.to(device=self.device, dtype=self.dtype),
                timesteps.to(self.device),
                encoder_hidden_states=prompt_embeds.to(device=self.device, dtype=self.dtype),
            ).sample
        return out.float()

    def training_loss(
        self,
        latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        *,
        timesteps: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        t_min: int = 0,
        t_max: int | None = None,
        inpaint_condition: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The latent-diffusion training loss per sample, shape (B,): mean squared error between the UNet's
        prediction on z_t and its target, with t ~ U[t_min, t_max) and noise ~ N(0, I) unless given.

        `weight` (non-negative, broadcastable to the latents, e.g. (B, 1, h, w)) makes it a weighted mean over
        each sample's latent elements, to stress one region of the latent over the rest."""
        batch = latents.shape[0]
        if timesteps is None:
            timesteps = self.sample_timesteps(batch, generator, t_min, t_max)
        if noise is None:
            noise = randn_like(latents, generator)
        noisy = self.add_noise(latents, noise, timesteps)
        prediction = self.predict_noise(noisy, timesteps, prompt_embeds, inpaint_condition)
        target = self.training_target(latents, noise, timesteps)
        error = F.mse_loss(prediction, target.float(), reduction="none")
        if weight is None:
            return error.flatten(1).mean(dim=1)
        weight = weight.to(error).expand_as(error).flatten(1)
        return (error.flatten(1) * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1e-12)

    # ------------------------------------------------------------------ LoRA
    def with_lora(self, path: str | os.PathLike) -> DiffusionModel:
        """A copy of this model with a LoRA applied; this model is left unchanged.

        `path` is a folder or a ``.safetensors`` file in the layout ``pipe.load_lora_weights`` reads: what
        ``artshield finetune --method lora`` (and diffusers' LoRA scripts) write, with UNet and optionally
        text-encoder adapters. The copy gets its own UNet (and text encoder, when the LoRA adapts it) with the
        adapters loaded, shares everything else, and has its own prompt cache.

        Raises:
            ModelNotFoundError: no such file or folder. IncompatibleModelError: not a LoRA for this model.
            DependencyError: peft missing or too old for the installed diffusers/transformers.
        """
        from ..compat import check_lora_stack

        lora = Path(path).expanduser()
        if not lora.exists():
            raise ModelNotFoundError(f"LoRA {os.fspath(path)!r}: no such file or folder.")
        check_lora_stack(text_encoder=False)  # diffusers' LoRA loader needs peft in any case
        from diffusers import StableDiffusionPipeline

        from .components import quiet_loading

        where = f"LoRA {lora}"
        kwargs = {"weight_name": lora.name} if lora.is_file() else {}
        source = lora.parent if lora.is_file() else lora
        with quiet_loading():
            try:
                state, alphas, metadata = StableDiffusionPipeline.lora_state_dict(
                    os.fspath(source), return_lora_metadata=True, **kwargs
                )
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise IncompatibleModelError(f"{where} could not be read as a LoRA ({first_line(exc)}).") from exc
            adapts_text = any(key.startswith("text_encoder.") for key in state)
            if not state or not all("lora" in key for key in state) or not (
                adapts_text or any(key.startswith("unet.") for key in state)
            ):
                raise IncompatibleModelError(
                    f"{where} is not a LoRA in the layout load_lora_weights reads (unet.*lora*, text_encoder.*lora* keys)."
                )
            if adapts_text:
                check_lora_stack(text_encoder=True)
            unet = copy.deepcopy(self.unet)
            text_encoder = copy.deepcopy(self.text_encoder) if adapts_text else self.text_encoder
            try:
                StableDiffusionPipeline.load_lora_into_unet(state, alphas, unet=unet, metadata=metadata)
                if adapts_text:
                    StableDiffusionPipeline.load_lora_into_text_encoder(
                        state, alphas, text_encoder=text_encoder, metadata=metadata
                    )
            except ModelLoadError:
                raise
            except (ValueError, KeyError, RuntimeError, TypeError) as exc:
                raise IncompatibleModelError(f"{where} does not fit {self.source} ({first_line(exc)}).") from exc
        for module in (unet, text_encoder):
            module.requires_grad_(False).eval()
        return DiffusionModel(
            vae=self.vae, unet=unet, text_encoder=text_encoder, tokenizer=self.tokenizer, scheduler=self.scheduler,
            source=f"{self.source} + LoRA {lora}", device=self.device, dtype=self.dtype, compute_dtype=self.compute_dtype,
        )

    # ------------------------------------------------------------------ pipelines
    def pipeline(self, task: str = "text2img", scheduler=None):
        """A diffusers pipeline sharing this handle's components (no safety checker: these are test beds)."""
        from diffusers import (
            StableDiffusionImg2ImgPipeline,
            StableDiffusionInpaintPipeline,
            StableDiffusionPipeline,
        )

        classes = {
            "text2img": StableDiffusionPipeline,
            "img2img": StableDiffusionImg2ImgPipeline,
            "inpaint": StableDiffusionInpaintPipeline,
        }
        if task not in classes:
            raise InvalidArgumentError(f"`task` must be one of {', '.join(classes)}, but is {task!r}.")
        if task == "inpaint" and not self.is_inpainting:
            raise InvalidArgumentError(f"{self.source} is not an inpainting model; load an inpainting checkpoint.")
        scheduler = scheduler or self.ddim_scheduler()
        pipe = classes[task](
            vae=self.vae,
            unet=self.unet,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


def randn_like(reference: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like `reference`, drawn on the generator's device (so a CPU generator
    gives the same numbers whatever device the model is on) and moved to the reference's device."""
    device = generator.device if generator is not None else reference.device
    noise = torch.randn(reference.shape, generator=generator, device=device, dtype=torch.float32)
    return noise.to(device=reference.device, dtype=reference.dtype)
