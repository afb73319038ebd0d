"""The Ray executor on a real local Ray cluster (two CPUs) that this module starts.

Executor-level tests submit a small stand-in script that follows the compiled script's
command line and event contract (so a run can be made slow, killed or large on purpose); the
end-to-end tests run `improve refine --executor ray` on the digits spec against the same
cluster. Skipped, with the reason shown, when Ray is not installed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import improve_env, run_improve

from improve_dsl.executors import TrainJob, make_executor
from improve_dsl.executors.ray_executor import MISSING_RAY, RayExecutor
from improve_dsl.run import read_metrics

REPO = Path(__file__).resolve().parent.parent

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway loopback cluster
try:
    import ray
except ImportError:  # every test but the missing-Ray ones is skipped, with this reason
    ray = None
NO_RAY = "Ray is not installed: pip install 'improve-dsl[ray]'"

# A stand-in for a compiled script: EPOCHS epochs of SLEEP seconds, a model.pt of MODEL bytes.
# With a GATE path, it waits after the first epoch until that file exists (60 s at most), so
# a test can prove that events reach it while the run is still going, whatever the load.
FAKE = textwrap.dedent(
    """
    import argparse, json, os, sys, time

    EPOCHS, SLEEP, MODEL, GATE = {epochs}, {sleep}, {model}, {gate!r}
    parser = argparse.ArgumentParser()
    for flag in ("--split", "--device", "--out", "--compile-artifacts"):
        parser.add_argument(flag)
    for flag in ("--seed", "--batch-size", "--threads"):
        parser.add_argument(flag, type=int)
    args = parser.parse_args()

    def emit(**event):
        print(json.dumps(event), flush=True)

    key = args.split + "_accuracy"
    emit(event="start", epochs=EPOCHS, split=args.split, device=args.device, params=10,
         threads=args.threads, data=os.environ.get("IMPROVE_DATA"), pid=os.getpid(),
         gpus=os.environ.get("CUDA_VISIBLE_DEVICES"))
    history = []
    for epoch in range(1, EPOCHS + 1):
        time.sleep(SLEEP)
        event = {{"event": "epoch", "epoch": epoch, "epochs": EPOCHS, "train_loss": 1 / epoch,
                  key: 0.5 + 0.1 * epoch + 0.001 * (args.seed or 0), "seconds": epoch * SLEEP}}
        history.append(event)
        emit(**event)
        if GATE and epoch == 1:
            deadline = time.monotonic() + 60
            while not os.path.exists(GATE):
                if time.monotonic() > deadline:
                    emit(event="result", status="failed", reason="the gate never opened")
                    sys.exit(1)
                time.sleep(0.02)
    result = {{"event": "result", "status": "ok", "split": args.split, "metric": "accuracy",
               key: history[-1][key], "epochs_run": EPOCHS}}
    emit(**result)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(dict(result, history=history, seed=args.seed), f)
    with open(os.path.join(args.out, "model.pt"), "wb") as f:
        f.write(b"m" * MODEL)
    """
)


def fake_script(
    tmp_path: Path,
    *,
    epochs: int = 3,
    sleep: float = 0.1,
    model: int = 100,
    name: str = "train.py",
    gate: Path | None = None,
) -> Path:
    path = tmp_path / name
    text = FAKE.format(epochs=epochs, sleep=sleep, model=model, gate=str(gate) if gate else "")
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A two-CPU Ray cluster on loopback for this module; its address for subprocesses."""
    if ray is None:
        pytest.skip(NO_RAY)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class Proc:
    """A process seen in /proc: its id, its parent's id and its command line."""

    pid: int
    ppid: int
    cmdline: list[str]

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    def kill_parent(self) -> None:
        os.kill(self.ppid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def training_processes() -> list[Proc]:
    """The training subprocesses Ray workers run now (their scripts live in improve-job-*)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        if any("improve-job-" in part for part in cmdline) and "--out" in cmdline:
            found.append(Proc(int(entry.name), int(fields[1]), cmdline))
    return found


def wait_for(condition: Any, seconds: float = 60.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def wait_until_gone(seconds: float = 15.0) -> None:
    wait_for(lambda: not training_processes(), seconds)


# ---------------------------------------------------------------- executor level


def test_missing_ray_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RuntimeError) as info:
        make_executor("ray", parallel=2)
    assert str(info.value) == MISSING_RAY
    assert "pip install 'improve-dsl[ray]'" in str(info.value)


def test_refine_without_ray_says_how_to_install_it(tmp_path: Path) -> None:
    spec = tmp_path / "digits.imp"
    spec.write_text((REPO / "specs" / "digits.imp").read_text(), encoding="utf-8")
    hide_ray = (
        "import sys; sys.modules['ray'] = None; from improve_dsl.cli import main; "
        f"sys.exit(main(['refine', {str(spec)!r}, '--executor', 'ray', '--iters', '1']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", hide_ray], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"improve: error: {MISSING_RAY}"
    assert not (tmp_path / "digits.improve").exists()  # nothing was started


def test_unreachable_cluster_is_one_line_at_once(tmp_path: Path) -> None:
    if ray is None:
        pytest.skip(NO_RAY)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = tmp_path / "digits.imp"
    spec.write_text((REPO / "specs" / "digits.imp").read_text(), encoding="utf-8")
    started = time.monotonic()
    done = _improve("refine", str(spec), "--ray-address", f"127.0.0.1:{port}", timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith(
        f"improve: error: cannot reach the Ray cluster at 127.0.0.1:{port}: "
    )
    assert len(done.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 30  # not Ray's minutes of reconnecting
    assert not (tmp_path / "digits.improve").exists()


@pytest.mark.slow
def test_jobs_run_as_tasks_and_results_land_in_out_dir(cluster: str, tmp_path: Path) -> None:
    # Each run holds after its first epoch until the test has seen that epoch's event.
    gate = tmp_path / "gate"
    script = fake_script(tmp_path, epochs=3, sleep=0.1, gate=gate)
    seen: dict[int, list[tuple[float, dict[str, Any]]]] = {0: [], 1: []}

    def recorder(seed: int) -> Any:
        def record(event: dict[str, Any]) -> bool:
            seen[seed].append((time.monotonic(), event))
            if event["event"] == "epoch" and all(
                any(e["event"] == "epoch" for _, e in seen[s]) for s in (0, 1)
            ):
                gate.touch()  # both runs' first epochs arrived while they were running
            return True

        return record

    with make_executor("ray", parallel=2) as executor:
        assert isinstance(executor, RayExecutor)
        assert executor.threads == 1  # two CPUs shared by two slots
        handles = [
            executor.submit(
                TrainJob(
                    script, tmp_path / f"seed{seed}", seed=seed, on_event=recorder(seed), tag=seed
                )
            )
            for seed in (0, 1)
        ]
        finished = {}
        for handle, result in executor.as_completed(handles):
            finished[handle.job.tag] = (time.monotonic(), result)
    for seed in (0, 1):
        ended, result = finished[seed]
        assert result.status == "ok", result.reason
        assert result.metric == pytest.approx(0.8 + 0.001 * seed)
        assert [e["epoch"] for e in result.history] == [1, 2, 3]
        out = tmp_path / f"seed{seed}"
        assert read_metrics(out)["seed"] == seed
        assert (out / "model.pt").read_bytes() == b"m" * 100
        assert result.log_path == out / "log"
        log = result.log_path.read_text()
        assert '"event": "result"' in log and "ran on Ray node" in log
        epochs = [e for _, e in seen[seed] if e["event"] == "epoch"]
        assert [e["epoch"] for e in epochs] == [1, 2, 3]
        start = next(e for _, e in seen[seed] if e["event"] == "start")
        assert start["threads"] == 1
        # Events stream while the task runs: the runs only finish once the gate opened.
        first = next(t for t, e in seen[seed] if e["event"] == "epoch")
        assert first < ended
    # Both ran at once on the two CPUs.
    starts = [next(e for _, e in seen[s] if e["event"] == "start") for s in (0, 1)]
    assert starts[0]["pid"] != starts[1]["pid"]


@pytest.mark.slow
def test_slots_bound_the_tasks_on_the_cluster(cluster: str, tmp_path: Path) -> None:
    script = fake_script(tmp_path, epochs=2, sleep=0.2)
    times: dict[str, float] = {}

    def recorder(name: str) -> Any:
        return lambda event: times.setdefault(f"{name}:{event['event']}", time.monotonic()) > 0

    with make_executor("ray", parallel=1, threads=1) as executor:
        handles = [
            executor.submit(TrainJob(script, tmp_path / n, on_event=recorder(n)))
            for n in ("first", "second")
        ]
        assert not handles[1].done()
        results = [executor.wait(h) for h in reversed(handles)]
    assert [r.status for r in results] == ["ok", "ok"]
    # One slot: the second job started only once the first had finished.
    assert times["second:start"] > times["first:result"]


@pytest.mark.slow
def test_pruning_stops_the_task(cluster: str, tmp_path: Path) -> None:
    script = fake_script(tmp_path, epochs=20, sleep=0.5)
    job = TrainJob(
        script, tmp_path / "out", on_event=lambda e: e.get("event") != "epoch" or e["epoch"] < 2
    )
    with make_executor("ray") as executor:
        result = executor.wait(executor.submit(job))
    assert result.status == "pruned"
    # The decision reaches the task at its next event once the driver has seen epoch 2:
    # usually epoch 3 (a little later on a loaded machine), never the end.
    assert 2 <= len(result.history) <= 5
    assert "stopped early by the caller" in (tmp_path / "out" / "log").read_text()
    wait_until_gone()


@pytest.mark.slow
def test_killed_training_process_is_a_failed_result(cluster: str, tmp_path: Path) -> None:
    slow = fake_script(tmp_path, epochs=40, sleep=0.25, name="slow.py")
    quick = fake_script(tmp_path, epochs=3, sleep=0.2, name="quick.py")
    with make_executor("ray", parallel=2) as executor:
        doomed = executor.submit(TrainJob(slow, tmp_path / "doomed"))
        other = executor.submit(TrainJob(quick, tmp_path / "other"))
        victim = wait_for(
            lambda: [p for p in training_processes() if any("slow.py" in c for c in p.cmdline)]
        )
        victim[0].kill()
        results = {h.job.out_dir.name: r for h, r in executor.as_completed([doomed, other])}
    assert results["doomed"].status == "failed"
    assert "killed by SIGKILL" in (results["doomed"].reason or "")
    assert results["other"].status == "ok"
    wait_until_gone()


@pytest.mark.slow
def test_lost_worker_is_retried_once(cluster: str, tmp_path: Path) -> None:
    script = fake_script(tmp_path, epochs=8, sleep=0.25)
    with make_executor("ray") as executor:
        handle = executor.submit(TrainJob(script, tmp_path / "out"))
        first = wait_for(training_processes)[0]
        first.kill_parent()  # the Ray worker itself dies
        result = executor.wait(handle)
    assert result.status == "ok", result.reason  # Ray ran the task again
    assert read_metrics(tmp_path / "out")["epochs_run"] == 8
    assert not alive(first.pid)  # Ray ended the lost worker's training process
    wait_until_gone()


@pytest.mark.slow
def test_worker_lost_twice_is_a_failed_result(cluster: str, tmp_path: Path) -> None:
    script = fake_script(tmp_path, epochs=40, sleep=0.25)
    with make_executor("ray") as executor:
        handle = executor.submit(TrainJob(script, tmp_path / "out"))
        killed: set[int] = set()
        for _ in range(2):
            proc = wait_for(lambda: [p for p in training_processes() if p.pid not in killed])[0]
            killed.add(proc.pid)
            proc.kill_parent()
        result = executor.wait(handle)
    assert result.status == "failed"
    assert "lost twice" in (result.reason or "")
    assert "lost twice" in (tmp_path / "out" / "log").read_text()
    wait_until_gone()


@pytest.mark.slow
def test_cancel_all_interrupts_running_and_queued_tasks(cluster: str, tmp_path: Path) -> None:
    script = fake_script(tmp_path, epochs=100, sleep=0.2)
    with make_executor("ray", parallel=2, threads=1) as executor:
        handles = [executor.submit(TrainJob(script, tmp_path / f"job{i}")) for i in range(3)]
        wait_for(lambda: len(training_processes()) == 2)
        started = time.monotonic()
        executor.cancel_all()
        results = [r for _, r in executor.as_completed(handles)]
        assert time.monotonic() - started < 10
        with pytest.raises(RuntimeError):
            executor.submit(TrainJob(script, tmp_path / "late"))
    assert [r.status for r in results] == ["interrupted"] * 3
    wait_until_gone()


@pytest.mark.slow
def test_large_model_stays_behind_with_a_note(cluster: str, tmp_path: Path) -> None:
    script = fake_script(tmp_path, epochs=1, sleep=0.0, model=3 * 2**20)
    executor = RayExecutor(1, model_limit=2**20)
    try:
        result = executor.wait(executor.submit(TrainJob(script, tmp_path / "out")))
    finally:
        executor.close()
    assert result.status == "ok"
    assert not (tmp_path / "out" / "model.pt").exists()
    assert (tmp_path / "out" / "metrics.json").exists()
    assert "model.pt (3.0 MiB) was not copied back" in result.log_path.read_text()


@pytest.mark.slow
def test_driver_data_location_reaches_the_worker(
    cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = fake_script(tmp_path, epochs=1, sleep=0.0)
    monkeypatch.setenv("IMPROVE_DATA", str(tmp_path / "data"))
    with make_executor("ray") as executor:
        result = executor.wait(executor.submit(TrainJob(script, tmp_path / "out")))
    assert result.start is not None and result.start["data"] == str(tmp_path / "data")


@pytest.mark.slow
def test_compiled_graphs_travel_to_a_worker_without_the_cache(
    cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tasks on workers that share no inductor cache (two cache folders, as on two
    machines): the first compiles and its artifacts come back to the driver's shelf; the
    second gets them with its task and compiles nothing afresh."""
    from improve_dsl.render import render_script
    from improve_dsl.validate import load_text

    spec = (REPO / "specs" / "digits.imp").read_text(encoding="utf-8")
    spec = spec.replace("train {", "train {\n  compile = true", 1)
    script = tmp_path / "train.py"
    script.write_text(render_script(load_text(spec, "digits.imp")), encoding="utf-8")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "driver"))  # the driver's shelf
    warmups = []
    with make_executor("ray") as executor:
        for machine in ("first", "second"):
            monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / machine / "inductor"))
            monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / machine / "triton"))
            out = tmp_path / machine / "out"
            job = TrainJob(script, out, device="cpu", threads=1, timeout=600)
            result = executor.wait(executor.submit(job))
            assert result.ok, result.reason
            log = (out / "log").read_text()
            warmups.append(json.loads(next(ln for ln in log.splitlines() if '"warmup"' in ln)))
    first, second = warmups
    assert first["compile_cache_misses"] > 0 and first["compile_cache_hits"] == 0, first
    assert second["compile_cache_hits"] > 0 and second["compile_cache_misses"] == 0, second
    shelf = tmp_path / "driver" / "improve" / "compile-artifacts"
    assert len(list(shelf.glob("*.bin"))) == 1


@pytest.mark.slow
def test_unreadable_script_is_a_failed_result(cluster: str, tmp_path: Path) -> None:
    with make_executor("ray") as executor:
        result = executor.wait(executor.submit(TrainJob(tmp_path / "gone.py", tmp_path / "o")))
    assert result.status == "failed" and "cannot read the training script" in (result.reason or "")


GPU_CLUSTER = """
import json, sys
from pathlib import Path
import ray
from improve_dsl.executors import TrainJob, make_executor
ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
script, out = Path(sys.argv[1]), Path(sys.argv[2])
with make_executor("ray", parallel=2) as executor:
    handles = [executor.submit(TrainJob(script, out / str(i))) for i in range(2)]
    starts = [executor.wait(h).start for h in handles]
print(json.dumps({"starts": starts, "cpus": executor.num_cpus, "gpus": executor.num_gpus}))
"""


@pytest.mark.slow
def test_each_task_gets_one_gpu_of_its_own(cluster: str, tmp_path: Path) -> None:
    # A cluster of its own that declares two (logical) GPUs: Ray hands one to each task.
    script = fake_script(tmp_path, epochs=2, sleep=0.5)
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    done = subprocess.run(
        [sys.executable, "-c", GPU_CLUSTER, str(script), str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert (report["cpus"], report["gpus"]) == (1.0, 1.0)
    assert sorted(start["gpus"] for start in report["starts"]) == ["0", "1"]
    assert all(start["threads"] is None for start in report["starts"])


@pytest.mark.slow
def test_gpu_request_on_a_cpu_cluster_is_one_line(cluster: str) -> None:
    with pytest.raises(RuntimeError, match="the Ray cluster has none"):
        make_executor("ray", device="cuda")


def _json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _improve(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = improve_env(RAY_AUTH_MODE="disabled")
    return run_improve(*args, cwd=REPO, env=env, timeout=timeout)


# ---------------------------------------------------------------- `improve refine` end to end


def refine_args(tmp_path: Path, cluster: str, *extra: str) -> list[str]:
    spec = tmp_path / "digits.imp"
    if not spec.exists():
        spec.write_text((REPO / "specs" / "digits.imp").read_text(), encoding="utf-8")
    return [
        "refine",
        str(spec),
        "--executor",
        "ray",
        "--ray-address",
        cluster,
        "--expert",
        "heuristic",
        "--no-test",
        "--threads",
        "1",
        "-q",
        *extra,
    ]


def start_refine(tmp_path: Path, cluster: str, run_dir: Path) -> subprocess.Popen[str]:
    """`improve refine --iters 2` on the cluster, in the background, its output piped."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "improve_dsl.cli",
            *refine_args(tmp_path, cluster, "--iters", "2", "--run-dir", str(run_dir)),
        ],
        cwd=REPO,
        env=dict(os.environ, RAY_AUTH_MODE="disabled"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def journal(run_dir: Path) -> list[dict[str, Any]]:
    return _json_lines(run_dir / "journal.jsonl")


@pytest.mark.slow
def test_refine_on_ray_with_two_seeds_at_once(cluster: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = _improve(
        *refine_args(
            tmp_path,
            cluster,
            "--iters",
            "2",
            "--seeds",
            "2",
            "--parallel",
            "2",
            "--run-dir",
            str(run_dir),
        )
    )
    assert done.returncode == 0, done.stderr
    records = journal(run_dir)
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert records[0]["status"] == "accepted" and records[0]["metric"] > 0.1
    assert all(r["status"] in ("accepted", "rejected", "pruned", "cached") for r in records)
    for record in records:
        if record.get("cached"):
            continue
        for seed in (0, 1):
            out = run_dir / "candidates" / str(record["iteration"]) / f"seed-{seed}"
            assert read_metrics(out)["seed"] == seed
            assert "ran on Ray node" in (out / "log").read_text()
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_refine_records_a_killed_run_as_failed_and_goes_on(cluster: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = start_refine(tmp_path, cluster, run_dir)
    try:
        # The baseline's run comes first; kill the next one (iteration 1) while it trains.
        baseline = wait_for(training_processes, 120)[0].pid
        victim = wait_for(lambda: [p for p in training_processes() if p.pid != baseline], 120)
        victim[0].kill()
        _, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    records = journal(run_dir)
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert records[1]["status"] == "failed"
    assert "SIGKILL" in records[1]["reason"]
    assert records[2]["status"] in ("accepted", "rejected", "pruned", "cached")


@pytest.mark.slow
def test_ctrl_c_cancels_tasks_and_resume_finishes_on_ray(cluster: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = start_refine(tmp_path, cluster, run_dir)
    try:
        # Interrupt while the last iteration trains (0 and 1 are in the journal).
        wait_for(lambda: (run_dir / "journal.jsonl").exists() and len(journal(run_dir)) >= 2, 120)
        wait_for(training_processes, 60)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert f"improve refine --resume {run_dir}" in stderr
    wait_until_gone()  # the cancelled task's training process went with it
    before = journal(run_dir)
    assert [r["iteration"] for r in before] == [0, 1]

    done = _improve("refine", "--resume", str(run_dir), "--ray-address", cluster, "-q")
    assert done.returncode == 0, done.stderr
    after = journal(run_dir)
    assert [r["iteration"] for r in after] == [0, 1, 2]  # nothing lost, nothing repeated
    assert after[:2] == before
