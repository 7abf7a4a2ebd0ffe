"""Fine-tune a Stable Diffusion 1.x/2.x model (or the demo model) with LoRA, DreamBooth or full fine-tuning.

Run it as diffusers' ``train_dreambooth_lora.py`` / ``train_text_to_image_lora.py`` are run, with the same
flags::

    accelerate launch -m artshield.finetune.train --method lora \\
        --pretrained_model_name_or_path demo \\
        --instance_data_dir imgs/ --instance_prompt "a painting in velmora style" \\
        --resolution 128 --train_batch_size 4 --max_train_steps 400 --learning_rate 1e-4 \\
        --checkpointing_steps 100 --seed 0 --output_dir out/

or as plain ``python -m artshield.finetune.train ...`` / ``artshield finetune ...`` on one CPU, or from Python::

    from artshield.finetune import TrainConfig
    from artshield.finetune.train import train

    result = train(TrainConfig(pretrained_model_name_or_path="demo", instance_data_dir="imgs/",
                               instance_prompt="a painting in velmora style", resolution=128, max_train_steps=400))
    result.weights, result.global_step, result.loss

The command line is parsed into a :class:`~artshield.finetune.config.TrainConfig` (one field per flag, checked
in one place) and handed to :func:`train`, which creates the accelerate ``Accelerator`` itself. The model may
be ``demo``, a hub id, a diffusers folder or a single ``.safetensors`` file (anything
:func:`artshield.models.load` takes).

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

Every user error (a bad flag value, a bad folder, an unreadable image, a missing caption, incompatible flags,
an ``--output_dir`` that is a file or overlaps a data folder, a missing optional package, an incompatible
transformers/peft pair, the hub unreachable with ``--push_to_hub``) is reported before training starts, as one
line on stderr with exit status 2 (130 for Ctrl-C). Under ``accelerate launch`` that line is printed as it
happens and accelerate then adds its own traceback; ``accelerate launch -q`` leaves the trainer's line last.

Federated clients that run a few local LoRA steps per round on an already-loaded model use
:class:`artshield.finetune.local.LocalTrainer` instead (no accelerate, no files).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..cli_support import ArgumentParser, run_cli
from ..errors import InvalidArgumentError
from .config import (
    BAYESIAN_MODULE,
    DEFAULT_LEARNING_RATES,
    DEFAULT_OUTPUT_DIRS,
    METHODS,
    TrainConfig,
    add_arguments,
)
from .validation import MONITOR_MODULE, log_validation, make_monitor

logger = logging.getLogger(__name__)

PROG = "python -m artshield.finetune.train"
KEPT_ON_INTERRUPT = "no partial model was written. Continue with --resume_from_checkpoint latest."


# ============================================================================================ arguments
def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The argument parser: diffusers' training-example flags (one per :class:`TrainConfig` field), each value
    checked at parse time; errors are one line with exit status 2."""
    parser = ArgumentParser(
        prog=prog,
        description="Fine-tune a Stable Diffusion model (LoRA, DreamBooth or full) with diffusers' example flags.",
    )
    add_arguments(parser)
    return parser


def config_from_namespace(namespace: argparse.Namespace) -> TrainConfig:
    """The config of parsed flags; a distributed launcher's ``LOCAL_RANK`` wins over ``--local_rank``."""
    env_local_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_local_rank != -1 and env_local_rank != namespace.local_rank:
        namespace.local_rank = env_local_rank
    return TrainConfig.from_namespace(namespace)


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse and check a command line into a :class:`TrainConfig` (argparse exits with status 2 on a bad flag
    or value; inconsistent flags raise :class:`~artshield.errors.InvalidArgumentError`)."""
    return config_from_namespace(build_parser().parse_args(argv))


def check_environment(config: TrainConfig) -> tuple[list[str] | None, ModuleType | None]:
    """Fail early, with one clear line, on what this machine cannot do; returns (trackers, bayesian module).

    Covers: tracker packages for ``report_to``, bitsandbytes for ``use_8bit_adam``, xformers, the hub for
    ``push_to_hub`` (checked before training, not after), the Bayesian extension for ``bayesian``, and a
    ``resume_from_checkpoint`` folder that does not exist.
    """
    trackers = resolve_trackers(config.report_to)
    if config.report_to and "wandb" in config.report_to and config.hub_token is not None:
        raise InvalidArgumentError(
            "--report_to wandb together with --hub_token would expose the token to wandb; log in with "
            "`hf auth login` instead of passing --hub_token."
        )
    if config.use_8bit_adam and importlib.util.find_spec("bitsandbytes") is None:
        raise InvalidArgumentError(
            "--use_8bit_adam needs the bitsandbytes package (pip install bitsandbytes, CUDA only); drop the flag to "
            "use torch's AdamW."
        )
    if config.enable_xformers_memory_efficient_attention:
        from diffusers.utils.import_utils import is_xformers_available

        if not is_xformers_available():
            raise InvalidArgumentError(
                "--enable_xformers_memory_efficient_attention needs the xformers package (pip install xformers)."
            )
    if config.push_to_hub:
        from ..models.hub import hub_online

        if not hub_online():
            raise InvalidArgumentError(
                "--push_to_hub: the Hugging Face hub cannot be reached (no network, or HF_HUB_OFFLINE is set); "
                f"train without it and upload {config.output_dir} later with `hf upload`."
            )
    if config.resume_from_checkpoint and config.resume_from_checkpoint != "latest":
        from .saving import resolve_checkpoint

        resolve_checkpoint(config.resume_from_checkpoint, config.output_dir)  # a typo fails now, not after loading
    bayesian, error = _optional_module(BAYESIAN_MODULE)
    if config.bayesian and bayesian is None:
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


# ============================================================================================ result
@dataclass
class TrainResult(Mapping):
    """What a run made. Also reads as the summary dict earlier versions returned (``result["global_step"]``).

    Attributes:
        output_dir: where the weights, checkpoints and logs are.
        method: ``lora``, ``dreambooth`` or ``full``.
        global_step: optimisation steps done (resumed steps included).
        loss: the mean training loss of the last step (NaN when no step ran).
        weights: the LoRA file or the pipeline folder written (None on processes other than the main one).
        seconds: wall time of the run.
        ema_steps: steps averaged by ``use_ema`` (None without it).
    """

    output_dir: str
    method: str
    global_step: int
    loss: float
    weights: str | None = None
    seconds: float = 0.0
    ema_steps: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The summary dict: every attribute, without ``weights``/``ema_steps`` when they are None."""
        out = {"output_dir": self.output_dir, "method": self.method, "global_step": self.global_step,
               "loss": self.loss, "weights": self.weights, "seconds": self.seconds, "ema_steps": self.ema_steps}  # fmt: skip
        return {k: v for k, v in out.items() if v is not None or k not in ("weights", "ema_steps")}

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())


# ============================================================================================ training
def train(config: TrainConfig | argparse.Namespace) -> TrainResult:
    """Run the fine-tuning job `config` describes (in this process; the accelerate Accelerator is made here)
    and return what it made. User errors raise :class:`~artshield.errors.ArtshieldError` before any training."""
    from accelerate.utils import set_seed

    from ..compat import check_lora_stack
    from . import loop
    from .data import build_dataset, dreambooth_examples, generate_class_images

    if isinstance(config, argparse.Namespace):
        config = TrainConfig.from_namespace(config)
    started = time.perf_counter()
    # 1. Refuse what cannot work here before touching any data or weights.
    config.check_paths()
    if config.method == "lora":
        check_lora_stack(text_encoder=config.train_text_encoder)
    trackers, bayesian = check_environment(config)
    # 2. List and decode the training images, and load the base model: bad files fail now, not mid-run.
    dataset = build_dataset(config)
    model = loop.load_base_model(config)
    # 3. The accelerator and the output folder (nothing is written before this point).
    accelerator = loop.make_accelerator(config, trackers)
    if config.seed is not None:
        set_seed(config.seed)
    repo_id = prepare_output_dir(config, accelerator)
    # 4. Prior preservation: class images generated by the model itself, before it is changed.
    if config.with_prior_preservation:
        if accelerator.is_main_process:
            generate_class_images(model, config, accelerator.device)
        accelerator.wait_for_everyone()
        class_examples = dreambooth_examples(config.class_data_dir, config.class_prompt, flag="--class_data_dir")
        dataset.add_class_examples(class_examples[: config.num_class_images])
    # 5. Trainable weights, checkpoint hooks, optimisation.
    parts = loop.setup_model(config, model, accelerator, bayesian)
    emas = loop.setup_checkpointing(config, accelerator, parts)
    run = loop.prepare_optimization(config, accelerator, model, parts, dataset, emas)
    monitor = start_tracking(run)
    if config.pre_compute_text_embeddings:
        loop.precompute_text_embeddings(run)
    log_plan(run)
    loop.resume(run)
    # 6. The loop.
    validate = make_validator(run, monitor)
    loop.run_loop(run, validate)
    # 7. Final weights, written atomically; Bayesian layers collapse to their means, EMA runs save the average.
    accelerator.wait_for_everyone()
    result = TrainResult(output_dir=str(config.output_dir), method=config.method, global_step=run.global_step,
                         loss=run.loss)  # fmt: skip
    if run.emas:
        for ema in run.emas:
            ema.copy_to_model()
        result.ema_steps = run.emas[0].optimization_step
        run.emas = []  # the models now hold the averaged weights: the final validation uses them as they are
    if accelerator.is_main_process:
        result.weights = loop.save_final(run)
        logger.info("Saved the %s weights to %s", config.method, result.weights)
        if config.validation_prompt and run.last_validation != run.global_step:
            validate("test")
        if repo_id is not None:
            push_to_hub(config, repo_id)
    accelerator.end_training()
    result.seconds = time.perf_counter() - started
    return result


def prepare_output_dir(config: TrainConfig, accelerator) -> str | None:
    """Create ``output_dir`` (main process), clear staging folders a killed run left, and create the hub
    repository when pushing (so auth problems surface before training); returns the repository id."""
    from .saving import remove_stale_staging

    if not accelerator.is_main_process:
        return None
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    remove_stale_staging(config.output_dir)
    return create_hub_repo(config) if config.push_to_hub else None


def start_tracking(run) -> Any:
    """Trackers (main process) with the run's settings, and the fidelity monitor when validating."""
    if not run.accelerator.is_main_process:
        return None
    run.accelerator.init_trackers(f"artshield-{run.config.method}", config=tracker_config(run.config, run.schedule))
    return make_monitor(run.config)


def log_plan(run) -> None:
    config, schedule, accelerator = run.config, run.schedule, run.accelerator
    total_batch_size = config.train_batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    logger.info("***** Running training (%s) *****", config.method)
    logger.info("  Num examples = %d", len(run.dataset))
    logger.info("  Num batches each epoch = %d", len(run.dataloader))
    logger.info("  Num Epochs = %d", schedule.num_train_epochs)
    logger.info("  Instantaneous batch size per device = %d", config.train_batch_size)
    logger.info("  Total train batch size (w. parallel, distributed & accumulation) = %d", total_batch_size)
    logger.info("  Gradient Accumulation steps = %d", config.gradient_accumulation_steps)
    logger.info("  Total optimization steps = %d", schedule.max_train_steps)


def make_validator(run, monitor):
    """``validate(phase)``: validation images from the averaged weights under ``use_ema`` (the trained ones are
    put back exactly after), through :func:`log_validation`."""

    def validate(phase: str = "validation") -> None:
        parts = run.parts
        with contextlib.ExitStack() as stack:
            for ema in run.emas:
                stack.enter_context(ema.applied())
            log_validation(run.model, parts.unet, parts.text_encoder if parts.train_text_encoder else None,
                           run.config, run.accelerator, run.global_step, monitor, phase=phase)  # fmt: skip
        run.last_validation = run.global_step

    return validate


def create_hub_repo(config: TrainConfig) -> str:
    """Create (or reuse) the hub repository before training, so auth problems surface at once."""
    from huggingface_hub import create_repo

    from ..models.hub import first_line

    name = config.hub_model_id or Path(config.output_dir).resolve().name
    try:
        return create_repo(repo_id=name, exist_ok=True, token=config.hub_token).repo_id
    except Exception as exc:  # noqa: BLE001 - auth, network, naming: one line before training
        raise InvalidArgumentError(f"--push_to_hub: cannot create the hub repository {name!r} ({first_line(exc)}).") from exc


def push_to_hub(config: TrainConfig, repo_id: str) -> None:
    """Write a model card and upload output_dir (no checkpoints or staging folders)."""
    from huggingface_hub import upload_folder

    from ..fileio import STAGING_PREFIX, write_text_atomic
    from ..models.hub import first_line

    kind = "LoRA weights" if config.method == "lora" else f"{config.method} fine-tuned pipeline"
    prompt = config.instance_prompt or "captions of the training data"
    write_text_atomic(
        Path(config.output_dir) / "README.md",
        "---\nlibrary_name: diffusers\ntags:\n- text-to-image\n- stable-diffusion\n- artshield\n"
        f"{'- lora' + chr(10) if config.method == 'lora' else ''}"
        f"base_model: {config.pretrained_model_name_or_path}\n---\n\n"
        f"# {repo_id}\n\n{kind} for `{config.pretrained_model_name_or_path}`, trained with artshield "
        f"(`{PROG} --method {config.method}`) on {prompt!r}.\n",
        what="model card",
    )
    try:
        upload_folder(
            repo_id=repo_id,
            folder_path=config.output_dir,
            commit_message="End of training",
            ignore_patterns=["step_*", "epoch_*", "checkpoint-*/*", ".tmp-*/*", ".tmp-*", f"{STAGING_PREFIX}*"],
            token=config.hub_token,
        )
    except Exception as exc:  # noqa: BLE001 - network/auth failures: the local output is complete
        raise InvalidArgumentError(
            f"--push_to_hub: uploading to {repo_id} failed ({first_line(exc)}); the trained model is saved in "
            f"{config.output_dir}."
        ) from exc


def tracker_config(config: TrainConfig, schedule=None) -> dict:
    """The run's settings as tracker hyper-parameters (tensorboard takes only scalars and strings), with the
    step arithmetic actually used."""
    values = config.to_dict()
    if schedule is not None:
        values.update(learning_rate=schedule.learning_rate, max_train_steps=schedule.max_train_steps,
                      num_train_epochs=schedule.num_train_epochs)  # fmt: skip
    return {k: v for k, v in values.items() if isinstance(v, (int, float, str, bool)) and k != "hub_token"}


# ============================================================================================ CLI
def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Command-line entry point: 0 when trained; a user error is one line on stderr and exit status 2
    (argument errors before anything loads); Ctrl-C is one line and 130."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO
    )

    def body(namespace: argparse.Namespace) -> int:
        result = train(config_from_namespace(namespace))
        logger.info("Done in %.1f s: %s", result.seconds, result.weights)
        return 0

    try:
        return run_cli(prog, build_parser(prog), argv, body, KEPT_ON_INTERRUPT)
    except SystemExit as exc:  # argparse: --help (0) or a bad flag (2, its one line already printed)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2


__all__ = [
    "BAYESIAN_MODULE",
    "DEFAULT_LEARNING_RATES",
    "DEFAULT_OUTPUT_DIRS",
    "METHODS",
    "MONITOR_MODULE",
    "PROG",
    "TrainConfig",
    "TrainResult",
    "build_parser",
    "check_environment",
    "log_validation",
    "main",
    "parse_args",
    "train",
]


if __name__ == "__main__":
    sys.exit(main())
