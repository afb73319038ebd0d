"""The layering of docs/architecture.md holds: a module imports only from earlier layers
(or from inside its own package), read from the package's own import statements."""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

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


_LOADS: dict[Path, set[str]] = {}  # _loads by file: each view check follows every module


def _loads(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in it (under ``TYPE_CHECKING``
    and inside functions too): ``from .x import y`` names ``x``, and ``x.y`` where that is a
    module. Read once per file (the checks reach the same modules from many starts)."""
    if path in _LOADS:
        return _LOADS[path]
    found = set(_imports(path))
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level and node.module:
            base = parts[:-1][: len(parts) - node.level]
            found.update(".".join([*base, node.module, a.name]) for a in node.names)
    _LOADS[path] = {name for name in found if name in modules}
    return _LOADS[path]


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


# ---------------------------------------------------------------- experts register in one place

EXPERTS_DIR = PACKAGE / "refine" / "experts"
CATALOG = EXPERTS_DIR / "catalog.py"  # the one table: EXPERTS, make_expert, the --expert help


def _expert_classes(root: Path = EXPERTS_DIR) -> dict[str, Path]:
    """``class name -> file`` of every Expert implementation under ``root``: a class with
    ``propose`` and ``select`` that is not the Protocol itself."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                bases = {ast.unparse(base) for base in node.bases}
                if {"propose", "select"} <= methods and "Protocol" not in bases:
                    found[node.name] = path
    return found


def _called_names(node: ast.AST) -> set[str]:
    """The names that ``node`` calls (``X(...)`` and ``module.X(...)``)."""
    called = set()
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            func = call.func
            if isinstance(func, ast.Name):
                called.add(func.id)
            elif isinstance(func, ast.Attribute):
                called.add(func.attr)
    return called


def _factory_calls() -> set[str]:
    """What the table's factories call: the experts they build."""
    from improve_dsl.refine.experts import catalog

    called: set[str] = set()
    for kind in catalog.EXPERTS:
        source = textwrap.dedent(inspect.getsource(kind.factory))
        called |= _called_names(ast.parse(source))
    return called


def test_every_expert_is_built_by_an_entry_of_the_table() -> None:
    classes = _expert_classes()
    assert {"HeuristicExpert", "OpenAIExpert", "ReplayExpert"} <= set(classes)
    assert sorted(set(classes) - _factory_calls()) == []


def test_no_other_module_builds_an_expert_or_lists_the_experts() -> None:
    from improve_dsl.refine.experts.catalog import EXPERTS

    classes = set(_expert_classes())
    names = [kind.name for kind in EXPERTS]
    usages = [kind.usage for kind in EXPERTS if kind.usage != kind.name]  # openai[:MODEL]...
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == CATALOG:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(PACKAGE)
        wrong += [f"{where} builds {name}" for name in sorted(_called_names(tree) & classes)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                named = [n for n in names if re.search(rf"\b{re.escape(n)}\b", node.value)]
                if len(named) > 1 or any(usage in node.value for usage in usages):
                    wrong.append(f"{where}:{node.lineno} lists experts: {node.value[:60]!r}")
    assert wrong == []


def test_the_expert_checks_see_an_expert_outside_the_table(tmp_path: Path) -> None:
    # The checks can fail: a new expert class the table does not build, and a module that
    # builds one itself or writes out the experts' names.
    (tmp_path / "anthropic.py").write_text(
        "class AnthropicExpert:\n"
        "    def propose(self, context): ...\n"
        "    def select(self, context, blocks): ...\n",
        encoding="utf-8",
    )
    assert set(_expert_classes(tmp_path)) - _factory_calls() == {"AnthropicExpert"}
    tree = ast.parse("expert = HeuristicExpert(0)")
    assert _called_names(tree) & set(_expert_classes()) == {"HeuristicExpert"}


def test_the_expert_help_and_errors_are_written_from_the_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from improve_dsl.cli import build_parser
    from improve_dsl.refine.experts import catalog
    from improve_dsl.refine.experts.base import ExpertError

    built: list[str] = []

    def echo(argument: str, settings: catalog.ExpertSettings) -> Any:
        built.append(argument)
        return "an echo expert"

    extra = catalog.ExpertKind("echo", "says back what it is given", echo, argument="WORDS")
    monkeypatch.setattr(catalog, "EXPERTS", (*catalog.EXPERTS, extra))
    refine = _subparser(build_parser(), "refine")
    expert_flag = next(a for a in refine._actions if "--expert" in a.option_strings)
    assert expert_flag.help == "heuristic, openai[:MODEL], replay:FILE or echo[:WORDS] (see below)"
    assert "\n  echo[:WORDS]     says back what it is given\n" in refine.format_help()
    assert catalog.make_expert("echo:hi") == "an echo expert" and built == ["hi"]
    with pytest.raises(ExpertError, match=re.escape("choose heuristic, openai[:MODEL], replay")):
        catalog.make_expert("nope")


def _subparser(parser: argparse.ArgumentParser, verb: str) -> argparse.ArgumentParser:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    choices: dict[str, argparse.ArgumentParser] = actions[0].choices
    return choices[verb]
