"""The contract between the refine loop and whoever watches it: the ``Reporter`` protocol,
what it is told as a run starts (``RunInfo``) and ends (``Summary``), and ``NullReporter``,
which says nothing.

The terminal view (``live.py``) and MLflow tracking (``tracking.py``) implement it; the loop
and its parts only call it, so neither watcher depends on the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..journal import Record


@dataclass(frozen=True)
class RunInfo:
    """What a watcher is told about the run as it starts."""

    spec_path: str
    run_dir: str
    expert: str
    metric_name: str
    iters: int
    selector: str
    strategy: str
    seeds: int
    parallel: int
    resumed: bool = False


@dataclass(frozen=True)
class Summary:
    """The end of a run, as shown to the user."""

    metric_name: str
    start_metric: float | None
    best_metric: float | None
    best_iteration: int
    test_metric_name: str | None
    test_metric: float | None
    counts: dict[str, int]
    stopped: str
    best_spec: str
    spec_path: str
    spec_updated: bool
    user_modified: bool
    run_dir: str


class Reporter(Protocol):
    """Receives the loop's events; called from the loop's thread and from job threads."""

    def run_started(self, info: RunInfo, records: Sequence[Record]) -> None: ...

    def attempt_started(self, iteration: int, block: str, expert: str, note: str) -> None: ...

    def progress(self, iteration: int, seed: int | None, event: dict[str, Any]) -> None: ...

    def attempt_finished(self, record: Record) -> None: ...

    def message(self, text: str) -> None: ...

    def finished(self, summary: Summary) -> None: ...

    def close(self) -> None: ...


class NullReporter:
    """Says nothing (library use, tests)."""

    def run_started(self, info: RunInfo, records: Sequence[Record]) -> None:
        pass

    def attempt_started(self, iteration: int, block: str, expert: str, note: str) -> None:
        pass

    def progress(self, iteration: int, seed: int | None, event: dict[str, Any]) -> None:
        pass

    def attempt_finished(self, record: Record) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def finished(self, summary: Summary) -> None:
        pass

    def close(self) -> None:
        pass
