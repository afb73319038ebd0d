"""What every expert sees and returns: the contract between the loop and the experts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """One earlier attempt, as shown to an expert."""

    iteration: int
    block: str  # a block name, or "all" for an all-at-once attempt
    status: str  # accepted | rejected | invalid | failed | pruned | cached
    metric: float | None
    incumbent_metric: float | None
    diff: str
    rationale: str
    move: str = ""  # the heuristic expert's move id, "" for others
    seconds: float | None = None  # what its training cost, None when it never ran


def since_incumbent(history: Sequence[Attempt]) -> list[Attempt]:
    """The attempts made against the current incumbent (after the last accepted one)."""
    last = max((i for i, a in enumerate(history) if a.status == "accepted"), default=-1)
    return list(history[last + 1 :])


@dataclass(frozen=True)
class Context:
    """Everything an expert may use to propose a change."""

    spec_text: str  # the full incumbent spec
    spec_path: str
    blocks: tuple[str, ...]  # the block(s) to rewrite: one for iterative, several for all-at-once
    profile: str  # the dataset profile, a few lines of text
    metric_name: str  # e.g. "val_accuracy"
    incumbent_metric: float | None
    curves: Sequence[dict[str, Any]]  # the incumbent's epoch events
    history: Sequence[Attempt]
    seed: int = 0
    feedback: str | None = None  # diagnostics of the previous reply, on a retry
    previous_reply: str | None = None
    incumbent_seconds: float | None = None  # the incumbent's training time
    budget_seconds: float | None = None  # --budget-minutes, in seconds
    elapsed_seconds: float = 0.0  # spent so far on this run
    max_cost: float | None = None  # --max-cost, in dollars
    spent_usd: float = 0.0  # what the expert has cost so far
    tried: frozenset[str] = frozenset()  # sha256 of every spec already trained in this run
    # What earlier refines on similar data say (the evidence store; empty without one): a
    # factor per move family on its expected gain, and a few lines for a prompt.
    move_priors: Mapping[str, float] = field(default_factory=dict)
    similar: tuple[str, ...] = ()


@dataclass(frozen=True)
class Proposal:
    """An expert's answer: new text for the requested block(s) and why."""

    text: str  # .imp text holding exactly the requested block(s)
    rationale: str
    move: str = ""
    tokens: int = 0
    cost_usd: float = 0.0
    raw: str = ""  # the raw reply, for the log
    grammar: str = ""  # how the reply was constrained (an LLM expert mode), "" if n/a
    grammar_note: str = ""  # a constraint the server refused on the way, if any


@dataclass(frozen=True)
class Selection:
    """The analyst's choice of block."""

    block: str
    reason: str
    tokens: int = 0
    cost_usd: float = 0.0


class ExpertError(Exception):
    """The expert could not answer at all (network down after retries, budget spent...)."""


class NoMoreMoves(Exception):
    """The expert has nothing left to try for this block."""


class Expert(Protocol):
    """Proposes rewrites of blocks. The implementations are named in ``catalog.EXPERTS``."""

    name: str

    def propose(self, context: Context) -> Proposal:
        """A rewrite of ``context.blocks``; raises ExpertError or NoMoreMoves."""
        ...

    def select(self, context: Context, candidates: Sequence[str]) -> Selection | None:
        """The analyst's block choice, or None when this expert has no analyst."""
        ...


@dataclass
class Usage:
    """Tokens and cost spent so far by an expert."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls: list[str] = field(default_factory=list)
