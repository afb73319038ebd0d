"""The one scanner of strings and comments (syntax.strings_and_comments) reads them as the
grammar's lexer does, and its callers (comments kept by fmt, the nesting guard, the reply
splitter) see what the parser sees."""

from __future__ import annotations

import functools
import random

import lark
import pytest

from improve_dsl import syntax
from improve_dsl.diagnostics import DiagnosticError
from improve_dsl.paths import grammar_dir
from improve_dsl.refine.reply import extract_blocks

_COMMENTS: list[lark.Token] = []  # the grammar ignores comments; a lexer callback keeps them


@functools.lru_cache(maxsize=1)
def _grammar_lexer() -> lark.Lark:
    return lark.Lark(
        (grammar_dir() / "imp.lark").read_text(encoding="utf-8"),
        parser="lalr",
        lexer_callbacks={"COMMENT": _COMMENTS.append},
    )


def _grammar_lexemes(text: str) -> tuple[list[tuple[int, int]], list[lark.Token]]:
    """(STRING spans, COMMENT tokens) as the grammar's own lexer reads ``text``."""
    _COMMENTS.clear()
    lexed = list(_grammar_lexer().lex(text))
    strings = [(t.start_pos, t.end_pos) for t in lexed if t.type == "STRING"]
    return strings, list(_COMMENTS)


def _scanned(text: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    stretches = list(syntax.strings_and_comments(text))
    return (
        [(s.start, s.end) for s in stretches if s.kind == "string"],
        [(s.start, s.end) for s in stretches if s.kind == "comment"],
    )


AGREEING = {
    "a '#' in a string": 'pipeline p {\n  name = "a # b"  # the comment\n}\n',
    "escaped quotes": 'data {\n  root = "say \\"hi\\" # no"  # "yes"\n}\n',
    "an escaped backslash before the closing quote": 'x { a = "dir\\\\"  # c\n}',
    "quotes in a comment": 'x {  # he said "stop\n  a = "b"\n}\n',
    "a comment at the end without a newline": "x {\n}\n# last",
    "a string at the end without a newline": 'x { a = "end" }',
    "brackets in strings and comments": 'x { a = f("[(", "}") }  # ]) {\n',
    "CRLF line ends": 'x {\r\n  a = "b"  # c\r\n}\r\n',
    "a carriage return inside a string": 'x { a = "b\r# c" }\n',
    "a form feed between lines": "# one\f\nx {\n  # two\n}\n",
    "no strings or comments": "x {\n  a = 1\n}\n",
    "empty": "",
}


@pytest.mark.parametrize("text", AGREEING.values(), ids=AGREEING.keys())
def test_the_scanner_reads_strings_and_comments_as_the_grammar_does(text: str) -> None:
    strings, comments = _grammar_lexemes(text)
    assert _scanned(text) == (strings, [(c.start_pos, c.end_pos) for c in comments])
    positions = [(c.text, c.line, c.column) for c in syntax.parse(text).comments]
    assert positions == [(str(c).rstrip(), c.line, c.column) for c in comments]


def test_the_scanner_agrees_with_the_grammar_on_random_text() -> None:
    rng = random.Random(24)
    # Single characters beside whole literals, so that many samples lex and hold escapes.
    pieces = ['"', "\\", "#", "\n", "\r", " ", "a", "1", "{", "}", "[", ")", "=", ","]
    pieces += ['"\\""', '"\\\\"', '"#"', '"a\\"#"', '# "x"', '"\\n}"']
    lexed = 0
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 16)))
        try:
            strings, comments = _grammar_lexemes(text)
        except lark.exceptions.UnexpectedInput:
            continue  # the grammar refuses it; the scanner's reading is tested below
        lexed += 1
        assert _scanned(text) == (strings, [(c.start_pos, c.end_pos) for c in comments]), text
    assert lexed > 50  # enough of the samples were .imp text at all


def test_an_unterminated_string_runs_to_the_end_of_its_line() -> None:
    text = 'x { a = "open # not a comment ]\n  b = "shut"  # a comment\n}\n'
    kinds = [(s.kind, text[s.start : s.end]) for s in syntax.strings_and_comments(text)]
    assert kinds == [
        ("unterminated", '"open # not a comment ]'),
        ("string", '"shut"'),
        ("comment", "# a comment"),
    ]
    with pytest.raises(DiagnosticError, match="unterminated string"):
        syntax.parse(text)
    # A backslash at the end of the line escapes nothing: the next line is code again.
    text = 'a = "open \\\n"b"\n'
    assert [s.kind for s in syntax.strings_and_comments(text)] == ["unterminated", "string"]


def test_stretch_at_and_code_offsets_skip_what_the_scanner_found() -> None:
    text = 'f("(", x) # )\n'
    assert list(syntax.code_offsets(text, "()")) == [1, 8]
    assert list(syntax.code_offsets(text, "()", start=2)) == [8]
    assert syntax.stretch_at(text, 2) == syntax.Stretch("string", 2, 5)
    assert syntax.stretch_at(text, 10) == syntax.Stretch("comment", 10, 13)
    assert syntax.stretch_at(text, 0) is None


def test_brackets_in_strings_and_comments_do_not_count_towards_the_nesting_limit() -> None:
    deep = "[" * (syntax.MAX_NESTING + 1)
    text = f'x {{\n  a = "{deep}"  # {deep}\n}}\n'
    assert syntax.parse(text).comments[0].text == f"# {deep}"
    before = '  s = "[[" b = '  # the nesting starts after these on line 2
    nested = "[" * (syntax.MAX_NESTING + 1) + "]" * (syntax.MAX_NESTING + 1)
    with pytest.raises(DiagnosticError) as caught:
        syntax.parse(f"x {{\n{before}{nested}\n}}\n")
    (diagnostic,) = caught.value.diagnostics
    assert "nested more than" in diagnostic.message
    column = len(before) + syntax.MAX_NESTING + 1
    assert (diagnostic.span.line, diagnostic.span.column) == (2, column)


def test_the_reply_splitter_skips_braces_in_strings_and_comments() -> None:
    reply = 'train {  # } "\n  name = "a \\" } # {"\n  epochs = 3\n}\n'
    assert extract_blocks(reply, ["train"]) == reply
