"""Train the demo model from scratch on the procedural world, on a CPU, reproducibly from a seed.

    python -m artshield.models.demo.train --output-dir DIR [--architecture demo|tiny] [--seed 0]
        [--vae-steps N] [--unet-steps N] [--batch-size N] [--images-per-style N] [--threads N]

Phases (each timed into ``training_info.json``):

a. render the training set: ``--images-per-style`` images of each training style (the artist's style
   is held out), subjects in turn, with captions ``"a <subject> in <style> style"``;
b. learn the CLIP BPE tokenizer from the captions (and the artist's name, so that later LoRA prompts
   tokenise the same way);
c. build the Stable Diffusion components (:mod:`.architecture`);
d. train the VAE (L1 + gradient-L1 reconstruction + a small KL) on random crops — it is fully
   convolutional, and a 64 px crop costs a seventh of a 128 px image — on every style *including the
   artist's* (world v2: Stable Diffusion's VAE has seen all of art, so a mimic's ceiling is the UNet, not the
   decoder; in world v1 the VAE never saw the artist and decoded its swirls as purple blobs), then set its
   ``scaling_factor`` to 1 / std of the latents, as SD does;
e. cache the VAE posterior of every training image and train the UNet and the text encoder jointly
   with :meth:`DiffusionModel.training_loss` (10% of captions dropped to ``""`` so classifier-free
   guidance works), AdamW with warmup and cosine decay, plus an EMA of the weights;
f. fit the style metric (:mod:`artshield.models.demo.style`) on clean images and VAE reconstructions of
   all styles including the artist's, and measure it on held-out images (artist-vs-rest ROC AUC) and on
   images the trained model generates for every training-style prompt;
g. write the diffusers folder (VAE and UNet weights in fp16; the text encoder, 0.1 M parameters, in fp32
   holding fp16-rounded values, so that stock ``DiffusionPipeline.from_pretrained(folder)`` — which loads a
   transformers model in the dtype its config records — gets every component in fp32), ``style_metric/``
   and ``training_info.json`` into a staging folder next to ``--output-dir`` and swap it into place
   (:func:`artshield.fileio.publish_folder`).

The shipped weights (``artshield/models/demo/weights``) are one run of this script with its defaults.
Checkpoints go to ``--work-dir`` (default ``OUTPUT_DIR.partial``) every ``--checkpoint-every`` steps; the same
command run again resumes from them (drawing the random numbers an uninterrupted run would have drawn), and
they are deleted once the output is published.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...cli_support import ArgumentParser, non_negative_int, positive_int
from ...errors import InvalidArgumentError
from ...fileio import publish_folder, staging_folder, write_json_atomic
from .training import (
    CAPTION_DROPOUT,
    GUIDANCE_SCALE,
    SAMPLING_STEPS,
    PhaseCheckpoints,
    WorkFolder,
    cpu_settings,
    encode_posteriors,
    environment_info,
    folder_size,
    log,
    log_progress,
    round_to_fp16,
    run_script,
    save_grid,
    to_tensor,
)
from .world import ARTIST_STYLE, STYLES, SUBJECTS, caption, make_dataset

# Defaults sized for "about an hour and a half on two CPU cores" (2500 VAE steps, 1800 UNet steps; world v2 took
# 5557 s with half of each core taken by the host; training_info.json records the measured wall time).
DEFAULTS = {
    "demo": {"vae_steps": 2500, "unet_steps": 1800, "batch_size": 32, "vae_batch_size": 16, "images_per_style": 300},
    "tiny": {"vae_steps": 20, "unet_steps": 20, "batch_size": 8, "vae_batch_size": 8, "images_per_style": 6},
}
VAE_CROP = 64
WORLD_VERSION = 2  # 1: the VAE never saw the artist either; 2: it saw every style (see the module docstring)
VAE_ARTIST_SEED_OFFSET = 3  # the dataset seeds 0, 1 and 2 (for --seed 0) are the UNet's, the metric fit and evaluation
VAE_LR, UNET_LR = 6e-4, 5e-4
KL_WEIGHT = 1e-6
METRIC_PER_STYLE, EVAL_PER_STYLE, GEN_PER_SUBJECT = 60, 30, 2

#: How the weights are stored (the text encoder is tiny; fp32 keeps stock diffusers loading every part in fp32).
WEIGHTS_DTYPE = {"vae": "float16", "unet": "float16", "text_encoder": "float32 (fp16-rounded values)"}

NOTE = (
    "A ~7M-parameter Stable Diffusion-architecture model trained for minutes on a CPU on a procedural world of "
    "simple shapes (circle, square, triangle, house, tree, star) in seven named styles; a held-out eighth style "
    "(the 'artist') is absent from its training set. It CAN show that every code path (encode, decode, "
    "prompting, training loss, text-to-image, img2img, LoRA fine-tuning) runs end to end offline, and how methods "
    "compare on this world: the style metric measures whether LoRA mimicry of the artist's style succeeds and how "
    "much a protection spoils it. It CANNOT show how a protection fares against real Stable Diffusion checkpoints "
    "on real artwork: its VAE, UNet and text encoder are tiny, its samples are blurry, and its notion of 'style' "
    "is a handful of colour and texture statistics. Use a real SD 1.x/2.x checkpoint for real protection."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m artshield.models.demo.train",
        description="Train the artshield demo model (Stable Diffusion architecture) on its procedural world.",
    )
    parser.add_argument("--output-dir", required=True, help="folder to write (replaced atomically if it exists)")
    parser.add_argument("--architecture", default="demo", choices=sorted(DEFAULTS))
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--vae-steps", type=non_negative_int, default=None)
    parser.add_argument("--unet-steps", type=non_negative_int, default=None)
    parser.add_argument("--batch-size", type=positive_int, default=None, help="UNet batch size")
    parser.add_argument("--vae-batch-size", type=positive_int, default=None)
    parser.add_argument("--images-per-style", type=positive_int, default=None)
    parser.add_argument("--world", type=int, choices=(1, 2), default=WORLD_VERSION,
                        help="2 (default): the VAE learns every style, the artist's included; 1: it never sees the "
                             "artist either (the first shipped weights, made with --vae-steps 800)")
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="torch CPU threads (results depend on it slightly)")
    parser.add_argument("--samples-png", default=None, help="also save a grid of generated samples here")
    parser.add_argument("--work-dir", default=None,
                        help="checkpoints of an unfinished run (default: OUTPUT_DIR.partial beside the output); "
                             "rerunning the same command resumes from them, and they are deleted once the "
                             "output is written")
    parser.add_argument("--checkpoint-every", type=positive_int, default=250, help="steps between checkpoints")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.architecture].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# ----------------------------------------------------------------------------------- phases
def train_vae(vae, images: torch.Tensor, args, generator: torch.Generator,
              checkpoints: PhaseCheckpoints | None = None) -> list[float]:
    """Reconstruction (L1 on pixels and on Sobel gradients, which keeps textures crisp) + a small KL."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    crop = min(VAE_CROP, images.shape[-1])
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=VAE_LR, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, min(50, args.vae_steps // 10 + 1), max(args.vae_steps, 1))
    objects = {"vae": vae, "optimizer": optimizer, "schedule": schedule}
    checkpoints = checkpoints or PhaseCheckpoints(None, "vae", 1)
    first, losses = checkpoints.restore(objects, generator)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4.0
    kernels = torch.stack([sobel, sobel.T])[:, None].repeat(3, 1, 1, 1)  # (6, 1, 3, 3), grouped per channel
    start = time.time()
    for step in range(first, args.vae_steps):
        index = torch.randint(0, images.shape[0], (args.vae_batch_size,), generator=generator)
        top, left = (int(v) for v in torch.randint(0, images.shape[-1] - crop + 1, (2,), generator=generator))
        x = images[index, :, top : top + crop, left : left + crop] * 2.0 - 1.0
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        y = vae.decode(z).sample
        grad_x, grad_y = F.conv2d(x, kernels, groups=3), F.conv2d(y, kernels, groups=3)
        recon = (y - x).abs().mean() + 0.5 * (grad_y - grad_x).abs().mean()
        loss = recon + KL_WEIGHT * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(recon.detach()))
        log_progress("vae", step, args.vae_steps, losses, start, what="recon", first=first)
        checkpoints.step_done(step + 1, args.vae_steps, objects, generator, losses)
    vae.eval().requires_grad_(False)
    return losses


def train_unet(model, means, stds, captions: list[str], args, generator: torch.Generator,
               checkpoints: PhaseCheckpoints | None = None) -> list[float]:
    """UNet + text encoder on cached latents with caption dropout; returns per-step losses."""
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    params = [*model.unet.parameters(), *model.text_encoder.parameters()]
    for module in (model.unet, model.text_encoder):
        module.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=UNET_LR, weight_decay=1e-2)
    warmup = min(100, args.unet_steps // 10 + 1)
    schedule = get_cosine_schedule_with_warmup(optimizer, warmup, max(args.unet_steps, 1))
    ema = EMAModel(params, decay=0.999, use_ema_warmup=True, power=2 / 3)
    objects = {"unet": model.unet, "text_encoder": model.text_encoder, "optimizer": optimizer,
               "schedule": schedule, "ema": ema}
    checkpoints = checkpoints or PhaseCheckpoints(None, "unet", 1)
    first, losses = checkpoints.restore(objects, generator)
    start = time.time()
    for step in range(first, args.unet_steps):
        index = torch.randint(0, means.shape[0], (args.batch_size,), generator=generator)
        latents = model.scale_latents(means[index] + stds[index] * torch.randn(means[index].shape, generator=generator))
        drop = torch.rand(args.batch_size, generator=generator) < CAPTION_DROPOUT
        prompts = ["" if d else captions[i] for d, i in zip(drop.tolist(), index.tolist(), strict=True)]
        embeds = model.encode_prompt_uncached(prompts)
        loss = model.training_loss(latents, embeds, generator=generator).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        ema.step(params)
        losses.append(float(loss.detach()))
        log_progress("unet", step, args.unet_steps, losses, start, first=first)
        checkpoints.step_done(step + 1, args.unet_steps, objects, generator, losses)
    if args.unet_steps:
        ema.copy_to(params)
    for module in (model.unet, model.text_encoder):
        module.eval().requires_grad_(False)
    model.clear_prompt_cache()
    return losses


@torch.no_grad()
def reconstruct(model, images: torch.Tensor, seed: int, batch: int = 32) -> torch.Tensor:
    """VAE round trip (posterior sample, as fine-tuning sees it) of images in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    out = [model.decode(model.encode(images[i : i + batch], "sample", generator)) for i in range(0, len(images), batch)]
    return torch.cat(out)


@torch.no_grad()
def generate(model, prompts: list[str], resolution: int, seed: int) -> torch.Tensor:
    """Text-to-image with DDIM and classifier-free guidance; float (B, 3, H, W) in [0, 1]."""
    pipe = model.pipeline("text2img")
    generator = torch.Generator().manual_seed(seed)
    result = pipe(
        prompt=prompts,
        height=resolution,
        width=resolution,
        num_inference_steps=SAMPLING_STEPS,
        guidance_scale=GUIDANCE_SCALE,
        generator=generator,
        output_type="pt",
    )
    return result.images.float().clamp(0.0, 1.0)


def recipe(args: argparse.Namespace) -> dict:
    """The settings that decide a run's result (what a work folder must match to be resumed)."""
    keys = ("architecture", "world", "seed", "vae_steps", "unet_steps", "batch_size", "vae_batch_size", "images_per_style",
            "threads")
    return {"script": "artshield.models.demo.train", **{k: getattr(args, k) for k in keys}}


@torch.no_grad()
def round_trip_psnr(model, images: torch.Tensor, labels: list[str]) -> dict[str, float]:
    """PSNR (dB) of the VAE round trip through the posterior mean, per style: what the decoder can give back."""
    from ...metrics import finite_psnr

    recon = torch.cat([model.decode(model.encode(images[i : i + 32], "mean")) for i in range(0, len(images), 32)])
    psnr = finite_psnr(recon.clamp(0, 1), images)
    names = np.array(labels)
    return {style: round(float(psnr[torch.from_numpy(names == style)].mean()), 2) for style in dict.fromkeys(labels)}


def artist_auc(metric, images: torch.Tensor, labels: list[str]) -> float:
    from ...stats import roc_auc

    with torch.no_grad():
        scores = torch.cat([metric.artist_score(images[i : i + 64]) for i in range(0, len(images), 64)]).numpy()
    is_artist = np.array(labels) == ARTIST_STYLE
    return roc_auc(scores[is_artist], scores[~is_artist])


def accuracy(metric, images: torch.Tensor, labels: list[str]) -> float:
    return float(np.mean(np.array(metric.predict(images)) == np.array(labels)))


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------- main
def train(args: argparse.Namespace) -> dict:
    """Run every phase and write the output folder; returns the training info. The process-wide torch
    settings it changes (threads, flushing denormals) are restored afterwards."""
    with cpu_settings(args.threads):
        return _train(args)


def _train(args: argparse.Namespace) -> dict:
    from ..components import quiet_loading
    from ..handle import DiffusionModel
    from .architecture import ARCHITECTURES, build_components, save_components
    from .style import StyleMetric
    from .tokenizer import build_tokenizer
    from .world import ALL_STYLES

    torch.manual_seed(args.seed)
    arch = ARCHITECTURES[args.architecture]
    resolution = arch["resolution"]
    output = Path(args.output_dir).expanduser().resolve()
    if output.exists() and not output.is_dir():
        raise InvalidArgumentError(f"--output-dir {output} exists and is not a folder.")
    output.parent.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    started = time.time()

    # (a) data
    tick = time.time()
    images_np, captions, _ = make_dataset(args.images_per_style, STYLES, (resolution, resolution), seed=args.seed)
    images = to_tensor(images_np)
    seconds["dataset"] = time.time() - tick
    log(f"rendered {len(images)} training images of {len(STYLES)} styles at {resolution} px ({seconds['dataset']:.1f} s)")

    # (b, c) tokenizer and components
    tick = time.time()
    corpus = [*sorted(set(captions)), *(caption(ARTIST_STYLE, subject) for subject in SUBJECTS)]
    tokenizer = build_tokenizer(corpus)
    components = build_components(args.architecture, tokenizer, seed=args.seed)
    model = DiffusionModel(**components, source=str(output))
    seconds["build"] = time.time() - tick
    params = {name: count(components[name]) for name in ("vae", "unet", "text_encoder")}
    log(f"tokenizer: {len(tokenizer)} tokens; parameters: {params}")

    # (d) VAE, on every style including the artist's (Stable Diffusion's VAE has seen all of art; only the UNet
    # and the text encoder — what a mimic fine-tunes — never see the artist). Its artist images are rendered
    # from their own seed, apart from any image a mimic or a proof uses.
    tick = time.time()
    work = WorkFolder(Path(args.work_dir) if args.work_dir else output.with_name(output.name + ".partial"),
                      recipe(args))
    generator = torch.Generator().manual_seed(args.seed)
    vae_done = work.load("vae-done")
    if vae_done is None:
        vae_images = images
        if args.world >= 2:
            artist_np, _, _ = make_dataset(args.images_per_style, (ARTIST_STYLE,), (resolution, resolution),
                                           seed=args.seed + VAE_ARTIST_SEED_OFFSET)
            vae_images = torch.cat([images, to_tensor(artist_np)])
        vae_losses = train_vae(model.vae, vae_images, args, generator,
                               PhaseCheckpoints(work, "vae", args.checkpoint_every))
        round_to_fp16(model.vae)
        means, stds = encode_posteriors(model.vae, images)
        latent_std = float((means + stds * torch.randn(means.shape, generator=generator)).std())
        model.vae.register_to_config(scaling_factor=1.0 / latent_std)
        work.save("vae-done", {"vae": model.vae.state_dict(), "losses": vae_losses, "latent_std": latent_std,
                               "generator": generator.get_state()})
    else:
        model.vae.load_state_dict(vae_done["vae"])
        vae_losses, latent_std = list(vae_done["losses"]), float(vae_done["latent_std"])
        model.vae.register_to_config(scaling_factor=1.0 / latent_std)
        generator.set_state(vae_done["generator"])
        means, stds = encode_posteriors(model.vae, images)
        log(f"vae: resumed the finished phase from {work.folder}")
    seconds["vae"] = time.time() - tick
    log(f"vae done: latent std {latent_std:.3f} -> scaling_factor {1.0 / latent_std:.4f} ({seconds['vae']:.0f} s)")

    # (e) UNet + text encoder
    tick = time.time()
    unet_losses = train_unet(model, means, stds, captions, args, generator,
                             PhaseCheckpoints(work, "unet", args.checkpoint_every))
    round_to_fp16(model.unet, model.text_encoder)
    seconds["unet"] = time.time() - tick
    log(f"unet done ({seconds['unet']:.0f} s)")

    # (f) style metric: fit on clean + reconstructed images of every style, evaluate on held-out ones.
    tick = time.time()
    per_style = max(2, min(METRIC_PER_STYLE, args.images_per_style * 2))
    fit_np, _, fit_labels = make_dataset(per_style, ALL_STYLES, (resolution, resolution), seed=args.seed + 1)
    eval_np, _, eval_labels = make_dataset(max(2, per_style // 2), ALL_STYLES, (resolution, resolution),
                                           seed=args.seed + 2)
    fit_images, eval_images = to_tensor(fit_np), to_tensor(eval_np)
    fit_recon = reconstruct(model, fit_images, args.seed + 1)
    eval_recon = reconstruct(model, eval_images, args.seed + 2)
    metric = StyleMetric.fit(torch.cat([fit_images, fit_recon]), fit_labels * 2, seed=args.seed)
    evaluation = {
        "auc_artist_clean": artist_auc(metric, eval_images, eval_labels),
        "auc_artist_vae_reconstructed": artist_auc(metric, eval_recon, eval_labels),
        "style_accuracy_clean": accuracy(metric, eval_images, eval_labels),
        "style_accuracy_vae_reconstructed": accuracy(metric, eval_recon, eval_labels),
        "vae_reconstruction_l1": float((eval_recon - eval_images).abs().mean()),
        "vae_round_trip_psnr_db": round_trip_psnr(model, eval_images, eval_labels),
        "n_eval_images": len(eval_labels),
    }
    # Generation: every training style x every subject, GEN_PER_SUBJECT seeds each.
    generated, gen_labels, per_style_accuracy = [], [], {}
    for k, style in enumerate(STYLES):
        prompts = [caption(style, subject) for subject in SUBJECTS] * GEN_PER_SUBJECT
        batch = generate(model, prompts, resolution, seed=args.seed + 100 + k)
        generated.append(batch)
        gen_labels += [style] * len(prompts)
        per_style_accuracy[style] = accuracy(metric, batch, [style] * len(prompts))
    artist_prompts = [caption(ARTIST_STYLE, subject) for subject in SUBJECTS] * GEN_PER_SUBJECT
    artist_batch = generate(model, artist_prompts, resolution, seed=args.seed + 99)
    generated_all = torch.cat(generated)
    with torch.no_grad():
        artist_on_artist_prompts = float(metric.artist_score(artist_batch).mean())
        artist_on_style_prompts = float(metric.artist_score(generated_all).mean())
    evaluation.update(
        {
            "generation_style_accuracy": accuracy(metric, generated_all, gen_labels),
            "generation_style_accuracy_per_style": per_style_accuracy,
            "generation_artist_score_on_artist_prompts": artist_on_artist_prompts,
            "generation_artist_score_on_training_style_prompts": artist_on_style_prompts,
            "generation": {"sampler": "DDIM", "steps": SAMPLING_STEPS, "guidance_scale": GUIDANCE_SCALE,
                           "images_per_style": len(SUBJECTS) * GEN_PER_SUBJECT},
        }
    )
    seconds["evaluation"] = time.time() - tick
    log("evaluation: " + json.dumps({k: v for k, v in evaluation.items() if not isinstance(v, dict)}))
    log("generation accuracy per style: " + json.dumps(per_style_accuracy))
    if args.samples_png:
        columns = len(SUBJECTS)
        rows = [g[:columns] for g in generated] + [artist_batch[:columns]]
        save_grid(torch.cat(rows), columns, args.samples_png)
        log(f"samples grid written to {args.samples_png}")

    # (g) write into a staging folder beside the output, then swap it into place.
    tick = time.time()
    with staging_folder(output) as staged:
        # VAE and UNet in fp16 halves the files (loading with torch_dtype=float32 upcasts exactly). The text
        # encoder stays fp32 (its values rounded to fp16 above): transformers loads a model in the dtype its config
        # records, and stock diffusers users expect every component in one dtype.
        with quiet_loading():  # diffusers warns that casting with .to() may differ from torch_dtype=
            for module in (model.vae, model.unet):
                module.to(torch.float16)
            save_components({**components, "vae": model.vae, "unet": model.unet, "text_encoder": model.text_encoder},
                            str(staged))
        metric.save(staged / "style_metric")
        seconds["save"] = time.time() - tick
        seconds["total"] = time.time() - started
        info = {
            "architecture": args.architecture,
            "world_version": args.world,
            "resolution": resolution,
            "seed": args.seed,
            "threads": args.threads,
            "vae_steps": args.vae_steps,
            "vae_batch_size": args.vae_batch_size,
            "vae_crop": min(VAE_CROP, resolution),
            "unet_steps": args.unet_steps,
            "batch_size": args.batch_size,
            "images_per_style": args.images_per_style,
            "training_styles": list(STYLES),
            "vae_styles": [*STYLES, ARTIST_STYLE] if args.world >= 2 else list(STYLES),
            "vae_artist_dataset_seed": args.seed + VAE_ARTIST_SEED_OFFSET if args.world >= 2 else None,
            "artist_style": ARTIST_STYLE,
            "subjects": list(SUBJECTS),
            "caption_template": "a <subject> in <style> style",
            "caption_dropout": CAPTION_DROPOUT,
            "learning_rates": {"vae": VAE_LR, "unet_and_text_encoder": UNET_LR},
            "kl_weight": KL_WEIGHT,
            "vae_scaling_factor": float(model.vae.config.scaling_factor),
            "parameters": params,
            "weights_dtype": WEIGHTS_DTYPE,
            "final_losses": {
                "vae_reconstruction": float(np.mean(vae_losses[-50:])) if vae_losses else None,
                "unet": float(np.mean(unet_losses[-100:])) if unet_losses else None,
            },
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "evaluation": evaluation,
            "style_metric": metric.info,
            **environment_info("artshield.models.demo.train", args),
            "note": NOTE,
        }
        write_json_atomic(staged / "training_info.json", info, what="training info")
        info["size_bytes"] = folder_size(staged)  # the JSON's own size changes by a few digits at most
        write_json_atomic(staged / "training_info.json", info, what="training info")
        publish_folder(staged, output)
    work.remove()
    log(f"wrote {output} ({info['size_bytes'] / 1e6:.1f} MB) in {seconds['total']:.0f} s total")
    return info


def main(argv: list[str] | None = None) -> int:
    return run_script("artshield.models.demo.train", train, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["DEFAULTS", "main", "parse_args", "train"]
