"""Starting a refinement run, or resuming one: the run folder, its state and its options.

A new run checks the spec and the flags, builds the expert (a missing API key must not leave
an empty run behind), checks for git once, and creates the run folder. A resumed run reads its
stored options, changed only by the flags its command line names (among ``RESUMABLE``), and
rebuilds the incumbent from the journal. Neither changes the caller's options.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import validate
from ..journal import JournalError, Record, RunDir, new_run_id, runs_root, sha256_text
from ..syntax import read_spec_text
from .candidates import Incumbent
from .experts import make_expert
from .experts.base import Expert, ExpertError
from .gitlog import GitError, git_root, uncommitted_change
from .options import RefineError, RefineOptions
from .reporting import Reporter

STATE_VERSION = 1

# Options that a resumed run may change; the others are the run's own.
RESUMABLE = (
    "iters",
    "budget_minutes",
    "max_cost",
    "parallel",
    "timeout",
    "device",
    "test",
    "threads",
    "prune",
    "executor",
    "ray_address",
)


@dataclass
class Session:
    """A run ready to go: where it lives, what it was asked, and its expert."""

    spec_path: Path
    options: RefineOptions  # the run's own copy
    run: RunDir
    state: dict[str, Any]  # state.json, kept in step with the journal
    expert: Expert
    resumed: bool


def start(spec_path: Path | None, options: RefineOptions, reporter: Reporter) -> Session:
    """A new run of ``spec_path``; ``RefineError`` (nothing created) for a problem to fix."""
    if spec_path is None:
        raise RefineError("give a spec to refine, or --resume RUN_DIR")
    options.check()
    if options.zero_shot:  # the zero-shot baseline is one all-blocks proposal
        options = dataclasses.replace(options, strategy="all-at-once")
    else:
        options = dataclasses.replace(options)
    text = read_spec_text(spec_path)
    validate.load_text(text, str(spec_path))  # diagnostics before anything is created
    _check_git(spec_path, options)
    if options.git:
        problem = uncommitted_change(spec_path)
        if problem is not None:
            raise RefineError(
                f"--git: {problem}; the first 'improve:' commit would take them along. "
                f"Commit the spec first (git add {spec_path.name} && git commit), or run "
                "without --git"
            )
    # The expert first: a missing API key must not leave an empty run behind.
    expert = _expert(options, reporter)
    root = runs_root(spec_path)
    path = options.run_dir or root / new_run_id(root)
    try:
        run = RunDir.create(Path(path), text)
    except Exception as exc:  # JournalError or an unwritable folder
        raise RefineError(str(exc)) from None
    state: dict[str, Any] = {
        "version": STATE_VERSION,
        "spec_path": str(spec_path.resolve()),
        "options": options.to_json(),
        "spec_written_sha256": sha256_text(text),
        "user_modified": False,
        "elapsed_seconds": 0.0,
        "status": "running",
    }
    run.write_state(state)
    return Session(spec_path, options, run, state, expert, resumed=False)


def resume(
    path: Path, spec_path: Path | None, overrides: Mapping[str, Any], reporter: Reporter
) -> Session:
    """The run in ``path``, with the ``RESUMABLE`` options in ``overrides`` (None: as it was)."""
    try:
        run = RunDir.open(path)
        state = run.read_state()
    except JournalError as exc:
        raise RefineError(str(exc)) from None
    stored = Path(str(state.get("spec_path", "")))
    if spec_path is not None and spec_path.resolve() != stored:
        raise RefineError(f"{path} is a run of {stored}, not of {spec_path}")
    changed = {k: v for k, v in overrides.items() if k in RESUMABLE and v is not None}
    options = dataclasses.replace(
        RefineOptions.from_json(state.get("options", {})), **changed, resume=None
    )
    options.check()
    _check_git(stored, options)
    return Session(stored, options, run, state, _expert(options, reporter), resumed=True)


def _check_git(spec_path: Path, options: RefineOptions) -> None:
    if options.git:
        try:
            git_root(spec_path)
        except GitError as exc:
            raise RefineError(str(exc)) from None


def _expert(options: RefineOptions, reporter: Reporter) -> Expert:
    """The expert ``--expert`` names; one that cannot start is a RefineError (the console
    hears what an openai expert found out about its server)."""
    try:
        return make_expert(
            options.expert,
            base_url=options.base_url,
            seed=options.expert_seed,
            max_cost=options.max_cost,
            grammar=options.grammar,
            notify=reporter.message,
        )
    except ExpertError as exc:
        raise RefineError(str(exc)) from None


def rebuild_incumbent(run: RunDir, records: Sequence[Record], start_text: str) -> Incumbent:
    """The incumbent after the recorded attempts: the last accepted one, else the start."""
    best = Incumbent(iteration=0, text=start_text, metric=None, metrics=[], curves=[])
    for record in records:
        if record.status != "accepted":
            continue
        folder = run.candidate_dir(record.iteration)
        text = (
            start_text
            if record.iteration == 0
            else (folder / "spec.imp").read_text(encoding="utf-8")
        )
        metrics = [
            m if isinstance(m, (int, float)) else None
            for m in record.extras.get("metrics", [record.metric])
        ]
        eval_size = record.extras.get("eval_size")
        best = Incumbent(
            iteration=record.iteration,
            text=text,
            metric=record.metric,
            metrics=metrics,
            curves=read_curves(folder),
            eval_size=eval_size if isinstance(eval_size, int) else 0,
            seconds=float(record.extras.get("train_seconds") or 0.0),
        )
    return best


def read_curves(folder: Path) -> list[dict[str, Any]]:
    """The epoch events of a candidate's first run that has them ([] when none)."""
    with contextlib.suppress(OSError, ValueError):
        value = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        for run in value.get("runs") or []:
            if run.get("history"):
                return list(run["history"])
    return []
