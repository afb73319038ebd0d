"""The language verbs as a user runs them: help, docs, diff."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import ImproveCall, run_improve

from improve_dsl import cli, registry

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "specs" / "digits.imp"


def test_help_lists_every_verb(improve: ImproveCall) -> None:
    proc = run_improve("--help")  # the real program: exit 0
    assert proc.returncode == 0
    verbs = cli.build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for verb in verbs:
        assert verb in proc.stdout
        sub = improve(verb, "--help")
        assert sub.returncode == 0 and "usage: improve " + verb in sub.stdout


def test_no_verb_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: improve" in capsys.readouterr().out


def test_bad_flag_exits_2_without_traceback() -> None:
    proc = run_improve("check", "--bogus", str(DIGITS))  # the real program: exit 2
    assert proc.returncode == 2
    assert "unrecognized arguments: --bogus" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_file_is_a_located_error(tmp_path: Path, improve: ImproveCall) -> None:
    proc = improve("check", str(tmp_path / "nope.imp"))
    assert proc.returncode == 2
    assert "nope.imp: error: cannot read the spec: No such file or directory" in proc.stderr


def test_docs_cover_every_block_field_and_op(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["docs"]) == 0
    text = capsys.readouterr().out
    for block in registry.BLOCKS:
        assert f"block {block.name}" in text
        for fld in block.fields:
            assert f"  {fld.name} (" in text
    for comps in registry.COMPONENTS.values():
        for comp in comps:
            assert f"{comp.name}(" in text and comp.doc in text


def test_docs_for_one_name_and_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["docs", "sgd"]) == 0
    assert "nesterov: bool" in capsys.readouterr().out
    assert cli.main(["docs", "train.optimizer"]) == 0
    assert "adamw(" in capsys.readouterr().out
    assert cli.main(["docs", "random_crp"]) == 2
    assert "did you mean 'random_crop'?" in capsys.readouterr().err


def test_diff_names_changed_blocks_and_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "b.imp"
    other.write_text(
        DIGITS.read_text()
        .replace("epochs = 4", "epochs = 12")
        .replace("ops = []", "ops = [random_crop(padding = 1)]")
    )
    assert cli.main(["diff", str(DIGITS), str(DIGITS)]) == 0
    assert capsys.readouterr().out == "no differences\n"
    assert cli.main(["diff", str(DIGITS), str(other)]) == 1
    out = capsys.readouterr().out
    assert out == (
        "augment: changed\n  ~ ops: [] -> [random_crop(padding = 1)]\n"
        "train: changed\n  ~ epochs: 4 -> 12\n"
    )


def test_the_readme_spec_is_valid() -> None:
    from improve_dsl.validate import load_text

    readme = (ROOT / "README.md").read_text()
    block = readme.split("## A spec", 1)[1].split("```", 2)[1]
    spec = load_text(block.lstrip("\n"), "README.md")
    assert spec.model.arch is not None and spec.model.arch.name == "resnet"


def test_the_built_parser_is_cached_privately_and_a_broken_cache_is_rebuilt(
    tmp_path: Path,
) -> None:
    spec = str(DIGITS)
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))

    def check() -> subprocess.CompletedProcess[str]:
        return run_improve("check", spec, env=env, timeout=120)  # a fresh process: no memo

    first = check()
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "cache" / "improve"
    assert folder.stat().st_mode & 0o777 == 0o700
    (pickle,) = folder.glob("parser-*.pickle")
    pickle.write_bytes(b"not a pickle")
    again = check()
    assert (again.returncode, again.stdout, again.stderr) == (0, first.stdout, first.stderr)
    assert pickle.read_bytes() != b"not a pickle"  # rebuilt and stored again
