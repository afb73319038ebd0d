"""The refinement loop's logic, in-process against a fake executor (no training).

The real loop, experts, journal, cache, write-back and git run as in ``improve refine``;
only the executor is replaced (the seam the loop trains through), by one that scores each
candidate spec from its text. ``test_refine.py`` runs the same behaviours with real training.
Nothing here runs or reads a candidate's script, so the scripts are not black-formatted.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from fake_executor import FakeExecutor, Outcome, by_text, split_of

from improve_dsl import diff, render, validate
from improve_dsl.executors import TrainJob
from improve_dsl.journal import RECORD_FIELDS, RunDir
from improve_dsl.refine.loop import refine
from improve_dsl.refine.options import RefineInterrupted, RefineOptions
from improve_dsl.refine.reporting import NullReporter

ROOT = Path(__file__).resolve().parent.parent
DIGITS = (ROOT / "specs" / "digits.imp").read_text()
WEAK = DIGITS.replace("epochs = 4", "epochs = 3")
DECENT = WEAK.replace(
    "sgd(lr = 0.01, momentum = 0.0, nesterov = false, weight_decay = 0.0)",
    "sgd(lr = 0.05, momentum = 0.9, nesterov = true, weight_decay = 0.0)",
)
# The heuristic's first move on the weak spec turns momentum on: score that as a clear gain.
MOMENTUM_HELPS = by_text(
    ("momentum = 0.9", Outcome((0.6, 0.8, 0.9))), default=Outcome((0.3, 0.4, 0.5))
)


@pytest.fixture(autouse=True)
def _unformatted_scripts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Black takes half a second a script, most of these tests' time; the scripts stay in
    each test's own run folder (its results cache), where no other test reads them."""
    monkeypatch.setattr(render, "format_code", lambda code: code)


def write_spec(folder: Path, text: str) -> Path:
    path = folder / "weak.imp"
    path.write_text(text)
    return path


def locked(text: str) -> tuple[object, ...]:
    spec = validate.load_text(text, "x.imp")
    return (spec.pipeline.metric, spec.data.source, spec.data.validation)


def test_statuses_invalid_rejected_cached_pruned_and_accepted(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, DECENT)
    worse = "train {\n  epochs = 1\n  optimizer = sgd(lr = 0.05)\n}\n"
    crawl = "train {\n  epochs = 4\n  optimizer = sgd(lr = 0.000001, momentum = 0.0)\n}\n"
    proposals = [
        {"block": "train", "text": "train {\n  epochs = 0\n}\n"},
        {"block": "train", "text": "train {\n  optimiser = sgd()\n}\n"},
        {"block": "train", "text": "data {\n  batch_size = 8\n}\n"},
        {"block": "train", "text": "train {\n  epochs = 2000\n}\n"},
        {"block": "train", "text": worse, "rationale": "fewer epochs"},
        {"block": "train", "text": worse, "rationale": "the same again"},
        {"block": "train", "text": crawl, "rationale": "a learning rate that cannot learn"},
        {"block": "model", "text": "model {\n  arch = cnn(channels = [32, 64])\n}\n"},
    ]
    replay = tmp_path / "replay.jsonl"
    replay.write_text("".join(json.dumps(p) + "\n" for p in proposals))
    executor = FakeExecutor(
        by_text(
            ("cnn(", Outcome((0.7, 0.9, 0.95))),
            ("lr = 0.000001", Outcome((0.1, 0.1, 0.1, 0.1))),
            ("epochs = 1\n", Outcome((0.85,))),
            # The incumbent has settled (no swing at its end): a clear gain is kept.
            default=Outcome((0.6, 0.85, 0.9, 0.9)),
        )
    )
    options = RefineOptions(iters=5, expert=f"replay:{replay}", test=False)
    result = refine(spec, options, NullReporter(), executor=executor)
    assert [(r.iteration, r.block, r.status) for r in result.records] == [
        (0, "baseline", "accepted"),
        (1, "train", "invalid"),
        (2, "train", "rejected"),
        (3, "train", "cached"),
        (4, "train", "pruned"),
        (5, "model", "accepted"),
    ]
    by_iteration = {r.iteration: r for r in result.records}
    invalid = by_iteration[1]
    assert invalid.extras["retries"] == 3 and "epochs = 2000" in invalid.extras["reply"]
    assert "must be at most 1000" in invalid.extras["feedback"]
    assert invalid.metric is None and not invalid.diff
    rejected, cached = by_iteration[2], by_iteration[3]
    assert rejected.metric == 0.85 and cached.metric == 0.85
    assert cached.spec_sha256 == rejected.spec_sha256 and cached.extras["cached"] is True
    assert "pruned at epoch 2" in by_iteration[4].extras["reason"]
    # Trained: the baseline, the rejected one, the pruned one, the accepted one; the invalid
    # proposal and the repeat cost no run.
    assert len(executor.jobs) == 4 and executor.closed
    assert result.best_iteration == 5 and result.best_metric == 0.95 and result.spec_updated
    assert "arch = cnn(channels = [32, 64])" in spec.read_text()
    run = RunDir(result.run_dir)
    for line in run.journal_path.read_text().splitlines():
        assert set(RECORD_FIELDS) <= set(json.loads(line))
    assert diff.changed_blocks(DECENT, spec.read_text()) == ["model"]


def test_failed_runs_are_recorded_and_the_loop_goes_on(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, WEAK)
    executor = FakeExecutor(lambda text, job: Outcome((), "timeout", "over the time limit"))
    result = refine(spec, RefineOptions(iters=2, expert="heuristic", test=False), executor=executor)
    assert [(r.iteration, r.status) for r in result.records] == [
        (0, "failed"),
        (1, "failed"),
        (2, "failed"),
    ]
    assert all("time limit" in r.extras["reason"] for r in result.records)
    assert result.best_metric is None and spec.read_text() == WEAK


def test_an_out_of_memory_run_is_retried_once_with_half_the_batch(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, WEAK)

    def score(text: str, job: object) -> Outcome:
        batch = getattr(job, "batch_size", None)
        return Outcome((0.5,)) if batch is not None else Outcome((), "oom", "out of memory")

    executor = FakeExecutor(score)
    result = refine(spec, RefineOptions(iters=0, test=False), executor=executor)
    batch = validate.load_text(WEAK, "w.imp").data.batch_size
    assert [j.batch_size for j in executor.jobs] == [None, batch // 2]
    (baseline,) = result.records
    assert baseline.status == "accepted" and baseline.extras["batch_size"] == batch // 2


def test_seeds_run_together_and_are_all_recorded(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, WEAK)

    def score(text: str, job: object) -> Outcome:
        seed = getattr(job, "seed", 0) or 0
        return Outcome((0.5 + 0.1 * seed,))

    options = RefineOptions(iters=1, expert="heuristic", seeds=2, parallel=2, test=False)
    result = refine(spec, options, executor=FakeExecutor(score, slots=2))
    run = RunDir(result.run_dir)
    for record in result.records:
        assert record.extras["seeds"] == [0, 1] and record.extras["metrics"] == [0.5, 0.6]
        assert record.metric == pytest.approx(0.55)
        for seed in (0, 1):
            assert (run.candidate_dir(record.iteration) / f"seed-{seed}" / "log").exists()
    assert result.records[1].extras["std"] == pytest.approx(0.0707, abs=1e-4)


def test_zero_shot_is_one_all_blocks_proposal(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, WEAK)
    options = RefineOptions(iters=5, zero_shot=True, expert="heuristic", test=False)
    result = refine(spec, options, executor=FakeExecutor(MOMENTUM_HELPS))
    assert [(r.iteration, r.block) for r in result.records] == [(0, "baseline"), (1, "all")]
    assert options.strategy == "iterative"  # the caller's options are not changed
    changed = diff.changed_blocks(WEAK, (result.run_dir / "candidates/1/spec.imp").read_text())
    assert len(changed) >= 2


@pytest.mark.parametrize("limit", [{"max_cost": 0.0}, {"budget_minutes": 1e-9}])
def test_cost_and_time_limits_stop_after_the_baseline(
    tmp_path: Path, limit: dict[str, float]
) -> None:
    spec = write_spec(tmp_path, WEAK)
    options = RefineOptions(iters=3, expert="heuristic", test=False, **limit)  # type: ignore[arg-type]
    result = refine(spec, options, executor=FakeExecutor(MOMENTUM_HELPS))
    assert [r.iteration for r in result.records] == [0]
    assert "cost limit" in result.stopped or "time budget" in result.stopped


def test_the_best_spec_is_tested_once_and_the_test_run_is_cached(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, WEAK)
    executor = FakeExecutor(MOMENTUM_HELPS)
    result = refine(spec, RefineOptions(iters=1, expert="heuristic"), executor=executor)
    (test_job,) = split_of(executor.jobs, "test")
    assert "momentum = 0.9" in (test_job.script.parent / "spec.imp").read_text()
    final = json.loads(RunDir(result.run_dir).final_path.read_text())
    assert final["test_metric"] == result.test_metric == 0.9
    assert final["val_metric"] == result.best_metric == 0.9
    # The same best spec again: its test score comes from the cache, no second test run.
    spec.write_text(WEAK)
    again = FakeExecutor(MOMENTUM_HELPS)
    second = refine(spec, RefineOptions(iters=1, expert="heuristic"), executor=again)
    assert split_of(again.jobs, "test") == [] and second.test_metric == 0.9


class _EditsSpecMidRun(NullReporter):
    def __init__(self, spec: Path) -> None:
        self.spec = spec

    def attempt_started(self, iteration: int, block: str, expert: str, note: str) -> None:
        if iteration == 1 and not self.spec.read_text().startswith("# mine"):
            self.spec.write_text("# mine\n" + self.spec.read_text())


def test_a_spec_the_user_edits_mid_run_is_left_alone(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, WEAK)
    result = refine(
        spec,
        RefineOptions(iters=1, expert="heuristic", test=False),
        _EditsSpecMidRun(spec),
        executor=FakeExecutor(MOMENTUM_HELPS),
    )
    assert result.records[1].status == "accepted"
    assert spec.read_text() == "# mine\n" + WEAK
    assert result.user_modified and not result.spec_updated
    assert "momentum = 0.9" in result.best_spec.read_text()
    assert json.loads((result.run_dir / "state.json").read_text())["user_modified"] is True


def _git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return done.stdout


def test_git_commits_each_accepted_change_and_only_the_spec(tmp_path: Path) -> None:
    _git("init", "-q", cwd=tmp_path)
    _git("config", "user.email", "t@example.com", cwd=tmp_path)
    _git("config", "user.name", "Tester", cwd=tmp_path)
    spec = write_spec(tmp_path, WEAK)
    notes = tmp_path / "notes.txt"
    notes.write_text("one\n")
    _git("add", ".", cwd=tmp_path)
    _git("commit", "-q", "-m", "start", cwd=tmp_path)
    notes.write_text("two\n")
    _git("add", "notes.txt", cwd=tmp_path)  # staged work of the user's, not ours to commit
    options = RefineOptions(iters=2, expert="heuristic", git=True, test=False)
    result = refine(spec, options, executor=FakeExecutor(MOMENTUM_HELPS))
    accepted = [r for r in result.records if r.iteration > 0 and r.status == "accepted"]
    commits = _git("log", "--format=%H", cwd=tmp_path).split()
    assert len(accepted) == 1 and len(commits) == 2
    assert _git("show", "--name-only", "--format=", commits[0], cwd=tmp_path).split() == [
        "weak.imp"
    ]
    message = _git("log", "-1", "--format=%B", commits[0], cwd=tmp_path)
    assert message.startswith("improve: train: val_accuracy 0.5000 → 0.9000 (+0.4000)")
    assert _git("diff", "--cached", "--name-only", cwd=tmp_path).split() == ["notes.txt"]
    assert _git("status", "--porcelain", "--", "weak.imp", cwd=tmp_path) == ""
    assert locked(spec.read_text()) == locked(WEAK)


def test_an_interrupted_run_resumes_without_losing_or_repeating_an_attempt(
    tmp_path: Path,
) -> None:
    spec = write_spec(tmp_path, WEAK)
    seen: list[TrainJob] = []

    def interrupts_the_third_run(text: str, job: TrainJob) -> Outcome:
        seen.append(job)
        if len(seen) == 3:  # iteration 2 is training when Ctrl-C comes
            return Outcome((), "interrupted", "interrupted")
        return MOMENTUM_HELPS(text, job)

    options = RefineOptions(iters=3, expert="heuristic", test=False)
    with pytest.raises(RefineInterrupted) as caught:
        refine(spec, options, executor=FakeExecutor(interrupts_the_third_run))
    run = RunDir(caught.value.run_dir)
    before = run.records()
    assert [r.iteration for r in before] == [0, 1]
    assert json.loads(run.state_path.read_text())["status"] == "interrupted"

    again = FakeExecutor(MOMENTUM_HELPS)
    asked = RefineOptions(resume=run.path)
    resumed = refine(None, asked, overrides={"iters": 4}, executor=again)
    assert asked == RefineOptions(resume=run.path)  # the caller's options are not changed
    assert [r.iteration for r in resumed.records] == [0, 1, 2, 3, 4]
    assert [r.to_json() for r in resumed.records[:2]] == [r.to_json() for r in before]
    trained = sorted({j.out_dir.relative_to(run.path).parts[1] for j in again.jobs})
    assert trained == ["2", "3", "4"]  # nothing finished before the interruption runs again
    assert json.loads(run.state_path.read_text())["status"] == "finished"
    assert spec.read_text() == run.best_spec.read_text()
