"""The evaluation harness's HTML report: headline table, image quality, score tables, a plot and image grids.

Self-contained static files beside ``report.json``: ``report.html``, ``grids/<mimicry>/<condition>.png`` (one
strip of outputs per condition, thumbnails for display only), ``grids/inputs/<condition>.png`` (what the
mimic trained on or edited) and ``plot_<mimicry>.svg`` (the headline score per purification with its
interval, against the clean baseline). No JavaScript, no external assets, no plotting library.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..fileio import write_text_atomic
from ..imageio import read_image, write_png

THUMB = 96  # thumbnail height in pixels
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")


def strip(images: list[torch.Tensor], columns: int, height: int = THUMB) -> torch.Tensor:
    """The first `columns` images side by side, each resized to `height` (display only), 2 px white gaps."""
    tiles = []
    for image in images[:columns]:
        rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image
        width = max(1, round(rgb.shape[-1] * height / rgb.shape[-2]))
        tiles.append(F.interpolate(rgb[None].float(), size=(height, width), mode="bilinear", antialias=True,
                                   align_corners=False)[0].clamp(0, 1))
        tiles.append(torch.ones(3, height, 2))
    return torch.cat(tiles[:-1], dim=-1)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _with_ci(entry: dict | None, key: str = "value", ci: str = "ci95", digits: int = 3) -> str:
    if not entry:
        return "–"
    low, high = entry[ci]
    return f"{_fmt(entry[key], digits)} <small>[{_fmt(low, digits)}, {_fmt(high, digits)}]</small>"


def plot_svg(summary: dict[str, Any], score: str, title: str) -> str:
    """Headline score per protected set and purification (points with interval whiskers) against the clean band."""
    conditions = summary["conditions"]
    protection = summary.get("protection", {})
    clean = conditions.get("clean+none")
    groups = [(label, list(p["per_purification"].items())) for label, p in protection.items()]
    values = [v for c in conditions.values() for v in (c["value"], *c["ci95"])]
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 or 0.05
    low, high = low - pad, high + pad
    n_points = sum(len(items) for _, items in groups)
    width, height, left, right, top, bottom = max(360, 80 + 26 * n_points + 30 * len(groups)), 300, 56, 12, 28, 92
    plot_w, plot_h = width - left - right, height - top - bottom

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - low) / (high - low))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
             f'<text x="{left}" y="16" font-size="13">{html.escape(title)}</text>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>']  # fmt: skip
    for k in range(5):
        v = low + (high - low) * k / 4
        parts.append(f'<line x1="{left - 4}" y1="{y(v):.1f}" x2="{left}" y2="{y(v):.1f}" stroke="#333"/>'
                     f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    parts.append(f'<text transform="translate(14,{top + plot_h / 2}) rotate(-90)" text-anchor="middle">{html.escape(score)}</text>')
    if clean:
        lo, hi = clean["ci95"]
        parts.append(f'<rect x="{left}" y="{y(hi):.1f}" width="{plot_w}" height="{max(1.0, y(lo) - y(hi)):.1f}" fill="#2ca02c" opacity="0.15"/>'
                     f'<line x1="{left}" y1="{y(clean["value"]):.1f}" x2="{left + plot_w}" y2="{y(clean["value"]):.1f}" '
                     f'stroke="#2ca02c" stroke-dasharray="5,3"/>'
                     f'<text x="{left + plot_w - 2}" y="{y(clean["value"]) - 4:.1f}" text-anchor="end" fill="#2ca02c">clean</text>')
    x = left + 20
    for g, (label, items) in enumerate(groups):
        start = x
        for p, (spec, entry) in enumerate(items):
            colour = PALETTE[p % len(PALETTE)]
            lo, hi = entry["ci95"]
            parts.append(f'<line x1="{x}" y1="{y(lo):.1f}" x2="{x}" y2="{y(hi):.1f}" stroke="{colour}" stroke-width="2"/>'
                         f'<circle cx="{x}" cy="{y(entry["value"]):.1f}" r="4" fill="{colour}"><title>{html.escape(label)} + '
                         f'{html.escape(spec)}: {entry["value"]:.3f} [{lo:.3f}, {hi:.3f}]</title></circle>'
                         f'<text transform="translate({x + 3},{top + plot_h + 8}) rotate(60)" font-size="9">{html.escape(spec)}</text>')
            x += 26
        parts.append(f'<text x="{(start + x - 26) / 2:.1f}" y="{height - 6}" text-anchor="middle" font-weight="bold">'
                     f'{html.escape(label)}</text>')
        if g < len(groups) - 1:
            parts.append(f'<line x1="{x + 2}" y1="{top}" x2="{x + 2}" y2="{top + plot_h}" stroke="#ccc"/>')
        x += 30
    parts.append("</svg>")
    return "".join(parts)


def grid_indices(candidates: Iterable[int], sources: Sequence[int | None] | None, columns: int) -> list[int]:
    """Which outputs a grid shows: for image-to-image attacks the first output made from each input image, in the
    inputs' order, so that the grid's columns line up with the row of inputs above it (several masks or seeds per
    image would otherwise fill the row with the first image's outputs); then, with room left, the others in order."""
    candidates = list(candidates)
    if not sources or all(source is None for source in sources):
        return candidates[:columns]
    first = {}
    for i in candidates:
        first.setdefault(sources[i], i)
    leading = list(first.values())
    taken = set(leading)
    return (leading + [i for i in candidates if i not in taken])[:columns]


def write_report(report: dict[str, Any], inputs: dict[str, list[torch.Tensor]], output: Path, columns: int) -> Path:
    """Write the grids, plots and ``report.html``; adds each grid's relative path to `report` (before it is saved)."""
    output = Path(output)
    for condition, images in inputs.items():
        write_png(output / "grids" / "inputs" / f"{safe_name(condition)}.png", strip(images, columns))
    for name, entry in report["mimicry"].items():
        # With a checkpoint curve, the grid shows the last training step's outputs (the result).
        stages = entry.get("stages") or []
        shown = [i for i, step in enumerate(stages) if step == max(stages)] if stages else None
        for condition, cell in entry["conditions"].items():
            folder = output / cell["folder"] / "images"
            indices = grid_indices(shown if shown is not None else range(cell["outputs"]), entry.get("sources"), columns)
            images = [read_image(folder / f"{i:04d}.png").rgb[0] for i in indices]
            relative = Path("grids") / name / f"{safe_name(condition)}.png"
            write_png(output / relative, strip(images, columns))
            cell["grid"] = relative.as_posix()
            cell["input_grid"] = (Path("grids") / "inputs" / f"{safe_name(condition)}.png").as_posix()
    score = report["headline_score"]
    plots = {}
    for name, entry in report["mimicry"].items():
        if score in entry["scores"]:
            svg = plot_svg(entry["scores"][score], score, f"{name}: {score} of the mimic's outputs (worse mimicry = protection works)")
            write_text_atomic(output / f"plot_{name}.svg", svg)
            plots[name] = svg
    path = output / "report.html"
    write_text_atomic(path, _html(report, plots))
    return path


def _curve_table(curve: dict[str, Any], score: str) -> str:
    """The checkpoint curve: the headline score of every condition at every training step, and each protected
    set's worst-case effect (the result is the last row)."""
    steps = [step for step in curve if score in curve[step]]
    if not steps:
        return ""
    conditions = list(curve[steps[-1]][score]["conditions"])
    protected = list(curve[steps[-1]][score].get("protection", {}))
    out = [f"<p>Checkpoint curve: {html.escape(score)} of the mimic's outputs at each training step (the same "
           "generation noise at every step; intervals over training runs and generations).</p>",
           "<table><tr><th>step</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in conditions)
           + "".join(f"<th>effect, {html.escape(p)} (worst case)</th>" for p in protected) + "</tr>"]
    for step in steps:
        summary = curve[step][score]
        cells = "".join(f"<td>{_with_ci(summary['conditions'].get(c))}</td>" for c in conditions)
        effects = "".join(f"<td>{_with_ci(summary['protection'][p]['worst_case'], 'effect', 'effect_ci95')}</td>"
                          if p in summary.get("protection", {}) else "<td>–</td>" for p in protected)
        out.append(f"<tr><td>{html.escape(step)}</td>{cells}{effects}</tr>")
    out.append("</table>")
    return "".join(out)


def _verdict(protects: bool) -> str:
    return "<span class=yes>yes</span>" if protects else "<span class=no>no</span>"


def safe_name(name: str) -> str:
    """`name` with every character but letters, digits and ``._+-`` replaced by ``_`` (a portable file name)."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def _html(report: dict[str, Any], plots: dict[str, str]) -> str:
    score = report["headline_score"]
    direction = report["scores"][score]["direction"]
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>artshield evaluation</title><style>",
           "body{font-family:sans-serif;margin:24px;max-width:1400px}table{border-collapse:collapse;margin:8px 0 20px}"
           "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}"
           ".yes{color:#1a7f37;font-weight:bold}.no{color:#b42318;font-weight:bold}small{color:#666}img{image-rendering:pixelated}",
           "</style></head><body>",
           "<h1>artshield evaluation</h1>",
           f"<p>{len(report['images']['names'])} clean images from <code>{html.escape(report['images']['folders']['clean'])}</code>; "
           f"purifications: {html.escape(', '.join(report['purifications']))}; bootstrap: {report['bootstrap']['resamples']} paired "
           f"resamples, {100 * (1 - report['bootstrap']['alpha']):.0f}% intervals. artshield {html.escape(report['artshield'])}, "
           f"{report['seconds']} s.</p>",
           f"<h2>Headline: worst case over purifications ({html.escape(score)}, {html.escape(direction)})</h2>",
           "<p>Effect = how much the protection reduced the mimic's success against the clean baseline (positive = protects), "
           "for the purification that restores mimicry best; the interval re-chooses that purification in every resample.</p>",
           "<table><tr><th class=l>mimicry</th><th class=l>protected set</th><th>clean</th><th class=l>worst purification</th>"
           "<th>protected, worst case</th><th>effect</th><th>protects?</th>"
           "<th class=l>net of purification: worst</th><th>effect</th><th>protects?</th></tr>"]  # fmt: skip
    for row in report["headline"]:
        net = row.get("vs_purified_clean")
        net_cells = (f"<td class=l>{html.escape(net['purification'])}</td><td>{_with_ci(net, 'effect', 'effect_ci95')}</td>"
                     f"<td>{_verdict(net['protects'])}</td>") if net else "<td class=l>–</td><td>–</td><td>–</td>"
        out.append(f"<tr><td class=l>{html.escape(row['mimicry'])}</td><td class=l>{html.escape(row['protected'])}</td>"
                   f"<td>{_with_ci(row['clean'])}</td><td class=l>{html.escape(row['purification'])}</td><td>{_with_ci(row)}</td>"
                   f"<td>{_with_ci(row, 'effect', 'effect_ci95')}</td><td>{_verdict(row['protects'])}</td>{net_cells}</tr>")
    out.append("</table><p><small>Net of purification (with <code>--purify-clean</code>): each purified protected set is "
               "compared with the clean images under the same purification, which separates the protection's effect from "
               "what the purification does to the mimic's outputs by itself.</small></p>")

    if report.get("failed"):
        out.append("<h2>Failed cells</h2><p>These ran, but the mimic's tool failed; they are left out of every "
                   "comparison (their logs are in the cell folders).</p><table><tr><th class=l>mimicry</th>"
                   "<th class=l>condition</th><th class=l>error</th></tr>")
        out.extend(f"<tr><td class=l>{html.escape(f['mimicry'])}</td><td class=l>{html.escape(f['condition'])}</td>"
                   f"<td class=l><small>{html.escape(f['error'])}</small></td></tr>" for f in report["failed"])
        out.append("</table>")

    out.append("<h2>Protected images against the originals</h2><table><tr><th class=l>set</th><th>L∞ max (/255)</th>"
               "<th>PSNR (dB)</th><th>SSIM</th><th>LPIPS</th></tr>")
    for label, quality in report["quality"].items():
        s = quality["summary"]
        cells = [_with_ci(s[k], "mean", digits=d) if s[k] else "–" for k, d in (("psnr_db", 2), ("ssim", 4), ("lpips", 4))]
        out.append(f"<tr><td class=l>{html.escape(label)}</td><td>{s['linf_255_max']:.2f}</td><td>{'</td><td>'.join(cells)}</td></tr>")
    out.append("</table>")

    for name, entry in report["mimicry"].items():
        out.append(f"<h2>Mimicry: {html.escape(name)}</h2><p>{html.escape(entry['summary'])}. Settings: "
                   f"<code>{html.escape(json.dumps(entry['config']))}</code></p>")
        if name in plots:
            out.append(plots[name])
        scores = list(entry["scores"])
        out.append("<table><tr><th class=l>condition</th>" + "".join(f"<th>{html.escape(s)}</th>" for s in scores)
                   + "<th>time (s)</th></tr>")
        for condition, cell in entry["conditions"].items():
            values = "".join(f"<td>{_with_ci(cell['scores'].get(s))}</td>" for s in scores)
            reused = " <small>(reused)</small>" if cell["reused"] else ""
            out.append(f"<tr><td class=l>{html.escape(condition)}</td>{values}<td>{cell['seconds']}{reused}</td></tr>")
        out.append("</table>")
        if entry.get("curve"):
            out.append(_curve_table(entry["curve"], score))
        out.append("<table><tr><th class=l>condition</th><th class=l>mimic's input</th><th class=l>mimic's output</th></tr>")
        for condition, cell in entry["conditions"].items():
            out.append(f"<tr><td class=l>{html.escape(condition)}</td><td class=l><img src='{html.escape(cell['input_grid'])}'></td>"
                       f"<td class=l><img src='{html.escape(cell['grid'])}'></td></tr>")
        out.append("</table>")

    out.append("<h2>Scores</h2><table><tr><th class=l>score</th><th class=l>direction</th><th class=l>what</th><th class=l>note</th></tr>")
    for name, meta in report["scores"].items():
        note = report["notes"].get(name, "")
        out.append(f"<tr><td class=l>{name}</td><td class=l>{meta['direction']}</td><td class=l>{html.escape(meta['description'])}</td>"
                   f"<td class=l><small>{html.escape(note)}</small></td></tr>")
    out.append("</table>")
    if report.get("command"):
        out.append(f"<p><small>Command: <code>{html.escape(report['command'])}</code></small></p>")
    out.append("</body></html>\n")
    return "\n".join(out)


__all__ = ["plot_svg", "safe_name", "strip", "write_report"]
