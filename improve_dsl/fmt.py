"""Canonical layout of specs: ``improve fmt``. Comments are kept; formatting is idempotent.

Layout: blocks separated by one blank line, fields indented by two spaces as
``name = value``, calls as ``name(key = value, ...)``, lists on one line, a trailing comment
two spaces after its code. Numbers keep the text the user wrote.

This module is also the one printer of ``.imp`` values: ``print_value`` for parsed values,
``literal`` and ``call`` for Python values (registry defaults, an expert's moves, ``improve
init``). Every writer of spec text goes through them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from . import registry
from .registry import ParamValue
from .syntax import Block, Call, Comment, Field, ListValue, Name, Number, String, Value, parse

_INDENT = "  "
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}


def quote(text: str) -> str:
    """A string literal of the language."""
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in text) + '"'


def number_text(value: float, significant: int | None = None) -> str:
    """A float as .imp text that reads back as a float: the shortest text that round-trips
    (``0.1``, ``2.0``, ``1e-06``), or rounded to ``significant`` digits (``0.3333``)."""
    if not math.isfinite(value):
        raise ValueError(f"{value} has no .imp form")
    text = repr(value) if significant is None else f"{value:.{significant}g}"
    return text if any(c in text for c in ".en") else text + ".0"


def literal(value: ParamValue, kind: str | None = None, *, significant: int | None = None) -> str:
    """A Python value as .imp text: ``none``, ``true``/``false``, numbers, ``[lists]``. A
    string is quoted when ``kind`` is ``"str"`` (a path or other free text); otherwise it is a
    bare name (an enum choice, or an op written without arguments)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return number_text(value, significant)
    if isinstance(value, tuple):
        return "[" + ", ".join(literal(v, significant=significant) for v in value) + "]"
    return quote(value) if kind == "str" else value


def call(
    name: str,
    params: Mapping[str, ParamValue] | None = None,
    category: str | None = None,
    *,
    significant: int | None = None,
) -> str:
    """``name(key = value, ...)``, leaving out parameters that are not set (``None``). With the
    registry ``category``, string parameters of kind ``str`` are quoted."""
    comp = registry.component(category, name) if category else None
    args = []
    for key, value in (params or {}).items():
        if value is None:
            continue
        spec = comp.param(key) if comp else None
        text = literal(value, spec.kind if spec else None, significant=significant)
        args.append(f"{key} = {text}")
    return f"{name}({', '.join(args)})"


def print_value(value: Value) -> str:
    """A parsed value in canonical form."""
    if isinstance(value, Number):
        return value.text
    if isinstance(value, String):
        return quote(value.value)
    if isinstance(value, Name):
        return value.value
    if isinstance(value, Call):
        args = ", ".join(
            print_value(a.value) if a.keyword is None else f"{a.keyword} = {print_value(a.value)}"
            for a in value.args
        )
        return f"{value.name}({args})"
    assert isinstance(value, ListValue)
    return "[" + ", ".join(print_value(v) for v in value.items) + "]"


def print_field(fld: Field) -> str:
    return f"{fld.name} = {print_value(fld.value)}"


def block_header(block: Block) -> str:
    return f"{block.kind} {block.label} {{" if block.label else f"{block.kind} {{"


def print_block(block: Block, skip_fields: Iterable[str] = ()) -> str:
    """Canonical text of one block, without comments, ending in a newline."""
    skip = set(skip_fields)
    lines = [block_header(block)]
    lines += [_INDENT + print_field(f) for f in block.fields if f.name not in skip]
    lines.append("}")
    return "\n".join(lines) + "\n"


@dataclass
class _Anchor:
    """A printed line that comments attach to."""

    line: int
    leading: list[Comment] = field(default_factory=list)
    trailing: Comment | None = None


def format_text(text: str, path: str = "<spec>") -> str:
    """Canonical text of a spec (raises DiagnosticError when it does not parse)."""
    ast = parse(text, path)
    source_lines = text.splitlines()
    headers: list[_Anchor] = []
    fields: list[list[_Anchor]] = []
    closers: list[_Anchor] = []
    ordered: list[_Anchor] = []
    for block in ast.blocks:
        header = _Anchor(block.span.line)
        headers.append(header)
        ordered.append(header)
        row = [_Anchor(f.span.line) for f in block.fields]
        fields.append(row)
        ordered += row
        closer = _Anchor(block.end_line)
        closers.append(closer)
        ordered.append(closer)
    end_comments: list[Comment] = []
    for comment in ast.comments:
        before = source_lines[comment.line - 1][: comment.column - 1]
        target = _trailing_target(ast.blocks, headers, fields, closers, comment.line)
        if before.strip() and target is not None and target.trailing is None:
            target.trailing = comment
            continue
        following = next((a for a in ordered if a.line > comment.line), None)
        if target is not None and target not in headers and target not in closers:
            target.leading.append(comment)  # inside a value that spans several lines
        elif following is None:
            end_comments.append(comment)
        else:
            following.leading.append(comment)

    out: list[str] = []
    for index, block in enumerate(ast.blocks):
        if index:
            out.append("")
        _emit_leading(out, headers[index], "", source_lines)
        out.append(_with_trailing(block_header(block), headers[index].trailing))
        for fld, anchor in zip(block.fields, fields[index], strict=True):
            _emit_leading(out, anchor, _INDENT, source_lines)
            out.append(_with_trailing(_INDENT + print_field(fld), anchor.trailing))
        _emit_leading(out, closers[index], _INDENT, source_lines)
        out.append(_with_trailing("}", closers[index].trailing))
    if end_comments:
        if out:
            out.append("")
        out += [c.text for c in end_comments]
    return "\n".join(out) + "\n" if out else ""


def _trailing_target(
    blocks: tuple[Block, ...],
    headers: list[_Anchor],
    fields: list[list[_Anchor]],
    closers: list[_Anchor],
    line: int,
) -> _Anchor | None:
    for block, header, row, closer in zip(blocks, headers, fields, closers, strict=True):
        for fld, anchor in zip(block.fields, row, strict=True):
            if fld.span.line <= line <= fld.end_line:
                return anchor
        if line == block.span.line:
            return header
        if line == block.end_line:
            return closer
    return None


def _emit_leading(out: list[str], anchor: _Anchor, indent: str, source: list[str]) -> None:
    comments = anchor.leading
    for i, comment in enumerate(comments):
        out.append(indent + comment.text)
        next_line = comments[i + 1].line if i + 1 < len(comments) else anchor.line
        gap = source[comment.line : next_line - 1]
        if gap and all(not line.strip() for line in gap):
            out.append("")


def _with_trailing(code: str, comment: Comment | None) -> str:
    return f"{code}  {comment.text}" if comment else code
