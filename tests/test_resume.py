"""Killing `improve refine` and resuming it: no finished attempt lost, none repeated.

The kill and Ctrl-C tests run real refines in real processes and are marked slow;
``test_loop.py`` checks interrupting and resuming in-process against a fake executor.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ImproveCall, improve_env, run_improve

from improve_dsl.journal import RunDir, read_journal

ROOT = Path(__file__).resolve().parent.parent
WEAK = (ROOT / "specs" / "digits.imp").read_text().replace("epochs = 4", "epochs = 3")


def _start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "improve_dsl.cli", "refine", *args],
        cwd=cwd,
        env=improve_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run_dir(spec: Path, deadline: float) -> RunDir:
    root = spec.parent / f"{spec.stem}.improve"
    while True:
        found = [p for p in root.iterdir() if (p / "state.json").exists()] if root.exists() else []
        if found:
            return RunDir(found[0])
        assert time.monotonic() < deadline, "the run directory never appeared"
        time.sleep(0.1)


def _wait_for_records(
    run: RunDir, count: int, process: subprocess.Popen[str], deadline: float
) -> None:
    while len(read_journal(run.journal_path)) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run recorded too few attempts in time"
        time.sleep(0.1)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _working_in(folder: Path, but: int) -> list[int]:
    """Processes (other than ``but``) whose working folder is ``folder``: the training runs
    of a refinement there, forks of the resident fork server rather than its children."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(but):
            with contextlib.suppress(OSError):
                if (entry / "cwd").resolve(strict=True) == folder.resolve():
                    found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _resume(run: RunDir, *extra: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_improve("refine", "--resume", str(run.path), *extra, cwd=cwd, timeout=900)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_loses_and_repeats_nothing(tmp_path: Path) -> None:
    spec = tmp_path / "weak.imp"
    spec.write_text(WEAK)
    process = _start(str(spec), "--iters", "2", "--no-test", "-q", cwd=tmp_path)
    deadline = time.monotonic() + 600
    run = _run_dir(spec, deadline)
    _wait_for_records(run, 2, process, deadline)  # the baseline and iteration 1 are done
    # Kill it outright, with its training run (which lives in a process group of its own).
    children = _children(process.pid)
    process.send_signal(signal.SIGKILL)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, signal.SIGKILL)
    process.communicate()
    before = read_journal(run.journal_path)
    assert len(before) >= 2 and [r.iteration for r in before] == list(range(len(before)))

    done = _resume(run, "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    after = read_journal(run.journal_path)
    # Every iteration exactly once, and the attempts finished before the kill kept as they were.
    assert [r.iteration for r in after] == [0, 1, 2]
    assert [r.to_json() for r in after[: len(before)]] == [r.to_json() for r in before]
    state = json.loads(run.state_path.read_text())
    assert state["status"] == "finished"
    # The spec holds the best spec, whatever moment the kill came at.
    assert spec.read_text() == run.best_spec.read_text()


@pytest.mark.slow
def test_ctrl_c_saves_the_state_and_says_how_to_resume(tmp_path: Path) -> None:
    spec = tmp_path / "weak.imp"
    spec.write_text(WEAK)
    process = _start(str(spec), "--iters", "3", "--no-test", cwd=tmp_path)
    deadline = time.monotonic() + 600
    run = _run_dir(spec, deadline)
    _wait_for_records(run, 1, process, deadline)
    while not (run.candidate_dir(1) / "log").exists():  # iteration 1 is training
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    # Its log is written just before the run starts: wait for the training process too.
    while not (children := _children(process.pid) + _working_in(tmp_path, but=process.pid)):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert f"improve refine --resume {run.path}" in stderr and "Traceback" not in stderr
    assert json.loads(run.state_path.read_text())["status"] == "interrupted"
    interrupted = len(read_journal(run.journal_path))
    # No training process is left behind.
    assert children and not any(_alive(child) for child in children)

    done = _resume(run, "--iters", str(interrupted), cwd=tmp_path)  # a shorter run, say
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    records = read_journal(run.journal_path)
    assert [r.iteration for r in records] == list(range(interrupted + 1))


def test_resume_of_a_folder_that_is_not_a_run_is_a_clear_error(
    tmp_path: Path, improve: ImproveCall
) -> None:
    done = improve("refine", "--resume", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert "not a run directory" in done.stderr and "Traceback" not in done.stderr
