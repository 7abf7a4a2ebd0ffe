"""The demo world's two style judges side by side: do they see the artist, or only the artist's colours?

* ``style metric`` — :class:`artshield.models.demo.style.StyleMetric`: handcrafted colour and texture statistics
  and a logistic regression, fitted with the demo model on clean and VAE-reconstructed renders (the
  harness's ``artist_score``).
* ``structure judge`` — :class:`artshield.models.demo.judge.StructureJudge`: a small CNN on standardised
  luminance, trained separately on degraded clean renders (the harness's ``structure_score``).

Both judges score, for the artist style (``velmora``) against the seven other styles, fresh renders never seen
in either's training (``--seed``):

* ``renders`` and ``vae`` (the same renders through the demo VAE, as a mimic's outputs are decoded);
* ``artist colours, other structure``: every other style's render with its colours matched, channel by channel
  (histogram matching), to an artist render — blobs and dots in the artist's palette, which a judge must *not*
  call the artist; and ``artist structure, other colours``: artist renders matched to other styles' colours,
  which it should;
* optionally what mimics made (``--outputs LABEL=DIR``, e.g. the LoRA outputs of an ``artshield evaluate`` cell;
  the same label repeated adds folders to one set).

Reported per judge: the AUC of artist vs other styles (renders, vae), the mean artist probability of each set,
and the share of images called the artist (probability > 0.5). Results are printed and written to
``benchmarks/results/style_judges.json`` (``--output``); ``benchmarks/render_readme.py`` renders the README's
table from it.

    python benchmarks/style_judges.py [--per-style 24] [--seed 90210] [--outputs clean-mimic=DIR ...]
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

from artshield.cli_support import ArgumentParser, positive_int  # noqa: E402
from artshield.fileio import write_json_atomic  # noqa: E402
from artshield.imageio import read_image  # noqa: E402
from artshield.stats import roc_auc  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def match_histograms(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`source` (H, W, 3 uint8) with each channel's values mapped so its histogram is `reference`'s."""
    out = np.empty_like(source)
    for c in range(3):
        values, counts = np.unique(source[..., c], return_counts=True)
        ref_values, ref_counts = np.unique(reference[..., c], return_counts=True)
        quantiles = np.cumsum(counts) / source[..., c].size
        ref_quantiles = np.cumsum(ref_counts) / reference[..., c].size
        mapped = np.interp(quantiles, ref_quantiles, ref_values)
        out[..., c] = np.round(mapped[np.searchsorted(values, source[..., c])]).astype(np.uint8)
    return out


def as_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def vae_round_trip(images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    from artshield.models import load

    model = load("demo", device="cpu", dtype="fp32")
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(model.decode(model.encode(images[i : i + batch], mode="mean")))
    return torch.cat(out)


def score_sets(judges: dict, sets: dict[str, torch.Tensor]) -> dict[str, dict[str, np.ndarray]]:
    """judge name -> set name -> artist probability per image."""
    with torch.no_grad():
        return {name: {label: judge.artist_score(images).numpy() for label, images in sets.items()}
                for name, judge in judges.items()}  # fmt: skip


def summarise(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(values.mean()), "called_artist": float((values > 0.5).mean()), "n": int(values.size)}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="style_judges.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-style", type=positive_int, default=24, help="renders per style (default 24)")
    parser.add_argument("--seed", type=int, default=90210, help="render seed, unseen by both judges (default 90210)")
    parser.add_argument("--size", type=positive_int, default=128)
    parser.add_argument("--outputs", action="append", default=[], metavar="LABEL=DIR",
                        help="also score the PNGs of DIR (e.g. what a mimic made); repeatable")
    parser.add_argument("--note", help="conditions of the run, saved as 'note'")
    parser.add_argument("--output", default=str(RESULTS / "style_judges.json"))
    args = parser.parse_args(argv)
    started = time.perf_counter()

    from artshield.models.demo.judge import StructureJudge
    from artshield.models.demo.style import StyleMetric
    from artshield.models.demo.world import ALL_STYLES, ARTIST_STYLE, make_dataset

    judges = {"style_metric": StyleMetric.load_default(), "structure_judge": StructureJudge.load_default()}
    images, _, labels = make_dataset(args.per_style, ALL_STYLES, size=(args.size, args.size), seed=args.seed)
    is_artist = np.array([label == ARTIST_STYLE for label in labels])
    artist, others = images[is_artist], images[~is_artist]
    rng = np.random.default_rng(args.seed)
    artist_colours = np.stack([match_histograms(im, artist[rng.integers(len(artist))]) for im in others])
    other_colours = np.stack([match_histograms(im, others[rng.integers(len(others))]) for im in artist])
    renders = as_tensor(images)
    sets = {"renders": renders, "vae": vae_round_trip(renders), "artist colours, other structure": as_tensor(artist_colours),
            "artist structure, other colours": as_tensor(other_colours)}  # fmt: skip
    outputs = {}
    for item in args.outputs:
        label, _, folder = item.partition("=")
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() == ".png") if Path(folder).is_dir() else []
        if not files:
            parser.error(f"--outputs {item!r}: no PNG files in {folder}")
        images = torch.stack([read_image(f).rgb[0] for f in files])
        # The same label again adds another folder (e.g. one per training run) to the set.
        sets[label] = torch.cat([sets[label], images]) if label in sets else images
        outputs.setdefault(label, []).append(folder)
    scores = score_sets(judges, sets)

    result = {"benchmark": "style_judges", "artist": ARTIST_STYLE, "per_style": args.per_style, "seed": args.seed,
              "size": args.size, "torch": torch.__version__, "machine": f"{platform.machine()} {platform.system()}",
              "outputs": outputs, "judges": {}}  # fmt: skip
    for name, by_set in scores.items():
        entry = {"auc": {}, "artist_images": {}, "other_images": {}, "sets": {}}
        for label in ("renders", "vae"):
            values = by_set[label]
            entry["auc"][label] = roc_auc(values[is_artist], values[~is_artist])
            entry["artist_images"][label] = summarise(values[is_artist])
            entry["other_images"][label] = summarise(values[~is_artist])
        for label, values in by_set.items():
            if label not in ("renders", "vae"):
                entry["sets"][label] = summarise(values)
        result["judges"][name] = entry
        print(f"{name}: AUC renders {entry['auc']['renders']:.3f}, vae {entry['auc']['vae']:.3f}; "
              + "; ".join(f"{label} {s['mean']:.3f} ({s['called_artist'] * 100:.0f} % artist)" for label, s in entry["sets"].items()))
    if args.note:
        result["note"] = args.note
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(args.output, result)
    print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
