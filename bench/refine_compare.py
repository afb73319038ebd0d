"""Does Iterative Refinement beat all-at-once and zero-shot here? Five strategies, same budget.

On a copy of specs/fashion_mnist_quick.imp (the weak Fashion-MNIST subset spec; the copy may
take a smaller ``--subset`` and ``--val-fraction`` so the whole comparison fits the CPU), each
strategy runs ``--iters`` iterations after the shared baseline, once per seed:

- ``iterative``    the heuristic expert rewrites one block per iteration (the paper's method)
- ``all-at-once``  the heuristic expert rewrites every block per iteration
- ``zero-shot``    the heuristic expert rewrites every block once, no iteration
- ``random``       random valid one-block edits from the registry (bench/random_expert.py)
- ``optuna``       Optuna's TPE sampler over the same space as ``random``, every block per trial

All five go through the same machinery: ``improve refine``'s loop (improve_dsl/refine/loop.py)
with its compile-time checks, keep-if-better rule, pruning, results cache and the final
once-only test run of the best spec; only the expert differs. "Seed" s sets the training seed
(the spec's ``seed``), the heuristic's tie-break seed, the random expert's seed and the TPE
sampler's seed. Within a seed, the strategies share a results cache, so the baseline is trained
once and a candidate two strategies both propose is trained once (it still counts as one of
each strategy's runs).

Each finished (strategy, seed) run is written at once to ``--out`` (JSON), so a crash loses at
most the run in progress; rerunning the same command skips finished runs. ``--report`` only
rebuilds the table and the plot from that JSON.

    python bench/refine_compare.py --iters 5 --seeds 2 --subset 2000 --val-fraction 0.05 \
        --timeout 180
    python bench/refine_compare.py --report
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from random_expert import RandomExpert, all_blocks_text  # noqa: E402

from improve_dsl import registry  # noqa: E402
from improve_dsl.refine import loop  # noqa: E402
from improve_dsl.refine.expert import Context, Proposal, Selection  # noqa: E402
from improve_dsl.refine.live import PlainReporter  # noqa: E402
from improve_dsl.refine.options import RefineOptions  # noqa: E402

STRATEGIES = ("iterative", "all-at-once", "zero-shot", "random", "optuna")
SPEC = REPO / "specs" / "fashion_mnist_quick.imp"
RESULTS = REPO / "bench" / "results"


# ---------------------------------------------------------------- the Optuna expert


class OptunaDraw:
    """The ``Draw`` interface of random_expert.py over an Optuna trial."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def choice(self, name: str, options: Sequence[Any]) -> Any:
        return self.trial.suggest_categorical(name, list(options))

    def uniform(self, name: str, low: float, high: float, log: bool = False) -> float:
        return float(self.trial.suggest_float(name, low, high, log=log))

    def integer(self, name: str, low: int, high: int) -> int:
        return int(self.trial.suggest_int(name, low, high))


class OptunaExpert:
    """TPE over the shared search space; each trial proposes every refinable block.

    The loop trains each proposal like any other; the next ``propose`` reads the previous
    trial's score from the history and tells the study (failed or refused: a failed trial).
    """

    name = "optuna-tpe"

    def __init__(self, seed: int, startup_trials: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
        self.study = optuna.create_study(direction="maximize", sampler=sampler)
        self.open: Any = None
        self.told = 0

    def _tell(self, value: float | None) -> None:
        import optuna

        if value is None:
            self.study.tell(self.open, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(self.open, value)
        self.open = None

    def select(self, context: Context, candidates: Sequence[str]) -> Selection | None:
        return None

    def propose(self, context: Context) -> Proposal:
        if self.open is not None:
            if context.feedback:  # the loop refused the last sample: a failed trial
                self._tell(None)
            else:
                done = [a for a in context.history if a.status != "pending"]
                last = done[-1] if done else None
                scored = last is not None and last.status in (
                    "accepted",
                    "rejected",
                    "cached",
                    "pruned",
                )
                self._tell(last.metric if scored and last is not None else None)
        self.open = self.study.ask()
        text = all_blocks_text(OptunaDraw(self.open))
        return Proposal(
            text=text,
            rationale=f"TPE trial {self.open.number}",
            move=f"tpe-{self.open.number}",
            raw=text,
        )


# ---------------------------------------------------------------- one run


def bench_spec_text(seed: int, subset: int | None, val_fraction: float | None) -> str:
    """The quick spec with this seed (and, if given, a smaller subset and validation share)."""
    text = SPEC.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^(\s*seed\s*=\s*)\d+", rf"\g<1>{seed}", text, count=1)
    if subset is not None:
        text = re.sub(r"subset\s*=\s*\d+", f"subset = {subset}", text, count=1)
    if val_fraction is not None:
        text = re.sub(r"fraction\s*=\s*[0-9.]+", f"fraction = {val_fraction}", text, count=1)
    return text


def run_one(strategy: str, seed: int, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """One strategy with one seed, through the refine loop; a summary of what it did."""
    folder = Path(args.work) / f"seed-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "quick.imp"
    start = bench_spec_text(seed, args.subset, args.val_fraction)
    spec_path.write_text(start, encoding="utf-8")  # the loop writes accepted specs back here
    run_dir = folder / "quick.improve" / strategy
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a run cut short is redone whole (the cache keeps its work)
    options = RefineOptions(
        iters=args.iters,
        expert="heuristic",
        select="analyst",  # heuristic and optuna: no analyst, so the diagnosis selects
        strategy="all-at-once"
        if strategy in ("all-at-once", "zero-shot", "optuna")
        else "iterative",
        zero_shot=strategy == "zero-shot",
        run_dir=run_dir,
        device="cpu",
        threads=args.threads,
        timeout=args.timeout,
        expert_seed=seed,
    )
    reporter = PlainReporter(log)
    refiner = loop._start(spec_path, options, reporter)
    if strategy == "random":
        refiner.expert = RandomExpert(seed)
    elif strategy == "optuna":
        refiner.expert = OptunaExpert(seed, startup_trials=max(2, args.iters // 3))
    started = time.monotonic()
    try:
        result = refiner.refine()
    finally:
        reporter.close()
    wall = time.monotonic() - started
    attempts = []
    for r in result.records:
        attempts.append(
            {
                "iteration": r.iteration,
                "block": r.block,
                "status": r.status,
                "metric": r.metric,
                "seconds": r.seconds,
                "move": r.extras.get("move", ""),
                "cached": bool(r.extras.get("cached")),
            }
        )
    final_path = run_dir / "final.json"
    final = json.loads(final_path.read_text()) if final_path.exists() else {}
    return {
        "strategy": strategy,
        "seed": seed,
        "attempts": attempts,
        "curve": best_so_far(attempts, args.iters),
        "best_val": result.best_metric,
        "best_iteration": result.best_iteration,
        "test": result.test_metric,
        "test_status": final.get("status"),
        "best_spec": result.best_spec.read_text(encoding="utf-8"),
        "trained_runs": sum(
            1 for a in attempts if not a["cached"] and a["status"] not in ("invalid",)
        ),
        "wall_seconds": round(wall, 1),
        "stopped": result.stopped,
    }


def best_so_far(attempts: Sequence[dict[str, Any]], iters: int) -> list[float | None]:
    """Best validation score after each iteration 0..iters (accepted scores only: the loop
    accepts exactly the ones that beat the incumbent). A run that stopped early (zero-shot,
    or an expert out of moves) stays flat."""
    curve: list[float | None] = []
    best: float | None = None
    for i in range(iters + 1):
        for a in attempts:
            if a["iteration"] == i and a["status"] == "accepted" and a["metric"] is not None:
                best = a["metric"] if best is None else max(best, a["metric"])
        curve.append(best)
    return curve


# ---------------------------------------------------------------- report


def _ms(values: Sequence[float]) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def _scored(run: dict[str, Any]) -> int:
    """Candidates after the baseline that reached training (cached ones included)."""
    return sum(1 for a in run["attempts"] if a["iteration"] > 0 and a["status"] != "invalid")


def _cached(run: dict[str, Any]) -> int:
    return sum(1 for a in run["attempts"] if a["iteration"] > 0 and a["cached"])


def report(data: dict[str, Any], out: Path) -> str:
    """The markdown table (and the PNG plot beside ``out``) of the finished runs."""
    runs = list(data["runs"].values())
    iters = int(data["config"]["iters"])
    present = [s for s in STRATEGIES if any(r["strategy"] == s for r in runs)]
    cols = sorted({0, 1, *range(2, iters + 1, 2), iters})
    head = [
        "strategy",
        "seeds",
        *(f"it {c}" for c in cols),
        "best val",
        "test (once)",
        "candidates (cached)",
        "wall min",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    curves: dict[str, list[list[float]]] = {}
    for s in present:
        mine = sorted((r for r in runs if r["strategy"] == s), key=lambda r: r["seed"])
        per_iter = [
            [r["curve"][c] for r in mine if r["curve"][c] is not None] for c in range(iters + 1)
        ]
        curves[s] = per_iter
        tests = [r["test"] for r in mine if r["test"] is not None]
        row = [
            f"`{s}`",
            str(len(mine)),
            *(_ms(per_iter[c]) for c in cols),
            _ms([r["best_val"] for r in mine if r["best_val"] is not None]),
            _ms(tests),
            f"{statistics.fmean(_scored(r) for r in mine):.1f} "
            f"({statistics.fmean(_cached(r) for r in mine):.1f})",
            f"{statistics.fmean(r['wall_seconds'] for r in mine) / 60:.1f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    table = "\n".join(lines) + "\n"
    _plot(curves, iters, out.with_suffix(".png"), data["config"])
    return table


def _plot(
    curves: dict[str, list[list[float]]], iters: int, path: Path, config: dict[str, Any]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, per_iter in curves.items():
        xs = [i for i, v in enumerate(per_iter) if v]
        means = [100 * statistics.fmean(per_iter[i]) for i in xs]
        stds = [100 * statistics.stdev(per_iter[i]) if len(per_iter[i]) > 1 else 0.0 for i in xs]
        (line,) = ax.plot(
            xs,
            means,
            marker="o",
            markersize=3,
            label=name,
            linestyle="--" if name == "zero-shot" else "-",
        )
        ax.fill_between(
            xs,
            [m - s for m, s in zip(means, stds, strict=True)],
            [m + s for m, s in zip(means, stds, strict=True)],
            color=line.get_color(),
            alpha=0.15,
        )
    ax.set_xlabel("iteration (training runs after the baseline)")
    ax.set_ylabel("best validation accuracy so far (%)")
    ax.set_title(
        f"Fashion-MNIST subset {config.get('subset')}: mean ± std over "
        f"{len(config.get('seeds', []))} seeds",
        fontsize=10,
    )
    ax.set_xticks(range(iters + 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument(
        "--subset",
        type=int,
        default=None,
        help="training images in the bench copy (default: the spec's 5000)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="validation share in the bench copy (default: the spec's 0.1)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per training run")
    parser.add_argument(
        "--work",
        default="/tmp/improve-refine-compare",
        help="where the spec copies, run folders and cache live",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "refine_compare.json")
    parser.add_argument("--report", action="store_true", help="only rebuild table and plot")
    args = parser.parse_args(argv)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}; choose from {STRATEGIES}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "iters": args.iters,
        "seeds": list(range(args.seeds)),
        "strategies": strategies,
        "subset": args.subset or 5000,
        "val_fraction": args.val_fraction or 0.1,
        "threads": args.threads,
        "timeout": args.timeout,
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{__import__('os').cpu_count()} CPUs, {platform.platform()}",
        "refinable_blocks": list(registry.REFINABLE_BLOCKS),
    }
    data: dict[str, Any] = {"config": config, "runs": {}}
    if args.out.exists():
        old = json.loads(args.out.read_text())
        if args.report or {
            k: old["config"].get(k) for k in ("iters", "subset", "val_fraction")
        } == {k: config[k] for k in ("iters", "subset", "val_fraction")}:
            data["runs"] = old.get("runs", {})
            if args.report:
                data["config"] = old["config"]
    if not args.report:
        # Seeds outermost: if time runs out, the finished seeds are complete comparisons.
        for seed in range(args.seeds):
            for strategy in strategies:
                key = f"{strategy}/{seed}"
                if key in data["runs"]:
                    continue
                print(f"=== {key} ===", flush=True)
                started = time.monotonic()
                summary = run_one(strategy, seed, args, sys.stdout)
                data["runs"][key] = summary
                data["config"]["updated"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                tmp = args.out.with_suffix(".tmp")
                tmp.write_text(json.dumps(data, indent=1))
                tmp.replace(args.out)
                curve = ", ".join("—" if v is None else f"{100 * v:.1f}" for v in summary["curve"])
                print(
                    f"=== {key}: curve [{curve}] test {summary['test']} "
                    f"({time.monotonic() - started:.0f} s)",
                    flush=True,
                )
    table = report(data, args.out)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
