"""`improve report`: the HTML page and plot of a refinement run, checked as text and in a real
headless Chromium (screenshot not blank, no console errors, hostile journal text inert)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from improve_dsl.report import (
    ReportError,
    incumbent_trace,
    read_journal,
    write_report,
)

SAMPLE = Path(__file__).parent / "fixtures" / "run_sample"
CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is absent: install it with `apt-get install -y chromium` to run "
    "the browser checks of the report",
)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A writable copy of the sample run (the report is written into the run by default)."""
    return Path(shutil.copytree(SAMPLE, tmp_path / "run"))


def _data_uri_png(page: str) -> bytes:
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match, "the plot is not embedded as a data URI"
    return base64.b64decode(match.group(1))


def _text(page: str) -> str:
    """The page's visible text, roughly: tags dropped, entities kept."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


# ---------------------------------------------------------------- content


def test_sample_report_has_plot_attempts_totals_and_test_score(run_dir: Path) -> None:
    paths = write_report(run_dir)
    assert paths.html == run_dir / "report.html"
    assert paths.png == run_dir / "report.png"
    page = paths.html.read_text(encoding="utf-8")

    png = paths.png.read_bytes()
    assert _data_uri_png(page) == png  # the page embeds exactly the plot written beside it
    plot = Image.open(io.BytesIO(png)).convert("RGB")
    assert plot.size == (1056, 484)
    assert len(plot.getcolors(maxcolors=1 << 20) or []) > 50  # real drawing, not a blank canvas

    # One row per journal record, each status shown, the accepted rows linked to their diffs.
    for status in ("baseline", "accepted", "rejected", "invalid", "failed", "pruned", "cached"):
        assert f">{status}</span>" in page
    assert page.count('<tr><td class="num"><a href="#attempt-') == 8
    assert 'id="attempt-7"' in page

    text = _text(page)
    # Totals: 7 attempts after the baseline, 40.3 s, $0.0261, 23,188 tokens.
    assert "total (7 attempts, 2 accepted)" in text
    assert "40.3 s" in text and "$0.0261" in text and "23,188" in text
    # Baseline, best and the gain, then the test score in its own card.
    assert "baseline 0.8889 validation accuracy" in text
    assert "0.9861" in text and "+0.0972 over baseline" in text
    test_card = re.search(r'<div class="card test">(.*?)</div></div>', page)
    assert test_card and "test accuracy" in test_card.group(1)
    assert "0.9778" in test_card.group(1)
    assert page.count("0.9778") == 1  # the test score appears nowhere among validation scores

    # Rationales, failure notes and the coloured diff lines.
    assert "the model underfits" in text
    assert "nan_loss: training loss became NaN at epoch 2" in page
    assert "4 pooling stages shrink 8x8 images" in page
    assert '<span class="da">+  arch = cnn(channels = [32, 64], convs_per_stage = 1)</span>' in page
    assert '<span class="dd">-  arch = mlp(width = 32, depth = 1)</span>' in page
    assert '<span class="dk">@@ -22,5 +22,5 @@</span>' in page
    # "val_loss < train_loss" in a rationale arrives as text.
    assert "val_loss &lt; train_loss" in page

    # The best spec and the start → best diff.
    assert "Best spec" in page and '<span class="dh">+++ best.imp</span>' in page
    assert "+  epochs = 10" in page


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


def test_incumbent_follows_accepted_attempts() -> None:
    attempts = read_journal(SAMPLE / "journal.jsonl").attempts
    assert [a.status for a in attempts][:2] == ["baseline", "accepted"]
    assert incumbent_trace(attempts) == [
        0.8889,
        0.9583,
        0.9583,
        0.9583,
        0.9583,
        0.9583,
        0.9583,
        0.9861,
    ]


def _hostile_run(run_dir: Path) -> Path:
    record = {
        "iteration": 8,
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
        "move": "<b>bold</b>",
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
    assert "&lt;script&gt;document.title=&#x27;pwned-rationale&#x27;&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "# &lt;/pre&gt;&lt;script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page


# ---------------------------------------------------------------- damaged or partial runs


def test_torn_last_line_is_skipped_with_a_note(run_dir: Path) -> None:
    with (run_dir / "journal.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"iteration": 8, "block": "augment", "status": "acc')  # a crash mid-write
    page = write_report(run_dir).html.read_text(encoding="utf-8")
    assert "line 9 of journal.jsonl is incomplete" in page
    assert "total (7 attempts, 2 accepted)" in _text(page)


def test_bad_middle_line_and_odd_values_do_not_stop_the_report(run_dir: Path) -> None:
    lines = (run_dir / "journal.jsonl").read_text().splitlines()
    lines.insert(2, "not json at all")
    odd = json.loads(lines[3])
    odd.update(metric=None, tokens="many", seconds=None, cost_usd=True, block=None)
    lines[3] = json.dumps(odd)
    (run_dir / "journal.jsonl").write_text("\n".join(lines) + "\n")
    page = write_report(run_dir).html.read_text(encoding="utf-8")
    assert "line 3 of journal.jsonl is not a JSON object" in page
    assert "total (7 attempts, 2 accepted)" in _text(page)


def test_run_without_final_start_or_best(run_dir: Path) -> None:
    for name in ("final.json", "start.imp", "best.imp"):
        (run_dir / name).unlink()
    page = write_report(run_dir).html.read_text(encoding="utf-8")
    assert "not scored yet" in page and "0.9778" not in page
    assert 'class="card test"' not in page
    assert "Best spec" not in page
    assert "validation metric" in page  # no metric name known without final.json
    assert "<h1>Refinement of <code>run</code></h1>" in page  # named after the directory


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


def _improve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "improve_dsl.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_report(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    done = _improve("report", str(run_dir), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {out} (plot: {tmp_path / 'r.png'})"
    assert out.is_file() and (tmp_path / "r.png").is_file()


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_cli_report_bad_run_dir_is_one_line_exit_2(tmp_path: Path, case: str) -> None:
    target = tmp_path / "absent" if case == "missing" else tmp_path
    done = _improve("report", str(target))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("improve: error: ")
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- real browser


def _chromium(page: Path, workdir: Path) -> tuple[Path, list[str]]:
    """Open ``page`` in headless Chromium; return its screenshot and the page's console lines
    (errors, CSP violations, console.* calls)."""
    shot = workdir / "shot.png"
    done = subprocess.run(
        [
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
    return shot, console


def _colours(shot: Path) -> int:
    image = Image.open(shot).convert("RGB")
    return len(image.getcolors(maxcolors=1 << 20) or [])


@needs_chromium
def test_browser_detects_console_errors(tmp_path: Path) -> None:
    """The check below can fail: a page with a script error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><p>x</p><script>undefined_function();</script>")
    _, console = _chromium(bad, tmp_path)
    assert any("Uncaught ReferenceError" in line for line in console)


@needs_chromium
def test_sample_report_renders_in_chromium(run_dir: Path, tmp_path: Path) -> None:
    shot, console = _chromium(write_report(run_dir).html, tmp_path)
    assert console == []
    assert shot.is_file()
    assert Image.open(shot).size == (1200, 2000)
    assert _colours(shot) > 200  # text, badges, diff colours and the plot, not a blank page


@needs_chromium
def test_hostile_journal_runs_nothing_in_chromium(run_dir: Path, tmp_path: Path) -> None:
    # Escaped, the injected scripts are text; unescaped, the CSP would block them and log
    # a violation, so a silent console means nothing was even attempted.
    shot, console = _chromium(write_report(_hostile_run(run_dir)).html, tmp_path)
    assert console == []
    assert _colours(shot) > 200
