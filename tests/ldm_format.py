"""Test helper: write a diffusers Stable Diffusion folder as an original-format (CompVis/LDM) checkpoint.

The reverse of diffusers' ``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint`` and its CLIP /
OpenCLIP text-encoder converters, for UNets whose down blocks each hold ``layers_per_block`` resnets (and
up blocks one more), as every SD 1.x/2.x UNet and the repo's tiny/demo models do. Tests use it to make
tiny single-file checkpoints in the exact key layout of the files users download from the hub or Civitai,
then check that loading them gives the same weights and outputs as loading the folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def _resnet(rest: str) -> str:
    for new, old in _RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    raise KeyError(f"unexpected resnet parameter {rest!r}")


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel keys -> ``model.diffusion_model.*`` keys (openaimodel.UNetModel)."""
    n = config["layers_per_block"]
    up_has_attention = ["CrossAttn" in t for t in config["up_block_types"]]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module in _UNET_TOP:
            ldm = f"{_UNET_TOP[module]}.{param}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            b, layer, rest = int(m[1]), int(m[2]), m[3]
            ldm = f"input_blocks.{1 + b * (n + 1) + layer}.0.{_resnet(rest)}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            b, layer, rest = int(m[1]), int(m[2]), m[3]
            ldm = f"input_blocks.{1 + b * (n + 1) + layer}.1.{rest}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            ldm = f"input_blocks.{(int(m[1]) + 1) * (n + 1)}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            ldm = f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            ldm = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            b, layer, rest = int(m[1]), int(m[2]), m[3]
            ldm = f"output_blocks.{b * (n + 1) + layer}.0.{_resnet(rest)}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            b, layer, rest = int(m[1]), int(m[2]), m[3]
            ldm = f"output_blocks.{b * (n + 1) + layer}.1.{rest}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            b = int(m[1])
            # The upsampler follows the block's last resnet, and its attention when the block has one.
            ldm = f"output_blocks.{b * (n + 1) + n}.{2 if up_has_attention[b] else 1}.conv.{m[2]}"
        else:
            raise KeyError(f"no LDM name for UNet parameter {key!r}")
        out["model.diffusion_model." + ldm] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> ``first_stage_model.*`` keys (ldm AutoencoderKL)."""
    levels = len(config["block_out_channels"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        ldm = key.replace("conv_norm_out", "norm_out")
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            ldm = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            ldm = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            # The LDM decoder numbers its levels from the bottom; diffusers from the top.
            ldm = f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            ldm = f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            ldm = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            name = dict(_VAE_ATTENTION)[m[2]]
            ldm = f"{m[1]}.mid.attn_1.{name}.{m[3]}"
            if m[3] == "weight" and name != "norm":
                value = value[:, :, None, None]  # the LDM VAE's attention projections are 1x1 convolutions
        out["first_stage_model." + ldm] = value
    return out


def clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel keys -> SD 1.x ``cond_stage_model.transformer.text_model.*`` keys."""
    prefix = "cond_stage_model.transformer."
    return {prefix + (key if key.startswith("text_model.") else "text_model." + key): v for key, v in state.items()}


def open_clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel keys -> SD 2.x OpenCLIP ``cond_stage_model.model.*`` keys (fused qkv)."""
    state = {key.removeprefix("text_model."): v for key, v in state.items()}
    prefix = "cond_stage_model.model."
    out: dict[str, torch.Tensor] = {
        prefix + "token_embedding.weight": state["embeddings.token_embedding.weight"],
        prefix + "positional_embedding": state["embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": state["final_layer_norm.weight"],
        prefix + "ln_final.bias": state["final_layer_norm.bias"],
    }
    width = state["embeddings.token_embedding.weight"].shape[1]
    # OpenCLIP's projection to the joint space: unused by SD (and by CLIPTextModel), present in SD 2.x files.
    out[prefix + "text_projection"] = torch.eye(width)
    layers = sorted({int(m[1]) for key in state if (m := re.match(r"encoder\.layers\.(\d+)\.", key))})
    renames = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"))
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [state[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")], dim=0
            )
            out[f"{dst}attn.out_proj.{kind}"] = state[f"{src}self_attn.out_proj.{kind}"]
            for new, old in renames:
                out[f"{dst}{old}.{kind}"] = state[f"{src}{new}.{kind}"]
    return out


def folder_to_ldm(folder: str | Path, *, text: str = "clip") -> dict[str, torch.Tensor]:
    """All three weighted components of a diffusers folder as one LDM state dict.

    `text` is ``"clip"`` (SD 1.x layout) or ``"open_clip"`` (SD 2.x layout).
    """
    folder = Path(folder)

    def weights(name: str) -> dict[str, torch.Tensor]:
        files = sorted((folder / name).glob("*.safetensors"))
        return load_file(str(files[0]))

    def config(name: str) -> dict:
        return json.loads((folder / name / "config.json").read_text())

    state = unet_to_ldm(weights("unet"), config("unet"))
    state.update(vae_to_ldm(weights("vae"), config("vae")))
    text_state = weights("text_encoder")
    state.update(clip_to_ldm(text_state) if text == "clip" else open_clip_to_ldm(text_state))
    return state


def save_ldm_checkpoint(
    folder: str | Path, path: str | Path, *, text: str = "clip", drop: tuple[str, ...] = (), extra: dict | None = None
) -> Path:
    """Write `folder` as one original-format checkpoint at `path`: safetensors for ``.safetensors``, a
    Lightning-style ``{"state_dict": ...}`` torch pickle otherwise. Keys starting with a `drop` prefix are
    left out; `extra` entries are added to the pickle's top level (or to the tensors, for safetensors)."""
    path = Path(path)
    state = {k: v.contiguous() for k, v in folder_to_ldm(folder, text=text).items() if not k.startswith(drop)}
    if path.suffix == ".safetensors":
        save_file({**state, **(extra or {})}, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 0, **(extra or {})}, path)
    return path
