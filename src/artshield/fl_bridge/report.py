"""A sweep's report: tables (Markdown and HTML) and plots of its cells.

:func:`summarize` turns the cells of a sweep (see :mod:`.runner`) into one JSON-able dict:

- ``accuracy[defense][attack]``: final test accuracy, mean over seeds with a 95 % percentile-bootstrap
  interval (:func:`artshield.stats.bootstrap_ci`, 1000 resamples, seeded);
- ``asr[defense][attack]``: final attack success rate, for targeted attacks (cells that report one);
- ``detection[defense][attack]``: mean detection TPR and FPR over the rounds, for defenses that select
  clients (cells that report them);
- ``pill[defense][base]``: the pill's error-rate increase over its base attack: the ratio of mean final error
  rates, ``pill+base`` over ``base``, with a paired bootstrap over seeds, and the difference in points;
- ``per_round[attack][defense]``: test accuracy per round, mean over seeds (the plots).

:func:`markdown` and :func:`html` render the same tables; :func:`plot_accuracy` draws accuracy per round per
defense, one PNG per attack; :func:`write_report` writes them all (atomically) into a folder.
"""

from __future__ import annotations

import html as html_lib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import write_bytes_atomic, write_json_atomic, write_text_atomic
from ..stats import bootstrap_ci
from .experiment import PILL_PREFIX


def _ordered(values) -> list:
    seen: list = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def _interval(values: Sequence[float], resamples: int) -> dict:
    array = np.asarray(values, dtype=np.float64)
    mean, low, high = bootstrap_ci(array, np.mean, n=resamples, seed=0)
    return {"mean": mean, "low": low, "high": high, "n": int(array.size)}


#: summary keys that can be averaged over the last rounds instead of read from the last one
_FINAL_KEYS = {"final_accuracy": "accuracy", "final_error_rate": "error_rate", "final_asr": "asr"}


def _values(cells: dict, defense: str, attack: str, key: str, last_rounds: int = 1) -> dict[int, float]:
    """seed -> the summary's `key` (cells where it is not None); a ``final_*`` key averaged over the cell's
    last `last_rounds` rounds when that is more than one (non-IID accuracy swings from round to round)."""
    out = {}
    for (d, a, seed), cell in cells.items():
        if d == defense and a == attack:
            value = cell["summary"].get(key)
            if last_rounds > 1 and key in _FINAL_KEYS and cell.get("rounds"):
                tail = [r.get(_FINAL_KEYS[key]) for r in cell["rounds"][-last_rounds:]]
                tail = [v for v in tail if v is not None]
                value = float(np.mean(tail)) if tail else None
            if value is not None:
                out[seed] = float(value)
    return out


def _pill(base_errors: dict[int, float], pill_errors: dict[int, float], resamples: int) -> dict | None:
    seeds = sorted(set(base_errors) & set(pill_errors))
    if not seeds:
        return None
    base = np.array([base_errors[s] for s in seeds])
    pill = np.array([pill_errors[s] for s in seeds])
    index = np.arange(len(seeds), dtype=np.float64)

    def difference(i):
        i = i.astype(int)
        return float(pill[i].mean() - base[i].mean())

    out: dict[str, Any] = {"n": len(seeds), "base_error": float(base.mean()), "pill_error": float(pill.mean())}
    est, low, high = bootstrap_ci(index, difference, n=resamples, seed=0)
    out["difference"] = {"mean": est, "low": low, "high": high}
    if np.all(base > 0):
        def ratio(i):
            i = i.astype(int)
            return float(pill[i].mean() / base[i].mean())

        est, low, high = bootstrap_ci(index, ratio, n=resamples, seed=0)
        out["ratio"] = {"mean": est, "low": low, "high": high}
    else:
        out["ratio"] = None  # the base attack left no error on some seed: a ratio would be infinite
    return out


def summarize(cells: Sequence[dict], resamples: int = 1000, last_rounds: int = 1) -> dict:
    """The report's numbers from a sweep's cell records (see the module docstring); accuracy, error rate and
    ASR are the last round's, or the mean over the last `last_rounds` rounds."""
    keyed = {(c["defense"], c["attack"], int(c["seed"])): c for c in cells}
    attacks = _ordered(c["attack"] for c in cells)
    defenses = _ordered(c["defense"] for c in cells)
    seeds = sorted({int(c["seed"]) for c in cells})
    summary: dict[str, Any] = {"attacks": attacks, "defenses": defenses, "seeds": seeds,
                               "rounds": max((c["summary"].get("rounds") or 0 for c in cells), default=0),
                               "last_rounds": int(last_rounds),
                               "accuracy": {}, "asr": {}, "detection": {}, "pill": {}, "per_round": {}}
    for defense in defenses:
        for attack in attacks:
            accuracy = _values(keyed, defense, attack, "final_accuracy", last_rounds)
            if accuracy:
                summary["accuracy"].setdefault(defense, {})[attack] = _interval(list(accuracy.values()), resamples)
            asr = _values(keyed, defense, attack, "final_asr", last_rounds)
            if asr:
                summary["asr"].setdefault(defense, {})[attack] = _interval(list(asr.values()), resamples)
            tpr = _values(keyed, defense, attack, "mean_tpr")
            fpr = _values(keyed, defense, attack, "mean_fpr")
            if tpr or fpr:
                summary["detection"].setdefault(defense, {})[attack] = {
                    "tpr": _interval(list(tpr.values()), resamples) if tpr else None,
                    "fpr": _interval(list(fpr.values()), resamples) if fpr else None,
                }
        for attack in attacks:
            if attack.startswith(PILL_PREFIX) and attack[len(PILL_PREFIX):] in attacks:
                base = attack[len(PILL_PREFIX):]
                entry = _pill(_values(keyed, defense, base, "final_error_rate", last_rounds),
                              _values(keyed, defense, attack, "final_error_rate", last_rounds), resamples)
                if entry is not None:
                    summary["pill"].setdefault(defense, {})[base] = entry
    for attack in attacks:
        for defense in defenses:
            curves = [[r.get("accuracy") for r in c["rounds"]] for (d, a, _), c in keyed.items()
                      if d == defense and a == attack]
            length = min((len(curve) for curve in curves), default=0)
            if not length:
                continue
            mean = []
            for i in range(length):
                values = [curve[i] for curve in curves if curve[i] is not None]
                mean.append(float(np.mean(values)) if values else None)
            summary["per_round"].setdefault(attack, {})[defense] = mean
    ratios = [e["ratio"]["mean"] for per in summary["pill"].values() for e in per.values() if e.get("ratio")]
    summary["pill_overall"] = ({"mean_ratio": float(np.mean(ratios)), "max_ratio": float(np.max(ratios)),
                                "pairs": len(ratios)} if ratios else None)
    return summary


# -------------------------------------------------------------------------------------------------
# tables
# -------------------------------------------------------------------------------------------------


def _percent(entry: dict | None) -> str:
    if not entry:
        return "–"
    if entry["n"] < 2:
        return f"{100 * entry['mean']:.1f}"
    return f"{100 * entry['mean']:.1f} [{100 * entry['low']:.1f}, {100 * entry['high']:.1f}]"


def _pill_cell(entry: dict | None) -> str:
    if not entry:
        return "–"
    diff = entry["difference"]
    points = f"{100 * diff['mean']:+.1f} pts"
    ratio = entry.get("ratio")
    if not ratio:
        return points
    if entry["n"] < 2:
        return f"×{ratio['mean']:.2f} ({points})"
    return f"×{ratio['mean']:.2f} [{ratio['low']:.2f}, {ratio['high']:.2f}] ({points})"


def tables(summary: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, rows)`` of every table of the report, in order (empty tables are left out)."""
    attacks, defenses, seeds = summary["attacks"], summary["defenses"], summary["seeds"]
    over = f"{len(seeds)} seed{'s' * (len(seeds) != 1)}"
    interval = " [95 % bootstrap interval]" if len(seeds) > 1 else ""
    out = []
    rows = [[d, *(_percent(summary["accuracy"].get(d, {}).get(a)) for a in attacks)] for d in defenses]
    last = summary.get("last_rounds", 1)
    when = "Final test accuracy" if last <= 1 else f"Test accuracy over the last {last} rounds"
    out.append((f"{when} (%), mean{interval} over {over}", ["defense \\ attack", *attacks], rows))
    targeted = [a for a in attacks if any(a in per for per in summary["asr"].values())]
    if targeted:
        rows = [[d, *(_percent(summary["asr"].get(d, {}).get(a)) for a in targeted)] for d in defenses
                if d in summary["asr"]]
        out.append((f"Attack success rate (%) of targeted attacks, mean{interval} over {over}",
                    ["defense \\ attack", *targeted], rows))
    if summary["detection"]:
        columns = [a for a in attacks if any(a in per for per in summary["detection"].values())]
        rows = []
        for d in defenses:
            if d not in summary["detection"]:
                continue
            row = [d]
            for a in columns:
                entry = summary["detection"][d].get(a)
                row.append("–" if not entry else f"{_percent(entry['tpr'])} / {_percent(entry['fpr'])}")
            rows.append(row)
        out.append((f"Detection of malicious clients: TPR / FPR (%), mean over rounds, mean{interval} over {over}",
                    ["defense \\ attack", *columns], rows))
    if summary["pill"]:
        bases = _ordered(b for per in summary["pill"].values() for b in per)
        rows = [[d, *(_pill_cell(summary["pill"][d].get(b)) for b in bases)] for d in defenses if d in summary["pill"]]
        overall = summary.get("pill_overall")
        note = (f"; mean ×{overall['mean_ratio']:.2f}, max ×{overall['max_ratio']:.2f} over {overall['pairs']} "
                "defense × base pairs" if overall else "")
        out.append(("The pill's error-rate increase over its base attack: error rate of pill+base ÷ base "
                    f"(paired over seeds), and the difference in points{note}", ["defense \\ base attack", *bases],
                    rows))
    return out


def markdown(summary: dict) -> str:
    """The report's tables as Markdown (each under a bold title)."""
    parts = []
    for title, header, rows in tables(summary):
        lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def html(summary: dict, title: str = "Federated poisoning sweep", plots: Sequence[str] = ()) -> str:
    """A self-contained HTML page with the report's tables (and the plots, by relative path)."""
    esc = html_lib.escape
    body = [f"<h1>{esc(title)}</h1>",
            f"<p>{len(summary['defenses'])} defenses × {len(summary['attacks'])} attacks × "
            f"{len(summary['seeds'])} seeds, {summary['rounds']} rounds.</p>"]
    for caption, header, rows in tables(summary):
        body.append(f"<h2>{esc(caption)}</h2>\n<table>\n<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            body.append("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>")
        body.append("</table>")
    for plot in plots:
        body.append(f'<figure><img src="{esc(plot)}" alt="{esc(plot)}"><figcaption>{esc(plot)}</figcaption></figure>')
    style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:.25em .6em;text-align:right}td:first-child{text-align:left}"
             "img{max-width:48em}")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# -------------------------------------------------------------------------------------------------
# plots and files
# -------------------------------------------------------------------------------------------------


def plot_filename(attack: str) -> str:
    return "accuracy-" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in attack.replace("+", "-")) + ".png"


def plot_accuracy(summary: dict, folder: str | Path) -> list[Path]:
    """One PNG per attack: test accuracy per round, one line per defense (mean over seeds); written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder = Path(folder)
    written = []
    for attack, per_defense in summary["per_round"].items():
        figure = Figure(figsize=(6.4, 4.0), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        for defense, curve in per_defense.items():
            rounds = [i + 1 for i, v in enumerate(curve) if v is not None]
            axes.plot(rounds, [100 * v for v in curve if v is not None], marker="o", markersize=3, label=defense)
        axes.set_xlabel("round")
        axes.set_ylabel("test accuracy (%)")
        axes.set_title(f"attack: {attack}")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small", ncol=2)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        written.append(write_bytes_atomic(folder / plot_filename(attack), buffer.getvalue(), what="plot"))
    return written


def write_report(cells: Sequence[dict], folder: str | Path, title: str = "Federated poisoning sweep",
                 resamples: int = 1000, last_rounds: int = 1) -> dict[str, Any]:
    """Write ``report.json`` (the summary), ``report.md``, ``report.html`` and ``plots/accuracy-<attack>.png``
    into `folder`; returns the summary and the paths."""
    folder = Path(folder)
    summary = summarize(cells, resamples=resamples, last_rounds=last_rounds)
    plots = plot_accuracy(summary, folder / "plots")
    relative = [str(p.relative_to(folder)) for p in plots]
    write_json_atomic(folder / "report.json", summary, what="report")
    write_text_atomic(folder / "report.md", f"# {title}\n\n{markdown(summary)}\n", what="report")
    write_text_atomic(folder / "report.html", html(summary, title, relative), what="report")
    return {"summary": summary, "json": folder / "report.json", "markdown": folder / "report.md",
            "html": folder / "report.html", "plots": plots}


__all__ = ["html", "markdown", "plot_accuracy", "plot_filename", "summarize", "tables", "write_report"]
