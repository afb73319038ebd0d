"""The .imp language: grammar, diagnostics, fmt, and robustness to hostile input."""

from __future__ import annotations

import re
from pathlib import Path

import lark
import pytest
from conftest import ImproveCall
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from improve_dsl import cli
from improve_dsl.diagnostics import DiagnosticError
from improve_dsl.fmt import format_text
from improve_dsl.paths import grammar_dir
from improve_dsl.validate import load, load_text

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.imp"))
INVALID = sorted((ROOT / "tests" / "fixtures" / "invalid").glob("*.imp"))
LOCATED = re.compile(r"^[^\n]+:\d+:\d+: error: .+", re.MULTILINE)


def test_grammar_builds_in_lark_strict_mode() -> None:
    text = (grammar_dir() / "imp.lark").read_text()
    lark.Lark(text, parser="lalr", strict=True, propagate_positions=True)


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_example_specs_check(spec: Path) -> None:
    load(spec)


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_example_specs_are_fmt_clean_and_fmt_is_idempotent(spec: Path) -> None:
    text = spec.read_text()
    assert format_text(text, str(spec)) == text
    messy = "\n".join(
        line if line.lstrip().startswith("#") else line.replace(" = ", "=").replace("  ", "\t", 1)
        for line in text.split("\n")
    ).replace("\n", "\r\n")
    once = format_text(messy, str(spec))
    assert once == text
    assert format_text(once, str(spec)) == once


@pytest.mark.parametrize("case", INVALID, ids=lambda p: p.stem)
def test_invalid_spec_gives_exact_diagnostic(
    case: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    relative = case.relative_to(ROOT)
    assert cli.main(["check", str(relative)]) == 2
    err = capsys.readouterr().err
    expected = case.with_suffix(".expected").read_text()
    assert err == expected


def test_all_errors_are_reported_at_once() -> None:
    text = (ROOT / "tests/fixtures/invalid/several_errors.imp").read_text()
    with pytest.raises(DiagnosticError) as info:
        load_text(text, "x.imp")
    assert len(info.value.diagnostics) == 3


def test_no_lark_token_names_reach_the_user() -> None:
    for case in INVALID:
        text = case.with_suffix(".expected").read_text()
        for token_name in ("RBRACE", "LPAR", "$END", "NAME", "NUMBER", "Token("):
            assert token_name not in text, (case.name, token_name)


MEANING_PRESERVING = [
    lambda t: t.replace("\n", "\r\n"),
    lambda t: "\ufeff" + t,
    lambda t: t.replace("  ", "\t"),
    lambda t: t.replace(" = ", "   =   "),
    lambda t: t.replace("{\n", "{ # a comment\n"),
    lambda t: "# header\n\n" + t + "\n# trailer\n",
    lambda t: t.replace("\n", "\n\n"),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
@pytest.mark.parametrize("edit", range(len(MEANING_PRESERVING)))
def test_meaning_preserving_edits_stay_valid(spec: Path, edit: int) -> None:
    original = load_text(spec.read_text(), "a.imp")
    data = MEANING_PRESERVING[edit](spec.read_text()).encode("utf-8")
    from improve_dsl.syntax import decode_source

    edited = load_text(decode_source(data, "b.imp"), "b.imp")
    assert edited.model == original.model
    assert edited.train == original.train
    assert edited.data == original.data


def _check_bytes(tmp: Path, data: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp / "mutant.imp"
    path.write_bytes(data)
    code = cli.main(["check", str(path)])
    out = capsys.readouterr()
    assert code in (0, 2)
    if code == 2:
        assert LOCATED.search(out.err), out.err
        assert "Traceback" not in out.err


_TOKENS = [
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    "=",
    ",",
    '"',
    "#",
    "\x00",
    "1e999",
    "0.0.1",
    "nan",
    "-1",
    "none",
    "true",
    "pipeline",
    "train",
    "sgd(",
    "\t",
    "\r\n",
    "\ufeff",
    "é",
    "\\",
]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    spec_index=st.integers(0, max(0, len(SPECS) - 1)),
    position=st.floats(0, 1),
    mutation=st.one_of(
        st.tuples(st.just("insert"), st.sampled_from(_TOKENS)),
        st.tuples(st.just("delete"), st.integers(1, 12)),
        st.tuples(st.just("byte"), st.integers(0, 255)),
    ),
)
def test_mutated_specs_never_crash(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    spec_index: int,
    position: float,
    mutation: tuple[str, object],
) -> None:
    data = bytearray(SPECS[spec_index].read_bytes())
    at = int(position * len(data))
    kind, arg = mutation
    if kind == "insert":
        data[at:at] = str(arg).encode("utf-8")
    elif kind == "delete":
        assert isinstance(arg, int)
        del data[at : at + arg]
    else:
        assert isinstance(arg, int)
        data[at:at] = bytes([arg])
    _check_bytes(tmp_path, bytes(data), capsys)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes
) -> None:
    _check_bytes(tmp_path, data, capsys)


def test_check_of_undecodable_bytes_is_located_and_the_next_spec_still_checked(
    tmp_path: Path, improve: ImproveCall
) -> None:
    bad = tmp_path / "bad.imp"
    bad.write_bytes(b"pipeline p {\n  metric = \xff\n")
    proc = improve("check", str(bad), str(SPECS[0]))
    assert proc.returncode == 2
    assert "not valid UTF-8" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{SPECS[0]}: ok" in proc.stdout


def test_fmt_keeps_comments_and_check_reports_diff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "s.imp"
    spec.write_text("# keep me\npipeline p{metric=accuracy # mine\n}\n")
    assert cli.main(["fmt", "--check", str(spec)]) == 1
    assert "+pipeline p {" in capsys.readouterr().out
    assert cli.main(["fmt", str(spec)]) == 0
    assert spec.read_text() == "# keep me\npipeline p {\n  metric = accuracy  # mine\n}\n"
    assert cli.main(["fmt", "--check", str(spec)]) == 0


def test_exponent_numbers_parse_whole() -> None:
    text = (ROOT / "specs/digits.imp").read_text()
    text = text.replace("weight_decay = 0.0)", "weight_decay = 5e-4)").replace(
        "lr = 0.01", "lr = 1E-2"
    )
    spec = load_text(text, "x.imp")
    assert spec.train.optimizer["weight_decay"] == 5e-4
    assert spec.train.optimizer["lr"] == 0.01
    assert format_text(text) == text
