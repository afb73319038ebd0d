"""Choosing the block to rewrite: ``--select analyst | diagnose | round-robin``.

- ``diagnose``: rules over the incumbent's curves. Each diagnosis orders the blocks
  (overfitting → augment, then the model's regularisation, then train; underfitting → model,
  then train; unstable → train); the block just attempted yields to the next one, and a block
  whose attempt failed since the last accepted change goes to the back.
- ``round-robin``: the refinable blocks in turn.
- ``analyst``: the expert's own ``select()`` (an LLM reading the curves and the history);
  when it has none, or answers with a block that cannot be chosen, ``diagnose`` decides.

Blocks the expert has run out of moves for (``exhausted``) are never chosen.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from .curves import Diagnosis, diagnose
from .experts.base import Attempt, Context, Expert, since_incumbent

SELECTORS = ("analyst", "diagnose", "round-robin")

# Which blocks answer which diagnosis, most effective first.
PRIORITIES: dict[str, tuple[str, ...]] = {
    "unstable": ("train", "data", "model"),
    "overfitting": ("augment", "model", "train", "eval"),
    "slow": ("train", "model", "data"),
    "underfitting": ("model", "train", "data", "augment"),
    "plateau": ("train", "augment", "model", "eval", "data"),
    "unknown": ("train", "model", "data", "augment", "eval"),
}


@dataclass(frozen=True)
class Choice:
    """The chosen block, why, and what choosing cost (an analyst's tokens)."""

    block: str
    reason: str
    selector: str
    tokens: int = 0
    cost_usd: float = 0.0


def by_diagnosis(
    diagnosis: Diagnosis,
    history: Sequence[Attempt],
    candidates: Sequence[str],
    exhausted: Collection[str] = (),
) -> Choice | None:
    """The block the diagnosis points to, or None when every candidate is exhausted."""
    available = [b for b in candidates if b not in exhausted]
    if not available:
        return None
    ordered = [b for b in PRIORITIES.get(diagnosis.kind, ()) if b in available]
    ordered += [b for b in available if b not in ordered]
    failed_recently = {a.block for a in since_incumbent(history) if a.status != "accepted"}
    previous = history[-1].block if history else None
    in_list = set(PRIORITIES.get(diagnosis.kind, ()))

    def key(block: str) -> tuple[bool, bool, bool, int]:
        return (
            block in failed_recently,  # a block that just failed waits its turn
            block not in in_list,  # blocks the diagnosis points to come first
            block == previous,  # alternate, so one block cannot take every iteration
            ordered.index(block),  # then the diagnosis's order
        )

    block = min(ordered, key=key)
    return Choice(block, f"{diagnosis.kind}: {diagnosis.reason}", "diagnose")


def round_robin(
    history: Sequence[Attempt], candidates: Sequence[str], exhausted: Collection[str] = ()
) -> Choice | None:
    """The next refinable block after the last one attempted."""
    available = [b for b in candidates if b not in exhausted]
    if not available:
        return None
    last = next((a.block for a in reversed(history) if a.block in candidates), None)
    if last is None:
        return Choice(available[0], "round-robin: first block", "round-robin")
    start = list(candidates).index(last) + 1
    for offset in range(len(candidates)):
        block = candidates[(start + offset) % len(candidates)]
        if block in available:
            return Choice(block, "round-robin: next block", "round-robin")
    return None


def choose_block(
    selector: str,
    expert: Expert,
    context: Context,
    candidates: Sequence[str],
    exhausted: Collection[str] = (),
    num_classes: int = 10,
) -> Choice | None:
    """The block to rewrite next, or None when every candidate block is exhausted."""
    if selector not in SELECTORS:
        raise ValueError(f"unknown selector {selector!r}; choose {', '.join(SELECTORS)}")
    available = [b for b in candidates if b not in exhausted]
    if not available:
        return None
    if selector == "round-robin":
        return round_robin(context.history, candidates, exhausted)
    diagnosis = diagnose(context.curves, context.metric_name, num_classes)
    if selector == "analyst":
        selection = expert.select(context, available)
        if selection is not None:
            if selection.block in available:
                return Choice(
                    selection.block,
                    selection.reason,
                    "analyst",
                    selection.tokens,
                    selection.cost_usd,
                )
            fallback = by_diagnosis(diagnosis, context.history, candidates, exhausted)
            assert fallback is not None
            return Choice(
                fallback.block,
                f"the analyst named '{selection.block}', which cannot be chosen; "
                + fallback.reason,
                "diagnose",
                selection.tokens,
                selection.cost_usd,
            )
    return by_diagnosis(diagnosis, context.history, candidates, exhausted)
