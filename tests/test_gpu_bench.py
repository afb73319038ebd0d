"""bench/gpu.sh, the prepared GPU run, runs every step on the CPU with tiny sizes (--dry-run),
so that it cannot rot between the times a GPU is available: from a carried-style
.data/fashion-mnist folder, with the system's copy of Fashion-MNIST hidden (as it is absent
on the GPU machine), so that a data path only this machine has cannot pass here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def can_hide_system_data() -> bool:
    """Whether a private mount namespace can lay an empty folder over /usr/share/datasets."""
    probe = (
        subprocess.run(
            ["unshare", "-rm", "sh", "-c", "mount -t tmpfs none /usr/share/datasets"],
            capture_output=True,
            check=False,
        )
        if shutil.which("unshare")
        else None
    )
    return probe is not None and probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(
    not (FASHION / FILES[0]).exists(),
    reason="needs Fashion-MNIST (apt-get install dataset-fashion-mnist)",
)
@pytest.mark.skipif(not can_hide_system_data(), reason="needs unshare -rm to hide the system data")
def test_the_gpu_bench_dry_run_produces_every_figure_from_carried_data(tmp_path: Path) -> None:
    carried = tmp_path / ".data" / "fashion-mnist"  # as `bench/gpu.sh --prepare` writes it
    carried.mkdir(parents=True)
    for name in FILES:
        shutil.copy(FASHION / name, carried / name)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.pop("IMPROVE_DATA", None)
    # One thread per training process: the slow tier runs beside this on a second worker, and
    # two processes each spinning two threads on two cores take 4x as long, not 2x.
    env["OMP_NUM_THREADS"] = "1"
    venv = Path(sys.executable).parent  # gpu.sh runs `python3`: this interpreter's
    env["PATH"] = f"{venv}{os.pathsep}{env.get('PATH', '')}"
    env["OUT"] = str(out)
    hidden = (
        f"mount -t tmpfs none {FASHION.parent} && test ! -e {FASHION / FILES[0]} && "
        f'exec bash bench/gpu.sh --dry-run --data "{carried}" --max-seconds 2400'
    )
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", hidden],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=2700,
    )
    results = json.loads((out / "gpu.json").read_text())
    assert proc.returncode == 0, (proc.stderr[-3000:], results)
    assert results["dry_run"] is True and results["setup"]["device"] == "cpu"
    assert results["setup"]["data"] == str(carried)
    for case in ("fp32, compile off", "bf16, compile off"):
        figures = results["throughput"][case]
        assert figures["compiled_images_per_second"] > 0 and figures["ratio"] > 0
        assert figures["compiled"]["train_seconds"] > 0
        assert set(figures["compiled"]) == {"train_seconds", "warmup_seconds", "wall_seconds"}
        assert results["cifar_throughput"][case]["images_per_second"] > 0
    choices = results["step_choices"]
    assert list(choices) == [
        "defaults",
        "augment per-epoch",
        "batchnorm fp32",
        "augment per-epoch, batchnorm fp32",
    ]
    assert choices["defaults"]["ratio_to_defaults"] == 1.0
    assert [c["augment"] for c in choices.values()] == ["per-batch", "per-epoch"] * 2
    assert [c["batchnorm_fp32"] > 0 for c in choices.values()] == [False, False, True, True]
    assert all(0 < c["val_accuracy"] <= 1 for c in choices.values())
    assert "compile_on" not in results  # the dry run never compiles
    (budget,) = results["time_to_accuracy"]["budgets"].values()
    assert 0 < budget["mean_test_accuracy"] <= 1 and budget["mean_train_seconds"] > 0
    assert "mean_warmup_seconds" in budget
    assert set(results["time_to_accuracy"]["time_to"]) == {"93%", "94%"}
    (refined,) = results["refine"].values()
    assert refined["statuses"][0] == "accepted"  # the baseline run
    assert 0 < refined["test_accuracy"] <= 1 and refined["wall_seconds"] > 0
    forks = results["fork_server"]
    assert set(forks) == {"fork server off", "fork server on", "fork server on, --parallel 2"}
    assert all(case["safe"] for case in forks.values())
    assert list(results)[2:] == [
        "throughput",
        "step_choices",
        "time_to_accuracy",
        "refine",
        "fork_server",
        "cifar_throughput",
    ]  # by importance, after dry_run and setup
    table = (out / "gpu.md").read_text()
    assert table.startswith("| step | case | figure |") and "time_to_accuracy" in table
    assert table in proc.stdout  # printed last
    assert not list(out.glob(".gpu.json.*"))  # every save renamed its temporary file
