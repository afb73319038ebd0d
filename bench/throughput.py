"""Training throughput: the compiled script against an idiomatic torchvision DataLoader script.

Both train the same network with the same recipe on the same Fashion-MNIST data for the same
epochs (a Fashion-MNIST ResNet-8 spec, by default specs/fashion_mnist.imp, compiled with
`improve compile`, against bench/torchvision_baseline.py given the spec's width and
precision), one after the other, then score the test split once. Training
images per second = images trained on / seconds of the training loop over all epochs. Both
exclude reading the dataset files and evaluation; both include everything per batch (fetching,
augmenting, normalising, the training step), and the baseline's DataLoader worker start-up.

    python bench/throughput.py --subset 20000 --epochs 2 --device cpu [--seeds 3]
    python bench/throughput.py --spec specs/fashion_mnist_cpu.imp --epochs 3 --seeds 3

prints both figures for each seed (both scripts take the same --seed, which seeds the weights
and the order, and train on the same images: the baseline is handed the compiled script's),
the mean ratio and the difference of the mean test accuracies, with each whole run's CPU
seconds (user + system, DataLoader workers included; loading, training and evaluation), which
depend less on other load on the machine than wall-clock figures do. It then times each data
pipeline alone, without the model (batches fetched, augmented and normalised for one epoch, in
this process, after both runs): where the model's compute dominates, as for this network on a
CPU, that shows how much of the difference the data pipeline can make at most.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def last_json(output: str) -> dict[str, Any]:
    """The last JSON object line of a script's standard output."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            value: dict[str, Any] = json.loads(line)
            return value
    raise RuntimeError("no JSON result in the output:\n" + output[-2000:])


def first_event(output: str, name: str) -> dict[str, Any]:
    """The first JSON line of a script's standard output whose "event" is `name`."""
    for line in output.splitlines():
        if line.startswith("{"):
            event: dict[str, Any] = json.loads(line)
            if event.get("event") == name:
                return event
    return {}


def cpu_seconds() -> float:
    """User + system CPU time of every finished child process (workers included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(command: list[str], label: str) -> tuple[dict[str, Any], float]:
    """Run a training script; its result line, with "cpu_seconds" of the whole process tree."""
    print(f"[{label}] {' '.join(command)}", file=sys.stderr, flush=True)
    began, cpu = time.perf_counter(), cpu_seconds()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    # The compiled script names its precision in its start event, the baseline in its result.
    start = first_event(proc.stdout, "start")
    result = {"precision": start.get("precision", "?"), **last_json(proc.stdout)}
    result.setdefault("train_size", start.get("train_size"))
    return {**result, "cpu_seconds": cpu_seconds() - cpu}, wall


def compiled_script(
    spec: Path,
    subset: int | None,
    work: Path,
    width: int | None,
    precision: str | None,
    compile_model: bool = False,
) -> tuple[Path, int, str]:
    """The spec with subset= (and the ResNet's width and the precision, where given) set,
    compiled by `improve compile`; the script, and the width and precision it trains with."""
    text = spec.read_text(encoding="utf-8")
    if precision:
        text, count = re.subn(r"precision = \w+", f"precision = {precision}", text)
        if count != 1:
            raise SystemExit(f"{spec}: expected `precision = P` to set the precision")
    if width:
        text, count = re.subn(
            r"resnet\(depth = 8, width = \d+\)", f"resnet(depth = 8, width = {width})", text
        )
        if count != 1:
            raise SystemExit(f"{spec}: expected `resnet(depth = 8, width = N)` to set the width")
    if subset:
        text, count = re.subn(
            r"source = fashion_mnist\(\)", f"source = fashion_mnist(subset = {subset})", text
        )
        if count != 1:
            raise SystemExit(f"{spec}: expected `source = fashion_mnist()` to add subset=")
    # What the baseline must match: the network's width and the training precision.
    width_found = re.search(r"resnet\(depth = 8, width = (\d+)\)", text)
    precision_found = re.search(r"precision = (\w+)", text)
    if width_found is None:
        raise SystemExit(f"{spec}: the baseline is a ResNet-8; expected `resnet(depth = 8, ...)`")
    final_precision = precision_found.group(1) if precision_found else "auto"
    if final_precision not in ("auto", "bf16", "fp32"):
        raise SystemExit(
            f"{spec}: precision {final_precision}: the baseline has auto, bf16 and fp32"
        )
    if compile_model:
        text, count = re.subn(r"(\n  precision = \w+\n)", r"\1  compile = true\n", text)
        if count != 1:
            raise SystemExit(f"{spec}: expected a `precision = P` line to add compile = true")
    bench_spec = work / "bench.imp"
    bench_spec.write_text(text, encoding="utf-8")
    script = work / "train.py"
    command = [
        sys.executable,
        "-m",
        "improve_dsl.cli",
        "compile",
        str(bench_spec),
        "-o",
        str(script),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"improve compile failed:\n{proc.stderr}")
    return script, int(width_found.group(1)), final_precision


def import_file(path: Path, name: str) -> Any:
    """A Python file as a module (the compiled script trains only under __main__)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Setup:
    """What both scripts train: the compiled script (and the module it is), the network's
    width, the precision, and the training images (indices into the IDX training file)."""

    script: Path
    compiled: Any
    width: int
    precision: str
    train_index: Path
    train_size: int


def prepare(args: argparse.Namespace, work: Path) -> Setup:
    """The spec compiled with the bench's settings, and its training images saved for the
    baseline."""
    script, width, precision = compiled_script(
        args.spec, args.subset, work, args.width, args.precision, args.compile
    )
    compiled = import_file(script, "bench_compiled_train")
    train_index, train_size = training_images(compiled, work)
    return Setup(script, compiled, width, precision, train_index, train_size)


def training_images(compiled: Any, work: Path) -> tuple[Path, int]:
    """The compiled script's training images, as indices into the IDX training file, saved
    for the baseline (so that both train on the same images and any accuracy difference is
    the scripts', not two samples'); the file and the number of images."""
    import numpy as np
    import torch

    pool, _, _ = compiled.load_source(None)
    _, index = compiled.validation_split(pool.labels)
    subset = getattr(compiled, "SUBSET", None)
    if subset is not None and subset < len(index):
        generator = torch.Generator().manual_seed(compiled.VALIDATION_SEED)
        index = index[compiled.stratified_take(pool.labels[index], subset, generator)]
    path = work / "train_index.npy"
    np.save(path, index.numpy())
    return path, len(index)


def pipeline_only(setup: Setup, epochs: int) -> tuple[float, float]:
    """Images/s of each data pipeline alone on the CPU: (compiled, torchvision DataLoader)."""
    import numpy as np
    import torch

    compiled = setup.compiled
    torch.manual_seed(0)
    data = compiled.load_data(None, "val", torch.device("cpu"))
    batch_size = compiled.BATCH_SIZE
    steps = len(data.train) // batch_size
    seen, began = 0, time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(data.train))[: steps * batch_size]
        for images, labels in data.train.batches(order, batch_size):
            inputs, _ = compiled.augment_batch(images.float().div_(255), labels, 10)
            compiled.normalise(inputs, data.mean, data.std, torch.contiguous_format)
            seen += len(labels)
    compiled_speed = seen / (time.perf_counter() - began)

    baseline = import_file(REPO / "bench" / "torchvision_baseline.py", "bench_baseline")
    train_index = np.load(setup.train_index)
    _, _, loader = baseline.build_data(baseline.DATA, None, 2, train_index=train_index)
    seen, began = 0, time.perf_counter()
    for _ in range(epochs):
        for _, labels in loader:
            seen += len(labels)
    return compiled_speed, seen / (time.perf_counter() - began)


def one_seed(
    args: argparse.Namespace, setup: Setup, work: Path, seed: int
) -> list[tuple[str, dict[str, Any], float]]:
    """Both scripts trained with `seed`, one after the other: (name, result, wall seconds)."""
    out = work / f"run{seed}"
    compiled, compiled_wall = run(
        [
            *(sys.executable, str(setup.script), "--split", "test", "--epochs", str(args.epochs)),
            *("--device", args.device, "--seed", str(seed), "--out", str(out)),
        ],
        f"compiled, seed {seed}",
    )
    if compiled.get("status") != "ok":
        raise SystemExit(f"the compiled script failed: {compiled}")
    if compiled["train_size"] != setup.train_size:
        raise SystemExit(
            f"the compiled script trained on {compiled['train_size']} images, "
            f"expected {setup.train_size}"
        )
    baseline_command = [
        sys.executable,
        str(REPO / "bench" / "torchvision_baseline.py"),
        "--epochs",
        str(args.epochs),
        "--device",
        args.device,
        "--seed",
        str(seed),
        "--precision",
        setup.precision,
        "--width",
        str(setup.width),
        "--train-index",
        str(setup.train_index),
        *(("--compile",) if args.compile else ()),
        *(("--data-root", os.environ["IMPROVE_DATA"]) if os.environ.get("IMPROVE_DATA") else ()),
        "--init",
        args.baseline_init,
    ]
    baseline, baseline_wall = run(baseline_command, f"torchvision, seed {seed}")
    return [
        ("compiled script", compiled, compiled_wall),
        ("torchvision DataLoader", baseline, baseline_wall),
    ]


def spread(values: list[float]) -> str:
    """Mean and, over several values, the sample standard deviation."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.4f}"
    return f"{mean:.4f} +- {statistics.stdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=REPO / "specs" / "fashion_mnist.imp")
    parser.add_argument("--subset", type=int, help="training images (default: all 54,000)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1, both scripts each")
    parser.add_argument(
        "--pipeline-epochs", type=int, default=1, help="epochs for timing the data pipelines alone"
    )
    parser.add_argument(
        "--width",
        type=int,
        default=None,
        help="ResNet-8 width for both scripts (default: the spec's); a lighter network "
        "shows how much the data pipeline matters once compute is cheaper",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default=None,
        help="the precision for both scripts (default: the spec's); auto is fp32 on the CPU, "
        "bf16 trains under bf16 autocast on CUDA and on CPUs with native bf16",
    )
    parser.add_argument(
        "--no-pipelines", action="store_true", help="skip timing the data pipelines alone"
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model in both scripts"
    )
    parser.add_argument("--json", type=Path, help="also write the runs and the ratio here")
    parser.add_argument(
        "--baseline-init",
        choices=("default", "kaiming"),
        default="default",
        help="the baseline's conv initialisation: PyTorch's default (as the compiled "
        "script) or Kaiming fan-out",
    )
    args = parser.parse_args()

    runs: list[tuple[int, str, dict[str, Any], float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        setup = prepare(args, work)
        for seed in range(args.seeds):
            for name, result, wall in one_seed(args, setup, work, seed):
                runs.append((seed, name, result, wall))
        if not args.no_pipelines:
            print("[pipelines] each data pipeline alone, no model", file=sys.stderr, flush=True)
            pipe_compiled, pipe_baseline = pipeline_only(setup, args.pipeline_epochs)

    print(
        f"Fashion-MNIST, {args.subset or 'all'} training images, {args.epochs} epochs, "
        f"{args.spec.name}, ResNet-8 width {setup.width}, precision {setup.precision}, "
        f"device {args.device}, {os.cpu_count()} CPU cores, seeds 0..{args.seeds - 1}"
    )
    print(
        f"{'':24} {'seed':>4} {'prec':>5} {'train images/s':>15} {'train s':>9} {'wall s':>8} "
        f"{'CPU s':>8} {'test acc':>9}"
    )
    for seed, name, result, wall in runs:
        print(
            f"{name:24} {seed:4} {result['precision']:>5} {result['images_per_second']:15,.0f} "
            f"{result['seconds']:9.1f} {wall:8.1f} {result['cpu_seconds']:8.1f} "
            f"{result['test_accuracy']:9.4f}"
        )
    by_name: dict[str, list[dict[str, Any]]] = {}
    for _, name, result, _ in runs:
        by_name.setdefault(name, []).append(result)
    compiled, baseline = by_name["compiled script"], by_name["torchvision DataLoader"]
    ratios = [
        c["images_per_second"] / b["images_per_second"]
        for c, b in zip(compiled, baseline, strict=True)
    ]
    for name, results in by_name.items():
        speeds = [r["images_per_second"] for r in results]
        accuracy = spread([r["test_accuracy"] for r in results])
        print(f"{name:24} mean images/s {statistics.fmean(speeds):,.0f}, test acc {accuracy}")
    delta = 100 * (
        statistics.fmean(c["test_accuracy"] for c in compiled)
        - statistics.fmean(b["test_accuracy"] for b in baseline)
    )
    print(
        f"speed ratio (compiled / torchvision): {statistics.fmean(ratios):.2f}x "
        f"(per seed: {', '.join(f'{r:.2f}x' for r in ratios)})"
    )
    print(f"test accuracy difference of the means (compiled - torchvision): {delta:+.2f} points")
    if not args.no_pipelines:
        print(
            f"data pipeline alone, images/s: compiled {pipe_compiled:,.0f}, torchvision "
            f"DataLoader {pipe_baseline:,.0f} ({pipe_compiled / pipe_baseline:.1f}x)"
        )
    if args.json is not None:
        summary = {
            "spec": str(args.spec),
            "precision": setup.precision,
            "compile": args.compile,
            "device": args.device,
            "epochs": args.epochs,
            "subset": args.subset,
            "runs": [
                {"seed": seed, "script": name, "wall_seconds": wall, **result}
                for seed, name, result, wall in runs
            ],
            "ratio": statistics.fmean(ratios),
            "test_accuracy_delta_points": delta,
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
