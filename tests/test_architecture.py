"""The layering of docs/architecture.md holds: a module imports only from earlier layers
(or from inside its own package), read from the package's own import statements."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "improve_dsl"


def _layers() -> dict[str, int]:
    """``module or package -> layer`` from the code block under "Direction of imports"."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Direction of imports", 1)[1].split("```", 2)[1]
    layers: dict[str, int] = {}
    for line in section.splitlines():
        match = re.match(r"\s*(\d+)\s+(.*)", line)
        if match:
            for name in match.group(2).split():
                layers[name.rstrip("/")] = int(match.group(1))
    return layers


def _unit(module: str) -> str:
    """The name a layer is given to: the top package for sub-modules (``refine.loop`` ->
    ``refine``), the module itself otherwise."""
    return module.split(".", 1)[0]


def _imports(path: Path) -> set[str]:
    """The package's modules that ``path`` imports (relative imports only: the package never
    imports itself by absolute name)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    package = parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                found.add(".".join([*base, node.module]))
            else:
                found.update(".".join([*base, alias.name]) for alias in node.names)
    return {name for name in found if name and not name.startswith("__")}


def test_the_documented_layers_name_real_modules() -> None:
    layers = _layers()
    assert len(layers) > 20
    for name in layers:
        assert (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name).is_dir(), name


def test_every_import_goes_to_an_earlier_layer() -> None:
    layers = _layers()
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        own = _unit(module)
        if own not in layers:
            continue  # a module the page does not place yet
        for target in _imports(path):
            other = _unit(target)
            if other == own or other not in layers:
                continue
            if layers[other] >= layers[own]:
                wrong.append(f"{module} (layer {layers[own]}) imports {target} ({layers[other]})")
    assert wrong == []


# ---------------------------------------------------------------- who may see the loop's view

VIEW = "refine.live"  # the terminal view of `improve refine`
TRACKING_SIDE = ("tracking", "report")  # they read runs and hear the loop through its contract


def _modules() -> dict[str, Path]:
    """``dotted module name -> file`` for every module of the package (a package by its
    ``__init__.py``)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _loads(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in it (under ``TYPE_CHECKING``
    and inside functions too): ``from .x import y`` names ``x``, and ``x.y`` where that is a
    module."""
    found = set(_imports(path))
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level and node.module:
            base = parts[:-1][: len(parts) - node.level]
            found.update(".".join([*base, node.module, a.name]) for a in node.names)
    return {name for name in found if name in modules}


def _reached(start: str, modules: dict[str, Path]) -> set[str]:
    """Every module of the package that importing ``start`` loads, following relative imports
    (a module also loads the ``__init__`` of each package above it)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen or name not in modules:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += _loads(modules[name], modules)
    return seen


def _view_reachers(sources: tuple[str, ...]) -> list[str]:
    modules = _modules()
    starts = [m for m in modules if m.split(".")[0] in sources]
    return sorted(m for m in starts if VIEW in _reached(m, modules))


def test_the_tracking_side_does_not_import_the_loops_view() -> None:
    # The Reporter contract lives in refine/reporting.py; MLflow and the report implement
    # or read it without loading rich's live view.
    assert _view_reachers(TRACKING_SIDE) == []


def test_the_view_check_sees_an_import_of_the_view() -> None:
    # The check can fail: the command line does load the view, directly and through refine/.
    assert "cli.refining" in _view_reachers(("cli",))
