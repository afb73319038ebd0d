"""The report's plot: the metric per iteration as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from ..journal import BASELINE, STATUS_COLOURS
from .reading import KINDS, RunReport

# One colour per kind of row, shared by the plot and the page so a point and its row match:
# the baseline's, then each status's as the journal declares it.
KIND_COLOURS = {BASELINE: "#24292f", **STATUS_COLOURS}
OTHER_COLOUR = "#8250df"
_MARKERS = {"accepted": ("*", 230), BASELINE: ("s", 70), "cached": ("D", 50)}
FIG_INCHES, FIG_DPI = (9.6, 4.4), 110

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..refine.ablation import Ablation

ABLATION_INCHES = (9.6, 1.6)  # plus this much height per change


def render_plot(report: RunReport) -> bytes:
    """The plot of ``build_figure`` as PNG bytes."""
    buffer = io.BytesIO()
    build_figure(report).savefig(buffer, format="png")
    return buffer.getvalue()


def build_figure(report: RunReport) -> Figure:
    """The metric per iteration: the incumbent as a step line, the baseline as a square,
    every scored attempt as a point coloured by status (accepted ones as stars, labelled
    with their block), and unscored attempts (invalid, failed) as crosses along the bottom."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    attempts = report.attempts
    fig = Figure(figsize=FIG_INCHES, dpi=FIG_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = list(range(len(attempts)))
    trace = report.trace
    inc_x = [x for x, v in zip(xs, trace, strict=True) if v is not None]
    inc_y = [v for v in trace if v is not None]
    if inc_x:
        ax.step(
            inc_x,
            inc_y,
            where="post",
            color=KIND_COLOURS["accepted"],
            linewidth=2,
            alpha=0.55,
            label="incumbent (best kept)",
            zorder=1,
        )
    kinds = [*KINDS, *sorted({a.kind for a in attempts} - set(KINDS))]
    for kind in kinds:
        chosen = [(x, a) for x, a in zip(xs, attempts, strict=True) if a.kind == kind]
        colour = KIND_COLOURS.get(kind, OTHER_COLOUR)
        scored = [(x, a.record.metric) for x, a in chosen if a.record.metric is not None]
        if scored:
            marker, size = _MARKERS.get(kind, ("o", 55))
            ax.scatter(
                [x for x, _ in scored],
                [m for _, m in scored],
                s=size,
                marker=marker,
                color=colour,
                edgecolors="white",
                linewidths=0.8,
                zorder=3,
                label=kind,
            )
        unscored = [x for x, a in chosen if a.record.metric is None]
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
                label=f"{kind} (no score)",
            )
    for x, attempt in zip(xs, attempts, strict=True):
        if attempt.kind == "accepted" and attempt.record.metric is not None:
            ax.annotate(
                attempt.record.block,
                (x, attempt.record.metric),
                textcoords="offset points",
                xytext=(0, 11),
                ha="center",
                fontsize=9,
                color=KIND_COLOURS["accepted"],
            )

    scores = [a.record.metric for a in attempts if a.record.metric is not None]
    if scores:
        low, high = min(scores), max(scores)
        pad = max((high - low) * 0.15, 0.005)
        ax.set_ylim(low - pad * 1.6, high + pad * 1.4)
    ax.set_xlim(-0.5, max(len(attempts) - 0.5, 0.5))
    ax.set_xticks(xs)
    ax.set_xticklabels([str(a.record.iteration) for a in attempts])
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.set_xlabel("iteration")
    ax.set_ylabel(report.metric_label)
    ax.grid(True, color="#d0d7de", linewidth=0.6, alpha=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    fig.tight_layout()
    return fig


def render_ablation_plot(ablation: Ablation) -> bytes:
    """``build_ablation_figure`` as PNG bytes."""
    buffer = io.BytesIO()
    build_ablation_figure(ablation).savefig(buffer, format="png")
    return buffer.getvalue()


def ablation_size(ablation: Ablation) -> tuple[int, int]:
    """The ablation chart's size in pixels."""
    width, height = ABLATION_INCHES
    return round(width * FIG_DPI), round((height + 0.5 * len(ablation.rows)) * FIG_DPI)


def build_ablation_figure(ablation: Ablation) -> Figure:
    """One row per kept change: what leaving it out of the best spec costs and what adding
    it alone to the start gains, each with its seed spread as an error bar; a change within
    the noise is drawn hollow."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = ABLATION_INCHES
    fig = Figure(figsize=(width, height + 0.5 * len(ablation.rows)), dpi=FIG_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rows = list(reversed(ablation.rows))
    ys = list(range(len(rows)))
    bar = 0.38
    for offset, name, colour, value, spread in (
        (bar / 2, "leave-one-out drop", KIND_COLOURS["accepted"], "drop", "drop_spread"),
        (-bar / 2, "add-one-in gain", KIND_COLOURS["cached"], "gain", "gain_spread"),
    ):
        values = [getattr(r, value) or 0.0 for r in rows]
        errors = [getattr(r, spread) or 0.0 for r in rows]
        hollow = [r.within_noise and value == "drop" for r in rows]
        ax.barh(
            [y + offset for y in ys],
            values,
            height=bar,
            xerr=errors,
            color=["white" if h else colour for h in hollow],
            edgecolor=colour,
            linewidth=1.5,
            capsize=3,
            label=name,
        )
    ax.axvline(0, color="#24292f", linewidth=0.8)
    ax.set_yticks(ys, [f"{r.label} ({r.block})" for r in rows])
    ax.set_xlabel(f"change in {ablation.metric} (mean over {len(ablation.seeds)} seed(s))")
    ax.set_title("Which kept changes matter (hollow: removal costs less than the noise)")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig
