"""What `improve refine` shows while it works: the plain log lines and the rich live view,
as a user reads them (rendered to text, at a terminal's real widths)."""

from __future__ import annotations

import io
import re

from rich.console import Console

from improve_dsl.journal import Record
from improve_dsl.refine.live import PlainReporter, RichReporter
from improve_dsl.refine.reporting import RunInfo, Summary

INFO = RunInfo(
    spec_path="digits.imp",
    run_dir="digits.improve/r1",
    expert="heuristic",
    metric_name="val_accuracy",
    iters=5,
    selector="diagnose",
    strategy="iterative",
    seeds=1,
    parallel=1,
)
WHY = (
    "The validation curve is still rising at the last epoch, so the budget is too short "
    "for this learning rate; doubling the epochs and warming up should let it settle "
    "before the decay, which matters more than anything else for this small network here."
)


def record(iteration: int, rationale: str = WHY) -> Record:
    return Record(iteration, "train", "accepted", 0.9, 0.8, "0" * 64, rationale=rationale)


def summary(test: float | None) -> Summary:
    return Summary(
        metric_name="val_accuracy",
        start_metric=0.8,
        best_metric=0.9,
        best_iteration=2,
        test_metric_name="test_accuracy" if test is not None else None,
        test_metric=test,
        counts={"accepted": 1, "rejected": 1},
        stopped="iterations done",
        best_spec="digits.improve/r1/best.imp",
        spec_path="digits.imp",
        spec_updated=True,
        user_modified=False,
        run_dir="digits.improve/r1",
    )


def plain_lines(*calls: tuple[str, tuple[object, ...]], info: RunInfo = INFO) -> list[str]:
    stream = io.StringIO()
    reporter = PlainReporter(stream)
    reporter.run_started(info, [])
    for name, args in calls:
        getattr(reporter, name)(*args)
    return stream.getvalue().splitlines()


def test_a_long_rationale_is_cut_at_a_word_with_an_ellipsis() -> None:
    line = plain_lines(("attempt_finished", (record(1),)))[-1]
    shown = line.split(" — ", 1)[1]
    assert shown.endswith("...") and len(shown) <= 160
    assert WHY.startswith(shown[:-3]) and WHY[len(shown) - 3] == " "  # a whole word


def test_each_iteration_says_k_of_n_and_then_an_overall_eta() -> None:
    lines = plain_lines(
        ("attempt_started", (1, "train", "heuristic", "")),
        ("attempt_finished", (record(1),)),
        ("attempt_started", (2, "model", "heuristic", "")),
    )
    assert "[1] iteration 1 of 5: train (heuristic)" in lines
    second = next(line for line in lines if line.startswith("[2]"))
    assert second.startswith("[2] iteration 2 of 5: model (heuristic), about ")
    assert second.endswith(" left")


def test_one_iteration_is_singular() -> None:
    one = RunInfo(**{**INFO.__dict__, "iters": 1})
    assert "expert heuristic, 1 iteration, select" in plain_lines(info=one)[0]


def test_the_end_points_to_the_report() -> None:
    stream = io.StringIO()
    PlainReporter(stream).finished(summary(0.88))
    assert "improve report digits.improve/r1" in stream.getvalue().splitlines()[-1]


def rich_text(width: int, *calls: tuple[str, tuple[object, ...]]) -> str:
    console = Console(file=io.StringIO(), width=width, force_terminal=False, record=True)
    reporter = RichReporter(console)
    reporter.info = INFO
    for name, args in calls:
        getattr(reporter, name)(*args)
    return console.export_text()


def test_the_test_score_is_not_under_a_validation_heading() -> None:
    text = rich_text(100, ("finished", (summary(0.8765),)))
    table = text.split("improve refine: summary", 1)[1]
    header = next(line for line in table.splitlines() if "accuracy" in line)
    assert "validation" not in header
    test_row = next(line for line in table.splitlines() if "0.8765" in line)
    assert "test" in test_row and "validation" not in test_row
    assert "improve report digits.improve/r1" in text


def test_at_80_columns_the_run_bar_keeps_the_time_left() -> None:
    console = Console(file=io.StringIO(), width=80, force_terminal=False, record=True)
    reporter = RichReporter(console)
    reporter.info = INFO
    reporter.progress(3, None, {"event": "start", "epochs": 10})
    reporter.progress(3, None, {"event": "epoch", "epoch": 4, "epochs": 10, "val_accuracy": 0.5})
    console.print(reporter.progress_bars.get_renderable())
    line = next(line for line in console.export_text().splitlines() if "#3" in line)
    assert "epoch 4/10" in line and "val_accuracy 0.5000" in line
    assert re.search(r"0\.5000 +eta [-\d]:[-\d]{2}:[-\d]{2}", line), line  # time left
