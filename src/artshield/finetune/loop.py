"""The steps of a fine-tuning run, one job each, in the order :func:`artshield.finetune.train.train` calls them.

1. :func:`load_base_model`: the base model through artshield's loader, checked (not inpainting, resolution).
2. :func:`make_accelerator`: accelerate's Accelerator, as diffusers' examples build it.
3. :func:`setup_model`: precision, LoRA adapters (:func:`add_lora`) or trainable full weights, Bayesian layers.
4. :func:`setup_checkpointing`: diffusers-layout ``save_state``/``load_state`` hooks, and the EMA.
5. :func:`prepare_optimization`: optimizer, data loader and learning-rate schedule, through ``accelerator.prepare``.
6. :func:`resume`: weights, optimizer, scheduler and RNG states from a checkpoint, and the data position.
7. :func:`run_loop`: the optimisation loop; one step's loss is :func:`batch_loss` (shared with the
   federated :class:`~artshield.finetune.local.LocalTrainer`).
8. :func:`save_final`: the final weights, written atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ArtshieldError, IncompatibleModelError, InvalidArgumentError
from .config import TrainConfig
from .data import Collator, TrainingDataset
from .saving import (
    EMAWeights,
    checkpoint_step,
    publish_lora,
    publish_pipeline,
    register_checkpoint_hooks,
    register_ema_hooks,
    resolve_checkpoint,
    save_checkpoint,
)

logger = logging.getLogger(__name__)

UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


# ============================================================================================ 1. base model
def load_base_model(config: TrainConfig):
    """The base model on the CPU in fp32 (anything :func:`artshield.models.load` takes), checked for training."""
    from ..models import load

    model = load(
        config.pretrained_model_name_or_path,
        device="cpu",
        dtype="fp32",
        config=config.model_config,
        trust_pickle=config.trust_pickle,
        revision=config.revision,
        variant=config.variant,
    )
    if model.is_inpainting:
        raise IncompatibleModelError(
            f"{config.pretrained_model_name_or_path} is an inpainting model; the trainer fine-tunes text-to-image models."
        )
    if config.resolution % model.pixel_multiple:
        raise InvalidArgumentError(
            f"--resolution must be a multiple of {model.pixel_multiple} for this model, but is {config.resolution}."
        )
    if config.prediction_type is not None:
        model.scheduler.register_to_config(prediction_type=config.prediction_type)
    return model


# ============================================================================================ 2. accelerator
def make_accelerator(config: TrainConfig, trackers: list[str] | None):
    """accelerate's Accelerator, as diffusers' examples build it, with a data order that depends only on
    (seed, epoch) so that a resumed epoch replays the same batches."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=trackers,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / config.logging_dir)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
    )
    if config.train_text_encoder and config.gradient_accumulation_steps > 1 and accelerator.num_processes > 1:
        raise InvalidArgumentError(
            "gradient accumulation with --train_text_encoder is not supported in multi-process training "
            "(accelerate accumulates one model only); use --gradient_accumulation_steps 1."
        )
    logger.info(accelerator.state)
    return accelerator


# ============================================================================================ 3. trainable weights
def lora_config(rank: int, dropout: float, targets: list[str]):
    """peft's LoraConfig as diffusers' ``train_dreambooth_lora.py`` builds it (``lora_alpha = rank``)."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, lora_dropout=dropout, init_lora_weights="gaussian",
                      target_modules=targets)  # fmt: skip


def add_lora(unet: torch.nn.Module, text_encoder: torch.nn.Module | None, *, rank: int, dropout: float = 0.0) -> None:
    """Add peft LoRA adapters to the UNet's attention projections (and the text encoder's, when given)."""
    unet.add_adapter(lora_config(rank, dropout, UNET_LORA_TARGETS))
    if text_encoder is not None:
        text_encoder.add_adapter(lora_config(rank, dropout, TEXT_ENCODER_LORA_TARGETS))


@dataclass
class Trainables:
    """What a run trains: the (unwrapped, later prepared) UNet and text encoder, the precision, Bayes."""

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    weight_dtype: torch.dtype
    train_text_encoder: bool
    bayesian: ModuleType | None = None
    bayes_cfg: Any = None

    @property
    def bayes_enabled(self) -> bool:
        return bool(self.bayes_cfg is not None and self.bayes_cfg.enabled)

    @property
    def trained(self) -> list[torch.nn.Module]:
        return [self.unet] + ([self.text_encoder] if self.train_text_encoder else [])

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self.trained for p in m.parameters() if p.requires_grad]


def setup_model(config: TrainConfig, model, accelerator, bayesian: ModuleType | None) -> Trainables:
    """Frozen weights in the mixed-precision dtype, trained ones in fp32 (full fine-tuning keeps its UNet fp32
    throughout: a round trip through fp16 would lose precision); LoRA adapters or trainable weights; Bayesian
    layers (after the adapters, before the optimizer)."""
    from diffusers.training_utils import cast_training_params

    from ..models.components import quiet_loading

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    unet, text_encoder = model.unet, model.text_encoder
    frozen = [model.vae]
    if config.method == "lora":
        frozen += [unet, text_encoder]  # LoRA adapters are added (and upcast) afterwards
    elif not config.train_text_encoder:
        frozen.append(text_encoder)
    with quiet_loading():  # diffusers warns on every `.to(dtype)`, even with nothing to keep in fp32
        model.to(accelerator.device)
        for module in frozen:
            module.to(dtype=weight_dtype)
    model.dtype = weight_dtype  # the VAE's dtype: what model.encode() casts images to
    model.freeze()
    if config.method == "lora":
        add_lora(unet, text_encoder if config.train_text_encoder else None, rank=config.rank,
                 dropout=config.lora_dropout)  # fmt: skip
    else:
        unet.requires_grad_(True)
        if config.train_text_encoder:
            text_encoder.requires_grad_(True)
    parts = Trainables(unet, text_encoder, weight_dtype, config.train_text_encoder, bayesian)
    if bayesian is not None:
        parts.bayes_cfg = bayesian.BayesianConfig.from_args(config)
        if parts.bayes_enabled:
            # Adds learnable sigmas: the optimizer must be built after this, from every trainable parameter.
            bayesian.make_bayesian(unet, parts.bayes_cfg, method=config.method)
    if accelerator.mixed_precision == "fp16":
        cast_training_params(parts.trained, dtype=torch.float32)  # only the trainable (LoRA / sigma) parameters
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if config.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    if config.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()
    if config.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    for module in parts.trained:
        module.train()
    return parts


# ============================================================================================ 4. checkpoints
def setup_checkpointing(config: TrainConfig, accelerator, parts: Trainables) -> list[EMAWeights]:
    """Checkpoints in diffusers' layout (the LoRA file, or ``unet/`` and ``text_encoder/``); with ``use_ema``
    the moving average of the trained weights, saved and restored by its own hooks (registered after the model
    hooks, so run after them)."""
    register_checkpoint_hooks(
        accelerator,
        parts.unet,
        parts.text_encoder if parts.train_text_encoder else None,
        method=config.method,
        bayesian=parts.bayes_enabled,
        deterministic_state=parts.bayesian.deterministic_state if parts.bayes_enabled else None,
        upcast_after_load=accelerator.mixed_precision == "fp16",
    )
    emas: list[EMAWeights] = []
    if config.use_ema:
        options = {"decay": config.ema_decay, "foreach": config.foreach_ema, "offload": config.offload_ema,
                   "device": accelerator.device}  # fmt: skip
        emas.append(EMAWeights(parts.unet, "unet_ema", **options))
        if parts.train_text_encoder:
            emas.append(EMAWeights(parts.text_encoder, "text_encoder_ema", **options))
        register_ema_hooks(accelerator, emas)
    return emas


# ============================================================================================ 5. optimisation
def build_optimizer(config: TrainConfig, params: list[torch.nn.Parameter], learning_rate: float):
    """AdamW (bitsandbytes' 8-bit AdamW with ``use_8bit_adam``) with diffusers' example settings."""
    if config.use_8bit_adam:
        import bitsandbytes as bnb

        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    return optimizer_class(
        params,
        lr=learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )


def build_dataloader(config: TrainConfig, dataset: TrainingDataset, tokenizer) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=config.train_batch_size,
        shuffle=True,
        collate_fn=Collator(tokenizer, config.with_prior_preservation),
        num_workers=config.dataloader_num_workers,
        # Its own generator: creating a loader iterator must not draw from the global RNG (resume exactness).
        generator=torch.Generator().manual_seed(0 if config.seed is None else config.seed),
    )


@dataclass
class Schedule:
    """The run's step arithmetic (diffusers': max_train_steps from the epochs when not given, and back)."""

    learning_rate: float
    max_train_steps: int
    num_train_epochs: int
    steps_per_epoch: int


@dataclass
class Run:
    """Everything the loop needs, and its position."""

    config: TrainConfig
    accelerator: Any
    model: Any
    parts: Trainables
    dataset: TrainingDataset
    optimizer: Any
    lr_scheduler: Any
    dataloader: Any
    schedule: Schedule
    emas: list[EMAWeights] = field(default_factory=list)
    text_cache: dict[str, torch.Tensor] = field(default_factory=dict)
    global_step: int = 0
    first_epoch: int = 0
    skip_batches: int = 0
    loss: float = float("nan")
    last_validation: int = -1


def prepare_optimization(config: TrainConfig, accelerator, model, parts: Trainables, dataset: TrainingDataset,
                         emas: list[EMAWeights]) -> Run:  # fmt: skip
    """Optimizer, data loader and learning-rate schedule, passed through ``accelerator.prepare``."""
    from diffusers.optimization import get_scheduler

    learning_rate = config.learning_rate
    if config.scale_lr:
        learning_rate *= config.gradient_accumulation_steps * config.train_batch_size * accelerator.num_processes
    optimizer = build_optimizer(config, parts.parameters(), learning_rate)
    dataloader = build_dataloader(config, dataset, model.tokenizer)
    steps_per_epoch = math.ceil(math.ceil(len(dataloader) / accelerator.num_processes) / config.gradient_accumulation_steps)
    max_train_steps = config.max_train_steps or config.num_train_epochs * steps_per_epoch
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
        num_cycles=config.lr_num_cycles,
        power=config.lr_power,
    )
    if parts.train_text_encoder:
        parts.unet, parts.text_encoder, optimizer, dataloader, lr_scheduler = accelerator.prepare(
            parts.unet, parts.text_encoder, optimizer, dataloader, lr_scheduler
        )
    else:
        parts.unet, optimizer, dataloader, lr_scheduler = accelerator.prepare(
            parts.unet, optimizer, dataloader, lr_scheduler
        )
    # The dataloader may have been sharded: recompute the step arithmetic.
    steps_per_epoch = math.ceil(len(dataloader) / config.gradient_accumulation_steps)
    if config.max_train_steps is None:
        max_train_steps = config.num_train_epochs * steps_per_epoch
    schedule = Schedule(learning_rate, max_train_steps, math.ceil(max_train_steps / steps_per_epoch), steps_per_epoch)
    return Run(config, accelerator, model, parts, dataset, optimizer, lr_scheduler, dataloader, schedule, emas)


def precompute_text_embeddings(run: Run) -> None:
    """With a frozen text encoder, encode every caption once instead of every step."""
    model, device = run.model, run.accelerator.device
    with torch.no_grad():
        for caption in run.dataset.captions():
            ids = model.tokenizer(
                [caption], padding="max_length", max_length=model.tokenizer.model_max_length,
                truncation=True, return_tensors="pt",
            ).input_ids.to(device)
            run.text_cache[caption] = run.parts.text_encoder(ids)[0]


# ============================================================================================ 6. resume
def resume(run: Run) -> None:
    """Weights, optimizer, scheduler and RNG states from ``resume_from_checkpoint``; the data position from its
    step (the batches of the current epoch already seen are skipped, not replayed)."""
    config = run.config
    if not config.resume_from_checkpoint:
        return
    output_dir = Path(config.output_dir)
    path = resolve_checkpoint(config.resume_from_checkpoint, output_dir)
    if path is None:
        logger.info("No checkpoint in %s yet: starting a new training run.", output_dir)
        return
    logger.info("Resuming from checkpoint %s", path)
    try:
        run.accelerator.load_state(str(path))
    except ArtshieldError:
        raise
    except Exception as exc:
        from ..models.hub import first_line

        raise InvalidArgumentError(
            f"--resume_from_checkpoint {path}: cannot restore it ({first_line(exc)}); was it written by a "
            "run with the same --method, --rank and --train_text_encoder?"
        ) from exc
    run.global_step = checkpoint_step(path)
    run.first_epoch = run.global_step // run.schedule.steps_per_epoch
    run.skip_batches = (run.global_step % run.schedule.steps_per_epoch) * config.gradient_accumulation_steps


# ============================================================================================ 7. the loop
def diffusion_loss(model_pred, target, timesteps, model, snr_gamma, compute_snr=None) -> torch.Tensor:
    """MSE between prediction and target, optionally Min-SNR weighted (Hang et al. 2023, as diffusers)."""
    if snr_gamma is None:
        return F.mse_loss(model_pred, target, reduction="mean")
    if compute_snr is None:
        from diffusers.training_utils import compute_snr
    snr = compute_snr(model.scheduler, timesteps)
    weights = torch.stack([snr, snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
    if model.prediction_type == "epsilon":
        weights = weights / snr
    elif model.prediction_type == "v_prediction":
        weights = weights / (snr + 1)
    loss = F.mse_loss(model_pred, target, reduction="none")
    return (loss.mean(dim=list(range(1, loss.dim()))) * weights).mean()


def batch_loss(
    model,
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module,
    batch: dict,
    *,
    train_text_encoder: bool,
    unet_dtype: torch.dtype,
    noise_offset: float = 0.0,
    snr_gamma: float | None = None,
    with_prior_preservation: bool = False,
    prior_loss_weight: float = 1.0,
    text_cache: dict[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The denoising loss of one batch (diffusers' training step): images to VAE-posterior latents, noise at
    random timesteps, the UNet's prediction against the scheduler's target, plus the prior-preservation loss.

    Random numbers come from the global RNG, or from `generator` (a CPU generator) when given.
    """
    # Images -> latents (a VAE posterior sample, as LDM training does).
    with torch.no_grad():
        latents = model.encode(batch["pixel_values"], mode="sample", generator=generator)
    if generator is None:
        noise = torch.randn_like(latents)
        if noise_offset:
            noise += noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), device=latents.device)
        timesteps = torch.randint(0, model.num_train_timesteps, (latents.shape[0],), device=latents.device).long()
    else:
        noise = torch.randn(latents.shape, generator=generator).to(latents.device)
        if noise_offset:
            noise += noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator).to(
                latents.device)
        timesteps = torch.randint(0, model.num_train_timesteps, (latents.shape[0],), generator=generator).to(
            latents.device)
    noisy_latents = model.add_noise(latents, noise, timesteps)
    target = model.training_target(latents, noise, timesteps)

    captions = batch.get("captions")
    if text_cache:
        encoder_hidden_states = torch.cat([text_cache[c] for c in captions])
    else:
        input_ids = batch["input_ids"].to(latents.device)
        if train_text_encoder:
            encoder_hidden_states = text_encoder(input_ids)[0]
        else:
            with torch.no_grad():
                encoder_hidden_states = text_encoder(input_ids)[0]
    # As diffusers: the UNet's inputs in the dtype of its (frozen or trained) weights; autocast, where
    # accelerate enables it, takes care of the rest.
    model_pred = unet(noisy_latents.to(unet_dtype), timesteps, encoder_hidden_states.to(unet_dtype)).sample.float()

    if with_prior_preservation:
        # The batch holds instance examples then class examples: one loss for each half.
        model_pred, model_pred_prior = model_pred.chunk(2)
        target, target_prior = target.chunk(2)
        timesteps = timesteps.chunk(2)[0]
        prior_loss = F.mse_loss(model_pred_prior, target_prior.float(), reduction="mean")
    loss = diffusion_loss(model_pred, target.float(), timesteps, model, snr_gamma)
    if with_prior_preservation:
        loss = loss + prior_loss_weight * prior_loss
    return loss


def run_loop(run: Run, validate: Callable[[str], None]) -> None:
    """Optimise until ``max_train_steps``: accumulate, clip, step, EMA, log, checkpoint and validate.

    `validate(phase)` is called (main process only) every ``validation_steps`` steps and every
    ``validation_epochs`` epochs.
    """
    from tqdm.auto import tqdm

    config, accelerator, parts, schedule = run.config, run.accelerator, run.parts, run.schedule
    output_dir = Path(config.output_dir)
    progress_bar = tqdm(
        range(schedule.max_train_steps), initial=run.global_step, desc="Steps",
        # TQDM_DISABLE=1 silences it too (an explicit `disable=` would otherwise override tqdm's own env handling).
        disable=not accelerator.is_local_main_process or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
    )
    num_examples = len(run.dataset)
    unwrapped_unet = accelerator.unwrap_model(parts.unet)
    unet_dtype = parts.weight_dtype if config.method == "lora" else torch.float32
    params = parts.parameters()
    modules = [parts.unet, parts.text_encoder] if parts.train_text_encoder else [parts.unet]
    for epoch in range(run.first_epoch, schedule.num_train_epochs):
        if run.global_step >= schedule.max_train_steps:
            break
        for module in modules:
            module.train()
        run.dataloader.set_epoch(epoch)
        loader = run.dataloader
        if epoch == run.first_epoch and run.skip_batches:
            loader = accelerator.skip_first_batches(run.dataloader, run.skip_batches)
        train_loss = 0.0
        for batch in loader:
            with accelerator.accumulate(*modules):
                loss = batch_loss(
                    run.model, parts.unet, parts.text_encoder, batch,
                    train_text_encoder=parts.train_text_encoder, unet_dtype=unet_dtype,
                    noise_offset=config.noise_offset, snr_gamma=config.snr_gamma,
                    with_prior_preservation=config.with_prior_preservation,
                    prior_loss_weight=config.prior_loss_weight, text_cache=run.text_cache,
                )  # fmt: skip
                if parts.bayes_enabled:
                    loss = loss + parts.bayesian.bayesian_loss(unwrapped_unet, parts.bayes_cfg, num_examples=num_examples)
                # Mean loss over all processes, for logging.
                avg_loss = accelerator.gather(loss.detach().repeat(config.train_batch_size)).mean()
                train_loss += avg_loss.item() / config.gradient_accumulation_steps
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                run.optimizer.step()
                run.lr_scheduler.step()
                run.optimizer.zero_grad()

            if accelerator.sync_gradients:
                for ema in run.emas:
                    ema.step()
                progress_bar.update(1)
                run.global_step += 1
                run.loss = train_loss
                accelerator.log({"train_loss": train_loss, "lr": run.lr_scheduler.get_last_lr()[0]}, step=run.global_step)
                train_loss = 0.0
                if accelerator.is_main_process:
                    if run.global_step % config.checkpointing_steps == 0:
                        save_checkpoint(accelerator, output_dir, run.global_step, config.checkpoints_total_limit)
                    if config.validation_prompt and config.validation_steps and run.global_step % config.validation_steps == 0:
                        validate("validation")
            progress_bar.set_postfix(loss=loss.detach().item(), lr=run.lr_scheduler.get_last_lr()[0])
            if run.global_step >= schedule.max_train_steps:
                break
        if (
            accelerator.is_main_process
            and config.validation_prompt
            and config.validation_epochs
            and epoch % config.validation_epochs == 0
            and run.last_validation != run.global_step
        ):
            validate("validation")
    progress_bar.close()


# ============================================================================================ 8. final weights
@contextlib.contextmanager
def no_context(module):
    yield module


def save_final(run: Run) -> str:
    """The final weights (main process), written atomically: the LoRA file, or a complete pipeline. Bayesian
    layers collapse to their means; with EMA the average has already been copied into the models."""
    config, accelerator, parts = run.config, run.accelerator, run.parts
    unet = accelerator.unwrap_model(parts.unet)
    text_encoder = accelerator.unwrap_model(parts.text_encoder) if parts.train_text_encoder else None
    deterministic = parts.bayesian.deterministic_state if parts.bayes_enabled else no_context
    if config.method == "lora":
        # save_lora writes the adapters in fp32 whatever dtype they were trained in (as diffusers does by
        # casting the UNet to fp32 first, without changing the model that is still used afterwards).
        with deterministic(unet):
            return str(publish_lora(config.output_dir, unet, text_encoder))
    return str(save_final_pipeline(config, run.model, unet, text_encoder, parts.weight_dtype, deterministic))


def save_final_pipeline(config: TrainConfig, model, unet, text_encoder, weight_dtype, deterministic) -> Path:
    """Save a complete pipeline (trained UNet/text encoder, the base VAE/tokenizer, the base sampler)."""
    from ..models.components import quiet_loading

    vae, frozen_text = model.vae, model.text_encoder
    if weight_dtype != torch.float32:
        # The frozen parts were cast down for training; ship the base model's full-precision weights.
        base = load_base_model(config)
        vae, frozen_text = base.vae, base.text_encoder
    trained = dataclasses.replace(model, vae=vae, unet=unet, text_encoder=text_encoder if text_encoder is not None else frozen_text)
    with deterministic(unet), quiet_loading():
        return publish_pipeline(config.output_dir, trained.pipeline("text2img", scheduler=inference_scheduler(config, model)))


def inference_scheduler(config: TrainConfig, model):
    """The sampler to ship in a saved pipeline: the base model's own (class and config), with the trained
    prediction type; DDIM on the training schedule when the base model's sampler cannot be read."""
    import diffusers

    spec = config.pretrained_model_name_or_path
    try:
        if spec == "demo":
            from ..models.demo import DEMO_WEIGHTS

            spec = str(DEMO_WEIGHTS)
        index = diffusers.DiffusionPipeline.load_config(spec, revision=config.revision, local_files_only=True)
        cls = getattr(diffusers, index["scheduler"][1])
        scheduler = cls.from_pretrained(spec, subfolder="scheduler", revision=config.revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - single files, odd folders: fall back to DDIM on the training schedule
        scheduler = diffusers.DDIMScheduler.from_config(model.scheduler.config)
    if config.prediction_type is not None:
        scheduler.register_to_config(prediction_type=config.prediction_type)
    return scheduler


__all__ = [
    "Run",
    "Schedule",
    "TEXT_ENCODER_LORA_TARGETS",
    "Trainables",
    "UNET_LORA_TARGETS",
    "add_lora",
    "batch_loss",
    "build_dataloader",
    "build_optimizer",
    "diffusion_loss",
    "inference_scheduler",
    "load_base_model",
    "lora_config",
    "make_accelerator",
    "precompute_text_embeddings",
    "prepare_optimization",
    "resume",
    "run_loop",
    "save_final",
    "save_final_pipeline",
    "setup_checkpointing",
    "setup_model",
]
