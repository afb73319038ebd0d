"""Rendering: goldens, formatting, type checks, literal safety, the compile verb."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import itertools
import re
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
from conftest import ImproveCall

from improve_dsl import cli, registry, render
from improve_dsl.code_literals import RenderError, call_text, literal
from improve_dsl.compiler import compile_spec
from improve_dsl.diagnostics import DiagnosticError
from improve_dsl.render import format_code, render_script, render_unformatted
from improve_dsl.script_constants import comment_for
from improve_dsl.validate import load, load_text

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.imp"))
GOLDEN = ROOT / "tests" / "golden"
PYTHON = sys.executable


def golden_path(spec: Path) -> Path:
    return GOLDEN / f"{spec.stem}.py"


def spec_path_text(spec: Path) -> str:
    """Specs render with the path a user would type from the repository root."""
    return spec.relative_to(ROOT).as_posix()


@functools.cache
def render_spec(spec: Path) -> str:
    """The script of an example spec (rendered once per session: several tests read it)."""
    return render_script(load_text(spec.read_text(encoding="utf-8"), spec_path_text(spec)))


# ---------------------------------------------------------------- goldens


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_spec_renders_to_its_golden(spec: Path, request: pytest.FixtureRequest) -> None:
    script = render_spec(spec)
    golden = golden_path(spec)
    if request.config.getoption("--update-golden"):
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(script, encoding="utf-8")
    assert golden.exists(), f"no golden for {spec.name}: run pytest --update-golden"
    assert script == golden.read_text(encoding="utf-8"), (
        f"{spec.name} renders differently from {golden.relative_to(ROOT)}; if the change is "
        "intended, run pytest tests/test_render.py --update-golden and review the diff"
    )


@pytest.mark.slow  # black once more over every golden, half a second each
def test_black_leaves_every_golden_as_it_is() -> None:
    goldens = sorted(GOLDEN.rglob("*.py"))  # the specs' and the features' (test_script_features)
    assert goldens
    for golden in goldens:
        script = golden.read_text(encoding="utf-8")
        assert format_code(script) == script, f"black is not idempotent on {golden.name}"


FEATURES = sorted((ROOT / "tests" / "fixtures" / "features").glob("*.imp"))


@pytest.mark.parametrize("spec", SPECS + FEATURES, ids=[s.stem for s in SPECS + FEATURES])
def test_the_templates_write_what_black_writes(spec: Path) -> None:
    # Black still formats every script; written as black writes, the templates halve its time.
    golden = GOLDEN / ("features" if spec in FEATURES else "") / f"{spec.stem}.py"
    path = spec_path_text(spec) if spec in SPECS else spec.name  # as their golden tests render
    draft = render_unformatted(load_text(spec.read_text(encoding="utf-8"), path))
    expected = golden.read_text(encoding="utf-8")
    changes = difflib.unified_diff(draft.splitlines(), expected.splitlines(), lineterm="", n=1)
    assert draft == expected, f"black changes the draft of {spec.name}:\n" + "\n".join(
        list(changes)[:40]
    )


def test_every_golden_has_a_spec() -> None:
    stale = {p.stem for p in GOLDEN.glob("*.py")} - {s.stem for s in SPECS}
    assert not stale, f"goldens without a spec in specs/: {sorted(stale)}"


@pytest.mark.slow
def test_goldens_are_mypy_clean() -> None:
    """One mypy run over every golden (slow: torch's stubs are large)."""
    goldens = sorted(GOLDEN.glob("*.py"))
    assert goldens
    # Tensor.backward() is unannotated in torch, hence --allow-untyped-calls.
    proc = subprocess.run(
        [
            PYTHON,
            "-m",
            "mypy",
            "--strict",
            "--allow-untyped-calls",
            "--ignore-missing-imports",
            "--no-error-summary",
            *map(str, goldens),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _imports(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(top-level, nested) root module names a script imports."""
    top, nested = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            (top if node in tree.body else nested).update(n.split(".")[0] for n in names)
    return top, nested


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_script_imports_only_torch_numpy_and_the_stdlib(spec: Path) -> None:
    tree = ast.parse(render_spec(spec))
    top, nested = _imports(tree)
    assert top - sys.stdlib_module_names <= {"torch", "numpy"}, top
    # Loaders import what only they need, lazily: scikit-learn for digits, torchvision for its
    # datasets, Pillow (which comes with torchvision) for image folders; torch's compiler
    # counters only where the spec may compile.
    assert nested - sys.stdlib_module_names <= {"sklearn", "torchvision", "PIL", "torch"}, nested


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_script_has_no_unused_import(spec: Path) -> None:
    tree = ast.parse(render_spec(spec))
    bound = set()
    for node in tree.body:
        if isinstance(node, ast.Import) or (
            isinstance(node, ast.ImportFrom) and node.module != "__future__"
        ):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert bound <= used | {"torch"}, bound - used


def test_script_names_its_spec_and_hyperparameters() -> None:
    spec = ROOT / "specs" / "fashion_mnist.imp"
    script = render_spec(spec)
    parsed = load(spec)
    docstring = ast.get_docstring(ast.parse(script)) or ""
    assert "specs/fashion_mnist.imp" in docstring and parsed.sha256 in docstring
    assert "python train.py --split test" in docstring
    constants = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse(script).body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id.isupper()
        and isinstance(node.value, ast.Constant)
    }
    assert constants["LR"] == 0.1 and constants["NESTEROV"] is True
    assert constants["WARMUP"] == 0.2 and constants["LABEL_SMOOTHING"] == 0.1
    assert constants["EPOCHS"] == 10 and constants["BATCH_SIZE"] == 256
    assert constants["SPEC_SHA256"] == parsed.sha256
    banners = [line for line in script.splitlines() if line.startswith("# ------")]
    # The spec's blocks in its order, then what runs them: the harness and main last.
    assert [b.rsplit(" ", 1)[-1] for b in banners] == [
        "hyperparameters",
        "data",
        "augment",
        "model",
        "train",
        "eval",
        "harness",
        "main",
    ]


def test_augment_ops_render_in_order_with_their_parameters() -> None:
    text = (
        (ROOT / "specs" / "digits.imp")
        .read_text()
        .replace(
            "ops = []",
            "ops = [rotation(degrees = 7.5), random_crop(padding = 3), mixup(), "
            "random_crop(padding = 1)]",
        )
    )
    script = render_script(load_text(text, "specs/digits.imp"))
    body = script[
        script.index("def augment_batch") : script.index(
            "# ------", script.index("def augment_batch")
        )
    ]
    calls = [
        line.strip() for line in body.splitlines() if line.startswith(("    images", "    targets"))
    ]
    assert calls == [
        "targets = F.one_hot(labels, num_classes).float()",
        "images = rotation(images, degrees=ROTATION_DEGREES)",
        "images = random_crop(images, padding=RANDOM_CROP_PADDING)",
        "images, targets = mixup(images, targets, alpha=MIXUP_ALPHA)",
        "images = random_crop(images, padding=RANDOM_CROP_2_PADDING)",
    ]
    for constant in (
        "ROTATION_DEGREES = 7.5  # largest angle",
        "RANDOM_CROP_PADDING = 3  # pixels of padding",
        "MIXUP_ALPHA = 0.2  # Beta(alpha, alpha) mixing",
        "RANDOM_CROP_2_PADDING = 1  # pixels of padding",
    ):
        assert f"\n{constant}\n" in script


GOLDENS = sorted(GOLDEN.rglob("*.py"))


def _functions(tree: ast.AST) -> list[ast.FunctionDef]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]


@pytest.mark.parametrize("golden", GOLDENS, ids=[g.stem for g in GOLDENS])
def test_no_golden_defines_a_function_it_never_calls(golden: Path) -> None:
    """Every function outside a class is called or handed on somewhere in the script (methods
    are called by torch and Python; build_model is also the model's interface for predict)."""
    tree = ast.parse(golden.read_text(encoding="utf-8"))
    methods = {id(f) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for f in c.body}
    defined = {f.name for f in _functions(tree) if id(f) not in methods}
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not defined - used, f"defined, never called: {sorted(defined - used)}"


@pytest.mark.parametrize("golden", GOLDENS, ids=[g.stem for g in GOLDENS])
def test_every_value_of_the_architecture_and_the_ops_is_a_named_constant(golden: Path) -> None:
    """build_model (a named arch or a layer list), augment_batch and tta_views pass the spec's
    values by their constants' names; and no constant's comment only repeats its name."""
    text = golden.read_text(encoding="utf-8")
    tree = ast.parse(text)
    for function in _functions(tree):
        if function.name not in ("build_model", "augment_batch", "tta_views"):
            continue
        for call in (n for n in ast.walk(function) if isinstance(n, ast.Call)):
            for keyword in call.keywords:
                assert keyword.arg == "inplace" or not isinstance(keyword.value, ast.Constant), (
                    f"{function.name}: {ast.unparse(call)} passes a literal"
                )
    for line in text.splitlines():
        name, comment = line.partition(" = ")[0], line.partition("  # ")[2]
        if name.isupper() and name.isidentifier() and comment:
            assert comment_for(name, comment) == comment, f"{line!r}: the comment echoes the name"


# ---------------------------------------------------------------- literal safety


def imp_string(value: str) -> str:
    """``value`` as a string literal of the .imp language."""
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}
    return '"' + "".join(escapes.get(ch, ch) for ch in value) + '"'


# The first two run in the fast tier; the rest, one full render each, in the slow tier.
HOSTILE_ROOTS = [
    '"; import os; os.system("x") #',
    "line one\nline two\r\n\tindented",
    *(
        pytest.param(root, marks=pytest.mark.slow)
        for root in (
            "it's \"quoted\" and 'single'",
            "C:\\new\\table\\",
            "{{ spec }} {% include 'train.py.jinja' %} {# x #}",
            "\"\"\" triple \"\"\" ''' triple '''",
            "\\",
            "nul\0byte, line\u2028separator, été",
        )
    ),
]


def folder_spec(root: str) -> str:
    return (
        (ROOT / "specs" / "image_folder.imp")
        .read_text()
        .replace('"data/my_images"', imp_string(root))
    )


def _shape(script: str, root: str) -> str:
    """The script's AST with the root's string constant blanked out."""
    tree = ast.parse(script)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value == root:
            node.value = "<root>"
    return ast.dump(tree)


@functools.cache
def _benign_folder_script() -> str:
    benign_spec = load_text(folder_spec("data/my_images"), "spec.imp")
    return render_script(dataclasses.replace(benign_spec, sha256="0" * 64))


@pytest.mark.parametrize("root", HOSTILE_ROOTS)
def test_hostile_root_changes_only_its_literal(root: str) -> None:
    hostile_spec = load_text(folder_spec(root), "spec.imp")
    assert hostile_spec.data.source["root"] == root
    # Same sha for both, so the only difference left is the root itself.
    benign = _benign_folder_script()
    hostile = render_script(dataclasses.replace(hostile_spec, sha256="0" * 64))
    assert _shape(hostile, root) == _shape(benign, "data/my_images")
    assigned = {
        node.targets[0].id: node.value
        for node in ast.parse(hostile).body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    assert ast.literal_eval(assigned["DATA_ROOT"]) == root


def test_hostile_spec_path_stays_inside_the_docstring() -> None:
    path = 'x"""; import os #\\\n.imp'
    spec = load_text((ROOT / "specs" / "digits.imp").read_text(), path)
    tree = ast.parse(render_script(spec))
    assert path in (ast.get_docstring(tree) or "")
    plain = ast.parse(render_script(dataclasses.replace(spec, path="specs/digits.imp")))
    assert len(tree.body) == len(plain.body)


@pytest.mark.parametrize(
    "value",
    [
        0,
        -7,
        2**40,
        0.1,
        1e-300,
        -2.5,
        True,
        False,
        None,
        "",
        "a'b\"c\\\n",
        (1, 2),
        (3,),
        ((1, "x"), None),
    ],
)
def test_literal_round_trips(value: object) -> None:
    assert ast.literal_eval(literal(value)) == value


@pytest.mark.parametrize(
    "text", ["plain", "it's", 'say "hi"', "'\"'", "two '' one \"", 'two "" one \'', "\\'\"\n\x00"]
)
def test_a_string_literal_has_the_quotes_black_gives_it(text: str) -> None:
    line = f"x = {literal(text)}\n"
    assert format_code(line) == line and ast.literal_eval(literal(text)) == text


def test_a_call_is_laid_out_as_black_lays_it_out() -> None:
    layouts = set()
    for width, depth in itertools.product((10, 15, 17, 60), (0, 1, 2)):
        arguments = ["images", *(f"argument_{i}={'x' * width}" for i in range(3))]
        opening = "".join(f"{'    ' * level}if x:\n" for level in range(depth))
        indent = 4 * depth
        call = call_text("images = f(", arguments, indent)
        source = f"{opening}{' ' * indent}{call}\n"
        assert format_code(source) == source, source
        layouts.add(call.count("\n"))
    assert layouts == {0, 2, 5}  # one line; the arguments on one line; one per line


class Sneaky(str):
    def __repr__(self) -> str:
        return "__import__('os')"


@pytest.mark.parametrize(
    "value", [[1], {"a": 1}, {1}, float("nan"), float("inf"), object(), Sneaky("x"), b"x", (1, [2])]
)
def test_literal_refuses_what_is_not_a_plain_literal(value: object) -> None:
    with pytest.raises(RenderError):
        literal(value)


def test_literal_refuses_undefined() -> None:
    template = render.environment().from_string("x = {{ missing | literal }}")
    with pytest.raises(RenderError, match="undefined"):
        template.render()


def test_jinja_errors_become_render_errors_naming_the_template() -> None:
    spec = load(ROOT / "specs" / "digits.imp")
    with pytest.raises(RenderError, match=r"templates/train\.py\.jinja:\d+"):
        render._render("train.py.jinja", {"spec": spec})  # no `script` in the context
    with pytest.raises(RenderError, match="not-there"):
        render._render("not-there.py.jinja", {})


def test_environment_is_strict() -> None:
    env = render.environment()
    assert env.undefined is jinja2.StrictUndefined
    assert env.trim_blocks and env.lstrip_blocks and env.keep_trailing_newline


def test_every_registry_component_has_its_fragment() -> None:
    templates = ROOT / "templates"
    for category in (
        "source",
        "validation",
        "augment",
        "optimizer",
        "schedule",
        "loss",
        "ema",
        "tta",
    ):
        for comp in registry.components(category):
            assert (templates / comp.template).is_file(), comp.template


# ---------------------------------------------------------------- compile pipeline and verb


def test_compile_spec_reports_the_model() -> None:
    path = ROOT / "specs" / "digits.imp"
    compiled = compile_spec(path)
    assert compiled.spec.pipeline.name == "digits"
    assert compiled.script == golden_path(path).read_text().replace("specs/digits.imp", str(path))
    assert compiled.report is not None and compiled.report.params > 0
    assert compiled.summary().startswith("pipeline 'digits', ")
    assert "parameters" in compiled.summary()
    unchecked = compile_spec(ROOT / "specs" / "digits.imp", check_shapes=False)
    assert unchecked.report is None and unchecked.summary() == "pipeline 'digits'"


def test_compile_spec_from_text_raises_located_diagnostics() -> None:
    with pytest.raises(DiagnosticError) as info:
        compile_spec(Path("bad.imp"), text="pipeline p {\n  seed = -1\n}\n")
    rendered = info.value.render()
    assert "bad.imp:2:10: error: field 'seed' must be at least 0" in rendered
    assert "missing block 'data'" in rendered


def test_compile_verb_writes_the_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "train.py"
    assert cli.main(["compile", str(ROOT / "specs" / "digits.imp"), "-o", str(out)]) == 0
    assert out.read_text() == golden_path(ROOT / "specs" / "digits.imp").read_text().replace(
        "specs/digits.imp", str(ROOT / "specs" / "digits.imp")
    )
    assert f"wrote {out}" in capsys.readouterr().err


def test_compile_verb_does_not_import_torch_unless_asked_to_build_the_model(
    tmp_path: Path, improve: ImproveCall
) -> None:
    """Parsing, validating and rendering need no torch (seconds in a fresh process); the
    meta-device model check is opt-in (checked in this process, where torch is imported
    already), and then a model that does not fit is located."""
    probe = (
        "import sys\n"
        "from improve_dsl import cli\n"
        "code = cli.main(sys.argv[1:])\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch', code)\n"
    )
    command = [sys.executable, "-c", probe, "compile", "specs/fashion_mnist.imp"]
    plain = subprocess.run(
        [*command, "-o", str(tmp_path / "a.py")], cwd=ROOT, capture_output=True, text=True
    )
    assert plain.stdout.split() == ["no", "torch", "0"], plain.stderr
    assert "parameters" not in plain.stderr
    checked = improve(
        "compile",
        "specs/fashion_mnist.imp",
        "--check-model",
        "-o",
        str(tmp_path / "b.py"),
        cwd=ROOT,
    )
    assert checked.returncode == 0, checked.stderr
    assert "308K parameters" in checked.stderr
    assert (tmp_path / "a.py").read_text() == (tmp_path / "b.py").read_text()
    too_deep = tmp_path / "deep.imp"
    digits = (ROOT / "specs" / "digits.imp").read_text()
    too_deep.write_text(
        re.sub(r"arch = .*", "arch = cnn(channels = [16, 32, 64, 128])", digits, count=1)
    )
    refused = improve("compile", str(too_deep), "--check-model", cwd=ROOT)
    assert refused.returncode == 2
    assert "error: the model does not fit 1x8x8 images" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_compile_verb_prints_to_stdout_and_fails_on_a_bad_spec(
    tmp_path: Path, improve: ImproveCall
) -> None:
    proc = improve("compile", "specs/digits.imp", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == golden_path(ROOT / "specs" / "digits.imp").read_text()
    bad = tmp_path / "bad.imp"
    bad.write_text("pipeline p {\n  seed = 0\n}\ndata {\n  source = digitz()\n}\n")
    proc = improve("compile", str(bad), cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "unknown data source 'digitz'" in proc.stderr and "did you mean 'digits'" in proc.stderr
    assert "Traceback" not in proc.stderr
