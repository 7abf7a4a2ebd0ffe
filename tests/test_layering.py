"""The import structure: arrows only point down, no cycles, no private names taken across modules.

Layers (README, "For contributors"), lowest first:

- base      allocator, errors, fileio, imageio, stats, metrics, masks, compat, cli_support (and the package root)
- core      engine (knows nothing of diffusion), models (loading, the handle, the demo model and its world)
- methods   protect, finetune
- studies   evaluate, authenticate, fl_bridge
- commands  artshield.cli, artshield.__main__, every ``cli`` / ``*_cli`` module, and artshield.web (the local page)

A module may import its own room and any lower layer; rooms of one layer never import each other; nothing
imports a command module but another command module. Every import counts, including those inside functions
(they are how cycles hide).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "artshield"

BASE = {"allocator", "errors", "fileio", "imageio", "stats", "metrics", "masks", "compat", "cli_support"}
ROOMS = {
    "engine": "core",
    "models": "core",
    "protect": "methods",
    "finetune": "methods",
    "evaluate": "studies",
    "authenticate": "studies",
    "fl_bridge": "studies",
}
LAYER_ORDER = ["base", "core", "methods", "studies", "commands"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


MODULES = all_modules()


def is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def is_command(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    if name == f"{PACKAGE}.web" or name.startswith(f"{PACKAGE}.web."):
        return True  # the local web page is a front end, like the command line
    return name in (f"{PACKAGE}.cli", f"{PACKAGE}.__main__") or last == "cli" or last.endswith("_cli")


def room(name: str) -> tuple[str, str]:
    """(layer, room) of a module."""
    if is_command(name):
        return "commands", "commands"
    parts = name.split(".")
    if len(parts) == 1 or parts[1] in BASE:
        return "base", "base"
    top = parts[1]
    if top in ROOMS:
        return ROOMS[top], top
    raise AssertionError(f"module {name} is in no layer: add it to BASE or ROOMS in {__file__}")


def resolve(importer: str, node: ast.ImportFrom | ast.Import) -> list[tuple[str, list[str]]]:
    """The artshield modules an import statement loads, each with the names it takes."""
    found = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] == PACKAGE:
                found.append((alias.name, []))
        return found
    if node.level:
        base = importer.split(".") if is_package(importer) else importer.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != PACKAGE:
        return found
    names = [alias.name for alias in node.names]
    submodules = [n for n in names if f"{target}.{n}" in MODULES]
    for sub in submodules:
        found.append((f"{target}.{sub}", []))
    rest = [n for n in names if n not in submodules]
    if rest or not submodules:
        found.append((target, rest))
    return found


def imports() -> dict[str, list[tuple[str, list[str], int]]]:
    graph = {}
    for name, path in MODULES.items():
        edges = []
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target, names in resolve(name, node):
                    edges.append((target, names, node.lineno))
        graph[name] = edges
    return graph


GRAPH = imports()


def test_every_import_resolves_to_a_module():
    missing = [(m, t, line) for m, edges in GRAPH.items() for t, _, line in edges if t not in MODULES]
    assert not missing, missing


def test_arrows_point_down():
    wrong = []
    for importer, edges in GRAPH.items():
        layer, own = room(importer)
        for target, _, line in edges:
            if target not in MODULES:
                continue
            t_layer, t_room = room(target)
            if t_room == own or t_layer == "base":
                continue
            if t_layer == "commands":
                if layer != "commands":
                    wrong.append(f"{importer}:{line} imports the command module {target}")
                continue
            if LAYER_ORDER.index(t_layer) > LAYER_ORDER.index(layer):
                wrong.append(f"{importer}:{line} ({layer}) imports {target} ({t_layer}), a higher layer")
            elif t_layer == layer and layer != "commands":
                wrong.append(f"{importer}:{line} ({own}) imports {target} ({t_room}), a room of the same layer")
    assert not wrong, "\n".join(wrong)


def test_engine_knows_nothing_of_diffusion():
    for name, path in MODULES.items():
        if name.startswith(f"{PACKAGE}.engine"):
            text = path.read_text()
            assert "import diffusers" not in text and "from diffusers" not in text, name


def test_no_private_names_across_modules():
    wrong = []
    for importer, edges in GRAPH.items():
        for target, names, line in edges:
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != importer:
                wrong.append(f"{importer}:{line} takes {private} from {target}")
    assert not wrong, "\n".join(wrong)


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w, _, _ in GRAPH.get(v, []):
            if w not in MODULES or w == v:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in MODULES:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    found = cycles()
    assert not found, "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize(
    "module, layer",
    [
        ("artshield.fileio", "base"),
        ("artshield.engine.perturb", "core"),
        ("artshield.models.demo.style", "core"),
        ("artshield.protect.advdm", "methods"),
        ("artshield.evaluate.harness", "studies"),
        ("artshield.protect.cli", "commands"),
    ],
)
def test_the_layers_are_assigned_as_documented(module, layer):
    assert module in MODULES
    assert room(module)[0] == layer
