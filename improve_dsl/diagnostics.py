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
        message = _shorten(self.message, MAX_TEXT)
        head = f"{self.location()}: {self.severity}: {message}"
        hint = _shorten(self.hint, MAX_TEXT) if self.hint else None
        lines = [head]
        source_line = _line_of(source, self.span.line) if source is not None else None
        if source_line is not None:
            gutter = " " * len(str(self.span.line))
            text = "".join(ch if ch.isprintable() else "?" for ch in source_line)
            width = max(1, min(self.span.width, max(1, len(text) - self.span.column + 1)))
            text, start, width = _window(text, self.span.column - 1, width)
            lines.append(f"{gutter} |")
            lines.append(f"{self.span.line} | {text}")
            lines.append(f"{gutter} | {' ' * start}{'^' * width}")
            if hint:
                lines.append(f"{gutter} = hint: {hint}")
        elif hint:
            lines.append(f"  = hint: {hint}")
        return "\n".join(lines)

    def location(self) -> str:
        """``path:line:col``, or only the path where the problem has no place in the file
        (the file is missing or unreadable: there is no line 1 to point at)."""
        if self.span.line < 1:
            return self.path
        return f"{self.path}:{self.span.line}:{self.span.column}"


# A source line longer than this is cut around the caret; messages and hints likewise.
MAX_LINE = 100
MAX_TEXT = 300
# Past this many, a file's further diagnostics are counted rather than printed.
MAX_SHOWN = 20


def _shorten(text: str, limit: int) -> str:
    """Text cut in its middle to at most about ``limit`` characters."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} ... {text[-half:]}"


def _window(text: str, start: int, width: int) -> tuple[str, int, int]:
    """(shown text, caret start, caret width): a long line cut to about ``MAX_LINE``
    characters around the caret, with "..." where it was cut."""
    if len(text) <= MAX_LINE:
        return text, start, width
    width = min(width, MAX_LINE // 2)
    left = max(0, start - MAX_LINE // 4)
    right = min(len(text), left + MAX_LINE)
    left = max(0, min(left, right - MAX_LINE))
    prefix = "..." if left > 0 else ""
    suffix = "..." if right < len(text) else ""
    shown = prefix + text[left:right] + suffix
    return shown, len(prefix) + start - left, max(1, min(width, right - start))


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
        """The diagnostics, sorted by position and separated by blank lines; past
        ``MAX_SHOWN`` the rest are counted ("... and 9,990 more errors")."""
        ordered = sorted(self.diagnostics, key=lambda d: (d.path, d.span))
        parts = [d.render(self.source) for d in ordered[:MAX_SHOWN]]
        hidden = len(ordered) - MAX_SHOWN
        if hidden > 0:
            parts.append(f"... and {hidden:,} more {'error' if hidden == 1 else 'errors'}")
        return "\n\n".join(parts)


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
