"""The local executor: real subprocesses, K at once, one GPU each, prompt cancellation.

The stand-in scripts need no torch, so these executors start no fork server (whose preload
of torch would cost seconds per test); test_forkserver.py tests runs through one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from improve_dsl.executors import LocalExecutor, TrainJob, make_executor

# A stand-in for a compiled script: the same command line and JSON-lines protocol, no torch.
FAKE = """
import json, os, sys, time
args = sys.argv[1:]
sleep = float(os.environ.get("FAKE_SLEEP", "0.3"))
print(json.dumps({"event": "start", "epochs": 3, "metric": "accuracy", "argv": args,
                  "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "t": time.time()}), flush=True)
for epoch in range(1, 4):
    time.sleep(sleep)
    print(json.dumps({"event": "epoch", "epoch": epoch, "epochs": 3, "train_loss": 1.0 / epoch,
                      "val_loss": 1.0, "val_accuracy": 0.3 * epoch}), flush=True)
print(json.dumps({"event": "result", "status": "ok", "metric": "accuracy",
                  "val_accuracy": 0.9, "t": time.time()}), flush=True)
"""


def _script(tmp_path: Path, sleep: float = 0.3) -> Path:
    path = tmp_path / "train.py"
    path.write_text(FAKE.replace('"0.3"', f'"{sleep}"'))
    return path


def test_two_slots_run_two_jobs_at_once_each_on_its_own_gpu(tmp_path: Path) -> None:
    script = _script(tmp_path)
    with LocalExecutor(2, gpus=["0", "1"]) as executor:
        handles = [
            executor.submit(TrainJob(script, tmp_path / f"out{i}", seed=i, tag=i)) for i in range(2)
        ]
        results = {h.job.tag: r for h, r in executor.as_completed(handles)}
    assert all(r.status == "ok" and r.metric == 0.9 for r in results.values())
    starts = [results[i].start or {} for i in range(2)]
    assert sorted(s["gpu"] for s in starts) == ["0", "1"]
    # They overlapped: each started before the other finished.
    ends = [(results[i].result or {})["t"] for i in range(2)]
    assert starts[0]["t"] < ends[1] and starts[1]["t"] < ends[0]
    # CPU threads are divided between the slots, and the seed reaches the script.
    for i, start in enumerate(starts):
        assert (
            "--threads" in start["argv"]
            and ["--seed", str(i)]
            == start["argv"][start["argv"].index("--seed") : start["argv"].index("--seed") + 2]
        )


def test_one_slot_on_cpu_sets_no_gpu_and_no_thread_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMPROVE_FORK_SERVER", "0")
    executor = make_executor("local", parallel=1, device="cpu")
    try:
        result = executor.wait(executor.submit(TrainJob(_script(tmp_path), tmp_path / "o")))
    finally:
        executor.close()
    assert result.status == "ok"
    # No GPU is assigned: the child sees exactly what this process sees.
    assert (result.start or {})["gpu"] == os.environ.get("CUDA_VISIBLE_DEVICES")
    assert "--threads" not in (result.start or {})["argv"]
    assert json.loads((tmp_path / "o" / "log").read_text().splitlines()[1])["event"] == "start"


def test_a_callback_returning_false_prunes_the_run(tmp_path: Path) -> None:
    seen: list[int] = []

    def on_event(event: dict[str, object]) -> bool:
        if event.get("event") == "epoch":
            seen.append(int(event["epoch"]))  # type: ignore[call-overload]
            return False
        return True

    with LocalExecutor(1, device="cpu", fork_server=False) as executor:
        result = executor.wait(
            executor.submit(TrainJob(_script(tmp_path), tmp_path / "o", on_event=on_event))
        )
    assert result.status == "pruned" and seen == [1]


def test_cancel_all_stops_a_running_job_without_waiting_for_its_next_event(
    tmp_path: Path,
) -> None:
    executor = LocalExecutor(1, device="cpu", fork_server=False)
    handle = executor.submit(TrainJob(_script(tmp_path, sleep=30), tmp_path / "o"))
    log = tmp_path / "o" / "log"
    deadline = time.monotonic() + 30
    while '"start"' not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    executor.cancel_all()
    result = executor.wait(handle)
    executor.close()
    assert result.status == "interrupted"
    assert time.monotonic() - started < 10
