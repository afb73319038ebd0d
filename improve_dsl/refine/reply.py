"""Strict handling of an expert's reply: extract the block, check it, merge it into the spec.

The model is aider's editblock coder: a reply is parsed strictly, checked, then applied, and
every failure goes back to the expert as the same diagnostic a user would see, plus what was
kept ("the other blocks are unchanged; send only the `train` block").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import fmt, registry, syntax, validate
from ..diagnostics import Diagnostic, DiagnosticError, Span
from ..syntax import Block, SpecAST

REPLY_PATH = "<reply>"  # the path diagnostics name when they point into an expert's reply


class EditError(Exception):
    """A reply that cannot be used as an edit; the message says what to send instead.

    ``raw`` is the reply as received; ``tokens`` and ``cost_usd`` what it cost, so that an
    invalid attempt is still accounted for; ``grammar`` how the reply was constrained and
    ``grammar_note`` a constraint the server refused on the way.
    """

    def __init__(
        self,
        message: str,
        *,
        raw: str = "",
        tokens: int = 0,
        cost_usd: float = 0.0,
        grammar: str = "",
        grammar_note: str = "",
    ):
        super().__init__(message)
        self.message = message
        self.raw = raw
        self.tokens = tokens
        self.cost_usd = cost_usd
        self.grammar = grammar
        self.grammar_note = grammar_note

    def __str__(self) -> str:
        return self.message


# ---------------------------------------------------------------- what the expert sees


def locked_fields(block: str) -> tuple[str, ...]:
    """The fields of ``block`` that refinement never changes."""
    return tuple(f.name for f in registry.block(block).fields if f.locked)


def editable_view(spec_text: str, block: str) -> str:
    """The block as an expert sees it: canonical text with its locked fields left out.

    A block the spec does not have (every field at its default) is shown empty.
    """
    ast = syntax.parse(spec_text, "<spec>")
    found = _find_block(ast, block)
    if found is None:
        return f"{block} {{\n}}"
    return fmt.print_block(found, skip_fields=locked_fields(block)).rstrip("\n")


def _find_block(ast: SpecAST, kind: str) -> Block | None:
    return next((b for b in ast.blocks if b.kind == kind), None)


# ---------------------------------------------------------------- extracting blocks from a reply


def _quote(blocks: Sequence[str]) -> str:
    names = [f"`{b}`" for b in blocks]
    if len(names) == 1:
        return f"the {names[0]} block"
    return "the " + ", ".join(names[:-1]) + " and " + names[-1] + " blocks, each once"


def ask_for(blocks: Sequence[str]) -> str:
    """What to send instead: ``send only the `train` block; the other blocks are unchanged``."""
    return f"send only {_quote(blocks)}; the other blocks are unchanged"


_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([^\n`]*)$", re.MULTILINE)
_HEADER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:[ \t]+([A-Za-z_][A-Za-z0-9_]*))?\s*\{")


@dataclass(frozen=True)
class _Piece:
    """A top-level piece of a reply: a block, a comment or stray text."""

    kind: str  # "block" | "comment" | "stray" | "unclosed"
    start: int
    end: int
    name: str = ""


def _closing_brace(text: str, opening: int) -> int | None:
    """Offset of the ``}`` matching the ``{`` at ``opening`` (strings and comments skipped)."""
    depth = 0
    for offset in syntax.code_offsets(text, "{}", opening):
        depth += 1 if text[offset] == "{" else -1
        if depth == 0:
            return offset
    return None


def _pieces(text: str) -> list[_Piece]:
    """Split text into top-level blocks, comments and stray text."""
    pieces: list[_Piece] = []
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        comment = syntax.stretch_at(text, i)
        if comment is not None and comment.kind == "comment":
            pieces.append(_Piece("comment", i, comment.end))
            i = comment.end
            continue
        header = _HEADER.match(text, i)
        if header is not None:
            close = _closing_brace(text, header.end() - 1)
            if close is None:
                pieces.append(_Piece("unclosed", i, len(text), header.group(1)))
                return pieces
            pieces.append(_Piece("block", i, close + 1, header.group(1)))
            i = close + 1
            continue
        end = text.find("\n", i)
        end = len(text) if end < 0 else end
        if pieces and pieces[-1].kind == "stray" and text[pieces[-1].end : i].strip() == "":
            pieces[-1] = _Piece("stray", pieces[-1].start, end)
        else:
            pieces.append(_Piece("stray", i, end))
        i = end
    return pieces


def _snippet(text: str, limit: int = 60) -> str:
    line = " ".join(text.split())
    return repr(line if len(line) <= limit else line[: limit - 1] + "…")


def split_reply(reply: str, expected: Sequence[str]) -> tuple[str, str]:
    """(the block text, the prose around a fence) of a free-text reply; see extract_blocks."""
    expected = tuple(expected)
    ask = ask_for(expected)
    if not reply.strip():
        raise EditError(f"the reply is empty; {ask}", raw=reply)
    fences = list(_FENCE.finditer(reply))
    prose = ""
    body = reply
    if fences:
        if len(fences) % 2:
            raise EditError(
                "the reply opens a ``` code fence that is never closed; write the block bare "
                f"or inside one closed ```imp fence; {ask}",
                raw=reply,
            )
        if len(fences) > 2:
            raise EditError(
                f"the reply has {len(fences) // 2} code fences; use one fence or none; {ask}",
                raw=reply,
            )
        opening, closing = fences
        body = reply[opening.end() + 1 : closing.start()]
        prose = (reply[: opening.start()] + "\n" + reply[closing.end() :]).strip()
    pieces = _pieces(body)
    stray = [p for p in pieces if p.kind == "stray"]
    blocks = [p for p in pieces if p.kind == "block"]
    unclosed = [p for p in pieces if p.kind == "unclosed"]
    if not blocks and not unclosed:
        what = "no block at all"
        if stray:
            what = f"no block, only {_snippet(body[stray[0].start : stray[0].end])}"
        raise EditError(
            f"the reply is not .imp text ({what}); write it as "
            f"`{expected[0]} {{ field = value ... }}` and {ask}",
            raw=reply,
        )
    if stray:
        where = "before" if stray[0].start < (blocks or unclosed)[0].start else "after"
        raise EditError(
            f"the reply has text {where} the block that is not .imp: "
            f"{_snippet(body[stray[0].start : stray[0].end])}; no prose (explain in a `#` "
            f"comment if you must); {ask}",
            raw=reply,
        )
    if unclosed:
        name = unclosed[0].name
        raise EditError(
            f"block '{name}' in the reply is never closed; add '}}' after its last field; {ask}",
            raw=reply,
        )
    names = [p.name for p in blocks]
    for name in names:
        if name not in expected:
            asked = " and ".join(f"'{b}'" for b in expected)
            raise EditError(
                f"the reply holds block '{name}', but {asked} was asked for; {ask}", raw=reply
            )
    for name in expected:
        count = names.count(name)
        if count > 1:
            raise EditError(f"the reply holds block '{name}' {count} times; {ask}", raw=reply)
        if count == 0:
            raise EditError(f"the reply has no '{name}' block; {ask}", raw=reply)
    return body.strip("\n").rstrip() + "\n", prose


def extract_blocks(reply: str, expected: Sequence[str]) -> str:
    """The .imp text of exactly the expected block(s) in a free-text reply.

    Accepts a bare block (with ``#`` comments) or one inside a single ``` fence (```imp or
    plain; prose outside the fence is ignored). Refuses prose mixed into the block, two copies
    of a block, the wrong block, an unclosed block and text that is not the language at all,
    each with an ``EditError`` saying what was wrong and what to send instead.
    """
    return split_reply(reply, expected)[0]


def rationale_of(reply: str, expected: Sequence[str]) -> str:
    """The expert's explanation: prose around a fence, else the comments it wrote."""
    try:
        text, prose = split_reply(reply, expected)
        comments = syntax.parse(text, REPLY_PATH).comments
    except (EditError, DiagnosticError):
        return ""
    if prose:
        return " ".join(prose.split())
    notes = (c.text.lstrip("#").strip() for c in comments)
    return " ".join(n for n in notes if n)


# ---------------------------------------------------------------- applying an edit


def _check_requested(blocks: Sequence[str]) -> tuple[str, ...]:
    wanted = tuple(blocks)
    if not wanted or len(set(wanted)) != len(wanted):
        raise ValueError(f"blocks to rewrite must be distinct and non-empty, got {wanted!r}")
    for name in wanted:
        if name not in registry.REFINABLE_BLOCKS:
            raise ValueError(f"block {name!r} is not refinable")
    return wanted


def _refuse(
    diagnostics: list[Diagnostic], source: str | None, blocks: Sequence[str]
) -> DiagnosticError:
    error = DiagnosticError(diagnostics, source)
    return _kept(error, blocks)


def _kept(error: DiagnosticError, blocks: Sequence[str]) -> DiagnosticError:
    note = f"nothing was applied: the spec is unchanged; fix the reply and {ask_for(blocks)}"
    if note not in error.extra:
        error.extra.append(note)
    return error


def _check_reply(proposed: SpecAST, wanted: Sequence[str]) -> list[Diagnostic]:
    """Exactly the wanted block kinds, once each, and no locked field."""
    problems: list[Diagnostic] = []
    seen: dict[str, Block] = {}
    hint = ask_for(wanted)
    for block in proposed.blocks:
        if block.kind not in wanted:
            asked = " and ".join(f"'{b}'" for b in wanted)
            problems.append(
                Diagnostic(
                    REPLY_PATH,
                    Span(block.span.line, block.span.column, len(block.kind)),
                    f"block '{block.kind}' was not asked for (only {asked})",
                    hint,
                )
            )
            continue
        if block.kind in seen:
            problems.append(
                Diagnostic(
                    REPLY_PATH,
                    Span(block.span.line, block.span.column, len(block.kind)),
                    f"block '{block.kind}' appears twice in the reply",
                    f"the first is at line {seen[block.kind].span.line}; send it once",
                )
            )
            continue
        seen[block.kind] = block
        locked = locked_fields(block.kind)
        for fld in block.fields:
            if fld.name in locked:
                problems.append(
                    Diagnostic(
                        REPLY_PATH,
                        Span(fld.span.line, fld.span.column, len(fld.name)),
                        f"'{fld.name}' in block '{block.kind}' is locked: refinement never "
                        "changes it",
                        "leave it out; the current value is kept",
                    )
                )
    lines = proposed.source.splitlines() or [""]
    end = Span(len(lines), 1)
    for name in wanted:
        if name not in seen:
            problems.append(Diagnostic(REPLY_PATH, end, f"the reply has no '{name}' block", hint))
    return problems


def _offset(source: str, line: int, column: int) -> int:
    starts = [0]
    for match in re.finditer("\n", source):
        starts.append(match.end())
    return starts[line - 1] + column - 1


def _extent(source: str, block: Block) -> tuple[int, int]:
    """Offsets of a block's keyword and just past its closing brace."""
    start = _offset(source, block.span.line, block.span.column)
    opening = source.index("{", start)
    close = _closing_brace(source, opening)
    assert close is not None  # the source parsed
    return start, close + 1


def _locked_text(source: str, block: Block, names: Sequence[str]) -> list[str]:
    """The incumbent's locked fields as text: their own lines (comments kept) when alone there."""
    lines = source.splitlines()
    out: list[str] = []
    for fld in block.fields:
        if fld.name not in names:
            continue
        first, last = fld.span.line, fld.end_line
        others = [f for f in block.fields if f is not fld]
        alone = (
            block.span.line < first
            and block.end_line > last
            and not any(o.span.line <= last and o.end_line >= first for o in others)
        )
        if alone:
            chunk = lines[first - 1 : last]
            out.append("\n".join(chunk))
        else:
            out.append(f"  {fmt.print_field(fld)}")
    return out


def _dedent_tail(text: str, column: int) -> str:
    """Remove the indentation the block's first line had from its other lines."""
    if column <= 1:
        return text
    prefix = " " * (column - 1)
    first, *rest = text.split("\n")
    return "\n".join([first] + [r[len(prefix) :] if r.startswith(prefix) else r for r in rest])


def _merged_block(incumbent: SpecAST, old: Block | None, proposed: SpecAST, new: Block) -> str:
    """The proposed block's text with the incumbent's locked fields put back."""
    start, end = _extent(proposed.source, new)
    text = _dedent_tail(proposed.source[start:end], new.span.column)
    locked = locked_fields(new.kind)
    if old is not None and locked:
        kept = _locked_text(incumbent.source, old, locked)
        if kept:
            brace = text.index("{")
            newline = text.find("\n", brace)
            rest_of_line = text[brace + 1 : newline] if newline >= 0 else text[brace + 1 :]
            if newline >= 0 and (not rest_of_line.strip() or rest_of_line.strip().startswith("#")):
                text = text[: newline + 1] + "\n".join(kept) + "\n" + text[newline + 1 :]
            else:
                text = text[: brace + 1] + "\n" + "\n".join(kept) + "\n" + text[brace + 1 :]
    return _canonical(text)


def _canonical(block_text: str) -> str:
    return fmt.format_text(block_text, REPLY_PATH).rstrip("\n")


def _merge(incumbent: SpecAST, proposed: SpecAST, wanted: Sequence[str]) -> str:
    """The incumbent's text with each wanted block replaced; everything else byte-identical."""
    source = incumbent.source
    order = registry.BLOCK_NAMES
    replacements: list[tuple[int, int, str]] = []
    for new in proposed.blocks:
        old = _find_block(incumbent, new.kind)
        text = _merged_block(incumbent, old, proposed, new)
        if old is not None:
            start, end = _extent(source, old)
            replacements.append((start, end, text))
            continue
        # A block the incumbent lacks goes after the last block that precedes it in
        # registry order, so specs keep their usual layout.
        rank = order.index(new.kind)
        before = [b for b in incumbent.blocks if b.kind in order and order.index(b.kind) < rank]
        if before:
            _, end = _extent(source, before[-1])
            replacements.append((end, end, "\n\n" + text))
        else:
            tail = "" if source.endswith("\n") or not source else "\n"
            replacements.append((len(source), len(source), tail + "\n" + text + "\n"))
    for start, end, text in sorted(replacements, reverse=True):
        source = source[:start] + text + source[end:]
    return source


def apply_edit(
    spec_text: str,
    spec_path: str,
    blocks: Sequence[str],
    new_text: str,
    *,
    check_shapes: bool = False,
) -> str:
    """The new spec text: the incumbent with each of ``blocks`` replaced by ``new_text``'s.

    ``new_text`` must parse and hold exactly the requested block kinds, once each, and no
    locked field; the incumbent's locked fields are put back, and every other block keeps its
    text and comments byte for byte. The whole new spec is then validated and, with
    ``check_shapes``, run through the compiler's compile-time checks. Problems raise
    ``DiagnosticError`` (``feedback_for`` turns it into the expert's feedback) or, for a
    proposal identical to the incumbent, ``EditError``.
    """
    wanted = _check_requested(blocks)
    leading = next((p for p in _pieces(new_text) if p.kind != "comment"), None)
    if leading is not None and leading.kind == "stray":
        # Prose or a ``` fence in front: the parser would only say "unexpected character".
        raise EditError(
            f"the reply must start with the block (`{wanted[0]} {{ ... }}`), not "
            f"{_snippet(new_text[leading.start : leading.end])}; no prose or code fence; "
            f"{ask_for(wanted)}",
            raw=new_text,
        )
    try:
        proposed = syntax.parse(new_text, REPLY_PATH)
    except DiagnosticError as exc:
        raise _kept(exc, wanted) from None
    problems = _check_reply(proposed, wanted)
    if problems:
        raise _refuse(problems, new_text, wanted)
    incumbent = syntax.parse(spec_text, spec_path)
    merged = _merge(incumbent, proposed, wanted)
    before = validate.load_text(spec_text, spec_path)
    try:
        after = validate.load_text(merged, spec_path)
    except DiagnosticError as exc:
        raise _kept(exc, wanted) from None
    if all(getattr(before, name) == getattr(after, name) for name in wanted):
        names = " and ".join(f"`{b}`" for b in wanted)
        raise EditError(
            f"the proposal leaves {names} exactly as it is; change at least one field and "
            f"{ask_for(wanted)}",
            raw=new_text,
        )
    if check_shapes:
        from .. import compiler  # lazily: it pulls in the templates and black

        try:
            compiler.compile_spec(Path(spec_path), text=merged, check_shapes=True)
        except DiagnosticError as exc:
            raise _kept(exc, wanted) from None
    return merged


def feedback_for(exc: BaseException) -> str:
    """What the expert is told about a refused reply: the diagnostics as a user sees them,
    plus what was kept."""
    if isinstance(exc, DiagnosticError):
        parts = [exc.render(), *exc.extra]
        return "\n\n".join(p for p in parts if p)
    return str(exc)
