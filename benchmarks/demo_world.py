"""What the demo world's model can give back: the VAE round trip per style, and whether the inpainting twin
fills a hole from its surroundings.

* **VAE round trip** — fresh renders of every style, the artist's included (``--per-style``, seed ``--seed``,
  never seen in training), encoded to the posterior mean and decoded; PSNR per image, reported per style as
  mean [95 % bootstrap interval over images]. A mimic fine-tunes the UNet, and the UNet can only reach what the
  decoder can draw: if the artist's images do not survive the round trip, no mimic can copy the artist.
* **Inpainting** — held-out renders of the training styles with random partial masks (the training script's
  mask generator, its own seed), repainted by ``StableDiffusionInpaintPipeline`` (DDIM, CFG 5) with
  ``demo-inpaint``: PSNR inside the masked region for the trained UNet with the caption, for the same UNet
  with an empty caption (the surroundings alone), and for the *prompt-only baseline* — the base text-to-image
  model (``--model``) with ``conv_in`` widened by zero weights, i.e. the twin before its training, told only
  the caption — plus the VAE round trip as the ceiling. With an empty prompt the twin is compared with the
  *no-information baseline*, the same base model told nothing. Intervals are paired bootstraps over images of
  the difference to the baseline told the same prompt. The same PSNR at a quarter of the size (average-pooled) says whether a fill has the right
  colours and shapes, which the full-size PSNR hides under texture no fill copies pixel for pixel. Both demo
  judges also say which style each fill is in: the share that matches the masked image's style shows whether
  the surroundings, not only the caption, steer the fill.
* **How attackable the encoder is** — PhotoGuard's encoder attack (push the latent towards a grey image's) at
  ``--attack-strength`` (default medium, 8/255) on ``--attack-images`` artist renders: the latent's relative
  move ‖E(x′) − E(x)‖ / ‖E(x)‖, and the PSNR between what the decoder makes of the protected and of the clean
  image (high = the decoder still draws the same picture). SDEdit and inpainting mimics see an image only
  through this encoder: where an 8/255 perturbation cannot move what it decodes to, no protection can spoil
  them (Stable Diffusion's VAE, by contrast, decodes PhotoGuard's images as grey).
* **How far DiffusionGuard's objective can move on the twin** — on the same artist renders, with
  DiffusionGuard's own mask (a centred ellipse kept, its surroundings editable), timestep and empty prompt, the
  objective ‖ε_θ([z_T, m, E(x ⊙ (1 − m))], t₀, "")‖ averaged over ``--objective-draws`` fixed noise draws z_T:
  how much of the prediction the masked-image latents decide (the prediction's relative change when another
  image's latents are put in their place), the objective's change under DiffusionGuard itself (pixels,
  ``--attack-strength``, through the encoder), and under an attack on the masked-image latents themselves
  (the perturbation engine, L2 radius a fraction of the latents' norm: the shift the encoder attack above
  reached, and ``--latent-radius``). If even the latent attack barely moves it, the twin's UNet, not its VAE,
  is what leaves DiffusionGuard nothing to inflate.

Writes ``benchmarks/results/demo_world.json`` and a montage ``demo_world.png`` (per style: renders over their
round trips; then masked inputs, and the fills of the prompt-only baseline, the twin, the no-information
baseline and the twin with an empty prompt); ``benchmarks/render_readme.py`` renders the
README's table from the JSON.

    python benchmarks/demo_world.py [--model demo] [--label NAME] [--per-style 12] [--seed 4242]
        [--inpaint-per-style 6] [--attack-images 8] [--attack-strength medium] [--objective-draws 16]
        [--latent-radius 0.5] [--threads 2]
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from artshield.cli_support import ArgumentParser, non_negative_int, positive_float, positive_int  # noqa: E402
from artshield.fileio import write_json_atomic  # noqa: E402
from artshield.metrics import finite_psnr  # noqa: E402
from artshield.stats import mean_interval  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COARSE = 4  # the inpainting fills are also compared at 1/COARSE of their size (average-pooled)


def psnr_per_image(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> np.ndarray:
    """PSNR (dB, images in [0, 1]) of each image, over the pixels where `weight` is 1 (all when None)."""
    if weight is None:
        return finite_psnr(a, b).numpy()
    weight = weight.expand_as(a)
    mse = ((a - b).square() * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1.0)
    return (10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))).numpy()


def interval(values: np.ndarray, seed: int) -> dict:
    return mean_interval(values, seed=seed, digits=2)


def round_trips(model, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.decode(model.encode(images[i : i + batch], "mean")).clamp(0, 1)
                          for i in range(0, len(images), batch)])


def inpaint(model, images, masks, prompts, steps: int, seed: int) -> torch.Tensor:
    pipe = model.pipeline("inpaint")
    with torch.no_grad():
        result = pipe(prompt=prompts, image=images, mask_image=masks, height=images.shape[-2], width=images.shape[-1],
                      num_inference_steps=steps, guidance_scale=5.0, generator=torch.Generator().manual_seed(seed),
                      output_type="pt")
    return result.images.float().clamp(0.0, 1.0)


def prompt_only(base, twin):
    """The text-to-image `base` as an inpainting model that ignores its condition (``conv_in`` widened with zero
    weights: the twin before its training), with the twin's other components: the base model told only the
    caption. Not the trained twin with its condition channels zeroed: the longer the twin trains, the more its
    other weights expect the condition, so that baseline weakens as the twin improves (6000 steps: 11.6 dB with
    the caption against 12.5 dB after 3000) and flatters it."""
    from artshield.models.demo.train_inpaint import inpainting_unet
    from artshield.models.handle import DiffusionModel

    return DiffusionModel(vae=twin.vae, unet=inpainting_unet(base.unet), text_encoder=twin.text_encoder,
                          tokenizer=twin.tokenizer, scheduler=twin.scheduler, source="prompt-only baseline")


def encoder_attack(model, images: torch.Tensor, strength: str, steps: int, seed: int) -> dict:
    """PhotoGuard's encoder attack on `images`: how far it moves their latents, and what the decoder then draws."""
    from artshield.protect import PhotoGuard

    protected = PhotoGuard.from_strength(model, strength, steps=steps, seed=seed)(images)
    with torch.no_grad():
        clean_latents, protected_latents = model.encode(images, "mean"), model.encode(protected, "mean")
        shift = ((protected_latents - clean_latents).flatten(1).norm(dim=1) / clean_latents.flatten(1).norm(dim=1))
        decoded_change = psnr_per_image(model.decode(protected_latents).clamp(0, 1), model.decode(clean_latents).clamp(0, 1))
    return {"method": "photoguard", "strength": strength, "steps": steps, "images": len(images),
            "latent_relative_shift": interval(shift.numpy(), seed),
            "decoded_psnr_protected_vs_clean_db": interval(decoded_change, seed),
            "image_psnr_protected_vs_clean_db": interval(psnr_per_image(protected, images), seed)}  # fmt: skip


def diffusionguard_headroom(twin, images: torch.Tensor, args, latent_shift: float) -> dict:
    """How far DiffusionGuard's objective on `twin` moves: the masked-image latents' share of the prediction, and
    the objective before/after DiffusionGuard's pixel attack and an L2 attack on the latents themselves."""
    from artshield.engine import Perturber
    from artshield.protect import DiffusionGuard

    guard = DiffusionGuard.from_strength(twin, args.attack_strength, steps=args.attack_steps, seed=args.seed)
    mask = guard.default_mask(images)
    timesteps = torch.full((len(images),), guard.first_timestep, dtype=torch.long)
    embeds = twin.embed_prompt(guard.prompt, batch_size=len(images))
    with torch.no_grad():
        condition = twin.inpaint_condition(images, mask, mode="mean")
    noise = torch.randn(args.objective_draws, *condition[:, 1:].shape,
                        generator=torch.Generator().manual_seed(args.seed)) * guard.init_noise_sigma

    def predictions(masked_latents: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        full = torch.cat([condition[:, :1], masked_latents], dim=1)
        return torch.stack([twin.predict_noise(z, timesteps, embeds, inpaint_condition=full) for z in draws])

    def objective_of(masked_latents: torch.Tensor) -> np.ndarray:  # (B,), mean over the fixed draws
        with torch.no_grad():
            return predictions(masked_latents, noise).flatten(2).norm(dim=2).mean(0).numpy()

    latents = condition[:, 1:]
    share = None
    if len(images) > 1:  # each image's latents replaced by the next image's
        with torch.no_grad():
            own, swapped = predictions(latents, noise[:4]), predictions(latents.roll(1, dims=0), noise[:4])
        share = interval(((own - swapped).flatten(2).norm(dim=2) / own.flatten(2).norm(dim=2)).mean(0).numpy(), args.seed)
    before = objective_of(latents)

    protected = guard(images, mask=mask)
    with torch.no_grad():
        pixel_after = objective_of(twin.inpaint_condition(protected, mask, mode="mean")[:, 1:])

    # The engine perturbs the latents in units of their own norm, so one L2 radius is one relative shift for all.
    norms = latents.flatten(1).norm(dim=1).view(-1, 1, 1, 1)

    def latent_objective(unit: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        z = torch.randn(unit.shape, generator=gen) * guard.init_noise_sigma
        full = torch.cat([condition[:, :1], unit * norms], dim=1)
        return twin.predict_noise(z, timesteps, embeds, inpaint_condition=full).flatten(1).norm(dim=1)

    latent_attacks = {}
    for radius in sorted({round(latent_shift, 3), args.latent_radius}):
        engine = Perturber(eps=radius, norm="l2", steps=args.attack_steps, bounds=None, seed=args.seed)
        unit = engine.run(latent_objective, (latents / norms).contiguous()).images
        after = objective_of(unit * norms)
        latent_attacks[f"{radius:g}"] = interval(100 * (after / before - 1), args.seed)
    return {"timestep": guard.first_timestep, "noise_draws": args.objective_draws, "images": len(images),
            "mask": "centre ellipse kept, surroundings editable (DiffusionGuard's default)",
            "objective": interval(before, args.seed),
            "masked_latents_share_of_prediction": share,
            "diffusionguard_pixel_attack_change_pct": interval(100 * (pixel_after / before - 1), args.seed),
            "latent_attack_change_pct_by_relative_radius": latent_attacks}  # fmt: skip


def style_agreement(fills: dict[str, torch.Tensor], styles: list[str], seed: int) -> dict:
    """Share of each fill's images that both demo judges (the style metric: colour and texture statistics; the
    structure judge: luminance structure) assign to the style of the image that was masked. The pipeline
    redraws the whole image, so with an empty prompt this says whether the surroundings steer the style."""
    from artshield.models.demo.judge import StructureJudge
    from artshield.models.demo.style import StyleMetric

    metric, judge = StyleMetric.load_default(), StructureJudge.load_default()
    truth = np.array(styles)
    agreement = {}
    for label, images in fills.items():
        with torch.no_grad():
            structure = [judge.styles[i] for i in judge.logits(images).argmax(dim=1).tolist()]
        agreement[label] = {"style_metric": interval((np.array(metric.predict(images)) == truth).astype(float), seed),
                            "structure_judge": interval((np.array(structure) == truth).astype(float), seed)}
    return agreement


def save_montage(rows: list[torch.Tensor], path: Path) -> None:
    from PIL import Image

    width = max(r.shape[0] for r in rows)
    size = rows[0].shape[-1]
    canvas = torch.ones(len(rows), width, 3, size, size)
    for i, row in enumerate(rows):
        canvas[i, : row.shape[0]] = row
    grid = canvas.permute(0, 3, 1, 4, 2).reshape(len(rows) * size, width * size, 3)
    Image.fromarray((grid.numpy() * 255 + 0.5).astype(np.uint8)).save(path)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="demo_world.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo", help="the text-to-image model (default: demo)")
    parser.add_argument("--label", help="what to call the model in the results (default: --model)")
    parser.add_argument("--inpaint-model", default="demo-inpaint", help="its inpainting twin (default: demo-inpaint)")
    parser.add_argument("--per-style", type=positive_int, default=12, help="renders per style for the round trip")
    parser.add_argument("--inpaint-per-style", type=non_negative_int, default=6,
                        help="held-out renders per training style for the inpainting check (0: skip it)")
    parser.add_argument("--attack-images", type=non_negative_int, default=8,
                        help="artist renders for the encoder-attack check (0: skip it)")
    parser.add_argument("--attack-strength", choices=("low", "medium", "high"), default="medium")
    parser.add_argument("--attack-steps", type=positive_int, default=100, help="steps of the encoder attack (default 100)")
    parser.add_argument("--objective-draws", type=positive_int, default=16,
                        help="fixed noise draws DiffusionGuard's objective is averaged over (default 16)")
    parser.add_argument("--latent-radius", type=positive_float, default=0.5,
                        help="a second L2 radius, relative to the latents' norm, for the latent-space attack (default 0.5)")
    parser.add_argument("--sampling-steps", type=positive_int, default=20)
    parser.add_argument("--seed", type=int, default=4242, help="render seed, unseen in training (default 4242)")
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--output", default=str(RESULTS / "demo_world.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()

    from artshield.models import load
    from artshield.models.demo.train_inpaint import random_masks
    from artshield.models.demo.world import ALL_STYLES, ARTIST_STYLE, STYLES, make_dataset
    from artshield.models.handle import DiffusionModel

    model = load(args.model, device="cpu", dtype="fp32")
    size = model.native_resolution
    images_np, _, labels = make_dataset(args.per_style, ALL_STYLES, (size, size), seed=args.seed)
    images = torch.from_numpy(images_np).permute(0, 3, 1, 2).float() / 255.0
    recon = round_trips(model, images)
    values = psnr_per_image(recon, images)
    names = np.array(labels)
    per_style = {style: interval(values[names == style], args.seed) for style in ALL_STYLES}
    others = np.array([per_style[s]["mean"] for s in STYLES])
    vae = {"per_style": per_style, "training_styles_mean": round(float(others.mean()), 2),
           "artist_minus_training_mean": round(per_style[ARTIST_STYLE]["mean"] - float(others.mean()), 2)}
    print("VAE round trip PSNR (dB): " + ", ".join(f"{s} {v['mean']:.1f}" for s, v in per_style.items())
          + f"; artist - training mean {vae['artist_minus_training_mean']:+.2f}")
    montage = []
    for style in ALL_STYLES:
        index = np.flatnonzero(names == style)[:4]
        montage.append(torch.cat([torch.stack([images[i], recon[i]]) for i in index]))

    result = {"benchmark": "demo_world", "model": args.label or args.model, "artist": ARTIST_STYLE, "size": size,
              "seed": args.seed, "torch": torch.__version__, "machine": f"{platform.machine()} {platform.system()}",
              "threads": torch.get_num_threads(), "vae_round_trip_psnr_db": vae}  # fmt: skip
    if args.attack_images:
        artist = images[names == ARTIST_STYLE][: args.attack_images]
        result["encoder_attack"] = attack = encoder_attack(model, artist, args.attack_strength, args.attack_steps, args.seed)
        print(f"encoder attack ({args.attack_strength}): latent moves {attack['latent_relative_shift']['mean']:.3f} "
              f"(relative), decoded picture changes to {attack['decoded_psnr_protected_vs_clean_db']['mean']:.1f} dB PSNR")
    if args.inpaint_per_style or args.attack_images:
        twin = load(args.inpaint_model, device="cpu", dtype="fp32")
    if args.attack_images:
        shift = attack["latent_relative_shift"]["mean"]
        result["diffusionguard_headroom"] = room = diffusionguard_headroom(twin, artist, args, shift)
        share = room["masked_latents_share_of_prediction"]
        print(f"DiffusionGuard on the twin: masked-image latents decide {share['mean'] if share else float('nan'):.2f} "
              f"of the prediction; objective {room['diffusionguard_pixel_attack_change_pct']['mean']:+.2f} % under "
              "DiffusionGuard, " + ", ".join(f"{v['mean']:+.2f} % under a latent attack of radius {k}"
                                             for k, v in room["latent_attack_change_pct_by_relative_radius"].items()))
    if args.inpaint_per_style:
        held_np, captions, held_styles = make_dataset(args.inpaint_per_style, STYLES, (size, size), seed=args.seed + 1)
        held = torch.from_numpy(held_np).permute(0, 3, 1, 2).float() / 255.0
        masks = random_masks(len(held), size, np.random.default_rng(args.seed + 1))
        seed, empty, baseline = args.seed + 2, [""] * len(held), prompt_only(model, twin)
        fills = {
            "prompt-only baseline": inpaint(baseline, held, masks, captions, args.sampling_steps, seed),
            "trained": inpaint(twin, held, masks, captions, args.sampling_steps, seed),
            "no-information baseline (empty prompt)": inpaint(baseline, held, masks, empty, args.sampling_steps, seed),
            "trained, empty prompt": inpaint(twin, held, masks, empty, args.sampling_steps, seed),
            "VAE round trip (ceiling)": round_trips(twin, held),
        }
        # Each fill against the baseline told the same prompt: with the caption, what the surroundings add to it;
        # with an empty prompt, what the surroundings alone give over a model that knows nothing of the image.
        baseline_of = {"trained": "prompt-only baseline", "VAE round trip (ceiling)": "prompt-only baseline",
                       "trained, empty prompt": "no-information baseline (empty prompt)"}
        masked = {label: psnr_per_image(out, held, masks) for label, out in fills.items()}
        # At a quarter of the size the dots, strokes and hatching no generated fill reproduces pixel for pixel
        # are averaged away: what is left is whether the fill has the right colours and shapes where they belong.
        coarse_masks = (F.avg_pool2d(masks, COARSE) > 0.5).float()
        coarse = {label: psnr_per_image(F.avg_pool2d(out, COARSE), F.avg_pool2d(held, COARSE), coarse_masks)
                  for label, out in fills.items()}
        result["inpainting"] = {
            "held_out_images": len(held), "mask_coverage": round(float(masks.mean()), 3),
            "sampler": f"DDIM {args.sampling_steps}, CFG 5",
            "psnr_masked_region_db": {label: interval(v, args.seed) for label, v in masked.items()},
            "gain_over_baseline_db": {label: {"baseline": base, **interval(masked[label] - masked[base], args.seed)}
                                      for label, base in baseline_of.items()},
            "coarse_scale": COARSE,
            "coarse_psnr_masked_region_db": {label: interval(v, args.seed) for label, v in coarse.items()},
            "coarse_gain_over_baseline_db": {label: {"baseline": base, **interval(coarse[label] - coarse[base], args.seed)}
                                             for label, base in baseline_of.items()},
            "same_style_as_image": style_agreement(fills, held_styles, args.seed),
        }  # fmt: skip
        print("inpainting, masked-region PSNR (dB): "
              + ", ".join(f"{label} {v.mean():.2f}" for label, v in masked.items()))
        shown = min(8, len(held))
        masked_inputs = DiffusionModel.masked_images(held[:shown], masks[:shown])
        montage += [held[:shown], masked_inputs, fills["prompt-only baseline"][:shown], fills["trained"][:shown],
                    fills["no-information baseline (empty prompt)"][:shown], fills["trained, empty prompt"][:shown]]
    png = Path(args.output).with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    save_montage(montage, png)
    result["montage"] = png.name
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(args.output, result)
    print(f"saved {args.output} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
