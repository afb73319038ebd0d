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


def _epoch_scores_text(event: dict[str, Any], split: str) -> str:
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
        self._epochs: object = "?"
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if console.is_terminal:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                TextColumn("{task.fields[counter]}"),
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
                f"{self.label}: loading data", total=None, counter="", latest=""
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
        if kind == "decode":
            self._show_decoding(event)
        elif kind == "data":
            self._say(_data_line(event))
        elif kind == "start":
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
                    self._task,
                    description=f"{self.label} ({device})",
                    total=total,
                    completed=0,
                    counter=f"epoch 0/{epochs}",
                    latest="",
                )
                self._epochs = epochs
                self._progress.console.print(what, highlight=False)
            else:
                self.console.print(what, highlight=False)
        elif kind == "epoch":
            latest = _epoch_scores_text(event, self.split)
            if self._progress is not None and self._task is not None:
                epoch = event.get("epoch", 0)
                self._progress.update(
                    self._task,
                    completed=epoch,
                    counter=f"epoch {epoch}/{self._epochs}",
                    latest=latest,
                )
            else:
                seconds = event.get("seconds")
                took = f"  {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
                self.console.print(
                    f"epoch {event.get('epoch')}/{event.get('epochs')}  {latest}{took}",
                    highlight=False,
                )
        return True

    def _say(self, line: str) -> None:
        console = self._progress.console if self._progress is not None else self.console
        console.print(line, highlight=False)

    def _show_decoding(self, event: dict[str, Any]) -> None:
        """An image folder being decoded into its cache: files done, of how many, and the ETA."""
        done, total, seconds = event.get("done"), event.get("total"), event.get("seconds")
        if not (isinstance(done, int) and isinstance(total, int) and done > 0):
            return
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task,
                description=f"{self.label}: decoding images",
                total=total,
                completed=done,
                counter=f"{done:,}/{total:,} files",
            )
            return
        eta = ""
        if isinstance(seconds, (int, float)) and done < total:
            eta = f", about {seconds / done * (total - done):.0f} s left"
        self._say(f"decoding images: {done:,}/{total:,} files{eta}")


def _data_line(event: dict[str, Any]) -> str:
    """``images: 50,000 decoded (cache hit), 2.46 GB, streamed from ... (budget 1.2 GB)``."""
    from .folder_memory import human_bytes

    size = event.get("decoded_bytes")
    budget = event.get("memory_budget")
    sizes = (
        f", {human_bytes(size)} against a memory budget of {human_bytes(budget)}"
        if isinstance(size, int) and isinstance(budget, int)
        else ""
    )
    how = "streamed from the cache" if event.get("stream") else "held in memory"
    cache = {"hit": "cache hit", "new": "decoded now", "changed": "folder changed: decoded again"}
    status = cache.get(str(event.get("cache")), "cache rebuilt")
    images = event.get("images")
    count = f"{images:,}" if isinstance(images, int) else "?"
    return f"images: {count} ({status}){sizes}; {how} (cache: {event.get('cache_dir', '?')})"
