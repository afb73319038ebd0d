"""Show a training run's progress from its events: a rich bar on a terminal, lines otherwise.

Used as the ``on_event`` callback of :func:`improve_dsl.run.run_script`; it never stops a run.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)


def _fmt_metric(event: dict[str, Any], split: str) -> str:
    """``val_accuracy 0.9312  train_loss 0.214`` from an epoch event."""
    parts = []
    for key, value in event.items():
        if key.startswith(f"{split}_") and key != f"{split}_loss" and isinstance(value, float):
            parts.append(f"{key} {value:.4f}")
    loss = event.get("train_loss")
    if isinstance(loss, (int, float)):
        parts.append(f"train_loss {loss:.4g}")
    return "  ".join(parts)


class EpochProgress:
    """A context manager and event callback that shows epoch i/E, the ETA and the latest score.

    On a terminal this is a rich progress bar on ``console``; elsewhere (a pipe, a log file)
    one plain line per epoch, so logs stay readable.
    """

    def __init__(self, console: Console, label: str) -> None:
        self.console = console
        self.label = label
        self.split = "val"
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if console.is_terminal:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                TextColumn("epoch {task.completed}/{task.fields[epochs]}"),
                TextColumn("eta"),
                TimeRemainingColumn(compact=True),
                TextColumn("{task.fields[latest]}"),
                console=console,
                transient=True,
            )

    def __enter__(self) -> EpochProgress:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(
                f"{self.label}: loading data", total=None, epochs="?", latest=""
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event")
        if kind == "start":
            self.split = str(event.get("split", self.split))
            epochs = event.get("epochs", "?")
            device = event.get("device", "?")
            what = (
                f"{self.label}: {event.get('train_size', '?')} training images, "
                f"{event.get('eval_size', '?')} {self.split} images on {device}"
            )
            if self._progress is not None and self._task is not None:
                total = epochs if isinstance(epochs, int) else None
                self._progress.update(
                    self._task, description=f"{self.label} ({device})", total=total, epochs=epochs
                )
                self._progress.console.print(what, highlight=False)
            else:
                self.console.print(what, highlight=False)
        elif kind == "epoch":
            latest = _fmt_metric(event, self.split)
            if self._progress is not None and self._task is not None:
                self._progress.update(self._task, completed=event.get("epoch", 0), latest=latest)
            else:
                seconds = event.get("seconds")
                took = f"  {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
                self.console.print(
                    f"epoch {event.get('epoch')}/{event.get('epochs')}  {latest}{took}",
                    highlight=False,
                )
        return True
