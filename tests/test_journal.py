"""The run journal, run directory and results cache: durable, tolerant of kills, exact."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from improve_dsl.journal import (
    RECORD_FIELDS,
    JournalError,
    Record,
    ResultCache,
    RunDir,
    atomic_write_text,
    read_journal,
    runs_root,
    scan_journal,
)


def _record(iteration: int, status: str = "rejected", **extras: object) -> Record:
    return Record(
        iteration=iteration,
        block="train",
        status=status,
        metric=0.5 + iteration / 100,
        incumbent_metric=0.5,
        spec_sha256="ab" * 32,
        diff="-a\n+b\n",
        rationale="why not",
        expert="heuristic",
        tokens=12,
        cost_usd=0.001,
        seconds=1.5,
        extras=dict(extras),
    )


def test_records_have_every_field_in_order_and_round_trip(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "run", "pipeline p {}\n")
    run.append(_record(1, move="train.momentum", seeds=[0]))
    line = run.journal_path.read_text().splitlines()[0]
    value = json.loads(line)
    assert list(value)[: len(RECORD_FIELDS)] == list(RECORD_FIELDS)
    assert value["move"] == "train.momentum" and value["seeds"] == [0]
    (back,) = run.records()
    assert back == _record(1, move="train.momentum", seeds=[0])
    assert back.move == "train.momentum"


def test_a_torn_last_line_is_skipped_and_the_next_append_survives(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "run", "x")
    run.append(_record(0, "accepted"))
    run.append(_record(1))
    # What SIGKILL in the middle of a write leaves: half a JSON object, no newline.
    with open(run.journal_path, "ab") as handle:
        handle.write(b'{"iteration": 2, "block": "mod')
    assert [r.iteration for r in run.records()] == [0, 1]
    run.append(_record(2, "accepted"))
    assert [(r.iteration, r.status) for r in run.records()] == [
        (0, "accepted"),
        (1, "rejected"),
        (2, "accepted"),
    ]
    # The torn fragment stays on a line of its own and never merges with a record.
    assert len(read_journal(run.journal_path)) == 3


def test_garbage_lines_and_unknown_statuses_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    good = json.dumps(_record(3).to_json())
    bad_status = json.dumps({**_record(4).to_json(), "status": "weird"})
    path.write_text(f"not json\n{good}\n{bad_status}\n")
    assert [r.iteration for r in read_journal(path)] == [3]
    assert read_journal(tmp_path / "missing.jsonl") == []


def test_the_first_record_of_an_iteration_wins(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "run", "x")
    run.append(_record(1, "accepted"))
    run.append(_record(1, "rejected"))
    assert [r.status for r in run.records()] == ["accepted"]


def test_run_dir_layout_and_refusals(tmp_path: Path) -> None:
    spec = tmp_path / "digits.imp"
    assert runs_root(spec) == tmp_path / "digits.improve"
    run = RunDir.create(runs_root(spec) / "r1", "start text\n")
    assert run.start_spec.read_text() == "start text\n"
    assert run.candidates.is_dir()
    assert (runs_root(spec) / ".gitignore").read_text().strip().endswith("*")
    with pytest.raises(JournalError, match="not empty"):
        RunDir.create(run.path, "again")
    with pytest.raises(JournalError, match="not a run directory"):
        RunDir.open(tmp_path)
    run.write_state({"options": {"iters": 3}})
    assert RunDir.open(run.path).read_state() == {"options": {"iters": 3}}


def test_atomic_write_replaces_whole_files_and_keeps_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "spec.imp"
    path.write_text("old\n")
    os.chmod(path, 0o640)
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["spec.imp"]  # no temporary left behind


def test_cache_keys_separate_scripts_seeds_splits_and_overrides(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache")
    key = cache.key("print(1)", 0, "val")
    assert cache.get(key) is None
    cache.put(key, {"status": "ok", "metric": 0.9})
    assert cache.get(key) == {"status": "ok", "metric": 0.9}
    others = {
        cache.key("print(2)", 0, "val"),
        cache.key("print(1)", 1, "val"),
        cache.key("print(1)", 0, "test"),
        cache.key("print(1)", 0, "val", batch_size=32),
    }
    assert key not in others and len(others) == 4
    assert cache.key("print(1)", 0, "val", batch_size=None) == key
    for other in others:
        assert cache.get(other) is None


def test_records_with_wrong_types_are_skipped_with_a_note(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    good = _record(1).to_json()
    lines = [
        json.dumps(good),
        json.dumps({**good, "iteration": 2, "metric": "0.9"}),
        json.dumps({**good, "iteration": 3, "tokens": 1.5}),
        json.dumps({**good, "iteration": 4, "seconds": True}),
        json.dumps({k: v for k, v in good.items() if k != "block"}),
        "[1, 2]",
    ]
    path.write_text("\n".join(lines) + "\n")
    scan = scan_journal(path)
    assert [r.iteration for r in scan.records] == [1]
    assert scan.notes == [
        "line 2 of journal.jsonl is not a record (metric is not a number or null) and was skipped",
        "line 3 of journal.jsonl is not a record (tokens is not a whole number) and was skipped",
        "line 4 of journal.jsonl is not a record (seconds is not a number) and was skipped",
        "line 5 of journal.jsonl is not a record (no block) and was skipped",
        "line 6 of journal.jsonl is not a record (not a JSON object) and was skipped",
    ]


def test_the_view_the_plot_and_tracking_show_exactly_the_declared_statuses() -> None:
    from improve_dsl import journal, report, tracking
    from improve_dsl.refine import live
    from improve_dsl.report import plot

    assert (journal.BASELINE, *journal.STATUSES) == report.KINDS
    assert tuple(s for s in journal.STATUSES if s != "accepted") == journal.NOT_ACCEPTED
    declared = set(journal.STATUSES)
    assert len(declared) == len(journal.ATTEMPT_STATUSES)
    assert set(live.STATUS_STYLES) == declared
    assert set(live.REASON_SHOWN) < declared
    assert set(plot.KIND_COLOURS) == declared | {journal.BASELINE}
    assert set(tracking.MLFLOW_STATUS) == declared
    # One colour each, and distinct: a point in the plot says which status it is.
    colours = [s.colour for s in journal.ATTEMPT_STATUSES]
    assert len(set(colours)) == len(colours)
    assert all(plot.KIND_COLOURS[s.name] == s.colour for s in journal.ATTEMPT_STATUSES)
