"""bench/gpu.py, the prepared GPU run, runs every step on the CPU with tiny sizes (--dry-run),
so that it cannot rot between the times a GPU is available."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").exists(),
    reason="needs Fashion-MNIST (apt-get install dataset-fashion-mnist)",
)
def test_the_gpu_bench_dry_run_produces_every_figure(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    # One thread per training process: the slow tier runs beside this on a second worker, and
    # two processes each spinning two threads on two cores take 4x as long, not 2x.
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu.py"),
            "--dry-run",
            "--out",
            str(tmp_path),
            "--data",
            str(FASHION),
            "--max-seconds",
            "2400",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=2700,
    )
    results = json.loads((tmp_path / "gpu.json").read_text())
    assert proc.returncode == 0, (proc.stderr[-3000:], results)
    assert results["dry_run"] is True and results["setup"]["device"] == "cpu"
    for case in ("fp32, compile off", "bf16, compile off"):
        figures = results["throughput"][case]
        assert figures["compiled_images_per_second"] > 0 and figures["ratio"] > 0
        assert results["cifar_throughput"][case]["images_per_second"] > 0
    (budget,) = results["time_to_accuracy"]["budgets"].values()
    assert 0 < budget["mean_test_accuracy"] <= 1 and budget["mean_train_seconds"] > 0
    assert set(results["time_to_accuracy"]["time_to"]) == {"93%", "94%"}
    assert results["refine"]["statuses"][0] == "accepted"  # the baseline run
    assert 0 < results["refine"]["test_accuracy"] <= 1
    forks = results["fork_server"]
    assert set(forks) == {"fork server off", "fork server on", "fork server on, --parallel 2"}
    assert all(case["safe"] for case in forks.values())
    table = (tmp_path / "gpu.md").read_text()
    assert table.startswith("| step | case | figure |") and "time_to_accuracy" in table
    assert table in proc.stdout  # printed last
