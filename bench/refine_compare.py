"""The race: does `improve refine` with the offline expert beat Optuna? Same start, same space.

For each starting spec and each seed, six arms each get the baseline run plus ``--iters``
more training runs:

- ``iterative``    `improve refine` with the heuristic expert, one block per iteration
- ``all-at-once``  the same expert rewriting every block per iteration
- ``zero-shot``    the same expert rewriting every block once (1 run after the baseline)
- ``random``       Optuna's RandomSampler over bench/search_space.py
- ``tpe``          Optuna's TPESampler over the same space (3 start-up trials)
- ``tpe-pruner``   TPE with Optuna's MedianPruner, for the comparison at equal compute

Fairness: every arm starts from the same starting spec (Optuna's first trial is the
starting spec, enqueued), searches the space the expert can reach (search_space.py), trains
with the same compiled scripts on the same machine and seeds, in its own folder with its own
results cache (nothing is shared between arms), single-threaded, under the same per-run
time limit. "Seed" s sets the spec's training seed, the expert's tie-break seed and the
sampler's seed. Each run's cost is its measured training-process seconds; arms are run
interleaved (``--jobs`` at a time), so load on the machine falls on all of them alike.
The test split is used once per (arm, seed), on the arm's best spec, after its search.

Results go to ``--out`` (one JSON file per start, each finished (arm, seed) saved at once;
rerunning skips finished ones); ``--report`` rebuilds the tables and plots from them.

    python bench/refine_compare.py --starts digits,digits_timid_adam --seeds 3 --jobs 2
    python bench/refine_compare.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

ARMS = ("iterative", "all-at-once", "zero-shot", "random", "tpe", "tpe-pruner")
LOOP_ARMS = ARMS[:3]
STARTS = {
    "digits": REPO / "specs" / "digits.imp",
    "digits_timid_adam": REPO / "bench" / "starts" / "digits_timid_adam.imp",
    "fashion_mnist_quick": REPO / "specs" / "fashion_mnist_quick.imp",
}
RESULTS = REPO / "bench" / "results"


def spec_copy(start: str, seed: int, folder: Path) -> Path:
    """The starting spec with this seed, in a folder of its own."""
    text = STARTS[start].read_text(encoding="utf-8")
    text = re.sub(r"(?m)^(\s*seed\s*=\s*)\d+", rf"\g<1>{seed}", text, count=1)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{start}.imp"
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- the expert's arms


def run_loop_arm(arm: str, spec: Path, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """`improve refine` through its public entry point; each attempt as one run."""
    from improve_dsl.refine.live import PlainReporter
    from improve_dsl.refine.loop import refine
    from improve_dsl.refine.options import RefineOptions

    options = RefineOptions(
        iters=args.iters,
        expert="heuristic",
        strategy="iterative" if arm == "iterative" else "all-at-once",
        zero_shot=arm == "zero-shot",
        run_dir=spec.parent / "run",
        device="cpu",
        threads=1,
        timeout=args.timeout,
        expert_seed=seed,
    )
    with open(spec.parent / "log.txt", "w", encoding="utf-8") as log:
        result = refine(spec, options, PlainReporter(log))
    runs = [
        {
            "run": r.iteration,
            "status": r.status,
            "metric": r.metric if r.status in ("accepted", "rejected", "cached") else None,
            # The training process's seconds, as for Optuna's runs (a record's own seconds
            # also count compiling).
            "seconds": float(r.extras.get("train_seconds") or r.seconds),
            "change": r.extras.get("move", ""),
        }
        for r in result.records
    ]
    return {"runs": runs, "test": result.test_metric, "best_spec": result.best_spec.read_text()}


# ---------------------------------------------------------------- Optuna's arms


def run_optuna_arm(arm: str, spec: Path, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """An Optuna study whose objective compiles and trains a spec, as a user would write it."""
    import optuna
    from search_space import params_of, sample

    from improve_dsl import registry, validate
    from improve_dsl.diagnostics import DiagnosticError
    from improve_dsl.executors import TrainJob, make_executor
    from improve_dsl.refine import reply
    from improve_dsl.refine.experts.heuristic.recipes import data_info
    from improve_dsl.refine.scripts import compile_script

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start_text = spec.read_text(encoding="utf-8")
    start = validate.load_text(start_text, str(spec))
    info = data_info(start)
    sampler: optuna.samplers.BaseSampler = (
        optuna.samplers.RandomSampler(seed=seed)
        if arm == "random"
        else optuna.samplers.TPESampler(seed=seed, n_startup_trials=3)
    )
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
        if arm == "tpe-pruner"
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    study.enqueue_trial(params_of(start, info))
    metric_key = f"val_{start.pipeline.metric}"
    runs: list[dict[str, Any]] = []
    best: tuple[float, str] | None = None
    blocks = tuple(registry.REFINABLE_BLOCKS)
    executor = make_executor("local", parallel=1, device="cpu", threads=1)
    try:
        for number in range(args.iters + 1):
            trial = study.ask()
            texts = sample(trial, info)
            try:
                # The first trial is the enqueued starting spec: trained as written.
                text = (
                    start_text
                    if number == 0
                    else reply.apply_edit(
                        start_text,
                        str(spec),
                        blocks,
                        "".join(texts[b] for b in blocks),
                        check_shapes=False,
                    )
                )
                script = compile_script(text, str(spec))
            except (reply.EditError, DiagnosticError) as exc:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                runs.append({"run": number, "status": "invalid", "metric": None, "seconds": 0.0,
                             "change": str(exc).splitlines()[0]})  # fmt: skip
                continue
            folder = spec.parent / "trials" / str(number)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "spec.imp").write_text(text, encoding="utf-8")
            (folder / "train.py").write_text(script, encoding="utf-8")

            def on_event(event: dict[str, Any], trial: Any = trial) -> bool:
                value = event.get(metric_key)
                if event.get("event") != "epoch" or not isinstance(value, (int, float)):
                    return True
                trial.report(float(value), int(event["epoch"]))
                return not trial.should_prune()

            job = TrainJob(folder / "train.py", folder, "val", seed, "cpu", args.timeout,
                           threads=1, on_event=on_event)  # fmt: skip
            result = executor.wait(executor.submit(job))
            if result.status == "ok" and result.metric is not None:
                study.tell(trial, result.metric)
                if best is None or result.metric > best[0]:
                    best = (result.metric, text)
            elif result.status == "pruned":
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            runs.append(
                {
                    "run": number,
                    "status": result.status,
                    "metric": result.metric if result.status == "ok" else None,
                    "seconds": round(result.seconds, 3),
                    "change": f"trial {trial.number}",
                }
            )
        test = None
        if best is not None:
            folder = spec.parent / "test"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "train.py").write_text(compile_script(best[1], str(spec)), encoding="utf-8")
            job = TrainJob(folder / "train.py", folder, "test", seed, "cpu", args.timeout * 2,
                           threads=1)  # fmt: skip
            outcome = executor.wait(executor.submit(job))
            test = outcome.metric if outcome.status == "ok" else None
    finally:
        executor.close()
    return {"runs": runs, "test": test, "best_spec": best[1] if best else ""}


# ---------------------------------------------------------------- one (start, arm, seed)


def run_one(start: str, arm: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(args.work) / start / f"seed-{seed}" / arm
    if folder.exists():
        shutil.rmtree(folder)  # a run cut short is redone whole
    spec = spec_copy(start, seed, folder)
    started = time.monotonic()
    runner = run_loop_arm if arm in LOOP_ARMS else run_optuna_arm
    summary = runner(arm, spec, seed, args)
    summary.update(start=start, arm=arm, seed=seed, wall_seconds=time.monotonic() - started)
    return summary


# ---------------------------------------------------------------- reading the results


def best_by_run(runs: Sequence[dict[str, Any]], iters: int) -> list[float | None]:
    """The best validation score after runs 0..iters (an arm that stopped early stays flat)."""
    curve: list[float | None] = []
    best: float | None = None
    for i in range(iters + 1):
        for r in runs:
            if r["run"] == i and r["metric"] is not None:
                best = r["metric"] if best is None else max(best, r["metric"])
        curve.append(best)
    return curve


def best_by_seconds(runs: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    """(cumulative training seconds, best score so far) after each run."""
    points, spent, best = [], 0.0, None
    for r in sorted(runs, key=lambda r: r["run"]):
        spent += float(r["seconds"] or 0.0)
        if r["metric"] is not None:
            best = r["metric"] if best is None else max(best, r["metric"])
        if best is not None:
            points.append((spent, best))
    return points


def best_at(points: Sequence[tuple[float, float]], seconds: float) -> float | None:
    """The best score reached within ``seconds`` of training."""
    within = [b for s, b in points if s <= seconds]
    return max(within) if within else None


def _ms(values: Sequence[float | None]) -> str:
    """Mean ± std over the seeds, in per cent; "—" unless every seed has a value (a mean of
    the seeds that got somewhere would flatter an arm that is still on its first run)."""
    real = [100 * v for v in values if v is not None]
    if not real or len(real) < len(values):
        return "—"
    if len(real) == 1:
        return f"{real[0]:.1f}"
    return f"{statistics.fmean(real):.1f} ± {statistics.stdev(real):.1f}"


def report(start: str, data: dict[str, Any], out: Path) -> str:
    """Markdown tables (equal runs, equal seconds) and a plot for one starting spec."""
    iters = int(data["config"]["iters"])
    runs = data["runs"]
    arms = [a for a in ARMS if any(r["arm"] == a for r in runs.values())]
    by_arm = {a: sorted((r for r in runs.values() if r["arm"] == a), key=lambda r: r["seed"])
              for a in arms}  # fmt: skip
    cols = sorted({c for c in (0, 1, 2, 3, 4, 5, 7, iters) if c <= iters})
    head = ["arm", "seeds", *(f"run {c}" for c in cols), "test (once)", "train s"]
    lines = [f"#### `{start}`: best validation accuracy (%) after N runs, mean ± std", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for arm, mine in by_arm.items():
        curves = [best_by_run(r["runs"], iters) for r in mine]
        seconds = [sum(float(x["seconds"] or 0) for x in r["runs"]) for r in mine]
        row = [f"`{arm}`", str(len(mine)), *(_ms([c[i] for c in curves]) for i in cols),
               _ms([r["test"] for r in mine]), f"{statistics.fmean(seconds):.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    # Equal compute: each arm's best within the training seconds the cheapest complete arm
    # (of the searching ones) used, and within half of it.
    budgets = {a: statistics.fmean(sum(float(x["seconds"] or 0) for x in r["runs"]) for r in m)
               for a, m in by_arm.items() if a != "zero-shot"}  # fmt: skip
    if budgets:
        budget = min(budgets.values())
        lines += ["", f"Equal compute: best validation (%) within T training seconds "
                  f"(T = {budget:.0f} s, the least any searching arm used for its runs)", "",
                  "| arm | T/4 | T/2 | T |", "|---|---|---|---|"]  # fmt: skip
        for arm, mine in by_arm.items():
            points = [best_by_seconds(r["runs"]) for r in mine]
            row = [_ms([best_at(p, budget * f) for p in points]) for f in (0.25, 0.5, 1.0)]
            lines.append(f"| `{arm}` | " + " | ".join(row) + " |")
    _plot(start, by_arm, iters, out.with_suffix(".png"))
    return "\n".join(lines) + "\n"


def _plot(start: str, by_arm: dict[str, list[dict[str, Any]]], iters: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for arm, mine in by_arm.items():
        curves = [best_by_run(r["runs"], iters) for r in mine]
        xs = [i for i in range(iters + 1) if all(c[i] is not None for c in curves)]
        means = [100 * statistics.fmean(c[i] for c in curves) for i in xs]  # type: ignore[misc]
        style = "--" if arm in ("zero-shot", "random") else "-"
        (line,) = left.plot(xs, means, marker="o", markersize=3, label=arm, linestyle=style)
        spent = max(sum(float(x["seconds"] or 0) for x in r["runs"]) for r in mine)
        grid = [spent * k / 100 for k in range(1, 101)]
        points = [best_by_seconds(r["runs"]) for r in mine]
        ys = []
        for t in grid:
            values = [best_at(p, t) for p in points]
            ys.append(100 * statistics.fmean(values) if all(v is not None for v in values)
                      else float("nan"))  # type: ignore[arg-type]  # fmt: skip
        right.plot(grid, ys, label=arm, linestyle=style, color=line.get_color())
    left.set_xlabel("training runs (0 = the starting spec)")
    right.set_xlabel("cumulative training seconds")
    for ax in (left, right):
        ax.set_ylabel("best validation accuracy so far (%), mean over seeds")
        ax.grid(alpha=0.3)
    left.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{start}: {len(next(iter(by_arm.values())))} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- main


def _save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", default=",".join(STARTS))
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--iters", type=int, default=10, help="runs after the baseline")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--jobs", type=int, default=2, help="(arm, seed) pairs run at once")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per training run")
    parser.add_argument("--work", default="/tmp/improve-race")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report", action="store_true", help="only rebuild tables and plots")
    args = parser.parse_args(argv)
    starts = [s for s in args.starts.split(",") if s]
    arms = [a for a in args.arms.split(",") if a]
    if set(starts) - set(STARTS) or set(arms) - set(ARMS):
        parser.error(f"starts are {', '.join(STARTS)}; arms are {', '.join(ARMS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    files = {s: args.out / f"race_{s}.json" for s in starts}
    data: dict[str, dict[str, Any]] = {}
    for s in starts:
        old = json.loads(files[s].read_text()) if files[s].exists() else {}
        data[s] = {
            "config": old.get("config") or {"iters": args.iters},
            "runs": old.get("runs", {}),
        }
    if not args.report:
        todo = [(s, a, seed) for seed in range(args.seeds) for s in starts for a in arms
                if f"{a}/{seed}" not in data[s]["runs"]]  # fmt: skip
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {pool.submit(run_one, s, a, seed, args): (s, a, seed) for s, a, seed in todo}
            for future in as_completed(futures):
                s, a, seed = futures[future]
                try:
                    summary = future.result()
                except Exception as exc:  # one broken arm must not lose the others
                    print(f"=== {s} {a}/{seed}: FAILED {exc!r}", flush=True)
                    continue
                data[s]["config"] = {"iters": args.iters, "timeout": args.timeout,
                                     "cpus": os.cpu_count(), "updated": time.strftime(
                                         "%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
                data[s]["runs"][f"{a}/{seed}"] = summary
                _save(files[s], data[s])
                curve = best_by_run(summary["runs"], args.iters)
                print(f"=== {s} {a}/{seed}: best {curve[-1]} test {summary['test']} "
                      f"({summary['wall_seconds']:.0f} s)", flush=True)  # fmt: skip
    for s in starts:
        if data[s]["runs"]:
            table = report(s, data[s], files[s])
            files[s].with_suffix(".md").write_text(table, encoding="utf-8")
            print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
