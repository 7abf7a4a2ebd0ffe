"""Fine-tuning: accelerate-launchable trainers with diffusers' flags (LoRA, DreamBooth, full), Bayesian
few-shot fine-tuning (``--bayesian``) with a corruption monitor, and memorization detection and pruning.

    accelerate launch -m artshield.finetune.train --method lora --pretrained_model_name_or_path demo ...
    artshield memorization detect|prune ...

Submodules import lazily: ``import artshield.finetune`` loads neither accelerate nor peft.
"""
