"""Does the evidence store help the offline expert on starts it has not seen?

1. **Fill**: refine the existing digits starts (``specs/digits.imp``,
   ``bench/starts/digits_timid_adam.imp``) with the heuristic expert, ``--iters`` each, into
   a fresh store of this bench.
2. **Race**: refine starts the store has not seen, of other failure kinds
   (``bench/starts/digits_unstable_sgd.imp``: a learning rate far too high;
   ``bench/starts/digits_starved_mlp.imp``: a model far too small), ``--iters`` runs after
   the baseline, ``--seeds`` seeds, in two arms:

   - ``memoryless``: ``--no-history`` (the expert's built-in ranking alone);
   - ``with-store``: a copy of the filled store per (start, seed), so seeds do not learn
     from each other.

"Seed" s sets the spec's training seed and the expert's tie-break seed. Every run is real
training on CPU, single-threaded, one at a time; each arm has its own run folder and results
cache. The figure of merit: the number of runs after which the with-store arm's mean best
score reaches the memoryless arm's mean best at ``--iters`` runs.

    python bench/evidence.py --seeds 3 --iters 10
    python bench/evidence.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FILL = {
    "digits": REPO / "specs" / "digits.imp",
    "digits_timid_adam": REPO / "bench" / "starts" / "digits_timid_adam.imp",
}
UNSEEN = {
    "digits_unstable_sgd": REPO / "bench" / "starts" / "digits_unstable_sgd.imp",
    "digits_starved_mlp": REPO / "bench" / "starts" / "digits_starved_mlp.imp",
}
ARMS = ("memoryless", "with-store")
RESULTS = REPO / "bench" / "results"


def spec_copy(source: Path, name: str, seed: int, folder: Path) -> Path:
    text = source.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^(\s*seed\s*=\s*)\d+", rf"\g<1>{seed}", text, count=1)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.imp"
    path.write_text(text, encoding="utf-8")
    return path


def refine_once(spec: Path, seed: int, iters: int, data_home: Path | None) -> dict[str, Any]:
    """One `improve refine` (heuristic, no test run); ``data_home`` None: --no-history."""
    from improve_dsl.refine.live import PlainReporter
    from improve_dsl.refine.loop import refine
    from improve_dsl.refine.options import RefineOptions

    if data_home is not None:
        os.environ["XDG_DATA_HOME"] = str(data_home)
    options = RefineOptions(
        iters=iters,
        expert="heuristic",
        run_dir=spec.parent / "run",
        device="cpu",
        threads=1,
        test=False,
        expert_seed=seed,
        history=data_home is not None,
    )
    with open(spec.parent / "log.txt", "w", encoding="utf-8") as log:
        result = refine(spec, options, PlainReporter(log))
    return {
        "runs": [
            {
                "run": r.iteration,
                "status": r.status,
                "metric": r.metric if r.status in ("accepted", "rejected", "cached") else None,
                "seconds": float(r.extras.get("train_seconds") or r.seconds),
                "change": r.extras.get("move", ""),
            }
            for r in result.records
        ]
    }


def best_by_run(runs: Sequence[dict[str, Any]], iters: int) -> list[float | None]:
    """The best validation score after runs 0..iters (a run that stopped early stays flat)."""
    curve: list[float | None] = []
    best: float | None = None
    for i in range(iters + 1):
        for r in runs:
            if r["run"] == i and r["metric"] is not None:
                best = r["metric"] if best is None else max(best, r["metric"])
        curve.append(best)
    return curve


def mean_curve(results: Sequence[dict[str, Any]], iters: int) -> list[float]:
    curves = [best_by_run(r["runs"], iters) for r in results]
    return [statistics.fmean(c[i] or 0.0 for c in curves) for i in range(iters + 1)]


def runs_to_reach(curve: Sequence[float], target: float) -> int | None:
    return next((i for i, v in enumerate(curve) if v >= target - 1e-12), None)


def report(data: dict[str, Any], out: Path) -> str:
    iters = int(data["iters"])
    lines = [
        f"Evidence store race: {data['seeds']} seeds, {iters} runs after the baseline; the "
        f"store filled by refining {', '.join(data['fill'])} ({iters} runs each).",
        "",
        "| start | memoryless best at 10 (mean ± sd) | with store best at 10 | "
        "with store: runs to reach memoryless's best at 10 | with store best at 6 |",
        "|---|---|---|---|---|",
    ]
    for start, arms in data["race"].items():
        mem = arms["memoryless"]
        withs = arms["with-store"]
        mem_curve, with_curve = mean_curve(mem, iters), mean_curve(withs, iters)
        mem_final = [best_by_run(r["runs"], iters)[iters] or 0.0 for r in mem]
        with_final = [best_by_run(r["runs"], iters)[iters] or 0.0 for r in withs]
        reach = runs_to_reach(with_curve, mem_curve[iters])
        six = min(6, iters)
        lines.append(
            f"| {start} | {_ms(mem_final)} | {_ms(with_final)} | "
            f"{reach if reach is not None else f'not within {iters}'} | "
            f"{100 * with_curve[six]:.2f} |"
        )
        _plot_curves(start, mem_curve, with_curve, out.with_name(f"evidence_{start}.png"))
    return "\n".join(lines)


def _ms(values: Sequence[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * sd:.2f}"


def _plot_curves(start: str, mem: Sequence[float], withs: Sequence[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(10.4, 4.0), dpi=110)
    xs = list(range(len(mem)))
    for axis, first in ((ax, 0), (zoom, 2)):
        axis.plot(xs[first:], [100 * v for v in mem[first:]], marker="o", label="memoryless")
        axis.plot(xs[first:], [100 * v for v in withs[first:]], marker="s", label="with the store")
        axis.axhline(100 * mem[-1], color="grey", linewidth=0.8, linestyle=":")
        axis.set_xlabel("training runs (0 = the starting spec)")
        axis.grid(alpha=0.3)
    ax.set_ylabel("best validation accuracy so far (%), mean of seeds")
    ax.set_title(start)
    zoom.set_title(f"{start}, runs {2}-{len(mem) - 1} (dotted: memoryless at {len(mem) - 1})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--work", type=Path, default=Path("/tmp/improve-evidence-bench"))
    parser.add_argument("--out", type=Path, default=RESULTS / "evidence.json")
    parser.add_argument("--report", action="store_true", help="only rebuild the report")
    args = parser.parse_args(argv)
    if args.report:
        data = json.loads(args.out.read_text())
    else:
        if args.work.exists():
            shutil.rmtree(args.work)
        filled = args.work / "filled-store"
        data = {"seeds": args.seeds, "iters": args.iters, "fill": list(FILL), "race": {}}
        for name, source in FILL.items():
            spec = spec_copy(source, name, 0, args.work / "fill" / name)
            refine_once(spec, 0, args.iters, filled)
            print(f"filled from {name}", flush=True)
        for name, source in UNSEEN.items():
            arms: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
            for seed in range(args.seeds):
                for arm in ARMS:
                    folder = args.work / "race" / name / arm / f"seed-{seed}"
                    spec = spec_copy(source, name, seed, folder)
                    home = None
                    if arm == "with-store":
                        home = folder / "data"
                        shutil.copytree(filled, home)
                    arms[arm].append(refine_once(spec, seed, args.iters, home))
                    curve = best_by_run(arms[arm][-1]["runs"], args.iters)
                    print(f"{name} {arm} seed {seed}: best {curve[-1]}", flush=True)
            data["race"][name] = arms
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=1) + "\n")
    text = report(data, args.out)
    args.out.with_suffix(".md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
