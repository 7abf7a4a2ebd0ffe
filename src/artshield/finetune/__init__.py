"""Fine-tuning: accelerate-launchable trainers with diffusers' flags (LoRA, DreamBooth, full), Bayesian
few-shot fine-tuning (``--bayesian``) with a corruption monitor, and memorization detection and pruning.

    accelerate launch -m artshield.finetune.train --method lora --pretrained_model_name_or_path demo ...
    artshield finetune --method lora --pretrained_model_name_or_path demo ...
    artshield memorization detect|prune ...

From Python: ``artshield.finetune.train.train(TrainConfig(...)) -> TrainResult`` runs the trainer in this
process (``artshield.finetune.train`` is the trainer's module, so the function is not re-exported here), and
``LocalTrainer(model).train_steps(images, steps)`` runs a few LoRA steps on an already-loaded model (what a
federated client does each round).

Submodules import lazily: ``import artshield.finetune`` loads neither accelerate nor peft.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "config",
    "TrainResult": "train",
    "LocalTrainer": "local",
    "LocalResult": "local",
    "train_steps": "local",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
