"""The replay expert: proposals read from a file, for reproducible runs and tests.

Two formats:

- JSON lines (``.jsonl``/``.json``): one object per line, ``{"block": "train", "text":
  "train { ... }", "rationale": "..."}``; ``"blocks": [...]`` instead of ``"block"`` for an
  all-at-once proposal; ``block`` may be left out when the text says it.
- ``.imp`` text: proposals separated by lines of ``---``; without separators every top-level
  block is one proposal. ``#`` comments just before a block are its rationale.

Proposals are handed out in file order, each once, to the request for their block(s); the
analyst's choice is the block of the next unused proposal, so ``--select analyst`` replays a
run exactly. When none is left for a block, ``propose`` raises ``NoMoreMoves``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ... import registry, syntax
from ...diagnostics import DiagnosticError
from .base import Context, ExpertError, NoMoreMoves, Proposal, Selection

_SEPARATOR = re.compile(r"^-{3,}[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Recorded:
    """One proposal from the file."""

    blocks: tuple[str, ...]
    text: str
    rationale: str
    where: str  # "path:line", for messages


def _kinds(text: str, where: str) -> tuple[tuple[str, ...], str]:
    """The block kinds a proposal's text holds, and its comments (the rationale)."""
    try:
        ast = syntax.parse(text, where)
    except DiagnosticError as exc:
        first = exc.diagnostics[0]
        raise ExpertError(f"{where}: the proposal does not parse: {first.message}") from None
    kinds = tuple(b.kind for b in ast.blocks)
    if not kinds:
        raise ExpertError(f"{where}: the proposal holds no block")
    notes = " ".join(c.text.lstrip("#").strip() for c in ast.comments)
    return kinds, notes.strip()


def _check_blocks(blocks: Sequence[str], where: str) -> tuple[str, ...]:
    for name in blocks:
        if name not in registry.REFINABLE_BLOCKS:
            raise ExpertError(
                f"{where}: {name!r} is not a refinable block "
                f"({', '.join(registry.REFINABLE_BLOCKS)})"
            )
    return tuple(blocks)


def _read_jsonl(text: str, path: str) -> list[Recorded]:
    out: list[Recorded] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ExpertError(f"{where}: not a JSON object: {exc.msg}") from None
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise ExpertError(f'{where}: expected {{"block": ..., "text": ..., "rationale": ...}}')
        kinds, notes = _kinds(item["text"], where)
        named = item.get("blocks", item.get("block"))
        if named is None:
            blocks = kinds
        elif isinstance(named, str):
            blocks = (named,)
        elif isinstance(named, list) and all(isinstance(n, str) for n in named):
            blocks = tuple(named)
        else:
            raise ExpertError(f"{where}: 'block' must be a block name, 'blocks' a list of them")
        rationale = item.get("rationale", notes)
        out.append(
            Recorded(_check_blocks(blocks, where), item["text"], str(rationale or ""), where)
        )
    return out


def _read_imp(text: str, path: str) -> list[Recorded]:
    chunks: list[tuple[int, str]] = []
    if _SEPARATOR.search(text):
        position = 0
        for match in _SEPARATOR.finditer(text):
            chunks.append((text.count("\n", 0, position) + 1, text[position : match.start()]))
            position = match.end() + 1
        chunks.append((text.count("\n", 0, position) + 1, text[position:]))
    else:
        try:
            ast = syntax.parse(text, path)
        except DiagnosticError as exc:
            raise ExpertError(f"{path}: the replay file does not parse:\n{exc.render()}") from None
        lines = text.splitlines(keepends=True)
        start = 1
        for block in ast.blocks:
            chunks.append((start, "".join(lines[start - 1 : block.end_line])))
            start = block.end_line + 1
    out: list[Recorded] = []
    for line, chunk in chunks:
        if not chunk.strip():
            continue
        where = f"{path}:{line}"
        kinds, notes = _kinds(chunk, where)
        out.append(Recorded(_check_blocks(kinds, where), chunk.strip() + "\n", notes, where))
    return out


class ReplayExpert:
    """Hands out the proposals of a file, in order, each once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = f"replay:{self.path}"
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ExpertError(f"{self.path}: cannot read the replay file: {reason}") from None
        if self.path.suffix in (".jsonl", ".json") or text.lstrip().startswith("{"):
            self.recorded = _read_jsonl(text, str(self.path))
        else:
            self.recorded = _read_imp(text, str(self.path))
        if not self.recorded:
            raise ExpertError(f"{self.path}: the replay file holds no proposal")
        self.used: set[int] = set()

    def remaining(self) -> int:
        """Proposals not handed out yet."""
        return len(self.recorded) - len(self.used)

    def propose(self, context: Context) -> Proposal:
        """The next unused proposal for ``context.blocks``; NoMoreMoves when none is left."""
        wanted = tuple(context.blocks)
        for index, item in enumerate(self.recorded):
            if index not in self.used and set(item.blocks) == set(wanted):
                self.used.add(index)
                return Proposal(
                    text=item.text,
                    rationale=item.rationale,
                    move=f"replay:{item.where}",
                    raw=item.text,
                )
        raise NoMoreMoves(f"{self.path}: no proposal left for {', '.join(wanted)}")

    def select(self, context: Context, candidates: Sequence[str]) -> Selection | None:
        """The block of the next unused single-block proposal among ``candidates``."""
        for index, item in enumerate(self.recorded):
            if index in self.used or len(item.blocks) != 1:
                continue
            if item.blocks[0] in candidates:
                return Selection(item.blocks[0], f"replayed from {item.where}")
        return None
