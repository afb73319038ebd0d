"""The HTML report of a refinement run: one self-contained page plus its plot as a PNG.

``improve report RUN_DIR`` reads ``RUN_DIR/journal.jsonl`` (one record per attempt), and
``final.json``, ``start.imp`` and ``best.imp`` when present, and writes ``report.html`` with
the metric per iteration, each attempt's diff and rationale, time and cost, and the once-only
test score kept apart from the validation scores. The page loads nothing: no scripts, no
external CSS or fonts; the plot is embedded as a data URI and its Content-Security-Policy
forbids every other source. Everything read from the run is HTML-escaped.
"""

from __future__ import annotations

import base64
import difflib
import html
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .journal import BASELINE, RECORD_FIELDS
from .journal import STATUSES as ATTEMPT_STATUSES
from .refine.live import fmt_delta, fmt_metric

STATUSES = (BASELINE, *ATTEMPT_STATUSES)  # iteration 0 shows as "baseline"

# One colour per status, shared by the plot and the page so a point and its row match.
STATUS_COLOURS = {
    "baseline": "#24292f",
    "accepted": "#1a7f37",
    "rejected": "#6e7781",
    "invalid": "#9a6700",
    "failed": "#cf222e",
    "pruned": "#bc4c00",
    "cached": "#0969da",
}
_OTHER_COLOUR = "#8250df"
_FIG_INCHES, _FIG_DPI = (9.6, 4.4), 110

# Journal keys the report reads itself; any other short scalar is shown as a detail.
_KNOWN_KEYS = frozenset(RECORD_FIELDS)
# Extra keys that explain an outcome (a diagnostic, a failure reason): shown as a note.
_NOTE_KEYS = ("reason", "message", "error", "diagnostics", "feedback")


class ReportError(Exception):
    """The run directory cannot be reported on (missing, empty, unwritable): one line."""


@dataclass(frozen=True)
class ReportPaths:
    """Where the report was written."""

    html: Path
    png: Path


@dataclass(frozen=True)
class Attempt:
    """One journal record, with its fields checked and typed."""

    iteration: int
    block: str
    status: str
    metric: float | None
    incumbent_metric: float | None
    spec_sha256: str
    diff: str
    rationale: str
    expert: str
    tokens: int
    cost_usd: float
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def note(self) -> str:
        """The reason or diagnostics recorded for this outcome, if any."""
        parts = [str(self.extra[k]) for k in _NOTE_KEYS if self.extra.get(k)]
        return "\n".join(parts)

    @property
    def details(self) -> list[tuple[str, str]]:
        """Other short scalar fields of the record (e.g. the heuristic expert's move)."""
        out = []
        for key, value in self.extra.items():
            if key in _NOTE_KEYS or value in (None, "") or isinstance(value, (dict, list)):
                continue
            text = str(value)
            if len(text) <= 120:
                out.append((key, text))
        return out


@dataclass(frozen=True)
class Journal:
    """The attempts of a run in journal order, and notes about lines that were skipped."""

    attempts: list[Attempt]
    notes: list[str]


# ---------------------------------------------------------------- reading


def _as_float(value: Any) -> float | None:
    # bool is an int subclass; a true/false metric is a writer bug, not a score.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _as_int(value: Any, default: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return int(value) if math.isfinite(value) else default


def _as_str(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _attempt(record: dict[str, Any], index: int) -> Attempt:
    return Attempt(
        iteration=_as_int(record.get("iteration"), index),
        block=_as_str(record.get("block")) or "?",
        status=_as_str(record.get("status")) or "?",
        metric=_as_float(record.get("metric")),
        incumbent_metric=_as_float(record.get("incumbent_metric")),
        spec_sha256=_as_str(record.get("spec_sha256")),
        diff=_as_str(record.get("diff")),
        rationale=_as_str(record.get("rationale")),
        expert=_as_str(record.get("expert")),
        tokens=_as_int(record.get("tokens")),
        cost_usd=_as_float(record.get("cost_usd")) or 0.0,
        seconds=_as_float(record.get("seconds")) or 0.0,
        extra={k: v for k, v in record.items() if k not in _KNOWN_KEYS},
    )


def read_journal(path: Path) -> Journal:
    """The records of ``journal.jsonl``; unreadable lines are skipped with a note.

    Only the last line can be torn by a crash mid-write; a bad line elsewhere is also
    skipped rather than refusing the whole report, since the rest is still worth reading.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from exc
    lines = text.splitlines()
    attempts: list[Attempt] = []
    notes: list[str] = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            if number == last:
                notes.append(
                    f"line {number + 1} of journal.jsonl is incomplete (the run "
                    "stopped while writing it) and was skipped"
                )
            else:
                notes.append(
                    f"line {number + 1} of journal.jsonl is not a JSON object and was skipped"
                )
            continue
        attempts.append(_attempt(record, len(attempts)))
    return Journal(attempts, notes)


def _read_optional(path: Path, notes: list[str]) -> str | None:
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        notes.append(f"cannot read {path.name}: {exc.strerror or exc}")
        return None


def _read_final(path: Path, notes: list[str]) -> dict[str, Any] | None:
    text = _read_optional(path, notes)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        notes.append(
            f"final.json is not valid JSON ({exc.msg}, line {exc.lineno}); "
            "the test score is not shown"
        )
        return None
    if not isinstance(data, dict):
        notes.append("final.json is not a JSON object; the test score is not shown")
        return None
    return data


# ---------------------------------------------------------------- figures


def incumbent_trace(attempts: Sequence[Attempt]) -> list[float | None]:
    """The incumbent (best kept score) after each attempt, in journal order."""
    trace: list[float | None] = []
    current: float | None = None
    for attempt in attempts:
        if current is None:
            current = attempt.incumbent_metric
        if attempt.status in ("baseline", "accepted") and attempt.metric is not None:
            current = attempt.metric
        trace.append(current)
    return trace


def _fmt_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _fmt_cost(cost: float) -> str:
    return f"${cost:.4f}" if cost < 1 else f"${cost:,.2f}"


def render_plot(attempts: Sequence[Attempt], metric_label: str) -> bytes:
    """The metric per iteration as PNG bytes: the incumbent as a step line, every scored
    candidate as a point coloured by status (accepted ones as stars), unscored attempts
    (invalid, failed) as crosses along the bottom."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=_FIG_INCHES, dpi=_FIG_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = list(range(len(attempts)))
    trace = incumbent_trace(attempts)
    inc_x = [x for x, v in zip(xs, trace, strict=True) if v is not None]
    inc_y = [v for v in trace if v is not None]
    if inc_x:
        ax.step(
            inc_x,
            inc_y,
            where="post",
            color="#1a7f37",
            linewidth=2,
            alpha=0.55,
            label="incumbent (best kept)",
            zorder=1,
        )

    for status in [*STATUSES, None]:
        chosen = [
            (x, a)
            for x, a in zip(xs, attempts, strict=True)
            if (a.status == status if status else a.status not in STATUSES)
        ]
        colour = STATUS_COLOURS.get(status or "", _OTHER_COLOUR)
        scored = [(x, a.metric) for x, a in chosen if a.metric is not None]
        if scored:
            marker, size = {"accepted": ("*", 230), "baseline": ("s", 70), "cached": ("D", 50)}.get(
                status or "", ("o", 55)
            )
            ax.scatter(
                [x for x, _ in scored],
                [m for _, m in scored],
                s=size,
                marker=marker,
                color=colour,
                edgecolors="white",
                linewidths=0.8,
                zorder=3,
                label=status or "other",
            )
        unscored = [x for x, a in chosen if a.metric is None]
        if unscored:
            # No score to place them by: pin them to the bottom edge of the axes.
            ax.scatter(
                unscored,
                [0.04] * len(unscored),
                marker="x",
                s=50,
                color=colour,
                transform=ax.get_xaxis_transform(),
                zorder=3,
                clip_on=False,
                label=f"{status or 'other'} (no score)",
            )
    for x, attempt in zip(xs, attempts, strict=True):
        if attempt.status == "accepted" and attempt.metric is not None:
            ax.annotate(
                attempt.block,
                (x, attempt.metric),
                textcoords="offset points",
                xytext=(0, 11),
                ha="center",
                fontsize=9,
                color="#1a7f37",
            )

    scores = [a.metric for a in attempts if a.metric is not None]
    if scores:
        low, high = min(scores), max(scores)
        pad = max((high - low) * 0.15, 0.005)
        ax.set_ylim(low - pad * 1.6, high + pad * 1.4)
    ax.set_xlim(-0.5, max(len(attempts) - 0.5, 0.5))
    ax.set_xticks(xs)
    ax.set_xticklabels([str(a.iteration) for a in attempts])
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.set_xlabel("iteration")
    ax.set_ylabel(metric_label)
    ax.grid(True, color="#d0d7de", linewidth=0.6, alpha=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# ---------------------------------------------------------------- HTML


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _diff_html(diff: str) -> str:
    if not diff.strip():
        return '<p class="muted">No change recorded.</p>'
    rows = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---")):
            kind = "dh"
        elif line.startswith("@@"):
            kind = "dk"
        elif line.startswith("+"):
            kind = "da"
        elif line.startswith("-"):
            kind = "dd"
        else:
            kind = "dc"
        rows.append(f'<span class="{kind}">{_e(line) or " "}</span>')
    return f'<pre class="diff">{"".join(rows)}</pre>'


def _badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, _OTHER_COLOUR)
    return f'<span class="badge" style="background:{colour}">{_e(status)}</span>'


_CSS = """
:root { --fg:#1f2328; --muted:#656d76; --line:#d0d7de; --bg:#ffffff; --soft:#f6f8fa; }
* { box-sizing: border-box; }
body { margin:0; background:var(--soft); color:var(--fg);
  font: 15px/1.5 -apple-system, "Segoe UI", "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 12px; padding-bottom: 6px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 0; display:flex; gap:10px; align-items:center; flex-wrap:wrap; }
code, pre, .mono { font-family: ui-monospace, "SFMono-Regular", "DejaVu Sans Mono", Menlo,
  Consolas, monospace; }
.muted { color: var(--muted); }
.sub { color: var(--muted); margin: 0 0 20px; word-break: break-all; }
.cards { display:grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 12px; }
.card { background:var(--bg); border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
.card .k { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
.card .v { font-size: 22px; font-weight: 600; margin-top: 2px; }
.card .d { font-size: 13px; color: var(--muted); }
.test { border: 2px solid #8250df; background: #fbf8ff; }
.test .v { color: #6639ba; }
.notes { background:#fff8c5; border:1px solid #d4a72c; border-radius:8px; padding:10px 14px;
  margin: 16px 0; }
.notes ul { margin: 4px 0; padding-left: 20px; }
figure { margin:0; background:var(--bg); border:1px solid var(--line); border-radius:8px;
  padding: 10px; }
figure img { display:block; max-width:100%; height:auto; margin: 0 auto; }
figcaption { font-size: 13px; color: var(--muted); padding: 6px 6px 0; }
table { width:100%; border-collapse: collapse; background:var(--bg); border:1px solid var(--line);
  border-radius: 8px; overflow:hidden; font-size: 14px; }
th, td { padding: 7px 10px; text-align:left; border-bottom:1px solid var(--line);
  white-space: nowrap; }
th { background: var(--soft); font-weight: 600; font-size: 13px; }
td.num, th.num { text-align:right; font-variant-numeric: tabular-nums; }
tfoot td { font-weight: 600; background: var(--soft); border-bottom: 0; }
a { color:#0969da; text-decoration:none; } a:hover { text-decoration:underline; }
.pos { color:#1a7f37; } .neg { color:#cf222e; }
.badge { display:inline-block; color:#fff; border-radius: 999px; padding: 1px 9px; font-size: 12px;
  font-weight: 600; line-height: 18px; }
.attempt { background:var(--bg); border:1px solid var(--line); border-radius:8px;
  padding: 14px 16px; margin: 12px 0; }
.attempt.accepted { border-left: 4px solid #1a7f37; }
.meta { font-size: 13px; color: var(--muted); margin: 4px 0 8px; }
.meta span + span::before { content: "·"; margin: 0 7px; color: var(--line); }
.rationale { margin: 8px 0; white-space: pre-wrap; }
pre { margin: 8px 0 0; background: var(--soft); border:1px solid var(--line); border-radius:6px;
  padding: 8px 0; overflow-x:auto; font-size: 13px; line-height: 1.45; }
pre.note { padding: 8px 12px; background:#fff1f0; border-color:#ffcecb; white-space: pre-wrap; }
pre.spec { padding: 8px 12px; }
.diff span { display:block; padding: 0 12px; white-space: pre; }
.diff .da { background:#dafbe1; color:#116329; }
.diff .dd { background:#ffebe9; color:#a40e26; }
.diff .dk { color:#0550ae; background:#ddf4ff; }
.diff .dh { color: var(--muted); font-weight: 600; }
footer { margin-top: 40px; font-size: 12px; color: var(--muted); }
"""


def _pipeline_name(spec_text: str | None) -> str | None:
    if spec_text is None:
        return None
    match = re.search(r"^\s*pipeline\s+([A-Za-z_][A-Za-z0-9_]*)", spec_text, re.MULTILINE)
    return match.group(1) if match else None


def _card(key: str, value: str, detail: str = "", cls: str = "") -> str:
    extra = f'<div class="d">{detail}</div>' if detail else ""
    return (
        f'<div class="card {cls}"><div class="k">{_e(key)}</div>'
        f'<div class="v">{value}</div>{extra}</div>'
    )


def _delta_html(value: float | None, reference: float | None) -> str:
    if value is None or reference is None:
        return ""
    delta = round(value - reference, 4)  # the precision shown: +0.0000 is no change
    cls = "pos" if delta > 0 else "neg" if delta < 0 else "muted"
    return f'<span class="{cls}">{_e(fmt_delta(value, reference))}</span>'


def render_html(
    run_dir: Path,
    journal: Journal,
    *,
    png: bytes,
    png_name: str,
    final: dict[str, Any] | None,
    start_text: str | None,
    best_text: str | None,
    notes: Sequence[str] = (),
) -> str:
    """The report page as one self-contained HTML string."""
    attempts = journal.attempts
    metric_name = _as_str(final.get("metric")) if final else ""
    metric_label = f"validation {metric_name}" if metric_name else "validation metric"
    name = _pipeline_name(start_text) or _pipeline_name(best_text) or run_dir.name
    trace = incumbent_trace(attempts)
    baseline = next((a.metric for a in attempts if a.status == "baseline"), None)
    if baseline is None:
        baseline = next((a.incumbent_metric for a in attempts), None)
    best = trace[-1] if trace else None
    tried = [a for a in attempts if a.status != "baseline"]
    accepted = sum(a.status == "accepted" for a in tried)
    total_seconds = sum(a.seconds for a in attempts)
    total_cost = sum(a.cost_usd for a in attempts)
    total_tokens = sum(a.tokens for a in attempts)
    counts = {s: sum(a.status == s for a in tried) for s in dict.fromkeys(a.status for a in tried)}

    out: list[str] = []
    add = out.append
    add("<!DOCTYPE html>")
    add('<html lang="en"><head><meta charset="utf-8">')
    # Defence in depth: even if something slipped past escaping, nothing may run or load.
    add(
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">"
    )
    add('<meta name="viewport" content="width=device-width, initial-scale=1">')
    add(f"<title>improve report: {_e(name)}</title>")
    add(f"<style>{_CSS}</style></head><body><main>")
    add(f"<h1>Refinement of <code>{_e(name)}</code></h1>")
    add(f'<p class="sub">Run directory <span class="mono">{_e(run_dir)}</span></p>')

    # ---- summary
    gain = _delta_html(best, baseline)
    cards = [
        _card("baseline", _e(fmt_metric(baseline)), _e(metric_label)),
        _card(
            "best",
            _e(fmt_metric(best)),
            f"{_e(metric_label)}" + (f"<br>{gain} over baseline" if gain else ""),
        ),
    ]
    test = _as_float(final.get("test_metric")) if final else None
    if test is not None:
        cards.append(
            _card(
                f"test {metric_name}".strip(),
                _e(fmt_metric(test)),
                "scored once on the held-out test split after refinement; never used to choose",
                "test",
            )
        )
    else:
        cards.append(
            _card(
                "test",
                '<span class="muted">—</span>',
                "not scored yet: run <code>improve evaluate</code>",
            )
        )
    status_line = ", ".join(f"{n} {_e(s)}" for s, n in counts.items() if s != "accepted")
    cards += [
        _card(
            "attempts",
            _e(len(tried)),
            f"{accepted} accepted" + (f"; {status_line}" if status_line else ""),
        ),
        _card("time", _e(_fmt_seconds(total_seconds)), "training, checks and expert calls"),
        _card("cost", _e(_fmt_cost(total_cost)), f"{total_tokens:,} tokens"),
    ]
    add(f'<section class="cards">{"".join(cards)}</section>')

    all_notes = [*journal.notes, *notes]
    if all_notes:
        items = "".join(f"<li>{_e(n)}</li>" for n in all_notes)
        add(f'<div class="notes"><strong>Notes</strong><ul>{items}</ul></div>')

    # ---- plot
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    add(f"<h2>{_e(metric_label.capitalize())} per iteration</h2>")
    width, height = (round(inches * _FIG_DPI) for inches in _FIG_INCHES)
    add(
        f'<figure><img src="{data_uri}" width="{width}" height="{height}" '
        f'alt="{_e(metric_label)} per iteration: the incumbent as a step line, each '
        'candidate as a point coloured by status">'
        f"<figcaption>The green step line is the incumbent (the best kept score); stars mark "
        f"accepted changes; crosses at the bottom are attempts without a score. Also saved as "
        f'<span class="mono">{_e(png_name)}</span>.</figcaption></figure>'
    )

    # ---- table
    add("<h2>Attempts</h2>")
    add(
        "<table><thead><tr><th class=num>#</th><th>block</th><th>status</th>"
        '<th class="num">metric</th><th class="num">Δ incumbent</th>'
        '<th class="num">time</th><th class="num">cost</th><th class="num">tokens</th>'
        "<th>expert</th></tr></thead><tbody>"
    )
    for index, a in enumerate(attempts):
        before = (
            a.incumbent_metric
            if a.incumbent_metric is not None
            else (trace[index - 1] if index else None)
        )
        add(
            f'<tr><td class="num"><a href="#attempt-{index}">{_e(a.iteration)}</a></td>'
            f"<td><code>{_e(a.block)}</code></td><td>{_badge(a.status)}</td>"
            f'<td class="num">{_e(fmt_metric(a.metric))}</td>'
            f'<td class="num">{_delta_html(a.metric, before) if a.status != "baseline" else ""}'
            f'</td><td class="num">{_e(_fmt_seconds(a.seconds))}</td>'
            f'<td class="num">{_e(_fmt_cost(a.cost_usd))}</td>'
            f'<td class="num">{a.tokens:,}</td><td>{_e(a.expert) or "—"}</td></tr>'
        )
    add(
        f'</tbody><tfoot><tr><td colspan="5">total ({len(tried)} attempts, {accepted} accepted)'
        f'</td><td class="num">{_e(_fmt_seconds(total_seconds))}</td>'
        f'<td class="num">{_e(_fmt_cost(total_cost))}</td>'
        f'<td class="num">{total_tokens:,}</td><td></td></tr></tfoot></table>'
    )

    # ---- per attempt
    add("<h2>Changes and rationales</h2>")
    for index, a in enumerate(attempts):
        before = (
            a.incumbent_metric
            if a.incumbent_metric is not None
            else (trace[index - 1] if index else None)
        )
        score = _e(fmt_metric(a.metric))
        if a.status != "baseline" and before is not None and a.metric is not None:
            score += f" ({_delta_html(a.metric, before)} vs {_e(fmt_metric(before))})"
        meta = [
            f"<span>{metric_label} {score}</span>",
            f"<span>{_e(_fmt_seconds(a.seconds))}</span>",
            f"<span>{_e(_fmt_cost(a.cost_usd))}, {a.tokens:,} tokens</span>",
        ]
        if a.expert:
            meta.append(f"<span>expert {_e(a.expert)}</span>")
        if a.spec_sha256:
            meta.append(f'<span class="mono" title="spec sha256">{_e(a.spec_sha256[:12])}</span>')
        meta += [f"<span>{_e(k)} {_e(v)}</span>" for k, v in a.details]
        title = (
            "baseline"
            if a.status == "baseline"
            else f"iteration {_e(a.iteration)} <code>{_e(a.block)}</code>"
        )
        add(
            f'<section class="attempt {_e(a.status)}" id="attempt-{index}">'
            f"<h3>{title} {_badge(a.status)}</h3>"
            f'<div class="meta">{"".join(meta)}</div>'
        )
        if a.rationale:
            add(f'<p class="rationale">{_e(a.rationale)}</p>')
        if a.note:
            add(f'<pre class="note">{_e(a.note)}</pre>')
        if a.status != "baseline" or a.diff:
            add(_diff_html(a.diff))
        add("</section>")

    # ---- best spec
    if best_text is not None:
        add("<h2>Best spec</h2>")
        if start_text is not None:
            diff = "".join(
                difflib.unified_diff(
                    start_text.splitlines(keepends=True),
                    best_text.splitlines(keepends=True),
                    "start.imp",
                    "best.imp",
                )
            )
            add("<p>Start → best:</p>" + _diff_html(diff))
        add(
            f'<p>The full best spec (<span class="mono">best.imp</span>):</p>'
            f'<pre class="spec">{_e(best_text.rstrip())}</pre>'
        )
    elif start_text is not None:
        add(f'<h2>Starting spec</h2><pre class="spec">{_e(start_text.rstrip())}</pre>')

    add(
        "<footer>Written by <code>improve report</code>. Validation scores guided refinement; "
        "the test score, when shown, was computed once after it ended.</footer>"
    )
    add("</main></body></html>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- entry point


def write_report(run_dir: Path, out: Path | None = None) -> ReportPaths:
    """Write the HTML report of ``run_dir`` to ``out`` (default ``RUN_DIR/report.html``) and
    its plot next to it (same name, ``.png``). Raises ReportError for a missing or empty run
    directory, or when the files cannot be written."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"no such run directory: {run_dir}")
    journal_path = run_dir / "journal.jsonl"
    if not journal_path.is_file():
        raise ReportError(
            f"{run_dir} has no journal.jsonl (is it a run directory of `improve refine`?)"
        )
    journal = read_journal(journal_path)
    if not journal.attempts:
        raise ReportError(f"{journal_path} holds no attempts yet")

    notes: list[str] = []
    final = _read_final(run_dir / "final.json", notes)
    start_text = _read_optional(run_dir / "start.imp", notes)
    best_text = _read_optional(run_dir / "best.imp", notes)

    html_path = Path(out) if out is not None else run_dir / "report.html"
    png_path = html_path.with_name(html_path.stem + ".png")
    metric_name = _as_str(final.get("metric")) if final else ""
    png = render_plot(
        journal.attempts, f"validation {metric_name}" if metric_name else "validation metric"
    )
    page = render_html(
        run_dir,
        journal,
        png=png,
        png_name=png_path.name,
        final=final,
        start_text=start_text,
        best_text=best_text,
        notes=notes,
    )
    try:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        png_path.write_bytes(png)
        html_path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write the report to {html_path}: {exc.strerror or exc}") from exc
    return ReportPaths(html=html_path, png=png_path)
