"""The TextMate grammar for syntax highlighting (editors/vscode/syntaxes/imp.tmLanguage.json),
run by a TextMate engine (textmate-grammar-python, on Oniguruma like VS Code's) over every
example spec: each comment, string, number, block, label, field, op, parameter and value the
parser finds must get the matching scope."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from improve_dsl.syntax import Call, ListValue, Name, Number, String, Value, parse

textmate = pytest.importorskip(
    "textmate_grammar.parsers.base",
    reason="textmate-grammar-python is not installed: pip install -e '.[dev]'",
)

ROOT = Path(__file__).resolve().parent.parent
VSCODE = ROOT / "editors" / "vscode"
GRAMMAR = VSCODE / "syntaxes" / "imp.tmLanguage.json"
SPECS = sorted((ROOT / "specs").glob("*.imp")) + sorted(
    (ROOT / "tests" / "fixtures" / "valid").glob("*.imp")
)


def _expected(path: Path) -> Iterator[tuple[int, int, str, str]]:
    """(line, column, text, scope) of every token, as the parser sees the spec (1-based)."""
    text = path.read_text(encoding="utf-8")
    ast = parse(text, str(path))
    lines = text.splitlines()

    def value(item: Value) -> Iterator[tuple[int, int, str, str]]:
        span = item.span
        if isinstance(item, Number):
            yield span.line, span.column, item.text, "constant.numeric.imp"
        elif isinstance(item, String):
            yield span.line, span.column, '"', "string.quoted.double.imp"
        elif isinstance(item, Name):
            scope = (
                "constant.language.imp"
                if item.value in ("true", "false", "none")
                else "constant.other.imp"
            )
            yield span.line, span.column, item.value, scope
        elif isinstance(item, Call):
            yield span.line, span.column, item.name, "entity.name.function.imp"
            for arg in item.args:
                if arg.keyword is not None and arg.keyword_span is not None:
                    where = arg.keyword_span
                    yield where.line, where.column, arg.keyword, "variable.parameter.imp"
                yield from value(arg.value)
        elif isinstance(item, ListValue):
            for element in item.items:
                yield from value(element)

    for block in ast.blocks:
        yield block.span.line, block.span.column, block.kind, "keyword.other.block.imp"
        if block.label is not None and block.label_span is not None:
            where = block.label_span
            yield where.line, where.column, block.label, "entity.name.section.imp"
        for fld in block.fields:
            yield fld.span.line, fld.span.column, fld.name, "variable.other.property.imp"
            yield from value(fld.value)
    for comment in ast.comments:
        assert lines[comment.line - 1][comment.column - 1 :].startswith(comment.text)
        yield comment.line, comment.column, comment.text, "comment.line.number-sign.imp"


@pytest.fixture(scope="module")
def grammar() -> object:
    return textmate.LanguageParser(json.loads(GRAMMAR.read_text(encoding="utf-8")))


@pytest.mark.parametrize("spec", SPECS, ids=[p.name for p in SPECS])
def test_every_token_gets_its_scope(grammar: object, spec: Path) -> None:
    element = grammar.parse_string(spec.read_text(encoding="utf-8"))  # type: ignore[attr-defined]
    assert element is not None
    scopes = {position: (content, keys) for position, content, keys in element.flatten()}
    expected = list(_expected(spec))
    assert len(expected) > 20
    for line, column, text, scope in expected:
        found = scopes.get((line - 1, column - 1))
        assert found is not None, f"{spec.name}:{line}:{column}: no token starts at {text!r}"
        content, keys = found
        assert content.startswith(text[:1]) and scope in keys, (
            f"{spec.name}:{line}:{column}: {text!r} is highlighted as {keys} ({content!r}), "
            f"not {scope}"
        )
        if scope != "string.quoted.double.imp":
            assert content == text, f"{spec.name}:{line}:{column}: {content!r} != {text!r}"


def test_the_vscode_extension_points_at_the_grammar() -> None:
    grammar = json.loads(GRAMMAR.read_text(encoding="utf-8"))
    assert grammar["scopeName"] == "source.imp"
    assert grammar["fileTypes"] == ["imp"]
    package = json.loads((VSCODE / "package.json").read_text(encoding="utf-8"))
    [language] = package["contributes"]["languages"]
    assert language["extensions"] == [".imp"]
    assert (VSCODE / language["configuration"]).is_file()
    [contributed] = package["contributes"]["grammars"]
    assert contributed["scopeName"] == grammar["scopeName"]
    assert (VSCODE / contributed["path"]).resolve() == GRAMMAR.resolve()
    configuration = json.loads((VSCODE / language["configuration"]).read_text(encoding="utf-8"))
    assert configuration["comments"]["lineComment"] == "#"
