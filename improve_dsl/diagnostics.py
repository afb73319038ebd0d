"""Diagnostics: every problem a user sees, in the form ``path:line:col: error: message``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Span:
    """A region of a source file: 1-based line and column, width in characters."""

    line: int
    column: int
    width: int = 1


@dataclass(frozen=True)
class Diagnostic:
    """One located problem, with an optional hint."""

    path: str
    span: Span
    message: str
    hint: str | None = None
    severity: str = "error"

    def render(self, source: str | None) -> str:
        """The diagnostic as text, with the source line and a caret under the token."""
        head = f"{self.path}:{self.span.line}:{self.span.column}: {self.severity}: {self.message}"
        lines = [head]
        source_line = _line_of(source, self.span.line) if source is not None else None
        if source_line is not None:
            gutter = " " * len(str(self.span.line))
            text = "".join(ch if ch.isprintable() else "?" for ch in source_line)
            width = max(1, min(self.span.width, max(1, len(text) - self.span.column + 1)))
            lines.append(f"{gutter} |")
            lines.append(f"{self.span.line} | {text}")
            lines.append(f"{gutter} | {' ' * (self.span.column - 1)}{'^' * width}")
            if self.hint:
                lines.append(f"{gutter} = hint: {self.hint}")
        elif self.hint:
            lines.append(f"  = hint: {self.hint}")
        return "\n".join(lines)


def _line_of(source: str, line: int) -> str | None:
    lines = source.splitlines()
    if 1 <= line <= len(lines):
        return lines[line - 1].rstrip("\r")
    return None


@dataclass
class DiagnosticError(Exception):
    """Raised by a stage that found problems; carries all of them and the source text."""

    diagnostics: list[Diagnostic]
    source: str | None = None
    extra: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.render()

    def render(self) -> str:
        """Every diagnostic, sorted by position, separated by blank lines."""
        ordered = sorted(self.diagnostics, key=lambda d: (d.path, d.span))
        return "\n\n".join(d.render(self.source) for d in ordered)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A hint naming the closest choice, when one is close enough."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not matches:
        lowered = {c.lower(): c for c in choices}
        if word.lower() in lowered:
            matches = [lowered[word.lower()]]
    return f"did you mean '{matches[0]}'?" if matches else None


def one_of(choices: Sequence[str]) -> str:
    """``'a', 'b' or 'c'``."""
    quoted = [f"'{c}'" for c in choices]
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def all_of(choices: Sequence[str]) -> str:
    """``'a', 'b' and 'c'``."""
    return one_of(choices).rsplit(" or ", 1)[0] + (
        f" and '{choices[-1]}'" if len(choices) > 1 else ""
    )
