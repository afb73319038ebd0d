"""What `improve refine` shows while it works.

On a terminal: a rich live view with the current iteration, block and expert, a progress bar
per running candidate (epoch i/E and its score), and a table of past attempts; at the end a
summary table (start → best on validation, the test score once). When stdout is not a
terminal (CI logs, pipes): one plain line per event, no escape codes.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ..display import clip_words, delta_text, metric_text, plural, seconds_text
from ..journal import ATTEMPT_STATUSES, Record
from .reporting import NullReporter, Reporter, RunInfo, Summary

STATUS_STYLES = {s.name: s.style for s in ATTEMPT_STATUSES}
# The statuses whose recorded reason is shown in place of the rationale: why it was not kept.
REASON_SHOWN = ("rejected", "invalid", "failed", "pruned")


def describe_record(record: Record) -> str:
    """One line for an attempt: ``#3 train accepted 0.9531 (+0.0214) move — rationale``."""
    head = f"#{record.iteration} {record.block} {record.status}"
    score = metric_text(record.metric)
    delta = delta_text(record.metric, record.incumbent_metric)
    line = f"{head} {score}" + (f" ({delta})" if delta else "")
    reason = record.extras.get("reason")
    if reason and record.status in REASON_SHOWN:
        line += f": {str(reason).splitlines()[0]}"
    elif record.rationale:
        line += f" — {clip_words(record.rationale, 160)}"
    return line


class Pace:
    """An overall ETA for the run: the mean wall time of the attempts finished so far in
    this session, times the iterations still to come."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.finished = 0

    def eta(self, iteration: int, iters: int) -> str:
        """``about 3 min 05 s left`` before ``iteration`` of ``iters`` starts, or "" when
        nothing has finished yet to measure the pace by."""
        remaining = iters - iteration + 1
        if self.finished == 0 or remaining <= 0:
            return ""
        per_attempt = (time.monotonic() - self.started) / self.finished
        return f"about {seconds_text(per_attempt * remaining)} left"


def summary_lines(summary: Summary) -> list[str]:
    """The end-of-run summary as plain lines (also the tail of the rich summary)."""
    lines = [
        f"{summary.metric_name}: {metric_text(summary.start_metric)} → "
        f"{metric_text(summary.best_metric)}"
        + (
            f" ({delta_text(summary.best_metric, summary.start_metric)})"
            if summary.start_metric is not None and summary.best_metric is not None
            else ""
        )
        + f", best at iteration {summary.best_iteration}",
    ]
    if summary.test_metric_name is not None:
        lines.append(
            f"{summary.test_metric_name} (best spec, scored once): "
            f"{metric_text(summary.test_metric)}"
        )
    counts = ", ".join(f"{n} {s}" for s, n in summary.counts.items() if n)
    lines.append(f"attempts: {counts or 'none'}; stopped: {summary.stopped}")
    if summary.user_modified:
        lines.append(
            f"{summary.spec_path} was changed by someone else during the run and was left "
            f"untouched; the best spec is {summary.best_spec}"
        )
    elif summary.spec_updated:
        lines.append(f"{summary.spec_path} now holds the best spec (also {summary.best_spec})")
    else:
        lines.append(f"{summary.spec_path} is unchanged (no improvement); run: {summary.run_dir}")
    lines.append(f"the whole run, with plots and each change: improve report {summary.run_dir}")
    return lines


class PlainReporter:
    """One line per event, for logs: no colours, no cursor movement."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()
        self.metric_name = "val_accuracy"
        self.iters = 0
        self.pace = Pace()

    def _say(self, text: str) -> None:
        with self._lock:
            print(text, file=self.stream, flush=True)

    def run_started(self, info: RunInfo, records: Sequence[Record]) -> None:
        self.metric_name = info.metric_name
        self.iters = info.iters
        self.pace = Pace()
        verb = "resuming" if info.resumed else "refining"
        self._say(
            f"{verb} {info.spec_path}: expert {info.expert}, {plural(info.iters, 'iteration')}, "
            f"select "
            f"{info.selector}, {info.strategy}, {info.seeds} seed(s), parallel {info.parallel}"
        )
        self._say(f"run directory: {info.run_dir}")
        for record in records:
            self._say("  " + describe_record(record))

    def attempt_started(self, iteration: int, block: str, expert: str, note: str) -> None:
        eta = self.pace.eta(iteration, self.iters)
        self._say(
            f"[{iteration}] iteration {iteration} of {self.iters}: {block} ({expert})"
            + (f", {eta}" if eta else "")
            + (f": {note}" if note else "")
        )

    def progress(self, iteration: int, seed: int | None, event: dict[str, Any]) -> None:
        if event.get("event") != "epoch":
            return
        score = event.get(self.metric_name)
        seed_text = f" seed {seed}" if seed is not None else ""
        score_text = f" {self.metric_name} {score:.4f}" if isinstance(score, float) else ""
        self._say(
            f"[{iteration}]{seed_text} epoch {event.get('epoch')}/{event.get('epochs')}{score_text}"
        )

    def attempt_finished(self, record: Record) -> None:
        if record.iteration > 0:
            self.pace.finished += 1
        self._say(describe_record(record))

    def message(self, text: str) -> None:
        self._say(text)

    def finished(self, summary: Summary) -> None:
        for line in summary_lines(summary):
            self._say(line)

    def close(self) -> None:
        pass


class RichReporter:
    """A live terminal view: header, running candidates' progress, past attempts."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self._lock = threading.RLock()
        self.info: RunInfo | None = None
        self.records: list[Record] = []
        self.current = ""
        self.pace = Pace()
        # The bar comes last and is the part that shrinks: on a narrow (80-column) terminal
        # the epoch, the score and the time left stay readable.
        self.progress_bars = Progress(
            TextColumn("{task.description}"),
            TextColumn("epoch {task.completed:.0f}/{task.total:.0f}"),
            TextColumn("{task.fields[score]}"),
            TextColumn("eta"),
            TimeRemainingColumn(),
            BarColumn(bar_width=None),
            console=self.console,
            expand=True,
        )
        self.tasks: dict[tuple[int, int | None], TaskID] = {}
        self.live = Live(
            self._render(), console=self.console, refresh_per_second=4, transient=False
        )
        self._started = False

    def _table(self) -> Table:
        table = Table(title="attempts", title_justify="left", expand=False)
        for column in ("#", "block", "status", "metric", "Δ", "rationale / reason"):
            table.add_column(column, overflow="fold" if column.startswith("rat") else "ellipsis")
        for record in self.records[-12:]:
            reason = record.extras.get("reason") if record.status in REASON_SHOWN else None
            note = str(reason or record.rationale or "").splitlines()[0:1]
            table.add_row(
                str(record.iteration),
                record.block,
                Text(record.status, style=STATUS_STYLES[record.status]),
                metric_text(record.metric),
                delta_text(record.metric, record.incumbent_metric),
                clip_words(note[0], 90) if note else "",
            )
        return table

    def _render(self) -> Group:
        header = Text()
        if self.info is not None:
            header.append(f"improve refine {self.info.spec_path}", style="bold")
            header.append(
                f"  expert {self.info.expert}  select {self.info.selector}  "
                f"{self.info.metric_name}\n",
                style="dim",
            )
        header.append(self.current or "starting…")
        return Group(header, self.progress_bars, self._table())

    def _refresh(self) -> None:
        if self._started:
            self.live.update(self._render())

    def run_started(self, info: RunInfo, records: Sequence[Record]) -> None:
        with self._lock:
            self.info = info
            self.pace = Pace()
            self.records = list(records)
            if not self._started:
                self.live.start()
                self._started = True
            self._refresh()

    def attempt_started(self, iteration: int, block: str, expert: str, note: str) -> None:
        with self._lock:
            iters = self.info.iters if self.info else iteration
            eta = self.pace.eta(iteration, iters)
            self.current = (
                f"iteration {iteration} of {iters}: {block} ({expert})"
                + (f", {eta}" if eta else "")
                + (f" — {clip_words(note, 120)}" if note else "")
            )
            self._refresh()

    def progress(self, iteration: int, seed: int | None, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind not in ("start", "epoch"):
            return
        with self._lock:
            key = (iteration, seed)
            total = float(event.get("epochs") or 1)
            if key not in self.tasks:
                label = f"#{iteration}" + (f" seed {seed}" if seed is not None else "")
                self.tasks[key] = self.progress_bars.add_task(label, total=total, score="")
            metric = self.info.metric_name if self.info else "val_accuracy"
            score = event.get(metric)
            self.progress_bars.update(
                self.tasks[key],
                total=total,
                completed=float(event.get("epoch") or 0),
                score=f"{metric} {score:.4f}" if isinstance(score, float) else "",
            )

    def attempt_finished(self, record: Record) -> None:
        with self._lock:
            for key in [k for k in self.tasks if k[0] == record.iteration]:
                self.progress_bars.remove_task(self.tasks.pop(key))
            if record.iteration > 0:
                self.pace.finished += 1
            self.records.append(record)
            self._refresh()

    def message(self, text: str) -> None:
        with self._lock:
            self.console.print(text)

    def finished(self, summary: Summary) -> None:
        with self._lock:
            self.current = "done"
            self._refresh()
            self.close()
            table = Table(title="improve refine: summary", title_justify="left")
            # The split is a column of its own: the test score, taken once, must not sit
            # under a "validation" heading.
            table.add_column("")
            table.add_column("split")
            table.add_column(summary.metric_name.removeprefix("val_"))
            table.add_row("start", "validation", metric_text(summary.start_metric))
            table.add_row(
                f"best (iteration {summary.best_iteration})",
                "validation",
                metric_text(summary.best_metric),
            )
            if summary.test_metric_name is not None:
                table.add_row(
                    Text("best spec, scored once", style="bold"),
                    Text("test", style="bold"),
                    Text(metric_text(summary.test_metric), style="bold"),
                )
            self.console.print(table)
            for line in summary_lines(summary)[2 if summary.test_metric_name else 1 :]:
                self.console.print(line)

    def close(self) -> None:
        with self._lock:
            if self._started:
                self.live.stop()
                self._started = False


def make_reporter(quiet: bool = False, stream: IO[str] | None = None) -> Reporter:
    """Rich on a terminal, plain lines otherwise, nothing when ``quiet``."""
    if quiet:
        return NullReporter()
    stream = stream or sys.stdout
    if stream.isatty():
        return RichReporter(Console(file=stream))
    return PlainReporter(stream)
