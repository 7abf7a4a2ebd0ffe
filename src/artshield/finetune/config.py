"""The trainer's settings: one :class:`TrainConfig` holding every flag, checked in one place.

Each field is named after the flag of diffusers' training examples (``--learning_rate`` is
``TrainConfig.learning_rate``) and carries, in its metadata, the flag's help text and the check of its value.
The command line is built from these fields (:func:`add_arguments`), so a flag's value is checked at parse time
(one line, exit status 2, before any model loads) by the very function that :meth:`TrainConfig.validate`
runs on a config built in Python::

    from artshield.finetune import TrainConfig
    from artshield.finetune.train import train

    config = TrainConfig(pretrained_model_name_or_path="demo", instance_data_dir="imgs/",
                         instance_prompt="a painting in sks style", resolution=64, max_train_steps=100)
    result = train(config)

A value that cannot work raises :class:`~artshield.errors.InvalidArgumentError` naming the flag when the config
is made; what depends on the file system (the data folders, ``output_dir``) is checked by
:meth:`TrainConfig.check_paths`, which :func:`~artshield.finetune.train.train` runs before any work.

This module imports neither torch nor diffusers.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..cli_support import bounded, non_negative_int, positive_float, positive_int
from ..errors import InvalidArgumentError, OutputWriteError
from ..fileio import check_output_folder, refuse_overlaps

logger = logging.getLogger(__name__)

METHODS = ("lora", "dreambooth", "full")
#: Learning rates diffusers' examples use for each kind of training (when learning_rate is not given).
DEFAULT_LEARNING_RATES = {"lora": 1e-4, "dreambooth": 5e-6, "full": 1e-5}
DEFAULT_OUTPUT_DIRS = {"lora": "lora-dreambooth-model", "dreambooth": "dreambooth-model", "full": "sd-model-finetuned"}
#: diffusers' ``SchedulerType`` values (``diffusers.optimization.get_scheduler``).
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "piecewise_constant")  # fmt: skip
BAYESIAN_MODULE = "artshield.finetune.bayesian"

# The Bayesian extension's settings (artshield.finetune.bayesian explains each default).
BAYES_KL_DIRECTIONS = ("posterior_prior", "prior_posterior")
BAYES_KL_NORMALIZATIONS = ("examples", "weights", "none")
BAYES_LAYER_CHOICES = ("auto", "attn_ff", "attn", "ff", "all_linear", "lora_up")
DEFAULT_INIT_SIGMA = 0.01  # every released Bayes script: sigma=0.01
DEFAULT_PRIOR_SIGMA = 0.01
DEFAULT_KL_WEIGHT = 0.0  # every released Bayes script: --lambda1=0.0
DEFAULT_MIN_SIGMA = 1e-7  # the reference's clamp
DEFAULT_MAX_SIGMA = 0.1  # 10x the init/prior sigma

BLOCK_ROOTS = {"down": "down_blocks", "mid": "mid_block", "up": "up_blocks"}

#: Help sections of the command line, in order (key -> (title, description)).
GROUPS = {
    "model": ("model", None),
    "dreambooth": ("DreamBooth data", None),
    "captioned": ("text-to-image data", None),
    "images": ("images", None),
    "training": ("training", None),
    "lora": ("LoRA", None),
    "outputs": ("checkpoints and outputs", None),
    "hardware": ("hardware", None),
    "validation": ("logging and validation", None),
    "hub": ("hub", None),
    "bayesian": ("Bayesian few-shot fine-tuning (Wu et al., arXiv 2405.19931)",
                 "Mean-field Gaussian weights with learnable, bounded sigma; inference uses the means."),
}


# ------------------------------------------------------------------------------------------- value checks
def multiple_of_8(text: str) -> int:
    """``--resolution``: a whole number >= 8 and a multiple of 8 (the model may ask for a larger multiple)."""
    value = bounded(int, 8)(text)
    if value % 8:
        raise argparse.ArgumentTypeError(f"must be a multiple of 8, not {text}")
    return value


def below_one(text: str) -> float:
    """A finite number in [0, 1) (dropout, Adam's betas)."""
    value = bounded(float, 0.0, 1.0)(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"must be < 1, not {text}")
    return value


def unit_interval(text: str) -> float:
    """A finite number in [0, 1] (the EMA decay)."""
    value = bounded(float)(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], not {text}")
    return value


whole_number = bounded(int)
non_negative_float = bounded(float, 0.0)


def _flag(default: Any = None, help: str | None = None, *, type=None, choices=None, group: str = "training",
          store_true: bool = False) -> Any:  # noqa: A002 - argparse's names
    """A TrainConfig field: its default, and how the command line spells and checks it."""
    metadata = {"help": help, "type": type, "choices": choices, "group": group, "store_true": store_true}
    return field(default=default, metadata=metadata)


# ------------------------------------------------------------------------------------------- Bayesian settings
def parse_blocks(spec: str | tuple[str, ...]) -> tuple[str, ...]:
    """``"down,up.1"`` -> ``("down_blocks", "up_blocks.1")``: module-name prefixes of the selected blocks."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    prefixes = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        match = re.fullmatch(r"(down|mid|up)(?:\.(\d+))?", item)
        if match is None or (match.group(1) == "mid" and match.group(2) is not None):
            raise InvalidArgumentError(
                f"`--bayes_blocks` must list down, mid, up or sub-blocks such as up.1, but contains {item!r}."
            )
        root = BLOCK_ROOTS[match.group(1)]
        prefixes.append(root if match.group(2) is None else f"{root}.{match.group(2)}")
    if not prefixes:
        raise InvalidArgumentError(f"`--bayes_blocks` must name at least one block, but is {spec!r}.")
    return tuple(prefixes)


@dataclass
class BayesianConfig:
    """Settings of Bayesian fine-tuning; see the ``bayes_*`` fields of :class:`TrainConfig` for each one's meaning."""

    enabled: bool = False
    init_sigma: float = DEFAULT_INIT_SIGMA
    prior_sigma: float = DEFAULT_PRIOR_SIGMA
    kl_weight: float = DEFAULT_KL_WEIGHT
    kl_direction: str = "posterior_prior"
    kl_normalization: str = "examples"
    min_sigma: float = DEFAULT_MIN_SIGMA
    max_sigma: float = DEFAULT_MAX_SIGMA
    layers: str = "auto"
    include_cross_attention: bool = False
    blocks: tuple[str, ...] = field(default=("down", "mid", "up"))

    def __post_init__(self) -> None:
        if isinstance(self.blocks, str):
            self.blocks = tuple(b.strip() for b in self.blocks.split(",") if b.strip())
        else:
            self.blocks = tuple(self.blocks)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`InvalidArgumentError` naming the flag of the first inconsistent value."""
        for name, value in (("bayes_min_sigma", self.min_sigma), ("bayes_prior_sigma", self.prior_sigma)):
            if not (math.isfinite(value) and value > 0):
                raise InvalidArgumentError(f"`--{name}` must be a positive number, but is {value!r}.")
        if not (math.isfinite(self.max_sigma) and self.max_sigma >= self.min_sigma):
            raise InvalidArgumentError(
                f"`--bayes_max_sigma` must be at least --bayes_min_sigma ({self.min_sigma}), but is {self.max_sigma!r}."
            )
        if not (math.isfinite(self.init_sigma) and self.min_sigma <= self.init_sigma <= self.max_sigma):
            raise InvalidArgumentError(
                f"`--bayes_init_sigma` must lie in [--bayes_min_sigma, --bayes_max_sigma] = "
                f"[{self.min_sigma}, {self.max_sigma}], but is {self.init_sigma!r}."
            )
        if not (math.isfinite(self.kl_weight) and self.kl_weight >= 0):
            raise InvalidArgumentError(f"`--bayes_kl_weight` must be a non-negative number, but is {self.kl_weight!r}.")
        if self.kl_direction not in BAYES_KL_DIRECTIONS:
            raise InvalidArgumentError(
                f"`--bayes_kl_direction` must be one of {', '.join(BAYES_KL_DIRECTIONS)}, but is {self.kl_direction!r}."
            )
        if self.kl_normalization not in BAYES_KL_NORMALIZATIONS:
            raise InvalidArgumentError(
                f"`--bayes_kl_normalization` must be one of {', '.join(BAYES_KL_NORMALIZATIONS)}, "
                f"but is {self.kl_normalization!r}."
            )
        if self.layers not in BAYES_LAYER_CHOICES:
            raise InvalidArgumentError(
                f"`--bayes_layers` must be one of {', '.join(BAYES_LAYER_CHOICES)}, but is {self.layers!r}."
            )
        parse_blocks(self.blocks)

    @classmethod
    def from_args(cls, args: Any) -> BayesianConfig:
        """Build the config from a namespace parsed with ``add_bayesian_args`` or a :class:`TrainConfig` (missing
        flags: defaults)."""

        def get(name: str, default):
            return getattr(args, name, default)

        blocks = get("bayes_blocks", "down,mid,up")
        return cls(
            enabled=bool(get("bayesian", False)),
            init_sigma=float(get("bayes_init_sigma", DEFAULT_INIT_SIGMA)),
            prior_sigma=float(get("bayes_prior_sigma", DEFAULT_PRIOR_SIGMA)),
            kl_weight=float(get("bayes_kl_weight", DEFAULT_KL_WEIGHT)),
            kl_direction=str(get("bayes_kl_direction", "posterior_prior")),
            kl_normalization=str(get("bayes_kl_normalization", "examples")),
            min_sigma=float(get("bayes_min_sigma", DEFAULT_MIN_SIGMA)),
            max_sigma=float(get("bayes_max_sigma", DEFAULT_MAX_SIGMA)),
            layers=str(get("bayes_layers", "auto")),
            include_cross_attention=bool(get("bayes_include_cross_attention", False)),
            blocks=tuple(b.strip() for b in blocks.split(",") if b.strip()) if isinstance(blocks, str) else blocks,
        )

    def to_dict(self) -> dict:
        """JSON-able form (for the run's config file and trackers)."""
        out = dataclasses.asdict(self)
        out["blocks"] = ",".join(self.blocks)
        return out

    def resolved_layers(self, method: str) -> str:
        """The layer selection ``auto`` stands for with `method`."""
        if self.layers != "auto":
            return self.layers
        return "lora_up" if method == "lora" else "attn_ff"


# ------------------------------------------------------------------------------------------- the config
@dataclass
class TrainConfig:
    """Every setting of a fine-tuning run, named as diffusers' training-example flags.

    Made from Python (``TrainConfig(pretrained_model_name_or_path="demo", ...)``) or from a command line
    (:func:`artshield.finetune.train.parse_args`). ``learning_rate`` and ``output_dir`` left at None take the
    method's default (diffusers' examples: 1e-4 for LoRA, 5e-6 for DreamBooth, 1e-5 for full fine-tuning).
    Every value is checked when the config is made (:meth:`validate`); numbers given as strings are converted.
    """

    # Model
    pretrained_model_name_or_path: str = field(metadata={
        "help": "'demo', a hub id, a diffusers folder or a single .safetensors checkpoint", "group": "model",
        "required": True})  # fmt: skip
    method: str = _flag("lora", "what to train (default: lora)", choices=METHODS, group="model")
    revision: str | None = _flag(None, "hub revision of the pretrained model", group="model")
    variant: str | None = _flag(None, "weight variant of the pretrained model, e.g. fp16", group="model")
    model_config: str | None = _flag(
        None, "for single-file checkpoints: a diffusers folder or hub id whose configs match the file", group="model")
    trust_pickle: bool = _flag(
        False, "allow pickle weights (.ckpt/.bin), read with torch.load(weights_only=True)", group="model",
        store_true=True)
    cache_dir: str | None = _flag(
        None, "where --dataset_name datasets are cached (default: the datasets cache)", group="model")
    # DreamBooth data
    instance_data_dir: str | None = _flag(None, "folder of instance images (DreamBooth data)", group="dreambooth")
    instance_prompt: str | None = _flag(
        None, "prompt of every instance image, e.g. 'a sks dog'", group="dreambooth")
    class_data_dir: str | None = _flag(None, "folder of class images for prior preservation", group="dreambooth")
    class_prompt: str | None = _flag(None, "prompt of the class images, e.g. 'a dog'", group="dreambooth")
    with_prior_preservation: bool = _flag(
        False, "add the prior-preservation loss", group="dreambooth", store_true=True)
    prior_loss_weight: float = _flag(
        1.0, "weight of the prior-preservation loss", type=non_negative_float, group="dreambooth")
    num_class_images: int = _flag(
        100, "class images wanted; missing ones are generated with the model into --class_data_dir",
        type=positive_int, group="dreambooth")
    sample_batch_size: int = _flag(
        4, "batch size when generating class images", type=positive_int, group="dreambooth")
    prior_generation_precision: str | None = _flag(
        None, "precision of class-image generation (autocast on accelerators; default: the model's)",
        choices=("no", "fp32", "fp16", "bf16"), group="dreambooth")
    # Text-to-image data
    dataset_name: str | None = _flag(
        None, "a hub dataset id, a local imagefolder (metadata.jsonl/csv) or a save_to_disk folder; needs "
        "`datasets` (pip install 'artshield[finetune]')", group="captioned")
    dataset_config_name: str | None = _flag(None, "config of --dataset_name", group="captioned")
    train_data_dir: str | None = _flag(
        None, "folder of captioned images: metadata.jsonl (file_name + caption column) or a .txt beside each image",
        group="captioned")
    image_column: str | None = _flag(
        None, "image column of --dataset_name (default: 'image' if there is one, else the first column)",
        group="captioned")
    caption_column: str | None = _flag(
        None, "caption column of metadata.jsonl (default: 'text') or of --dataset_name (default: 'text' if there "
        "is one, else the first other column)", group="captioned")
    max_train_samples: int | None = _flag(
        None, "use a seeded random subset of this size", type=positive_int, group="captioned")
    # Images
    resolution: int = _flag(
        512, "side of the square training crops (a multiple of 8; of 16 for SD and the demo model)",
        type=multiple_of_8, group="images")
    center_crop: bool = _flag(False, "crop the centre (default: a random window)", group="images", store_true=True)
    random_flip: bool = _flag(
        False, "flip training images horizontally at random", group="images", store_true=True)
    # Training
    train_text_encoder: bool = _flag(False, "train the text encoder too", store_true=True)
    train_batch_size: int = _flag(4, "batch size per device", type=positive_int)
    num_train_epochs: int = _flag(1, "epochs (when --max_train_steps is not given)", type=positive_int)
    max_train_steps: int | None = _flag(None, "optimisation steps; overrides --num_train_epochs", type=positive_int)
    gradient_accumulation_steps: int = _flag(1, "batches per optimisation step", type=positive_int)
    gradient_checkpointing: bool = _flag(False, "trade compute for memory", store_true=True)
    learning_rate: float | None = _flag(
        None, "initial learning rate (default: 1e-4 for lora, 5e-6 for dreambooth, 1e-5 for full)",
        type=positive_float)
    scale_lr: bool = _flag(
        False, "multiply the learning rate by GPUs x gradient accumulation x batch size", store_true=True)
    lr_scheduler: str = _flag("constant", "the learning-rate schedule", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = _flag(500, "warm-up steps of the schedule", type=non_negative_int)
    lr_num_cycles: int = _flag(1, "hard resets of cosine_with_restarts", type=positive_int)
    lr_power: float = _flag(1.0, "power of the polynomial scheduler", type=positive_float)
    snr_gamma: float | None = _flag(None, "Min-SNR loss weighting gamma (5.0 recommended)", type=positive_float)
    noise_offset: float = _flag(0.0, "scale of the noise offset", type=non_negative_float)
    prediction_type: str | None = _flag(
        None, "train for this prediction type (default: the scheduler's)", choices=("epsilon", "v_prediction"))
    use_8bit_adam: bool = _flag(False, "bitsandbytes' 8-bit AdamW", store_true=True)
    adam_beta1: float = _flag(0.9, "Adam's beta1", type=below_one)
    adam_beta2: float = _flag(0.999, "Adam's beta2", type=below_one)
    adam_weight_decay: float = _flag(1e-2, "AdamW's weight decay", type=non_negative_float)
    adam_epsilon: float = _flag(1e-08, "Adam's epsilon", type=positive_float)
    max_grad_norm: float = _flag(1.0, "gradient clipping norm", type=positive_float)
    dataloader_num_workers: int = _flag(0, "data-loading worker processes", type=non_negative_int)
    use_ema: bool = _flag(
        False, "keep an EMA of the trained weights and save it as the final model (dreambooth/full only)",
        store_true=True)
    ema_decay: float = _flag(0.9999, "the EMA's largest decay (with warm-up)", type=unit_interval)
    foreach_ema: bool = _flag(False, "faster torch._foreach EMA updates", store_true=True)
    offload_ema: bool = _flag(False, "keep the EMA weights in CPU memory", store_true=True)
    pre_compute_text_embeddings: bool = _flag(
        False, "encode every caption once before training (frozen text encoder only)", store_true=True)
    # LoRA
    rank: int = _flag(4, "LoRA rank (lora_alpha = rank)", type=positive_int, group="lora")
    lora_dropout: float = _flag(0.0, "dropout of the LoRA layers", type=below_one, group="lora")
    # Checkpoints and outputs
    output_dir: str | None = _flag(
        None, "where weights, checkpoints and logs go (not a data folder, nor inside or around one)",
        group="outputs")
    checkpointing_steps: int = _flag(500, "save an accelerate state every N steps", type=positive_int, group="outputs")
    checkpoints_total_limit: int | None = _flag(
        None, "keep at most this many checkpoints", type=positive_int, group="outputs")
    resume_from_checkpoint: str | None = _flag(
        None, "a checkpoint folder, or 'latest' (starts afresh when output_dir has none yet)", group="outputs")
    seed: int | None = _flag(None, "seed for reproducible training", type=non_negative_int, group="outputs")
    # Hardware
    mixed_precision: str | None = _flag(
        None, "default: accelerate's config or `accelerate launch --mixed_precision`", choices=("no", "fp16", "bf16"),
        group="hardware")
    allow_tf32: bool = _flag(False, "allow TF32 matmuls on Ampere GPUs", group="hardware", store_true=True)
    enable_xformers_memory_efficient_attention: bool = _flag(
        False, "xformers attention", group="hardware", store_true=True)
    local_rank: int = _flag(-1, "set by distributed launchers", type=whole_number, group="hardware")
    # Logging and validation
    report_to: str | None = _flag(
        None, "tensorboard, wandb, comet_ml, all or none (default: tensorboard when installed, otherwise none)",
        group="validation")
    logging_dir: str = _flag("logs", "tracker logs, relative to --output_dir", group="validation")
    validation_prompt: str | None = _flag(None, "prompt of the validation images", group="validation")
    num_validation_images: int = _flag(4, "validation images each time", type=positive_int, group="validation")
    validation_epochs: int | None = _flag(None, "validate every N epochs", type=positive_int, group="validation")
    validation_steps: int | None = _flag(
        None, "validate every N optimisation steps", type=positive_int, group="validation")
    validation_inference_steps: int = _flag(
        25, "sampling steps of the validation images", type=positive_int, group="validation")
    # Hub
    push_to_hub: bool = _flag(False, "upload output_dir to the Hugging Face hub", group="hub", store_true=True)
    hub_token: str | None = _flag(None, "hub token (default: the logged-in one)", group="hub")
    hub_model_id: str | None = _flag(None, "hub repository (default: the output_dir name)", group="hub")
    # Bayesian few-shot fine-tuning (artshield.finetune.bayesian)
    bayesian: bool = _flag(
        False, "Make the selected layers Bayesian: sample w = mu + sigma * eps at every training forward pass.",
        group="bayesian", store_true=True)
    bayes_init_sigma: float = _flag(
        DEFAULT_INIT_SIGMA, "Initial posterior sigma of every Bayesian weight (the released scripts' 0.01).",
        type=positive_float, group="bayesian")
    bayes_prior_sigma: float = _flag(
        DEFAULT_PRIOR_SIGMA,
        "Prior sigma. The prior is centred on the pretrained weights (DreamBooth/full) or 0 (LoRA up).",
        type=positive_float, group="bayesian")
    bayes_kl_weight: float = _flag(
        DEFAULT_KL_WEIGHT,
        "Weight of the KL term (the reference's --lambda1). Default 0.0, as every released script of the paper "
        "(the reference parser's 0.2 is never used); then only the weight noise regularises.",
        type=non_negative_float, group="bayesian")
    bayes_kl_direction: str = _flag(
        "posterior_prior",
        "posterior_prior: KL(q || p), the standard ELBO (default). prior_posterior: KL(p || q), what the reference "
        "code computes.", choices=BAYES_KL_DIRECTIONS, group="bayesian")
    bayes_kl_normalization: str = _flag(
        "examples",
        "Divide the summed KL by the number of training examples (default: the per-example negative ELBO), by the "
        "number of Bayesian weights, or not at all (the reference).", choices=BAYES_KL_NORMALIZATIONS,
        group="bayesian")
    bayes_min_sigma: float = _flag(
        DEFAULT_MIN_SIGMA, "Lower bound of sigma (the reference clamps at 1e-7).", type=positive_float,
        group="bayesian")
    bayes_max_sigma: float = _flag(
        DEFAULT_MAX_SIGMA,
        "Upper bound of sigma (default 0.1, ten times the initial sigma and about the spread of SD's attention "
        "weights: beyond it the noise would swamp the weights it perturbs).", type=positive_float, group="bayesian")
    bayes_layers: str = _flag(
        "auto",
        "Which Linear layers become Bayesian. auto = lora_up for --method lora, attn_ff otherwise. attn_ff: "
        "transformer blocks' self-attention q/k/v/out and FFN (the reference's DreamBooth run); attn / ff: one of "
        "the two; all_linear: every Linear in the blocks except time_emb_proj; lora_up: the LoRA up (B) matrices "
        "only.", choices=BAYES_LAYER_CHOICES, group="bayesian")
    bayes_include_cross_attention: bool = _flag(
        False, "Also make cross-attention (attn2) Bayesian in attn_ff/attn/all_linear (the reference skips it).",
        group="bayesian", store_true=True)
    bayes_blocks: str = _flag(
        "down,mid,up",
        "Comma-separated UNet blocks to convert: down, mid, up, or sub-blocks such as up.1 (default: all).",
        group="bayesian")

    def __post_init__(self) -> None:
        self.validate()

    # --------------------------------------------------------------------------------------- checks
    def validate(self) -> None:
        """Check and normalise every value (numbers given as strings become numbers), fill the method's
        defaults, and refuse inconsistent settings; raises :class:`InvalidArgumentError` naming the flag."""
        for spec in fields(self):
            setattr(self, spec.name, _checked(spec, getattr(self, spec.name)))
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LEARNING_RATES[self.method]
        if self.output_dir is None:
            self.output_dir = DEFAULT_OUTPUT_DIRS[self.method]
        self._check_combinations()

    def _check_combinations(self) -> None:
        sources = [f for f in ("instance_data_dir", "train_data_dir", "dataset_name") if getattr(self, f)]
        if len(sources) != 1:
            raise InvalidArgumentError(
                "give exactly one source of training images: --instance_data_dir (DreamBooth), --train_data_dir "
                f"or --dataset_name (captioned), but got {', '.join('--' + s for s in sources) or 'none'}."
            )
        dreambooth_data = self.instance_data_dir is not None
        if dreambooth_data and not (self.instance_prompt or "").strip():
            raise InvalidArgumentError("--instance_data_dir needs --instance_prompt (the prompt of every instance image).")
        if self.method == "dreambooth" and not dreambooth_data:
            raise InvalidArgumentError(
                "--method dreambooth trains on --instance_data_dir/--instance_prompt; for captioned images use "
                "--method full or lora."
            )
        if self.with_prior_preservation:
            if not dreambooth_data:
                raise InvalidArgumentError("--with_prior_preservation needs DreamBooth data (--instance_data_dir).")
            if not self.class_data_dir or not self.class_prompt:
                raise InvalidArgumentError("--with_prior_preservation needs --class_data_dir and --class_prompt.")
        elif self.class_data_dir or self.class_prompt:
            logger.warning("--class_data_dir/--class_prompt are ignored without --with_prior_preservation.")
        if self.use_ema:
            if self.method == "lora":
                raise InvalidArgumentError(
                    "--use_ema averages full-weight training (--method full or dreambooth); it is not supported with "
                    "--method lora."
                )
            if self.bayesian:
                raise InvalidArgumentError("--use_ema cannot be combined with --bayesian.")
        elif self.foreach_ema or self.offload_ema:
            logger.warning("--foreach_ema/--offload_ema only apply with --use_ema; ignored.")
        if self.pre_compute_text_embeddings and self.train_text_encoder:
            raise InvalidArgumentError(
                "--pre_compute_text_embeddings needs a frozen text encoder (no --train_text_encoder).")
        if self.method != "lora" and self.lora_dropout:
            logger.warning("--lora_dropout only applies to --method lora; ignored.")
        if self.bayesian:
            BayesianConfig.from_args(self)  # the sigmas' order, the block names

    def check_paths(self) -> None:
        """Refuse, before any work, an ``output_dir`` that cannot be written or would mix with the data: an
        existing file, a data folder itself, a folder inside a data folder or one that holds a data folder (the
        trainer writes weights, checkpoints, logs and validation images there; class images are generated into
        ``class_data_dir``, which must then not be the instance folder)."""
        output = Path(self.output_dir).expanduser()
        check_output_folder("--output_dir", output)
        data = [(f"--{name}", getattr(self, name)) for name in ("instance_data_dir", "class_data_dir", "train_data_dir")
                if getattr(self, name)]  # fmt: skip
        if self.dataset_name and Path(self.dataset_name).expanduser().is_dir():
            data.append(("--dataset_name", self.dataset_name))
        refuse_overlaps(inputs=data, outputs=[("--output_dir", output)])
        for label, folder in data:
            relation = _containment(output, Path(folder).expanduser())
            if relation:
                raise OutputWriteError(
                    f"--output_dir {str(output)!r} is {relation} the {label} {str(folder)!r}; weights, checkpoints and "
                    "logs would mix with the training data. Choose a folder outside it."
                )
        if self.with_prior_preservation and self.instance_data_dir and self.class_data_dir:
            refuse_overlaps(inputs=[("--instance_data_dir", self.instance_data_dir)],
                            outputs=[("--class_data_dir", self.class_data_dir)])  # fmt: skip

    # --------------------------------------------------------------------------------------- conversions
    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> TrainConfig:
        """The config of a namespace parsed with :func:`add_arguments` (flags it lacks keep their defaults)."""
        names = {spec.name for spec in fields(cls)}
        return cls(**{k: v for k, v in vars(namespace).items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """Every setting, JSON-able."""
        return dataclasses.asdict(self)

    def to_argv(self) -> list[str]:
        """The command-line flags that give this config (those that differ from the defaults; learning_rate
        and output_dir always): ``parse_args(config.to_argv()) == config``."""
        argv: list[str] = []
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name in ("local_rank", "hub_token"):
                continue
            if spec.metadata.get("store_true"):
                if value:
                    argv.append(f"--{spec.name}")
            elif value is not None and (value != spec.default or spec.name in ("learning_rate", "output_dir")
                                        or spec.default is dataclasses.MISSING):
                argv += [f"--{spec.name}", repr(value) if isinstance(value, float) else str(value)]
        return argv

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some settings changed (checked again)."""
        return dataclasses.replace(self, **changes)


def _checked(spec: dataclasses.Field, value: Any) -> Any:
    """One field's value, checked with the same function the command line uses."""
    flag = f"--{spec.name}"
    meta = spec.metadata
    if value is None:
        if meta.get("required"):
            raise InvalidArgumentError(f"{flag} is required.")
        if spec.default is not None:
            raise InvalidArgumentError(f"{flag} must be given a value, not None.")
        return None
    if meta.get("store_true"):
        if not isinstance(value, bool):
            raise InvalidArgumentError(f"{flag} must be True or False, not {value!r}.")
        return value
    check = meta.get("type")
    if check is not None:
        if isinstance(value, bool):
            raise InvalidArgumentError(f"{flag} must be a number, not {value!r}.")
        try:
            value = check(str(value))
        except argparse.ArgumentTypeError as exc:
            raise InvalidArgumentError(f"{flag} {exc}.") from None
        return value
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{flag} must be a string, not {value!r}.")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise InvalidArgumentError(f"{flag} must be one of {', '.join(choices)}, not {value!r}.")
    return value


def _containment(output: Path, data: Path) -> str | None:
    """``"inside"`` / ``"around"`` when one folder holds the other (symbolic links followed), else None."""
    try:
        out, folder = output.resolve(), data.resolve()
    except OSError:
        return None
    if out == folder:
        return None  # the same folder: refuse_overlaps names it
    if out.is_relative_to(folder):
        return "inside"
    if folder.is_relative_to(out):
        return "around"
    return None


def add_arguments(parser: argparse.ArgumentParser, *, only: str | None = None) -> None:
    """Add the trainer's flags (every :class:`TrainConfig` field, or those of group `only`) to `parser`, in
    help sections; each value is checked at parse time by the function :meth:`TrainConfig.validate` uses."""
    sections: dict[str, Any] = {}
    for spec in fields(TrainConfig):
        meta = spec.metadata
        group = meta.get("group", "training")
        if only is not None and group != only:
            continue
        if group not in sections:
            title, description = GROUPS[group]
            sections[group] = parser.add_argument_group(title, description)
        target = sections[group]
        help_text = (meta.get("help") or "").replace("%", "%%")
        if meta.get("store_true"):
            target.add_argument(f"--{spec.name}", action="store_true", help=help_text)
            continue
        kwargs: dict[str, Any] = {"help": help_text}
        if meta.get("required"):
            kwargs["required"] = True
        else:
            kwargs["default"] = spec.default
        if meta.get("type") is not None:
            kwargs["type"] = meta["type"]
        if meta.get("choices") is not None:
            kwargs["choices"] = meta["choices"]
        target.add_argument(f"--{spec.name}", **kwargs)


__all__ = [
    "BAYESIAN_MODULE",
    "BayesianConfig",
    "DEFAULT_LEARNING_RATES",
    "DEFAULT_OUTPUT_DIRS",
    "LR_SCHEDULERS",
    "METHODS",
    "TrainConfig",
    "add_arguments",
    "below_one",
    "multiple_of_8",
    "parse_blocks",
    "unit_interval",
]
