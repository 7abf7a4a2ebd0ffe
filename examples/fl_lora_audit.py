"""What a curious server learns from federated LoRA on artworks (demo world), with and without user-level DP
and with protected client images.

    OMP_NUM_THREADS=1 python examples/fl_lora_audit.py                    # the README figures (~15 min, 1 thread)
    python examples/fl_lora_audit.py --quick                              # a smoke run (about a minute)

Setting: ``--clients`` artists of the demo world (one style each) fine-tune a LoRA of the demo model together
on Flower (:func:`artshield.fl_bridge.lora.run_lora_federation`: LocalTrainer steps on each client, FedAvg on
the LoRA arrays only). The server sees every client's update. Arms:

- ``plain``: no DP, clean images;
- ``dp-server``: DP-FedAvg (clip + Gaussian noise on the mean, user level): hides clients from whoever sees
  the *global* model, not from the server;
- ``dp-client``: each client clips and noises its own update (local DP): hides it from the server too;
- ``protected``: the clients' images protected with AdvDM (``artshield.protect``) before training, no DP.

Attacks of the curious server, per arm:

1. **Which artist does a client hold?** For every round and client, the pre-round global model is the base
   and pre-round + the client's update the suspect; for every candidate artist (all 8 styles of the world;
   the server holds *other* artworks of each, never the client's own), authenticate's scores on those
   artworks: ``loss`` (−L_ft) and ``loss-diff`` (L_pre − L_ft) from :mod:`artshield.authenticate.baselines`
   and, in the last round, CGI-DM (:class:`artshield.authenticate.CGIDM`, DCT features, paired cosine of the
   contrast recovery, on 2 artworks a candidate). Predicted artist =
   best score. Accuracy, mean rank of the true artist, AUC (true vs other candidates, scores centred per
   client and round). Also on the *aggregate* (pre-round vs post-round global): AUC of the federation's
   artists vs the 4 artists outside it.
2. **Reconstruction** of client 0's images from its last-round update by gradient matching on the diffusion
   loss (:func:`artshield.fl_bridge.lora.reconstruct_from_update`): with the server's own timesteps/noise
   ("expected"), and — in the plain arm — with the client's exact draws ("knows the seed", an upper bound).
   PSNR against baselines: random latents decoded, another artwork of the same artist, and the VAE round
   trip of the originals (the ceiling: reconstructions are latents decoded by the demo VAE).

Writes ``benchmarks/results/fl_lora_audit.json`` (``--json``) and ``montage.png`` (originals, reconstructions)
in ``--out`` (default ``examples/output/fl_lora_audit``).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from artshield.cli_support import ArgumentParser, bounded, positive_int
from artshield.fileio import write_json_atomic
from artshield.models.demo.world import ALL_STYLES

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("fl_lora_audit")
CLIENT_STYLES = ("velmora", "ink", "neon", "watercolor", "mosaic", "opart", "pixelart", "pointillism")


# ------------------------------------------------------------------------------------------- pairs and scores
def lora_model(base, folder: Path, vector, result):
    """`base` (a model without adapters) with the LoRA `vector` applied (written to `folder`)."""
    result.save(0, folder, vector=vector)
    return base.with_lora(folder)


def round_pair(result, pre_vector, post_vector, *, base, folder: Path):
    """authenticate's ModelPair: base = `base` + LoRA `pre_vector`, suspect = `base` + LoRA `post_vector`."""
    from artshield.authenticate.pair import ModelPair

    pre = lora_model(base, folder / "pre", pre_vector, result)
    post = lora_model(base, folder / "post", post_vector, result)
    return ModelPair.load(pre, suspect=post, prompt=result.settings.prompt)


def candidate_scores(pair, candidates: dict[str, torch.Tensor], *, methods=("loss", "loss-diff"),
                     cgidm_steps: int = 0, cgidm_images: int = 2, seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean membership score of each candidate's images under each method (higher = more likely trained on)."""
    from artshield.authenticate.baselines import CalibratedLoss, LossAttack

    makers = {"loss": LossAttack, "loss-diff": CalibratedLoss}
    out: dict[str, dict[str, float]] = {}
    for method in methods:
        scorer = makers[method](timesteps=(100, 300, 500, 700), noises=2, batch_size=8, seed=seed)
        out[method] = {name: float(np.mean(scorer.score(pair, images))) for name, images in candidates.items()}
    if cgidm_steps:
        from artshield.authenticate import CGIDM, FeatureSpace
        from artshield.authenticate.features import paired_cosine

        features = FeatureSpace("dct")
        cgidm = CGIDM(pair, steps=cgidm_steps, seed=seed)
        out["cgidm"] = {}
        for name, images in candidates.items():
            recovery = cgidm.recover(images[:cgidm_images], base=False)
            contrast = paired_cosine(features.embed(recovery.contrast), features.embed(recovery.original))
            out["cgidm"][name] = float(contrast.mean())
    return out


def which_artist_summary(rows: list[dict], method: str) -> dict:
    """Accuracy, mean rank of the true artist (1 = best) and AUC over client-rounds for one method."""
    from artshield.stats import roc_auc

    correct, ranks, pos, neg, candidates = 0, [], [], [], 0
    for row in rows:
        scores = row["scores"].get(method)
        if scores is None:
            continue
        names = list(scores)
        candidates = len(names)
        values = np.array([scores[n] for n in names])
        centred = values - values.mean()
        order = sorted(names, key=lambda n: -scores[n])
        ranks.append(order.index(row["artist"]) + 1)
        correct += order[0] == row["artist"]
        for name, value in zip(names, centred, strict=True):
            (pos if name == row["artist"] else neg).append(value)
    if not ranks:
        return {}
    return {"accuracy": correct / len(ranks), "mean_rank": float(np.mean(ranks)), "auc": roc_auc(pos, neg),
            "n": len(ranks), "chance_accuracy": 1 / candidates}


# ------------------------------------------------------------------------------------------- the run
def protect_images(model, images: list[torch.Tensor], *, eps: float, steps: int) -> list[torch.Tensor]:
    from artshield.protect import AdvDM

    method = AdvDM(model, eps=eps, steps=steps, seed=0)
    return [method(batch).detach().float().clamp(0, 1) for batch in images]


def run(args) -> dict:
    from artshield.fl_bridge.lora import (
        LoraSettings,
        UserDP,
        initial_lora_state,
        match_images,
        reconstruct_from_update,
        render_artworks,
        run_lora_federation,
    )
    from artshield.models import load

    started = time.perf_counter()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clean = load("demo", device="cpu", dtype="fp32")  # never adapted: the audit's base and the protector
    fed_model = load("demo", device="cpu", dtype="fp32")  # the federation's (gets LoRA adapters)
    styles = CLIENT_STYLES[: args.clients]
    client_images = [render_artworks(s, args.images, size=args.size, seed=1) for s in styles]
    references = {s: render_artworks(s, args.references, size=args.size, seed=2) for s in ALL_STYLES}
    settings = LoraSettings(rounds=args.rounds, local_steps=args.local_steps, learning_rate=args.lr,
                            batch_size=args.images, resolution=args.size, seed=0, record_draws=True)
    initial = initial_lora_state(fed_model, settings)
    dp_clip, z = args.clip, args.noise_multiplier
    arms = {"plain": None, "dp-server": UserDP(dp_clip, z, "server"), "dp-client": UserDP(dp_clip, z, "client"),
            "protected": None}
    if args.quick:
        arms = {k: arms[k] for k in ("plain", "dp-server", "protected")}
    protect_seconds = None
    work = tempfile.TemporaryDirectory(prefix="fl-lora-audit-")  # the LoRA files the audit's pairs load
    results: dict = {"arms": {}}
    montage_rows: list[tuple[str, torch.Tensor]] = [("originals", client_images[0])]
    for arm, dp in arms.items():
        logger.info("arm %s", arm)
        arm_started = time.perf_counter()
        images = client_images
        if arm == "protected":
            t0 = time.perf_counter()
            images = protect_images(clean, client_images, eps=args.protect_eps / 255, steps=args.protect_steps)
            protect_seconds = time.perf_counter() - t0
        arm_settings = dataclasses.replace(settings, dp=dp)
        fed = run_lora_federation(fed_model, images, arm_settings, initial_state=initial)
        arm_out: dict = {"dp": None if dp is None else {"clip": dp.clip, "noise_multiplier": dp.noise_multiplier,
                                                        "placement": dp.placement,
                                                        "epsilon_delta_1e-5": dp.epsilon(args.rounds, 1e-5)},
                         "federation_seconds": fed.seconds,
                         "train_loss_last_round": {styles[p]: float(np.mean(v)) for p, v in fed.losses[args.rounds].items()},
                         "update_norms": {str(r): {styles[p]: float(d.norm()) for p, d in u.items()}
                                          for r, u in fed.updates.items()},
                         "global_change": [float((g - fed.globals[0]).norm()) for g in fed.globals]}
        # 1. which artist: per client update, and on the aggregate
        rows, aggregate = [], []
        folder = Path(work.name) / arm
        for r in range(1, args.rounds + 1):
            last = r == args.rounds
            for pid, delta in sorted(fed.updates[r].items()):
                pair = round_pair(fed, fed.globals[r - 1], fed.globals[r - 1] + delta, base=clean, folder=folder)
                scores = candidate_scores(pair, references, cgidm_steps=args.cgidm_steps if last else 0)
                rows.append({"round": r, "client": pid, "artist": styles[pid], "scores": scores})
            pair = round_pair(fed, fed.globals[r - 1], fed.globals[r], base=clean, folder=folder)
            aggregate.append({"round": r, "scores": candidate_scores(pair, references)})
        arm_out["which_artist"] = {m: which_artist_summary(rows, m) for m in ("loss", "loss-diff", "cgidm")}
        arm_out["which_artist_rows"] = rows
        from artshield.stats import roc_auc

        arm_out["aggregate_membership"] = {
            m: {"auc_per_round": [roc_auc([a["scores"][m][s] for s in styles],
                                          [a["scores"][m][s] for s in ALL_STYLES if s not in styles])
                                  for a in aggregate]}
            for m in ("loss", "loss-diff")}
        for m in arm_out["aggregate_membership"].values():
            m["auc_mean"] = float(np.mean(m["auc_per_round"]))
        arm_out["aggregate_rows"] = aggregate
        # 2. reconstruction of client 0 from its last-round update
        r = args.rounds
        variants = [("expected", None)] + ([("knows-seed", fed.draws[(r, 0)])] if arm == "plain" else [])
        arm_out["reconstruction"] = {}
        for name, draws in variants:
            rec = reconstruct_from_update(fed_model, fed.layout, fed.globals[r - 1], fed.updates[r][0],
                                          num_images=args.images, settings=arm_settings, draws=draws,
                                          samples=args.local_steps, steps=args.recon_steps,
                                          step_size=args.recon_step_size, seed=0)  # fmt: skip
            with torch.no_grad():
                truth = fed_model.encode(images[0], mode="mean")
            at_truth = reconstruct_from_update(fed_model, fed.layout, fed.globals[r - 1], fed.updates[r][0],
                                               num_images=args.images, settings=arm_settings, draws=draws,
                                               samples=args.local_steps, steps=0, seed=0, init=truth)  # fmt: skip
            report = match_images(client_images[0], rec.images)
            arm_out["reconstruction"][name] = {"psnr_mean": report["psnr_mean"], "ssim_mean": report["ssim_mean"],
                                               "psnr": report["psnr"], "match_start": rec.losses[0] if rec.losses else None,
                                               "match_final": rec.final_loss, "match_at_truth": at_truth.final_loss,
                                               "seconds": rec.seconds,
                                               "config": rec.config}
            montage_rows.append((f"{arm} {name}", rec.images[report["order"]]))
        arm_out["seconds"] = time.perf_counter() - arm_started
        results["arms"][arm] = arm_out
        write_json_atomic(args.json, {**results, "partial": True})  # a late failure keeps the finished arms
        logger.info("arm %s: %.0f s; which-artist loss-diff %s; reconstruction %s", arm, arm_out["seconds"],
                    arm_out["which_artist"]["loss-diff"],
                    {k: round(v["psnr_mean"], 2) for k, v in arm_out["reconstruction"].items()})
    # reconstruction baselines
    with torch.no_grad():
        originals = client_images[0]
        vae = clean.decode(clean.encode(originals, mode="mean"))
        side = args.size // clean.vae_scale_factor
        noise = torch.randn(args.images, clean.latent_channels, side, side, generator=torch.Generator().manual_seed(0))
        random_images = clean.decode(noise)
    results["reconstruction_baselines"] = {
        "random_latents_psnr": match_images(originals, random_images)["psnr_mean"],
        "other_artworks_same_artist_psnr": match_images(originals, references[styles[0]])["psnr_mean"],
        "vae_round_trip_psnr": match_images(originals, vae)["psnr_mean"],
    }
    montage_rows.insert(1, ("VAE round trip", vae))
    results["montage"] = str(write_montage(out / "montage.png", montage_rows))
    results["settings"] = {**{k: v for k, v in vars(args).items() if k not in ("json", "out")},
                           "client_styles": list(styles), "candidates": list(ALL_STYLES),
                           "protect": f"AdvDM eps {args.protect_eps}/255, {args.protect_steps} steps",
                           "protect_seconds": protect_seconds, "lora_parameters": int(fed.layout.size),
                           "prompt": settings.prompt, "threads": torch.get_num_threads()}
    work.cleanup()
    results["seconds"] = time.perf_counter() - started
    write_json_atomic(args.json, results)
    return results


def write_montage(path: Path, rows: list[tuple[str, torch.Tensor]]) -> Path:
    """One row per entry (label on the left), images side by side."""
    from PIL import Image, ImageDraw

    from artshield.fileio import write_bytes_atomic
    from artshield.imageio import to_pil

    side = rows[0][1].shape[-1]
    label_width, columns = 130, max(len(images) for _, images in rows)
    canvas = Image.new("RGB", (label_width + columns * (side + 2), len(rows) * (side + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, images) in enumerate(rows):
        draw.text((4, i * (side + 2) + side // 2 - 6), label, fill="black")
        for j, image in enumerate(images):
            canvas.paste(to_pil(image.clamp(0, 1)), (label_width + j * (side + 2), i * (side + 2)))
    import io

    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return write_bytes_atomic(path, buffer.getvalue(), what="montage")


def main(argv=None) -> int:
    parser = ArgumentParser(prog="fl_lora_audit.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "examples" / "output" / "fl_lora_audit"))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "fl_lora_audit.json"))
    parser.add_argument("--clients", type=bounded(int, 2, len(CLIENT_STYLES)), default=4)
    parser.add_argument("--images", type=positive_int, default=4, help="artworks per client (= local batch)")
    parser.add_argument("--references", type=positive_int, default=4, help="server's artworks per candidate")
    parser.add_argument("--size", type=positive_int, default=64)
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--local-steps", type=positive_int, default=4)
    parser.add_argument("--lr", type=bounded(float, 0.0), default=1e-3)
    parser.add_argument("--clip", type=bounded(float, 0.0), default=0.2)
    parser.add_argument("--noise-multiplier", type=bounded(float, 0.0), default=1.0)
    parser.add_argument("--cgidm-steps", type=int, default=20)
    parser.add_argument("--recon-steps", type=int, default=40)
    parser.add_argument("--recon-step-size", type=float, default=0.1)
    parser.add_argument("--protect-eps", type=float, default=8.0)
    parser.add_argument("--protect-steps", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny settings, three arms")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.rounds, args.local_steps, args.references = 2, 2, 2, 2
        args.cgidm_steps, args.recon_steps, args.protect_steps, args.images = 2, 3, 2, 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    results = run(args)
    print(f"wrote {args.json} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
