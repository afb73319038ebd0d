"""The fork server: a script started as a fork must behave as ``python script.py`` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from improve_dsl.compiler import compile_spec
from improve_dsl.executors import LocalExecutor, TrainJob
from improve_dsl.forkserver import ForkedProcess, ForkServer, ForkServerError
from improve_dsl.run import run_script

REPO = Path(__file__).resolve().parent.parent

# What a script can observe of how it was started.
INTROSPECT = textwrap.dedent(
    """
    import json, os, sys
    print(json.dumps({
        "name": __name__,
        "file": __file__,
        "argv": sys.argv,
        "path0": sys.path[0],
        "cwd": os.getcwd(),
        "env": os.environ.get("PROBE"),
        "stdin": sys.stdin.read(),
        "sid_is_pid": os.getsid(0) == os.getpid(),
        "json_marked": hasattr(json, "MARK"),
    }), flush=True)
    json.MARK = True  # must not leak into the next run
    print("to stderr", file=sys.stderr)
    """
)


@pytest.fixture(scope="module")
def server() -> Iterator[ForkServer]:
    server = ForkServer(preload=("json",))
    yield server
    server.close()


def _finish(process: ForkedProcess | subprocess.Popen[bytes]) -> tuple[int, str, str]:
    assert process.stdout is not None and process.stderr is not None
    out, err = process.stdout.read(), process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    return process.wait(timeout=30), out.decode(), err.decode()


def _popen(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def test_a_forked_run_sees_what_python_script_py_would_see(
    server: ForkServer, tmp_path: Path
) -> None:
    script = tmp_path / "scripts" / "probe.py"
    script.parent.mkdir()
    script.write_text(INTROSPECT)
    workdir = tmp_path / "work"
    workdir.mkdir()
    argv = [sys.executable, str(script), "--split", "val", "a b"]
    env = dict(os.environ, PROBE="here")
    seen = []
    for process in (
        _popen(argv, env, workdir),
        server.spawn(argv, env=env, cwd=workdir),
        server.spawn(argv, env=env, cwd=workdir),  # a second fork starts as clean as the first
    ):
        code, out, err = _finish(process)
        assert code == 0 and err == "to stderr\n"
        seen.append(json.loads(out))
    assert seen[0] == seen[1] == seen[2]
    assert seen[0]["name"] == "__main__" and seen[0]["argv"] == [
        str(script),
        "--split",
        "val",
        "a b",
    ]
    assert seen[0]["path0"] == str(script.parent) and seen[0]["cwd"] == str(workdir)
    assert seen[0]["env"] == "here" and seen[0]["sid_is_pid"] and not seen[0]["json_marked"]


@pytest.mark.parametrize(
    ("body", "stderr_words"),
    [
        ("import sys; sys.exit(3)", ""),
        ("import sys; sys.exit('a message')", "a message"),
        ("raise ValueError('broken')", "ValueError: broken"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", ""),
        ("import nonexistent_module_xyz", "No module named 'nonexistent_module_xyz'"),
    ],
)
def test_exit_statuses_are_those_of_the_interpreter(
    server: ForkServer, tmp_path: Path, body: str, stderr_words: str
) -> None:
    script = tmp_path / "end.py"
    script.write_text(body + "\n")
    argv = [sys.executable, str(script)]
    env = dict(os.environ)
    plain = _finish(_popen(argv, env, tmp_path))
    forked = _finish(server.spawn(argv, env=env, cwd=tmp_path))
    assert forked[0] == plain[0]
    assert stderr_words in forked[2] and stderr_words in plain[2]


def test_closing_the_server_ends_its_running_children(tmp_path: Path) -> None:
    server = ForkServer(preload=())
    script = tmp_path / "sleep.py"
    script.write_text("import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(60)\n")
    process = server.spawn([sys.executable, str(script)], env=dict(os.environ))
    assert process.stdout is not None
    pid = int(process.stdout.readline())
    assert process.poll() is None
    began = time.monotonic()
    server.close()
    assert process.wait(timeout=10) == -9
    assert time.monotonic() - began < 10
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


OK_SCRIPT = (
    'import json\nprint(json.dumps({"event": "result", "status": "ok", "metric": "accuracy",'
    ' "val_accuracy": 0.5}))\n'
)


def test_without_a_server_the_run_starts_the_ordinary_way_and_says_so(tmp_path: Path) -> None:
    server = ForkServer(preload=())
    server.close()
    script = tmp_path / "ok.py"
    script.write_text(OK_SCRIPT)
    with pytest.raises(ForkServerError):
        server.spawn([sys.executable, str(script)], env=dict(os.environ))
    result = run_script(script, tmp_path / "out", fork_server=server)
    assert result.status == "ok" and result.metric == 0.5
    assert "started without the fork server" in result.log_path.read_text()


@pytest.mark.slow
def test_a_compiled_script_trains_the_same_forked_or_not(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(compile_spec(REPO / "specs" / "digits.imp", check_shapes=False).script)
    server = ForkServer()
    try:
        forked = run_script(
            script, tmp_path / "forked", device="cpu", threads=1, seed=3, fork_server=server
        )
    finally:
        server.close()
    plain = run_script(script, tmp_path / "plain", device="cpu", threads=1, seed=3)
    assert forked.status == plain.status == "ok"
    assert forked.metric == plain.metric
    drop = ("seconds", "lr")
    assert [{k: v for k, v in e.items() if k not in drop} for e in forked.history] == [
        {k: v for k, v in e.items() if k not in drop} for e in plain.history
    ]
    assert (tmp_path / "forked" / "model.pt").exists()


PARENT = 'import json, os\nprint(json.dumps({"event": "start", "ppid": os.getppid()}))\n'


@pytest.mark.parametrize("setting", ["1", "0"])
def test_the_local_executor_forks_cpu_runs_unless_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    monkeypatch.setenv("IMPROVE_FORK_SERVER", setting)
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    with LocalExecutor(1, device="cpu") as executor:
        result = executor.wait(executor.submit(TrainJob(script, tmp_path / "out")))
    assert result.start is not None
    forked = result.start["ppid"] != os.getpid()
    assert forked == (setting == "1")


def test_a_server_still_importing_is_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "slow_to_import.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    server = ForkServer(preload=("slow_to_import",))
    time.sleep(0.5)
    began = time.monotonic()
    server.close()
    assert time.monotonic() - began < 3


def test_a_run_that_waited_for_the_imports_is_timed_from_its_fork(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loop compares the cost of runs: the first one (the baseline) must not be charged
    # for the server's imports, nor be cut by its time limit while it waits for them.
    (tmp_path / "slow_to_import.py").write_text("import time\ntime.sleep(2)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    script = tmp_path / "ok.py"
    script.write_text(OK_SCRIPT)
    server = ForkServer(preload=("slow_to_import",))
    try:
        began = time.monotonic()
        result = run_script(script, tmp_path / "out", fork_server=server, timeout=1.5)
        waited = time.monotonic() - began
    finally:
        server.close()
    assert result.status == "ok" and result.metric == 0.5
    assert "started without the fork server" not in result.log_path.read_text()
    assert waited >= 1.9 and result.seconds < 1.0, (waited, result.seconds)
