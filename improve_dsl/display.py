"""How numbers are written for people, the same in the terminal and in the report: scores,
score changes, durations and costs."""

from __future__ import annotations


def metric_text(value: float | None) -> str:
    """A score to four places, or an em dash when there is none."""
    return "—" if value is None else f"{value:.4f}"


def delta_text(metric: float | None, incumbent: float | None) -> str:
    """The signed change from ``incumbent`` to ``metric`` (``+0.0214``), or "" without both."""
    if metric is None or incumbent is None:
        return ""
    return f"{metric - incumbent:+.4f}"


def seconds_text(seconds: float) -> str:
    """``4.2 s``, ``3 min 05 s`` or ``1 h 02 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def cost_text(cost: float) -> str:
    """Dollars: four places below a dollar (API calls are cheap), cents above."""
    return f"${cost:.4f}" if cost < 1 else f"${cost:,.2f}"


def clip_words(text: str, limit: int) -> str:
    """The first line of ``text``, cut at a word boundary to at most ``limit`` characters,
    with "..." where it was cut."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if len(line) <= limit:
        return line
    cut = line[: max(1, limit - 3)]
    if " " in cut.strip():
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:.-—") + "..."


def plural(count: int, noun: str) -> str:
    """``1 iteration``, ``5 iterations``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"
