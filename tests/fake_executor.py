"""An executor that trains nothing: the loop's logic tested in milliseconds.

The executor interface (``improve_dsl.executors.Executor``) is the seam between the
refinement loop and training. ``FakeExecutor`` implements it with a scoring function the test
gives: from the candidate's spec text (the ``spec.imp`` the loop writes beside ``train.py``)
and the job, it returns an ``Outcome`` (a status and a validation curve). The curve's epochs
go through the job's ``on_event`` as the real script's events would, so pruning, progress and
caching behave as with real runs; the result and its files look like a real run's.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from improve_dsl.executors import Executor, JobHandle, TrainJob
from improve_dsl.run import RunResult


@dataclass(frozen=True)
class Outcome:
    """What a fake training run does: its status and its validation score per epoch."""

    curve: Sequence[float] = (0.5,)
    status: str = "ok"  # a RunResult status: ok | failed | timeout | oom | nan
    reason: str | None = None
    seconds: float = 0.01


Score = Callable[[str, TrainJob], Outcome]


class FakeHandle(JobHandle):
    def __init__(self, job: TrainJob, result: RunResult) -> None:
        self.job = job
        self.result = result

    def done(self) -> bool:
        return True


@dataclass
class FakeExecutor(Executor):
    """Runs each job at submission by asking ``score``; remembers every job it was given."""

    score: Score
    slots: int = 1
    metric_name: str = "val_accuracy"
    jobs: list[TrainJob] = field(default_factory=list)
    closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def submit(self, job: TrainJob) -> JobHandle:
        with self._lock:
            self.jobs.append(job)
        spec_text = (job.script.parent / "spec.imp").read_text(encoding="utf-8")
        return FakeHandle(job, self._run(job, self.score(spec_text, job)))

    def _run(self, job: TrainJob, outcome: Outcome) -> RunResult:
        job.out_dir.mkdir(parents=True, exist_ok=True)
        name = self.metric_name if job.split == "val" else self.metric_name.replace("val_", "test_")
        history: list[dict[str, Any]] = []
        status, reason = outcome.status, outcome.reason
        epochs = len(outcome.curve)
        for epoch, value in enumerate(outcome.curve, start=1):
            event = {"event": "epoch", "epoch": epoch, "epochs": epochs, name: value}
            event["train_loss"] = round(1.0 - value, 4)
            history.append(event)
            if job.on_event is not None and not job.on_event(event):
                status, reason = "pruned", f"stopped after epoch {epoch}"
                break
        metric = outcome.curve[-1] if status == "ok" and outcome.curve else None
        log = job.out_dir / "log"
        log.write_text("".join(json.dumps(e) + "\n" for e in history), encoding="utf-8")
        if status == "ok":
            (job.out_dir / "metrics.json").write_text(
                json.dumps({"status": "ok", name: metric, "seed": job.seed}), encoding="utf-8"
            )
        return RunResult(
            status=status,  # type: ignore[arg-type]
            metric=metric,
            metric_name=name,
            history=history,
            reason=reason,
            seconds=outcome.seconds,
            log_path=log,
        )

    def wait(self, handle: JobHandle) -> RunResult:
        assert isinstance(handle, FakeHandle)
        return handle.result

    def as_completed(self, handles: Iterable[JobHandle]) -> Iterator[tuple[JobHandle, RunResult]]:
        for handle in list(handles):
            yield handle, self.wait(handle)

    def cancel_all(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def by_text(*rules: tuple[str, Outcome], default: Outcome = Outcome()) -> Score:
    """A scoring function: the outcome of the first rule whose text the spec contains."""

    def score(spec_text: str, job: TrainJob) -> Outcome:
        return next((outcome for text, outcome in rules if text in spec_text), default)

    return score


def split_of(jobs: Iterable[TrainJob], split: str) -> list[TrainJob]:
    return [j for j in jobs if j.split == split]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
