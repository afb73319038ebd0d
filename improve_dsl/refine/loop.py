"""Iterative Refinement: select a block, propose a rewrite, check it, train it, keep it if better.

``refine(spec_path, options)`` first scores the starting spec (iteration 0, the baseline),
then each iteration:

1. selects a block (``--select``), or all refinable blocks (``--strategy all-at-once``);
2. asks the expert for a rewrite of that block (``proposing``);
3. checks it (``proposing``: one block of the right kind, locked fields untouched,
   validation and the compile-time shape check); a refused reply goes back with its
   diagnostics, at most ``proposing.MAX_RETRIES`` times, then the attempt is recorded
   ``invalid``;
4. trains it on the validation split (``trials``: ``--seeds K``; a repeat of an earlier
   script is read from the results cache; a run falling clearly behind the incumbent is
   pruned; an out-of-memory run is retried once with half the batch);
5. decides the round by the keep rule (``decide.KEEP_RULE``; ``decide.decide_round`` says how
   each candidate ended and which one is kept);
6. records it in the journal before the next attempt starts; a kept change is written back to
   the spec atomically (never over a user's edit) and, with ``--git``, committed
   (``publishing``).

The test split is never used until the end, when the best spec is scored on it once.
Starting and resuming a run (``resuming``) happen before the loop; this module is the loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import registry, validate
from ..evidence import Store
from ..executors import Executor, make_executor
from ..journal import BASELINE, Record, ResultCache, runs_root, sha256_text
from .candidates import Candidate, Incumbent
from .decide import Contender, Outcome, SeedResult, decide_round, last_score, mean_or_none
from .experts.base import Attempt, ExpertError
from .memory import Memory
from .options import RefineInterrupted, RefineOptions, RefineResult
from .proposing import Budget, Proposer
from .publishing import Publisher
from .reporting import NullReporter, Reporter, RunInfo
from .resuming import Session, rebuild_incumbent, resume, start
from .scripts import compile_script
from .select import Choice
from .trials import Trials


class Refiner:
    """One refinement run, new or resumed: the loop over select, propose, check, run, decide,
    record."""

    def __init__(self, session: Session, reporter: Reporter, executor: Executor) -> None:
        self.session = session
        self.spec_path = session.spec_path
        self.options = options = session.options
        self.run = session.run
        self.state = session.state
        self.reporter = reporter
        self.expert = session.expert
        self.start_text = self.run.start_spec.read_text(encoding="utf-8")
        start_spec = validate.load_text(self.start_text, str(self.spec_path))
        self.metric_key = f"val_{start_spec.pipeline.metric}"
        self.base_seed = start_spec.pipeline.seed
        self.seeds = [self.base_seed + i for i in range(options.seeds)]
        cache = ResultCache(runs_root(self.spec_path) / "cache")
        self.cache = cache
        self.executor = executor
        self.proposer = Proposer(
            self.expert,
            self.spec_path,
            self.start_text,
            self.metric_key,
            cache,
            reporter,
            self._budget,
            expert_seed=options.expert_seed,
        )
        self.trials = Trials(
            self.run,
            executor,
            cache,
            reporter,
            spec_path=self.spec_path,
            metric_key=self.metric_key,
            seeds=self.seeds,
            device=options.device,
            timeout=options.timeout,
            threads=options.threads,
            prune_margin=options.prune_margin,
        )
        self.publisher = Publisher(
            self.spec_path,
            self.run,
            self.state,
            self._save_state,
            reporter,
            git=options.git,
            metric_key=self.metric_key,
        )
        self.records: list[Record] = self.run.records()
        self.exhausted: set[str] = set()
        self.stopped = ""
        self.started = time.monotonic()
        self.incumbent = rebuild_incumbent(self.run, self.records, self.start_text)
        self.memory = Memory(
            Store() if options.history else None,
            self.run.path,
            self.start_text,
            str(self.spec_path),
            reporter.message,
            self.records,  # a resumed run's attempts, in case a kill beat the store to them
        )
        self.proposer.priors = self.memory.priors

    # ------------------------------------------------------------ bookkeeping

    @property
    def attempts(self) -> list[Record]:
        return [r for r in self.records if r.iteration > 0]

    @property
    def elapsed(self) -> float:
        return float(self.state.get("elapsed_seconds", 0.0)) + time.monotonic() - self.started

    @property
    def spent(self) -> float:
        return sum(r.cost_usd for r in self.records)

    def _history(self) -> list[Attempt]:
        # A candidate that beat the incumbent but lost to a sibling of its round did not fail:
        # its move is not marked tried, so an expert may offer it again on the new incumbent.
        return [
            Attempt(
                iteration=r.iteration,
                block=r.block,
                status=r.status,
                metric=r.metric,
                incumbent_metric=r.incumbent_metric,
                diff=r.diff,
                rationale=r.rationale,
                move="" if r.extras.get("outranked_by") else r.move,
                seconds=r.seconds or None,
            )
            for r in self.attempts
        ]

    def _budget(self) -> Budget:
        minutes = self.options.budget_minutes
        return Budget(
            incumbent_seconds=next(
                (r.seconds for r in self.records if r.iteration == self.incumbent.iteration), None
            ),
            budget_seconds=None if minutes is None else minutes * 60,
            elapsed_seconds=self.elapsed,
            max_cost=self.options.max_cost,
            spent_usd=self.spent,
            tried=frozenset(r.spec_sha256 for r in self.records if r.spec_sha256),
        )

    def _save_state(self, status: str = "running") -> None:
        self.state["elapsed_seconds"] = self.elapsed
        self.started = time.monotonic()
        self.state["status"] = status
        self.state["incumbent"] = {
            "iteration": self.incumbent.iteration,
            "metric": self.incumbent.metric,
            "spec_sha256": sha256_text(self.incumbent.text),
        }
        self.state["options"] = self.options.to_json()
        self.run.write_state(self.state)

    # ------------------------------------------------------------ the whole run

    def refine(self) -> RefineResult:
        options = self.options
        info = RunInfo(
            str(self.spec_path),
            str(self.run.path),
            self.expert.name,
            self.metric_key,
            self._target(),
            options.select,
            options.strategy,
            options.seeds,
            options.parallel,
            self.session.resumed,
        )
        self.reporter.run_started(info, self.records)
        try:
            if self.session.resumed and not self.state.get("user_modified"):
                self.publisher.reconcile(self._incumbent_record(), self.incumbent.text)
            if not self.records:
                self._baseline()
            while not self._should_stop():
                if not self._round():
                    break
            self._save_state("refined")
            test_metric = self._final_test() if options.test else None
            self._save_state("finished")
        except KeyboardInterrupt:
            self.executor.cancel_all()
            with contextlib.suppress(Exception):
                self._save_state("interrupted")
            raise RefineInterrupted(self.run.path) from None
        finally:
            self.executor.close()
        result = self._result(test_metric)
        test_name = self.metric_key.replace("val_", "test_", 1) if options.test else None
        self.reporter.finished(result.summary(test_name))
        return result

    def _incumbent_record(self) -> Record | None:
        return next((r for r in self.attempts if r.iteration == self.incumbent.iteration), None)

    def _target(self) -> int:
        return 1 if self.options.zero_shot else self.options.iters

    def _should_stop(self) -> bool:
        done = len(self.attempts)
        if done >= self._target():
            self.stopped = f"{done} iteration{'s' if done != 1 else ''} done"
            return True
        if self.options.budget_minutes is not None and (
            self.elapsed >= self.options.budget_minutes * 60
        ):
            self.stopped = f"the time budget of {self.options.budget_minutes:g} min is spent"
            return True
        if self.options.max_cost is not None and self.spent >= self.options.max_cost:
            self.stopped = f"the cost limit of ${self.options.max_cost:g} is reached"
            return True
        return False

    # ------------------------------------------------------------ baseline

    def _baseline(self) -> None:
        self.reporter.attempt_started(0, BASELINE, "—", "scoring the starting spec")
        started = time.monotonic()
        script = compile_script(self.start_text, str(self.spec_path), self.cache)
        candidate = Candidate.without_proposal(
            iteration=0, label=BASELINE, text=self.start_text, script=script
        )
        self.trials.write_candidate(candidate)
        self.trials.train([candidate], self.incumbent, prune=False)
        runs = candidate.runs
        metrics = [r.metric for r in runs]
        ok = all(r.status == "ok" for r in runs)
        metric = mean_or_none([m for m in metrics if m is not None]) if ok else None
        record = Record(
            iteration=0,
            block=BASELINE,
            status="accepted" if ok else "failed",
            metric=metric,
            incumbent_metric=None,
            spec_sha256=sha256_text(self.start_text),
            rationale="the starting spec",
            expert="",
            seconds=round(time.monotonic() - started, 3),
            extras=candidate.run_extras(self.seeds),
        )
        if ok:
            self.incumbent = Incumbent.of(0, self.start_text, candidate)
            self.run.write_best(self.start_text)
        self._record(record)
        self._remember(record, self.start_text, candidate)

    # ------------------------------------------------------------ one round

    def _round(self) -> bool:
        """Propose up to ``parallel // seeds`` candidates, train them, decide, record them.

        False when the expert has nothing left to propose (or failed outright)."""
        width = max(1, self.options.parallel // self.options.seeds)
        width = min(width, self._target() - len(self.attempts))
        next_iteration = max((r.iteration for r in self.records), default=0) + 1
        round_: list[Candidate] = []
        for offset in range(width):
            try:
                candidate = self._propose(next_iteration + offset, round_)
            except ExpertError as exc:
                self.stopped = f"the expert failed: {exc}"
                if not round_:
                    return False
                break
            if candidate is None:
                if not round_:
                    self.stopped = "the expert has no move left to try"
                    return False
                break
            round_.append(candidate)
        valid = [c for c in round_ if c.valid]
        for candidate in valid:
            self.trials.write_candidate(candidate)
        if valid:
            self.trials.train(valid, self.incumbent, prune=self.options.prune)
        self._decide(round_)
        return not self.stopped.startswith("the expert failed")

    def _propose(self, iteration: int, pending: Sequence[Candidate]) -> Candidate | None:
        """Select a block and get a checked proposal for it (None: nothing left to try)."""
        history = self._history() + [c.attempt(self.incumbent.metric) for c in pending]
        while True:
            choice: Choice | None
            if self.options.strategy == "all-at-once":
                if "all" in self.exhausted:
                    return None
                blocks, label = tuple(registry.REFINABLE_BLOCKS), "all"
                choice = Choice("all", "all blocks at once", "all-at-once")
            else:
                choice = self.proposer.choose(
                    self.options.select, self.incumbent, history, self.exhausted
                )
                if choice is None:
                    return None
                blocks, label = (choice.block,), choice.block
            self.reporter.attempt_started(iteration, label, self.expert.name, choice.reason)
            candidate = self.proposer.ask(iteration, self.incumbent, choice, blocks, label, history)
            if candidate is not None:
                return candidate
            self.reporter.message(
                f"[{iteration}] {label}: the expert has nothing left to try there"
            )
            self.exhausted.add(label)

    # ------------------------------------------------------------ deciding and recording

    def _decide(self, round_: Sequence[Candidate]) -> None:
        """Decide the round (``decide.decide_round``), then apply and record each outcome."""
        incumbent = self.incumbent
        decision = decide_round(
            [self._contender(c) for c in round_],
            incumbent.measurement(self.metric_key),
            self.options.min_delta,
        )
        for candidate, outcome in zip(round_, decision.outcomes, strict=True):
            self._finish(candidate, outcome, incumbent)

    def _contender(self, candidate: Candidate) -> Contender:
        """What deciding reads of a candidate of the round."""
        if not candidate.valid:
            return Contender(candidate.iteration, None)
        runs = tuple(
            SeedResult(r.status, r.metric, r.cached, last_score(r.history, self.metric_key))
            for r in candidate.runs
        )
        return Contender(candidate.iteration, runs, candidate.measurement(self.metric_key))

    def _finish(self, candidate: Candidate, outcome: Outcome, incumbent: Incumbent) -> None:
        record = candidate.record(
            outcome.status,
            outcome.metric,
            incumbent,
            self.expert.name,
            self.seeds,
            outranked_by=outcome.outranked_by,
            verdict=outcome.verdict,
        )
        if outcome.status == "accepted":
            assert candidate.text is not None and outcome.metric is not None
            self.incumbent = Incumbent.of(candidate.iteration, candidate.text, candidate)
            self.exhausted.clear()  # a new incumbent opens new moves
            self.run.write_best(candidate.text)
        self._record(record)
        self._remember(record, incumbent.text, candidate)
        if outcome.status == "accepted":
            self.publisher.publish(record, self.incumbent.text)

    def _record(self, record: Record) -> None:
        """Journal first (the truth), then the state that mirrors it."""
        self.run.append(record)
        self.records.append(record)
        self.records.sort(key=lambda r: r.iteration)
        self._save_state()
        self.reporter.attempt_finished(record)

    def _remember(self, record: Record, before: str, candidate: Candidate) -> None:
        """The attempt into the evidence store (after the journal: the journal is the truth)."""
        devices = [r.device for r in candidate.runs]
        self.memory.remember(record, before, candidate.text, candidate.script, devices)

    # ------------------------------------------------------------ the end

    def _final_test(self) -> float | None:
        """Score the best spec once on the test split; never feeds back into refinement."""
        if self.incumbent.metric is None:
            return None
        self.reporter.message("scoring the best spec once on the test split…")
        return self.trials.final_test(self.incumbent, self.base_seed, self._start_metric())

    def _start_metric(self) -> float | None:
        baseline = next((r for r in self.records if r.iteration == 0), None)
        return baseline.metric if baseline else None

    def _result(self, test_metric: float | None) -> RefineResult:
        return RefineResult(
            run_dir=self.run.path,
            spec_path=self.spec_path,
            metric_name=self.metric_key,
            start_metric=self._start_metric(),
            best_metric=self.incumbent.metric,
            best_iteration=self.incumbent.iteration,
            best_spec=self.run.best_spec,
            test_metric=test_metric,
            records=list(self.records),
            stopped=self.stopped,
            spec_updated=(not self.state.get("user_modified"))
            and self.state.get("spec_written_sha256") != sha256_text(self.start_text),
            user_modified=bool(self.state.get("user_modified")),
        )


# ---------------------------------------------------------------- entry point


def refine(
    spec_path: Path | None,
    options: RefineOptions,
    reporter: Reporter | None = None,
    overrides: Mapping[str, Any] | None = None,
    executor: Executor | None = None,
) -> RefineResult:
    """Refine ``spec_path`` (or resume ``options.resume``); see the module docstring.

    With ``options.resume`` the run's stored options are used, changed only by ``overrides``
    (the flags given on the resuming command line, among ``resuming.RESUMABLE``).
    ``executor`` runs the training jobs (default: the one the options name); it is closed at
    the end. ``options`` itself is never changed.
    """
    reporter = reporter or NullReporter()
    try:
        if options.resume is not None:
            session = resume(Path(options.resume), spec_path, overrides or {}, reporter)
        else:
            session = start(spec_path, options, reporter)
        run_options = session.options
        if executor is None:
            executor = make_executor(
                run_options.executor,
                parallel=run_options.parallel,
                device=run_options.device,
                threads=run_options.threads,
                address=run_options.ray_address,
            )
        return Refiner(session, reporter, executor).refine()
    finally:
        reporter.close()
