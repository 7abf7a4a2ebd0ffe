"""The ``artshield`` umbrella command: ``artshield protect ...`` is ``protect ...``; more rooms join as they land."""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__


def _info(argv: list[str]) -> int:
    """Print the version, the device artshield would use, and how the demo model was made."""
    parser = argparse.ArgumentParser(prog="artshield info", description="Show versions, device and demo-model facts.")
    parser.parse_args(argv)
    import torch

    from .models.demo import DEMO_WEIGHTS
    from .models.device import resolve_device

    info = {
        "artshield": __version__,
        "torch": torch.__version__,
        "device": str(resolve_device(None)),
        "demo_weights": str(DEMO_WEIGHTS),
    }
    training = DEMO_WEIGHTS / "training_info.json"
    if training.is_file():
        info["demo_training"] = json.loads(training.read_text())
    print(json.dumps(info, indent=2))
    return 0


def _memorization(argv: list[str]) -> int:
    from .finetune.memorization_cli import main as memorization_main

    return memorization_main(argv)


def _finetune(argv: list[str]) -> int:
    from .finetune.train import main as train_main

    return train_main(argv, prog="artshield finetune")


def _evaluate(argv: list[str]) -> int:
    from .evaluate.cli import main as evaluate_main

    return evaluate_main(argv, prog="artshield evaluate")


def _purify(argv: list[str]) -> int:
    from .evaluate.purify_cli import main as purify_main

    return purify_main(argv, prog="artshield purify")


def _authenticate(argv: list[str]) -> int:
    from .authenticate.cli import main as authenticate_main

    return authenticate_main(argv, prog="artshield authenticate")


def _fl(argv: list[str]) -> int:
    from .fl_bridge.cli import main as fl_main

    return fl_main(argv, prog="artshield fl")


def _serve(argv: list[str]) -> int:
    from .web.serve import main as serve_main

    return serve_main(argv, prog="artshield serve")


COMMANDS = {
    "protect": ("protect an image or a folder (same as the `protect` command)", None),
    "finetune": ("fine-tune with LoRA, DreamBooth or full training (as `accelerate launch -m artshield.finetune.train`)", _finetune),
    "memorization": ("detect memorized prompts and prune the memorization subspace", _memorization),
    "purify": ("apply a purification attack (jpeg, resize, noise, diffpure, impress, ...) to a folder", _purify),
    "evaluate": ("run mimicry (LoRA, SDEdit, inpainting) on clean vs protected+purified images; JSON + HTML report", _evaluate),
    "authenticate": ("did a fine-tuned model (or LoRA) learn an artist's images? CGI-DM + baselines; JSON + HTML report", _authenticate),
    "fl": ("federated poisoning attacks vs robust defenses on Flower: run / sweep an experiment file, list", _fl),
    "serve": ("start a local web page to protect images in the browser (needs artshield[web])", _serve),
    "info": ("show versions, the device and how the demo model was made", _info),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: artshield <command> [options]\n\ncommands:")
        for name, (summary, _) in COMMANDS.items():
            print(f"  {name:10s} {summary}")
        print("\nRun `artshield <command> --help` for a command's options.")
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"artshield {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "protect":
        from .protect.cli import main as protect_main

        return protect_main(rest, prog="artshield protect")
    if command in COMMANDS:
        return COMMANDS[command][1](rest)
    print(f"artshield: error: unknown command {command!r}; choose from {', '.join(COMMANDS)}.", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
