"""The wheel carries the grammar and the templates, so `pip install .` works, not only -e."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_contains_grammar_and_templates(tmp_path: Path) -> None:
    pytest.importorskip("hatchling")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("improve_dsl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "improve_dsl/grammar/imp.lark" in names
    assert "improve_dsl/templates/train.py.jinja" in names
    assert "improve_dsl/templates/blocks/model.py.jinja" in names
    templates = {p.relative_to(ROOT).as_posix() for p in (ROOT / "templates").rglob("*.jinja")}
    assert {f"improve_dsl/{t}" for t in templates} <= names
    assert any(n.endswith("entry_points.txt") for n in names)
