"""The runner: a training script in a subprocess, its JSON-lines events, every way it can end.

Most tests drive a small stand-in script that follows the generated script's command line and
event contract (so every ending can be provoked on purpose); the last ones run a real
compiled spec.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ImproveCall, improve_env, run_improve

from improve_dsl.forkserver import ForkServer
from improve_dsl.resident import ResidentForkServer
from improve_dsl.run import RunResult, read_metrics, run_script

REPO = Path(__file__).resolve().parent.parent

# A stand-in for a compiled script. FAKE_MODE picks how it ends.
FAKE = textwrap.dedent(
    """
    import argparse, json, os, signal, sys, time

    parser = argparse.ArgumentParser()
    parser.add_argument("--split", default="val")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    mode = os.environ.get("FAKE_MODE", "ok")
    if os.environ.get("FAKE_PIDFILE"):
        with open(os.environ["FAKE_PIDFILE"], "w") as f:
            f.write(str(os.getpid()))

    def emit(**event):
        print(json.dumps(event), flush=True)

    key = f"{args.split}_accuracy"
    emit(event="start", epochs=args.epochs, train_size=90, eval_size=10, split=args.split,
         device=args.device, params=1234, seed=args.seed, batch_size=args.batch_size)
    print("a line that is not JSON", flush=True)
    print("warming up", file=sys.stderr, flush=True)
    history = []
    for epoch in range(1, args.epochs + 1):
        if mode == "nan" and epoch == 2:
            emit(event="result", status="failed", reason="nan_loss",
                 message="the training loss became NaN at epoch 2")
            sys.exit(1)
        if mode == "oom":
            emit(event="result", status="failed", reason="out_of_memory",
                 message="CUDA out of memory with batch size 512")
            sys.exit(1)
        if mode == "data":
            emit(event="result", status="failed", reason="data_missing",
                 message="Fashion-MNIST not found in /nowhere")
            sys.exit(1)
        if mode == "crash" and epoch == 2:
            print("Traceback (most recent call last):", file=sys.stderr, flush=True)
            print("RuntimeError: something broke", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "slow":
            time.sleep(30)
        event = dict(event="epoch", epoch=epoch, epochs=args.epochs, train_loss=1.0 / epoch,
                     val_loss=1.0 / epoch, lr=0.1, seconds=0.01 * epoch)
        event[key] = 0.5 + 0.1 * epoch
        history.append(event)
        emit(**event)
    result = dict(event="result", status="ok", split=args.split, metric="accuracy",
                  epochs_run=args.epochs, seconds=0.03, images_per_second=1000.0)
    result[key] = history[-1][key]
    if args.out:
        with open(os.path.join(args.out, "metrics.json"), "w") as f:
            json.dump(dict(result, history=history, seed=args.seed), f)
    emit(**result)
    """
)


@pytest.fixture()
def fake(tmp_path: Path) -> Path:
    script = tmp_path / "train.py"
    script.write_text(FAKE)
    return script


@pytest.fixture(scope="module")
def fork_server() -> Iterator[ForkServer]:
    server = ForkServer(preload=())
    yield server
    server.close()


Runner = Callable[..., RunResult]


@pytest.fixture(scope="module")
def resident_server() -> Iterator[ResidentForkServer]:
    """The resident server `improve run` uses (the session's own runtime folder)."""
    server = ResidentForkServer(preload=())
    yield server
    server.close()


@pytest.fixture(params=["subprocess", "fork server", "resident fork server"])
def run(
    request: pytest.FixtureRequest,
    fork_server: ForkServer,
    resident_server: ResidentForkServer,
) -> Runner:
    """``run_script`` starting the script every way: every ending must look the same."""
    if request.param == "subprocess":
        return run_script
    if request.param == "fork server":
        return functools.partial(run_script, fork_server=fork_server)
    return functools.partial(run_script, fork_server=resident_server)


def _env(mode: str, **extra: str) -> dict[str, str]:
    return {"FAKE_MODE": mode, **extra}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_finished_run_reports_metric_history_and_log(
    run: Runner, fake: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    seen: list[dict[str, Any]] = []

    def on_event(event: dict[str, Any]) -> bool:
        seen.append(event)
        return True

    result = run(
        fake, out, seed=7, batch_size=32, threads=1, on_event=on_event, extra_env=_env("ok")
    )
    assert result.status == "ok" and result.ok
    assert result.metric == pytest.approx(0.8)
    assert result.metric_name == "val_accuracy"
    assert [e["epoch"] for e in result.history] == [1, 2, 3]
    assert result.reason is None
    assert result.seconds > 0
    # Every event reached the callback, in order; the non-JSON line did not.
    assert [e["event"] for e in seen] == ["start", "epoch", "epoch", "epoch", "result"]
    # The flags travelled to the script.
    assert result.start is not None
    assert result.start["seed"] == 7 and result.start["batch_size"] == 32
    # The log keeps stdout (including non-JSON lines) and stderr.
    log = result.log_path.read_text()
    assert result.log_path == out / "log"
    assert "a line that is not JSON" in log and "warming up" in log
    assert '"event": "result"' in log
    metrics = read_metrics(out)
    assert metrics["val_accuracy"] == pytest.approx(0.8) and len(metrics["history"]) == 3


def test_test_split_names_the_metric_after_the_split(
    run: Runner, fake: Path, tmp_path: Path
) -> None:
    result = run(fake, tmp_path / "out", split="test", extra_env=_env("ok"))
    assert result.status == "ok"
    assert result.metric_name == "test_accuracy"
    assert result.metric == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("mode", "status", "words"),
    [
        ("nan", "nan", "NaN at epoch 2"),
        ("oom", "oom", "out of memory"),
        ("data", "failed", "Fashion-MNIST not found"),
    ],
)
def test_reported_failures_map_to_statuses(
    run: Runner, fake: Path, tmp_path: Path, mode: str, status: str, words: str
) -> None:
    result = run(fake, tmp_path / "out", extra_env=_env(mode))
    assert result.status == status
    assert result.metric is None
    assert result.reason is not None and words in result.reason


def test_a_crash_without_a_result_names_the_exit_and_the_last_error_lines(
    run: Runner, fake: Path, tmp_path: Path
) -> None:
    result = run(fake, tmp_path / "out", extra_env=_env("crash"))
    assert result.status == "failed"
    assert result.reason is not None
    assert result.reason.startswith("the training process exited with code -9")
    assert "SIGKILL" in result.reason
    assert "RuntimeError: something broke" in result.reason
    assert len(result.history) == 1  # the epoch before the crash is kept


def test_a_script_that_does_not_start_is_a_failure(run: Runner, tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text("import nonexistent_module_xyz\n")
    result = run(script, tmp_path / "out")
    assert result.status == "failed"
    assert result.reason is not None
    assert "exited with code 1" in result.reason
    assert "nonexistent_module_xyz" in result.reason


def test_timeout_kills_the_process(run: Runner, fake: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    began = time.monotonic()
    result = run(
        fake, tmp_path / "out", timeout=2.0, extra_env=_env("slow", FAKE_PIDFILE=str(pidfile))
    )
    assert time.monotonic() - began < 15
    assert result.status == "timeout"
    assert result.reason is not None and "2 s" in result.reason
    assert not _alive(int(pidfile.read_text()))
    assert "time limit" in result.log_path.read_text()


def test_on_event_false_prunes_the_run(run: Runner, fake: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    def after_first_epoch(event: dict[str, Any]) -> bool:
        return event.get("event") != "epoch"

    result = run(
        fake,
        tmp_path / "out",
        on_event=after_first_epoch,
        extra_env=_env("ok", FAKE_PIDFILE=str(pidfile)),
    )
    assert result.status == "pruned"
    assert result.metric is None
    assert [e["epoch"] for e in result.history] == [1]
    assert result.reason == "stopped early by the caller after epoch 1"
    assert not _alive(int(pidfile.read_text()))


def test_keyboard_interrupt_stops_the_child_and_propagates(
    run: Runner, fake: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"

    def interrupt(event: dict[str, Any]) -> bool:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(
            fake,
            tmp_path / "out",
            on_event=interrupt,
            extra_env=_env("slow", FAKE_PIDFILE=str(pidfile)),
        )
    assert not _alive(int(pidfile.read_text()))
    assert "interrupted" in (tmp_path / "out" / "log").read_text()


def test_a_real_sigint_to_the_caller_ends_the_training_process(fake: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from improve_dsl.run import run_script
        try:
            run_script(Path({str(fake)!r}), Path({str(tmp_path / "out")!r}))
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    )
    env = dict(os.environ, FAKE_MODE="slow", FAKE_PIDFILE=str(pidfile), PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(driver)], env=env)
    deadline = time.monotonic() + 20
    while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pidfile.read_text())
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 130
    assert not _alive(child)


def test_read_metrics_explains_a_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"metrics\.json does not exist"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not hold a JSON object"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "ok"}))
    assert read_metrics(tmp_path) == {"status": "ok"}


# ---------------------------------------------------------------- the verbs, on real specs

DIGITS = """\
pipeline digits {
  metric = accuracy
  seed = 0
}

data {
  source = digits()
  validation = holdout(fraction = 0.2)
  batch_size = 64
}

augment {
  ops = []
}

model {
  arch = mlp(width = 32, depth = 1)
}

train {
  epochs = 4
  optimizer = sgd(lr = 0.05, momentum = 0.9, nesterov = true, weight_decay = 0.0)
  schedule = constant()
  loss = cross_entropy()
}

eval {
  tta = []
}
"""


def _threads_env() -> dict[str, str]:
    return improve_env(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def test_improve_run_trains_and_writes_the_run_directory(
    tmp_path: Path, improve: ImproveCall
) -> None:
    spec = tmp_path / "digits.imp"
    spec.write_text(DIGITS)
    args = ("run", "digits.imp", "--device", "cpu", "--seed", "3")
    proc = improve(*args, cwd=tmp_path, OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "digits.improve" / "runs").iterdir()  # the default place
    for name in ("train.py", "spec.imp", "log", "metrics.json", "model.pt"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "spec.imp").read_text() == DIGITS
    metrics = read_metrics(run_dir)
    assert metrics["seed"] == 3 and metrics["split"] == "val"
    # One summary line on stdout, with the score metrics.json holds.
    (summary,) = proc.stdout.splitlines()
    assert summary.startswith(f"val_accuracy {metrics['val_accuracy']:.4f} (after 4 epochs")
    assert str(run_dir.relative_to(tmp_path)) in summary
    # Not a terminal: one progress line per epoch on stderr.
    assert "epoch 4/4" in proc.stderr and "1150 training images" in proc.stderr


@pytest.mark.slow
def test_improve_evaluate_scores_the_test_split_once_and_says_so(
    tmp_path: Path, improve: ImproveCall
) -> None:
    (tmp_path / "digits.imp").write_text(DIGITS)
    args = ("evaluate", "digits.imp", "--out", "final", "--device", "cpu")
    proc = improve(*args, cwd=tmp_path, OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr
    metrics = read_metrics(tmp_path / "final")
    assert metrics["split"] == "test" and "test_accuracy" in metrics
    assert proc.stdout.startswith(f"test_accuracy {metrics['test_accuracy']:.4f}")
    assert "once-only test score" in proc.stdout
    assert "validation share held out and unused for fitting" in proc.stdout
    assert "untouched test split" in proc.stdout


def test_a_spec_with_errors_exits_2_and_trains_nothing(
    tmp_path: Path, improve: ImproveCall
) -> None:
    (tmp_path / "bad.imp").write_text(DIGITS.replace("epochs = 4", "epochz = 4"))
    proc = improve("run", "bad.imp", cwd=tmp_path)
    assert proc.returncode == 2
    assert "bad.imp:" in proc.stderr and "epochz" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "bad.improve").exists()


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--device", "gpu"], "'gpu' is not auto, cpu, cuda or cuda:N"),
        (["--timeout", "-1"], "must be above 0"),
        (["--seed", "x"], "'x' is not a whole number"),
    ],
)
def test_bad_flags_exit_2(
    tmp_path: Path, flags: list[str], words: str, improve: ImproveCall
) -> None:
    (tmp_path / "digits.imp").write_text(DIGITS)
    proc = improve("run", "digits.imp", *flags, cwd=tmp_path)
    assert proc.returncode == 2 and words in proc.stderr


def test_a_failed_run_exits_1_with_a_one_line_reason(tmp_path: Path) -> None:
    # 1000 epochs take 7 s even as a fork of a warm resident server.
    (tmp_path / "digits.imp").write_text(DIGITS.replace("epochs = 4", "epochs = 1000"))
    args = ("run", "digits.imp", "--out", "r", "--timeout", "2")
    proc = run_improve(*args, cwd=tmp_path, env=_threads_env())  # the real program: exit 1
    assert proc.returncode == 1
    assert "improve: error: the run failed (timeout): stopped after the time limit of 2 s" in (
        proc.stderr
    )
    assert f"see {Path('r') / 'log'}" in proc.stderr
    assert proc.stdout == ""


def test_ctrl_c_stops_improve_run_cleanly(tmp_path: Path) -> None:
    (tmp_path / "digits.imp").write_text(DIGITS.replace("epochs = 4", "epochs = 500"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "improve_dsl.cli",
            "run",
            "digits.imp",
            "--out",
            str(tmp_path / "r"),
            "--device",
            "cpu",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_threads_env(),
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until training is under way
        if line.startswith("epoch 1/"):
            break
    # A subprocess names the script on its command line; a fork of the resident server
    # has the server's, but works in the command's folder.
    script = str(tmp_path / "r" / "train.py")
    children = [
        p
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
        and p.name != str(proc.pid)
        and (script.encode() in _cmdline(p) or _cwd(p) == tmp_path)
    ]
    assert children, "the training process should be running"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
    for child in children:
        assert not _alive(int(child.name))


def _cwd(proc_dir: Path) -> Path | None:
    try:
        return (proc_dir / "cwd").resolve(strict=True)
    except OSError:
        return None


def _cmdline(proc_dir: Path) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""
