"""The executor interface: how the refinement loop runs training jobs, wherever they run.

A job is one training run of a compiled script (one candidate, one seed). The loop submits
jobs, waits for them in completion order and may cancel everything (Ctrl-C). Local threads
implement it here; a Ray cluster implements the same interface elsewhere.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..run import RunResult

EventCallback = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True)
class TrainJob:
    """One training run: ``run.run_script`` arguments, plus a tag for the caller."""

    script: Path
    out_dir: Path
    split: str = "val"
    seed: int | None = None
    device: str = "auto"
    timeout: float | None = None
    batch_size: int | None = None
    threads: int | None = None
    on_event: EventCallback | None = field(default=None, compare=False)
    tag: Any = field(default=None, compare=False)  # the caller's, returned untouched


class JobHandle(abc.ABC):
    """A submitted job; ``Executor.wait`` or ``as_completed`` give its ``RunResult``."""

    job: TrainJob

    @abc.abstractmethod
    def done(self) -> bool:
        """Whether the job has finished (in any way)."""


class Executor(abc.ABC):
    """Runs ``TrainJob``s, up to ``slots`` at once."""

    slots: int

    @abc.abstractmethod
    def submit(self, job: TrainJob) -> JobHandle:
        """Start (or queue) a job and return at once."""

    @abc.abstractmethod
    def wait(self, handle: JobHandle) -> RunResult:
        """Block until the job ends; its result (a crash is a result, not an exception)."""

    @abc.abstractmethod
    def as_completed(self, handles: Iterable[JobHandle]) -> Iterator[tuple[JobHandle, RunResult]]:
        """The given jobs' results in the order they finish."""

    @abc.abstractmethod
    def cancel_all(self) -> None:
        """Stop every queued and running job (their results say ``interrupted``)."""

    def close(self) -> None:
        """Release workers; jobs still running are cancelled."""
        self.cancel_all()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
