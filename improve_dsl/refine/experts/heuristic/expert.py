"""The heuristic expert: knowledge-driven moves, ranked by expected gain per second.

No network and no randomness beyond a seeded tie-break. For every refinable block it lists
the moves of ``moves.py`` that make sense for this spec and this data (recipes sized to the
data first, then trust-region steps of continuous fields and discrete changes), and ranks
them all by

where the expected gain is the move's share of the remaining error, adjusted by what the
incumbent's curves say (``diagnose``) and by what the move family did in earlier refines on
similar data (``Context.move_priors``, from the evidence store; see ``memory.py``), and
the expected seconds are the incumbent's measured training time times the move's cost,
plus a fixed start-up charge. ``select`` names the block of the best move (so the expert,
not a fixed order, chooses the block); ``propose`` returns the best move for the block it
is asked for.

A move refused against the current incumbent (rejected, pruned, failed, invalid, or merely
cached) is not proposed again until the incumbent changes; a step of a continuous field
grows after a kept step and shrinks after a refused one (``moves.TrustRegion``). Everything
is derived from the history, so a resumed run continues exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .... import fmt, syntax, validate
from ....diagnostics import DiagnosticError
from ....ir import Spec
from ....journal import PENDING, sha256_text
from ... import reply
from ...curves import Diagnosis, diagnose
from ...memory import move_family
from ..base import Attempt, Context, NoMoreMoves, Proposal, Selection, since_incumbent
from .moves import FAILED, MOVE_MAKERS, Move
from .recipes import DataInfo, data_info
from .trust import STEP_SIZES, TrustRegion

MIN_HEADROOM = 0.005
START_SECONDS = 2.0  # what a run costs besides training: start, compile, evaluation


@dataclass(frozen=True)
class Ranked:
    """A move with its expected gain (in metric units) and the seconds it should take."""

    move: Move
    gain: float
    seconds: float
    now: float  # the seconds a run of the incumbent takes

    @property
    def value(self) -> float:
        """Gain per square root of the relative cost: cheap moves first among equals, but a
        recipe worth ten times a step is not put off because it trains four times longer
        (a race at equal runs rewards gain; one at equal seconds, gain per second)."""
        return self.gain / math.sqrt(self.seconds / self.now)


def apply_changes(spec_text: str, block: str, changes: Mapping[str, str | None]) -> str:
    """The block's editable view with ``changes`` made, printed canonically."""
    view = reply.editable_view(spec_text, block)
    ast = syntax.parse(view, "<view>")
    fields: dict[str, str] = {}
    if ast.blocks:
        for fld in ast.blocks[0].fields:
            fields[fld.name] = fmt.print_value(fld.value)
    for name, text in changes.items():
        if text is None:
            fields.pop(name, None)
        else:
            fields[name] = text
    lines = [f"{block} {{", *(f"  {k} = {v}" for k, v in fields.items()), "}"]
    return "\n".join(lines) + "\n"


def _move_ids(attempt: Attempt) -> list[str]:
    return [m for m in attempt.move.split("+") if m]


def train_seconds(curves: Sequence[Mapping[str, object]]) -> float:
    """The incumbent's training seconds (the last epoch event's running total)."""
    for event in reversed(curves):
        seconds = event.get("seconds")
        if isinstance(seconds, (int, float)):
            return float(seconds)
    return 0.0


class HeuristicExpert:
    """A rule-based expert: real ML judgement, no network, deterministic for a seed."""

    name = "heuristic"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        # Moves whose replies the loop refused in the current attempt (it sent feedback).
        self._refused: set[str] = set()
        self._last: tuple[str, str] | None = None

    # ------------------------------------------------------------ reading the context

    def diagnosis(self, context: Context, spec: Spec | None = None) -> Diagnosis:
        spec = spec or validate.load_text(context.spec_text, context.spec_path)
        return diagnose(context.curves, context.metric_name, data_info(spec).classes)

    @staticmethod
    def _regions(history: Sequence[Attempt]) -> Callable[[str], TrustRegion]:
        """Each continuous field's trust region, read from the whole history."""
        outcomes = [
            (move_id, attempt.status == "accepted")
            for attempt in history
            if attempt.status != PENDING
            for move_id in _move_ids(attempt)
        ]
        regions: dict[str, TrustRegion] = {}

        def region(name: str) -> TrustRegion:
            if name not in regions:
                start, largest = STEP_SIZES[name.split("@")[0]]
                regions[name] = TrustRegion.read(name, outcomes, start, largest)
            return regions[name]

        return region

    def ranked(self, context: Context, blocks: Sequence[str]) -> list[Ranked]:
        """The moves for ``blocks`` not refused against this incumbent, best first."""
        spec = validate.load_text(context.spec_text, context.spec_path)
        info: DataInfo = data_info(spec)
        diagnosis = diagnose(context.curves, context.metric_name, info.classes)
        refused = {
            move_id
            for attempt in since_incumbent(context.history)
            if attempt.status in FAILED
            for move_id in _move_ids(attempt)
        }
        refused |= self._refused
        # A recipe is applied once: after it, the fields it set are the trust regions' to move.
        refused |= {
            move_id
            for attempt in context.history
            if attempt.status == "accepted"
            for move_id in _move_ids(attempt)
            if ".recipe" in move_id
        }
        region = self._regions(context.history)
        # A perfect validation score is still a noisy estimate: a little headroom is left,
        # so the expert keeps trying its best moves while iterations remain.
        headroom = max(1.0 - (context.incumbent_metric or 0.0), MIN_HEADROOM)
        seconds = train_seconds(context.curves)
        # The tie-break depends on the move, not on which blocks are ranked, so the block
        # ``select`` names and the move ``propose`` then makes for it agree.
        turn = f"{self.seed}:{len(context.history)}"
        scored: list[tuple[float, float, Ranked]] = []
        for block in blocks:
            maker = MOVE_MAKERS.get(block)
            if maker is None:
                continue
            for move in maker(spec, info, region):
                if move.id in refused:
                    continue
                gain = move.expected_share(diagnosis.signals) * headroom
                # What this move family did on similar data (1 without evidence).
                gain *= context.move_priors.get(move_family(move.id), 1.0)
                if gain <= 0:
                    continue
                ranked = Ranked(
                    move, gain, seconds * move.cost + START_SECONDS, seconds + START_SECONDS
                )
                tie = random.Random(f"{turn}:{move.id}").random()
                scored.append((-ranked.value, tie, ranked))
        scored.sort(key=lambda item: (item[0], item[1]))
        return [r for _, _, r in scored]

    def untried(self, context: Context, blocks: Sequence[str]) -> list[Ranked]:
        """``ranked``, less the moves whose spec was already trained in this run (a step
        back to an earlier incumbent, a recipe already applied): a repeat costs an
        iteration and can only return the same score."""
        kept: list[Ranked] = []
        for ranked in self.ranked(context, blocks):
            text = apply_changes(context.spec_text, ranked.move.block, ranked.move.changes)
            try:
                merged = reply.apply_edit(
                    context.spec_text,
                    context.spec_path,
                    (ranked.move.block,),
                    text,
                    check_shapes=False,
                )
            except (reply.EditError, DiagnosticError):
                continue  # a move this spec cannot take (the loop would refuse it too)
            if sha256_text(merged) not in context.tried:
                kept.append(ranked)
        return kept

    def moves(self, context: Context, block: str) -> list[Move]:
        """The moves for ``block`` not refused against this incumbent, best first."""
        return [r.move for r in self.ranked(context, (block,))]

    # ------------------------------------------------------------ the expert contract

    def select(self, context: Context, candidates: Sequence[str]) -> Selection | None:
        """The block of the best move over all candidate blocks (None: nothing left)."""
        ranked = self.untried(context, candidates)
        if not ranked:
            return None
        best = ranked[0]
        return Selection(
            best.move.block,
            f"best expected gain per second: {best.move.id} "
            f"(+{best.gain * 100:.1f} points expected in about {best.seconds:.0f} s)",
        )

    def propose(self, context: Context) -> Proposal:
        if not context.feedback:
            self._refused.clear()
        elif self._last is not None and context.previous_reply == self._last[0]:
            self._refused.update(self._last[1].split("+"))
        spec = validate.load_text(context.spec_text, context.spec_path)
        diagnosis = self.diagnosis(context, spec)
        texts: list[str] = []
        chosen: list[Ranked] = []
        for block in context.blocks:
            ranked = self.untried(context, (block,))
            if ranked:
                chosen.append(ranked[0])
                texts.append(apply_changes(context.spec_text, block, ranked[0].move.changes))
            elif len(context.blocks) > 1:
                texts.append(reply.editable_view(context.spec_text, block) + "\n")
        if not chosen:
            blocks = ", ".join(context.blocks)
            raise NoMoreMoves(f"no untried move for {blocks} fits the diagnosis ({diagnosis.kind})")
        text = "\n".join(texts)
        move_id = "+".join(r.move.id for r in chosen)
        rationale = " ".join(
            r.move.rationale[0].upper() + r.move.rationale[1:] + "." for r in chosen
        )
        rationale += f" (Diagnosis: {diagnosis.kind}; {diagnosis.reason}.)"
        self._last = (text, move_id)
        return Proposal(text=text, rationale=rationale, move=move_id, raw=text)
