"""`improve report` of a real refinement run (the loop run once on digits, in this session):
the page and the plot checked as text, as a matplotlib figure and in a real headless Chromium
(screenshot not blank, no console errors, hostile journal text inert)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from improve_dsl import cli
from improve_dsl.display import delta_text, metric_text
from improve_dsl.journal import BASELINE, RunDir
from improve_dsl.refine.live import make_reporter
from improve_dsl.refine.loop import refine
from improve_dsl.refine.options import RefineOptions, RefineResult
from improve_dsl.report import (
    ReportError,
    build_figure,
    incumbent_trace,
    read_run,
    write_report,
)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is absent: install it with `apt-get install -y chromium` to run "
    "the browser checks of the report",
)


# ---------------------------------------------------------------- the real run


@dataclass(frozen=True)
class RealRun:
    """A finished refinement: its folder, what the terminal printed, what refine returned."""

    path: Path
    terminal: str
    result: RefineResult


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> RealRun:
    """The real loop on digits, once per session: one epoch per run, two iterations (a train
    rewrite that is kept, then a reply that does not validate), and the final test score."""
    folder = tmp_path_factory.mktemp("real_run")
    spec = folder / "digits.imp"
    spec.write_text((ROOT / "specs" / "digits.imp").read_text().replace("epochs = 4", "epochs = 1"))
    proposals = [
        {
            "block": "train",
            "text": "train {\n  epochs = 1\n  optimizer = sgd(lr = 0.1, momentum = 0.9)\n}\n",
            "rationale": "plain SGD at lr 0.01 barely moves in one epoch: val_loss < train_loss",
        },
        {"block": "model", "text": "model {\n  arch = mlp(widht = 64)\n}\n"},
    ] + [{"block": "model", "text": "model {\n  arch = mlp(widht = 64)\n}\n"}] * 3
    replay = folder / "replay.jsonl"
    replay.write_text("".join(json.dumps(p) + "\n" for p in proposals))
    terminal = io.StringIO()
    options = RefineOptions(iters=2, expert=f"replay:{replay}", select="analyst")
    result = refine(spec, options, make_reporter(stream=terminal))
    return RealRun(result.run_dir, terminal.getvalue(), result)


@pytest.fixture
def run_dir(real_run: RealRun, tmp_path: Path) -> Path:
    """A writable copy of the real run (the report is written into the run by default)."""
    return Path(shutil.copytree(real_run.path, tmp_path / "run"))


def _data_uri_png(page: str) -> bytes:
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match, "the plot is not embedded as a data URI"
    return base64.b64decode(match.group(1))


def _text(page: str) -> str:
    """The page's visible text, roughly: inline tags dropped, others a space, entities kept."""
    inline = re.sub(r"</?(?:span|code|a)\b[^>]*>", "", page)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", inline))


def _card(page: str, key: str) -> str:
    match = re.search(rf'<div class="k">{key}</div>(.*?)</div></div>', page)
    assert match, f"no card {key!r}"
    return _text(match.group(1)).strip()


# ---------------------------------------------------------------- content


def test_the_run_the_report_is_built_from(real_run: RealRun) -> None:
    records = RunDir(real_run.path).records()
    assert [(r.iteration, r.block, r.status) for r in records] == [
        (0, BASELINE, "accepted"),
        (1, "train", "accepted"),
        (2, "model", "invalid"),
    ]
    assert "attempts: 1 accepted, 1 invalid" in real_run.terminal
    assert real_run.result.test_metric is not None


def test_baseline_gain_attempts_and_metric_name_match_the_terminal(
    real_run: RealRun, run_dir: Path
) -> None:
    result = real_run.result
    page = write_report(run_dir).html.read_text(encoding="utf-8")
    assert result.start_metric is not None and result.best_metric is not None
    assert _card(page, "baseline") == f"{metric_text(result.start_metric)} validation accuracy"
    gain = delta_text(result.best_metric, result.start_metric)
    assert gain.startswith("+")
    assert _card(page, "best") == (
        f"{metric_text(result.best_metric)} validation accuracy {gain} gain over baseline"
    )
    # The terminal said "attempts: 1 accepted, 1 invalid": two, the baseline not among them.
    counts = re.search(r"attempts: (.*?);", real_run.terminal)
    assert counts
    said = sum(int(part.split()[0]) for part in counts.group(1).split(", "))
    assert _card(page, "attempts") == f"{said} 1 accepted; 1 invalid"
    assert f"total ({said} attempts, 1 accepted)" in _text(page)
    test = _card(page, "test accuracy")
    assert test.startswith(metric_text(result.test_metric))
    assert page.count(metric_text(result.test_metric)) == 1  # never among validation scores
    assert "<h2>Validation accuracy per iteration</h2>" in page


def test_the_plot_names_the_metric_and_draws_the_baseline_apart(run_dir: Path) -> None:
    report = read_run(run_dir)
    axes = build_figure(report).axes[0]
    assert axes.get_ylabel() == "validation accuracy"
    points = {str(c.get_label()): [tuple(xy) for xy in c.get_offsets()] for c in axes.collections}
    baseline = report.attempts[0].record.metric
    assert points["baseline"] == [(0.0, baseline)]
    assert points["accepted"] == [(1.0, report.attempts[1].record.metric)]  # not iteration 0
    assert len(points["invalid (no score)"]) == 1
    png = write_report(run_dir).png.read_bytes()
    plot = Image.open(io.BytesIO(png)).convert("RGB")
    assert plot.size == (1056, 484)
    assert len(plot.getcolors(maxcolors=1 << 20) or []) > 50  # real drawing, not a blank canvas


def test_each_iteration_shows_block_change_delta_why_and_time(run_dir: Path) -> None:
    paths = write_report(run_dir)
    page = paths.html.read_text(encoding="utf-8")
    assert _data_uri_png(page) == paths.png.read_bytes()
    records = RunDir(run_dir).records()
    kept = records[1]
    section = re.search(r'id="attempt-1">(.*?)</section>', page, re.S)
    assert section
    text = _text(section.group(1))
    assert "iteration 1: train accepted" in text
    baseline = records[0].metric
    assert f"({delta_text(kept.metric, baseline)} vs {metric_text(baseline)})" in text
    assert "why plain SGD at lr 0.01 barely moves in one epoch: val_loss &lt; train_loss" in text
    assert re.search(r"block chosen because replayed from \S*replay\.jsonl:1 ", text)
    assert re.search(r"time \d+\.\d s \(\d+\.\d s proposing and checking\)", text)
    assert '<span class="da">+  optimizer = sgd(lr = 0.1, momentum = 0.9)</span>' in page
    assert '<span class="dd">-  epochs = 1</span>' not in page  # the unchanged line is context
    invalid = re.search(r'id="attempt-2">(.*?)</section>', page, re.S)
    assert invalid and "unknown parameter &#39;widht&#39; of &#39;mlp&#39;" in invalid.group(1)
    # Not the loop's bookkeeping.
    for internal in ("propose_seconds", "cached", "retries", "selector", "candidates/1", "move"):
        assert not re.search(rf"\b{internal}\b", _text(page)), internal
    # The best spec and the start → best diff.
    assert "Best spec" in page and '<span class="dh">+++ best.imp</span>' in page


def test_page_is_self_contained(run_dir: Path) -> None:
    page = write_report(run_dir).html.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    assert "url(" not in page and "@import" not in page and "@font-face" not in page
    assert not re.search(r"https?://", page)
    for ref in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert ref.startswith(("data:image/png;base64,", "#")), ref
    assert "default-src 'none'" in page  # the CSP forbids anything external even if injected


def test_output_path_and_png_beside_it(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "site" / "digits-run.html"
    paths = write_report(run_dir, out)
    assert paths.html == out and paths.png == tmp_path / "site" / "digits-run.png"
    assert out.is_file() and paths.png.is_file()
    assert not (run_dir / "report.html").exists()
    assert "digits-run.png" in out.read_text(encoding="utf-8")


def test_incumbent_follows_accepted_attempts(run_dir: Path) -> None:
    records = RunDir(run_dir).records()
    start, kept = records[0].metric, records[1].metric
    assert incumbent_trace(records) == [start, kept, kept]


def _hostile_run(run_dir: Path) -> Path:
    record = {
        "iteration": 3,
        "block": "<img src=x onerror=alert(1)>",
        "status": "rejected",
        "metric": 0.5,
        "incumbent_metric": 0.9861,
        "spec_sha256": '"><script>alert(2)</script>',
        "diff": "--- a/x.imp\n+++ b/x.imp\n@@ -1 +1 @@\n-  ops = []\n"
        "+  # </pre><script>document.title='pwned-diff'</script>\n",
        "rationale": "</p><script>document.title='pwned-rationale'</script><!--",
        "expert": '<iframe src="https://example.com"></iframe>',
        "tokens": 1,
        "cost_usd": 0.0,
        "seconds": 1.0,
        "reason": "<style>body{display:none}</style>",
        "selection": "<b>bold</b>",
    }
    with (run_dir / "journal.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    (run_dir / "best.imp").write_text("pipeline p { }\n# <script>alert(3)</script>\n")
    return run_dir


def test_journal_text_is_escaped(run_dir: Path) -> None:
    page = write_report(_hostile_run(run_dir)).html.read_text(encoding="utf-8")
    lowered = page.lower()
    assert "<script" not in lowered
    assert "<iframe" not in lowered and "<img src=x" not in lowered
    assert "<b>bold</b>" not in page and "<!--" not in page
    assert lowered.count("<style") == 1  # only the page's own stylesheet
    # Shown as text, not dropped.
    assert "&lt;script&gt;document.title=&#39;pwned-rationale&#39;&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "# &lt;/pre&gt;&lt;script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page


# ---------------------------------------------------------------- damaged or partial runs


def test_torn_last_line_is_skipped_with_a_note(run_dir: Path) -> None:
    with (run_dir / "journal.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"iteration": 3, "block": "augment", "status": "acc')  # a crash mid-write
    page = write_report(run_dir).html.read_text(encoding="utf-8")
    assert "line 4 of journal.jsonl is incomplete" in page
    assert "total (2 attempts, 1 accepted)" in _text(page)


def test_lines_that_are_not_records_are_skipped_with_a_note(run_dir: Path) -> None:
    lines = (run_dir / "journal.jsonl").read_text().splitlines()
    odd = {**json.loads(lines[2]), "iteration": 3, "metric": "0.9", "tokens": "many"}
    lines[2:2] = ["not json at all", json.dumps(odd)]
    (run_dir / "journal.jsonl").write_text("\n".join(lines) + "\n")
    page = write_report(run_dir).html.read_text(encoding="utf-8")
    assert "line 3 of journal.jsonl is not JSON and was skipped" in page
    assert "line 4 of journal.jsonl is not a record (metric is not a number or null)" in page
    assert "total (2 attempts, 1 accepted)" in _text(page)


def test_run_without_final_start_or_best(run_dir: Path) -> None:
    for name in ("final.json", "start.imp", "best.imp"):
        (run_dir / name).unlink()
    page = write_report(run_dir).html.read_text(encoding="utf-8")
    assert "not scored yet" in page
    assert 'class="card test"' not in page
    assert "Best spec" not in page
    assert "validation metric" in page  # no metric name known without final.json or a spec
    assert "<h1>Refinement of <code>run</code></h1>" in page  # named after the directory


def test_without_final_json_the_metric_is_read_from_the_spec(run_dir: Path) -> None:
    (run_dir / "final.json").unlink()
    page = write_report(run_dir).html.read_text(encoding="utf-8")
    assert "<h2>Validation accuracy per iteration</h2>" in page
    assert "<h1>Refinement of <code>digits</code></h1>" in page


def test_broken_final_json_is_a_note(run_dir: Path) -> None:
    (run_dir / "final.json").write_text('{"test_metric": 0.97,')
    page = write_report(run_dir).html.read_text(encoding="utf-8")
    assert "final.json is not valid JSON" in page
    assert "not scored yet" in page


def test_missing_and_empty_run_dirs_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no such run directory"):
        write_report(tmp_path / "nope")
    with pytest.raises(ReportError, match=r"has no journal\.jsonl"):
        write_report(tmp_path)
    (tmp_path / "journal.jsonl").write_text("\n")
    with pytest.raises(ReportError, match="holds no attempts"):
        write_report(tmp_path)


# ---------------------------------------------------------------- command line


def test_cli_report(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    assert cli.main(["report", str(run_dir), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out} (plot: {tmp_path / 'r.png'})"
    assert out.is_file() and (tmp_path / "r.png").is_file()


def test_cli_report_of_an_empty_folder_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["report", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"improve: error: {tmp_path} has no journal.jsonl (is it a run directory of "
        "`improve refine`?)\n"
    )


def test_cli_report_of_a_missing_folder_exits_2_without_a_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "improve_dsl.cli", "report", str(tmp_path / "absent")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"improve: error: no such run directory: {tmp_path / 'absent'}\n"


# ---------------------------------------------------------------- real browser


def _chromium(page: Path, workdir: Path) -> tuple[Path, list[str], str]:
    """Open ``page`` in headless Chromium; return its screenshot, the page's console lines
    (errors, CSP violations, console.* calls) and its text as the browser laid it out."""
    common = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={workdir / 'profile'}",
    ]
    shot = workdir / "shot.png"
    done = subprocess.run(
        [
            *common,
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    console = [
        line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line
    ]
    dom = subprocess.run(
        [*common, "--dump-dom", page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    return shot, console, _text(dom.stdout)


def _colours(shot: Path) -> int:
    image = Image.open(shot).convert("RGB")
    return len(image.getcolors(maxcolors=1 << 20) or [])


@needs_chromium
@pytest.mark.slow
def test_browser_detects_console_errors(tmp_path: Path) -> None:
    """The check below can fail: a page with a script error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><p>x</p><script>undefined_function();</script>")
    _, console, _ = _chromium(bad, tmp_path)
    assert any("Uncaught ReferenceError" in line for line in console)


@needs_chromium
@pytest.mark.slow
def test_real_run_report_renders_in_chromium(
    real_run: RealRun, run_dir: Path, tmp_path: Path
) -> None:
    shot, console, text = _chromium(write_report(run_dir).html, tmp_path)
    assert console == []
    assert Image.open(shot).size == (1200, 2000)
    assert _colours(shot) > 200  # text, badges, diff colours and the plot, not a blank page
    result = real_run.result
    assert f"baseline {metric_text(result.start_metric)} validation accuracy" in text
    gain = delta_text(result.best_metric, result.start_metric)
    assert f"{gain} gain over baseline" in text
    assert "attempts 2 1 accepted; 1 invalid" in text
    assert "Validation accuracy per iteration" in text


@needs_chromium
@pytest.mark.slow
def test_hostile_journal_runs_nothing_in_chromium(run_dir: Path, tmp_path: Path) -> None:
    # Escaped, the injected scripts are text; unescaped, the CSP would block them and log
    # a violation, so a silent console means nothing was even attempted.
    shot, console, text = _chromium(write_report(_hostile_run(run_dir)).html, tmp_path)
    assert console == []
    assert _colours(shot) > 200
    assert "document.title='pwned-rationale'" in text  # shown, as text
