"""A second, independent judge of the demo world's styles: a small colour-blind CNN on luminance structure.

The demo :class:`~artshield.models.demo.style.StyleMetric` reads global colour and texture statistics, so an
image in the artist's colours scores as the artist whatever it depicts (blobs included). :class:`StructureJudge`
is built to disagree with it where it should: it sees only luminance, standardised per image (mean 0, spread 1),
so palette, brightness and contrast carry nothing; it must find the artist in *structure* — the fine swirls,
strokes and edges. It is trained separately (its own renders, seed and augmentations; never on VAE
reconstructions or on anything the demo diffusion model made), on clean renders under generic degradations
(random crops and scale, flips, blur, noise, gamma), so what it learned is the procedural painter's structure.

``python -m artshield.models.demo.judge --output-dir DIR`` trains it (about a minute on two CPU cores);
the demo weights ship one in ``structure_judge/``. Like the style metric, it is meaningful for images of this
procedural world only. ``benchmarks/style_judges.py`` measures both judges side by side, including on images
in the artist's colours but other styles' structure, and the reverse.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ...errors import InvalidArgumentError, ModelLoadError
from .saved import load_weights, read_config, save_folder, shipped_folder

JUDGE_VERSION = 1  # bump when the architecture or the input transform changes: saved judges then refuse to load
WEIGHTS_FILE = "structure_judge.safetensors"
INPUT_SIDE = 128  # images are resized to this square (the demo world's native size) before the CNN
CHANNELS = (16, 32, 64, 64)


def luminance_input(images: torch.Tensor, side: int = INPUT_SIDE) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 1, side, side): luminance, resized (antialiased), standardised per image.
    Everything a palette, a brightness or a contrast change alters is removed here."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise InvalidArgumentError(f"`images` must be (B, 3, H, W) in [0, 1], but has shape {tuple(images.shape)}.")
    x = images.float().clamp(0.0, 1.0)
    lum = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    if lum.shape[-2:] != (side, side):
        lum = F.interpolate(lum, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    mean = lum.mean(dim=(2, 3), keepdim=True)
    std = lum.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
    return (lum - mean) / std


class StructureJudge(torch.nn.Module):
    """Probability of each demo-world style from luminance structure alone (see the module docstring).

    Args:
        styles: the class names, in output order. artist: which of them :meth:`artist_score` reports.
        info: JSON-able facts about the training run, saved with the weights.
    """

    def __init__(self, styles: Sequence[str], artist: str, info: dict | None = None) -> None:
        super().__init__()
        styles = tuple(styles)
        if len(styles) < 2 or len(set(styles)) != len(styles) or artist not in styles:
            raise InvalidArgumentError(f"`styles` must name two or more distinct styles including `artist` {artist!r}.")
        self.styles, self.artist, self.info = styles, artist, dict(info or {})
        layers, previous = [], 1
        for width in CHANNELS:  # each block halves the side: 128 -> 8
            layers += [torch.nn.Conv2d(previous, width, 3, stride=2, padding=1), torch.nn.GroupNorm(4, width), torch.nn.SiLU()]
            previous = width
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(2 * previous, len(styles))

    @property
    def artist_index(self) -> int:
        return self.styles.index(self.artist)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        h = self.features(luminance_input(images))
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)  # how much, and the strongest response
        return self.head(pooled)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).softmax(dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.probabilities(images)

    def artist_score(self, images: torch.Tensor) -> torch.Tensor:
        """(B,) probability that each image shows the artist's structure."""
        return self.probabilities(images)[:, self.artist_index]

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | os.PathLike) -> Path:
        """``structure_judge.safetensors`` and ``config.json`` (styles, version, training facts)."""
        config = {"judge_version": JUDGE_VERSION, "styles": list(self.styles), "artist": self.artist, "info": self.info}
        return save_folder(self, folder, WEIGHTS_FILE, config)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> StructureJudge:
        """A judge saved by :meth:`save` (safetensors + JSON; nothing is unpickled)."""
        config = read_config(folder, WEIGHTS_FILE, "structure judge")
        if config.get("judge_version") != JUDGE_VERSION:
            raise ModelLoadError(f"structure judge folder {folder} is version {config.get('judge_version')!r}; this "
                                 f"artshield reads version {JUDGE_VERSION}. Retrain it (python -m artshield.models.demo.judge).")  # fmt: skip
        return load_weights(cls(config["styles"], config["artist"], config.get("info")), folder, WEIGHTS_FILE, "structure judge")

    @classmethod
    def load_default(cls) -> StructureJudge:
        """The judge shipped with the demo model (``DEMO_WEIGHTS / "structure_judge"``)."""
        return cls.load(shipped_folder("structure_judge", "structure judge",
                                       "run `python -m artshield.models.demo.judge --output-dir <folder>`"))


# ---------------------------------------------------------------------------------------------------- training
def degrade(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The training augmentations: a palette change (the colour channels permuted, each with its own gamma in
    [0.5, 2], so the luminance of every colour changes), a random crop of 60-100 % of the side resized back,
    flips, Gaussian blur (σ up to 1.2 px), pixel noise (σ up to 0.04) and a gamma in [0.7, 1.4]: what a
    generator's or a mimic's outputs vary in, none of which changes a style's structure."""
    b, _, h, w = batch.shape
    out = []
    for i in range(b):
        x = batch[i : i + 1]
        if float(torch.rand((), generator=generator)) < 0.7:
            gammas = 0.5 * 4.0 ** torch.rand(3, generator=generator)
            x = x[:, torch.randperm(3, generator=generator)].clamp(1e-4, 1.0) ** gammas.view(1, 3, 1, 1)
        scale = 0.6 + 0.4 * float(torch.rand((), generator=generator))
        ch, cw = max(16, int(h * scale)), max(16, int(w * scale))
        top = int(torch.randint(0, h - ch + 1, (), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (), generator=generator))
        x = F.interpolate(x[..., top : top + ch, left : left + cw], size=(h, w), mode="bilinear", align_corners=False)
        if float(torch.rand((), generator=generator)) < 0.5:
            x = x.flip(-1)
        if float(torch.rand((), generator=generator)) < 0.5:
            x = x.flip(-2)
        sigma = 1.2 * float(torch.rand((), generator=generator))
        if sigma > 0.2:
            radius = int(3 * sigma) + 1
            taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
            taps = taps / taps.sum()
            x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), taps.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
            x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), taps.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
        noise = 0.04 * float(torch.rand((), generator=generator))
        x = x + noise * torch.randn(x.shape, generator=generator)
        gamma = 0.7 + 0.7 * float(torch.rand((), generator=generator))
        out.append(x.clamp(1e-4, 1.0) ** gamma)
    return torch.cat(out)


def train_judge(n_per_style: int = 96, epochs: int = 12, batch_size: int = 32, lr: float = 3e-3, seed: int = 7,
                progress: bool = False) -> StructureJudge:
    """Train a judge on fresh renders of every style (``make_dataset(n_per_style, ALL_STYLES, seed=seed)``),
    degraded anew each epoch; AdamW with a cosine schedule. Deterministic for a seed on one thread."""
    from .world import ALL_STYLES, ARTIST_STYLE, make_dataset

    started = time.perf_counter()
    torch.manual_seed(seed)
    images, _, labels = make_dataset(n_per_style, ALL_STYLES, size=(INPUT_SIDE, INPUT_SIDE), seed=seed)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    y = torch.tensor([ALL_STYLES.index(label) for label in labels])
    judge = StructureJudge(ALL_STYLES, ARTIST_STYLE)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    judge.train()
    loss = torch.tensor(float("nan"))
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(judge.logits(degrade(x[idx], generator)), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if progress:
            print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}", file=sys.stderr, flush=True)
    judge.eval()
    with torch.no_grad():
        accuracy = float((judge.logits(x).argmax(dim=1) == y).float().mean())
    judge.info = {"n_per_style": n_per_style, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                  "train_accuracy_clean": accuracy, "final_loss": loss.item(),
                  "seconds": round(time.perf_counter() - started, 1), "torch": torch.__version__,
                  "data": f"make_dataset({n_per_style}, ALL_STYLES, size=({INPUT_SIDE}, {INPUT_SIDE}), seed={seed}), "
                          "degraded anew each epoch (palette change, crop, flip, blur, noise, gamma)"}  # fmt: skip
    return judge


def main(argv: list[str] | None = None) -> int:
    from ...cli_support import ArgumentParser, positive_float, positive_int

    parser = ArgumentParser(prog="python -m artshield.models.demo.judge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True, help="folder for structure_judge.safetensors and config.json")
    parser.add_argument("--n-per-style", type=positive_int, default=96)
    parser.add_argument("--epochs", type=positive_int, default=12)
    parser.add_argument("--lr", type=positive_float, default=3e-3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    judge = train_judge(args.n_per_style, args.epochs, lr=args.lr, seed=args.seed, progress=True)
    judge.save(args.output_dir)
    print(json.dumps(judge.info, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["StructureJudge", "luminance_input", "train_judge"]
