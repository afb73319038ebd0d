"""What rendering a script costs: the templates' draft, then black over it.

For every example spec (``specs/*.imp``) and feature spec (``tests/fixtures/features``): the
script's lines, the time to render the draft (two Jinja passes), black's time on it, black's
share of the two, and how many lines black changed. The templates are written as black
writes, so the changed lines should be 0 (``tests/test_render.py`` holds the examples to
it); on a rougher draft black takes about twice as long (BENCHMARKS.md, "The fast tier").
Each time is the median of ``--repeats`` runs in this process.

    .venv/bin/python bench/render_cost.py
"""

from __future__ import annotations

import argparse
import difflib
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from improve_dsl.render import format_code, render_unformatted
from improve_dsl.validate import load_text

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.imp")) + sorted(
    (ROOT / "tests" / "fixtures" / "features").glob("*.imp")
)


def median_seconds(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    black = format_code.__wrapped__  # not the cache: every run formats
    print(f"{'spec':<24} {'lines':>5} {'render':>7} {'black':>7} {'share':>6} changed")
    for spec in SPECS:
        text = spec.read_text(encoding="utf-8")
        parsed = load_text(text, spec.relative_to(ROOT).as_posix())
        draft = render_unformatted(parsed)
        script = black(draft)
        changed = sum(
            1
            for line in difflib.unified_diff(draft.splitlines(), script.splitlines(), n=0)
            if line.startswith("-") and not line.startswith("---")
        )
        render = median_seconds(lambda: render_unformatted(parsed), args.repeats)  # noqa: B023
        on_draft = median_seconds(lambda: black(draft), args.repeats)  # noqa: B023
        share = on_draft / (render + on_draft)
        print(
            f"{spec.stem:<24} {len(script.splitlines()):>5} {render:>6.3f}s {on_draft:>6.3f}s "
            f"{share:>6.0%} {changed:>7}"
        )


if __name__ == "__main__":
    main()
