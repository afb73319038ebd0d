"""Parallel candidates: the wall time of a fixed batch of training runs, local vs Ray.

A batch of candidate specs (digits with a small CNN, a few seconds of training each, varied
the way refinement varies them) is compiled once, then trained through the executor
interface with ``--parallel 1`` and ``2`` on the local executor and on a Ray cluster started
on this machine. Every run trains with ``--threads 1`` by default (on 2 cores, one core per
concurrent run; the same for ``--parallel 1`` so that only the width changes; ``--threads 0``
divides the cores between concurrent runs instead). The Ray cluster's start-up is timed
apart, not in the batch times (a cluster outlives many runs).

    python bench/parallel.py                 # 4 runs, both executors, parallel 1 and 2
    python bench/parallel.py --runs 6 --executors local

prints the wall time of each batch and the ratios: parallel 2 against 1 on the same
executor, and Ray against local at the same width.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from improve_dsl import render, validate  # noqa: E402
from improve_dsl.executors import TrainJob, make_executor  # noqa: E402
from improve_dsl.run import run_script  # noqa: E402

# Variations a refinement might try, one per run (cycled when --runs is larger).
VARIANTS = [
    ("cnn(channels = [16, 32])", "sgd(lr = 0.05, momentum = 0.9)"),
    ("cnn(channels = [32, 64])", "sgd(lr = 0.05, momentum = 0.9)"),
    ("cnn(channels = [16, 32])", "adamw(lr = 0.003)"),
    ("cnn(channels = [32, 32])", "sgd(lr = 0.1, momentum = 0.9, nesterov = true)"),
]


def candidate_text(base: str, arch: str, optimizer: str, epochs: int) -> str:
    """The digits spec with its model, optimizer and epochs replaced."""
    lines = []
    for line in base.splitlines():
        stripped = line.strip()
        if stripped.startswith("arch ="):
            line = f"  arch = {arch}"
        elif stripped.startswith("optimizer ="):
            line = f"  optimizer = {optimizer}"
        elif stripped.startswith("epochs ="):
            line = f"  epochs = {epochs}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def compile_batch(folder: Path, runs: int, epochs: int) -> list[Path]:
    """Compile ``runs`` candidate scripts into ``folder``."""
    base = (REPO / "specs" / "digits.imp").read_text(encoding="utf-8")
    scripts = []
    for index in range(runs):
        arch, optimizer = VARIANTS[index % len(VARIANTS)]
        spec = validate.load_text(candidate_text(base, arch, optimizer, epochs), f"c{index}.imp")
        script = folder / f"candidate{index}" / "train.py"
        script.parent.mkdir(parents=True)
        script.write_text(render.render_script(spec), encoding="utf-8")
        scripts.append(script)
    return scripts


# A stand-in that starts and ends at once: what an executor adds to every run.
EMPTY_RUN = """\
import json, sys
split = sys.argv[sys.argv.index("--split") + 1]
print(json.dumps({"event": "start", "epochs": 0, "split": split}))
print(json.dumps({"event": "result", "status": "ok", "split": split, "metric": "accuracy",
                  split + "_accuracy": 1.0, "epochs_run": 0}))
"""


def overhead(kind: str, folder: Path, runs: int = 8) -> float:
    """Mean seconds per run of the empty stand-in, one at a time, after one warm-up."""
    script = folder / "empty.py"
    script.write_text(EMPTY_RUN, encoding="utf-8")
    with make_executor(kind, parallel=1, device="cpu", threads=1) as executor:
        executor.wait(executor.submit(TrainJob(script, folder / f"{kind}-empty-warm")))
        started = time.perf_counter()
        for index in range(runs):
            result = executor.wait(executor.submit(TrainJob(script, folder / f"{kind}-e{index}")))
            if not result.ok:
                raise SystemExit(f"the empty run failed on {kind}: {result.reason}")
        return (time.perf_counter() - started) / runs


def time_batch(kind: str, parallel: int, scripts: list[Path], folder: Path, threads: int) -> float:
    """Seconds to train every script on executor ``kind`` with ``parallel`` slots."""
    threads = threads or max(1, (os.cpu_count() or 1) // parallel)
    with make_executor(kind, parallel=parallel, device="cpu", threads=threads) as executor:
        started = time.perf_counter()
        handles = [
            executor.submit(
                TrainJob(
                    s,
                    folder / f"{kind}-p{parallel}" / s.parent.name,
                    seed=0,
                    device="cpu",
                    threads=threads,
                )
            )
            for s in scripts
        ]
        for _, result in executor.as_completed(handles):
            if not result.ok:
                raise SystemExit(f"a run failed on {kind}: {result.reason}")
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="training runs in the batch")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per run")
    parser.add_argument("--executors", default="local,ray", help="comma-separated")
    parser.add_argument("--parallel", default="1,2", help="comma-separated widths")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per run (0: the cores divided by the width)",
    )
    args = parser.parse_args()
    kinds = args.executors.split(",")
    widths = [int(w) for w in args.parallel.split(",")]

    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPU cores, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} at start"
    )
    with tempfile.TemporaryDirectory(prefix="improve-bench-") as tmp:
        folder = Path(tmp)
        scripts = compile_batch(folder, args.runs, args.epochs)
        warm = run_script(
            scripts[0], folder / "warm-up", device="cpu", seed=0, threads=args.threads or None
        )
        if not warm.ok:
            raise SystemExit(f"the warm-up run failed: {warm.reason}")
        print(
            f"batch: {args.runs} digits CNN runs of {args.epochs} epochs "
            f"(one alone: {warm.seconds:.1f} s wall), --threads {args.threads or 'divided'}"
        )
        times: dict[tuple[str, int], float] = {}
        for kind in kinds:
            if kind == "ray":
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback only
                import ray

                started = time.perf_counter()
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
                print(
                    f"ray: local cluster started in {time.perf_counter() - started:.1f} s "
                    "(not in the batch times)"
                )
            try:
                empty = overhead(kind, folder)
                print(f"  {kind:5} an empty run, one at a time: {empty * 1000:.0f} ms each")
                for width in widths:
                    times[kind, width] = time_batch(kind, width, scripts, folder, args.threads)
                    print(f"  {kind:5} --parallel {width}: {times[kind, width]:6.1f} s", flush=True)
            finally:
                if kind == "ray":
                    ray.shutdown()

    print("\nexecutor  parallel  wall (s)  vs parallel 1  vs local")
    for kind in kinds:
        for width in widths:
            wall = times[kind, width]
            speedup = times[kind, widths[0]] / wall
            local = times.get(("local", width))
            versus = f"{wall / local:8.2f}x" if local and kind != "local" else "        -"
            print(f"{kind:8}  {width:8}  {wall:8.1f}  {speedup:12.2f}x  {versus}")


if __name__ == "__main__":
    main()
