"""Component configurations with the Stable Diffusion architecture, at four sizes.

``"demo"`` is the shipped demo model (trained by :mod:`artshield.models.demo.train`); ``"tiny"`` is a
random-weight model for tests that must run in milliseconds; ``"sd15"`` and ``"sd21"`` are Stable Diffusion
1.5's and 2.1's exact component sizes, random-initialised, for ``benchmarks/sd_scale.py``. Both use a VAE with three down-samplings
(x8, as real SD: a x2 VAE makes the UNet attend over 16x more tokens) and the real diffusers /
transformers classes, so every code path is the one a real checkpoint takes.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ...errors import InvalidArgumentError

ARCHITECTURES: dict[str, dict] = {
    "demo": {
        "resolution": 128,
        "vae": {"block_out_channels": (32, 64, 64, 64), "layers_per_block": 1, "norm_num_groups": 16},
        "unet": {
            "block_out_channels": (64, 128, 128),
            "layers_per_block": 1,
            "attention_head_dim": 8,
            "norm_num_groups": 16,
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        },
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
    },
    "tiny": {
        "resolution": 32,
        "vae": {"block_out_channels": (8, 8, 8, 8), "layers_per_block": 1, "norm_num_groups": 4},
        "unet": {
            "block_out_channels": (8, 16),
            "layers_per_block": 1,
            "attention_head_dim": 2,
            "norm_num_groups": 4,
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        },
        "text": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
    },
    # Stable Diffusion's own sizes (the configs of runwayml/stable-diffusion-v1-5 and
    # stabilityai/stable-diffusion-2-1), for measuring time and memory with random weights: the cost of a step
    # does not depend on the weights' values. The text encoder's vocabulary is the tokenizer's (CLIP's 49,408
    # rows of embedding cost nothing per step).
    "sd15": {
        "resolution": 512,
        "vae": {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32},
        "unet": {
            "block_out_channels": (320, 640, 1280, 1280),
            "layers_per_block": 2,
            "attention_head_dim": 8,
            "norm_num_groups": 32,
            "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        },
        "text": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                 "hidden_act": "quick_gelu", "projection_dim": 768},
    },
    "sd21": {
        "resolution": 768,
        "vae": {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32},
        "unet": {
            "block_out_channels": (320, 640, 1280, 1280),
            "layers_per_block": 2,
            "attention_head_dim": (5, 10, 20, 20),
            "use_linear_projection": True,
            "norm_num_groups": 32,
            "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        },
        "text": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
                 "hidden_act": "gelu", "projection_dim": 512},
    },
}

#: The prediction type each architecture is trained with (SD 2.1 at 768 px predicts the velocity).
PREDICTION_TYPES = {"sd21": "v_prediction"}


def make_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    """SD's training schedule (scaled-linear betas 0.00085..0.012 over 1000 steps)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        clip_sample=False,
        prediction_type=prediction_type,
    )


def build_components(
    architecture: str | dict,
    tokenizer,
    *,
    seed: int = 0,
    inpainting: bool = False,
    prediction_type: str = "epsilon",
) -> dict:
    """Build randomly initialised vae/unet/text_encoder/scheduler (seeded) around `tokenizer`.

    Returns a dict with the five components diffusers' Stable Diffusion pipelines take.
    """
    if isinstance(architecture, str):
        if architecture not in ARCHITECTURES:
            raise InvalidArgumentError(
                f"`architecture` must be one of {', '.join(ARCHITECTURES)} or a dict, but is {architecture!r}."
            )
        architecture = ARCHITECTURES[architecture]
    vae_cfg, unet_cfg, text_cfg = architecture["vae"], architecture["unet"], architecture["text"]
    vae_downs = len(vae_cfg["block_out_channels"])
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * vae_downs,
        up_block_types=("UpDecoderBlock2D",) * vae_downs,
        latent_channels=4,
        sample_size=architecture["resolution"],
        **vae_cfg,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **text_cfg,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=architecture["resolution"] // 2 ** (vae_downs - 1),
        in_channels=9 if inpainting else 4,
        out_channels=4,
        cross_attention_dim=text_cfg["hidden_size"],
        **unet_cfg,
    )
    return {
        "vae": vae,
        "unet": unet,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": make_scheduler(prediction_type),
    }


def save_components(components: dict, folder: str, *, inpainting: bool = False) -> None:
    """Save components in the diffusers folder layout (model_index.json, one subfolder each, safetensors)."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    cls = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    pipe = cls(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
