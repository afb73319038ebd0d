"""Training throughput: the compiled script against an idiomatic torchvision DataLoader script.

Both train the same network with the same recipe on the same Fashion-MNIST data for the same
epochs (specs/fashion_mnist.imp, compiled with `improve compile`, against
bench/torchvision_baseline.py), one after the other, then score the test split once. Training
images per second = images trained on / seconds of the training loop over all epochs. Both
exclude reading the dataset files and evaluation; both include everything per batch (fetching,
augmenting, normalising, the training step), and the baseline's DataLoader worker start-up.

    python bench/throughput.py --subset 20000 --epochs 2 --device cpu

prints both figures, their ratio and the accuracy difference, with each whole run's CPU
seconds (user + system, DataLoader workers included; loading, training and evaluation), which
depend less on other load on the machine than wall-clock figures do. It then times each data
pipeline alone, without the model (batches fetched, augmented and normalised for one epoch,
in this process, after both runs): where the model's compute dominates, as for this network on
a CPU, that shows how much of the difference the data pipeline can make at most.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
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
    return {**last_json(proc.stdout), "cpu_seconds": cpu_seconds() - cpu}, wall


def compiled_script(spec: Path, subset: int | None, work: Path, width: int | None = None) -> Path:
    """The spec with subset= (and the ResNet's width) set, compiled by `improve compile`."""
    text = spec.read_text(encoding="utf-8")
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
    return script


def import_file(path: Path, name: str) -> Any:
    """A Python file as a module (the compiled script trains only under __main__)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def pipeline_only(script: Path, subset: int | None, epochs: int) -> tuple[float, float]:
    """Images/s of each data pipeline alone on the CPU: (compiled, torchvision DataLoader)."""
    import torch

    compiled = import_file(script, "bench_compiled_train")
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
    _, _, loader = baseline.build_data(baseline.DATA, subset, 0, 2)
    seen, began = 0, time.perf_counter()
    for _ in range(epochs):
        for _, labels in loader:
            seen += len(labels)
    return compiled_speed, seen / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=REPO / "specs" / "fashion_mnist.imp")
    parser.add_argument("--subset", type=int, help="training images (default: all 54,000)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--pipeline-epochs", type=int, default=1, help="epochs for timing the data pipelines alone"
    )
    parser.add_argument(
        "--width",
        type=int,
        default=None,
        help="ResNet-8 width for both scripts (default: the spec's, 32); a lighter network "
        "shows how much the data pipeline matters once compute is cheaper",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        script = compiled_script(args.spec, args.subset, work, args.width)
        compiled, compiled_wall = run(
            [
                sys.executable,
                str(script),
                "--split",
                "test",
                "--epochs",
                str(args.epochs),
                "--device",
                args.device,
                "--out",
                str(work / "run"),
            ],
            "compiled",
        )
        if compiled.get("status") != "ok":
            raise SystemExit(f"the compiled script failed: {compiled}")
        baseline_command = [
            sys.executable,
            str(REPO / "bench" / "torchvision_baseline.py"),
            "--epochs",
            str(args.epochs),
            "--device",
            args.device,
        ]
        if args.subset:
            baseline_command += ["--subset", str(args.subset)]
        if args.width:
            baseline_command += ["--width", str(args.width)]
        baseline, baseline_wall = run(baseline_command, "torchvision")
        print("[pipelines] each data pipeline alone, no model", file=sys.stderr, flush=True)
        pipe_compiled, pipe_baseline = pipeline_only(script, args.subset, args.pipeline_epochs)

    rows = [
        (
            "compiled script",
            compiled["images_per_second"],
            compiled["seconds"],
            compiled_wall,
            compiled["test_accuracy"],
        ),
        (
            "torchvision DataLoader",
            baseline["images_per_second"],
            baseline["seconds"],
            baseline_wall,
            baseline["test_accuracy"],
        ),
    ]
    print(
        f"Fashion-MNIST, {args.subset or 'all'} training images, {args.epochs} epochs, "
        f"ResNet-8 width {args.width or 32}, "
        f"device {args.device}, {os.cpu_count()} CPU cores"
    )
    print(
        f"{'':24} {'train images/s':>15} {'train s':>9} {'wall s':>8} {'CPU s':>8} {'test acc':>9}"
    )
    for (name, speed, seconds, wall, accuracy), cpu in zip(
        rows, (compiled["cpu_seconds"], baseline["cpu_seconds"]), strict=True
    ):
        print(f"{name:24} {speed:15,.0f} {seconds:9.1f} {wall:8.1f} {cpu:8.1f} {accuracy:9.4f}")
    ratio = compiled["images_per_second"] / baseline["images_per_second"]
    delta = 100 * (compiled["test_accuracy"] - baseline["test_accuracy"])
    print(f"speed ratio (compiled / torchvision): {ratio:.2f}x")
    print(f"test accuracy difference (compiled - torchvision): {delta:+.2f} points")
    print(
        f"data pipeline alone, images/s: compiled {pipe_compiled:,.0f}, torchvision "
        f"DataLoader {pipe_baseline:,.0f} ({pipe_compiled / pipe_baseline:.1f}x)"
    )


if __name__ == "__main__":
    main()
