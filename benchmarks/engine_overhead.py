"""Engine overhead: an AdvDM step through artshield vs a bare hand-written PyTorch loop, side by side.

Both do the same computation on the same model (VAE encode with a posterior sample, one timestep and one
noise draw, UNet prediction, MSE, gradient with respect to the input, a signed step, L-inf projection,
clamp to [0, 1]). Runs alternate between the two (A B A B ...) so drift of the machine hits both alike;
the ratio of medians is printed and saved to ``benchmarks/results/engine_overhead.json``. Target: <= 1.02 (issue 16). Runs with the
allocator setting every command uses (:func:`artshield.allocator.keep_freed_memory`).

    python benchmarks/engine_overhead.py [--model demo] [--resolutions 128 256] [--steps 10] [--repeats 5] \
        [--note "conditions of the run"] [--output FILE]

A smoke run takes seconds: ``--model PATH_TO_A_TINY_MODEL --resolutions 64 --steps 1 --repeats 1 --output x.json``.
Also prints the demo model's training time and style-metric AUC from its own training_info.json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from artshield.cli_support import ArgumentParser, positive_int  # noqa: E402
from artshield.fileio import write_json_atomic  # noqa: E402
from artshield.models import load  # noqa: E402
from artshield.protect import AdvDM  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def bare_advdm(model, images: torch.Tensor, eps: float, step_size: float, steps: int, seed: int) -> torch.Tensor:
    """AdvDM written directly against the diffusers components, without artshield's engine or handle."""
    vae, unet, scheduler = model.vae, model.unet, model.scheduler
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ids = model.tokenizer(
            ["a painting"], padding="max_length", max_length=model.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(model.device)
        cond = model.text_encoder(ids)[0].expand(images.shape[0], -1, -1)
    alphas_cumprod = scheduler.alphas_cumprod.to(model.device)
    scaling = vae.config.scaling_factor
    delta = torch.zeros_like(images)
    for _ in range(steps):
        leaf = delta.clone().requires_grad_(True)
        posterior = vae.encode(((images + leaf) * 2 - 1).to(model.dtype)).latent_dist
        noise_z = torch.randn(posterior.mean.shape, generator=generator).to(model.device, model.dtype)
        latents = (posterior.mean + posterior.std * noise_z).float() * scaling
        t = torch.randint(0, 1000, (images.shape[0],), generator=generator).to(model.device)
        noise = torch.randn(latents.shape, generator=generator).to(model.device)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        prediction = unet(noisy.to(model.dtype), t, encoder_hidden_states=cond).sample.float()
        loss = F.mse_loss(prediction, noise, reduction="none").flatten(1).mean(dim=1)
        (grad,) = torch.autograd.grad(loss.sum(), leaf)
        delta = (delta + step_size * grad.sign()).clamp(-eps, eps)
        delta = (images + delta).clamp(0, 1) - images
    return images + delta


def time_once(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="engine_overhead.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--resolutions", type=positive_int, nargs="+", default=[128, 256])
    parser.add_argument("--steps", type=positive_int, default=10)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--note", help="conditions of the run worth knowing (e.g. other jobs on the machine), saved as 'note'")
    parser.add_argument("--output", default=str(RESULTS / "engine_overhead.json"))
    args = parser.parse_args(argv)

    from artshield.allocator import keep_freed_memory

    allocator = "keep" if keep_freed_memory() else "default"  # as every command runs (ARTSHIELD_MALLOC=default: off)
    model = load(args.model, device=args.device, dtype=args.dtype)
    eps, step_size = 8 / 255, 1 / 255
    rows = []
    for resolution in args.resolutions:
        images = torch.rand(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0)).to(model.device)
        # One tile the size of the image: the bare loop does not tile either.
        method = AdvDM(model, eps=eps, steps=args.steps, step_size=step_size, seed=0, tile_size=resolution)
        ours = lambda m=method, x=images: m.protect(x)  # noqa: E731
        bare = lambda x=images: bare_advdm(model, x, eps, step_size, args.steps, 0)  # noqa: E731
        ours(), bare()  # warm-up: allocator, kernels, prompt cache
        times_ours, times_bare = [], []
        for _ in range(args.repeats):
            times_ours.append(time_once(ours))
            times_bare.append(time_once(bare))
        med_ours, med_bare = statistics.median(times_ours), statistics.median(times_bare)
        row = {
            "resolution": resolution,
            "steps": args.steps,
            "artshield_s_per_step": med_ours / args.steps,
            "bare_s_per_step": med_bare / args.steps,
            "ratio": med_ours / med_bare,
        }
        rows.append(row)
        print(
            f"{resolution:5d} px  artshield {row['artshield_s_per_step'] * 1000:8.1f} ms/step  "
            f"bare {row['bare_s_per_step'] * 1000:8.1f} ms/step  ratio {row['ratio']:.3f}"
        )

    result = {
        "benchmark": "engine_overhead",
        "model": args.model,
        "device": str(model.device),
        "dtype": str(model.dtype),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "repeats": args.repeats,
        "rows": rows,
        "target_ratio": 1.02,
        "allocator": allocator,
    }
    if args.model == "demo":
        from artshield.models.demo import DEMO_WEIGHTS

        info_path = DEMO_WEIGHTS / "training_info.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            evaluation = info.get("evaluation", {})
            result["demo_training"] = {
                "seed": info.get("seed"),
                "seconds": info.get("seconds", {}).get("total"),
                "style_auc_clean": evaluation.get("auc_artist_clean"),
                "style_auc_vae_reconstructed": evaluation.get("auc_artist_vae_reconstructed"),
            }
            print("demo model training:", json.dumps(result["demo_training"], default=str))
    if args.note:
        result["note"] = args.note
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.output, result, what="benchmark result")
    print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
