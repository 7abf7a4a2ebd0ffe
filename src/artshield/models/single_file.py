"""Load an original-format Stable Diffusion checkpoint from one file.

Original-format (CompVis/LDM) files are how SD 1.x/2.x checkpoints are distributed on the hub and on Civitai:
one state dict whose keys start with ``model.diffusion_model.`` (UNet), ``first_stage_model.`` (VAE) and
``cond_stage_model.`` (CLIP for SD 1.x, OpenCLIP for SD 2.x). The weights are converted by diffusers' own
single-file machinery (``UNet2DConditionModel.from_single_file``, ``AutoencoderKL.from_single_file`` and the
CLIP converter ``StableDiffusionPipeline.from_single_file`` uses), so real checkpoints and the test models
go through the same code.

What the file cannot say — the components' configs, the tokenizer, the noise schedule — comes from a
diffusers folder or hub repo of the same architecture (`config`). Without one, the repo diffusers itself
would pick for the checkpoint's kind is used (SD 1.5, SD 2.1, or their inpainting models): read from the
Hugging Face cache, or its configs (a few KB, no weights) downloaded when online. Offline with nothing
cached, the error says to pass ``config=FOLDER`` (``--config FOLDER``).

Pickles (``.ckpt``/``.pt``/``.pth``/``.bin``) are read only with ``trust_pickle=True`` and then only through
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers: a pickle that
would run code is rejected, not executed.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
from pathlib import Path

import torch

from ..errors import IncompatibleModelError, ModelLoadError, ModelNotFoundError, UntrustedCheckpointError
from .components import FOLDER_LAYOUT, check_components, load_pretrained_model, transformers_dtype_kwarg
from .hub import first_line, hub_error_message, hub_online, looks_like_hub_id

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x: Hugging Face CLIPTextModel under a wrapper
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP ViT-H text tower
_KEPT_PREFIXES = (UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX)
_CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
# Only configs and tokenizer files: the weights come from the checkpoint.
_CONFIG_PATTERNS = ["model_index.json", "*/config.json", "scheduler/*.json", "tokenizer/*"]
KIND_NAMES = {
    "v1": "Stable Diffusion 1.x",
    "v2": "Stable Diffusion 2.x",
    "inpainting": "Stable Diffusion 1.x inpainting",
    "inpainting_v2": "Stable Diffusion 2.x inpainting",
}
_DIFFUSERS_LOGGER = "diffusers.loaders.single_file_model"


def load_single_file(
    path: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Read an original-format SD 1.x/2.x checkpoint file and return its five diffusers components.

    Args:
        path: a ``.safetensors`` file (or a ``.ckpt``/``.pt``/``.pth``/``.bin`` pickle with `trust_pickle`).
        config: a diffusers folder or hub id of the same architecture, for the configs, tokenizer and
            scheduler; None picks diffusers' default repo for the checkpoint's kind (cache, or online).
        trust_pickle: allow pickle files, read with ``torch.load(weights_only=True)`` only.
        dtype: precision of the returned weights.

    Returns:
        ``{"vae", "unet", "text_encoder", "tokenizer", "scheduler"}`` (the scheduler a ``DDPMScheduler``).

    Raises:
        UntrustedCheckpointError, IncompatibleModelError, ModelNotFoundError: see :func:`artshield.models.load`.
    """
    path = Path(path)
    state = read_state_dict(path, trust_pickle=trust_pickle)
    kind = checkpoint_kind(state, path)
    config_dir, config_name = resolve_config(config, kind, path)
    _check_config_fits(state, config_dir, config_name, path)
    return _build_components(state, config_dir, config_name, path, dtype)


# ---------------------------------------------------------------------------------------------- reading
def read_state_dict(path: Path, *, trust_pickle: bool) -> dict[str, torch.Tensor]:
    """The file's SD tensors (UNet, VAE, text encoder keys; EMA copies and training state dropped).

    Raises a named error for anything that is not an original-format SD checkpoint, before the tensors of
    a foreign file (possibly many gigabytes) are read.
    """
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        if not trust_pickle:
            raise UntrustedCheckpointError(
                f"checkpoint {path} is a pickle ({suffix}), which can run code when loaded; pass trust_pickle=True "
                "(--trust-pickle) to read it with torch.load(weights_only=True), or better, convert it to "
                ".safetensors (or download the model's .safetensors release)."
            )
        return _read_pickle(path)
    raise IncompatibleModelError(
        f"checkpoint {path}: unsupported file type {suffix or '(no extension)'!r}; artshield reads .safetensors "
        f"files, and {'/'.join(PICKLE_SUFFIXES)} pickles with trust_pickle=True."
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
            reject_foreign(keys, path)
            state = {key: handle.get_tensor(key) for key in keys if key.startswith(_KEPT_PREFIXES)}
    except ModelLoadError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # safetensors_rust.SafetensorError and OSErrors: the file is not readable
        raise IncompatibleModelError(
            f"checkpoint {path} is not a readable .safetensors file ({first_line(exc)}); it may be truncated or "
            "corrupt: download it again."
        ) from exc
    return _normalise(state)


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        # mmap avoids holding a second copy of a multi-gigabyte file; legacy (non-zip) pickles cannot be mapped.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except MemoryError:
        raise
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower():
            # The restricted unpickler met a global it will not construct: code, or objects beyond tensors.
            # (Its other complaints, such as unknown opcodes, come from damaged or non-pickle files.)
            raise UntrustedCheckpointError(
                f"checkpoint {path} holds Python objects other than tensors ({_refused_global(exc)}); artshield reads "
                "pickles only with torch.load(weights_only=True) and will not run code from them. Convert it to "
                ".safetensors with a tool you trust, or use the model's .safetensors release."
            ) from exc
        raise _unreadable_pickle(path, exc) from exc
    except Exception as exc:  # torch raises RuntimeError/EOFError/IndexError/... on truncated or random bytes
        raise _unreadable_pickle(path, exc) from exc
    # Lightning checkpoints nest the weights under "state_dict" (sometimes twice).
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise IncompatibleModelError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a state dict of tensors; it is not a "
            "Stable Diffusion checkpoint."
        )
    keys = [key for key in obj if isinstance(key, str)]
    reject_foreign(keys, path)
    state = {key: obj[key] for key in keys if key.startswith(_KEPT_PREFIXES) and isinstance(obj[key], torch.Tensor)}
    return _normalise(state)


def _refused_global(exc: BaseException) -> str:
    """The line of torch's weights_only refusal naming what was refused (its first lines explain how to
    bypass the check, which is not advice to relay)."""
    match = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    return f"it asks to call or build {match.group(1)}" if match else "refused by torch.load(weights_only=True)"


def _unreadable_pickle(path: Path, exc: BaseException) -> IncompatibleModelError:
    return IncompatibleModelError(
        f"checkpoint {path} could not be read as a PyTorch checkpoint ({_load_failure(exc)}); it may be truncated "
        "or corrupt: download it again."
    )


def _load_failure(exc: BaseException) -> str:
    """What went wrong in ``torch.load(weights_only=True)``, without torch's advice to rerun it with
    ``weights_only=False`` (which would run whatever code a damaged or hostile file holds)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if detail:  # the restricted unpickler met bytes that are no pickle it reads: random or damaged data
        return f"not a readable pickle: {detail.group(1).strip().rstrip('.')}"
    if "legacy .tar format" in text:  # neither a zip archive nor a pickle: torch guessed its oldest format
        return "neither a zip-format PyTorch checkpoint nor a pickle"
    if "weights_only" in text or "Re-running" in text:
        return f"{type(exc).__name__} from the restricted unpickler"
    # torch's C++ checks end with a request to report them upstream; the check itself is the first part.
    line = re.sub(r"\s*\(Could this error message be improved\?.*", "", first_line(exc)).strip()
    name = type(exc).__name__
    return name if line in ("", name) else f"{name}: {line}"


def _normalise(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bring early SD 1.x files, saved with a transformers version whose CLIP had no ``text_model.`` level,
    to the key layout diffusers' CLIP converter expects."""
    old_clip = CLIP_PREFIX + "embeddings."
    if any(key.startswith(old_clip) for key in state):
        state = {
            (CLIP_PREFIX + "text_model." + key[len(CLIP_PREFIX) :] if key.startswith(CLIP_PREFIX) else key): value
            for key, value in state.items()
        }
    return state


# ---------------------------------------------------------------------------------------------- identifying
def reject_foreign(keys: list[str], path: Path) -> None:
    """Raise a named error if `keys` are not those of an original-format SD 1.x/2.x checkpoint.

    Decided from key names alone, so that a 12 GB FLUX file is turned away without reading its tensors.
    """
    if not keys:
        raise IncompatibleModelError(f"checkpoint {path} holds no tensors; it is not a Stable Diffusion checkpoint.")
    what = _foreign_kind(keys)
    if what is not None:
        raise IncompatibleModelError(
            f"checkpoint {path} is not a Stable Diffusion 1.x/2.x checkpoint: it looks like {what}. artshield needs "
            "a full SD 1.x/2.x checkpoint (UNet, VAE and text encoder, keys model.diffusion_model.*, "
            "first_stage_model.*, cond_stage_model.*), a diffusers folder, or a hub id."
        )


def _foreign_kind(keys: list[str]) -> str | None:
    """What a key list looks like, when it is not an SD 1.x/2.x checkpoint (None when it is)."""
    if any(key.startswith("conditioner.embedders.") for key in keys):
        return "an SDXL checkpoint (conditioner.embedders.*), which is not supported"
    if any(key.startswith(UNET_PREFIX + "label_emb.") for key in keys):
        return "an SDXL (or other class-conditioned) UNet, which is not supported"
    if _CONV_IN in keys:
        return None
    lowered = [key.lower() for key in keys]
    if any("lora" in key or ".hada_" in key or ".lokr_" in key or key.startswith("oft_") for key in lowered):
        return "a LoRA/LyCORIS adapter (apply it to its base model instead of loading it as a model)"
    if any(key.startswith(("string_to_param", "string_to_token")) or key in ("emb_params", "clip_l", "clip_g") for key in keys):
        return "a textual-inversion embedding"
    if any("double_blocks." in key or "single_blocks." in key for key in keys):
        return "a FLUX checkpoint, which is not supported"
    if any("joint_blocks." in key for key in keys):
        return "a Stable Diffusion 3 checkpoint, which is not supported"
    if any(key.startswith("control_model.") or "input_hint_block" in key or "controlnet_cond_embedding" in key for key in keys):
        return "a ControlNet, which is not supported as a model"
    if any(key.startswith(UNET_PREFIX) for key in keys):
        return "a diffusion model of another architecture (no SD UNet input block)"
    if any(key.startswith(("encoder.conv_in", "decoder.conv_out", VAE_PREFIX)) for key in keys):
        return "a standalone VAE"
    if any(key.startswith(("down_blocks.", "mid_block.", "conv_in.", "text_model.", "embeddings.", "encoder.layers.")) for key in keys):
        return "the weights of one diffusers component (pass the whole diffusers folder instead)"
    return f"something else (keys such as {', '.join(sorted(keys)[:3])})"


def checkpoint_kind(state: dict[str, torch.Tensor], path: Path) -> str:
    """``"v1"``, ``"v2"``, ``"inpainting"`` or ``"inpainting_v2"`` (diffusers' names for these kinds)."""
    if _CONV_IN not in state:  # reject_foreign saw the key, but it may not have been a tensor (pickles)
        raise IncompatibleModelError(f"checkpoint {path} has no UNet input weights ({_CONV_IN}).")
    in_channels = state[_CONV_IN].shape[1]
    if in_channels not in (4, 9):
        known = {8: " (an InstructPix2Pix model)", 7: " (the x4 upscaler)"}.get(in_channels, "")
        raise IncompatibleModelError(
            f"checkpoint {path}: its UNet takes {in_channels} input channels{known}; artshield supports 4 "
            "(text-to-image) and 9 (inpainting)."
        )
    # SD 2.x pairs an OpenCLIP text tower with 1024-dim cross-attention; SD 1.x a CLIP one with 768.
    is_v2 = any(key.startswith(OPEN_CLIP_PREFIX) for key in state) or _context_dim(state) == 1024
    if in_channels == 9:
        return "inpainting_v2" if is_v2 else "inpainting"
    return "v2" if is_v2 else "v1"


def _context_dim(state: dict[str, torch.Tensor]) -> int | None:
    """Width of the text features the UNet's cross-attention reads (768 for SD 1.x, 1024 for SD 2.x)."""
    for key, value in state.items():
        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight"):
            return int(value.shape[-1])
    return None


def _text_width(state: dict[str, torch.Tensor]) -> int | None:
    for key in (CLIP_PREFIX + "text_model.embeddings.token_embedding.weight", OPEN_CLIP_PREFIX + "token_embedding.weight"):
        if key in state:
            return int(state[key].shape[-1])
    return None


# ---------------------------------------------------------------------------------------------- configs
def resolve_config(config: str | os.PathLike | None, kind: str, path: Path) -> tuple[Path, str]:
    """A local folder holding the component configs, tokenizer and scheduler config, and its name for messages."""
    if config is not None:
        text = os.fspath(config)
        folder = Path(text).expanduser()
        if folder.is_dir():
            _require_config_files(folder, f"config folder {text}")
            return folder, text
        if folder.exists():
            raise IncompatibleModelError(
                f"config {text!r} is a file; pass a diffusers folder (with unet/, vae/, text_encoder/, tokenizer/, "
                "scheduler/) or a hub id of the same architecture. Original LDM .yaml configs are not supported."
            )
        if looks_like_hub_id(text):
            return fetch_hub_configs(text), text
        raise ModelNotFoundError(f"config {text!r}: no such folder, and not a hub id (owner/name).")

    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS

    repo = DIFFUSERS_DEFAULT_PIPELINE_PATHS[kind]["pretrained_model_name_or_path"]
    try:
        folder = fetch_hub_configs(repo)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"checkpoint {path} is a {KIND_NAMES[kind]} model, but the configs needed to rebuild it ({repo}) are not "
            "in the local Hugging Face cache and the hub cannot be reached. Pass config=FOLDER (--config FOLDER), a "
            f"diffusers folder of the same architecture (e.g. a saved copy of {repo}), or run once online so that "
            "its configs (a few KB, no weights) are cached."
        ) from exc
    if kind == "v2":
        # The file does not record its parameterisation; diffusers assumes the 768-px v-prediction model.
        logger.warning(
            "%s is an SD 2.x checkpoint: using the configs of %s (768 px, v-prediction). For a 512-px SD 2.x-base "
            "checkpoint pass config='stabilityai/stable-diffusion-2-1-base'.",
            path,
            repo,
        )
    return folder, f"{repo} (picked for this kind of checkpoint)"


def _require_config_files(folder: Path, where: str) -> None:
    missing = [rel for rel in FOLDER_LAYOUT.values() if not (folder / rel).exists()]
    if missing:
        raise IncompatibleModelError(
            f"{where} is not a diffusers Stable Diffusion folder: missing {', '.join(missing)}. Pass a folder saved "
            "by `pipeline.save_pretrained` (or a hub id) of the same architecture as the checkpoint."
        )


def fetch_hub_configs(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot of a hub repo's configs and tokenizer: from the cache, else downloaded (a few KB)
    when the hub can be reached. Raises ModelNotFoundError at once when it can be neither."""
    from huggingface_hub import snapshot_download

    where = f"config {repo_id!r}"
    try:
        cached = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_CONFIG_PATTERNS, local_files_only=True))
        _require_config_files(cached, where)
        return cached
    except Exception:  # not cached, or cached incompletely: try the hub below
        pass
    if not hub_online():
        raise ModelNotFoundError(
            f"{where} is not in the local Hugging Face cache and the hub cannot be reached; pass a local diffusers "
            "folder of the same architecture instead."
        )
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_CONFIG_PATTERNS))
    except Exception as exc:
        message = hub_error_message(repo_id, exc, what="config")
        if message:
            raise ModelNotFoundError(message) from exc
        if isinstance(exc, OSError):
            raise ModelNotFoundError(f"{where} could not be downloaded: {first_line(exc)}") from exc
        raise
    _require_config_files(folder, f"hub repo {repo_id!r}")
    return folder


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IncompatibleModelError(f"{path} is not readable JSON ({first_line(exc)}).") from exc


def _check_config_fits(state: dict[str, torch.Tensor], config_dir: Path, config_name: str, path: Path) -> None:
    """Compare the file with the configs before converting, so a wrong `config` gets a sentence, not a shape dump."""
    unet = _read_json(config_dir / "unet" / "config.json")
    in_channels = int(state[_CONV_IN].shape[1])
    if int(unet.get("in_channels", 4)) != in_channels:
        kinds = {9: "an inpainting", 4: "a text-to-image"}
        raise IncompatibleModelError(
            f"checkpoint {path} is {kinds[in_channels]} model ({in_channels} UNet input channels) but the config "
            f"{config_name} is for {unet.get('in_channels')}; pass config= a diffusers folder of "
            f"{kinds[in_channels]} model of the same family."
        )
    context = _context_dim(state)
    if context is not None and unet.get("cross_attention_dim") != context:
        family = {768: " (SD 1.x)", 1024: " (SD 2.x)"}
        raise IncompatibleModelError(
            f"checkpoint {path}'s UNet reads {context}-dim text features{family.get(context, '')} but the config "
            f"{config_name} has cross_attention_dim {unet.get('cross_attention_dim')}"
            f"{family.get(unet.get('cross_attention_dim'), '')}; pass config= a diffusers folder of the same family."
        )
    width = _text_width(state)
    text = _read_json(config_dir / "text_encoder" / "config.json")
    if width is not None and text.get("hidden_size") != width:
        raise IncompatibleModelError(
            f"checkpoint {path}'s text encoder is {width} wide but the config {config_name} describes one "
            f"{text.get('hidden_size')} wide; pass config= a diffusers folder of the same family."
        )


# ---------------------------------------------------------------------------------------------- building
class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _diffusers_warnings() -> Iterator[list[str]]:
    """Collect (without printing) the warnings of diffusers' single-file model loader, which reports
    checkpoint weights the config had no place for only as a log line."""
    log = logging.getLogger(_DIFFUSERS_LOGGER)
    handler = _Collect()
    saved = (log.level, log.propagate)
    log.setLevel(logging.WARNING)
    log.propagate = False
    log.addHandler(handler)
    try:
        yield handler.messages
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


def _require_complete(module: torch.nn.Module, label: str, config_name: str, path: Path) -> None:
    # diffusers leaves weights the file lacks on the meta device instead of failing.
    missing = [name for name, tensor in chain(module.named_parameters(), module.named_buffers()) if tensor.is_meta]
    if missing:
        raise IncompatibleModelError(
            f"checkpoint {path} lacks {len(missing)} {label} weights that the config {config_name} expects "
            f"(e.g. {', '.join(missing[:3])}); the config is of a different architecture."
        )


def _has_weights(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix in (".safetensors", ".bin") for p in folder.iterdir())


def _build_components(
    state: dict[str, torch.Tensor], config_dir: Path, config_name: str, path: Path, dtype: torch.dtype
) -> dict:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTokenizer

    common = {"config": str(config_dir), "torch_dtype": dtype, "local_files_only": True}
    where = f"checkpoint {path}"
    try:
        models = {}
        for name, cls, prefix, label in (
            ("unet", UNet2DConditionModel, UNET_PREFIX, "UNet"),
            ("vae", AutoencoderKL, VAE_PREFIX, "VAE"),
        ):
            if not any(key.startswith(prefix) for key in state):
                models[name] = _from_config_folder(cls, config_dir, name, label, prefix, path, config_name, dtype)
                continue
            with _diffusers_warnings() as warnings:
                model = cls.from_single_file(state, subfolder=name, **common)
            unused = [m for m in warnings if "were not used" in m]
            if unused:
                raise IncompatibleModelError(
                    f"{where} has {label} weights the config {config_name} has no place for; the config is of a "
                    "different architecture than the checkpoint."
                )
            _require_complete(model, label, config_name, path)
            models[name] = model
        if any(key.startswith(TEXT_PREFIX) for key in state):
            text_encoder = create_diffusers_clip_model_from_ldm(
                CLIPTextModel,
                state,
                subfolder="text_encoder",
                config=str(config_dir),
                torch_dtype=dtype,
                local_files_only=True,
            )
            _require_complete(text_encoder, "text-encoder", config_name, path)
        else:
            text_encoder = _from_config_folder(
                CLIPTextModel, config_dir, "text_encoder", "text-encoder", TEXT_PREFIX, path, config_name, dtype
            )
        tokenizer = CLIPTokenizer.from_pretrained(config_dir, subfolder="tokenizer", local_files_only=True)
        # Training noise always follows DDPM's forward process, whichever sampler the config names.
        scheduler = DDPMScheduler.from_pretrained(config_dir, subfolder="scheduler", local_files_only=True)
    except ModelLoadError:
        raise
    except (ValueError, RuntimeError, KeyError, IndexError, TypeError, OSError, AttributeError) as exc:
        raise IncompatibleModelError(f"{where} does not fit the config {config_name}: {_explain(exc)}") from exc
    except Exception as exc:  # diffusers' SingleFileComponentError derives from Exception only
        if type(exc).__name__ != "SingleFileComponentError":
            raise
        raise IncompatibleModelError(f"{where}: {first_line(exc)}") from exc
    check_components(models["unet"], text_encoder, models["vae"], where)
    return {
        "vae": models["vae"],
        "unet": models["unet"],
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def _explain(exc: BaseException) -> str:
    """diffusers' conversion errors, reworded for someone who passed the wrong `config` (its own advice is
    about overwriting weights with random ones, which is not what they want)."""
    text = str(exc)
    shape = re.search(r"because (\S+) expected shape (torch\.Size\(\[.*?\]\)), but got (torch\.Size\(\[.*?\]\))", text)
    if shape:
        return (
            f"its weight {shape.group(1)} has shape {shape.group(3)[11:-1]} where the config expects "
            f"{shape.group(2)[11:-1]}; the config is of a different architecture."
        )
    if "meta tensor" in text:
        return "the config expects weights the checkpoint lacks; the config is of a different architecture."
    return first_line(exc)


def _from_config_folder(cls, config_dir: Path, name: str, label: str, prefix: str, path: Path, config_name: str, dtype):
    """A component the file lacks (some checkpoints ship without their VAE), taken from the config folder."""
    if name == "unet" or not _has_weights(config_dir / name):
        raise IncompatibleModelError(
            f"checkpoint {path} has no {label} weights ({prefix}*) and the config {config_name} has none either; "
            f"pass config= a diffusers folder that includes {name}/ weights."
        )
    logger.warning("%s has no %s weights; using those of %s.", path, label, config_name)
    dtype_kwarg = transformers_dtype_kwarg() if name == "text_encoder" else "torch_dtype"
    return load_pretrained_model(
        cls, config_dir, name, f"config {config_name}", local_files_only=True, use_safetensors=True, **{dtype_kwarg: dtype}
    )


__all__ = ["load_single_file", "read_state_dict", "checkpoint_kind", "reject_foreign", "resolve_config"]
