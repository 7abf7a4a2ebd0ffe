"""``artshield fl``: federated poisoning attacks against robust defenses, from a small experiment file.

    artshield fl run experiment.toml [--engine inprocess|ray] [-o OUT] [--seed N]
    artshield fl sweep experiment.toml [--attacks lie,minmax,pill+lie] [--defenses fedavg,krum] [--seeds 0,1,2] [-o OUT]
    artshield fl leak experiment.toml [--attack dlg|idlg|ig|gradinversion] [--labels zero-shot|llg|...] [--clients 0,3]
                      [--rounds-before N] [--batch-size B] [--steps N] [-o OUT]
    artshield fl list

Every problem with the file or the options (a missing or malformed file, an unknown key, attack, defense or
task, a value out of range, an output folder that is the experiment file) is one line naming the file and the
field, exit status 2, before anything runs or is written. A sweep keeps each cell as it finishes: run the same
command again after Ctrl-C and it resumes. ``leak`` (a curious server's gradient inversion, see
:mod:`artshield.fl_bridge.leakage.runner`) takes its settings from the file's [leakage] table, overridden by the
options; it writes leak.json, leak.html and grid-client<k>.png.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..cli_support import ArgumentParser, non_negative_int, positive_int, run_cli
from .experiment import LEAKAGE_ATTACKS, LEAKAGE_KINDS, LEAKAGE_LABELS

PROG = "artshield fl"
RUN_FILES = ("rounds.json", "summary.json")
SWEEP_FILES = ("sweep.json", "report.json", "report.md", "report.html")
LEAK_FILES = ("leak.json", "leak.html")


def client_list(text: str) -> int | list[int]:
    """``--clients 2`` (a count: clients 0 and 1), ``--clients 0,3`` or ``--clients 5,`` (partition ids)."""
    items = [item.strip() for item in text.split(",")]
    if not all(item.isdigit() for item in items if item) or not any(items):
        raise argparse.ArgumentTypeError(f"must be a count (2) or comma-separated partition ids (0,3 or 5,), not "
                                         f"{text!r}")
    if len(items) == 1:
        return int(items[0])
    return [int(item) for item in items if item]


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
    sub = parser.add_subparsers(dest="command", metavar="{run,sweep,leak,list}", required=True)

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
    sweep.add_argument("--last-rounds", type=positive_int, default=1, metavar="K",
                       help="report accuracy, error rate and ASR as the mean over the last K rounds (default 1: the "
                            "last round; non-IID accuracy swings from round to round)")
    sweep.add_argument("--seeds", type=seed_list, help="comma-separated seeds (default: [sweep] seeds, else the "
                       "file's seed)")
    sweep.add_argument("--engine", choices=("inprocess", "ray"), help="override [federation] engine")
    sweep.add_argument("-o", "--output", help="output folder (default fl-sweeps/<experiment name>)")
    _verbosity(sweep)

    leak = sub.add_parser("leak", help="a curious server reconstructs chosen clients' images from their updates",
                          description="Gradient leakage without a federation: the experiment's model at round 1 (or "
                          "after --rounds-before N honest rounds), each chosen client's honest update on its "
                          "batch, label recovery, reconstruction, assessment. Settings come from the file's "
                          "[leakage] table; options override them. Writes leak.json, leak.html, grid-client<k>.png.")
    leak.add_argument("experiment", help="the experiment file (TOML; see examples/fl/leakage.toml)")
    leak.add_argument("--attack", choices=LEAKAGE_ATTACKS, help="the inversion attack (default: [leakage] attack)")
    leak.add_argument("--labels", choices=LEAKAGE_LABELS, help="label recovery: a strategy, known (true labels) or "
                      "joint (DLG optimises them) (default: [leakage] labels)")
    leak.add_argument("--clients", type=client_list, help="a count k (clients 0..k-1) or partition ids: 0,3 (one: "
                      "5,) (default: [leakage] clients, else 1)")
    leak.add_argument("--rounds-before", type=non_negative_int, metavar="N", help="honest federated rounds before "
                      "the attacked one (default 0: the initial model; or [leakage] rounds)")
    leak.add_argument("--batch-size", type=positive_int, help="the attacked clients' batch (default: [leakage] "
                      "batch_size, else 1)")
    leak.add_argument("--steps", type=positive_int, help="inversion steps (default: the attack's preset)")
    leak.add_argument("--restarts", type=positive_int, help="inversion restarts (default 1)")
    leak.add_argument("--kind", choices=LEAKAGE_KINDS, help="fedsgd (one local step) or fedavg (default: what "
                      "[training] makes of the batch)")
    leak.add_argument("--seed", type=non_negative_int, help="override [federation] seed")
    leak.add_argument("-o", "--output", help="output folder (default fl-leaks/<experiment name>)")
    _verbosity(leak)

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
    written = {"run": RUN_FILES + (LEAK_FILES if experiment.leakage is not None else ()), "sweep": SWEEP_FILES,
               "leak": LEAK_FILES}[args.command]
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
    if result.get("leakage"):
        print(_leak_line(result["leakage"], output))
    return 0


def _leak_line(summary: dict, output) -> str:
    return (f"gradient leakage: {summary['attacks']} update(s) attacked: mean PSNR {_fmt(summary['mean_psnr'], False)} "
            f"dB (best {_fmt(summary['max_psnr'], False)}), SSIM {_fmt(summary['mean_ssim'], False)}, label accuracy "
            f"{_fmt(summary['mean_label_accuracy'])}, count accuracy {_fmt(summary['mean_count_accuracy'])}; "
            f"{Path(output) / 'leak.html'}")


def _leak(args) -> int:
    experiment, output = _prepare(args, "fl-leaks")
    from ..fileio import refuse_overlaps
    from .leakage.report import grid_filename
    from .leakage.runner import settings_for

    overrides = {"attack": args.attack, "labels": args.labels, "clients": args.clients, "batch_size": args.batch_size,
                 "rounds": None if args.rounds_before is None else [args.rounds_before + 1], "steps": args.steps,
                 "restarts": args.restarts, "kind": args.kind}
    options = {"attack": "--attack", "labels": "--labels", "clients": "--clients", "batch_size": "--batch-size",
               "rounds": "--rounds-before", "steps": "--steps", "restarts": "--restarts", "kind": "--kind"}
    settings = settings_for(experiment, overrides, options)
    several = len(settings["rounds"]) > 1
    grids = [grid_filename(c, r if several else None) for r in settings["rounds"] for c in settings["clients"]]
    refuse_overlaps(inputs=[("experiment file", args.experiment)],
                    outputs=[(f"--output's {name}", Path(output).expanduser() / name) for name in grids])
    from tqdm.auto import tqdm

    from .leakage.runner import prepare_leakage

    bars = []

    def progress(result: dict) -> None:
        bars[0].set_postfix_str(f"client {result['client']}: PSNR {_fmt(result.get('psnr'), False)} dB")
        bars[0].update(1)

    run = prepare_leakage(experiment.replace(leakage=settings), out_dir=output, progress=progress)  # checks data
    _quiet_flower(args)
    with tqdm(total=run.total, unit="update", desc=f"{settings['attack']} / {settings['labels']}",
              disable=args.quiet) as bar:
        bars.append(bar)
        document = run.run()
    for r in document["results"]:
        if not r.get("observed"):
            continue
        print(f"client {r['client']}, round {r['round']}: PSNR {_fmt(r.get('psnr'), False)} dB, SSIM "
              f"{_fmt(r.get('ssim'), False)}, LPIPS {_fmt(r.get('lpips'), False)}, labels "
              f"{_fmt(r.get('label_accuracy'))}, counts {_fmt(r.get('count_accuracy'))}, {r['seconds']:.1f} s")
    print(_leak_line(document["summary"], output))
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
    report = write_report(result.cells, output, title=f"{experiment.name}: federated poisoning sweep",
                          last_rounds=args.last_rounds)
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
    return {"run": _run, "sweep": _sweep, "leak": _leak, "list": _list}[args.command](args)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    return run_cli(prog, build_parser(prog), argv, _body,
                   kept_on_interrupt="finished rounds (run), finished cells (sweep) or attacked updates (leak, "
                   "leak.json) are kept; a sweep resumes when the same command is run again.")


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
