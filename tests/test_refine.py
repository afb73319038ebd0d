"""`improve refine` end to end: real training on digits (seconds per run), real git.

The real refines are marked slow (CI runs them): ``test_loop.py`` checks the same loop logic
against a fake executor in the fast tier, and ``test_report.py`` builds its report from one
real two-iteration refine (with the final test run) in the fast tier.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import ImproveCall, run_improve

from improve_dsl import diff, validate
from improve_dsl.journal import RECORD_FIELDS, RunDir
from improve_dsl.refine.loop import refine
from improve_dsl.refine.options import RefineOptions, RefineResult
from improve_dsl.refine.reporting import NullReporter

ROOT = Path(__file__).resolve().parent.parent
DIGITS = (ROOT / "specs" / "digits.imp").read_text()
# The shipped weak spec, three epochs: plain SGD with lr 0.01 barely moves in that time.
WEAK = DIGITS.replace("epochs = 4", "epochs = 3")
# A fair baseline: momentum SGD, so a bad candidate visibly falls behind it.
DECENT = WEAK.replace(
    "sgd(lr = 0.01, momentum = 0.0, nesterov = false, weight_decay = 0.0)",
    "sgd(lr = 0.05, momentum = 0.9, nesterov = true, weight_decay = 0.0)",
).replace("mlp(width = 32, depth = 1)", "mlp(width = 64, depth = 1)")


def write_spec(folder: Path, text: str, name: str = "weak.imp") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def run_dir_of(spec: Path) -> RunDir:
    (path,) = [
        p for p in (spec.parent / f"{spec.stem}.improve").iterdir() if (p / "state.json").exists()
    ]
    return RunDir(path)


def locked(text: str) -> tuple[Any, ...]:
    spec = validate.load_text(text, "x.imp")
    return (spec.pipeline.metric, spec.data.source, spec.data.validation)


def check_accepted_changes(run: RunDir) -> int:
    """Every accepted change touches exactly its own block; returns how many there were."""
    previous = run.start_spec.read_text()
    accepted = 0
    for record in run.records():
        if record.iteration == 0 or record.status != "accepted":
            continue
        text = (run.candidate_dir(record.iteration) / "spec.imp").read_text()
        assert diff.changed_blocks(previous, text) == [record.block]
        assert locked(text) == locked(previous)
        previous = text
        accepted += 1
    return accepted


# ---------------------------------------------------------------- the quickstart, offline


@pytest.mark.slow
def test_heuristic_refinement_lifts_the_weak_digits_spec(
    tmp_path: Path, improve: ImproveCall
) -> None:
    spec = write_spec(tmp_path, WEAK)
    done = improve("refine", str(spec), "--iters", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "expert heuristic" in out  # the offline default without an API key
    assert "test_accuracy (best spec, scored once)" in out
    run = run_dir_of(spec)
    records = run.records()
    assert [r.iteration for r in records] == [0, 1, 2]
    for line in run.journal_path.read_text().splitlines():
        assert set(RECORD_FIELDS) <= set(json.loads(line))
    start, best = records[0].metric, max(r.metric or 0 for r in records if r.accepted)
    assert start is not None and best > start + 0.2, (start, best)
    assert check_accepted_changes(run) >= 1
    # The spec now holds the best spec, written whole; the locked fields are the user's.
    assert spec.read_text() == run.best_spec.read_text() != WEAK
    assert locked(spec.read_text()) == locked(WEAK)
    assert run.start_spec.read_text() == WEAK
    final = json.loads(run.final_path.read_text())
    assert final["metric_name"] == "test_accuracy" and final["test_metric"] > 0.5
    assert final["val_metric"] == best
    candidate = run.candidate_dir(1)
    assert {"spec.imp", "train.py", "log", "metrics.json"} <= {p.name for p in candidate.iterdir()}


# ---------------------------------------------------------------- statuses


@pytest.mark.slow
def test_invalid_rejected_cached_pruned_and_accepted_attempts(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, DECENT)
    worse = "train {\n  epochs = 1\n  optimizer = sgd(lr = 0.05)\n}\n"
    crawl = "train {\n  epochs = 4\n  optimizer = sgd(lr = 0.000001, momentum = 0.0)\n}\n"
    proposals = [
        # Four replies that cannot be used: invalid after 3 retries, no training.
        {"block": "train", "text": "train {\n  epochs = 0\n}\n"},
        {"block": "train", "text": "train {\n  optimiser = sgd()\n}\n"},
        {"block": "train", "text": "data {\n  batch_size = 8\n}\n"},
        {"block": "train", "text": "train {\n  epochs = 2000\n}\n"},
        {"block": "train", "text": worse, "rationale": "fewer epochs"},
        {"block": "train", "text": worse, "rationale": "the same again"},
        {"block": "train", "text": crawl, "rationale": "a learning rate that cannot learn"},
        {
            "block": "model",
            "text": "model {\n  arch = cnn(channels = [16, 32, 64])\n}\n",
            "rationale": "convolutions",
        },
    ]
    replay = tmp_path / "replay.jsonl"
    replay.write_text("".join(json.dumps(p) + "\n" for p in proposals))
    options = RefineOptions(iters=5, expert=f"replay:{replay}", test=False)
    result = refine(spec, options, NullReporter())
    statuses = [(r.iteration, r.block, r.status) for r in result.records]
    assert statuses == [
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
    assert cached.metric == rejected.metric and cached.spec_sha256 == rejected.spec_sha256
    assert cached.seconds < 0.1 and cached.extras["cached"] is True
    pruned = by_iteration[4]
    assert "pruned at epoch 2" in pruned.extras["reason"]
    assert result.start_metric is not None and pruned.metric is not None
    assert pruned.metric < result.start_metric - 0.1
    assert result.best_iteration == 5 and result.spec_updated
    assert "arch = cnn(channels = [16, 32, 64])" in spec.read_text()
    assert check_accepted_changes(RunDir(result.run_dir)) == 1


@pytest.mark.slow
def test_a_failing_run_is_recorded_and_the_loop_goes_on(tmp_path: Path) -> None:
    # 1,000 epochs cannot finish within the 1 s limit, however fast the runs start; the
    # candidates keep them (an expert free to choose might train fewer and finish).
    slow = WEAK.replace("epochs = 3", "epochs = 1000")
    spec = write_spec(tmp_path, slow)
    replay = tmp_path / "replay.jsonl"
    replay.write_text(
        "".join(
            json.dumps({"block": "model", "text": f"model {{\n  arch = mlp(width = {w})\n}}\n"})
            + "\n"
            for w in (64, 128)
        )
    )
    done = run_improve(
        "refine", str(spec), "--iters", "2", "--timeout", "1", "--no-test",
        "--expert", f"replay:{replay}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "no candidate finished" in done.stderr and "Traceback" not in done.stderr
    records = run_dir_of(spec).records()
    assert [(r.iteration, r.status) for r in records] == [
        (0, "failed"),
        (1, "failed"),
        (2, "failed"),
    ]
    assert all("time limit" in r.extras["reason"] for r in records)
    assert spec.read_text() == slow


# ---------------------------------------------------------------- seeds, strategies, limits


@pytest.mark.slow
def test_seeds_run_in_parallel_and_are_all_recorded(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, WEAK)
    options = RefineOptions(iters=1, expert="heuristic", seeds=2, parallel=2, test=False)
    result = refine(spec, options, NullReporter())
    run = RunDir(result.run_dir)
    for record in result.records:
        assert record.extras["seeds"] == [0, 1] and len(record.extras["metrics"]) == 2
        assert record.metric == pytest.approx(sum(record.extras["metrics"]) / 2)
        for seed in (0, 1):
            folder = run.candidate_dir(record.iteration) / f"seed-{seed}"
            assert (folder / "metrics.json").exists()
    assert "std" in result.records[1].extras


@pytest.mark.slow
def test_zero_shot_is_one_all_blocks_proposal(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, WEAK)
    result = refine(
        spec, RefineOptions(iters=5, zero_shot=True, expert="heuristic", test=False), NullReporter()
    )
    assert [(r.iteration, r.block) for r in result.records] == [(0, "baseline"), (1, "all")]
    changed = diff.changed_blocks(WEAK, (result.run_dir / "candidates/1/spec.imp").read_text())
    assert len(changed) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("limit", [{"max_cost": 0.0}, {"budget_minutes": 1e-4}])
def test_cost_and_time_limits_stop_cleanly(tmp_path: Path, limit: dict[str, float]) -> None:
    spec = write_spec(tmp_path, WEAK)
    result = refine(
        spec, RefineOptions(iters=3, expert="heuristic", test=False, **limit), NullReporter()
    )
    assert [r.iteration for r in result.records] == [0]
    assert "cost limit" in result.stopped or "time budget" in result.stopped


# ---------------------------------------------------------------- the user's spec and git


class _EditsSpecMidRun(NullReporter):
    def __init__(self, spec: Path) -> None:
        self.spec = spec

    def attempt_started(self, iteration: int, block: str, expert: str, note: str) -> None:
        if iteration == 1 and not self.spec.read_text().startswith("# mine"):
            self.spec.write_text("# mine\n" + self.spec.read_text())


@pytest.mark.slow
def test_a_spec_the_user_edits_mid_run_is_left_alone(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, WEAK)
    result: RefineResult = refine(
        spec, RefineOptions(iters=1, expert="heuristic", test=False), _EditsSpecMidRun(spec)
    )
    assert result.records[1].status == "accepted"
    assert spec.read_text() == "# mine\n" + WEAK
    assert result.user_modified and not result.spec_updated
    best = result.best_spec.read_text()
    assert best != WEAK
    assert best == (result.run_dir / "candidates" / "1" / "spec.imp").read_text()
    assert json.loads((result.run_dir / "state.json").read_text())["user_modified"] is True


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


@pytest.mark.slow
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
    done = run_improve("refine", str(spec), "--iters", "1", "--git", "--no-test", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    accepted = check_accepted_changes(run_dir_of(spec))
    commits = _git("log", "--format=%H", cwd=tmp_path).split()
    assert accepted >= 1 and len(commits) == 1 + accepted
    for commit in commits[:-1]:
        assert _git("show", "--name-only", "--format=", commit, cwd=tmp_path).split() == [
            "weak.imp"
        ]
        message = _git("log", "-1", "--format=%B", commit, cwd=tmp_path)
        assert message.startswith("improve: ") and "val_accuracy" in message and "→" in message
    assert _git("diff", "--cached", "--name-only", cwd=tmp_path).split() == ["notes.txt"]
    assert _git("status", "--porcelain", "--", "weak.imp", cwd=tmp_path) == ""


def test_git_outside_a_repository_is_a_clear_error(tmp_path: Path, improve: ImproveCall) -> None:
    spec = write_spec(tmp_path, WEAK)
    done = improve(
        "refine", str(spec), "--git", cwd=tmp_path, GIT_CEILING_DIRECTORIES=str(tmp_path.parent)
    )
    assert done.returncode == 2
    assert "not inside a git repository" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "weak.improve").exists()


def test_refine_help_names_every_flag(improve: ImproveCall) -> None:
    done = improve("refine", "--help", cwd=ROOT)
    assert done.returncode == 0
    for flag in (
        "--iters",
        "--expert",
        "--base-url",
        "--grammar",
        "--select",
        "--strategy",
        "--zero-shot",
        "--seeds",
        "--min-delta",
        "--parallel",
        "--timeout",
        "--budget-minutes",
        "--max-cost",
        "--run-dir",
        "--resume",
        "--git",
        "--no-prune",
        "--device",
        "--no-test",
        "replay:FILE",
    ):
        assert flag in done.stdout, flag
