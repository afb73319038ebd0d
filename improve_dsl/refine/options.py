"""What ``improve refine`` is asked to do (RefineOptions), what it reports back
(RefineResult), and its errors."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..journal import (
    Record,
)
from .experts.llm.constraint import GRAMMAR_CHOICES
from .reporting import Summary
from .select import SELECTORS

STRATEGIES = ("iterative", "all-at-once")

# The flags whose absence on the command line means "the default" (with --resume: "as the run
# had it"), so that a resumed run changes only what its command line names.
OPTIONAL_FLAGS = (
    "iters",
    "parallel",
    "timeout",
    "budget_minutes",
    "max_cost",
    "device",
    "threads",
    "test",
    "prune",
    "executor",
    "ray_address",
)


class RefineError(Exception):
    """A problem the user must fix (bad flags, not a git repository, unusable run folder)."""


class RefineInterrupted(Exception):
    """Ctrl-C: the state is saved and the run can be resumed from ``run_dir``."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"interrupted; resume with: improve refine --resume {run_dir}")
        self.run_dir = run_dir


@dataclass
class RefineOptions:
    """The flags of ``improve refine`` (see ``improve refine --help``)."""

    iters: int = 10
    expert: str | None = None  # heuristic | openai[:MODEL] | replay:FILE; None: by API key
    base_url: str | None = None
    grammar: str | None = None  # auto|lark|gbnf|json|none; None: $IMPROVE_GRAMMAR, else auto
    select: str = "analyst"
    strategy: str = "iterative"
    zero_shot: bool = False
    seeds: int = 1
    min_delta: float = 0.0
    parallel: int = 1
    timeout: float | None = None  # seconds per training run
    budget_minutes: float | None = None
    max_cost: float | None = None
    run_dir: Path | None = None
    resume: Path | None = None
    git: bool = False
    prune: bool = True
    prune_margin: float = 0.1
    device: str = "auto"
    test: bool = True
    threads: int | None = None
    executor: str = "local"
    ray_address: str | None = None  # --executor ray: the cluster to join (None: local/env)
    expert_seed: int = 0
    history: bool = True  # read and write the evidence store (--no-history: neither)

    def check(self) -> None:
        """Raise RefineError for values that make no sense."""
        if self.iters < 0:
            raise RefineError("--iters must be 0 or more")
        if self.seeds < 1:
            raise RefineError("--seeds must be at least 1")
        if self.parallel < 1:
            raise RefineError("--parallel must be at least 1")
        if self.select not in SELECTORS:
            raise RefineError(f"--select must be one of {', '.join(SELECTORS)}")
        if self.strategy not in STRATEGIES:
            raise RefineError(f"--strategy must be one of {', '.join(STRATEGIES)}")
        if self.min_delta < 0:
            raise RefineError("--min-delta must be 0 or more")
        if self.timeout is not None and self.timeout <= 0:
            raise RefineError("--timeout must be positive")
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise RefineError("--budget-minutes must be positive")
        if self.max_cost is not None and self.max_cost < 0:
            raise RefineError("--max-cost must be 0 or more")
        if self.grammar is not None and self.grammar not in GRAMMAR_CHOICES:
            raise RefineError(f"--grammar must be one of {', '.join(GRAMMAR_CHOICES)}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RefineOptions:
        """The options an ``improve refine`` command line asks for (defaults where absent)."""
        defaults = cls()
        given = {
            name: (value if value is not None else getattr(defaults, name))
            for name, value in cls.given_flags(args).items()
        }
        return cls(
            expert=args.expert,
            base_url=args.base_url,
            grammar=args.grammar,
            select=args.select,
            strategy=args.strategy,
            zero_shot=args.zero_shot,
            seeds=args.seeds,
            min_delta=args.min_delta,
            run_dir=Path(args.run_dir) if args.run_dir else None,
            resume=Path(args.resume) if args.resume else None,
            git=args.git,
            expert_seed=args.expert_seed,
            history=getattr(args, "history", True),
            **given,
        )

    @staticmethod
    def given_flags(args: argparse.Namespace) -> dict[str, Any]:
        """The ``OPTIONAL_FLAGS`` of a command line, None where not given; ``--ray-address``
        implies ``--executor ray``."""
        given = {name: getattr(args, name) for name in OPTIONAL_FLAGS}
        if given["ray_address"] is not None:
            given["executor"] = "ray"
        return given

    def to_json(self) -> dict[str, Any]:
        value = dataclasses.asdict(self)
        for key in ("run_dir", "resume"):
            if value[key] is not None:
                value[key] = str(value[key])
        return value

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> RefineOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in value.items() if k in names}
        for key in ("run_dir", "resume"):
            if known.get(key) is not None:
                known[key] = Path(known[key])
        return cls(**known)


@dataclass
class RefineResult:
    """How a run ended."""

    run_dir: Path
    spec_path: Path
    metric_name: str
    start_metric: float | None
    best_metric: float | None
    best_iteration: int
    best_spec: Path
    test_metric: float | None
    records: list[Record]
    stopped: str
    spec_updated: bool
    user_modified: bool

    def summary(self, test_metric_name: str | None) -> Summary:
        """The end of the run as the terminal shows it (no test name: no test run asked)."""
        counts: dict[str, int] = {}
        for record in self.records:
            if record.iteration > 0:
                counts[record.status] = counts.get(record.status, 0) + 1
        return Summary(
            metric_name=self.metric_name,
            start_metric=self.start_metric,
            best_metric=self.best_metric,
            best_iteration=self.best_iteration,
            test_metric_name=test_metric_name,
            test_metric=self.test_metric,
            counts=counts,
            stopped=self.stopped,
            best_spec=str(self.best_spec),
            spec_path=str(self.spec_path),
            spec_updated=self.spec_updated,
            user_modified=self.user_modified,
            run_dir=str(self.run_dir),
        )

    @property
    def gain(self) -> float | None:
        if self.start_metric is None or self.best_metric is None:
            return None
        return self.best_metric - self.start_metric
