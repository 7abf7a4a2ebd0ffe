"""What the demo VAE's latent can hold, per style: the encoder's round trip against the best latent there is.

For fresh renders of every style (seed ``--seed``, never seen in training) the encoder's posterior mean is
decoded (the round trip ``demo_world.py`` reports), then the latent itself is optimised — Adam on z, from the
encoder's mean, minimising ‖D(z) − x‖² for ``--steps`` steps — and decoded again (*decoder inversion*).
PSNR per image, reported per style as mean [95 % bootstrap interval over images].

Why: the artist's round trip sits ~3 dB below the training styles' mean. If the best latent closes that gap,
the encoder is what fails the artist (an encoder fine-tune would fix it, latents and proofs unchanged); if
the gap stays or widens, the decoder and its ×8, 4-channel latent cannot draw the artist's detail at all, and
only a different latent (a bigger VAE, or a VAE and UNet retrained with more weight on the artist) would.

Writes ``benchmarks/results/vae_capacity.json`` (``--output``).

    python benchmarks/vae_capacity.py [--model demo] [--per-style 4] [--steps 100] [--lr 0.05] [--threads 2]
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

from artshield.cli_support import ArgumentParser, positive_float, positive_int  # noqa: E402
from artshield.fileio import write_json_atomic  # noqa: E402
from artshield.metrics import finite_psnr  # noqa: E402
from artshield.stats import mean_interval  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def interval(values: np.ndarray, seed: int) -> dict:
    return mean_interval(values, seed=seed, digits=2)


def invert_decoder(model, images: torch.Tensor, steps: int, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Decodes of the encoder's mean latent and of the latent optimised to reproduce `images`."""
    from artshield.engine.invert import Inverter

    with torch.no_grad():
        start = model.encode(images, "mean")
        encoded = model.decode(start).clamp(0, 1)
    # Unconstrained Adam on z (no ball, no box: a latent is not an image), minimising the pixel MSE.
    inverter = Inverter(steps=steps, step_size=lr, step_rule="adam")
    latent = inverter.run(lambda z, generator: (model.decode(z) - images).square().mean(), start).values
    with torch.no_grad():
        inverted = model.decode(latent).clamp(0, 1)
    return encoded, inverted


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="vae_capacity.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo", help="the model whose VAE is measured (default: demo)")
    parser.add_argument("--per-style", type=positive_int, default=4, help="renders per style (default 4)")
    parser.add_argument("--steps", type=positive_int, default=100, help="Adam steps on the latent (default 100)")
    parser.add_argument("--lr", type=positive_float, default=0.05, help="Adam's step size on the latent (default 0.05)")
    parser.add_argument("--seed", type=int, default=4242, help="render seed, unseen in training (default 4242)")
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--output", default=str(RESULTS / "vae_capacity.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()

    from artshield.models import load
    from artshield.models.demo.world import ALL_STYLES, ARTIST_STYLE, STYLES, make_dataset

    model = load(args.model, device="cpu", dtype="fp32")
    model.vae.requires_grad_(False)
    renders, _, labels = make_dataset(args.per_style, ALL_STYLES, (128, 128), seed=args.seed)
    images = torch.from_numpy(renders).permute(0, 3, 1, 2).float() / 255.0
    encoded, inverted = invert_decoder(model, images, args.steps, args.lr)
    styles = np.array(labels)
    psnr = {"encoder_mean": finite_psnr(encoded, images).numpy(), "decoder_inversion": finite_psnr(inverted, images).numpy()}

    per_style, gap = {}, {}
    for name, values in psnr.items():
        per_style[name] = {style: interval(values[styles == style], args.seed) for style in ALL_STYLES}
        training_mean = float(np.mean([per_style[name][style]["mean"] for style in STYLES]))
        gap[name] = {"training_styles_mean": round(training_mean, 2),
                     "artist_minus_training_mean": round(per_style[name][ARTIST_STYLE]["mean"] - training_mean, 2)}
    result = {
        "what": __doc__.split("\n\n")[0],
        "command": "python benchmarks/vae_capacity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {"model": args.model, "per_style": args.per_style, "steps": args.steps, "lr": args.lr,
                     "seed": args.seed, "artist": ARTIST_STYLE},
        "psnr_db": per_style,
        "gap_db": gap,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
    }
    write_json_atomic(args.output, result)
    for name in psnr:
        print(name, {style: per_style[name][style]["mean"] for style in ALL_STYLES}, gap[name])
    print(f"wrote {args.output} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
