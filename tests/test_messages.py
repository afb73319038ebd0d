"""Messages a new user meets: each says what is wrong, where, and what to write instead,
stays short whatever the input, and never ends in a traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from improve_dsl.cli import common
from improve_dsl.diagnostics import DiagnosticError
from improve_dsl.refine.reply import EditError, apply_edit
from improve_dsl.validate import load_text

ROOT = Path(__file__).resolve().parent.parent
DIGITS = (ROOT / "specs" / "digits.imp").read_text()


def improve(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "improve_dsl.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def diagnostics_of(text: str) -> str:
    with pytest.raises(DiagnosticError) as caught:
        load_text(text, "s.imp")
    return caught.value.render()


# ---------------------------------------------------------------- syntax


def test_a_brace_missing_mid_file_names_the_block_left_open() -> None:
    text = DIGITS.replace("  batch_size = 64\n}\n", "  batch_size = 64\n")
    data_line = DIGITS.splitlines().index("data {") + 1
    augment_line = DIGITS.splitlines().index("augment {")  # one line earlier now
    out = diagnostics_of(text)
    assert out.startswith(f"s.imp:{data_line}:1: error: block 'data' opened here")
    assert "never closed" in out and "expected '='" not in out
    assert f"before 'augment' at line {augment_line}" in out


def test_lists_nested_thousands_deep_are_a_located_error(tmp_path: Path) -> None:
    spec = tmp_path / "deep.imp"
    spec.write_text(DIGITS.replace("ops = []", "ops = " + "[" * 5000 + "]" * 5000))
    proc = improve("check", str(spec))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr
    line = DIGITS.splitlines().index("  ops = []") + 1
    assert f"deep.imp:{line}:" in proc.stderr and "nested more than 64 deep" in proc.stderr


def test_a_missing_file_has_no_meaningless_location(tmp_path: Path) -> None:
    proc = improve("check", "nope.imp", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("nope.imp: error: cannot read the spec")
    assert "nope.imp:1:1" not in proc.stderr


# ---------------------------------------------------------------- hints


def test_a_capitalised_bool_gets_the_lower_case_hint() -> None:
    out = diagnostics_of(DIGITS.replace("nesterov = false", "nesterov = False"))
    assert "expects true or false, found 'False'" in out
    assert "hint: did you mean 'false'?" in out


@pytest.mark.parametrize(
    ("before", "after", "unquoted"),
    [
        ("schedule = constant()", 'schedule = "constant"', "constant"),
        ("batch_size = 64", 'batch_size = "64"', "64"),
        ("nesterov = false", 'nesterov = "false"', "false"),
    ],
)
def test_a_quoted_name_or_number_gets_a_remove_the_quotes_hint(
    before: str, after: str, unquoted: str
) -> None:
    out = diagnostics_of(DIGITS.replace(before, after))
    assert f'hint: remove the quotes: write {unquoted}, not "{unquoted}"' in out


def test_a_quoted_optimizer_call_name_gets_the_hint_too() -> None:
    text = DIGITS.replace(
        "optimizer = sgd(lr = 0.01, momentum = 0.0, nesterov = false, weight_decay = 0.0)",
        'optimizer = "sgd"',
    )
    assert 'remove the quotes: write sgd, not "sgd"' in diagnostics_of(text)


@pytest.mark.parametrize(
    "reply",
    [
        "Here is a better train block:\ntrain {\n  epochs = 8\n}\n",
        "```imp\ntrain {\n  epochs = 8\n}\n```\n",
    ],
    ids=["prose", "code fence"],
)
def test_a_reply_that_does_not_start_with_the_block_is_told_so(reply: str) -> None:
    with pytest.raises(EditError) as caught:
        apply_edit(DIGITS, "specs/digits.imp", ["train"], reply)
    message = str(caught.value)
    assert "the reply must start with the block (`train { ... }`)" in message
    assert "unexpected character" not in message


# ---------------------------------------------------------------- size


def test_a_huge_line_is_cut_around_the_caret() -> None:
    huge = "x" * 200_000
    out = diagnostics_of(DIGITS.replace("metric = accuracy", f'metric = "{huge}"'))
    assert len(out) < 2_000, len(out)
    caret_line = next(line for line in out.splitlines() if "^" in line)
    source_line = out.splitlines()[out.splitlines().index(caret_line) - 1]
    assert source_line.endswith("...") and len(source_line) < 120
    # The caret still sits under the value, where the quote opens.
    assert source_line[caret_line.index("^")] == '"'


def test_thousands_of_errors_are_counted_not_printed() -> None:
    text = DIGITS + "\neval {\n  tta = []\n}\n" * 1_500
    out = diagnostics_of(text)
    assert len(out) < 20_000, len(out)
    assert out.rstrip().endswith("... and 1,480 more errors")
    assert out.count("error: block 'eval' appears twice") == 20


# ---------------------------------------------------------------- the command line


def test_every_usage_error_has_the_same_prefix(tmp_path: Path) -> None:
    for args in (["refine", "x.imp", "--parallel", "two"], ["check", "--bogus"], ["bogus"]):
        proc = improve(*args, cwd=tmp_path)
        assert proc.returncode == 2
        assert proc.stderr.splitlines()[-1].startswith("improve: error: "), proc.stderr


def test_the_device_flag_refuses_cuda_where_there_is_none() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(argparse.ArgumentTypeError, match="CUDA is not available on this machine"):
        common.device("cuda:0")
    assert common.device("cpu") == "cpu"


@pytest.mark.slow
def test_device_cuda_without_cuda_is_refused_up_front(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    spec = tmp_path / "d.imp"
    spec.write_text(DIGITS)
    for verb in ("run", "refine", "evaluate"):
        proc = improve(verb, str(spec), "--device", "cuda", cwd=tmp_path)
        assert proc.returncode == 2, (verb, proc.stderr)
        assert "CUDA is not available on this machine" in proc.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["d.imp"], verb  # no run folder


def test_diff_says_a_spec_does_not_validate_and_shows_field_changes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.imp", tmp_path / "b.imp"
    a.write_text(DIGITS)
    b.write_text(DIGITS.replace("lr = 0.01", "lr = 0.05") + "\nmodel {\n  arch = mlp()\n}\n")
    proc = improve("diff", str(a), str(b))
    assert proc.returncode == 1
    assert "train: changed\n  ~ optimizer.lr: 0.01 -> 0.05\n" in proc.stdout
    assert "model (2nd): added" in proc.stdout
    assert f"{b} does not validate" in proc.stderr and "block 'model' appears twice" in proc.stderr
    assert f"{a} does not validate" not in proc.stderr
