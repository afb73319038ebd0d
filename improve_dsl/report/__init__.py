"""The HTML report of a refinement run (``improve report RUN_DIR``): ``reading`` gathers the
run through the journal's record type, ``plot`` draws the metric per iteration, ``page``
renders the autoescaped template and writes the page with its PNG beside it."""

from .page import ReportPaths, render_html, write_report
from .plot import build_figure, render_plot
from .reading import KINDS, Attempt, ReportError, RunReport, incumbent_trace, read_run

__all__ = [
    "KINDS",
    "Attempt",
    "ReportError",
    "ReportPaths",
    "RunReport",
    "build_figure",
    "incumbent_trace",
    "read_run",
    "render_html",
    "render_plot",
    "write_report",
]
