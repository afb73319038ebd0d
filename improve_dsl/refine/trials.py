"""Trials: training candidates on the validation split, and the best spec once on the test split.

Every seed of every candidate is read from the results cache (keyed by the compiled script,
the seed and the split) or run on the executor; an out-of-memory run is retried once with
half the batch; a run falling clearly behind the incumbent is stopped (pruned) while it
trains. Each candidate's folder gets its spec, script, logs and ``result.json``.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import validate
from ..executors import Executor, JobHandle, TrainJob
from ..journal import ResultCache, RunDir, atomic_write_json, atomic_write_text, sha256_text
from ..run import RunResult
from .candidates import Candidate, Incumbent, SeedRun
from .decide import should_prune
from .reporting import Reporter
from .scripts import compile_script


@dataclass(frozen=True)
class TestScore:
    """The once-only test run of the best spec."""

    status: str
    metric: float | None
    reason: str | None


class Trials:
    """Runs candidates' training jobs on ``executor`` and keeps their results."""

    def __init__(
        self,
        run: RunDir,
        executor: Executor,
        cache: ResultCache,
        reporter: Reporter,
        *,
        spec_path: Path,
        metric_key: str,
        seeds: Sequence[int],
        device: str,
        timeout: float | None,
        threads: int | None,
        prune_margin: float,
    ) -> None:
        self.run = run
        self.executor = executor
        self.cache = cache
        self.reporter = reporter
        self.spec_path = spec_path
        self.metric_key = metric_key
        self.seeds = list(seeds)
        self.device = device
        self.timeout = timeout
        self.threads = threads
        self.prune_margin = prune_margin

    def write_candidate(self, candidate: Candidate) -> None:
        """The candidate's folder with its spec and script (a stale one is replaced)."""
        folder = self.run.candidate_dir(candidate.iteration)
        if folder.exists():  # a round cut short by a kill: its attempts are redone
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        assert candidate.text is not None and candidate.script is not None
        atomic_write_text(folder / "spec.imp", candidate.text)
        atomic_write_text(folder / "train.py", candidate.script)

    def train(self, candidates: Sequence[Candidate], incumbent: Incumbent, prune: bool) -> None:
        """Every seed of every candidate, into ``candidate.runs``: from the cache, else on the
        executor (pruned against ``incumbent`` when ``prune``). Ctrl-C: KeyboardInterrupt."""
        handles: list[JobHandle] = []
        for candidate in candidates:
            started = time.monotonic()
            for seed in self.seeds:
                if not self._from_cache(candidate, seed):
                    handles.append(self._submit(candidate, seed, None, incumbent, prune))
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
                    pending.append(self._submit(candidate, seed, half, incumbent, prune))
                    continue
            run = SeedRun.of(seed, result, batch)
            candidate.runs.append(run)
            candidate.run_seconds += result.seconds
            if result.status in ("ok", "nan") and batch is None and candidate.script:
                self.cache.put(self.cache.key(candidate.script, seed, "val"), run.to_cache())
        for candidate in candidates:
            candidate.runs.sort(key=lambda r: r.seed)
            atomic_write_json(
                self.run.candidate_dir(candidate.iteration) / "result.json",
                {
                    "iteration": candidate.iteration,
                    "runs": [dataclasses.asdict(r) for r in candidate.runs],
                },
            )

    def _from_cache(self, candidate: Candidate, seed: int) -> bool:
        assert candidate.script is not None
        hit = self.cache.get(self.cache.key(candidate.script, seed, "val"))
        if hit is None:
            return False
        candidate.runs.append(SeedRun.from_cache(seed, hit))
        out = self._out_dir(candidate, seed)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "metrics.json", {**hit, "cached": True, "seed": seed})
        return True

    def _out_dir(self, candidate: Candidate, seed: int) -> Path:
        folder = self.run.candidate_dir(candidate.iteration)
        return folder if len(self.seeds) == 1 else folder / f"seed-{seed}"

    def _half_batch(self, candidate: Candidate) -> int | None:
        assert candidate.text is not None
        batch = validate.load_text(candidate.text, str(self.spec_path)).data.batch_size
        return batch // 2 if batch >= 2 else None

    def _submit(
        self,
        candidate: Candidate,
        seed: int,
        batch: int | None,
        incumbent: Incumbent,
        prune: bool,
    ) -> JobHandle:
        job = TrainJob(
            script=self.run.candidate_dir(candidate.iteration) / "train.py",
            out_dir=self._out_dir(candidate, seed),
            split="val",
            seed=seed,
            device=self.device,
            timeout=self.timeout,
            batch_size=batch,
            threads=self.threads,
            on_event=self._watcher(candidate, seed, incumbent, prune),
            tag=(candidate, seed, batch),
        )
        return self.executor.submit(job)

    def _watcher(
        self, candidate: Candidate, seed: int, incumbent: Incumbent, prune: bool
    ) -> Callable[[dict[str, Any]], bool]:
        """Shows progress; with ``prune``, stops a run that is clearly lost against the
        incumbent (``decide.should_prune``)."""
        reference = incumbent.measurement(self.metric_key)
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
            if not should_prune(event, peak_lr, reference, self.metric_key, self.prune_margin):
                return True
            epoch = event.get("epoch")
            candidate.pruned_at = epoch if isinstance(epoch, int) else None
            return False

        return on_event

    def final_test(
        self, incumbent: Incumbent, seed: int, start_metric: float | None
    ) -> float | None:
        """Score the best spec (``incumbent``) once on the test split and write ``final.json``;
        the test score, or None when the run failed (said through the reporter)."""
        score = self.test(incumbent, seed)
        self.run.write_final(
            {
                "metric_name": self.metric_key.replace("val_", "test_", 1),
                "test_metric": score.metric if score.status == "ok" else None,
                "status": score.status,
                "reason": score.reason,
                "seed": seed,
                "best_iteration": incumbent.iteration,
                "best_spec_sha256": sha256_text(incumbent.text),
                "val_metric_name": self.metric_key,
                "val_metric": incumbent.metric,
                "start_val_metric": start_metric,
            }
        )
        if score.status != "ok":
            self.reporter.message(f"the test run failed: {score.reason}")
            return None
        return float(score.metric) if isinstance(score.metric, (int, float)) else None

    def test(self, incumbent: Incumbent, seed: int) -> TestScore:
        """Score the incumbent once on the test split (from the cache when it was before)."""
        folder = self.run.path / "test"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        script = compile_script(incumbent.text, str(self.spec_path), self.cache)
        atomic_write_text(folder / "spec.imp", incumbent.text)
        atomic_write_text(folder / "train.py", script)
        key = self.cache.key(script, seed, "test")
        hit = self.cache.get(key)
        if hit is not None:
            return TestScore(str(hit.get("status")), hit.get("metric"), hit.get("reason"))
        job = TrainJob(
            script=folder / "train.py",
            out_dir=folder,
            split="test",
            seed=seed,
            device=self.device,
            timeout=self.timeout,
            threads=self.threads,
        )
        result: RunResult = self.executor.wait(self.executor.submit(job))
        if result.status == "interrupted":
            raise KeyboardInterrupt
        if result.status == "ok":
            self.cache.put(key, SeedRun.of(seed, result, None).to_cache())
        return TestScore(result.status, result.metric, result.reason)
