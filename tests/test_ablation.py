"""`improve ablate` on real refinements of digits (real training, real processes): the table,
superseded changes, Ctrl-C and going on, and the chart in `improve report` (in Chromium)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ImproveCall, improve_env, run_improve

from improve_dsl.journal import RunDir
from improve_dsl.refine.ablation import ABLATION_JSON, accepted_changes, leave_out, read_ablation
from improve_dsl.refine.loop import refine
from improve_dsl.refine.options import RefineOptions
from improve_dsl.refine.reporting import NullReporter

ROOT = Path(__file__).resolve().parent.parent
DIGITS = (ROOT / "specs" / "digits.imp").read_text()
CHROMIUM = Path("/usr/bin/chromium")

# The weak start at 3 epochs (plain SGD, lr 0.01, about 0.2-0.3): a momentum optimizer is a
# large gain; then longer training with a new optimizer rewrites the first change's only
# field (its optimizer), so leaving the first change out of the best spec no longer applies.
START = DIGITS.replace("epochs = 4", "epochs = 3")
PROPOSALS = [
    {
        "block": "train",
        "text": "train {\n  epochs = 3\n  optimizer = sgd(lr = 0.01, momentum = 0.5)\n"
        "  schedule = constant()\n  loss = cross_entropy()\n}\n",
        "rationale": "some momentum",
    },
    {
        "block": "train",
        "text": "train {\n  epochs = 12\n  optimizer = adamw(lr = 0.003)\n"
        "  schedule = one_cycle(warmup = 0.2)\n  loss = cross_entropy()\n}\n",
        "rationale": "longer, AdamW, one-cycle",
    },
    {
        "block": "model",
        "text": "model {\n  arch = cnn(channels = [16, 32])\n}\n",
        "rationale": "a small CNN",
    },
]


@pytest.fixture(scope="session")
def refined(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real three-iteration refine of the weak digits start, by replayed proposals."""
    folder = tmp_path_factory.mktemp("ablate")
    spec = folder / "digits.imp"
    spec.write_text(START)
    replay = folder / "replay.jsonl"
    replay.write_text("".join(json.dumps(p) + "\n" for p in PROPOSALS))
    options = RefineOptions(iters=3, expert=f"replay:{replay}", select="analyst", test=False)
    result = refine(spec, options, NullReporter())
    return result.run_dir


def _copy(run: Path, tmp_path: Path) -> Path:
    """A copy of the run beside its results cache (so cached runs are found as refine's)."""
    target = run.parent / f"copy-{tmp_path.name}"
    shutil.copytree(run, target)
    return target


@pytest.mark.slow
def test_leave_one_out_reports_a_change_a_later_one_rewrote(refined: Path) -> None:
    run = RunDir(refined)
    changes = accepted_changes(run)
    assert [c.iteration for c in changes][:2] == [1, 2]
    best = run.best_spec.read_text()
    text, note = leave_out(best, changes[0], str(run.start_spec))
    assert text is None and "superseded" in note
    text, note = leave_out(best, changes[1], str(run.start_spec))
    assert text is not None and note == ""
    assert "sgd(lr = 0.01, momentum = 0.5" in text and "epochs = 3" in text


@pytest.mark.slow
def test_ablate_prints_the_table_and_writes_it_to_the_run(
    refined: Path, tmp_path: Path, improve: ImproveCall
) -> None:
    run = _copy(refined, tmp_path)
    result = improve("ablate", str(run), "--seeds", "2", "--parallel", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert (
        "| change | block | gain when kept | leave-one-out drop | add-one-in gain | seconds |"
        in (out)
    )
    table = read_ablation(run)
    assert table is not None and table.seeds == [0, 1]
    assert (run / "ablation.md").read_text().startswith("ablation of")
    kept = [r.iteration for r in RunDir(run).records() if r.accepted and r.iteration > 0]
    assert [r.iteration for r in table.rows] == kept
    first = table.rows[0]
    # the first change was rewritten by the second: reported, not measured
    assert first.drop is None and "superseded" in first.note
    assert f"- #{first.iteration}: superseded" in out
    assert first.gain is not None and first.gain > 0.05  # momentum alone lifts the weak start
    measured = [r for r in table.rows if r.drop is not None]
    assert measured
    for row in measured:
        assert row.noise is not None and row.within_noise == (row.drop <= row.noise)
        assert row.drop_spread is not None and row.seconds > 0
    # Run again: every run is answered from the results cache.
    again = improve("ablate", str(run), "--seeds", "2")
    assert again.returncode == 0
    assert read_ablation(run) == table
    metrics = list((run / "ablation" / "candidates").rglob("metrics.json"))
    assert metrics and all(json.loads(m.read_text()).get("cached") for m in metrics)


@pytest.mark.slow
def test_ablate_goes_on_after_ctrl_c_without_repeating_finished_runs(
    refined: Path, tmp_path: Path
) -> None:
    run = _copy(refined, tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "improve_dsl.cli", "ablate", str(run), "--seeds", "3"],
        env=improve_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    cache = refined.parent / "cache"

    def entries() -> dict[Path, int]:
        return {p: p.stat().st_ino for p in cache.glob("??/*.json")}

    before = entries()
    deadline = time.monotonic() + 240
    while not set(entries()) - set(before):  # until this ablation has finished a run
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert f"improve ablate {run}" in stderr and "Traceback" not in stderr
    assert not (run / ABLATION_JSON).exists()
    finished = {p: ino for p, ino in entries().items() if p not in before}
    assert finished

    done = run_improve("ablate", str(run), "--seeds", "3")
    assert done.returncode == 0, done.stderr
    after = entries()
    # what finished before Ctrl-C was read back, not trained (and so written) again
    assert all(after[p] == ino for p, ino in finished.items())
    table = read_ablation(run)
    assert table is not None and len(table.seeds) == 3


def test_ablate_of_a_folder_that_is_not_a_run_is_one_line_exit_2(
    tmp_path: Path, improve: ImproveCall
) -> None:
    result = improve("ablate", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith("improve: error:") and len(result.stderr.splitlines()) == 1
    assert "not a run directory" in result.stderr
    assert improve("ablate", str(tmp_path), "--seeds", "0").returncode == 2


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent")
def test_the_report_shows_the_ablation_chart_in_chromium(
    refined: Path, tmp_path: Path, improve: ImproveCall
) -> None:
    from test_report import _chromium, _colours

    run = _copy(refined, tmp_path)
    assert improve("ablate", str(run), "--seeds", "1").returncode == 0
    assert improve("report", str(run)).returncode == 0
    page = (run / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2  # the iterations and the ablation
    shot, console, text = _chromium(run / "report.html", tmp_path)
    assert console == []
    assert _colours(shot) > 200
    assert "Ablation: which kept changes matter" in text
    assert "leave-one-out drop" in text and "add-one-in gain" in text
    table = read_ablation(run)
    assert table is not None
    for row in table.rows:
        assert row.label in text


FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
FASHION_START = (
    (ROOT / "specs" / "fashion_mnist_quick.imp")
    .read_text()
    .replace("subset = 5000", "subset = 1500")
    .replace("epochs = 2", "epochs = 1")
)


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.exists(), reason="needs apt-get install dataset-fashion-mnist")
def test_ablate_a_fashion_mnist_refine_and_its_evidence(
    tmp_path: Path, improve: ImproveCall
) -> None:
    from improve_dsl.evidence import Store

    spec = tmp_path / "fashion.imp"
    spec.write_text(FASHION_START)
    replay = tmp_path / "replay.jsonl"
    momentum = {
        "block": "train",
        "text": "train {\n  epochs = 1\n  optimizer = sgd(lr = 0.05, momentum = 0.9)\n"
        "  schedule = constant()\n  loss = cross_entropy()\n}\n",
    }
    replay.write_text(json.dumps(momentum) + "\n")
    done = improve("refine", str(spec), "--iters", "1", "--expert", f"replay:{replay}", "-q")
    assert done.returncode == 0, done.stderr
    (run,) = [p for p in (tmp_path / "fashion.improve").iterdir() if (p / "state.json").exists()]
    assert [r.status for r in RunDir(run).records()] == ["accepted", "accepted"]
    result = improve("ablate", str(run), "--seeds", "2", "--parallel", "2")
    assert result.returncode == 0, result.stderr
    table = read_ablation(run)
    assert table is not None
    (row,) = table.rows
    # the only change: leaving it out is the start, adding it alone is the best spec
    assert row.drop is not None and row.gain is not None
    assert row.drop == pytest.approx(row.gain)
    assert row.drop > 0
    rows = Store().rows(dataset="fashion_mnist")
    assert [r.iteration for r in rows] == [0, 1]
    assert (rows[1].profile.image_size, rows[1].profile.channels) == (28, 1)
    assert rows[1].edit["fields"]["optimizer.momentum"] == [0.0, 0.9]


def test_the_table_marks_a_change_within_the_noise_and_reports_notes(tmp_path: Path) -> None:
    from improve_dsl.refine.ablation import ABLATION_MD, Ablation, Row, table_text

    rows = [
        Row(1, "train", "train.recipe", 0.2, 0.15, 0.01, 0.3, 0.02, 0.01, False, 4.0),
        Row(2, "augment", "augment.cutout", 0.01, 0.002, 0.004, 0.0, 0.01, 0.008, True, 3.0),
        Row(3, "train", "", 0.05, note="superseded: a later change rewrote every field it set"),
    ]
    text = table_text(Ablation("run", [0, 1, 2], "val_accuracy", 0.99, 0.5, rows))
    lines = text.splitlines()
    assert "| #1 train.recipe | train | +0.2000 | +0.1500 ± 0.0100 | +0.3000 ± 0.0200 | 4.0 |" in (
        lines
    )
    assert "| #2 augment.cutout | augment | +0.0100 | +0.0020 ± 0.0040 (within noise) |" in text
    assert "| #3 | train | +0.0500 | — | — | 0.0 |" in lines
    assert "- #3: superseded: a later change rewrote every field it set" in lines
    assert any(line.startswith("- within noise: removing it costs less") for line in lines)
    assert ABLATION_MD == "ablation.md"
    assert read_ablation(tmp_path) is None  # no ablation yet: the report draws none
