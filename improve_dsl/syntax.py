"""Parsing: .imp text → AST with spans. The transformer only shapes; it never judges."""

from __future__ import annotations

import bisect
import contextlib
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union, overload

import lark
from lark import Lark, Token, Transformer, v_args
from lark.tree import Meta

from .diagnostics import Diagnostic, DiagnosticError, Span
from .paths import grammar_dir, user_cache_dir

# ---------------------------------------------------------------- AST


@dataclass(frozen=True)
class Number:
    text: str
    span: Span


@dataclass(frozen=True)
class String:
    value: str
    span: Span


@dataclass(frozen=True)
class Name:
    value: str
    span: Span


@dataclass(frozen=True)
class Arg:
    keyword: str | None
    keyword_span: Span | None
    value: Value


@dataclass(frozen=True)
class Call:
    name: str
    span: Span  # the callable's name
    args: tuple[Arg, ...]


@dataclass(frozen=True)
class ListValue:
    items: tuple[Value, ...]
    span: Span  # the opening bracket


Value = Union[Number, String, Name, Call, ListValue]


@dataclass(frozen=True)
class Field:
    name: str
    span: Span  # the field's name
    value: Value
    end_line: int


@dataclass(frozen=True)
class Block:
    kind: str
    span: Span  # the block's keyword
    label: str | None
    label_span: Span | None
    fields: tuple[Field, ...]
    end_line: int  # line of the closing brace


@dataclass(frozen=True)
class Comment:
    text: str
    line: int
    column: int


@dataclass(frozen=True)
class SpecAST:
    path: str
    source: str
    blocks: tuple[Block, ...]
    comments: tuple[Comment, ...]


def value_span(value: Value) -> Span:
    """Where a value starts (for calls: the callable's name)."""
    return value.span


# ---------------------------------------------------------------- Parser


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    text = (grammar_dir() / "imp.lark").read_text(encoding="utf-8")
    # The built parser is kept in the user's own cache folder (never a shared temp folder:
    # the cache is a pickle), so a fresh process loads it in milliseconds instead of
    # building it (0.4 s). Lark stores the grammar's hash with it and rebuilds on a change.
    cache = user_cache_dir()
    return Lark(
        text,
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=False,
        cache=str(cache / f"parser-lark{lark.__version__}.pickle") if cache else False,
    )


def _span(token: Token) -> Span:
    return Span(token.line or 1, token.column or 1, max(1, len(str(token))))


@v_args(inline=True)
class _Shape(Transformer[Token, object]):
    def start(self, *blocks: Block) -> tuple[Block, ...]:
        return blocks

    # The rules whose node spans lines or has no token of its own take lark's positions
    # (``meta``) directly, so the AST is built once, with every span right.
    @v_args(inline=True, meta=True)
    def block(self, meta: Meta, kind: Token, *rest: object) -> Block:
        label: Token | None = None
        items = list(rest)
        if items and isinstance(items[0], Token):
            label = items.pop(0)  # type: ignore[assignment]
        fields = tuple(f for f in items if isinstance(f, Field))
        return Block(
            kind=str(kind),
            span=_span(kind),
            label=str(label) if label is not None else None,
            label_span=_span(label) if label is not None else None,
            fields=fields,
            end_line=meta.end_line,
        )

    def label(self, name: Token) -> Token:
        return name

    @v_args(inline=True, meta=True)
    def field(self, meta: Meta, name: Token, value: Value) -> Field:
        return Field(str(name), _span(name), value, end_line=meta.end_line)

    def number(self, token: Token) -> Number:
        return Number(str(token), _span(token))

    def string(self, token: Token) -> String:
        return String(_unescape(str(token)), _span(token))

    def name(self, token: Token) -> Name:
        return Name(str(token), _span(token))

    def call(self, name: Token, *args: Arg | None) -> Call:
        return Call(str(name), _span(name), tuple(a for a in args if a is not None))

    def keyword_arg(self, name: Token, value: Value) -> Arg:
        return Arg(str(name), _span(name), value)

    def positional_arg(self, value: Value) -> Arg:
        return Arg(None, None, value)

    @v_args(inline=True, meta=True)
    def list(self, meta: Meta, *items: Value | None) -> ListValue:
        return ListValue(tuple(i for i in items if i is not None), Span(meta.line, meta.column, 1))


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "0": "\0"}


def _unescape(token: str) -> str:
    body = token[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            out.append(_ESCAPES.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def decode_source(data: bytes, path: str) -> str:
    """Bytes of a spec file → text, or a located diagnostic for bad encodings."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = len(before.rsplit(b"\n", 1)[-1].decode("utf-8", "replace")) + 1
        byte = data[exc.start]
        raise DiagnosticError(
            [
                Diagnostic(
                    path,
                    Span(line, column),
                    f"the file is not valid UTF-8 (byte 0x{byte:02x})",
                    hint="save the spec as UTF-8",
                )
            ],
            data.decode("utf-8", "replace"),
        ) from None
    return text


def read_spec_text(path: Path) -> str:
    """Read a spec file as text; unreadable files become a diagnostic."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DiagnosticError(
            [Diagnostic(str(path), Span(0, 0), f"cannot read the spec: {reason}")]
        ) from None
    return decode_source(data, str(path))


def parse(source: str, path: str = "<spec>") -> SpecAST:
    """Parse .imp text into an AST, or raise a DiagnosticError with a located message."""
    nul = source.find("\0")
    if nul >= 0:
        where = Span(*_line_column(source, nul))
        raise DiagnosticError([Diagnostic(path, where, "NUL character in the spec")], source)
    too_deep = _too_deep(source, path)
    if too_deep is not None:
        raise DiagnosticError([too_deep], source)
    try:
        tree = _parser().parse(source)
    except lark.exceptions.UnexpectedInput as exc:
        raise DiagnosticError([_syntax_diagnostic(exc, source, path)], source) from None
    blocks: tuple[Block, ...] = _Shape().transform(tree)  # type: ignore[assignment]
    return SpecAST(path, source, blocks, _comments(source))


def _line_column(source: str, offset: int) -> tuple[int, int]:
    """The line and column of ``offset`` as the parser counts them (lines end at '\\n')."""
    return source.count("\n", 0, offset) + 1, offset - (source.rfind("\n", 0, offset) + 1) + 1


def _comments(source: str) -> tuple[Comment, ...]:
    """Every ``#`` comment (outside a string), with its position."""
    starts = [0, *(match.end() for match in re.finditer("\n", source))]
    found: list[Comment] = []
    for stretch in strings_and_comments(source):
        if stretch.kind == "comment":
            line = bisect.bisect_right(starts, stretch.start)
            text = source[stretch.start : stretch.end].rstrip()
            found.append(Comment(text, line, stretch.start - starts[line - 1] + 1))
    return tuple(found)


def tokens(source: str) -> list[Token]:
    """The grammar's tokens of ``source`` (comments and spaces dropped), in order, up to the
    first character the grammar cannot read: what an editor needs while a spec is half-typed."""
    found: list[Token] = []
    with contextlib.suppress(lark.exceptions.UnexpectedInput):
        for token in _parser().lex(source):  # one by one: those before a bad one are kept
            found.append(token)
    return found


# ---------------------------------------------------------------- Strings and comments


@dataclass(frozen=True)
class Stretch:
    """A string literal or a comment, ``text[start:end]``: no bracket or ``#`` in it is code.
    An ``unterminated`` string (one the grammar cannot close) runs to the end of its line."""

    kind: Literal["string", "comment", "unterminated"]
    start: int
    end: int


@functools.lru_cache(maxsize=1)
def _stretch_pattern() -> re.Pattern[str]:
    # The grammar's own STRING and COMMENT terminals, read from the parser, not restated;
    # neither a name nor a number can hold a '"' or a '#', so the first of either outside a
    # stretch starts the next one.
    terminal = {n: _parser().get_terminal(n).pattern.to_regexp() for n in ("STRING", "COMMENT")}
    return re.compile(
        f"(?P<string>{terminal['STRING']})|(?P<comment>{terminal['COMMENT']})"
        '|(?P<unterminated>"[^\\n]*)'
    )


def _stretch(match: re.Match[str]) -> Stretch:
    return Stretch(match.lastgroup, match.start(), match.end())  # type: ignore[arg-type]


def strings_and_comments(text: str, start: int = 0) -> Iterator[Stretch]:
    """Every string literal and comment from offset ``start`` on, in order, as the
    grammar's lexer reads them (also in text it would refuse)."""
    return map(_stretch, _stretch_pattern().finditer(text, start))


def stretch_at(text: str, offset: int) -> Stretch | None:
    """The string or comment starting at ``offset``, if one does."""
    match = _stretch_pattern().match(text, offset)
    return _stretch(match) if match is not None else None


def code_offsets(text: str, chars: str, start: int = 0) -> Iterator[int]:
    """Offsets of each of ``chars`` from ``start`` on, outside strings and comments."""
    wanted = re.compile(f"[{re.escape(chars)}]")
    position = start
    for stretch in strings_and_comments(text, start):
        for match in wanted.finditer(text, position, stretch.start):
            yield match.start()
        position = stretch.end
    for match in wanted.finditer(text, position):
        yield match.start()


# ---------------------------------------------------------------- Syntax errors

# Deeper nesting of lists and calls is refused before parsing: every stage after the parser
# walks values recursively, and no pipeline needs more than a few levels.
MAX_NESTING = 64


def _too_deep(source: str, path: str) -> Diagnostic | None:
    """A diagnostic at the first '[' or '(' nested deeper than ``MAX_NESTING``, if any."""
    if source.count("[") + source.count("(") <= MAX_NESTING:
        return None  # the common case, without a scan
    depth = 0
    for offset in code_offsets(source, "[]()"):
        if source[offset] in "])":
            depth = max(0, depth - 1)
            continue
        depth += 1
        if depth > MAX_NESTING:
            return Diagnostic(
                path,
                Span(*_line_column(source, offset)),
                f"lists and calls nested more than {MAX_NESTING} deep",
                hint="a spec needs only a few levels; is a closing bracket missing?",
            )
    return None


_TOKEN_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "COMMA": "','",
    "EQUAL": "'='",
    "$END": "the end of the file",
}


def _describe(token: Token) -> str:
    if token.type == "$END":
        return "the end of the file"
    if token.type in ("NAME", "NUMBER", "STRING"):
        return f"{_TOKEN_WORDS[token.type][2:] if token.type != 'NAME' else 'name'} '{token}'"
    return f"'{token}'"


def _expected(expected: set[str]) -> str:
    words = sorted({_TOKEN_WORDS.get(e, e.lower()) for e in expected if e in _TOKEN_WORDS})
    if not words:
        return ""
    if len(words) == 1:
        return f"expected {words[0]}"
    return "expected " + ", ".join(words[:-1]) + " or " + words[-1]


def _syntax_diagnostic(exc: lark.exceptions.UnexpectedInput, source: str, path: str) -> Diagnostic:
    if isinstance(exc, lark.exceptions.UnexpectedCharacters):
        pos = exc.pos_in_stream or 0
        char = source[pos] if pos < len(source) else ""
        if char == '"':
            return Diagnostic(
                path, Span(exc.line, exc.column), "unterminated string", hint="close it with '\"'"
            )
        return Diagnostic(path, Span(exc.line, exc.column), f"unexpected character {char!r}")
    if isinstance(exc, lark.exceptions.UnexpectedToken):
        token = exc.token
        if token.type == "$END":
            return _unclosed(source, path)
        if token.type == "LBRACE":
            left_open = _unclosed(source, path, before=token)
            if left_open is not None:
                return left_open
        width = max(1, len(str(token)))
        message = f"unexpected {_describe(token)}"
        expected = _expected(set(exc.expected))
        if expected:
            message += f"; {expected}"
        return Diagnostic(path, Span(token.line or 1, token.column or 1, width), message)
    if isinstance(exc, lark.exceptions.UnexpectedEOF):
        return _unclosed(source, path)
    return Diagnostic(path, Span(exc.line or 1, exc.column or 1), "syntax error")


@overload
def _unclosed(source: str, path: str) -> Diagnostic: ...
@overload
def _unclosed(source: str, path: str, before: Token) -> Diagnostic | None: ...


def _unclosed(source: str, path: str, before: Token | None = None) -> Diagnostic | None:
    """A missing closer: say which block, call or list, and where it opened.

    At the end of the file (``before`` is None) something is always left open. Given the
    ``{`` of the next block (``before``), only a block still open there is reported (a
    missing ``}`` in the middle of a file: the parser only notices at the next block);
    otherwise None.
    """
    stack: list[tuple[str, Token, Token | None]] = []
    previous: Token | None = None
    before_previous: Token | None = None
    closers = {"RBRACE": "LBRACE", "RPAR": "LPAR", "RSQB": "LSQB"}
    try:
        for token in _parser().lex(source):
            if before is not None and token.start_pos == before.start_pos:
                break
            if token.type == "LBRACE" and previous is not None:
                keyword = previous
                if (
                    before_previous is not None
                    and before_previous.type == "NAME"
                    and (
                        before_previous.line == previous.line and str(before_previous) == "pipeline"
                    )
                ):
                    keyword = before_previous
                stack.append((token.type, keyword, keyword))
            elif token.type in ("LPAR", "LSQB"):
                stack.append((token.type, token, previous))
            elif token.type in closers and stack and stack[-1][0] == closers[token.type]:
                stack.pop()
            before_previous, previous = previous, token
    except lark.exceptions.UnexpectedInput:
        pass
    if before is not None:
        blocks = [entry for entry in stack if entry[0] == "LBRACE"]
        if not blocks:
            return None
        name, opener = str(blocks[-1][1]), blocks[-1][1]
        next_block = str(previous) if previous is not None else "the next block"
        return Diagnostic(
            path,
            Span(opener.line or 1, opener.column or 1, len(name)),
            f"block '{name}' opened here (line {opener.line}) is never closed",
            hint=f"add '}}' after the last field of '{name}', before '{next_block}' "
            f"at line {before.line}",
        )
    lines = source.splitlines() or [""]
    end = Span(len(lines), len(lines[-1]) + 1)
    if not stack:
        return Diagnostic(path, end, "unexpected end of the file")
    kind, opener, before_opener = stack[-1]
    if kind == "LBRACE":
        name = str(opener)
        where = f"{opener.line}:{opener.column}"
        return Diagnostic(
            path,
            Span(opener.line or 1, opener.column or 1, len(name)),
            f"block '{name}' opened here is never closed",
            hint=f"add '}}' after the last field of '{name}' (opened at {where})",
        )
    what = f"call '{before_opener}'" if kind == "LPAR" and before_opener is not None else "list"
    closer = ")" if kind == "LPAR" else "]"
    return Diagnostic(
        path,
        Span(opener.line or 1, opener.column or 1),
        f"{what} opened here is never closed",
        hint=f"add '{closer}'",
    )
