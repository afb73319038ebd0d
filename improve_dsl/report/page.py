"""The report page: a ``RunReport`` rendered through ``templates/report/report.html.jinja``
(autoescaped), with the plot embedded, and ``write_report``, which writes both files.

The page loads nothing: no scripts, no external CSS or fonts; the plot is embedded as a data
URI and its Content-Security-Policy forbids every other source.
"""

from __future__ import annotations

import base64
import difflib
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import jinja2

from ..display import cost_text, metric_text, seconds_text
from ..paths import templates_dir
from .plot import (
    FIG_DPI,
    FIG_INCHES,
    KIND_COLOURS,
    OTHER_COLOUR,
    ablation_size,
    render_ablation_plot,
    render_plot,
)
from .reading import ReportError, RunReport, read_run


@dataclass(frozen=True)
class ReportPaths:
    """Where the report was written."""

    html: Path
    png: Path


def diff_lines(diff: str) -> Iterator[tuple[str, str]]:
    """Each line of a unified diff with its CSS class: header, hunk, added, deleted, context."""
    for line in diff.splitlines():
        if line.startswith(("+++", "---")):
            yield "dh", line
        elif line.startswith("@@"):
            yield "dk", line
        elif line.startswith("+"):
            yield "da", line
        elif line.startswith("-"):
            yield "dd", line
        else:
            yield "dc", line


def delta_class(delta: float) -> str:
    """``pos``, ``neg`` or ``muted`` at the precision shown (+0.0000 is no change)."""
    shown = round(delta, 4)
    return "pos" if shown > 0 else "neg" if shown < 0 else "muted"


def status_line(counts: Mapping[str, int]) -> str:
    """``2 accepted; 1 invalid, 3 rejected``: the accepted first, then the others found."""
    others = ", ".join(
        f"{n} {status}" for status, n in counts.items() if n and status != "accepted"
    )
    return f"{counts.get('accepted', 0)} accepted" + (f"; {others}" if others else "")


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir() / "report"),
        autoescape=True,  # every string from the run is text, never markup
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        metric=metric_text, seconds=seconds_text, cost=cost_text, signed="{:+.4f}".format
    )
    env.globals.update(
        colour=lambda kind: KIND_COLOURS.get(kind, OTHER_COLOUR),
        delta_class=delta_class,
        diff_lines=diff_lines,
        status_line=status_line,
    )
    return env


def render_html(report: RunReport, png: bytes, png_name: str) -> str:
    """The report page as one self-contained HTML string."""
    start_best = ""
    if report.start_text is not None and report.best_text is not None:
        start_best = "".join(
            difflib.unified_diff(
                report.start_text.splitlines(keepends=True),
                report.best_text.splitlines(keepends=True),
                "start.imp",
                "best.imp",
            )
        )
    return (
        _environment()
        .get_template("report.html.jinja")
        .render(
            r=report,
            plot_uri="data:image/png;base64," + base64.b64encode(png).decode("ascii"),
            plot_name=png_name,
            plot_size=tuple(round(inches * FIG_DPI) for inches in FIG_INCHES),
            start_best_diff=start_best,
            ablation_uri=_ablation_uri(report),
            ablation_size=ablation_size(report.ablation) if report.ablation else (0, 0),
        )
    )


def _ablation_uri(report: RunReport) -> str:
    if report.ablation is None or not report.ablation.rows:
        return ""
    png = render_ablation_plot(report.ablation)
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def write_report(run_dir: Path, out: Path | None = None) -> ReportPaths:
    """Write the HTML report of ``run_dir`` to ``out`` (default ``RUN_DIR/report.html``) and
    its plot next to it (same name, ``.png``). Raises ReportError for a missing or empty run
    directory, or when the files cannot be written."""
    report = read_run(Path(run_dir))
    html_path = Path(out) if out is not None else report.run_dir / "report.html"
    png_path = html_path.with_name(html_path.stem + ".png")
    png = render_plot(report)
    page = render_html(report, png, png_path.name)
    try:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        png_path.write_bytes(png)
        html_path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write the report to {html_path}: {exc.strerror or exc}") from exc
    return ReportPaths(html=html_path, png=png_path)
