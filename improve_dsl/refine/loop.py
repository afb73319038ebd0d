"""Iterative Refinement: select a block, propose a rewrite, check it, train it, keep it if better.

``refine(spec_path, options)`` first scores the starting spec (iteration 0, the baseline),
then each iteration:

1. selects a block (``--select``), or all refinable blocks (``--strategy all-at-once``);
2. asks the expert for a rewrite of that block;
3. checks it (``edit.apply_edit``: one block of the right kind, locked fields untouched,
   validation and the compile-time shape check); a refused reply goes back with its
   diagnostics, at most 3 times, then the attempt is recorded ``invalid``;
4. trains it on the validation split (``--seeds K``; a repeat of an earlier script is read from
   the results cache; a run falling clearly behind the incumbent is pruned; an out-of-memory
   run is retried once with half the batch);
5. keeps it when its mean score beats the incumbent's by more than ``--min-delta`` (and, with
   several seeds, by more than the incumbent's seed noise);
6. records it in the journal before the next attempt starts; a kept change is written back to
   the spec atomically (never over a user's edit) and, with ``--git``, committed.

The test split is never used until the end, when the best spec is scored on it once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import registry, validate
from ..diagnostics import DiagnosticError
from ..executors import Executor, JobHandle, TrainJob, make_executor
from ..journal import (
    BASELINE,
    Record,
    ResultCache,
    RunDir,
    atomic_write_json,
    atomic_write_text,
    new_run_id,
    runs_root,
    sha256_text,
)
from ..syntax import read_spec_text
from . import edit
from .decide import Verdict, decide, should_prune
from .expert import Attempt, Context, Expert, ExpertError, NoMoreMoves, Proposal
from .gitlog import GitError, git_commit, git_root, uncommitted_change
from .live import NullReporter, Reporter, RunInfo, Summary
from .options import (
    RefineError,
    RefineInterrupted,
    RefineOptions,
    RefineResult,
    make_expert,
)
from .select import Choice, choose_block
from .state import Candidate, Incumbent, SeedRun, compile_script, mean_or_none, unified_diff

MAX_RETRIES = 3  # refused replies fed back before an attempt counts as invalid
STATE_VERSION = 1


# ---------------------------------------------------------------- the loop


class Refiner:
    """One refinement run, new or resumed."""

    def __init__(
        self,
        spec_path: Path,
        options: RefineOptions,
        run: RunDir,
        state: dict[str, Any],
        reporter: Reporter,
        resumed: bool,
        expert: Expert | None = None,
    ) -> None:
        self.spec_path = spec_path
        self.options = options
        self.run = run
        self.state = state
        self.reporter = reporter
        self.resumed = resumed
        self.start_text = run.start_spec.read_text(encoding="utf-8")
        start_spec = validate.load_text(self.start_text, str(spec_path))
        self.metric_key = f"val_{start_spec.pipeline.metric}"
        self.base_seed = start_spec.pipeline.seed
        self.seeds = [self.base_seed + i for i in range(options.seeds)]
        self.cache = ResultCache(runs_root(spec_path) / "cache")
        self.expert = expert or make_expert(
            options.expert,
            base_url=options.base_url,
            seed=options.expert_seed,
            max_cost=options.max_cost,
            grammar=options.grammar,
            notify=reporter.message,
        )
        self.executor: Executor | None = None
        self.records: list[Record] = run.records()
        self.exhausted: set[str] = set()
        self.stopped = ""
        self.started = time.monotonic()
        self._profile: str | None = None
        if options.zero_shot:
            options.strategy = "all-at-once"
        self.incumbent = self._rebuild_incumbent()

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
                r.iteration,
                r.block,
                r.status,
                r.metric,
                r.incumbent_metric,
                r.diff,
                r.rationale,
                "" if r.extras.get("outranked_by") else r.move,
                r.seconds or None,
            )
            for r in self.attempts
        ]

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

    def _rebuild_incumbent(self) -> Incumbent:
        """The incumbent after the recorded attempts: the last accepted one, else the start."""
        best = Incumbent(0, self.start_text, None, [], [])
        for record in self.records:
            if record.status != "accepted":
                continue
            folder = self.run.candidate_dir(record.iteration)
            text = (
                self.start_text
                if record.iteration == 0
                else (folder / "spec.imp").read_text(encoding="utf-8")
            )
            metrics = [
                m if isinstance(m, (int, float)) else None
                for m in record.extras.get("metrics", [record.metric])
            ]
            eval_size = record.extras.get("eval_size")
            best = Incumbent(
                record.iteration,
                text,
                record.metric,
                metrics,
                self._read_curves(folder),
                eval_size if isinstance(eval_size, int) else 0,
                float(record.extras.get("train_seconds") or 0.0),
            )
        return best

    @staticmethod
    def _incumbent_of(iteration: int, text: str, candidate: Candidate) -> Incumbent:
        runs = candidate.runs
        ok = [r for r in runs if r.status == "ok"]
        return Incumbent(
            iteration,
            text,
            mean_or_none([r.metric for r in ok if r.metric is not None]),
            [r.metric for r in runs],
            runs[0].history if runs else [],
            max((r.eval_size for r in ok), default=0),
            sum(r.seconds for r in ok) / len(ok) if ok else 0.0,
        )

    @staticmethod
    def _read_curves(folder: Path) -> list[dict[str, Any]]:
        with contextlib.suppress(OSError, ValueError):
            value = json.loads((folder / "result.json").read_text(encoding="utf-8"))
            runs = value.get("runs") or []
            for run in runs:
                if run.get("history"):
                    return list(run["history"])
        return []

    def _profile_text(self) -> str:
        if self._profile is None:
            self._profile = ""
            with contextlib.suppress(Exception):  # a profile only helps; never fatal
                from ..profile import profile_dataset

                spec = validate.load_text(self.start_text, str(self.spec_path))
                self._profile = str(profile_dataset(spec.data.source).describe())
        return self._profile

    def _context(
        self,
        blocks: tuple[str, ...],
        history: Sequence[Attempt],
        feedback: str | None = None,
        previous: str | None = None,
    ) -> Context:
        budget = self.options.budget_minutes
        return Context(
            spec_text=self.incumbent.text,
            spec_path=str(self.spec_path),
            blocks=blocks,
            profile=self._profile_text() if self.expert.name != "heuristic" else "",
            metric_name=self.metric_key,
            incumbent_metric=self.incumbent.metric,
            curves=self.incumbent.curves,
            history=history,
            seed=self.options.expert_seed,
            feedback=feedback,
            previous_reply=previous,
            incumbent_seconds=next(
                (r.seconds for r in self.records if r.iteration == self.incumbent.iteration), None
            ),
            budget_seconds=None if budget is None else budget * 60,
            elapsed_seconds=self.elapsed,
            max_cost=self.options.max_cost,
            spent_usd=self.spent,
            tried=frozenset(r.spec_sha256 for r in self.records if r.spec_sha256),
        )

    # ------------------------------------------------------------ the whole run

    def refine(self) -> RefineResult:
        options = self.options
        if options.git:
            try:
                git_root(self.spec_path)
            except GitError as exc:
                raise RefineError(str(exc)) from None
        self.executor = make_executor(
            options.executor,
            parallel=options.parallel,
            device=options.device,
            threads=options.threads,
            address=options.ray_address,
        )
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
            self.resumed,
        )
        self.reporter.run_started(info, self.records)
        try:
            self._reconcile_spec()
            if not self.records:
                self._baseline()
            while not self._should_stop():
                if not self._round():
                    break
            self._save_state("refined")
            test_metric = self._final_test() if options.test else None
            self._save_state("finished")
        except KeyboardInterrupt:
            if self.executor is not None:
                self.executor.cancel_all()
            with contextlib.suppress(Exception):
                self._save_state("interrupted")
            raise RefineInterrupted(self.run.path) from None
        finally:
            if self.executor is not None:
                self.executor.close()
        result = self._result(test_metric)
        self.reporter.finished(self._summary(result))
        return result

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
        candidate = Candidate(0, (), BASELINE, self.start_text, script, None, None, 0, 0.0, 0.0, 0)
        self._write_candidate(candidate)
        self._train([candidate], prune=False)
        runs = candidate.runs
        metrics = [r.metric for r in runs]
        ok = all(r.status == "ok" for r in runs)
        metric = mean_or_none([m for m in metrics if m is not None]) if ok else None
        extras = self._extras(candidate)
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
            extras=extras,
        )
        if ok:
            self.incumbent = self._incumbent_of(0, self.start_text, candidate)
            self.run.write_best(self.start_text)
        self._record(record)

    # ------------------------------------------------------------ one round

    def _round(self) -> bool:
        """Propose up to ``parallel // seeds`` candidates, train them, record them.

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
            self._write_candidate(candidate)
        if valid:
            self._train(valid, prune=self.options.prune)
        self._decide(round_)
        return not self.stopped.startswith("the expert failed")

    def _propose(self, iteration: int, pending: Sequence[Candidate]) -> Candidate | None:
        """Select a block and get a checked proposal for it (None: nothing left to try)."""
        history = self._history() + [c.attempt(self.incumbent.metric) for c in pending]
        refinable = registry.REFINABLE_BLOCKS
        while True:
            choice: Choice | None
            if self.options.strategy == "all-at-once":
                if "all" in self.exhausted:
                    return None
                blocks, label = tuple(refinable), "all"
                choice = Choice("all", "all blocks at once", "all-at-once")
            else:
                choice = self._choose(history, refinable)
                if choice is None:
                    return None
                blocks, label = (choice.block,), choice.block
            self.reporter.attempt_started(iteration, label, self.expert.name, choice.reason)
            candidate = self._ask(iteration, blocks, label, history, choice)
            if candidate is not None:
                return candidate
            self.reporter.message(
                f"[{iteration}] {label}: the expert has nothing left to try there"
            )
            self.exhausted.add(label)

    def _choose(self, history: Sequence[Attempt], refinable: Sequence[str]) -> Choice | None:
        context = self._context((), history)
        try:
            return choose_block(
                self.options.select, self.expert, context, refinable, self.exhausted
            )
        except ExpertError as exc:
            # The analyst could not answer: the rules over the curves decide instead.
            self.reporter.message(f"the analyst failed ({exc}); selecting by diagnosis")
            return choose_block("diagnose", self.expert, context, refinable, self.exhausted)

    def _ask(
        self,
        iteration: int,
        blocks: tuple[str, ...],
        label: str,
        history: Sequence[Attempt],
        choice: Choice,
    ) -> Candidate | None:
        """Up to 1 + MAX_RETRIES replies; a checked candidate, an invalid one, or None."""
        started = time.monotonic()
        tokens, cost = choice.tokens, choice.cost_usd
        feedback: str | None = None
        previous: str | None = None
        proposal: Proposal | None = None
        refused = 0
        for retry in range(MAX_RETRIES + 1):
            context = self._context(blocks, history, feedback, previous)
            try:
                proposal = self.expert.propose(context)
            except NoMoreMoves:
                if retry == 0:
                    return None
                break  # out of replies after refused ones: the attempt was invalid
            except edit.EditError as exc:  # a reply of the wrong shape, already paid for
                tokens += exc.tokens
                cost += exc.cost_usd
                proposal = proposal or Proposal(
                    "", "", raw=exc.raw, grammar=exc.grammar, grammar_note=exc.grammar_note
                )
                feedback, previous = edit.feedback_for(exc), exc.raw
                refused += 1
                continue
            tokens += proposal.tokens
            cost += proposal.cost_usd
            try:
                text = edit.apply_edit(
                    self.incumbent.text,
                    str(self.spec_path),
                    blocks,
                    proposal.text,
                    check_shapes=False,
                )
                self._guard(text, blocks)
                script = compile_script(text, str(self.spec_path), self.cache)
            except (edit.EditError, DiagnosticError) as exc:
                if isinstance(exc, DiagnosticError):
                    note = (
                        f"nothing was applied: the spec is unchanged; fix the reply and "
                        f"{edit.ask_for(blocks)}"
                    )
                    if note not in exc.extra:
                        exc.extra.append(note)
                feedback, previous = edit.feedback_for(exc), proposal.raw or proposal.text
                refused += 1
                continue
            return Candidate(
                iteration,
                blocks,
                label,
                text,
                script,
                proposal,
                choice,
                tokens,
                cost,
                time.monotonic() - started,
                retry,
            )
        return Candidate(
            iteration,
            blocks,
            label,
            None,
            None,
            proposal,
            choice,
            tokens,
            cost,
            time.monotonic() - started,
            max(0, refused - 1),
            feedback,
            previous or "",
        )

    def _guard(self, text: str, blocks: Sequence[str]) -> None:
        """Belt and braces: only the asked-for blocks changed, and no locked field."""
        before = validate.load_text(self.incumbent.text, str(self.spec_path))
        after = validate.load_text(text, str(self.spec_path))
        for name in registry.BLOCK_NAMES:
            if name not in blocks and getattr(before, name) != getattr(after, name):
                raise edit.EditError(
                    f"the proposal changes block '{name}', which was not asked "
                    f"for; {edit.ask_for(blocks)}"
                )
        for block_name, field_name in registry.locked_fields():
            old = getattr(getattr(before, block_name), field_name)
            if old != getattr(getattr(after, block_name), field_name):
                raise edit.EditError(
                    f"'{field_name}' in block '{block_name}' is locked: refinement never changes it"
                )

    # ------------------------------------------------------------ training

    def _write_candidate(self, candidate: Candidate) -> None:
        folder = self.run.candidate_dir(candidate.iteration)
        if folder.exists():  # a round cut short by a kill: its attempts are redone
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        assert candidate.text is not None and candidate.script is not None
        atomic_write_text(folder / "spec.imp", candidate.text)
        atomic_write_text(folder / "train.py", candidate.script)

    def _out_dir(self, candidate: Candidate, seed: int) -> Path:
        folder = self.run.candidate_dir(candidate.iteration)
        return folder if len(self.seeds) == 1 else folder / f"seed-{seed}"

    def _train(self, candidates: Sequence[Candidate], prune: bool) -> None:
        """Every seed of every candidate: from the cache, else on the executor."""
        assert self.executor is not None
        handles: list[JobHandle] = []
        for candidate in candidates:
            assert candidate.script is not None
            started = time.monotonic()
            for seed in self.seeds:
                key = self.cache.key(candidate.script, seed, "val")
                hit = self.cache.get(key)
                if hit is not None:
                    run = SeedRun.from_cache(seed, hit)
                    candidate.runs.append(run)
                    out = self._out_dir(candidate, seed)
                    out.mkdir(parents=True, exist_ok=True)
                    atomic_write_json(out / "metrics.json", {**hit, "cached": True, "seed": seed})
                    continue
                handles.append(self._submit(candidate, seed, None, prune))
            candidate.run_seconds = time.monotonic() - started
        pending = list(handles)
        while pending:
            handle, result = next(iter(self.executor.as_completed(pending)))
            pending.remove(handle)
            candidate, seed, batch = handle.job.tag
            if result.status == "interrupted":
                raise KeyboardInterrupt
            if result.status == "oom" and batch is None:
                half = self._half_batch(candidate)
                if half is not None:
                    self.reporter.message(
                        f"[{candidate.iteration}] out of memory; retrying "
                        f"once with batch size {half}"
                    )
                    pending.append(self._submit(candidate, seed, half, prune))
                    continue
            run = SeedRun.of(seed, result, batch)
            candidate.runs.append(run)
            candidate.run_seconds += result.seconds
            if result.status in ("ok", "nan") and batch is None and candidate.script:
                self.cache.put(self.cache.key(candidate.script, seed, "val"), run.to_cache())
        for candidate in candidates:
            candidate.runs.sort(key=lambda r: r.seed)
            folder = self.run.candidate_dir(candidate.iteration)
            atomic_write_json(
                folder / "result.json",
                {
                    "iteration": candidate.iteration,
                    "runs": [dataclasses.asdict(r) for r in candidate.runs],
                },
            )

    def _half_batch(self, candidate: Candidate) -> int | None:
        assert candidate.text is not None
        batch = validate.load_text(candidate.text, str(self.spec_path)).data.batch_size
        return batch // 2 if batch >= 2 else None

    def _submit(self, candidate: Candidate, seed: int, batch: int | None, prune: bool) -> JobHandle:
        assert self.executor is not None
        folder = self.run.candidate_dir(candidate.iteration)
        job = TrainJob(
            script=folder / "train.py",
            out_dir=self._out_dir(candidate, seed),
            split="val",
            seed=seed,
            device=self.options.device,
            timeout=self.options.timeout,
            batch_size=batch,
            threads=self.options.threads,
            on_event=self._watcher(candidate, seed, prune),
            tag=(candidate, seed, batch),
        )
        return self.executor.submit(job)

    def _watcher(self, candidate: Candidate, seed: int, prune: bool) -> Any:
        reference = self.incumbent.measurement(self.metric_key)
        show_seed = seed if len(self.seeds) > 1 else None
        peak_lr = 0.0

        def on_event(event: dict[str, Any]) -> bool:
            nonlocal peak_lr
            self.reporter.progress(candidate.iteration, show_seed, event)
            if not prune or event.get("event") != "epoch":
                return True
            lr = event.get("lr")
            if isinstance(lr, (int, float)):
                peak_lr = max(peak_lr, float(lr))
            if not should_prune(
                event, peak_lr, reference, self.metric_key, self.options.prune_margin
            ):
                return True
            epoch = event.get("epoch")
            candidate.pruned_at = epoch if isinstance(epoch, int) else None
            return False

        return on_event

    # ------------------------------------------------------------ deciding and recording

    def _extras(self, candidate: Candidate) -> dict[str, Any]:
        extras: dict[str, Any] = {
            "seeds": [r.seed for r in candidate.runs] or list(self.seeds),
            "metrics": [r.metric for r in candidate.runs],
            "candidate": f"candidates/{candidate.iteration}",
        }
        ok = [r for r in candidate.runs if r.status == "ok"]
        if ok:
            extras["eval_size"] = max(r.eval_size for r in ok)
            extras["train_seconds"] = round(sum(r.seconds for r in ok) / len(ok), 3)
        if candidate.runs and all(r.cached for r in candidate.runs):
            extras["cached"] = True
        reasons = [r.reason for r in candidate.runs if r.status != "ok" and r.reason]
        if reasons:
            extras["reason"] = reasons[0]
        batches = {r.batch_size for r in candidate.runs if r.batch_size is not None}
        if batches:
            extras["batch_size"] = min(batches)
        return extras

    def _decide(self, round_: Sequence[Candidate]) -> None:
        incumbent = self.incumbent
        outcomes: dict[int, tuple[str, float | None]] = {}
        verdicts: dict[int, Verdict] = {}
        winners: list[tuple[float, Candidate]] = []
        for candidate in round_:
            if not candidate.valid:
                outcomes[candidate.iteration] = ("invalid", None)
                continue
            runs = candidate.runs
            ok = [r.metric for r in runs if r.status == "ok" and r.metric is not None]
            if len(ok) == len(runs) and runs:
                metric = mean_or_none(ok)
                assert metric is not None
                outcomes[candidate.iteration] = ("scored", metric)
                verdict = self._verdict(candidate, incumbent)
                verdicts[candidate.iteration] = verdict
                if verdict.keep:
                    winners.append((metric, candidate))
            elif any(r.status == "pruned" for r in runs) and not any(
                r.status in ("failed", "timeout", "nan", "oom") for r in runs
            ):
                last = [r.history[-1].get(self.metric_key) for r in runs if r.history]
                values = [float(v) for v in last if isinstance(v, (int, float))]
                outcomes[candidate.iteration] = ("pruned", mean_or_none(values))
            else:
                outcomes[candidate.iteration] = ("failed", mean_or_none(ok))
        best = max(winners, key=lambda w: w[0])[1] if winners else None
        for candidate in round_:
            kind, metric = outcomes[candidate.iteration]
            outranked_by = None
            if kind == "scored":
                if candidate is best:
                    status = "accepted"
                elif candidate.runs and all(r.cached for r in candidate.runs):
                    status = "cached"
                else:
                    status = "rejected"
                if (
                    best is not None
                    and candidate is not best
                    and any(c is candidate for _, c in winners)
                ):
                    outranked_by = best.iteration
            else:
                status = kind
            self._finish(
                candidate,
                status,
                metric,
                incumbent,
                outranked_by,
                verdicts.get(candidate.iteration),
            )

    def _verdict(self, candidate: Candidate, incumbent: Incumbent) -> Verdict:
        measured = candidate.measurement(self.metric_key)
        assert measured is not None
        return decide(measured, incumbent.measurement(self.metric_key), self.options.min_delta)

    def _finish(
        self,
        candidate: Candidate,
        status: str,
        metric: float | None,
        incumbent: Incumbent,
        outranked_by: int | None = None,
        verdict: Verdict | None = None,
    ) -> None:
        proposal = candidate.proposal
        extras = self._extras(candidate) if candidate.valid else {}
        if verdict is not None:
            extras["decision"] = verdict.to_json()
        if outranked_by is not None:
            extras["outranked_by"] = outranked_by
            extras["reason"] = (
                f"it beat the incumbent, but iteration {outranked_by} of the same round did better"
            )
        extras["move"] = proposal.move if proposal else ""
        if proposal and proposal.grammar:  # how the reply was constrained
            extras["grammar"] = proposal.grammar
        if proposal and proposal.grammar_note:  # a constraint the server refused on the way
            extras["grammar_note"] = proposal.grammar_note
        if candidate.choice is not None:
            extras["selector"] = candidate.choice.selector
            extras["selection"] = candidate.choice.reason
        extras["retries"] = candidate.retries
        extras["propose_seconds"] = round(candidate.propose_seconds, 3)
        if status == "invalid":
            extras["reason"] = (
                (candidate.feedback or "").splitlines()[0]
                if (candidate.feedback)
                else "the reply could not be used"
            )
            extras["feedback"] = candidate.feedback or ""
            extras["reply"] = candidate.reply
        if status == "pruned" and candidate.pruned_at is not None:
            extras["reason"] = (
                f"pruned at epoch {candidate.pruned_at}: clearly below the incumbent "
                "(beyond its noise, with little training left to close the gap)"
            )
        if len(self.seeds) > 1 and candidate.runs:
            values = [r.metric for r in candidate.runs if r.metric is not None]
            extras["std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        text = candidate.text or ""
        record = Record(
            iteration=candidate.iteration,
            block=candidate.label,
            status=status,
            metric=metric,
            incumbent_metric=incumbent.metric,
            spec_sha256=sha256_text(text) if text else "",
            diff=unified_diff(incumbent.text, text, candidate.iteration) if text else "",
            rationale=proposal.rationale if proposal else "",
            expert=self.expert.name,
            tokens=candidate.tokens,
            cost_usd=round(candidate.cost_usd, 6),
            seconds=round(candidate.run_seconds, 3),
            extras=extras,
        )
        if status == "accepted":
            assert candidate.text is not None and metric is not None
            self.incumbent = self._incumbent_of(candidate.iteration, candidate.text, candidate)
            self.exhausted.clear()  # a new incumbent opens new moves
            self.run.write_best(candidate.text)
        self._record(record)
        if status == "accepted":
            self._publish(record)

    def _record(self, record: Record) -> None:
        """Journal first (the truth), then the state that mirrors it."""
        self.run.append(record)
        self.records.append(record)
        self.records.sort(key=lambda r: r.iteration)
        self._save_state()
        self.reporter.attempt_finished(record)

    # ------------------------------------------------------------ the user's spec

    def _spec_sha(self) -> str | None:
        try:
            return sha256_text(read_spec_text(self.spec_path))
        except DiagnosticError:
            return None

    def _reconcile_spec(self) -> None:
        """On resume: finish a write-back a kill interrupted (never over a user's edit)."""
        if not self.resumed or self.state.get("user_modified"):
            return
        wanted = sha256_text(self.incumbent.text)
        current = self._spec_sha()
        record = next((r for r in self.attempts if r.iteration == self.incumbent.iteration), None)
        if current == wanted:
            self.state["spec_written_sha256"] = wanted
            # Killed between writing the spec and committing it: commit it now.
            committed = int(self.state.get("committed_iteration", 0))
            if (
                self.options.git
                and record is not None
                and committed < record.iteration
                and git_commit(self.spec_path, self._commit_message(record)) is None
            ):
                self.state["committed_iteration"] = record.iteration
            return
        if record is not None:
            self._publish(record)

    def _publish(self, record: Record) -> None:
        """Write the accepted spec back to the user's file and, with --git, commit it."""
        if self.state.get("user_modified"):
            return
        current = self._spec_sha()
        if current is None or current != self.state.get("spec_written_sha256"):
            self.state["user_modified"] = True
            self._save_state()
            self.reporter.message(
                f"{self.spec_path} was changed outside this run; it is left untouched from now "
                f"on, and the best spec is kept in {self.run.best_spec}"
            )
            return
        atomic_write_text(self.spec_path, self.incumbent.text)
        self.state["spec_written_sha256"] = sha256_text(self.incumbent.text)
        self._save_state()
        if self.options.git:
            problem = git_commit(self.spec_path, self._commit_message(record))
            if problem:
                self.reporter.message(f"git commit failed: {problem}")
            else:
                self.state["committed_iteration"] = record.iteration
                self._save_state()

    def _commit_message(self, record: Record) -> str:
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

    # ------------------------------------------------------------ the end

    def _final_test(self) -> float | None:
        """Score the best spec once on the test split; never feeds back into refinement."""
        assert self.executor is not None
        text = self.incumbent.text
        if self.incumbent.metric is None:
            return None
        self.reporter.message("scoring the best spec once on the test split…")
        script = compile_script(text, str(self.spec_path), self.cache)
        folder = self.run.path / "test"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        atomic_write_text(folder / "spec.imp", text)
        atomic_write_text(folder / "train.py", script)
        key = self.cache.key(script, self.base_seed, "test")
        hit = self.cache.get(key)
        if hit is not None:
            status, metric, reason = str(hit.get("status")), hit.get("metric"), hit.get("reason")
        else:
            job = TrainJob(
                script=folder / "train.py",
                out_dir=folder,
                split="test",
                seed=self.base_seed,
                device=self.options.device,
                timeout=self.options.timeout,
                threads=self.options.threads,
            )
            result = self.executor.wait(self.executor.submit(job))
            if result.status == "interrupted":
                raise KeyboardInterrupt
            status, metric, reason = result.status, result.metric, result.reason
            if result.status == "ok":
                self.cache.put(
                    key,
                    {
                        "status": status,
                        "metric": metric,
                        "history": result.history,
                        "reason": None,
                        "seconds": result.seconds,
                    },
                )
        test_name = self.metric_key.replace("val_", "test_", 1)
        self.run.write_final(
            {
                "metric_name": test_name,
                "test_metric": metric if status == "ok" else None,
                "status": status,
                "reason": reason,
                "seed": self.base_seed,
                "best_iteration": self.incumbent.iteration,
                "best_spec_sha256": sha256_text(text),
                "val_metric_name": self.metric_key,
                "val_metric": self.incumbent.metric,
                "start_val_metric": self._start_metric(),
            }
        )
        if status != "ok":
            self.reporter.message(f"the test run failed: {reason}")
            return None
        return float(metric) if isinstance(metric, (int, float)) else None

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

    def _summary(self, result: RefineResult) -> Summary:
        counts: dict[str, int] = {}
        for record in self.attempts:
            counts[record.status] = counts.get(record.status, 0) + 1
        return Summary(
            metric_name=result.metric_name,
            start_metric=result.start_metric,
            best_metric=result.best_metric,
            best_iteration=result.best_iteration,
            test_metric_name=(
                self.metric_key.replace("val_", "test_", 1) if self.options.test else None
            ),
            test_metric=result.test_metric,
            counts=counts,
            stopped=result.stopped,
            best_spec=str(result.best_spec),
            spec_path=str(result.spec_path),
            spec_updated=result.spec_updated,
            user_modified=result.user_modified,
            run_dir=str(result.run_dir),
        )


# ---------------------------------------------------------------- entry point

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


def refine(
    spec_path: Path | None,
    options: RefineOptions,
    reporter: Reporter | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RefineResult:
    """Refine ``spec_path`` (or resume ``options.resume``); see the module docstring.

    With ``options.resume`` the run's stored options are used, changed only by ``overrides``
    (the flags given on the resuming command line, among ``RESUMABLE``).
    """
    reporter = reporter or NullReporter()
    try:
        if options.resume is not None:
            refiner = _resume(Path(options.resume), spec_path, overrides or {}, reporter)
        else:
            refiner = _start(spec_path, options, reporter)
        return refiner.refine()
    finally:
        reporter.close()


def _start(spec_path: Path | None, options: RefineOptions, reporter: Reporter) -> Refiner:
    if spec_path is None:
        raise RefineError("give a spec to refine, or --resume RUN_DIR")
    options.check()
    text = read_spec_text(spec_path)
    validate.load_text(text, str(spec_path))  # diagnostics before anything is created
    if options.git:
        try:
            git_root(spec_path)
        except GitError as exc:
            raise RefineError(str(exc)) from None
        problem = uncommitted_change(spec_path)
        if problem is not None:
            raise RefineError(
                f"--git: {problem}; the first 'improve:' commit would take them along. "
                f"Commit the spec first (git add {spec_path.name} && git commit), or run "
                "without --git"
            )
    # The expert first: a missing API key must not leave an empty run behind.
    expert = make_expert(
        options.expert,
        base_url=options.base_url,
        seed=options.expert_seed,
        max_cost=options.max_cost,
        grammar=options.grammar,
        notify=reporter.message,
    )
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
    return Refiner(spec_path, options, run, state, reporter, resumed=False, expert=expert)


def _resume(
    path: Path, spec_path: Path | None, overrides: Mapping[str, Any], reporter: Reporter
) -> Refiner:
    from ..journal import JournalError

    try:
        run = RunDir.open(path)
        state = run.read_state()
    except JournalError as exc:
        raise RefineError(str(exc)) from None
    stored = Path(str(state.get("spec_path", "")))
    if spec_path is not None and spec_path.resolve() != stored:
        raise RefineError(f"{path} is a run of {stored}, not of {spec_path}")
    options = RefineOptions.from_json(state.get("options", {}))
    for key, value in overrides.items():
        if key in RESUMABLE and value is not None:
            setattr(options, key, value)
    options.resume = None
    options.check()
    return Refiner(stored, options, run, state, reporter, resumed=True)
