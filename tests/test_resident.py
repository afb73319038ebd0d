"""The resident fork server: started by one command, used by the next, never in the way.

Real servers (real detached processes, preloading only ``json`` so they start in a blink),
in a runtime folder of each test's own, with a short idle time; every server a test starts
is ended by it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from improve_dsl import resident
from improve_dsl.executors import LocalExecutor
from improve_dsl.forkserver import ForkServer
from improve_dsl.resident import ResidentForkServer, running_servers, stop_servers
from improve_dsl.run import RunResult, Spawner, run_script

# A script that says who started it and what it sees of the compile caches.
PROBE = textwrap.dedent(
    """
    import json, os
    print(json.dumps({
        "event": "result", "status": "ok", "metric": "accuracy", "val_accuracy": 1.0,
        "parent": os.getppid(),
        "inductor": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
        "triton": os.environ.get("TRITON_CACHE_DIR"),
    }), flush=True)
    """
)


@pytest.fixture()
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A runtime folder of this test's (short: a socket's path has at most 107 bytes)."""
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"imp-rt-{os.getpid()}-{time.time_ns()}"
    folder.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("IMPROVE_FORK_SERVER_IDLE", "30")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    yield folder / "improve"
    stop_servers(folder / "improve")
    _wait_for(lambda: not running_servers(folder / "improve"))
    shutil.rmtree(folder, ignore_errors=True)


def _wait_for(condition: object, seconds: float = 15.0) -> bool:
    assert callable(condition)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def _probe(tmp_path: Path, name: str, server: Spawner | None) -> tuple[RunResult, str]:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    result = run_script(script, tmp_path / name, fork_server=server)
    assert result.ok, result.reason
    return result, result.log_path.read_text()


def test_a_second_command_is_forked_by_the_server_the_first_one_started(
    runtime: Path, tmp_path: Path
) -> None:
    first = ResidentForkServer(preload=("json",))
    result, log = _probe(tmp_path, "one", first)
    first.close()  # the first command ends; its server stays
    pid = first.server_pid
    assert pid is not None and running_servers(runtime) == [pid]
    assert f"started as a fork of the resident fork server (pid {pid})" in log
    assert result.result is not None and result.result["parent"] == pid

    second = ResidentForkServer(preload=("json",))
    result, log = _probe(tmp_path, "two", second)
    second.close()
    assert second.server_pid == pid
    assert result.result is not None and result.result["parent"] == pid
    assert running_servers(runtime) == [pid]


def test_another_preload_or_import_environment_gets_another_server(
    runtime: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = ResidentForkServer(preload=("json",))
    _probe(tmp_path, "one", one)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # read by torch as it imports
    two = ResidentForkServer(preload=("json",))
    _probe(tmp_path, "two", two)
    one.close()
    two.close()
    assert one.server_pid != two.server_pid
    assert sorted(running_servers(runtime)) == sorted([one.server_pid, two.server_pid])


def test_a_stale_socket_is_replaced_by_a_new_server(runtime: Path, tmp_path: Path) -> None:
    key = resident.server_key(("json",), resident.server_env())
    path = resident.socket_path(resident.runtime_dir(), key)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dead.bind(str(path))  # a socket file whose server has gone
    dead.close()
    server = ResidentForkServer(preload=("json",))
    result, log = _probe(tmp_path, "run", server)
    server.close()
    assert "started as a fork of the resident fork server" in log
    assert result.result is not None and result.result["parent"] == server.server_pid


def test_garbage_at_the_socket_is_replaced_too(runtime: Path, tmp_path: Path) -> None:
    key = resident.server_key(("json",), resident.server_env())
    resident.socket_path(resident.runtime_dir(), key).write_bytes(b"not a socket")
    server = ResidentForkServer(preload=("json",))
    _, log = _probe(tmp_path, "run", server)
    server.close()
    assert "started as a fork of the resident fork server" in log


def test_a_stranger_at_the_socket_means_an_ordinary_subprocess(
    runtime: Path, tmp_path: Path
) -> None:
    key = resident.server_key(("json",), resident.server_env())
    path = resident.socket_path(resident.runtime_dir(), key)
    stranger = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stranger.bind(str(path))
    stranger.listen(1)
    try:
        server = ResidentForkServer(preload=("json",))
        conn, _ = stranger.accept()
        conn.send(json.dumps({"key": "another version", "pid": 1}).encode())
        result, log = _probe(tmp_path, "run", server)
        server.close()
        conn.close()
    finally:
        stranger.close()
    assert "started without the fork server" in log
    assert "is not a fork server of this installation" in log
    assert result.result is not None and result.result["parent"] == os.getpid()


def test_the_server_exits_after_its_idle_time(
    runtime: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMPROVE_FORK_SERVER_IDLE", "0.5")
    server = ResidentForkServer(preload=("json",))
    _probe(tmp_path, "run", server)
    assert running_servers(runtime) == [server.server_pid]
    time.sleep(1.0)  # connected, so not idle: it waits for us however long we take
    assert running_servers(runtime) == [server.server_pid]
    server.close()
    assert _wait_for(lambda: not running_servers(runtime), 10.0)
    assert [p.name for p in runtime.iterdir() if p.suffix != ".lock"] == []  # no socket


def test_the_runs_see_the_shared_compile_caches_whichever_way_they_start(
    runtime: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache" / "improve"
    want = {"inductor": str(cache / "inductor"), "triton": str(cache / "triton")}
    private = ForkServer(preload=("json",))
    server = ResidentForkServer(preload=("json",))
    try:
        for name, how in (("plain", None), ("private", private), ("resident", server)):
            result, _ = _probe(tmp_path, name, how)
            assert result.result is not None
            assert {k: result.result[k] for k in want} == want, name
    finally:
        private.close()
        server.close()
    # The server imports before any request's environment arrives: its own has them too.
    environ = Path(f"/proc/{server.server_pid}/environ").read_bytes().split(b"\0")
    assert f"TORCHINDUCTOR_CACHE_DIR={want['inductor']}".encode() in environ


def test_a_cache_folder_the_user_set_is_kept(
    runtime: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    result, _ = _probe(tmp_path, "plain", None)
    assert result.result is not None
    assert result.result["inductor"] == str(tmp_path / "mine")
    assert result.result["triton"] == str(tmp_path / "cache" / "improve" / "triton")


@pytest.mark.parametrize(("setting", "expected"), [(None, True), ("0", False)])
def test_the_local_executor_forks_gpu_runs_by_default(
    runtime: Path, monkeypatch: pytest.MonkeyPatch, setting: str | None, expected: bool
) -> None:
    if setting is None:
        monkeypatch.delenv("IMPROVE_FORK_SERVER", raising=False)
    else:
        monkeypatch.setenv("IMPROVE_FORK_SERVER", setting)
    executor = LocalExecutor(1, device="cuda", gpus=["0"])
    try:
        assert (executor._fork_server is not None) == (expected and sys.platform == "linux")
    finally:
        executor.close()


def test_a_ray_task_gets_the_drivers_compile_caches_when_its_worker_has_none(
    runtime: Path, tmp_path: Path
) -> None:
    pytest.importorskip("ray")
    from improve_dsl.executors.ray_worker import run_on_worker

    passed = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "shared"), "OTHER": "not passed"}
    reply = run_on_worker("job", "probe.py", PROBE, {}, None, 2**20, None, passed)
    assert reply.result.ok and reply.result.result is not None
    assert reply.result.result["inductor"] == str(tmp_path / "shared")
    assert reply.result.result["triton"] == str(tmp_path / "cache" / "improve" / "triton")


@pytest.mark.slow  # a real server, importing torch
def test_refinement_runs_fork_from_the_resident_server_too(runtime: Path, tmp_path: Path) -> None:
    from improve_dsl.executors import TrainJob

    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    with LocalExecutor(1, device="cpu") as executor:
        result = executor.wait(executor.submit(TrainJob(script, tmp_path / "out")))
    assert result.ok and result.result is not None
    assert running_servers(runtime) == [result.result["parent"]]  # left for the next command
    assert "started as a fork of the resident fork server" in result.log_path.read_text()


COMPILES = textwrap.dedent(
    """
    import json
    import torch
    from torch._dynamo.utils import counters
    torch.compile(lambda x: torch.sin(x) * 2 + 1)(torch.ones(8))
    print(json.dumps({
        "event": "result", "status": "ok", "metric": "accuracy", "val_accuracy": 1.0,
        "hits": counters["inductor"]["fxgraph_cache_hit"],
    }), flush=True)
    """
)


@pytest.mark.slow  # a real torch.compile (seconds of C++ compiling) and a server importing torch
def test_a_second_runs_compile_is_a_hit_in_the_shared_cache(runtime: Path, tmp_path: Path) -> None:
    script = tmp_path / "compiles.py"
    script.write_text(COMPILES)
    first = run_script(script, tmp_path / "first")  # an ordinary subprocess
    server = ResidentForkServer()
    try:
        second = run_script(script, tmp_path / "second", fork_server=server)
    finally:
        server.close()
    assert first.result is not None and second.result is not None, second.reason
    assert (first.result["hits"], second.result["hits"]) == (0, 1)
    assert "resident fork server" in second.log_path.read_text()
    assert any((tmp_path / "cache" / "improve" / "inductor").iterdir())


def test_a_runtime_folder_too_deep_for_a_socket_means_an_ordinary_subprocess(
    runtime: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = runtime.parent / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    server = ResidentForkServer(preload=("json",))
    result, log = _probe(tmp_path, "run", server)
    assert "started without the fork server (no resident fork server: the socket's path" in log
    assert result.result is not None and result.result["parent"] == os.getpid()


def test_the_executor_falls_back_to_a_server_of_its_own(runtime: Path, tmp_path: Path) -> None:
    from improve_dsl.executors.local import ForkServers

    key = resident.server_key(("json",), resident.server_env())
    path = resident.socket_path(resident.runtime_dir(), key)
    stranger = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stranger.bind(str(path))
    stranger.listen(1)
    servers = ForkServers(preload=("json",))
    try:
        conn, _ = stranger.accept()
        conn.send(b"garbage")
        first, log = _probe(tmp_path, "one", servers)
        second, _ = _probe(tmp_path, "two", servers)
        conn.close()
    finally:
        servers.close()
        stranger.close()
    assert "started as a fork of the fork server (pid" in log
    assert first.result is not None and second.result is not None
    assert first.result["parent"] == second.result["parent"] != os.getpid()
