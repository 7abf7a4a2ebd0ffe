"""``artshield fl``: federated poisoning attacks against robust defenses, from a small experiment file.

    artshield fl run experiment.toml [--engine inprocess|ray] [-o OUT] [--seed N]
    artshield fl sweep experiment.toml [--attacks lie,minmax,pill+lie] [--defenses fedavg,krum] [--seeds 0,1,2] [-o OUT]
    artshield fl list

Every problem with the file or the options (a missing or malformed file, an unknown key, attack, defense or
task, a value out of range, an output folder that is the experiment file) is one line naming the file and the
field, exit status 2, before anything runs or is written. A sweep keeps each cell as it finishes: run the same
command again after Ctrl-C and it resumes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..cli_support import ArgumentParser, non_negative_int, run_cli

PROG = "artshield fl"
RUN_FILES = ("rounds.json", "summary.json")
SWEEP_FILES = ("sweep.json", "report.json", "report.md", "report.html")


def seed_list(text: str) -> tuple[int, ...]:
    """``--seeds 0,1,2`` (checked at parse time)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("is empty; give comma-separated seeds such as 0,1,2")
    seeds = []
    for item in items:
        if not item.isdigit():
            raise argparse.ArgumentTypeError(f"must be comma-separated whole numbers >= 0, not {item!r}")
        seeds.append(int(item))
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"names a seed twice: {text!r}")
    return tuple(seeds)


def _verbosity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")


def build_parser(prog: str = PROG) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description="Federated poisoning attacks vs robust defenses on Flower.")
    parser.add_argument("--version", action="version", version=f"artshield {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{run,sweep,list}", required=True)

    run = sub.add_parser("run", help="run one experiment file: per-round JSON and a summary",
                         description="Run one federated experiment; writes rounds.json (after every round) and "
                         "summary.json.")
    run.add_argument("experiment", help="the experiment file (TOML; see examples/fl/quickstart.toml)")
    run.add_argument("--engine", choices=("inprocess", "ray"), help="override [federation] engine")
    run.add_argument("--seed", type=non_negative_int, help="override [federation] seed")
    run.add_argument("-o", "--output", help="output folder (default fl-runs/<experiment name>)")
    _verbosity(run)

    sweep = sub.add_parser("sweep", help="run attacks × defenses × seeds; tables, plots; resumable",
                           description="Run every attack × defense × seed cell of an experiment file (cells "
                           "already finished under the same configuration are kept), then write report.md, "
                           "report.html, report.json and plots/.")
    sweep.add_argument("experiment", help="the experiment file (TOML; see examples/fl/proof.toml)")
    sweep.add_argument("--attacks", help="comma-separated: clean, attack names, pill+<attack> (default: [sweep] "
                       "attacks of the file)")
    sweep.add_argument("--defenses", help="comma-separated defense names (default: [sweep] defenses of the file)")
    sweep.add_argument("--seeds", type=seed_list, help="comma-separated seeds (default: [sweep] seeds, else the "
                       "file's seed)")
    sweep.add_argument("--engine", choices=("inprocess", "ray"), help="override [federation] engine")
    sweep.add_argument("-o", "--output", help="output folder (default fl-sweeps/<experiment name>)")
    _verbosity(sweep)

    listing = sub.add_parser("list", help="list the attacks, defenses and tasks with their parameters",
                             description="List the attacks, defenses and tasks an experiment file can name.")
    _verbosity(listing)
    return parser


def _prepare(args, default_root: str):
    """Load the experiment, apply overrides, check the output folder; nothing is written here."""
    from ..fileio import check_output_folder, refuse_overlaps
    from .experiment import load_experiment

    experiment = load_experiment(args.experiment)
    changes = {}
    if getattr(args, "engine", None):
        changes["engine"] = args.engine
    if getattr(args, "seed", None) is not None:
        changes["seed"] = args.seed
    if changes:
        experiment = experiment.replace(**changes)
    output = args.output or str(Path(default_root) / Path(args.experiment).stem)
    refuse_overlaps(inputs=[("experiment file", args.experiment)], outputs=[("--output", output)])
    check_output_folder("--output", output)
    # The files this command writes inside the folder must not be the experiment file either.
    written = RUN_FILES if args.command == "run" else SWEEP_FILES
    refuse_overlaps(inputs=[("experiment file", args.experiment)],
                    outputs=[(f"--output's {name}", Path(output).expanduser() / name) for name in written])
    source = Path(args.experiment).expanduser().resolve()
    for folder in ("cells", "plots"):
        if args.command == "sweep" and source.is_relative_to(Path(output).expanduser().resolve() / folder):
            from ..errors import OutputWriteError

            raise OutputWriteError(f"--output {output!r}: the experiment file is inside its {folder}/ folder, "
                                   "which the sweep writes; choose another folder.")
    return experiment, output


def _fmt(value, percent: bool = True) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f} %" if percent else f"{value:.3g}"


def _run(args) -> int:
    experiment, output = _prepare(args, "fl-runs")
    from tqdm.auto import tqdm

    from .runner import run_experiment

    _quiet_flower(args)
    with tqdm(total=experiment.rounds, unit="round", desc=f"{experiment.defense} / {experiment.label}",
              disable=args.quiet) as bar:

        def progress(record: dict) -> None:
            bar.set_postfix_str(f"accuracy {_fmt(record.get('accuracy'))}")
            bar.update(1)

        result = run_experiment(experiment, output, progress=progress)
    summary = result["summary"]
    line = (f"{experiment.name}: {experiment.label} vs {experiment.defense}, {summary['rounds']} rounds: "
            f"accuracy {_fmt(summary['final_accuracy'])}")
    if summary["final_asr"] is not None:
        line += f", ASR {_fmt(summary['final_asr'])}"
    if summary["mean_tpr"] is not None:
        line += f", detection TPR {_fmt(summary['mean_tpr'])} / FPR {_fmt(summary['mean_fpr'])}"
    print(f"{line}; {summary['dropped']} replies dropped; results in {output}")
    return 0


def _sweep(args) -> int:
    from ..errors import InvalidArgumentError
    from .experiment import parse_list

    experiment, output = _prepare(args, "fl-sweeps")
    attacks = parse_list(args.attacks, "--attacks") if args.attacks is not None else experiment.sweep_attacks
    defenses = parse_list(args.defenses, "--defenses") if args.defenses is not None else experiment.sweep_defenses
    seeds = args.seeds or experiment.sweep_seeds or (experiment.seed,)
    if not attacks:
        raise InvalidArgumentError(f"--attacks is missing and {args.experiment} has no [sweep] attacks; "
                                   "give --attacks lie,minmax,...")
    if not defenses:
        raise InvalidArgumentError(f"--defenses is missing and {args.experiment} has no [sweep] defenses; "
                                   "give --defenses fedavg,median,...")
    from .report import markdown, write_report
    from .runner import sweep

    _quiet_flower(args)
    result = sweep(experiment, attacks, defenses, seeds, output, progress=not args.quiet)
    report = write_report(result.cells, output, title=f"{experiment.name}: federated poisoning sweep")
    if not args.quiet:
        print(markdown(report["summary"]))
        print()
    print(f"{len(result.cells)} cells ({result.computed} computed, {result.reused} reused); "
          f"report: {report['markdown']}, {report['html']}, {len(report['plots'])} plot(s) in {Path(output) / 'plots'}")
    return 0


def _describe(module, name: str, verbose: bool = False) -> str:
    """One line from a registry's ``describe(name)``: its kind and parameters with their defaults (and, with
    ``-v``, its summary)."""
    describe = getattr(module, "describe", None)
    if describe is None:
        return ""
    try:
        info = describe(name)
    except TypeError:
        table = describe()
        info = table.get(name, "") if isinstance(table, dict) else ""
    if not isinstance(info, dict):
        return " ".join(str(info).split())
    params = info.get("params", {k: v for k, v in info.items() if k not in ("name", "kind", "summary")})
    text = ", ".join(f"{key}={value!r}" for key, value in params.items()) if isinstance(params, dict) else str(params)
    kind = info.get("kind")
    line = f"[{kind}] {text or '(no parameters)'}" if kind else (text or "(no parameters)")
    if verbose and info.get("summary"):
        line += "\n" + " " * 17 + " ".join(str(info["summary"]).split())
    return line


def _list(args) -> int:
    import importlib

    from .experiment import CLEAN, FLOWER_DEFENSES, PILL_PREFIX

    sections = (
        ("attacks", "artshield.fl_bridge.attacks.registry", "ATTACKS"),
        ("defenses", "artshield.fl_bridge.defenses.registry", "DEFENSES"),
        ("tasks", "artshield.fl_bridge.tasks", "TASKS"),
    )
    for title, module_name, attribute in sections:
        module = importlib.import_module(module_name)
        names = tuple(getattr(module, attribute))
        print(f"{title}:")
        if title == "attacks":
            print(f"  {CLEAN:14s} no attack (sweeps: the clean baseline); {PILL_PREFIX}<attack> in sweeps wraps a base "
                  "attack in the pill")
        for name in names:
            text = _describe(module, name, args.verbose)
            print(f"  {name:14s} {text}".rstrip())
        if title == "defenses":
            for name in FLOWER_DEFENSES:
                print(f"  {name:18s} Flower's own {name.removeprefix('flower-')} strategy, unmodified "
                      "(params go to the Flower class)")
    return 0


def _quiet_flower(args) -> None:
    """Flower logs every round at INFO (and sets its logger to DEBUG when imported): keep it to warnings unless
    ``-v``. Called after the checks, right before a federation runs (importing flwr takes a moment)."""
    if getattr(args, "verbose", False):
        return
    import importlib.util
    import logging

    if importlib.util.find_spec("flwr") is not None:
        import flwr  # noqa: F401  (its logger is configured on import)
    logging.getLogger("flwr").setLevel(logging.WARNING)


def _body(args) -> int:
    return {"run": _run, "sweep": _sweep, "list": _list}[args.command](args)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    return run_cli(prog, build_parser(prog), argv, _body,
                   kept_on_interrupt="finished rounds (run) or finished cells (sweep) are kept; a sweep resumes "
                   "when the same command is run again.")


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
