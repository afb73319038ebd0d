"""A second `improve run` of the same spec compiles nothing: the script and the model check
come from the user cache, until the spec, improve's templates or the data change."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import improve_env
from PIL import Image

from improve_dsl import compiled_cache, paths
from improve_dsl.compiled_cache import compile_for_run
from improve_dsl.compiler import compile_spec
from improve_dsl.diagnostics import DiagnosticError
from improve_dsl.paths import templates_dir

REPO = Path(__file__).resolve().parent.parent

DIGITS = """\
pipeline digits {
  metric = accuracy
  seed = 0
}

data {
  source = digits()
  validation = holdout(fraction = 0.2)
  batch_size = 64
}

augment {
  ops = []
}

model {
  arch = mlp(width = 32, depth = 1)
}

train {
  epochs = 1
  optimizer = sgd(lr = 0.05)
  schedule = constant()
  loss = cross_entropy()
}
"""


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_the_second_compile_is_a_hit_and_the_same_script(tmp_path: Path) -> None:
    spec = tmp_path / "digits.imp"
    spec.write_text(DIGITS)
    first = compile_for_run(spec)
    second = compile_for_run(spec)
    assert (first.script_cached, first.check_cached) == (False, False)
    assert (second.script_cached, second.check_cached) == (True, True)
    assert second.script == first.script == compile_spec(spec, check_shapes=False).script
    assert second.pipeline == "digits"


def test_a_changed_spec_is_compiled_again(tmp_path: Path) -> None:
    spec = tmp_path / "digits.imp"
    spec.write_text(DIGITS)
    compile_for_run(spec)
    spec.write_text(DIGITS.replace("width = 32", "width = 48"))
    again = compile_for_run(spec)
    assert (again.script_cached, again.check_cached) == (False, False)
    assert "48" in again.script


def test_a_model_that_does_not_fit_is_never_cached(tmp_path: Path) -> None:
    spec = tmp_path / "digits.imp"
    arch = "cnn(channels = [8, 16, 32, 64, 128])"  # 8x8 digits pooled five times
    spec.write_text(DIGITS.replace("mlp(width = 32, depth = 1)", arch))
    for _ in range(2):  # the second time too: a diagnostic, not a cached pass
        with pytest.raises(DiagnosticError, match="does not fit 1x8x8 images"):
            compile_for_run(spec)


def test_changed_templates_change_the_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "templates"
    shutil.copytree(templates_dir(), copy)
    monkeypatch.setattr(paths, "templates_dir", lambda: copy)
    paths.compiler_fingerprint.cache_clear()
    try:
        before = paths.compiler_fingerprint()
        partial = copy / "loss" / "cross_entropy.py.jinja"
        partial.write_text(partial.read_text() + "# changed\n")
        paths.compiler_fingerprint.cache_clear()
        assert paths.compiler_fingerprint() != before
    finally:
        paths.compiler_fingerprint.cache_clear()


def test_a_new_fingerprint_misses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "digits.imp"
    spec.write_text(DIGITS)
    compile_for_run(spec)
    monkeypatch.setattr(compiled_cache, "compiler_fingerprint", lambda: "templates of another day")
    assert not compile_for_run(spec).script_cached


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _folder_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "folder.imp"
    text = DIGITS.replace("digits()", 'image_folder(root = "images", image_size = 8)')
    spec.write_text(text.replace("pipeline digits", "pipeline folder"))
    return spec


def test_an_image_folder_that_vanished_is_a_diagnostic_again(tmp_path: Path) -> None:
    root = _folder(tmp_path / "images")
    spec = _folder_spec(tmp_path)
    compile_for_run(spec)
    assert compile_for_run(spec).check_cached
    shutil.rmtree(root)
    with pytest.raises(DiagnosticError, match="images"):
        compile_for_run(spec)


def test_a_new_class_folder_checks_the_model_again(tmp_path: Path) -> None:
    root = _folder(tmp_path / "images")
    spec = _folder_spec(tmp_path)
    compile_for_run(spec)
    shutil.copytree(root / "a", root / "c")
    again = compile_for_run(spec)
    assert not again.check_cached


@pytest.mark.slow
def test_a_second_improve_run_imports_neither_the_compiler_nor_torch(tmp_path: Path) -> None:
    (tmp_path / "digits.imp").write_text(DIGITS)
    probe = (
        "import sys; from improve_dsl.cli.app import main\n"
        "code = main(['run', 'digits.imp', '--device', 'cpu'])\n"
        "heavy = ('torch', 'lark', 'jinja2', 'black')\n"
        "print(code, [m for m in heavy if m in sys.modules])\n"
    )
    env = improve_env(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    seen = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        seen.append(proc.stdout.strip().splitlines()[-1])
    assert seen[0].startswith("0 ") and "torch" in seen[0] and "lark" in seen[0]
    assert seen[1] == "0 []"
    logs = sorted((tmp_path / "digits.improve" / "runs").glob("*/log"))
    server = [line for line in logs[-1].read_text().splitlines() if "resident" in line]
    assert server and server == [
        line for line in logs[0].read_text().splitlines() if "resident" in line
    ]
    metrics = json.loads((logs[-1].parent / "metrics.json").read_text())
    assert metrics["status"] == "ok"
