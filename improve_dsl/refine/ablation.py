"""Ablation of a finished refinement: which kept changes matter in the best spec.

Each accepted change of a run changed some fields of one block. For every change:

- **leave one out**: the best spec with that change's fields put back as they were before
  it; the score it loses is what the change is worth in the final spec;
- **add one in**: the starting spec with only that change's fields set; the score it gains
  is what the change is worth alone.

A field a later change rewrote again is *superseded*: reverting it would undo the later
change too, so it is left as the best spec has it and the row says so; a change none of
whose fields survive, or whose variant no longer validates, is reported, never crashed on.
Every variant, the best spec and the starting spec train ``K`` seeds through the same
executors and results cache as ``improve refine``, so an ablation cut short by Ctrl-C
repeats nothing it finished when it is run again. ``ablation.json`` (the one reader and
writer are here) and ``ablation.md`` go in the run folder; ``improve report`` draws them.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import fmt, syntax, validate
from ..diagnostics import DiagnosticError
from ..executors import Executor
from ..journal import ResultCache, RunDir, atomic_write_json, atomic_write_text, runs_root
from . import reply
from .candidates import Candidate, Incumbent
from .experts.heuristic.expert import apply_changes
from .memory import move_identity
from .reporting import NullReporter, Reporter
from .scripts import compile_script

ABLATION_JSON = "ablation.json"
ABLATION_MD = "ablation.md"
SCHEMA = 1


class AblationError(Exception):
    """The run folder cannot be ablated (not a run, no accepted change); one line."""


@dataclass(frozen=True)
class Change:
    """One accepted change: the spec it was made on and the spec it made."""

    iteration: int
    block: str
    move: str
    gain: float | None  # its gain over the incumbent when it was kept
    before: str
    after: str


@dataclass
class Row:
    """One change's line of the ablation table (``None``: not measured, see ``note``)."""

    iteration: int
    block: str
    move: str
    kept_gain: float | None
    drop: float | None = None  # best - best without it, mean over seeds
    drop_spread: float | None = None
    gain: float | None = None  # start with it - start, mean over seeds
    gain_spread: float | None = None
    noise: float | None = None  # the noise a drop must exceed to count
    within_noise: bool = False
    seconds: float = 0.0
    note: str = ""

    @property
    def label(self) -> str:
        return f"#{self.iteration} {self.move}" if self.move else f"#{self.iteration}"


@dataclass
class Ablation:
    """The whole table, and the reference scores it was measured against."""

    run: str
    seeds: list[int]
    metric: str
    best_metric: float | None
    start_metric: float | None
    rows: list[Row] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}


def read_ablation(run_dir: Path) -> Ablation | None:
    """The run's ``ablation.json``, or None when there is none (or it cannot be read)."""
    try:
        value = json.loads((run_dir / ABLATION_JSON).read_text(encoding="utf-8"))
        rows = [Row(**r) for r in value["rows"]]
        return Ablation(
            str(value["run"]),
            list(value["seeds"]),
            str(value["metric"]),
            value["best_metric"],
            value["start_metric"],
            rows,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------- the changes


def accepted_changes(run: RunDir) -> list[Change]:
    """The run's accepted changes in order, each with the spec before and after it."""
    before = run.start_spec.read_text(encoding="utf-8")
    changes: list[Change] = []
    for record in run.records():
        if record.iteration == 0 or not record.accepted:
            continue
        try:
            after = (run.candidate_dir(record.iteration) / "spec.imp").read_text("utf-8")
        except OSError:
            continue
        gain = None
        if record.metric is not None and record.incumbent_metric is not None:
            gain = record.metric - record.incumbent_metric
        move = move_identity(record.move)
        changes.append(Change(record.iteration, record.block, move, gain, before, after))
        before = after
    return changes


def _fields(text: str, block: str) -> dict[str, str]:
    found = next((b for b in syntax.parse(text, "<spec>").blocks if b.kind == block), None)
    return {f.name: fmt.print_value(f.value) for f in found.fields} if found else {}


def _changed(change: Change) -> dict[str, tuple[str | None, str | None]]:
    old, new = _fields(change.before, change.block), _fields(change.after, change.block)
    return {
        name: (old.get(name), new.get(name))
        for name in sorted(set(old) | set(new))
        if old.get(name) != new.get(name)
    }


def _apply(text: str, block: str, values: dict[str, str | None], path: str) -> str:
    """``text`` with ``block``'s fields set to ``values``; DiagnosticError/EditError when the
    result is not a valid spec."""
    proposed = apply_changes(text, block, values)
    merged = reply.apply_edit(text, path, (block,), proposed, check_shapes=False)
    validate.load_text(merged, path)
    return merged


def leave_out(best: str, change: Change, path: str) -> tuple[str | None, str]:
    """The best spec without ``change`` (None when nothing of it is left), and a note."""
    now = _fields(best, change.block)
    reverted = {name: old for name, (old, new) in _changed(change).items() if now.get(name) == new}
    superseded = sorted(set(_changed(change)) - set(reverted))
    if not reverted:
        return None, "superseded: a later change rewrote every field it set"
    note = f"partly superseded ({', '.join(superseded)} left as later set)" if superseded else ""
    return _apply(best, change.block, reverted, path), note


def add_in(start: str, change: Change, path: str) -> str:
    """The starting spec with only ``change``'s fields set."""
    return _apply(start, change.block, {n: new for n, (_, new) in _changed(change).items()}, path)


# ---------------------------------------------------------------- measuring


def _noise(best: Sequence[float], diffs: Sequence[float], eval_size: int) -> float:
    """The standard error of a paired difference: the seeds' spread, and the validation
    split's sampling noise (counted twice, once per side)."""
    p = min(max(statistics.fmean(best), 0.0), 1.0) if best else 0.0
    sampling = math.sqrt(2 * p * (1 - p) / eval_size) if eval_size > 0 else 0.0
    seeds = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    return math.hypot(sampling, seeds)


def _paired(a: Candidate, b: Candidate) -> list[float] | None:
    """Per-seed ``a - b`` over the seeds both finished (None: none did)."""
    sa = {r.seed: r.metric for r in a.runs if r.status == "ok" and r.metric is not None}
    sb = {r.seed: r.metric for r in b.runs if r.status == "ok" and r.metric is not None}
    common = sorted(set(sa) & set(sb))
    return [float(sa[s]) - float(sb[s]) for s in common] if common else None


def _scores(c: Candidate) -> list[float]:
    return [float(r.metric) for r in c.runs if r.status == "ok" and r.metric is not None]


def _mean_seconds(c: Candidate) -> float:
    ok = [r.seconds for r in c.runs if r.status == "ok"]
    return statistics.fmean(ok) if ok else 0.0


def ablate(
    run_dir: Path,
    executor: Executor,
    *,
    seeds: int = 3,
    device: str = "auto",
    threads: int | None = None,
    timeout: float | None = None,
    reporter: Reporter | None = None,
) -> Ablation:
    """Measure every accepted change of the run at ``run_dir`` (see the module docstring),
    write ``ablation.json`` and ``ablation.md`` there, and return the table. Ctrl-C:
    KeyboardInterrupt, after which a new call repeats nothing that finished."""
    from .trials import Trials

    try:
        run = RunDir.open(run_dir)
        state = run.read_state()
    except Exception as exc:
        raise AblationError(str(exc)) from None
    spec_path = str(state.get("spec_path") or run.start_spec)
    start = run.start_spec.read_text(encoding="utf-8")
    if not run.best_spec.is_file():
        raise AblationError(f"{run_dir} has no best.imp: the run never scored its start")
    best = run.best_spec.read_text(encoding="utf-8")
    changes = accepted_changes(run)
    if not changes:
        raise AblationError(f"{run_dir} kept no change: there is nothing to ablate")
    spec = validate.load_text(start, spec_path)
    metric_key = f"val_{spec.pipeline.metric}"
    seed_list = [spec.pipeline.seed + i for i in range(seeds)]
    cache = ResultCache(runs_root(Path(spec_path)) / "cache")
    reporter = reporter or NullReporter()
    rows = [Row(c.iteration, c.block, c.move, c.gain) for c in changes]
    variants: list[Candidate] = []

    def variant(text: str) -> Candidate:
        for known in variants:  # e.g. a run's only change left out is its start
            if known.text == text:
                return known
        number = len(variants)
        script = compile_script(text, spec_path, cache)
        candidate = Candidate.without_proposal(
            iteration=number, label="ablation", text=text, script=script
        )
        variants.append(candidate)
        return candidate

    best_c, start_c = variant(best), variant(start)
    pairs: list[tuple[Candidate | None, Candidate | None]] = []
    for change, row in zip(changes, rows, strict=True):
        out_c = in_c = None
        notes: list[str] = []
        try:
            text, note = leave_out(best, change, spec_path)
            notes += [note] if note else []
            out_c = variant(text) if text is not None else None
        except (DiagnosticError, reply.EditError) as exc:
            notes.append(f"cannot be left out: {_first_line(exc)}")
        try:
            in_c = variant(add_in(start, change, spec_path))
        except (DiagnosticError, reply.EditError) as exc:
            notes.append(f"cannot be added alone: {_first_line(exc)}")
        row.note = "; ".join(notes)
        pairs.append((out_c, in_c))

    trials = Trials(
        RunDir(run.path / "ablation"),
        executor,
        cache,
        reporter,
        spec_path=Path(spec_path),
        metric_key=metric_key,
        seeds=seed_list,
        device=device,
        timeout=timeout,
        threads=threads,
        prune_margin=1.0,
    )
    for candidate in variants:
        trials.write_candidate(candidate)
    reporter.message(f"training {len(variants)} specs × {seeds} seeds (cached runs are reused)")
    nobody = Incumbent(iteration=0, text=best, metric=None, metrics=[], curves=[])
    trials.train(variants, nobody, prune=False)

    eval_size = max((r.eval_size for c in variants for r in c.runs), default=0)
    for row, (out_c, in_c) in zip(rows, pairs, strict=True):
        if out_c is not None:
            drops = _paired(best_c, out_c)
            if drops:
                row.drop = statistics.fmean(drops)
                row.drop_spread = statistics.stdev(drops) if len(drops) > 1 else 0.0
                row.noise = _noise(_scores(best_c), drops, eval_size)
                row.within_noise = row.drop <= row.noise
            else:
                row.note = "; ".join(filter(None, [row.note, "its leave-one-out run failed"]))
            row.seconds += _mean_seconds(out_c)
        if in_c is not None:
            gains = _paired(in_c, start_c)
            if gains:
                row.gain = statistics.fmean(gains)
                row.gain_spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
            else:
                row.note = "; ".join(filter(None, [row.note, "its add-one-in run failed"]))
            row.seconds += _mean_seconds(in_c)
    best_scores, start_scores = _scores(best_c), _scores(start_c)
    table = Ablation(
        str(run.path),
        seed_list,
        metric_key,
        statistics.fmean(best_scores) if best_scores else None,
        statistics.fmean(start_scores) if start_scores else None,
        rows,
    )
    atomic_write_json(run.path / ABLATION_JSON, table.to_json())
    atomic_write_text(run.path / ABLATION_MD, table_text(table) + "\n")
    return table


def _first_line(exc: BaseException) -> str:
    text = exc.render() if isinstance(exc, DiagnosticError) else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


# ---------------------------------------------------------------- the table


def _pm(value: float | None, spread: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:+.4f} ± {spread:.4f}" if spread is not None else f"{value:+.4f}"


def table_text(table: Ablation) -> str:
    """The table as the terminal and ``ablation.md`` show it (a Markdown table)."""
    head = (
        f"ablation of {table.run}: {table.metric}, {len(table.seeds)} seed(s) each; "
        f"best {_metric(table.best_metric)}, start {_metric(table.start_metric)}"
    )
    lines = [
        head,
        "",
        "| change | block | gain when kept | leave-one-out drop | add-one-in gain | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for row in table.rows:
        drop = _pm(row.drop, row.drop_spread)
        if row.within_noise:
            drop += " (within noise)"
        kept = f"{row.kept_gain:+.4f}" if row.kept_gain is not None else "—"
        lines.append(
            f"| {row.label} | {row.block} | {kept} | {drop} | "
            f"{_pm(row.gain, row.gain_spread)} | {row.seconds:.1f} |"
        )
    notes = [f"- {row.label}: {row.note}" for row in table.rows if row.note]
    if any(row.within_noise for row in table.rows):
        notes.append(
            "- within noise: removing it costs less than the noise of the measurement "
            "(the seeds' spread and the validation split's sampling error)"
        )
    return "\n".join(lines + (["", *notes] if notes else []))


def _metric(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "—"
