"""Proposing: choose the block, ask the expert for a rewrite, check it, retry with diagnostics.

A reply is merged into the incumbent (``reply.apply_edit``: one block of the right kind, locked
fields untouched), guarded (no other block and no locked field changed), validated and
compiled with the compile-time shape check. A refused reply goes back to the expert with the
diagnostics a user would see, at most ``MAX_RETRIES`` times; then the attempt is invalid.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import registry, validate
from ..diagnostics import DiagnosticError
from ..journal import ResultCache
from .candidates import Candidate, Incumbent
from .experts.base import Attempt, Context, Expert, ExpertError, NoMoreMoves, Proposal
from .memory import Priors
from .reply import EditError, apply_edit, ask_for, feedback_for
from .reporting import Reporter
from .scripts import compile_script
from .select import Choice, choose_block

MAX_RETRIES = 3  # refused replies fed back before an attempt counts as invalid


@dataclass(frozen=True)
class Budget:
    """What the run has spent and may still spend, and the specs it already trained, as the
    expert is told."""

    incumbent_seconds: float | None = None  # the incumbent's training time
    budget_seconds: float | None = None  # --budget-minutes, in seconds
    elapsed_seconds: float = 0.0
    max_cost: float | None = None  # --max-cost, in dollars
    spent_usd: float = 0.0
    tried: frozenset[str] = frozenset()  # sha256 of every spec text attempted so far


class Proposer:
    """Asks ``expert`` for checked rewrites of the incumbent spec of ``spec_path``."""

    def __init__(
        self,
        expert: Expert,
        spec_path: Path,
        start_text: str,
        metric_key: str,
        cache: ResultCache,
        reporter: Reporter,
        budget: Callable[[], Budget],
        *,
        expert_seed: int = 0,
    ) -> None:
        self.expert = expert
        self.spec_path = spec_path
        self.start_text = start_text
        self.metric_key = metric_key
        self.cache = cache
        self.reporter = reporter
        self.budget = budget
        self.expert_seed = expert_seed
        self._profile: str | None = None
        self.priors = Priors()  # set by the loop from the evidence store

    def context(
        self,
        incumbent: Incumbent,
        blocks: tuple[str, ...],
        history: Sequence[Attempt],
        feedback: str | None = None,
        previous: str | None = None,
    ) -> Context:
        """What the expert sees: the incumbent, its curves, the history, the dataset, the
        budget."""
        budget = self.budget()
        return Context(
            spec_text=incumbent.text,
            spec_path=str(self.spec_path),
            blocks=blocks,
            profile=self._profile_text(),
            metric_name=self.metric_key,
            incumbent_metric=incumbent.metric,
            curves=incumbent.curves,
            history=history,
            seed=self.expert_seed,
            feedback=feedback,
            previous_reply=previous,
            incumbent_seconds=budget.incumbent_seconds,
            budget_seconds=budget.budget_seconds,
            elapsed_seconds=budget.elapsed_seconds,
            max_cost=budget.max_cost,
            spent_usd=budget.spent_usd,
            tried=budget.tried,
            **self.priors.for_context(),
        )

    def _profile_text(self) -> str:
        if self._profile is None:
            self._profile = ""
            with contextlib.suppress(Exception):  # a profile only helps; never fatal
                from ..dataset_profile import profile_dataset

                spec = validate.load_text(self.start_text, str(self.spec_path))
                self._profile = str(profile_dataset(spec.data.source).describe())
        return self._profile

    def choose(
        self,
        select: str,
        incumbent: Incumbent,
        history: Sequence[Attempt],
        exhausted: set[str],
    ) -> Choice | None:
        """The block to change next (None: every block is exhausted)."""
        context = self.context(incumbent, (), history)
        refinable = registry.REFINABLE_BLOCKS
        try:
            return choose_block(select, self.expert, context, refinable, exhausted)
        except ExpertError as exc:
            # The analyst could not answer: the rules over the curves decide instead.
            self.reporter.message(f"the analyst failed ({exc}); selecting by diagnosis")
            return choose_block("diagnose", self.expert, context, refinable, exhausted)

    def ask(
        self,
        iteration: int,
        incumbent: Incumbent,
        choice: Choice,
        blocks: tuple[str, ...],
        label: str,
        history: Sequence[Attempt],
    ) -> Candidate | None:
        """Up to 1 + MAX_RETRIES replies: a checked candidate, an invalid one, or None when
        the expert has nothing to try for these blocks. Raises ``ExpertError``."""
        started = time.monotonic()
        tokens, cost = choice.tokens, choice.cost_usd
        feedback: str | None = None
        previous: str | None = None
        proposal: Proposal | None = None
        refused = 0
        for retry in range(MAX_RETRIES + 1):
            context = self.context(incumbent, blocks, history, feedback, previous)
            try:
                proposal = self.expert.propose(context)
            except NoMoreMoves:
                if retry == 0:
                    return None
                break  # out of replies after refused ones: the attempt was invalid
            except EditError as exc:  # a reply of the wrong shape, already paid for
                tokens += exc.tokens
                cost += exc.cost_usd
                proposal = proposal or Proposal(
                    "", "", raw=exc.raw, grammar=exc.grammar, grammar_note=exc.grammar_note
                )
                feedback, previous = feedback_for(exc), exc.raw
                refused += 1
                continue
            tokens += proposal.tokens
            cost += proposal.cost_usd
            try:
                text, script = self.check(incumbent.text, blocks, proposal.text)
            except (EditError, DiagnosticError) as exc:
                if isinstance(exc, DiagnosticError):
                    note = (
                        f"nothing was applied: the spec is unchanged; fix the reply and "
                        f"{ask_for(blocks)}"
                    )
                    if note not in exc.extra:
                        exc.extra.append(note)
                feedback, previous = feedback_for(exc), proposal.raw or proposal.text
                refused += 1
                continue
            seconds = time.monotonic() - started
            return Candidate(
                iteration=iteration,
                blocks=blocks,
                label=label,
                text=text,
                script=script,
                proposal=proposal,
                choice=choice,
                tokens=tokens,
                cost_usd=cost,
                propose_seconds=seconds,
                retries=retry,
            )
        return Candidate(
            iteration=iteration,
            blocks=blocks,
            label=label,
            text=None,
            script=None,
            proposal=proposal,
            choice=choice,
            tokens=tokens,
            cost_usd=cost,
            propose_seconds=time.monotonic() - started,
            retries=max(0, refused - 1),
            feedback=feedback,
            reply=previous or "",
        )

    def check(self, incumbent: str, blocks: Sequence[str], reply: str) -> tuple[str, str]:
        """The merged spec and its compiled script; ``EditError`` or ``DiagnosticError``."""
        text = apply_edit(incumbent, str(self.spec_path), blocks, reply, check_shapes=False)
        self.guard(incumbent, text, blocks)
        return text, compile_script(text, str(self.spec_path), self.cache)

    def guard(self, incumbent: str, text: str, blocks: Sequence[str]) -> None:
        """Belt and braces: only the asked-for blocks changed, and no locked field."""
        before = validate.load_text(incumbent, str(self.spec_path))
        after = validate.load_text(text, str(self.spec_path))
        for name in registry.BLOCK_NAMES:
            if name not in blocks and getattr(before, name) != getattr(after, name):
                raise EditError(
                    f"the proposal changes block '{name}', which was not asked "
                    f"for; {ask_for(blocks)}"
                )
        for block_name, field_name in registry.locked_fields():
            old = getattr(getattr(before, block_name), field_name)
            if old != getattr(getattr(after, block_name), field_name):
                raise EditError(
                    f"'{field_name}' in block '{block_name}' is locked: refinement never changes it"
                )
