"""The generated script per feature: a golden each (fp16, gradient clipping, label mixing,
`layers`, every source), ruff- and mypy-clean, and the clean-ups users of the script notice
(no unused arguments, one place deciding precision, no bare private torch API)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from improve_dsl.render import render_script
from improve_dsl.validate import load_text

ROOT = Path(__file__).resolve().parent.parent
FEATURES = sorted((ROOT / "tests" / "fixtures" / "features").glob("*.imp"))
GOLDEN = ROOT / "tests" / "golden"
FEATURE_GOLDEN = GOLDEN / "features"
ALL_GOLDENS = sorted(GOLDEN.glob("*.py")) + [FEATURE_GOLDEN / f"{s.stem}.py" for s in FEATURES]
# Rules a careful hand-written script passes; ARG finds arguments a function never uses.
RUFF_RULES = "E,W,F,B,ARG,UP,SIM,I"


def render_feature(spec: Path) -> str:
    return render_script(load_text(spec.read_text(encoding="utf-8"), spec.name))


def script_module(text: str) -> types.ModuleType:
    module = types.ModuleType("generated_train")
    sys.modules[module.__name__] = module
    try:
        exec(compile(text, "train.py", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module


@pytest.mark.parametrize("spec", FEATURES, ids=[s.stem for s in FEATURES])
def test_feature_renders_to_its_golden(spec: Path, request: pytest.FixtureRequest) -> None:
    script = render_feature(spec)
    golden = FEATURE_GOLDEN / f"{spec.stem}.py"
    if request.config.getoption("--update-golden"):
        FEATURE_GOLDEN.mkdir(exist_ok=True)
        golden.write_text(script, encoding="utf-8")
    assert golden.exists(), f"no golden for {spec.name}: run pytest --update-golden"
    assert script == golden.read_text(encoding="utf-8"), (
        f"{spec.name} renders differently from {golden.relative_to(ROOT)}; if the change is "
        "intended, run pytest tests/test_script_features.py --update-golden and review it"
    )  # black's idempotency on every golden: test_render, in the slow tier


def test_the_features_cover_every_source_and_the_optional_parts() -> None:
    texts = [s.read_text() for s in FEATURES] + [
        s.read_text() for s in (ROOT / "specs").glob("*.imp")
    ]
    joined = "\n".join(texts)
    for source in ("digits(", "mnist(", "fashion_mnist(", "cifar10(", "cifar100(", "svhn("):
        assert f"source = {source}" in joined, source
    assert "source = image_folder(" in joined
    for feature in ("precision = fp16", "clip_grad_norm", "mixup(", "cutmix(", "layers = ["):
        assert feature in joined, feature


def test_every_golden_passes_ruff_with_unused_arguments_checked() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff is not None, "ruff is a dev dependency"
    proc = subprocess.run(
        [
            ruff,
            "check",
            "--isolated",
            "--no-cache",
            "--line-length=100",
            "--target-version=py310",
            f"--select={RUFF_RULES}",
            "--output-format=concise",
            *map(str, ALL_GOLDENS),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_feature_goldens_are_mypy_clean() -> None:
    """One mypy run over the feature goldens (slow: torch's stubs are large)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--allow-untyped-calls",
            "--ignore-missing-imports",
            "--no-error-summary",
            *(str(FEATURE_GOLDEN / f"{s.stem}.py") for s in FEATURES),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------- the clean-ups


def test_precision_is_decided_when_compiling() -> None:
    """The compiler knows the spec's precision: only an fp16 script carries loss scaling,
    only a bf16 script probes the CPU, and an fp32 script neither (nor any warning)."""
    spec = (ROOT / "tests" / "fixtures" / "features" / "fp16_clip_ema.imp").read_text()
    assert "precision = fp16" in spec
    scripts = {
        precision: render_script(load_text(spec.replace("= fp16", f"= {precision}"), "s.imp"))
        for precision in ("fp16", "fp32", "bf16", "auto")
    }
    fp16 = scripts["fp16"]
    assert "scaler = torch.amp.GradScaler(" in fp16 and "scaler.step(optimizer)" in fp16
    assert "scaler.unscale_(optimizer)" in fp16  # clipping sees the true gradients
    assert "torch.float16" in fp16 and "CUDA_GRAPH = False" in fp16
    for precision in ("fp32", "bf16", "auto"):
        assert "GradScaler" not in scripts[precision]
        assert "torch.float16" not in scripts[precision]
        assert "CUDA_GRAPH = True" in scripts[precision]
    assert "def cpu_has_bf16" in scripts["bf16"]
    for precision in ("fp16", "fp32", "auto"):
        assert "cpu_has_bf16" not in scripts[precision]
    assert "Runtime(device, torch.bfloat16" not in scripts["fp32"]
    assert 'warn(f"precision' not in scripts["fp32"]
    module = script_module(scripts["fp32"])
    runtime = module.pick_runtime("cpu")
    assert runtime.precision == "fp32" and runtime.amp_dtype is None


def test_a_constant_schedule_has_no_scheduler_and_no_leftover_alias() -> None:
    script = (GOLDEN / "digits.py").read_text()
    assert "schedule = constant()" in (ROOT / "specs" / "digits.imp").read_text()
    assert "LambdaLR" not in script and "scheduler.step()" not in script
    assert "eval_model = model" not in script
    ema = (FEATURE_GOLDEN / "fp16_clip_ema.py").read_text()
    assert "eval_model = ema.module" in ema
    assert "set_learning_rate(optimizer, LR * lr_factor(" in ema


def test_data_root_is_offered_only_where_the_source_reads_a_folder() -> None:
    digits = script_module((GOLDEN / "digits.py").read_text())
    assert "--data-root" not in (GOLDEN / "digits.py").read_text()
    with pytest.raises(SystemExit) as exited:
        digits.parse_args(["--data-root", "x"])
    assert exited.value.code == 2
    for golden in ("fashion_mnist.py", "cifar10.py", "image_folder.py"):
        module = script_module((GOLDEN / golden).read_text())
        assert module.parse_args(["--data-root", "x"]).data_root == "x"
        assert "load_data(args.data_root, " in (GOLDEN / golden).read_text()


def test_the_bf16_probe_uses_no_bare_private_torch_api() -> None:
    script = (GOLDEN / "fashion_mnist_cpu.py").read_text()
    tree = ast.parse(script)
    private_calls = [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_is_")
    ]
    assert private_calls == []  # only named in strings, behind getattr with a fallback
    module = script_module(script)
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert module.cpu_has_bf16() == bool(native)


def test_no_golden_defines_a_function_or_class_it_never_uses() -> None:
    """The compiler decides what a script needs: a helper no code names is dead weight."""
    for golden in ALL_GOLDENS:
        tree = ast.parse(golden.read_text(encoding="utf-8"))
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        named = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        named |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert defined - named - {"main"} == set(), golden.name
