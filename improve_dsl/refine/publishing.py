"""Publishing an accepted change: the spec written back to the user's file, and a git commit.

The write is atomic and never goes over the user's own edit: once the file differs from what
this run last wrote, it is left alone for the rest of the run (the best spec stays in the run
folder). On resume, a write-back or commit that a kill cut short is finished.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..diagnostics import DiagnosticError
from ..journal import Record, RunDir, atomic_write_text, sha256_text
from ..syntax import read_spec_text
from .gitlog import git_commit
from .reporting import Reporter


class Publisher:
    """Writes accepted specs back to ``spec_path`` and, with ``git``, commits each one.

    ``state`` is the run's state (``spec_written_sha256``, ``user_modified``,
    ``committed_iteration`` are kept here); ``save_state`` persists it.
    """

    def __init__(
        self,
        spec_path: Path,
        run: RunDir,
        state: dict[str, Any],
        save_state: Callable[[], None],
        reporter: Reporter,
        *,
        git: bool,
        metric_key: str,
    ) -> None:
        self.spec_path = spec_path
        self.run = run
        self.state = state
        self.save_state = save_state
        self.reporter = reporter
        self.git = git
        self.metric_key = metric_key

    @property
    def user_modified(self) -> bool:
        return bool(self.state.get("user_modified"))

    def publish(self, record: Record, text: str) -> None:
        """Write ``text`` (the spec ``record`` accepted) to the user's file; commit it."""
        if self.user_modified:
            return
        current = self._spec_sha()
        if current is None or current != self.state.get("spec_written_sha256"):
            self.state["user_modified"] = True
            self.save_state()
            self.reporter.message(
                f"{self.spec_path} was changed outside this run; it is left untouched from now "
                f"on, and the best spec is kept in {self.run.best_spec}"
            )
            return
        atomic_write_text(self.spec_path, text)
        self.state["spec_written_sha256"] = sha256_text(text)
        self.save_state()
        if self.git:
            problem = git_commit(self.spec_path, self.commit_message(record))
            if problem:
                self.reporter.message(f"git commit failed: {problem}")
            else:
                self.state["committed_iteration"] = record.iteration
                self.save_state()

    def reconcile(self, record: Record | None, text: str) -> None:
        """On resume: finish the write-back (and commit) of the incumbent ``text``, accepted by
        ``record`` (None for the starting spec), that a kill interrupted."""
        if self.user_modified:
            return
        wanted = sha256_text(text)
        if self._spec_sha() == wanted:
            self.state["spec_written_sha256"] = wanted
            # Killed between writing the spec and committing it: commit it now.
            committed = int(self.state.get("committed_iteration", 0))
            if (
                self.git
                and record is not None
                and committed < record.iteration
                and git_commit(self.spec_path, self.commit_message(record)) is None
            ):
                self.state["committed_iteration"] = record.iteration
            return
        if record is not None:
            self.publish(record, text)

    def commit_message(self, record: Record) -> str:
        """``improve: BLOCK: METRIC before → after (delta)``, the rationale, where it came from."""
        before = "none" if record.incumbent_metric is None else f"{record.incumbent_metric:.4f}"
        after = "none" if record.metric is None else f"{record.metric:.4f}"
        delta = ""
        if record.metric is not None and record.incumbent_metric is not None:
            delta = f" ({record.metric - record.incumbent_metric:+.4f})"
        subject = f"improve: {record.block}: {self.metric_key} {before} → {after}{delta}"
        body = record.rationale.strip() or "(no rationale given)"
        trailer = (
            f"Iteration {record.iteration} of {self.run.path}, expert {record.expert}"
            + (f", move {record.move}" if record.move else "")
            + "."
        )
        return f"{subject}\n\n{body}\n\n{trailer}\n"

    def _spec_sha(self) -> str | None:
        try:
            return sha256_text(read_spec_text(self.spec_path))
        except DiagnosticError:
            return None
