"""What refinement holds of its attempts: a seed's run, the incumbent, a candidate."""

from __future__ import annotations

import difflib
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..journal import PENDING, Record, sha256_text
from ..run import RunResult
from .decide import Measurement, Verdict, mean_or_none, measurement
from .experts.base import Attempt, Proposal
from .select import Choice


@dataclass(kw_only=True)
class SeedRun:
    """One seed's training run of a candidate (or its cached result)."""

    seed: int
    status: str  # a RunResult status
    metric: float | None
    history: list[dict[str, Any]]
    reason: str | None
    seconds: float
    cached: bool = False
    batch_size: int | None = None  # the batch actually used, after an out-of-memory retry
    eval_size: int = 0  # validation images it was scored on (0: unknown)
    device: str = ""  # where it trained, as its start event said ("" unknown)

    @classmethod
    def of(cls, seed: int, result: RunResult, batch_size: int | None) -> SeedRun:
        eval_size = (result.start or {}).get("eval_size")
        device = (result.start or {}).get("device")
        return cls(
            seed=seed,
            status=result.status,
            metric=result.metric,
            history=list(result.history),
            reason=result.reason,
            seconds=result.seconds,
            batch_size=batch_size,
            eval_size=eval_size if isinstance(eval_size, int) else 0,
            device=device if isinstance(device, str) else "",
        )

    @classmethod
    def from_cache(cls, seed: int, hit: Mapping[str, Any]) -> SeedRun:
        """A run read back from the results cache (what ``to_cache`` stored)."""
        eval_size, device = hit.get("eval_size"), hit.get("device")
        return cls(
            seed=seed,
            status=str(hit.get("status")),
            metric=hit.get("metric"),
            history=list(hit.get("history") or []),
            reason=hit.get("reason"),
            seconds=float(hit.get("seconds") or 0.0),
            cached=True,
            eval_size=eval_size if isinstance(eval_size, int) else 0,
            device=device if isinstance(device, str) else "",
        )

    def to_cache(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "metric": self.metric,
            "history": self.history,
            "reason": self.reason,
            "seconds": self.seconds,
            "eval_size": self.eval_size,
            "device": self.device,
        }


@dataclass(kw_only=True)
class Incumbent:
    """The best spec so far and its scores."""

    iteration: int
    text: str
    metric: float | None
    metrics: list[float | None]
    curves: list[dict[str, Any]]
    eval_size: int = 0
    seconds: float = 0.0  # training seconds of one run

    @classmethod
    def of(cls, iteration: int, text: str, candidate: Candidate) -> Incumbent:
        """The incumbent a kept candidate (or the baseline) becomes."""
        runs = candidate.runs
        ok = [r for r in runs if r.status == "ok"]
        return cls(
            iteration=iteration,
            text=text,
            metric=mean_or_none([r.metric for r in ok if r.metric is not None]),
            metrics=[r.metric for r in runs],
            curves=runs[0].history if runs else [],
            eval_size=max((r.eval_size for r in ok), default=0),
            seconds=sum(r.seconds for r in ok) / len(ok) if ok else 0.0,
        )

    def measurement(self, metric_key: str) -> Measurement | None:
        """What deciding needs of the incumbent (None before it has a score)."""
        return measurement(
            self.metrics if self.metric is not None else [],
            [self.curves],
            metric_key,
            self.eval_size,
            [self.seconds] if self.seconds else [],
        )

    def curve_at(self, metric_key: str) -> dict[int, float]:
        points: dict[int, float] = {}
        for event in self.curves:
            epoch, value = event.get("epoch"), event.get(metric_key)
            if isinstance(epoch, int) and isinstance(value, (int, float)):
                points[epoch] = float(value)
        return points


@dataclass(kw_only=True)
class Candidate:
    """A checked proposal waiting to be trained (or an invalid one waiting to be recorded)."""

    iteration: int
    blocks: tuple[str, ...]
    label: str  # the block name, or "all"
    text: str | None  # the merged spec; None when invalid
    script: str | None
    proposal: Proposal | None
    choice: Choice | None
    tokens: int
    cost_usd: float
    propose_seconds: float
    retries: int
    feedback: str | None = None
    reply: str = ""
    runs: list[SeedRun] = field(default_factory=list)
    run_seconds: float = 0.0
    pruned_at: int | None = None

    @classmethod
    def without_proposal(cls, *, iteration: int, label: str, text: str, script: str) -> Candidate:
        """A spec trained as it is, asked of no expert: the baseline, an ablation's variant."""
        return cls(
            iteration=iteration,
            blocks=(),
            label=label,
            text=text,
            script=script,
            proposal=None,
            choice=None,
            tokens=0,
            cost_usd=0.0,
            propose_seconds=0.0,
            retries=0,
        )

    @property
    def valid(self) -> bool:
        return self.text is not None

    def measurement(self, metric_key: str) -> Measurement | None:
        """Its finished seeds' scores, curves and cost, as deciding reads them."""
        ok = [r for r in self.runs if r.status == "ok"]
        return measurement(
            [r.metric for r in ok],
            [r.history for r in ok],
            metric_key,
            max((r.eval_size for r in ok), default=0),
            [r.seconds for r in ok],
        )

    def run_extras(self, seeds: Sequence[int]) -> dict[str, Any]:
        """What the journal records about the candidate's runs (seeds, scores, why not ok)."""
        extras: dict[str, Any] = {
            "seeds": [r.seed for r in self.runs] or list(seeds),
            "metrics": [r.metric for r in self.runs],
            "candidate": f"candidates/{self.iteration}",
        }
        if self.runs and all(r.cached for r in self.runs):
            extras["cached"] = True
        reasons = [r.reason for r in self.runs if r.status != "ok" and r.reason]
        if reasons:
            extras["reason"] = reasons[0]
        ok = [r for r in self.runs if r.status == "ok"]
        if ok:
            extras["eval_size"] = max(r.eval_size for r in ok)
            extras["train_seconds"] = round(sum(r.seconds for r in ok) / len(ok), 3)
        batches = {r.batch_size for r in self.runs if r.batch_size is not None}
        if batches:
            extras["batch_size"] = min(batches)
        return extras

    def record(
        self,
        status: str,
        metric: float | None,
        incumbent: Incumbent,
        expert: str,
        seeds: Sequence[int],
        *,
        outranked_by: int | None = None,
        verdict: Verdict | None = None,
    ) -> Record:
        """The journal record of this attempt, decided ``status`` against ``incumbent``."""
        proposal = self.proposal
        extras = self.run_extras(seeds) if self.valid else {}
        if verdict is not None:
            extras["decision"] = verdict.to_json()
        if outranked_by is not None:
            extras["outranked_by"] = outranked_by
            extras["reason"] = (
                f"it beat the incumbent, but iteration {outranked_by} of the same round did better"
            )
        extras["move"] = proposal.move if proposal else ""
        if proposal and proposal.grammar:  # how the reply was constrained
            extras["grammar"] = proposal.grammar
        if proposal and proposal.grammar_note:  # a constraint the server refused on the way
            extras["grammar_note"] = proposal.grammar_note
        if self.choice is not None:
            extras["selector"] = self.choice.selector
            extras["selection"] = self.choice.reason
        extras["retries"] = self.retries
        extras["propose_seconds"] = round(self.propose_seconds, 3)
        if status == "invalid":
            feedback = self.feedback or ""
            extras["reason"] = (
                feedback.splitlines()[0] if feedback else "the reply could not be used"
            )
            extras["feedback"] = feedback
            extras["reply"] = self.reply
        if status == "pruned" and self.pruned_at is not None:
            extras["reason"] = (
                f"pruned at epoch {self.pruned_at}: clearly below the incumbent "
                "(beyond its noise, with little training left to close the gap)"
            )
        if len(seeds) > 1 and self.runs:
            values = [r.metric for r in self.runs if r.metric is not None]
            extras["std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        text = self.text or ""
        return Record(
            iteration=self.iteration,
            block=self.label,
            status=status,
            metric=metric,
            incumbent_metric=incumbent.metric,
            spec_sha256=sha256_text(text) if text else "",
            diff=_diff_from_incumbent(incumbent.text, text, self.iteration) if text else "",
            rationale=proposal.rationale if proposal else "",
            expert=expert,
            tokens=self.tokens,
            cost_usd=round(self.cost_usd, 6),
            seconds=round(self.run_seconds, 3),
            extras=extras,
        )

    def attempt(self, incumbent_metric: float | None) -> Attempt:
        """As the expert sees it while it is still running."""
        return Attempt(
            iteration=self.iteration,
            block=self.label,
            status=PENDING,
            metric=None,
            incumbent_metric=incumbent_metric,
            diff="",
            rationale=self.proposal.rationale if self.proposal else "",
            move=self.proposal.move if self.proposal else "",
        )


def _diff_from_incumbent(before: str, after: str, iteration: int) -> str:
    """The journal's diff of an attempt: the incumbent's text against the candidate's."""
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile="incumbent",
            tofile=f"iteration {iteration}",
        )
    )
