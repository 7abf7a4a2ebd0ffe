"""What a curious server learned: ``leak.json``, ``leak.html`` and image grids, written atomically.

- :func:`grid` lays a client's images (top row) over their reconstructions matched by assignment (bottom row),
  upscaled with nearest-neighbour so that 8x8 digits and 32x32 images can be seen (each image at least
  :data:`MIN_SIDE` pixels), at most :data:`COLUMNS` images a row pair;
- :func:`write_grid` writes it as a PNG through :func:`artshield.imageio.write_png` (atomic);
- :func:`summarize` averages the per-attack numbers; :func:`html` renders the document;
  :func:`write_report` writes ``leak.json`` and ``leak.html`` through :mod:`artshield.fileio` (atomic).

The document (what :class:`~artshield.fl_bridge.leakage.runner.CuriousServer` builds)::

    {"format": 1, "finished": bool, "mode": "standalone"|"federated", "experiment", "source", "task",
     "settings": {attack, labels, clients, rounds, batch_size, steps, restarts, kind, local_steps},
     "results": [{client, round, observed, psnr, ssim, lpips, label_accuracy, count_accuracy, seconds,
                  label_seconds, loss, true_labels, recovered_labels, grid, config, assessment}],
     "summary": {attacks, mean_psnr, max_psnr, mean_ssim, mean_lpips, mean_label_accuracy,
                 mean_count_accuracy, seconds}}
"""

from __future__ import annotations

import html as html_lib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...fileio import write_json_atomic, write_text_atomic

FORMAT = 1
LEAK_JSON = "leak.json"
LEAK_HTML = "leak.html"
MIN_SIDE = 96  # pixels an image gets at least in a grid (nearest-neighbour upscaling by a whole factor)
COLUMNS = 16  # images per row pair
GAP = 2  # pixels between images (and 3 × GAP between row pairs)


def grid_filename(client: int, server_round: int | None = None) -> str:
    """``grid-client<k>.png``, or ``grid-client<k>-round<r>.png`` when several rounds are attacked."""
    return f"grid-client{int(client)}.png" if server_round is None else \
        f"grid-client{int(client)}-round{int(server_round)}.png"


def _images(images: torch.Tensor, what: str) -> torch.Tensor:
    images = torch.as_tensor(images).detach().to("cpu", torch.float32)
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] < 1:
        raise ValueError(f"{what} must be (B, 1 or 3, H, W), got {tuple(images.shape)}")
    return images.nan_to_num(0.5).clamp(0, 1)


def grid(originals: torch.Tensor, reconstructions: torch.Tensor, order: Sequence[int] | None = None, *,
         columns: int = COLUMNS, min_side: int = MIN_SIDE) -> torch.Tensor:
    """One (C, H, W) image in [0, 1]: originals on the top row of each row pair, below each one the
    reconstruction ``reconstructions[order[i]]`` matched to it (``order`` None: the same index). Grey
    originals with RGB reconstructions (or the reverse) are shown in RGB."""
    top, bottom = _images(originals, "originals"), _images(reconstructions, "reconstructions")
    if order is not None:
        index = torch.as_tensor(list(order), dtype=torch.int64)
        if index.numel() != top.shape[0] or (index.numel() and (index.min() < 0 or index.max() >= bottom.shape[0])):
            raise ValueError(f"matched order {list(order)} does not fit {top.shape[0]} originals and "
                             f"{bottom.shape[0]} reconstructions")
        bottom = bottom[index]
    if top.shape[-2:] != bottom.shape[-2:]:
        raise ValueError(f"originals are {tuple(top.shape[-2:])} pixels, reconstructions {tuple(bottom.shape[-2:])}")
    if top.shape[1] != bottom.shape[1]:
        top, bottom = top.expand(-1, 3, -1, -1), bottom.expand(-1, 3, -1, -1)
    channels, height, width = top.shape[1:]
    scale = max(1, math.ceil(min_side / max(height, width)))
    h, w = height * scale, width * scale
    count = top.shape[0]
    cols = max(1, min(columns, count, bottom.shape[0]))
    pairs = math.ceil(count / cols)
    out_h = pairs * (2 * h + GAP) + (pairs - 1) * 3 * GAP
    out_w = cols * w + (cols - 1) * GAP
    canvas = torch.ones(channels, out_h, out_w)
    for i in range(count):
        pair, col = divmod(i, cols)
        y = pair * (2 * h + 4 * GAP)
        x = col * (w + GAP)
        for row, image in enumerate((top[i], bottom[i] if i < bottom.shape[0] else None)):
            if image is None:
                continue
            big = image.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
            canvas[:, y + row * (h + GAP): y + row * (h + GAP) + h, x: x + w] = big
    return canvas


def write_grid(path: str | Path, originals: torch.Tensor, reconstructions: torch.Tensor,
               order: Sequence[int] | None = None) -> Path:
    """:func:`grid` as a PNG at `path` (atomic, via :func:`artshield.imageio.write_png`)."""
    from ...imageio import write_png

    return write_png(path, grid(originals, reconstructions, order))


# ------------------------------------------------------------------------------------------------- numbers
def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(results: Sequence[dict]) -> dict[str, Any]:
    """Means over the attacked (observed) updates; ``max_psnr`` is the best single reconstruction."""
    done = [r for r in results if r.get("observed")]
    psnrs = [r.get("psnr") for r in done if r.get("psnr") is not None]
    return {
        "attacks": len(done),
        "not_observed": len(results) - len(done),
        "mean_psnr": _mean(psnrs),
        "max_psnr": max(psnrs) if psnrs else None,
        "mean_ssim": _mean(r.get("ssim") for r in done),
        "mean_lpips": _mean(r.get("lpips") for r in done),
        "mean_label_accuracy": _mean(r.get("label_accuracy") for r in done),
        "mean_count_accuracy": _mean(r.get("count_accuracy") for r in done),
        "seconds": sum(float(r.get("seconds") or 0.0) for r in done),
    }


def jsonable(value: Any) -> Any:
    """Tensors and NumPy values as lists and numbers, non-finite numbers as None, tuples as lists, other objects
    as their ``str`` (for JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return jsonable(value.item() if value.dim() == 0 else value.tolist())
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # NumPy arrays and scalars
        return jsonable(value.tolist())
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


# ------------------------------------------------------------------------------------------------- HTML
def _number(value, digits: int = 2, percent: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f} %" if percent else f"{value:.{digits}f}"


def html(document: dict, title: str | None = None) -> str:
    """A self-contained HTML page: the setting, one table row per attacked update, and the grids."""
    esc = html_lib.escape
    settings = document.get("settings", {})
    title = title or f"{document.get('experiment', 'experiment')}: gradient leakage"
    summary = document.get("summary") or summarize(document.get("results", []))
    labels = settings.get("labels")
    body = [f"<h1>{esc(title)}</h1>",
            f"<p>{esc(str(document.get('mode', '')))} attack <b>{esc(str(settings.get('attack')))}</b>, labels "
            f"<b>{esc(str(labels))}</b>, {esc(str(settings.get('kind')))} updates "
            f"({esc(str(settings.get('local_steps')))} local step(s)) of batch {esc(str(settings.get('batch_size')))}"
            f" on task <b>{esc(str(document.get('task', '')))}</b>; clients {esc(str(settings.get('clients')))}, "
            f"rounds {esc(str(settings.get('rounds')))}.</p>"]
    if not document.get("finished", True):
        body.append("<p><b>Unfinished:</b> the run stopped before every update was attacked.</p>")
    body.append(f"<p>Mean PSNR {_number(summary.get('mean_psnr'))} dB (best {_number(summary.get('max_psnr'))}), "
                f"SSIM {_number(summary.get('mean_ssim'), 3)}, LPIPS {_number(summary.get('mean_lpips'), 3)}, "
                f"label accuracy {_number(summary.get('mean_label_accuracy'), percent=True)}, count accuracy "
                f"{_number(summary.get('mean_count_accuracy'), percent=True)} over {summary.get('attacks')} "
                "attacked update(s).</p>")
    header = ["client", "round", "PSNR (dB)", "SSIM", "LPIPS", "label acc.", "count acc.", "seconds"]
    body.append("<table>\n<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>")
    for r in document.get("results", []):
        if not r.get("observed"):
            cells = [r.get("client"), r.get("round"), "not sampled in this round", "", "", "", "", ""]
        else:
            cells = [r.get("client"), r.get("round"), _number(r.get("psnr")), _number(r.get("ssim"), 3),
                     _number(r.get("lpips"), 3), _number(r.get("label_accuracy"), percent=True),
                     _number(r.get("count_accuracy"), percent=True), _number(r.get("seconds"), 1)]
        body.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in cells) + "</tr>")
    body.append("</table>")
    for r in document.get("results", []):
        if r.get("grid"):
            caption = (f"client {r['client']}, round {r['round']}: its images (top) and the reconstructions "
                       f"matched to them (bottom); PSNR {_number(r.get('psnr'))} dB; true labels "
                       f"{r.get('true_labels')}, recovered {r.get('recovered_labels')}")
            body.append(f'<figure><img src="{esc(r["grid"])}" alt="{esc(r["grid"])}">'
                        f"<figcaption>{esc(caption)}</figcaption></figure>")
    notes = set()
    for r in document.get("results", []):
        found = r.get("assessment", {}).get("notes") if isinstance(r.get("assessment"), dict) else None
        if isinstance(found, dict):
            notes.update(f"{key}: {value}" for key, value in found.items() if value)
    notes = sorted(notes)
    body += [f"<p><small>{esc(note)}</small></p>" for note in notes]
    style = ("body{font-family:sans-serif;max-width:80em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:.25em .6em;text-align:right}img{image-rendering:pixelated;"
             "max-width:100%}figure{margin:1.5em 0}")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(folder: str | Path, document: dict) -> dict[str, Path]:
    """Write ``leak.json`` (the document, with its summary) and ``leak.html`` into `folder` (atomically)."""
    folder = Path(folder)
    document = dict(document)
    document["summary"] = summarize(document.get("results", []))
    document = jsonable(document)
    json_path = write_json_atomic(folder / LEAK_JSON, document, what="leakage results")
    html_path = write_text_atomic(folder / LEAK_HTML, html(document), what="leakage report")
    return {"json": json_path, "html": html_path}


__all__ = ["COLUMNS", "FORMAT", "LEAK_HTML", "LEAK_JSON", "MIN_SIDE", "grid", "grid_filename", "html", "jsonable",
           "summarize", "write_grid", "write_report"]
