"""What a report shows, read from a run directory through the journal's own record type.

``read_run`` gathers the attempts (``RunDir.read``: the same records the loop resumes from),
``final.json``, ``start.imp`` and ``best.imp`` into one ``RunReport``. Iteration 0, the run of
the starting spec, is the baseline: it is shown apart and never counted as an attempt, so
the counts match the terminal's summary. Anything unreadable becomes a note, not an error,
except a folder that is not a run at all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import syntax
from ..diagnostics import DiagnosticError
from ..journal import BASELINE, STATUSES, Record, RunDir
from ..refine.ablation import Ablation, read_ablation

# What a row of the report can be: the baseline, or an attempt's status.
KINDS = (BASELINE, *STATUSES)


class ReportError(Exception):
    """The run directory cannot be reported on (missing, empty, unwritable): one line."""


@dataclass(frozen=True)
class Attempt:
    """One journal record as the report shows it."""

    record: Record
    before: float | None  # the incumbent's score when this attempt was measured

    @property
    def kind(self) -> str:
        """``baseline`` for the run of the starting spec, else the record's status."""
        if self.record.iteration == 0 and self.record.block == BASELINE:
            return BASELINE
        return self.record.status

    @property
    def delta(self) -> float | None:
        """The change in score against the incumbent it had to beat."""
        if self.kind == BASELINE or self.record.metric is None or self.before is None:
            return None
        return self.record.metric - self.before

    @property
    def why(self) -> str:
        """The expert's reason for the change."""
        return self.record.rationale

    @property
    def chosen_because(self) -> str:
        """Why this block was the one to change (the selector's reason), if recorded."""
        return str(self.record.extras.get("selection") or "")

    @property
    def grammar(self) -> str:
        """How the expert's reply was held to the grammar (``llama-gbnf``...), and a
        constraint the server refused on the way, if any."""
        mode = str(self.record.extras.get("grammar") or "")
        note = str(self.record.extras.get("grammar_note") or "")
        return f"{mode} ({note})" if mode and note else mode

    @property
    def outcome(self) -> str:
        """Why it ended as it did, when that is not just its score (a failure, a pruning,
        the diagnostics that made a reply unusable, a better rival in the same round)."""
        reason = str(self.record.extras.get("reason") or "")
        feedback = str(self.record.extras.get("feedback") or "")
        if feedback and feedback.splitlines()[0] == reason:
            return feedback
        return "\n".join(part for part in (reason, feedback) if part)

    @property
    def expert_seconds(self) -> float:
        """The time the expert took to propose (training time is ``record.seconds``)."""
        value = self.record.extras.get("propose_seconds")
        return float(value) if isinstance(value, (int, float)) else 0.0

    @property
    def seconds(self) -> float:
        """The attempt's whole time: proposing, checking and training."""
        return self.record.seconds + self.expert_seconds


@dataclass(frozen=True)
class RunReport:
    """Everything the page and the plot show."""

    run_dir: Path
    name: str  # the pipeline's name (the folder's when no spec is readable)
    metric: str  # the metric's name, e.g. accuracy ("" when unknown)
    attempts: list[Attempt]  # journal order, the baseline first
    test_metric: float | None
    start_text: str | None
    best_text: str | None
    notes: list[str]
    ablation: Ablation | None = None  # `improve ablate`'s table, when it was run

    @property
    def metric_label(self) -> str:
        """``validation accuracy``: what every score on the page is."""
        return f"validation {self.metric}" if self.metric else "validation metric"

    @property
    def baseline(self) -> Attempt | None:
        return next((a for a in self.attempts if a.kind == BASELINE), None)

    @property
    def tried(self) -> list[Attempt]:
        """The attempts proper: every record after the baseline."""
        return [a for a in self.attempts if a.kind != BASELINE]

    @property
    def counts(self) -> dict[str, int]:
        """How many attempts ended in each status, in the journal's order of statuses."""
        found = [a.kind for a in self.tried]
        return {s: found.count(s) for s in (*STATUSES, *sorted(set(found) - set(STATUSES)))}

    @property
    def trace(self) -> list[float | None]:
        return incumbent_trace([a.record for a in self.attempts])

    @property
    def best(self) -> float | None:
        trace = self.trace
        return trace[-1] if trace else None

    @property
    def gain(self) -> float | None:
        base = self.baseline.record.metric if self.baseline else None
        return None if base is None or self.best is None else self.best - base

    @property
    def total_seconds(self) -> float:
        return sum(a.seconds for a in self.attempts)

    @property
    def total_cost(self) -> float:
        return sum(a.record.cost_usd for a in self.attempts)

    @property
    def total_tokens(self) -> int:
        return sum(a.record.tokens for a in self.attempts)


def incumbent_trace(records: Sequence[Record]) -> list[float | None]:
    """The incumbent (best kept score) after each record, in journal order."""
    trace: list[float | None] = []
    current: float | None = None
    for record in records:
        if current is None:
            current = record.incumbent_metric
        if record.status == "accepted" and record.metric is not None:
            current = record.metric
        trace.append(current)
    return trace


# ---------------------------------------------------------------- reading


def _read_optional(path: Path, notes: list[str]) -> str | None:
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        notes.append(f"cannot read {path.name}: {exc.strerror or exc}")
        return None


def _read_final(path: Path, notes: list[str]) -> dict[str, Any]:
    text = _read_optional(path, notes)
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        notes.append(
            f"final.json is not valid JSON ({exc.msg}, line {exc.lineno}); "
            "the test score is not shown"
        )
        return {}
    if not isinstance(data, dict):
        notes.append("final.json is not a JSON object; the test score is not shown")
        return {}
    return data


def _header(spec_text: str | None) -> tuple[str, str]:
    """The pipeline's name and metric from a spec's header block ("" where not found)."""
    if spec_text is None:
        return "", ""
    try:
        ast = syntax.parse(spec_text, "start.imp")
    except DiagnosticError:
        return "", ""
    for block in ast.blocks:
        if block.kind == "pipeline":
            metric = next((f.value for f in block.fields if f.name == "metric"), None)
            return block.label or "", metric.value if isinstance(metric, syntax.Name) else ""
    return "", ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def read_run(run_dir: Path) -> RunReport:
    """The report of ``run_dir``; ReportError when it is not a run directory with attempts."""
    run = RunDir(Path(run_dir))
    if not run.path.is_dir():
        raise ReportError(f"no such run directory: {run.path}")
    if not run.journal_path.is_file():
        raise ReportError(
            f"{run.path} has no journal.jsonl (is it a run directory of `improve refine`?)"
        )
    scan = run.read()
    if not scan.records:
        raise ReportError(f"{run.journal_path} holds no attempts yet")
    notes = list(scan.notes)
    final = _read_final(run.final_path, notes)
    start_text = _read_optional(run.start_spec, notes)
    best_text = _read_optional(run.best_spec, notes)
    name, metric = _header(start_text)
    if not name:
        name, metric = _header(best_text)
    val_name = final.get("val_metric_name")
    if isinstance(val_name, str) and val_name.startswith("val_"):
        metric = val_name.removeprefix("val_")
    trace = incumbent_trace(scan.records)
    attempts = []
    for index, record in enumerate(scan.records):
        before = record.incumbent_metric
        if before is None and index:  # older journals: the incumbent traced so far
            before = trace[index - 1]
        attempts.append(Attempt(record, before))
    return RunReport(
        run_dir=run.path,
        name=name or run.path.name,
        metric=metric,
        attempts=attempts,
        test_metric=_number(final.get("test_metric")),
        start_text=start_text,
        best_text=best_text,
        notes=notes,
        ablation=read_ablation(run.path),
    )
