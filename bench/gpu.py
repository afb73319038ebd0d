"""Every GPU figure in one prepared run: one command, at most 8 minutes on one GPU.

    bash bench/gpu.sh                   # on the GPU machine: set up, then this, into $OUT
    bash bench/gpu.sh --dry-run         # the same steps on the CPU with tiny sizes

The steps, most important first (each case is written to gpu.json the moment it finishes,
atomically, so a later timeout loses nothing; each case has its own timeout, a failing or
timed-out case never stops the next, and cases left when the budget runs out say so):

1. setup: torch and the GPU; Fashion-MNIST found in --data (the carried .gz files);
2. throughput: bench/throughput.py, the compiled script against bench/torchvision_baseline.py
   (same ResNet-8, recipe and images) for specs/fashion_mnist.imp, fp32 and bf16, compile off;
3. step_choices: specs/fashion_mnist.imp in bf16, graphed, with each step choice the
   scripts leave off until this measures them: the whole training split augmented once per
   epoch (--augment per-epoch) rather than each batch inside the step, and batch norm on
   fp32 inputs (--batchnorm-fp32) rather than bf16; images/s beside the defaults' (the
   ratio) and validation accuracy (a sanity check on 2 epochs, not a quality claim);
4. time_to_accuracy: specs/fashion_mnist_airbench.imp trained with --split test at each epoch
   budget, 3 seeds; the time to 93% and to 94% test accuracy is the training seconds (data
   loading and the untimed warm-up excluded, as airbench does; the warm-up is quoted beside
   it) of the smallest budget whose mean reaches it;
5. refine: `improve refine specs/fashion_mnist.imp --expert heuristic --iters 3`, the full
   spec: wall time (the target is 60 s), best validation accuracy, the once-only test accuracy;
6. fork_server: a short refinement with the fork server forced on and off, and with
   --parallel 2 (no final test run: start-up is what differs): whether every run succeeds
   (safe) and the wall time (faster);
7. cifar_throughput: the compiled specs/cifar10.imp (airbench-style net) on a CIFAR-sized
   synthetic dataset (3x32x32, 10 classes whose colour tells them apart, in CIFAR-10's pickle
   format), fp32 and bf16, compile off;
8. compile_on: the throughput and CIFAR cases with torch.compile on, last, as a cold inductor
   build may take more than a minute; each within its own timeout.

Each figure keeps steady-state training (`seconds`, `images_per_second`), the untimed warm-up
(`warmup_seconds`) and the process's total wall time (`wall_seconds`) apart, where the
compiled script's result event reports them (null where it does not).

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
import signal
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
    # Each case's timeout in seconds, by step (also bounded by what is left of the budget).
    timeouts: dict[str, float] = field(default_factory=dict)


# On the GPU the whole run fits 8 minutes: compile-off throughput ~60 s, step choices ~40 s,
# time to accuracy ~90 s, refine <= 150 s, fork server ~120 s, CIFAR ~40 s; compile-on gets
# what is left.
GPU_TIMEOUTS = {
    "throughput": 90.0,
    "step_choices": 30.0,  # one training run
    "time_to_accuracy": 45.0,  # one training run
    "refine": 150.0,
    "fork_server": 75.0,
    "cifar_throughput": 60.0,
    "compile_on": 120.0,
}
GPU = Sizes(
    device="cuda",
    throughput_subset=20000,
    throughput_epochs=2,
    compile_options=(False, True),
    cifar_images=25000,
    cifar_epochs=2,
    budgets=(8, 16),
    seeds=3,
    accuracy_subset=None,
    refine_iters=3,  # the full spec: its own subset and epochs
    refine_subset=None,
    refine_epochs=None,
    fork_subset=10000,
    fork_epochs=2,
    fork_iters=2,
    timeouts=GPU_TIMEOUTS,
)
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
    case_deadline: float | None = None  # the running case's own timeout

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        """gpu.json as it stands, atomically (a temporary file renamed over it), so that a
        timeout or a killed run keeps every case finished so far."""
        self.out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=self.out, prefix=".gpu.json.", suffix=".tmp", delete=False
        ) as file:
            file.write(json.dumps(self.results, indent=2) + "\n")
        os.replace(file.name, self.out / "gpu.json")

    def case(
        self, step: str, name: str, measure: Callable[[], dict[str, Any]], group: str = ""
    ) -> None:
        """One case of a step, within its own timeout; its outcome (figures or the error) is
        recorded (in results[step], or results[step][group]) and saved the moment it finishes."""
        cases = self.results.setdefault(step, {})
        if group:
            cases = cases.setdefault(group, {})
        if self.remaining() < 10:
            cases[name] = {"error": "out of time"}
        else:
            limit = self.sizes.timeouts.get(step)
            self.case_deadline = None if limit is None else time.monotonic() + limit
            began = time.perf_counter()
            try:
                cases[name] = measure()
            except subprocess.TimeoutExpired as exc:
                cases[name] = {"error": f"timed out after {exc.timeout:.0f} s"}
            except Exception as exc:  # recorded; the next case still runs
                cases[name] = {"error": f"{type(exc).__name__}: {str(exc)[-600:]}"}
            finally:
                self.case_deadline = None
            print(f"{step}, {name}: {time.perf_counter() - began:.0f} s", file=sys.stderr)
        self.save()

    def run(self, command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """A command with what is left of the budget, or of its case's timeout, as its timeout."""
        timeout = self.remaining()
        if self.case_deadline is not None:
            timeout = min(timeout, self.case_deadline - time.monotonic())
        timeout = max(1.0, timeout)
        print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
        # Its own process group, killed whole on a timeout: bench/throughput.py and refine
        # start training processes of their own, which must not outlive their case and take
        # the GPU from the next one.
        with subprocess.Popen(
            command,
            cwd=cwd or REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        ) as child:
            try:
                stdout, stderr = child.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.communicate()
                raise
        if child.returncode != 0:
            raise RuntimeError(f"exit {child.returncode}: {stderr[-2000:]}")
        return subprocess.CompletedProcess(command, child.returncode, stdout, stderr)


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


def timings(result: dict[str, Any]) -> dict[str, Any]:
    """Steady-state training, untimed warm-up and the process's total wall, kept apart (the
    last two only where the script's result event reports them)."""
    return {
        "train_seconds": result.get("seconds"),
        "warmup_seconds": result.get("warmup_seconds"),
        "wall_seconds": result.get("wall_seconds"),
    }


def throughput_case(bench: Bench, precision: str, compiled: bool) -> dict[str, Any]:
    sizes = bench.sizes
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
    runs = {run["script"]: run for run in summary["runs"]}
    compiled_run, baseline_run = runs["compiled script"], runs["torchvision DataLoader"]
    return {
        "compiled_images_per_second": compiled_run["images_per_second"],
        "baseline_images_per_second": baseline_run["images_per_second"],
        "ratio": summary["ratio"],
        "test_accuracy_delta_points": summary["test_accuracy_delta_points"],
        "compiled": timings(compiled_run),
        "baseline": timings(baseline_run),
    }


def case_name(precision: str, compiled: bool) -> str:
    return f"{precision}, compile {'on' if compiled else 'off'}"


def throughput(bench: Bench) -> None:
    for precision in ("fp32", "bf16"):
        bench.case(
            "throughput",
            case_name(precision, False),
            lambda p=precision: throughput_case(bench, p, False),  # type: ignore[misc]
        )


# The step choices measured against the defaults (per-batch augment, batch norm in bf16).
STEP_CHOICES = {
    "defaults": (),
    "augment per-epoch": ("--augment", "per-epoch"),
    "batchnorm fp32": ("--batchnorm-fp32",),
    "augment per-epoch, batchnorm fp32": ("--augment", "per-epoch", "--batchnorm-fp32"),
}


def choice_case(bench: Bench, flags: tuple[str, ...]) -> dict[str, Any]:
    sizes = bench.sizes
    script = bench.work / "choices_train.py"
    if not script.exists():
        spec = spec_variant(
            REPO / "specs" / "fashion_mnist.imp",
            bench.work / "choices.imp",
            source=fashion_source(sizes.throughput_subset) + "  # locked",
            epochs=str(sizes.throughput_epochs),
            precision="bf16",
            **small_arch(sizes, "resnet"),
        )
        bench.run(
            [sys.executable, "-m", "improve_dsl.cli", "compile", str(spec), "-o", str(script)]
        )
    proc = bench.run([sys.executable, str(script), "--device", sizes.device, *flags])
    found = events(proc.stdout)
    warmup, result = next(e for e in found if e["event"] == "warmup"), found[-1]
    return {
        "images_per_second": result["images_per_second"],
        "val_accuracy": result["val_accuracy"],
        # What the script says it did: a choice it could not make falls back, with a warning.
        "cuda_graph": warmup["cuda_graph"],
        "augment": warmup["augment"],
        "batchnorm_fp32": warmup["batchnorm_fp32"],
        **timings(result),
    }


def step_choices(bench: Bench) -> None:
    for name, flags in STEP_CHOICES.items():
        bench.case(
            "step_choices",
            name,
            lambda f=flags: choice_case(bench, f),  # type: ignore[misc]
        )
    cases = bench.results.get("step_choices", {})
    base = cases.get("defaults", {}).get("images_per_second")
    for case in cases.values():
        if base and "images_per_second" in case:
            case["ratio_to_defaults"] = case["images_per_second"] / base
    bench.save()


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


def cifar_case(bench: Bench, precision: str, compiled: bool) -> dict[str, Any]:
    sizes = bench.sizes
    data = bench.work / "cifar"
    if not (data / "cifar-10-batches-py" / "test_batch").exists():
        write_synthetic_cifar(data, sizes.cifar_images)
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
    bench.run([sys.executable, "-m", "improve_dsl.cli", "compile", str(spec), "-o", str(script)])
    proc = bench.run([sys.executable, str(script), "--device", sizes.device])
    result = events(proc.stdout)[-1]
    return {
        "images_per_second": result["images_per_second"],
        "val_accuracy": result["val_accuracy"],
        **timings(result),
    }


def cifar_throughput(bench: Bench) -> None:
    for precision in ("fp32", "bf16"):
        bench.case(
            "cifar_throughput",
            case_name(precision, False),
            lambda p=precision: cifar_case(bench, p, False),  # type: ignore[misc]
        )


def compile_on(bench: Bench) -> None:
    """The compile-on cases, last: a cold inductor build may take more than a minute."""
    if True not in bench.sizes.compile_options:
        return
    for precision in ("fp32", "bf16"):
        bench.case(
            "compile_on",
            f"fashion_mnist.imp throughput, {precision}",
            lambda p=precision: throughput_case(bench, p, True),  # type: ignore[misc]
        )
    for precision in ("bf16",):
        bench.case(
            "compile_on",
            f"cifar10.imp, {precision}",
            lambda p=precision: cifar_case(bench, p, True),  # type: ignore[misc]
        )


def accuracy_run(bench: Bench, budget: int, seed: int) -> dict[str, Any]:
    sizes = bench.sizes
    script = bench.work / f"airbench_{budget}_train.py"
    if not script.exists():
        spec = spec_variant(
            REPO / "specs" / "fashion_mnist_airbench.imp",
            bench.work / f"airbench_{budget}.imp",
            epochs=str(budget),
            source=fashion_source(sizes.accuracy_subset) + "  # locked",
            **small_arch(sizes, "airbench"),
        )
        bench.run(
            [sys.executable, "-m", "improve_dsl.cli", "compile", str(spec), "-o", str(script)]
        )
    command = [sys.executable, str(script), "--split", "test", "--seed", str(seed)]
    proc = bench.run([*command, "--device", sizes.device])
    result = events(proc.stdout)[-1]
    return {
        "budget": budget,
        "seed": seed,
        "test_accuracy": result["test_accuracy"],
        **timings(result),
    }


def mean(values: list[float | None]) -> float | None:
    """The mean, or None where any value is missing (an older script's result event)."""
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known and len(known) == len(values) else None


def time_to_accuracy(bench: Bench) -> None:
    sizes = bench.sizes
    for budget in sizes.budgets:
        for seed in range(sizes.seeds):
            bench.case(
                "time_to_accuracy",
                f"{budget} epochs, seed {seed}",
                lambda b=budget, s=seed: accuracy_run(bench, b, s),  # type: ignore[misc]
                group="runs",
            )
    runs = [r for r in bench.results["time_to_accuracy"]["runs"].values() if "error" not in r]
    budgets: dict[str, Any] = {}
    for budget in sizes.budgets:
        rs = [r for r in runs if r["budget"] == budget]
        if rs:
            budgets[str(budget)] = {
                "mean_test_accuracy": statistics.fmean(r["test_accuracy"] for r in rs),
                "mean_train_seconds": mean([r["train_seconds"] for r in rs]),
                "mean_warmup_seconds": mean([r["warmup_seconds"] for r in rs]),
                "mean_wall_seconds": mean([r["wall_seconds"] for r in rs]),
                "seeds": len(rs),
            }
    reached = {}
    for target in (0.93, 0.94):
        first = next((b for b, v in budgets.items() if v["mean_test_accuracy"] >= target), None)
        reached[f"{target:.0%}"] = (
            {
                "epochs": int(first),
                "train_seconds": budgets[first]["mean_train_seconds"],
                "warmup_seconds": budgets[first]["mean_warmup_seconds"],
            }
            if first is not None
            else None
        )
    bench.results["time_to_accuracy"].update(budgets=budgets, time_to=reached)
    bench.save()


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


def refine(bench: Bench) -> None:
    sizes = bench.sizes
    bench.case(
        "refine",
        f"specs/fashion_mnist.imp, {sizes.refine_iters} iterations",
        lambda: refine_once(
            bench,
            "refine",
            subset=sizes.refine_subset,
            epochs=sizes.refine_epochs,
            iters=sizes.refine_iters,
        ),
    )


def fork_case(
    bench: Bench, name: str, extra: tuple[str, ...], env: dict[str, str]
) -> dict[str, Any]:
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
    return result


def fork_server(bench: Bench) -> None:
    for name, extra, env in (
        ("fork server off", ("--no-test",), {"IMPROVE_FORK_SERVER": "0"}),
        ("fork server on", ("--no-test",), {"IMPROVE_FORK_SERVER": "always"}),
        (
            "fork server on, --parallel 2",
            ("--no-test", "--parallel", "2"),
            {"IMPROVE_FORK_SERVER": "always"},
        ),
    ):
        bench.case(
            "fork_server",
            name,
            lambda n=name, x=extra, e=env: fork_case(bench, n, x, e),  # type: ignore[misc]
        )


# Most important first: what is left when the budget runs out is the least missed.
STEPS: tuple[tuple[str, Callable[[Bench], None]], ...] = (
    ("throughput", throughput),
    ("step_choices", step_choices),
    ("time_to_accuracy", time_to_accuracy),
    ("refine", refine),
    ("fork_server", fork_server),
    ("cifar_throughput", cifar_throughput),
    ("compile_on", compile_on),
)


# ---------------------------------------------------------------- the report


def score(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "—" if value is None else str(value)


def seconds(value: object) -> str:
    return f"{value:.1f} s" if isinstance(value, (int, float)) else "—"


def apart(t: dict[str, Any]) -> str:
    """Training, warm-up and total wall, apart."""
    return (
        f"train {seconds(t.get('train_seconds'))}, warm-up {seconds(t.get('warmup_seconds'))}, "
        f"wall {seconds(t.get('wall_seconds'))}"
    )


def figure(step: str, case: str, r: dict[str, Any]) -> str:
    """One case's figures, in words."""
    if "error" in r:
        return f"not run: {r['error']}"
    if "compiled_images_per_second" in r:
        return (
            f"{r['compiled_images_per_second']:,.0f} vs {r['baseline_images_per_second']:,.0f}"
            f" images/s ({r['ratio']:.2f}x), accuracy {r['test_accuracy_delta_points']:+.2f}"
            f" points; compiled script {apart(r['compiled'])}"
        )
    if "ratio_to_defaults" in r:
        return (
            f"{r['images_per_second']:,.0f} images/s ({r['ratio_to_defaults']:.2f}x the "
            f"defaults), val {r['val_accuracy']:.4f}, graphed {r['cuda_graph']}; {apart(r)}"
        )
    if "images_per_second" in r:
        return f"{r['images_per_second']:,.0f} images/s; {apart(r)}"
    if "test_accuracy" in r and "seed" in r:
        return f"test {r['test_accuracy']:.4f}; {apart(r)}"
    return (
        f"best val {score(r['best_val_accuracy'])}, test {score(r['test_accuracy'])}, "
        f"{r['wall_seconds']:.0f} s wall, statuses {', '.join(map(str, r['statuses']))}"
        + (f", safe {r['safe']}" if "safe" in r else "")
    )


def table(results: dict[str, Any]) -> str:
    """The figures as one Markdown table: step, case, figure."""
    rows = [("step", "case", "figure")]
    for step, value in results.items():
        if not isinstance(value, dict) or "error" in value:
            rows.append(
                (step, "", f"not run: {value.get('error') if isinstance(value, dict) else value}")
            )
        elif step == "setup":
            rows.append((step, value["device"], f"torch {value['torch']}, {value['cpus']} CPUs"))
        elif step == "time_to_accuracy":
            for case, r in value.get("runs", {}).items():
                rows.append((step, case, figure(step, case, r)))
            for budget, r in value.get("budgets", {}).items():
                rows.append(
                    (
                        step,
                        f"{budget} epochs",
                        f"test {r['mean_test_accuracy']:.4f} in "
                        f"{seconds(r['mean_train_seconds'])} of training + "
                        f"{seconds(r['mean_warmup_seconds'])} warm-up "
                        f"(wall {seconds(r['mean_wall_seconds'])}; mean of {r['seeds']})",
                    )
                )
            for target, r in value.get("time_to", {}).items():
                rows.append(
                    (
                        step,
                        f"to {target}",
                        "not reached"
                        if r is None
                        else f"{seconds(r['train_seconds'])} of training + "
                        f"{seconds(r['warmup_seconds'])} warm-up ({r['epochs']} epochs)",
                    )
                )
            for case, r in value.items():
                if case not in ("runs", "budgets", "time_to"):
                    rows.append((step, case, figure(step, case, r)))
        else:
            for case, r in value.items():
                rows.append((step, case, figure(step, case, r)))
    lines = [f"| {' | '.join(row)} |" for row in rows]
    lines.insert(1, "|---|---|---|")
    return "\n".join(lines) + "\n"


def failures(results: dict[str, Any]) -> list[str]:
    """Every step or case that did not give its figures."""
    failed = []
    for step, value in results.items():
        if not isinstance(value, dict):
            continue
        if "error" in value:
            failed.append(step)
            continue
        for case, r in {**value, **value.get("runs", {})}.items():
            if isinstance(r, dict) and "error" in r:
                failed.append(f"{step}, {case}")
    return failed


def staged_data(data: Path, work: Path) -> Path:
    """A folder for $IMPROVE_DATA that both readers find the .gz files in: the compiled
    scripts look in $IMPROVE_DATA/fashion-mnist, bench/throughput.py hands $IMPROVE_DATA to
    the torchvision baseline as the folder of the files themselves."""
    folder = work / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for name in FASHION_FILES:
        (folder / name).symlink_to((data / name).resolve())
    (folder / "fashion-mnist").symlink_to(".")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the CPU, tiny sizes")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-bench")))
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO / ".data" / "fashion-mnist",
        help="folder of the Fashion-MNIST .gz files (default: .data/fashion-mnist in the "
        "checkout, as bench/gpu.sh --prepare writes and carry brings; the system's copy is "
        "not looked for, so a missing carried folder fails at once)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=480.0,
        help="wall-clock budget; cases left when it runs out are recorded as not run",
    )
    parser.add_argument("--steps", help="comma-separated subset of the steps")
    args = parser.parse_args(argv)
    sizes = DRY if args.dry_run else GPU
    data = args.data.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="improve-gpu-"))
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "XDG_CACHE_HOME": str(work / "cache"),
    }
    env = {k: v for k, v in env.items() if not k.startswith("OPENAI_")}  # the offline expert
    bench = Bench(sizes, args.out, work, env, time.monotonic() + args.max_seconds)
    bench.results["dry_run"] = args.dry_run
    wanted = set(args.steps.split(",")) if args.steps else {name for name, _ in STEPS}
    try:
        try:
            bench.results["setup"] = setup(bench, data)
            env["IMPROVE_DATA"] = str(staged_data(data, work))
        except Exception as exc:  # nothing else can run; say why
            bench.results["setup"] = {"error": str(exc)}
            wanted = set()
        bench.save()
        for name, step in STEPS:
            if name not in wanted:
                continue
            began = time.perf_counter()
            try:
                step(bench)
            except Exception as exc:  # recorded beside its finished cases; the next step runs
                error = f"{type(exc).__name__}: {str(exc)[-600:]}"
                bench.results.setdefault(name, {})["the step itself"] = {"error": error}
            bench.save()
            print(f"{name}: {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        bench.save()
    markdown = table({k: v for k, v in bench.results.items() if k != "dry_run"})
    (args.out / "gpu.md").write_text(markdown)
    print(markdown)
    return 1 if failures(bench.results) else 0


if __name__ == "__main__":
    sys.exit(main())
