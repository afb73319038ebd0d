"""Every GPU figure in one prepared run: one command, at most 9 minutes on one GPU.

    bash bench/gpu.sh                   # on the GPU machine: set up, then this, into $OUT
    python bench/gpu.py --dry-run       # the same steps on the CPU with tiny sizes

The steps, in order (each is recorded in gpu.json whether it worked, failed or ran out of time;
a failing step never stops the next):

1. setup: torch and the GPU; Fashion-MNIST found in --data (the carried .gz files);
2. throughput: bench/throughput.py, the compiled script against bench/torchvision_baseline.py
   (same ResNet-8, recipe and images) for specs/fashion_mnist.imp, in fp32 and bf16, with
   torch.compile off and on;
3. cifar_throughput: the compiled specs/cifar10.imp (airbench-style net) on a CIFAR-sized
   synthetic dataset (3x32x32, 10 classes whose colour tells them apart, in CIFAR-10's pickle
   format), fp32 and bf16, compile off and on (the baseline reads Fashion-MNIST only);
4. time_to_accuracy: specs/fashion_mnist_airbench.imp trained with --split test at each epoch
   budget, 3 seeds; the time to 93% and to 94% test accuracy is the training seconds (data
   loading excluded, as airbench does) of the smallest budget whose mean reaches it;
5. refine: `improve refine specs/fashion_mnist.imp --expert heuristic` for a few iterations:
   best validation accuracy and the once-only test accuracy;
6. fork_server: the same short refinement with the fork server forced on and off, and with
   --parallel 2 (no final test run: start-up is what differs): whether every run succeeds
   (safe) and the wall time (faster).

Writes OUT/gpu.json and OUT/gpu.md (a Markdown table) and prints the table last. The dry run
uses the CPU, tiny subsets, one epoch, one seed per budget and no torch.compile (an inductor
build on a CPU takes minutes); it exists so that this script cannot rot between GPU visits.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@dataclass(frozen=True)
class Sizes:
    """How big each step is: the GPU run's, or the dry run's tiny ones."""

    device: str
    throughput_subset: int | None
    throughput_epochs: int
    compile_options: tuple[bool, ...]
    cifar_images: int
    cifar_epochs: int
    budgets: tuple[int, ...]  # epoch budgets for time to accuracy
    seeds: int
    accuracy_subset: int | None
    refine_iters: int
    refine_subset: int | None
    refine_epochs: int | None
    fork_subset: int  # the fork server's refinements: short, as start-up is what differs
    fork_epochs: int
    fork_iters: int
    # The dry run's small networks (the specs' own on the GPU): (ResNet-8 width, airbench).
    small_widths: tuple[int, int] | None = None
    # The dry run's batch for its refinements: the offline expert's train recipe sizes epochs
    # to a step target (300 steps at least), so a small batch keeps its candidates short.
    refine_batch: int | None = None


GPU = Sizes("cuda", 20000, 2, (False, True), 25000, 2, (8, 16), 3, None, 3, None, None, 10000, 2, 2)
DRY = Sizes("cpu", 600, 1, (False,), 600, 1, (1,), 1, 600, 1, 600, 1, 600, 1, 1, (4, 8), 16)


@dataclass
class Bench:
    """The run's settings, its deadline and what each step found."""

    sizes: Sizes
    out: Path
    work: Path
    env: dict[str, str]
    deadline: float
    results: dict[str, Any] = field(default_factory=dict)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """A command with what is left of the time as its timeout."""
        timeout = max(1.0, self.remaining())
        print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
        proc = subprocess.run(
            command,
            cwd=cwd or REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"exit {proc.returncode}: {proc.stderr[-2000:]}")
        return proc


def events(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def spec_variant(original: Path, target: Path, **changes: str) -> Path:
    """A copy of a spec with fields replaced (`name = value` lines) or added to train {}."""
    text = original.read_text(encoding="utf-8")
    for name, value in changes.items():
        text, count = re.subn(rf"(?m)^(\s*){name} = .*$", rf"\g<1>{name} = {value}", text)
        if count == 0:
            text = text.replace("train {\n", f"train {{\n  {name} = {value}\n", 1)
    target.write_text(text, encoding="utf-8")
    return target


def fashion_source(subset: int | None) -> str:
    return f"fashion_mnist(subset = {subset})" if subset else "fashion_mnist()"


def small_arch(sizes: Sizes, kind: str) -> dict[str, str]:
    """The dry run's replacement for a spec's network (none on the GPU)."""
    if sizes.small_widths is None:
        return {}
    resnet, airbench = sizes.small_widths
    return {
        "arch": f"resnet(depth = 8, width = {resnet})"
        if kind == "resnet"
        else f"airbench(width = {airbench})"
    }


# ---------------------------------------------------------------- the steps


def setup(bench: Bench, data: Path) -> dict[str, Any]:
    import torch

    missing = [name for name in FASHION_FILES if not (data / name).is_file()]
    if missing:
        raise RuntimeError(f"Fashion-MNIST files missing from {data}: {', '.join(missing)}")
    cuda = torch.cuda.is_available()
    if bench.sizes.device == "cuda" and not cuda:
        raise RuntimeError("no CUDA device: run with --dry-run on a machine without a GPU")
    return {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda and bench.sizes.device == "cuda" else "cpu",
        "cpus": os.cpu_count(),
        "data": str(data),
    }


def throughput(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    out: dict[str, Any] = {}
    for precision in ("fp32", "bf16"):
        for compiled in sizes.compile_options:
            name = f"{precision}, compile {'on' if compiled else 'off'}"
            report = bench.work / f"throughput-{precision}-{compiled}.json"
            command = [
                sys.executable,
                str(REPO / "bench" / "throughput.py"),
                *("--device", sizes.device, "--precision", precision),
                *("--epochs", str(sizes.throughput_epochs), "--no-pipelines"),
                *("--json", str(report)),
                *(("--subset", str(sizes.throughput_subset)) if sizes.throughput_subset else ()),
                *(("--compile",) if compiled else ()),
                *(("--width", str(sizes.small_widths[0])) if sizes.small_widths else ()),
            ]
            bench.run(command)
            summary = json.loads(report.read_text())
            speeds = {run["script"]: run["images_per_second"] for run in summary["runs"]}
            out[name] = {
                "compiled_images_per_second": speeds["compiled script"],
                "baseline_images_per_second": speeds["torchvision DataLoader"],
                "ratio": summary["ratio"],
                "test_accuracy_delta_points": summary["test_accuracy_delta_points"],
            }
    return out


def write_synthetic_cifar(folder: Path, count: int) -> None:
    """CIFAR-10's pickle layout with `count` training and count/5 test images: noise tinted
    by class (learnable, so accuracy shows the run is sane)."""
    rng = np.random.default_rng(0)
    tints = rng.integers(0, 256, (10, 3, 1, 1))
    root = folder / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)

    def batch(n: int) -> dict[str, Any]:
        labels = rng.integers(0, 10, n)
        noise = rng.integers(0, 128, (n, 3, 32, 32))
        images = np.clip(noise + tints[labels] // 2, 0, 255).astype(np.uint8)
        return {"data": images.reshape(n, 3072), "labels": labels.tolist()}

    per_batch = max(1, count // 5)
    for i in range(1, 6):
        with open(root / f"data_batch_{i}", "wb") as file:
            pickle.dump(batch(per_batch), file, protocol=2)
    with open(root / "test_batch", "wb") as file:
        pickle.dump(batch(max(10, count // 5)), file, protocol=2)
    with open(root / "batches.meta", "wb") as file:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, file, protocol=2)


def cifar_throughput(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    data = bench.work / "cifar"
    write_synthetic_cifar(data, sizes.cifar_images)
    out: dict[str, Any] = {}
    for precision in ("fp32", "bf16"):
        for compiled in sizes.compile_options:
            spec = spec_variant(
                REPO / "specs" / "cifar10.imp",
                bench.work / "cifar.imp",
                source=f'cifar10(root = "{data}")  # synthetic',
                precision=precision,
                compile="true" if compiled else "false",
                epochs=str(sizes.cifar_epochs),
                **small_arch(sizes, "airbench"),
            )
            script = bench.work / "cifar_train.py"
            bench.run(
                [sys.executable, "-m", "improve_dsl.cli", "compile", str(spec), "-o", str(script)]
            )
            proc = bench.run([sys.executable, str(script), "--device", sizes.device])
            result = events(proc.stdout)[-1]
            out[f"{precision}, compile {'on' if compiled else 'off'}"] = {
                "images_per_second": result["images_per_second"],
                "val_accuracy": result["val_accuracy"],
            }
    return out


def time_to_accuracy(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    runs: dict[int, list[dict[str, Any]]] = {}
    for budget in sizes.budgets:
        spec = spec_variant(
            REPO / "specs" / "fashion_mnist_airbench.imp",
            bench.work / "airbench.imp",
            epochs=str(budget),
            source=fashion_source(sizes.accuracy_subset) + "  # locked",
            **small_arch(sizes, "airbench"),
        )
        script = bench.work / "airbench_train.py"
        bench.run(
            [sys.executable, "-m", "improve_dsl.cli", "compile", str(spec), "-o", str(script)]
        )
        for seed in range(sizes.seeds):
            command = [sys.executable, str(script), "--split", "test", "--seed", str(seed)]
            proc = bench.run([*command, "--device", sizes.device])
            result = events(proc.stdout)[-1]
            runs.setdefault(budget, []).append(
                {
                    "seed": seed,
                    "test_accuracy": result["test_accuracy"],
                    "train_seconds": result["seconds"],
                }
            )
    budgets = {
        budget: {
            "mean_test_accuracy": statistics.fmean(r["test_accuracy"] for r in rs),
            "mean_train_seconds": statistics.fmean(r["train_seconds"] for r in rs),
            "runs": rs,
        }
        for budget, rs in runs.items()
    }
    reached = {}
    for target in (0.93, 0.94):
        first = next((b for b, s in budgets.items() if s["mean_test_accuracy"] >= target), None)
        reached[f"{target:.0%}"] = (
            {"epochs": first, "train_seconds": budgets[first]["mean_train_seconds"]}
            if first is not None
            else None
        )
    return {"budgets": budgets, "time_to": reached}


def refine_once(
    bench: Bench,
    name: str,
    *extra: str,
    subset: int | None,
    epochs: int | None,
    iters: int,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A short offline refinement of a copy of specs/fashion_mnist.imp; its outcome."""
    sizes = bench.sizes
    folder = bench.work / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    changes = {
        "source": fashion_source(subset) + "  # locked",
        **small_arch(sizes, "resnet"),
    }
    if epochs:
        changes["epochs"] = str(epochs)
    if sizes.refine_batch:
        changes["batch_size"] = str(sizes.refine_batch)
    spec = spec_variant(REPO / "specs" / "fashion_mnist.imp", folder / "spec.imp", **changes)
    command = [
        sys.executable,
        "-m",
        "improve_dsl.cli",
        "refine",
        str(spec),
        "--expert",
        "heuristic",
        "--iters",
        str(iters),
        "--device",
        sizes.device,
        "-q",
        *extra,
    ]
    began = time.perf_counter()
    saved = bench.env
    bench.env = {**bench.env, **(env or {})}
    try:
        bench.run(command, cwd=folder)
    finally:
        bench.env = saved
    wall = time.perf_counter() - began
    (run_dir,) = [p for p in (folder / "spec.improve").iterdir() if (p / "journal.jsonl").exists()]
    journal = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    final_file = run_dir / "final.json"  # absent with --no-test
    final = json.loads(final_file.read_text()) if final_file.exists() else {}
    kept = [r["metric"] for r in journal if r.get("status") == "accepted" and r.get("metric")]
    return {
        "wall_seconds": wall,
        "best_val_accuracy": final.get("val_metric", max(kept, default=None)),
        "test_accuracy": final.get("test_metric"),
        "statuses": [record.get("status") for record in journal],
    }


def refine(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    return refine_once(
        bench,
        "refine",
        subset=sizes.refine_subset,
        epochs=sizes.refine_epochs,
        iters=sizes.refine_iters,
    )


def fork_server(bench: Bench) -> dict[str, Any]:
    out = {}
    for name, extra, env in (
        ("fork server off", ("--no-test",), {"IMPROVE_FORK_SERVER": "0"}),
        ("fork server on", ("--no-test",), {"IMPROVE_FORK_SERVER": "always"}),
        (
            "fork server on, --parallel 2",
            ("--no-test", "--parallel", "2"),
            {"IMPROVE_FORK_SERVER": "always"},
        ),
    ):
        sizes = bench.sizes
        result = refine_once(
            bench,
            name.replace(" ", "_").replace(",", ""),
            *extra,
            subset=sizes.fork_subset,
            epochs=sizes.fork_epochs,
            iters=sizes.fork_iters,
            env=env,
        )
        result["safe"] = all(status not in ("failed",) for status in result["statuses"])
        out[name] = result
    return out


STEPS: tuple[tuple[str, Callable[[Bench], dict[str, Any]]], ...] = (
    ("throughput", throughput),
    ("cifar_throughput", cifar_throughput),
    ("time_to_accuracy", time_to_accuracy),
    ("refine", refine),
    ("fork_server", fork_server),
)


# ---------------------------------------------------------------- the report


def score(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "—" if value is None else str(value)


def table(results: dict[str, Any]) -> str:
    """The figures as one Markdown table: step, case, figure."""
    rows = [("step", "case", "figure")]

    def add(step: str, case: str, figure: str) -> None:
        rows.append((step, case, figure))

    for step, value in results.items():
        if not isinstance(value, dict) or "error" in value:
            add(step, "", f"not run: {value.get('error') if isinstance(value, dict) else value}")
            continue
        if step == "setup":
            add(step, value["device"], f"torch {value['torch']}, {value['cpus']} CPUs")
        elif step == "throughput":
            for case, r in value.items():
                add(
                    step,
                    f"fashion_mnist.imp, {case}",
                    f"{r['compiled_images_per_second']:,.0f} vs "
                    f"{r['baseline_images_per_second']:,.0f}"
                    f" images/s ({r['ratio']:.2f}x), accuracy "
                    f"{r['test_accuracy_delta_points']:+.2f}"
                    " points",
                )
        elif step == "cifar_throughput":
            for case, r in value.items():
                add(
                    step,
                    f"cifar10.imp on synthetic 3x32x32, {case}",
                    f"{r['images_per_second']:,.0f} images/s",
                )
        elif step == "time_to_accuracy":
            for budget, r in value["budgets"].items():
                add(
                    step,
                    f"{budget} epochs",
                    f"test {r['mean_test_accuracy']:.4f} in {r['mean_train_seconds']:.1f} s "
                    f"(mean of {len(r['runs'])})",
                )
            for target, r in value["time_to"].items():
                add(
                    step,
                    f"to {target}",
                    "not reached"
                    if r is None
                    else f"{r['train_seconds']:.1f} s ({r['epochs']} epochs)",
                )
        else:
            cases = value.items() if step == "fork_server" else [("", value)]
            for case, r in cases:
                add(
                    step,
                    case,
                    f"best val {score(r['best_val_accuracy'])}, test {score(r['test_accuracy'])}, "
                    f"{r['wall_seconds']:.0f} s wall, statuses {', '.join(map(str, r['statuses']))}"
                    + (f", safe {r['safe']}" if "safe" in r else ""),
                )
    lines = [f"| {' | '.join(row)} |" for row in rows]
    lines.insert(1, "|---|---|---|")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the CPU, tiny sizes")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-bench")))
    parser.add_argument(
        "--data",
        type=Path,
        help="folder of the Fashion-MNIST .gz files "
        "(default: .data/fashion-mnist in the checkout, else the system's)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=540.0,
        help="wall-clock budget; steps left when it runs out are not run",
    )
    parser.add_argument("--steps", help="comma-separated subset of the steps")
    args = parser.parse_args(argv)
    sizes = DRY if args.dry_run else GPU
    data = args.data or next(
        (
            p
            for p in (REPO / ".data" / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist"))
            if p.is_dir()
        ),
        REPO / ".data" / "fashion-mnist",
    )
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="improve-gpu-"))
    env = {
        **os.environ,
        "IMPROVE_DATA": str(data),
        "PYTHONUNBUFFERED": "1",
        "XDG_CACHE_HOME": str(work / "cache"),
    }
    env = {k: v for k, v in env.items() if not k.startswith("OPENAI_")}  # the offline expert
    bench = Bench(sizes, args.out, work, env, time.monotonic() + args.max_seconds)
    wanted = set(args.steps.split(",")) if args.steps else {name for name, _ in STEPS}
    try:
        try:
            bench.results["setup"] = setup(bench, data)
        except Exception as exc:  # nothing else can run; say why
            bench.results["setup"] = {"error": str(exc)}
            wanted = set()
        for name, step in STEPS:
            if name not in wanted:
                continue
            if bench.remaining() < 10:
                bench.results[name] = {"error": "out of time"}
                continue
            began = time.perf_counter()
            try:
                bench.results[name] = step(bench)
            except Exception as exc:  # recorded; the next step still runs
                bench.results[name] = {"error": f"{type(exc).__name__}: {str(exc)[-600:]}"}
            print(f"{name}: {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bench.results["dry_run"] = args.dry_run
    (args.out / "gpu.json").write_text(json.dumps(bench.results, indent=2) + "\n")
    markdown = table({k: v for k, v in bench.results.items() if k != "dry_run"})
    (args.out / "gpu.md").write_text(markdown)
    print(markdown)
    failed = [k for k, v in bench.results.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
