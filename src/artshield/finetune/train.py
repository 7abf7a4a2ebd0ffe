"""Fine-tune a Stable Diffusion 1.x/2.x model (or the demo model) with LoRA, DreamBooth or full fine-tuning.

Run it as diffusers' ``train_dreambooth_lora.py`` / ``train_text_to_image_lora.py`` are run, with the same
flags::

    accelerate launch -m artshield.finetune.train --method lora \\
        --pretrained_model_name_or_path demo \\
        --instance_data_dir imgs/ --instance_prompt "a painting in velmora style" \\
        --resolution 128 --train_batch_size 4 --max_train_steps 400 --learning_rate 1e-4 \\
        --checkpointing_steps 100 --seed 0 --output_dir out/

or as plain ``python -m artshield.finetune.train ...`` on one CPU. The model may be ``demo``, a hub id, a
diffusers folder or a single ``.safetensors`` file (anything :func:`artshield.models.load` takes).

Outputs load in stock diffusers: ``--method lora`` writes ``output_dir/pytorch_lora_weights.safetensors``
(``pipe.load_lora_weights(output_dir)``); ``--method dreambooth`` and ``--method full`` write a complete
pipeline folder (``StableDiffusionPipeline.from_pretrained(output_dir)``). ``checkpoint-<step>`` folders are
accelerate states; ``--resume_from_checkpoint latest`` continues an interrupted run and ends with the same
weights as an uninterrupted one (given ``--seed``).

Methods: ``lora`` trains peft LoRA adapters on the UNet's attention projections (and, with
``--train_text_encoder``, on the text encoder's); ``dreambooth`` trains every UNet weight (and the text
encoder's with ``--train_text_encoder``) on DreamBooth data (``--instance_data_dir``, optionally with prior
preservation); ``full`` trains the same weights on either kind of data, usually captioned images
(``--train_data_dir`` or ``--dataset_name``), as diffusers' ``train_text_to_image.py``.

``--use_ema`` (``dreambooth``/``full``) keeps an exponential moving average of the trained weights with
diffusers' ``EMAModel``, as ``train_text_to_image.py --use_ema`` does: stepped after every optimizer step,
used for validation images, saved in each checkpoint (``unet_ema/``, plus ``text_encoder_ema/`` with
``--train_text_encoder``) and written as the final model. It is refused with ``--method lora`` (diffusers'
LoRA scripts have no EMA) and with ``--bayesian`` (the average of sampled-weight layers is not supported).

Every user error (bad folder, unreadable image, missing caption, incompatible flags, missing optional
package, hub unreachable with ``--push_to_hub``) is reported before training starts, as one line on stderr
with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import math
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from ..errors import ArtshieldError, IncompatibleModelError, InvalidArgumentError
from .data import (
    Collator,
    TrainingDataset,
    caption_folder_examples,
    dreambooth_examples,
    hub_dataset_examples,
    select_examples,
)
from .saving import (
    LORA_WEIGHT_NAME,
    EMAWeights,
    checkpoint_step,
    publish_lora,
    publish_pipeline,
    register_checkpoint_hooks,
    register_ema_hooks,
    remove_stale_staging,
    resolve_checkpoint,
    save_checkpoint,
)

logger = logging.getLogger(__name__)

PROG = "python -m artshield.finetune.train"
METHODS = ("lora", "dreambooth", "full")
#: Learning rates diffusers' examples use for each kind of training (when --learning_rate is not given).
DEFAULT_LEARNING_RATES = {"lora": 1e-4, "dreambooth": 5e-6, "full": 1e-5}
DEFAULT_OUTPUT_DIRS = {"lora": "lora-dreambooth-model", "dreambooth": "dreambooth-model", "full": "sd-model-finetuned"}
UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
BAYESIAN_MODULE = "artshield.finetune.bayesian"
MONITOR_MODULE = "artshield.finetune.monitor"


# ============================================================================================ arguments
def build_parser() -> argparse.ArgumentParser:
    """The argument parser: diffusers' training-example flags, plus the Bayesian extension's when available."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fine-tune a Stable Diffusion model (LoRA, DreamBooth or full) with diffusers' example flags.",
    )
    # Model
    parser.add_argument("--method", choices=METHODS, default="lora", help="what to train (default: lora)")
    parser.add_argument(
        "--pretrained_model_name_or_path", required=True,
        help="'demo', a hub id, a diffusers folder or a single .safetensors checkpoint",
    )
    parser.add_argument("--revision", default=None, help="hub revision of the pretrained model")
    parser.add_argument("--variant", default=None, help="weight variant of the pretrained model, e.g. fp16")
    parser.add_argument(
        "--model_config", default=None,
        help="for single-file checkpoints: a diffusers folder or hub id whose configs match the file",
    )
    parser.add_argument(
        "--trust_pickle", action="store_true",
        help="allow pickle weights (.ckpt/.bin), read with torch.load(weights_only=True)",
    )
    parser.add_argument(
        "--cache_dir", default=None, help="where --dataset_name datasets are cached (default: the datasets cache)"
    )
    # DreamBooth data
    parser.add_argument("--instance_data_dir", default=None, help="folder of instance images (DreamBooth data)")
    parser.add_argument("--instance_prompt", default=None, help="prompt of every instance image, e.g. 'a sks dog'")
    parser.add_argument("--class_data_dir", default=None, help="folder of class images for prior preservation")
    parser.add_argument("--class_prompt", default=None, help="prompt of the class images, e.g. 'a dog'")
    parser.add_argument("--with_prior_preservation", action="store_true", help="add the prior-preservation loss")
    parser.add_argument("--prior_loss_weight", type=float, default=1.0, help="weight of the prior-preservation loss")
    parser.add_argument(
        "--num_class_images", type=int, default=100,
        help="class images wanted; missing ones are generated with the model into --class_data_dir",
    )
    parser.add_argument("--sample_batch_size", type=int, default=4, help="batch size when generating class images")
    parser.add_argument(
        "--prior_generation_precision", choices=["no", "fp32", "fp16", "bf16"], default=None,
        help="precision of class-image generation (autocast on accelerators; default: the model's)",
    )
    # Text-to-image data
    parser.add_argument(
        "--dataset_name", default=None,
        help="a hub dataset id, a local imagefolder (metadata.jsonl/csv) or a save_to_disk folder; needs "
        "`datasets` (pip install 'artshield[finetune]')",
    )
    parser.add_argument("--dataset_config_name", default=None, help="config of --dataset_name")
    parser.add_argument(
        "--train_data_dir", default=None,
        help="folder of captioned images: metadata.jsonl (file_name + caption column) or a .txt beside each image",
    )
    parser.add_argument(
        "--image_column", default=None,
        help="image column of --dataset_name (default: 'image' if there is one, else the first column)",
    )
    parser.add_argument(
        "--caption_column", default=None,
        help="caption column of metadata.jsonl (default: 'text') or of --dataset_name (default: 'text' if there "
        "is one, else the first other column)",
    )
    parser.add_argument("--max_train_samples", type=int, default=None, help="use a seeded random subset of this size")
    # Images
    parser.add_argument("--resolution", type=int, default=512, help="side of the square training crops")
    parser.add_argument("--center_crop", action="store_true", help="crop the centre (default: a random window)")
    parser.add_argument("--random_flip", action="store_true", help="flip training images horizontally at random")
    # Training
    parser.add_argument("--train_text_encoder", action="store_true", help="train the text encoder too")
    parser.add_argument("--train_batch_size", type=int, default=4, help="batch size per device")
    parser.add_argument("--num_train_epochs", type=int, default=1)
    parser.add_argument("--max_train_steps", type=int, default=None, help="overrides --num_train_epochs")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--gradient_checkpointing", action="store_true", help="trade compute for memory")
    parser.add_argument(
        "--learning_rate", type=float, default=None,
        help="initial learning rate (default: 1e-4 for lora, 5e-6 for dreambooth, 1e-5 for full)",
    )
    parser.add_argument(
        "--scale_lr", action="store_true",
        help="multiply the learning rate by GPUs x gradient accumulation x batch size",
    )
    parser.add_argument(
        "--lr_scheduler", default="constant",
        help="linear, cosine, cosine_with_restarts, polynomial, constant or constant_with_warmup",
    )
    parser.add_argument("--lr_warmup_steps", type=int, default=500)
    parser.add_argument("--lr_num_cycles", type=int, default=1, help="hard resets of cosine_with_restarts")
    parser.add_argument("--lr_power", type=float, default=1.0, help="power of the polynomial scheduler")
    parser.add_argument("--snr_gamma", type=float, default=None, help="Min-SNR loss weighting gamma (5.0 recommended)")
    parser.add_argument("--noise_offset", type=float, default=0.0, help="scale of the noise offset")
    parser.add_argument(
        "--prediction_type", choices=["epsilon", "v_prediction"], default=None,
        help="train for this prediction type (default: the scheduler's)",
    )
    parser.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes' 8-bit AdamW")
    parser.add_argument("--adam_beta1", type=float, default=0.9)
    parser.add_argument("--adam_beta2", type=float, default=0.999)
    parser.add_argument("--adam_weight_decay", type=float, default=1e-2)
    parser.add_argument("--adam_epsilon", type=float, default=1e-08)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument(
        "--use_ema", action="store_true",
        help="keep an EMA of the trained weights and save it as the final model (dreambooth/full only)",
    )
    parser.add_argument("--ema_decay", type=float, default=0.9999, help="the EMA's largest decay (with warm-up)")
    parser.add_argument("--foreach_ema", action="store_true", help="faster torch._foreach EMA updates")
    parser.add_argument("--offload_ema", action="store_true", help="keep the EMA weights in CPU memory")
    parser.add_argument(
        "--pre_compute_text_embeddings", action="store_true",
        help="encode every caption once before training (frozen text encoder only)",
    )
    # LoRA
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank (lora_alpha = rank)")
    parser.add_argument("--lora_dropout", type=float, default=0.0, help="dropout of the LoRA layers")
    # Checkpoints and outputs
    parser.add_argument("--output_dir", default=None, help="where weights, checkpoints and logs go")
    parser.add_argument("--checkpointing_steps", type=int, default=500, help="save an accelerate state every N steps")
    parser.add_argument("--checkpoints_total_limit", type=int, default=None, help="keep at most this many checkpoints")
    parser.add_argument(
        "--resume_from_checkpoint", default=None,
        help="a checkpoint folder, or 'latest' (starts afresh when output_dir has none yet)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible training")
    # Hardware
    parser.add_argument(
        "--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
        help="default: accelerate's config or `accelerate launch --mixed_precision`",
    )
    parser.add_argument("--allow_tf32", action="store_true", help="allow TF32 matmuls on Ampere GPUs")
    parser.add_argument("--enable_xformers_memory_efficient_attention", action="store_true")
    parser.add_argument("--local_rank", type=int, default=-1, help="set by distributed launchers")
    # Logging and validation
    parser.add_argument(
        "--report_to", default=None,
        help="tensorboard, wandb, comet_ml, all or none (default: tensorboard when installed, otherwise none)",
    )
    parser.add_argument("--logging_dir", default="logs", help="tracker logs, relative to --output_dir")
    parser.add_argument("--validation_prompt", default=None, help="prompt of the validation images")
    parser.add_argument("--num_validation_images", type=int, default=4)
    parser.add_argument("--validation_epochs", type=int, default=None, help="validate every N epochs")
    parser.add_argument("--validation_steps", type=int, default=None, help="validate every N optimisation steps")
    parser.add_argument(
        "--validation_inference_steps", type=int, default=25, help="sampling steps of the validation images"
    )
    # Hub
    parser.add_argument("--push_to_hub", action="store_true", help="upload output_dir to the Hugging Face hub")
    parser.add_argument("--hub_token", default=None, help="hub token (default: the logged-in one)")
    parser.add_argument("--hub_model_id", default=None, help="hub repository (default: the output_dir name)")

    # The Bayesian extension (artshield.finetune.bayesian) adds its own flags when it is installed.
    bayesian, error = _optional_module(BAYESIAN_MODULE)
    if bayesian is not None:
        bayesian.add_bayesian_args(parser)
    else:
        parser.add_argument(
            "--bayesian", action="store_true",
            help=f"Bayesian few-shot fine-tuning (unavailable: {error})".replace("%", "%%"),
        )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line (argparse exits on unknown flags; other problems raise
    :class:`~artshield.errors.InvalidArgumentError`)."""
    args = build_parser().parse_args(argv)
    env_local_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_local_rank != -1 and env_local_rank != args.local_rank:
        args.local_rank = env_local_rank
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Refuse inconsistent flags, filling method-dependent defaults (learning rate, output_dir)."""
    if args.learning_rate is None:
        args.learning_rate = DEFAULT_LEARNING_RATES[args.method]
    if args.output_dir is None:
        args.output_dir = DEFAULT_OUTPUT_DIRS[args.method]
    sources = [f for f in ("instance_data_dir", "train_data_dir", "dataset_name") if getattr(args, f)]
    if len(sources) != 1:
        raise InvalidArgumentError(
            "give exactly one source of training images: --instance_data_dir (DreamBooth), --train_data_dir "
            f"or --dataset_name (captioned), but got {', '.join('--' + s for s in sources) or 'none'}."
        )
    dreambooth_data = args.instance_data_dir is not None
    if dreambooth_data and not args.instance_prompt:
        raise InvalidArgumentError("--instance_data_dir needs --instance_prompt (the prompt of every instance image).")
    if args.method == "dreambooth" and not dreambooth_data:
        raise InvalidArgumentError(
            "--method dreambooth trains on --instance_data_dir/--instance_prompt; for captioned images use "
            "--method full or lora."
        )
    if args.with_prior_preservation:
        if not dreambooth_data:
            raise InvalidArgumentError("--with_prior_preservation needs DreamBooth data (--instance_data_dir).")
        if not args.class_data_dir or not args.class_prompt:
            raise InvalidArgumentError("--with_prior_preservation needs --class_data_dir and --class_prompt.")
    elif args.class_data_dir or args.class_prompt:
        logger.warning("--class_data_dir/--class_prompt are ignored without --with_prior_preservation.")
    positive = ("resolution", "train_batch_size", "num_train_epochs", "gradient_accumulation_steps",
                "checkpointing_steps", "rank", "num_validation_images", "sample_batch_size",
                "validation_inference_steps")  # fmt: skip
    for name in positive:
        if getattr(args, name) < 1:
            raise InvalidArgumentError(f"--{name} must be at least 1, but is {getattr(args, name)}.")
    for name in ("max_train_steps", "checkpoints_total_limit", "validation_epochs", "validation_steps",
                 "max_train_samples", "num_class_images"):  # fmt: skip
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InvalidArgumentError(f"--{name} must be at least 1, but is {value}.")
    if args.lr_warmup_steps < 0 or args.dataloader_num_workers < 0:
        raise InvalidArgumentError("--lr_warmup_steps and --dataloader_num_workers must be >= 0.")
    if not 0.0 <= args.lora_dropout < 1.0:
        raise InvalidArgumentError(f"--lora_dropout must be in [0, 1), but is {args.lora_dropout}.")
    if args.learning_rate <= 0 or args.max_grad_norm <= 0:
        raise InvalidArgumentError("--learning_rate and --max_grad_norm must be positive.")
    if args.snr_gamma is not None and args.snr_gamma <= 0:
        raise InvalidArgumentError(f"--snr_gamma must be positive, but is {args.snr_gamma}.")
    if args.use_ema:
        if args.method == "lora":
            raise InvalidArgumentError(
                "--use_ema averages full-weight training (--method full or dreambooth); it is not supported with "
                "--method lora."
            )
        if getattr(args, "bayesian", False):
            raise InvalidArgumentError("--use_ema cannot be combined with --bayesian.")
        if not 0.0 <= args.ema_decay <= 1.0:
            raise InvalidArgumentError(f"--ema_decay must be in [0, 1], but is {args.ema_decay}.")
    elif args.foreach_ema or args.offload_ema:
        logger.warning("--foreach_ema/--offload_ema only apply with --use_ema; ignored.")
    if args.pre_compute_text_embeddings and args.train_text_encoder:
        raise InvalidArgumentError("--pre_compute_text_embeddings needs a frozen text encoder (no --train_text_encoder).")
    if args.method != "lora" and args.lora_dropout:
        logger.warning("--lora_dropout only applies to --method lora; ignored.")
    from diffusers.optimization import SchedulerType

    names = [s.value for s in SchedulerType]
    if args.lr_scheduler not in names:
        raise InvalidArgumentError(f"--lr_scheduler must be one of {', '.join(names)}, but is {args.lr_scheduler!r}.")


def check_environment(args: argparse.Namespace) -> tuple[list[str] | None, ModuleType | None]:
    """Fail early, with one clear line, on what this machine cannot do; returns (trackers, bayesian module).

    Covers: tracker packages for ``--report_to``, bitsandbytes for ``--use_8bit_adam``, xformers, the hub
    for ``--push_to_hub`` (checked before training, not after), and the Bayesian extension for ``--bayesian``.
    """
    trackers = resolve_trackers(args.report_to)
    if args.report_to and "wandb" in args.report_to and args.hub_token is not None:
        raise InvalidArgumentError(
            "--report_to wandb together with --hub_token would expose the token to wandb; log in with "
            "`hf auth login` instead of passing --hub_token."
        )
    if args.use_8bit_adam and importlib.util.find_spec("bitsandbytes") is None:
        raise InvalidArgumentError(
            "--use_8bit_adam needs the bitsandbytes package (pip install bitsandbytes, CUDA only); drop the flag to "
            "use torch's AdamW."
        )
    if args.enable_xformers_memory_efficient_attention:
        from diffusers.utils.import_utils import is_xformers_available

        if not is_xformers_available():
            raise InvalidArgumentError(
                "--enable_xformers_memory_efficient_attention needs the xformers package (pip install xformers)."
            )
    if args.push_to_hub:
        from ..models.loading import hub_online

        if not hub_online():
            raise InvalidArgumentError(
                "--push_to_hub: the Hugging Face hub cannot be reached (no network, or HF_HUB_OFFLINE is set); "
                f"train without it and upload {args.output_dir} later with `hf upload`."
            )
    if args.resume_from_checkpoint and args.resume_from_checkpoint != "latest":
        resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)  # a typo fails now, not after loading
    bayesian, error = _optional_module(BAYESIAN_MODULE)
    if getattr(args, "bayesian", False) and bayesian is None:
        raise InvalidArgumentError(f"--bayesian needs {BAYESIAN_MODULE}, which cannot be imported ({error}).")
    return trackers, bayesian


def resolve_trackers(report_to: str | None) -> list[str] | None:
    """The trackers to hand to accelerate, refusing named ones whose package is missing.

    accelerate silently drops unavailable trackers; a user who asked for wandb should hear why nothing
    was logged. Without ``--report_to``, tensorboard is used when installed (diffusers' default).
    """
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    if report_to is None:
        if "tensorboard" in available:
            return ["tensorboard"]
        logger.info("tensorboard is not installed: no experiment tracker (pass --report_to to choose one).")
        return None
    names = [n.strip() for n in report_to.split(",") if n.strip()]
    if not names or names == ["none"]:
        return None
    if "all" in names:
        return ["all"]
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise InvalidArgumentError(
                f"--report_to {name!r} is not a tracker accelerate knows ({', '.join(sorted(LOGGER_TYPE_TO_CLASS))}, "
                "all, none)."
            )
        if name not in available:
            raise InvalidArgumentError(
                f"--report_to {name}: the {name} package is not installed (pip install {name}); pass "
                "--report_to none to train without a tracker."
            )
    return names


def _optional_module(name: str) -> tuple[ModuleType | None, str | None]:
    """Import an optional extension module; (module, None) or (None, why not)."""
    try:
        return importlib.import_module(name), None
    except ImportError as exc:
        return None, str(exc) or type(exc).__name__


# ============================================================================================ data
def load_examples(args: argparse.Namespace) -> list:
    """The instance / captioned examples named on the command line (files are listed, not yet decoded)."""
    if args.instance_data_dir:
        examples = dreambooth_examples(args.instance_data_dir, args.instance_prompt)
    elif args.train_data_dir:
        examples = caption_folder_examples(args.train_data_dir, caption_column=args.caption_column or "text")
    else:
        examples = hub_dataset_examples(
            args.dataset_name, args.dataset_config_name, args.image_column, args.caption_column, args.cache_dir
        )
    return select_examples(examples, args.max_train_samples, args.seed)


def generate_class_images(model, args: argparse.Namespace, accelerator) -> None:
    """Fill ``--class_data_dir`` up to ``--num_class_images`` with images the model itself generates from
    ``--class_prompt`` (diffusers' prior preservation), seeded, each written atomically."""
    import hashlib

    from ..imageio import from_pil, iter_images, write_png

    folder = Path(args.class_data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    existing = len(iter_images(folder).images)
    missing = args.num_class_images - existing
    if missing <= 0:
        return
    logger.info("Generating %d class images for %r into %s", missing, args.class_prompt, folder)
    pipeline = model.pipeline("text2img")
    precision = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.prior_generation_precision or "")
    autocast = (
        torch.autocast(accelerator.device.type, dtype=precision) if precision is not None else contextlib.nullcontext()
    )
    seed = 0 if args.seed is None else args.seed
    # Generation draws from its own generator and must not move the global RNG the training run depends on.
    with torch.random.fork_rng(devices=[]), torch.no_grad(), autocast:
        for start in range(0, missing, args.sample_batch_size):
            count = min(args.sample_batch_size, missing - start)
            generator = torch.Generator().manual_seed(seed + existing + start)
            images = pipeline(
                prompt=[args.class_prompt] * count, generator=generator, num_inference_steps=50
            ).images
            for offset, image in enumerate(images):
                digest = hashlib.sha1(image.tobytes()).hexdigest()[:16]
                write_png(folder / f"{existing + start + offset:05d}-{digest}.png", from_pil(image).rgb)


# ============================================================================================ validation
def log_validation(
    model,
    unet,
    text_encoder,
    args: argparse.Namespace,
    accelerator,
    step: int,
    monitor=None,
    phase: str = "validation",
) -> list:
    """Generate ``--num_validation_images`` for ``--validation_prompt`` with the current weights (eval mode:
    Bayesian layers use their means), log them to the trackers and the fidelity monitor, save them as PNGs
    under ``output_dir/validation``; the global RNG is left untouched (so validation never changes training)."""
    import numpy as np
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from ..imageio import from_pil, write_png

    logger.info("Running %s: %d images of %r", phase, args.num_validation_images, args.validation_prompt)
    weight_dtype = model.dtype
    unet = accelerator.unwrap_model(unet)
    text_encoder = accelerator.unwrap_model(text_encoder) if text_encoder is not None else model.text_encoder
    scheduler_args = {}
    variance_type = model.scheduler.config.get("variance_type")
    if variance_type in ("learned", "learned_range"):
        scheduler_args["variance_type"] = "fixed_small"
    pipeline = StableDiffusionPipeline(
        vae=model.vae,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=model.tokenizer,
        scheduler=DPMSolverMultistepScheduler.from_config(model.scheduler.config, **scheduler_args),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    modes = [(m, m.training) for m in (unet, text_encoder)]
    for m, _ in modes:
        m.eval()
    generator = torch.Generator(device="cpu").manual_seed(args.seed) if args.seed is not None else None
    images = []
    try:
        # Explicit autocast: accelerate enables none for fp16 on the CPU, where frozen fp16 parts meet fp32 ones.
        autocast = torch.autocast(accelerator.device.type, dtype=weight_dtype, enabled=weight_dtype != torch.float32)
        with torch.random.fork_rng(devices=[]), torch.no_grad(), autocast:
            for _ in range(args.num_validation_images):
                images.append(
                    pipeline(
                        args.validation_prompt,
                        num_inference_steps=args.validation_inference_steps,
                        height=args.resolution,
                        width=args.resolution,
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
                {phase: [wandb.Image(img, caption=f"{i}: {args.validation_prompt}") for i, img in enumerate(images)]}
            )
    folder = Path(args.output_dir) / "validation"
    for i, image in enumerate(images):
        write_png(folder / f"{phase}-step{step:06d}-{i}.png", from_pil(image).rgb)
    if monitor is not None:
        monitor.log(step, images, accelerator)
    return images


# ============================================================================================ saving
def inference_scheduler(args: argparse.Namespace, model):
    """The sampler to ship in a saved pipeline: the base model's own (class and config), with the trained
    prediction type; DDIM on the training schedule when the base model's sampler cannot be read."""
    import diffusers

    spec = args.pretrained_model_name_or_path
    scheduler = None
    try:
        if spec == "demo":
            from ..models.demo import DEMO_WEIGHTS

            spec = str(DEMO_WEIGHTS)
        index = diffusers.DiffusionPipeline.load_config(spec, revision=args.revision, local_files_only=True)
        cls = getattr(diffusers, index["scheduler"][1])
        scheduler = cls.from_pretrained(spec, subfolder="scheduler", revision=args.revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - single files, odd folders: fall back to DDIM on the training schedule
        scheduler = diffusers.DDIMScheduler.from_config(model.scheduler.config)
    if args.prediction_type is not None:
        scheduler.register_to_config(prediction_type=args.prediction_type)
    return scheduler


def push_to_hub(args: argparse.Namespace, repo_id: str) -> None:
    """Write a model card and upload output_dir (no checkpoints or temporary folders)."""
    from huggingface_hub import upload_folder

    from ..models.loading import first_line

    card = Path(args.output_dir) / "README.md"
    kind = "LoRA weights" if args.method == "lora" else f"{args.method} fine-tuned pipeline"
    prompt = args.instance_prompt or "captions of the training data"
    card.write_text(
        "---\nlibrary_name: diffusers\ntags:\n- text-to-image\n- stable-diffusion\n- artshield\n"
        f"{'- lora' + chr(10) if args.method == 'lora' else ''}"
        f"base_model: {args.pretrained_model_name_or_path}\n---\n\n"
        f"# {repo_id}\n\n{kind} for `{args.pretrained_model_name_or_path}`, trained with artshield "
        f"(`{PROG} --method {args.method}`) on {prompt!r}.\n",
        encoding="utf-8",
    )
    try:
        upload_folder(
            repo_id=repo_id,
            folder_path=args.output_dir,
            commit_message="End of training",
            ignore_patterns=["step_*", "epoch_*", "checkpoint-*/*", ".tmp-*/*", ".tmp-*"],
            token=args.hub_token,
        )
    except Exception as exc:  # noqa: BLE001 - network/auth failures: the local output is complete
        raise InvalidArgumentError(
            f"--push_to_hub: uploading to {repo_id} failed ({first_line(exc)}); the trained model is saved in "
            f"{args.output_dir}."
        ) from exc


# ============================================================================================ training
def train(args: argparse.Namespace) -> dict:
    """Run a fine-tuning job described by parsed arguments; returns a summary (output paths, steps, loss)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params, compute_snr
    from tqdm.auto import tqdm

    from ..models import load
    from ..models.loading import quiet_loading

    started = time.perf_counter()
    # 1. Refuse what cannot work here before touching any data or weights.
    trackers, bayesian = check_environment(args)

    # 2. List and decode the training images: bad folders and files fail now, not mid-run.
    train_dataset = TrainingDataset(
        load_examples(args),
        args.resolution,
        center_crop=args.center_crop,
        random_flip=args.random_flip,
        seed=args.seed,
    )

    # 3. The accelerator, as diffusers' examples build it.
    output_dir = Path(args.output_dir)
    logging_dir = output_dir / args.logging_dir
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=trackers,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(logging_dir)),
        # A data order that depends only on (seed, epoch), so a resumed epoch replays the same batches.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    if args.train_text_encoder and args.gradient_accumulation_steps > 1 and accelerator.num_processes > 1:
        raise InvalidArgumentError(
            "gradient accumulation with --train_text_encoder is not supported in multi-process training "
            "(accelerate accumulates one model only); use --gradient_accumulation_steps 1."
        )
    logger.info(accelerator.state)
    if args.seed is not None:
        set_seed(args.seed)
    repo_id = None
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(output_dir)
        if args.push_to_hub:
            repo_id = create_hub_repo(args)

    # 4. The base model, through artshield's loader (demo, hub id, folder or single file).
    model = load(
        args.pretrained_model_name_or_path,
        device="cpu",
        dtype="fp32",
        config=args.model_config,
        trust_pickle=args.trust_pickle,
        revision=args.revision,
        variant=args.variant,
    )
    if model.is_inpainting:
        raise IncompatibleModelError(
            f"{args.pretrained_model_name_or_path} is an inpainting model; the trainer fine-tunes text-to-image models."
        )
    if args.resolution % model.pixel_multiple:
        raise InvalidArgumentError(
            f"--resolution must be a multiple of {model.pixel_multiple} for this model, but is {args.resolution}."
        )
    if args.prediction_type is not None:
        model.scheduler.register_to_config(prediction_type=args.prediction_type)

    # 5. Prior preservation: class images generated by the model itself, before it is changed.
    if args.with_prior_preservation:
        if accelerator.is_main_process:
            generate_class_images(model, args, accelerator)
        accelerator.wait_for_everyone()
        class_examples = dreambooth_examples(args.class_data_dir, args.class_prompt, flag="--class_data_dir")
        train_dataset.add_class_examples(class_examples[: args.num_class_images])

    # 6. Precision and trainable weights: frozen weights in the mixed-precision dtype, trained ones in fp32
    # (full fine-tuning keeps its UNet fp32 throughout: a round trip through fp16 would lose precision).
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    unet, text_encoder = model.unet, model.text_encoder
    frozen = [model.vae]
    if args.method == "lora":
        frozen += [unet, text_encoder]  # LoRA adapters are added (and upcast) afterwards
    elif not args.train_text_encoder:
        frozen.append(text_encoder)
    with quiet_loading():  # diffusers warns on every `.to(dtype)`, even with nothing to keep in fp32
        model.to(accelerator.device)
        for module in frozen:
            module.to(dtype=weight_dtype)
    model.dtype = weight_dtype  # the VAE's dtype: what model.encode() casts images to
    model.freeze()
    if args.method == "lora":
        from peft import LoraConfig

        def lora_config(targets) -> LoraConfig:  # as diffusers' train_dreambooth_lora.py
            return LoraConfig(r=args.rank, lora_alpha=args.rank, lora_dropout=args.lora_dropout,
                              init_lora_weights="gaussian", target_modules=targets)

        unet.add_adapter(lora_config(UNET_LORA_TARGETS))
        if args.train_text_encoder:
            text_encoder.add_adapter(lora_config(TEXT_ENCODER_LORA_TARGETS))
    else:
        unet.requires_grad_(True)
        if args.train_text_encoder:
            text_encoder.requires_grad_(True)
    bayes_cfg = bayesian.BayesianConfig.from_args(args) if bayesian is not None else None
    if bayes_cfg is not None and bayes_cfg.enabled:
        # Adds learnable sigmas: the optimizer below must be built after this, from every trainable parameter.
        bayesian.make_bayesian(unet, bayes_cfg, method=args.method)
    bayes_enabled = bool(bayes_cfg is not None and bayes_cfg.enabled)
    trained = [unet] + ([text_encoder] if args.train_text_encoder else [])
    if accelerator.mixed_precision == "fp16":
        cast_training_params(trained, dtype=torch.float32)  # only the trainable (LoRA / sigma) parameters
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if args.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    if args.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    for module in trained:
        module.train()

    # 7. Checkpoint hooks: checkpoints in diffusers' layout (LoRA file, or unet/ and text_encoder/).
    register_checkpoint_hooks(
        accelerator,
        unet,
        text_encoder if args.train_text_encoder else None,
        method=args.method,
        bayesian=bayes_enabled,
        deterministic_state=bayesian.deterministic_state if bayes_enabled else None,
        upcast_after_load=accelerator.mixed_precision == "fp16",
    )
    # The moving average of the trained weights (as diffusers' train_text_to_image.py --use_ema), restored
    # from checkpoints by its own hooks, registered after (so run after) the model hooks.
    emas: list[EMAWeights] = []
    if args.use_ema:
        ema_options = {"decay": args.ema_decay, "foreach": args.foreach_ema, "offload": args.offload_ema,
                       "device": accelerator.device}  # fmt: skip
        emas.append(EMAWeights(unet, "unet_ema", **ema_options))
        if args.train_text_encoder:
            emas.append(EMAWeights(text_encoder, "text_encoder_ema", **ema_options))
        register_ema_hooks(accelerator, emas)

    # 8. Optimizer, data loader and learning-rate schedule.
    if args.scale_lr:
        args.learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    params_to_optimize = [p for m in trained for p in m.parameters() if p.requires_grad]
    if args.use_8bit_adam:
        import bitsandbytes as bnb

        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    optimizer = optimizer_class(
        params_to_optimize,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    train_dataloader = torch.utils.data.DataLoader(
        train_dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        collate_fn=Collator(model.tokenizer, args.with_prior_preservation),
        num_workers=args.dataloader_num_workers,
        # Its own generator: creating a loader iterator must not draw from the global RNG (resume exactness).
        generator=torch.Generator().manual_seed(0 if args.seed is None else args.seed),
    )
    overrode_max_train_steps = args.max_train_steps is None
    num_update_steps_per_epoch = math.ceil(
        math.ceil(len(train_dataloader) / accelerator.num_processes) / args.gradient_accumulation_steps
    )
    if overrode_max_train_steps:
        args.max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
        num_cycles=args.lr_num_cycles,
        power=args.lr_power,
    )
    if args.train_text_encoder:
        unet, text_encoder, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            unet, text_encoder, optimizer, train_dataloader, lr_scheduler
        )
    else:
        unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            unet, optimizer, train_dataloader, lr_scheduler
        )
    # The dataloader may have been sharded: recompute the step arithmetic.
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    if overrode_max_train_steps:
        args.max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
    args.num_train_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)

    # 9. Trackers and the fidelity monitor (main process only).
    monitor = None
    if accelerator.is_main_process:
        accelerator.init_trackers(f"artshield-{args.method}", config=tracker_config(args))
        if args.validation_prompt is not None:
            monitor_module, error = _optional_module(MONITOR_MODULE)
            if monitor_module is not None:
                monitor = monitor_module.FidelityMonitor.from_args(args, args.output_dir)
            else:
                logger.info("No fidelity monitor (%s).", error)

    # Frozen text encoder: captions may be encoded once instead of every step.
    text_cache: dict[str, torch.Tensor] = {}
    if args.pre_compute_text_embeddings:
        with torch.no_grad():
            for caption in train_dataset.captions():
                ids = model.tokenizer(
                    [caption], padding="max_length", max_length=model.tokenizer.model_max_length,
                    truncation=True, return_tensors="pt",
                ).input_ids.to(accelerator.device)
                text_cache[caption] = text_encoder(ids)[0]

    # 10. Resume: weights, optimizer, scheduler and RNG states from the checkpoint; the data position from
    # its step (the batches of the current epoch already seen are skipped, not replayed).
    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Running training (%s) *****", args.method)
    logger.info("  Num examples = %d", len(train_dataset))
    logger.info("  Num batches each epoch = %d", len(train_dataloader))
    logger.info("  Num Epochs = %d", args.num_train_epochs)
    logger.info("  Instantaneous batch size per device = %d", args.train_batch_size)
    logger.info("  Total train batch size (w. parallel, distributed & accumulation) = %d", total_batch_size)
    logger.info("  Gradient Accumulation steps = %d", args.gradient_accumulation_steps)
    logger.info("  Total optimization steps = %d", args.max_train_steps)
    global_step, first_epoch, skip_batches = 0, 0, 0
    if args.resume_from_checkpoint:
        path = resolve_checkpoint(args.resume_from_checkpoint, output_dir)
        if path is None:
            logger.info("No checkpoint in %s yet: starting a new training run.", output_dir)
        else:
            logger.info("Resuming from checkpoint %s", path)
            try:
                accelerator.load_state(str(path))
            except ArtshieldError:
                raise
            except Exception as exc:
                from ..models.loading import first_line

                raise InvalidArgumentError(
                    f"--resume_from_checkpoint {path}: cannot restore it ({first_line(exc)}); was it written by a "
                    "run with the same --method, --rank and --train_text_encoder?"
                ) from exc
            global_step = checkpoint_step(path)
            first_epoch = global_step // num_update_steps_per_epoch
            skip_batches = (global_step % num_update_steps_per_epoch) * args.gradient_accumulation_steps

    # 11. The training loop.
    progress_bar = tqdm(
        range(args.max_train_steps), initial=global_step, desc="Steps",
        # TQDM_DISABLE=1 silences it too (an explicit `disable=` would otherwise override tqdm's own env handling).
        disable=not accelerator.is_local_main_process or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
    )
    num_examples = len(train_dataset)
    unwrapped_unet = accelerator.unwrap_model(unet)
    unet_dtype = weight_dtype if args.method == "lora" else torch.float32
    last_validation = -1
    loss_value = float("nan")

    def validate(phase: str = "validation") -> None:
        nonlocal last_validation
        with contextlib.ExitStack() as stack:
            for ema in emas:  # validate the averaged weights; the trained ones are put back exactly after
                stack.enter_context(ema.applied())
            log_validation(model, unet, text_encoder if args.train_text_encoder else None, args, accelerator,
                           global_step, monitor, phase=phase)
        last_validation = global_step

    for epoch in range(first_epoch, args.num_train_epochs):
        if global_step >= args.max_train_steps:
            break
        for module in (unet, text_encoder) if args.train_text_encoder else (unet,):
            module.train()
        train_dataloader.set_epoch(epoch)
        loader = train_dataloader
        if epoch == first_epoch and skip_batches:
            loader = accelerator.skip_first_batches(train_dataloader, skip_batches)
        train_loss = 0.0
        for batch in loader:
            with accelerator.accumulate(*([unet, text_encoder] if args.train_text_encoder else [unet])):
                # Images -> latents (a VAE posterior sample, as LDM training does).
                with torch.no_grad():
                    latents = model.encode(batch["pixel_values"], mode="sample")
                noise = torch.randn_like(latents)
                if args.noise_offset:
                    noise += args.noise_offset * torch.randn(
                        (latents.shape[0], latents.shape[1], 1, 1), device=latents.device
                    )
                bsz = latents.shape[0]
                timesteps = torch.randint(0, model.num_train_timesteps, (bsz,), device=latents.device).long()
                noisy_latents = model.add_noise(latents, noise, timesteps)
                target = model.training_target(latents, noise, timesteps)

                if text_cache:
                    encoder_hidden_states = torch.cat([text_cache[c] for c in batch["captions"]])
                elif args.train_text_encoder:
                    encoder_hidden_states = text_encoder(batch["input_ids"])[0]
                else:
                    with torch.no_grad():
                        encoder_hidden_states = text_encoder(batch["input_ids"])[0]
                # As diffusers: the UNet's inputs in the dtype of its (frozen or trained) weights; autocast, where
                # accelerate enables it, takes care of the rest.
                model_pred = unet(
                    noisy_latents.to(unet_dtype), timesteps, encoder_hidden_states.to(unet_dtype)
                ).sample.float()

                if args.with_prior_preservation:
                    # The batch holds instance examples then class examples: one loss for each half.
                    model_pred, model_pred_prior = model_pred.chunk(2)
                    target, target_prior = target.chunk(2)
                    timesteps = timesteps.chunk(2)[0]
                    prior_loss = F.mse_loss(model_pred_prior, target_prior.float(), reduction="mean")
                loss = diffusion_loss(model_pred, target.float(), timesteps, model, args.snr_gamma, compute_snr)
                if args.with_prior_preservation:
                    loss = loss + args.prior_loss_weight * prior_loss
                if bayes_enabled:
                    loss = loss + bayesian.bayesian_loss(unwrapped_unet, bayes_cfg, num_examples=num_examples)

                # Mean loss over all processes, for logging.
                avg_loss = accelerator.gather(loss.detach().repeat(args.train_batch_size)).mean()
                train_loss += avg_loss.item() / args.gradient_accumulation_steps

                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params_to_optimize, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()

            if accelerator.sync_gradients:
                for ema in emas:
                    ema.step()
                progress_bar.update(1)
                global_step += 1
                loss_value = train_loss
                accelerator.log({"train_loss": train_loss, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
                train_loss = 0.0
                if accelerator.is_main_process:
                    if global_step % args.checkpointing_steps == 0:
                        save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
                    if args.validation_prompt and args.validation_steps and global_step % args.validation_steps == 0:
                        validate()
            progress_bar.set_postfix(loss=loss.detach().item(), lr=lr_scheduler.get_last_lr()[0])
            if global_step >= args.max_train_steps:
                break
        if (
            accelerator.is_main_process
            and args.validation_prompt
            and args.validation_epochs
            and epoch % args.validation_epochs == 0
            and last_validation != global_step
        ):
            validate()
    progress_bar.close()

    # 12. Final weights, written atomically; Bayesian layers collapse to their means.
    accelerator.wait_for_everyone()
    summary = {"output_dir": str(output_dir), "method": args.method, "global_step": global_step, "loss": loss_value}
    if emas:
        # As diffusers: the final model is the moving average (copied into the trained models themselves).
        for ema in emas:
            ema.copy_to_model()
        summary["ema_steps"] = emas[0].optimization_step
        emas = []  # the models now hold the averaged weights: the final validation uses them as they are
    if accelerator.is_main_process:
        unet_final = accelerator.unwrap_model(unet)
        text_final = accelerator.unwrap_model(text_encoder) if args.train_text_encoder else None
        deterministic = bayesian.deterministic_state if bayes_enabled else _no_context
        if args.method == "lora":
            # save_lora writes the adapters in fp32 whatever dtype they were trained in (as diffusers does by
            # casting the UNet to fp32 first, without changing the model that is still used below).
            with deterministic(unet_final):
                summary["weights"] = str(publish_lora(output_dir, unet_final, text_final))
        else:
            summary["weights"] = str(save_final_pipeline(args, model, unet_final, text_final, weight_dtype, deterministic))
        logger.info("Saved the %s weights to %s", args.method, summary["weights"])
        if args.validation_prompt and last_validation != global_step:
            validate("test")
        if repo_id is not None:
            push_to_hub(args, repo_id)
    accelerator.end_training()
    summary["seconds"] = time.perf_counter() - started
    return summary


def diffusion_loss(model_pred, target, timesteps, model, snr_gamma, compute_snr) -> torch.Tensor:
    """MSE between prediction and target, optionally Min-SNR weighted (Hang et al. 2023, as diffusers)."""
    if snr_gamma is None:
        return F.mse_loss(model_pred, target, reduction="mean")
    snr = compute_snr(model.scheduler, timesteps)
    weights = torch.stack([snr, snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
    if model.prediction_type == "epsilon":
        weights = weights / snr
    elif model.prediction_type == "v_prediction":
        weights = weights / (snr + 1)
    loss = F.mse_loss(model_pred, target, reduction="none")
    return (loss.mean(dim=list(range(1, loss.dim()))) * weights).mean()


@contextlib.contextmanager
def _no_context(module):
    yield module


def save_final_pipeline(args, model, unet, text_encoder, weight_dtype, deterministic) -> Path:
    """Save a complete pipeline (trained UNet/text encoder, the base VAE/tokenizer, the base sampler)."""
    from diffusers import StableDiffusionPipeline

    from ..models.loading import quiet_loading

    vae, frozen_text = model.vae, model.text_encoder
    if weight_dtype != torch.float32:
        # The frozen parts were cast down for training; ship the base model's full-precision weights.
        from ..models import load

        base = load(args.pretrained_model_name_or_path, device="cpu", dtype="fp32", config=args.model_config,
                    trust_pickle=args.trust_pickle, revision=args.revision, variant=args.variant)
        vae, frozen_text = base.vae, base.text_encoder
    with deterministic(unet), quiet_loading():
        pipeline = StableDiffusionPipeline(
            vae=vae,
            unet=unet,
            text_encoder=text_encoder if text_encoder is not None else frozen_text,
            tokenizer=model.tokenizer,
            scheduler=inference_scheduler(args, model),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        return publish_pipeline(args.output_dir, pipeline)


def create_hub_repo(args: argparse.Namespace) -> str:
    """Create (or reuse) the hub repository before training, so auth problems surface at once."""
    from huggingface_hub import create_repo

    from ..models.loading import first_line

    name = args.hub_model_id or Path(args.output_dir).resolve().name
    try:
        return create_repo(repo_id=name, exist_ok=True, token=args.hub_token).repo_id
    except Exception as exc:  # noqa: BLE001 - auth, network, naming: one line before training
        raise InvalidArgumentError(f"--push_to_hub: cannot create the hub repository {name!r} ({first_line(exc)}).") from exc


def tracker_config(args: argparse.Namespace) -> dict:
    """The run's flags as tracker hyper-parameters (tensorboard takes only scalars and strings)."""
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool)) and k != "hub_token"}


# ============================================================================================ CLI
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: user errors become one line on stderr and exit status 1."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO
    )
    try:
        args = parse_args(argv)
        summary = train(args)
    except ArtshieldError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"{PROG}: interrupted; no partial model was written. Continue with --resume_from_checkpoint latest.",
            file=sys.stderr,
        )
        return 130
    logger.info("Done in %.1f s: %s", summary["seconds"], summary.get("weights"))
    return 0


__all__ = ["LORA_WEIGHT_NAME", "build_parser", "check_args", "main", "parse_args", "train"]


if __name__ == "__main__":
    sys.exit(main())
