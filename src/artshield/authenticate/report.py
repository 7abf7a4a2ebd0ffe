"""``report.json`` and ``report.html`` of an audit: the verdict at the top in plain words with its error rate,
a metrics table, and per image the original, the degraded input, what the base model recovers, what the
contrast recovers, and the similarity numbers. Written atomically (:mod:`artshield.fileio`); the HTML is
self-contained: its images are the PNG files next to it, nothing is fetched from anywhere."""

from __future__ import annotations

import html
import math
from pathlib import Path

from ..fileio import write_json_atomic, write_text_atomic

SCORE_LABELS = {
    "cgidm": "CGI-DM (paired cosine)",
    "cgidm-gain": "CGI-DM gain over base",
    "cgidm-max": "CGI-DM max cosine (Revelio)",
    "loss": "Loss (L_ft)",
    "loss-diff": "Calibrated loss (L_pre − L_ft)",
    "secmi": "SecMI",
    "pia": "PIA",
}


def verdict_sentence(result) -> str:
    """The verdict in words a non-specialist can read, with its error rate."""
    verdict = result.verdict
    if verdict is None:
        return ("No verdict: give hold-out images (the artist's work that was surely not used for training) or "
                "calibration images, so that the suspect's scores can be compared with a reference.")  # fmt: skip
    p, alpha = verdict["p_value"], verdict["alpha"]
    reference = "hold-out" if verdict.get("reference") == "holdout" else "calibration"
    if verdict["learned"]:
        return (
            f"The suspect model shows evidence of having been trained on these images: it restores them better "
            f"than the {reference} images (p = {p:.3g}). A model that did not learn them would look this "
            f"suspicious with probability at most {p:.2%}; verdicts are issued at a false-accusation rate of "
            f"{alpha:.0%}."
        )
    return (
        f"No evidence that the suspect model was trained on these images: it does not restore them "
        f"significantly better than the {reference} images (p = {p:.3g}; a verdict would need p ≤ {alpha:g}, "
        f"a false-accusation rate of {alpha:.0%}). This is not proof that they were not used: a small or "
        "short fine-tune may leave too little trace."
    )


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fmt(v, digits) for v in value) + "]"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def render_html(result) -> str:
    esc = html.escape
    learned = result.verdict is not None and result.verdict["learned"]
    colour = "#b00020" if learned else "#1b5e20" if result.verdict is not None else "#555"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>artshield authenticate report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#f4f4f4}.verdict{font-size:1.2em;padding:1em;border-left:6px solid " + colour + "}"
        ".imgs img{width:160px;height:160px;image-rendering:pixelated;margin-right:4px}figure{display:inline-block;margin:0 6px 0 0}"
        "figcaption{font-size:.8em;text-align:center}.card{border-top:1px solid #ddd;padding:.8em 0}</style></head><body>",
        "<h1>Did this model learn the artist's work?</h1>",
        f"<p class='verdict'>{esc(verdict_sentence(result))}</p>",
    ]
    settings = result.settings
    parts.append(
        f"<p>Base: <code>{esc(str(settings['models']['base']))}</code>; suspect ({esc(settings['models']['kind'])}): "
        f"<code>{esc(str(settings['models']['suspect'])[:80])}</code>; prompt: <code>{esc(settings['prompt'])}</code>. "
        f"Similarity space: {esc(result.feature_note)}</p>"
    )
    if result.verdict is not None:
        v = result.verdict
        parts.append(
            f"<p>Score: {esc(SCORE_LABELS.get(v.get('score', 'cgidm'), str(v.get('score'))))}. Test: {esc(str(v['method']))}; statistic {_fmt(v['statistic'])}, p-value {_fmt(v['p_value'], 4)}, "
            f"level {_fmt(v['alpha'])}. {esc(str(v['explanation']))}</p>"
        )
    if result.metrics:
        parts.append("<h2>Image-level membership (artist images vs hold-out)</h2><table><tr><th>score</th><th>AUC</th>"
                     "<th>95 % CI</th><th>TPR @ 1 % FPR</th><th>TPR @ 0.1 % FPR</th><th>balanced acc.</th></tr>")  # fmt: skip
        for name, m in result.metrics.items():
            parts.append(
                f"<tr><th>{esc(SCORE_LABELS.get(name, name))}</th><td>{_fmt(m['auc'])}</td><td>{_fmt(m['auc_ci'])}</td>"
                f"<td>{_fmt(m['tpr_at_1pct'])}</td><td>{_fmt(m['tpr_at_01pct'])}</td><td>{_fmt(m['balanced_accuracy'])}</td></tr>"
            )
        parts.append("</table>")
    for note in result.notes:
        parts.append(f"<p><em>{esc(note)}</em></p>")
    parts.append("<h2>Per image</h2>")
    for image in result.images:
        flag = "" if image.flagged is None else (" — <b>flagged</b>" if image.flagged else " — not flagged")
        parts.append(f"<div class='card'><h3>{esc(image.name)} <small>({esc(image.split)}){flag}</small></h3><div class='imgs'>")
        for view, caption in (("original", "original"), ("degraded", "degraded input"), ("base", "base model recovers"),
                              ("contrast", "contrast recovers")):  # fmt: skip
            if view in image.evidence:
                sim = "" if view == "original" else f" (cos {image.similarity[view]:.3f})"
                parts.append(f"<figure><img src='{esc(image.evidence[view])}' alt='{esc(caption)}'>"
                             f"<figcaption>{esc(caption)}{sim}</figcaption></figure>")  # fmt: skip
        parts.append("</div><p>" + "; ".join(f"{esc(SCORE_LABELS.get(k, k))}: {_fmt(v)}" for k, v in image.scores.items()) + "</p></div>")
    parts.append(
        f"<p><small>{len(result.images)} images, {result.computed} computed, {result.reused} reused from the cache, "
        f"{result.seconds:.1f} s. CGI-DM settings: {esc(str(settings['cgidm']))}</small></p></body></html>"
    )
    return "\n".join(parts)


def write_report(result, output) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into `output` (atomically); returns their paths."""
    output = Path(output)
    data = result.to_dict()
    data["verdict_text"] = verdict_sentence(result)
    json_path = write_json_atomic(output / "report.json", data, what="report")
    html_path = write_text_atomic(output / "report.html", render_html(result), what="report")
    return json_path, html_path
