"""A fork server that outlives the command that started it, so the next command skips
``import torch``.

The first ``improve run`` (or ``evaluate``) starts it detached; it listens on a Unix socket
in a private (0700) folder of the user's, ``$XDG_RUNTIME_DIR/improve`` (else
``~/.cache/improve/run``), and forks each run exactly as ``forkserver.ForkServer`` does (same
protocol, same child). Later commands connect and get their run forked from a process that
imported torch minutes ago. It ends after ``IMPROVE_FORK_SERVER_IDLE`` seconds (default 600)
with no command connected and no run of its own.

The socket's name is a hash of what the server's imports depend on: this interpreter, the
package's version and the servers' code, the preload list and where those libraries live,
and the environment variables torch reads at import (``OMP_NUM_THREADS``,
``TORCHINDUCTOR_CACHE_DIR``, ...). A command with another of any of these uses another server.
The server greets each connection with that hash and its pid; a socket nobody answers, a
file that is not a socket, or a server with another hash is never used: the run starts the
ordinary way and its log says why. Startup races are settled by a lock file the server holds
for its whole life (its pid is written in it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from . import __version__, forkserver
from .forkserver import PRELOAD, ForkedProcess, ForkServerError, load_message
from .paths import compile_cache_env, user_cache_dir

# Seconds without a connection or a run after which the server exits (IMPROVE_FORK_SERVER_IDLE).
DEFAULT_IDLE = 600.0
# How long a command waits for a server it started to listen (its imports come after).
_LISTEN_TIMEOUT = 10.0
_MAX_SOCKET_PATH = 107
# How long it tries to connect after losing the race to start one (the winner is binding).
_RACE_WAIT = 2.0
# Environment variables read while the server imports (torch, its BLAS, CUDA's libraries,
# Python's own search path): a different value needs a different server.
_IMPORT_ENV_PREFIXES = (
    "CUDA_",
    "OMP_",
    "MKL_",
    "KMP_",
    "OPENBLAS_",
    "GOTO",
    "TORCH",
    "PYTORCH_",
    "TRITON_",
    "NVIDIA_",
    "NCCL_",
    "LD_",
    "PYTHON",
)


def idle_seconds() -> float:
    """``IMPROVE_FORK_SERVER_IDLE`` (seconds), else ten minutes."""
    try:
        value = float(os.environ.get("IMPROVE_FORK_SERVER_IDLE", ""))
    except ValueError:
        return DEFAULT_IDLE
    return value if value > 0 else DEFAULT_IDLE


def runtime_dir() -> Path:
    """The private folder of the servers' sockets and lock files (made if need be).

    Raises ``OSError`` when there is none, or when it is not ours alone.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        folder = Path(runtime) / "improve"
    else:
        cache = user_cache_dir()
        if cache is None:
            raise OSError("there is no user cache folder for the fork server's socket")
        folder = cache / "run"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid():
        raise OSError(f"{folder} belongs to another user")
    if info.st_mode & 0o077:
        os.chmod(folder, 0o700)
    return folder


def server_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: ``base`` (default ours) with the compile caches set."""
    env = dict(os.environ if base is None else base)
    for name, value in compile_cache_env().items():
        env.setdefault(name, value)
    return env


def server_key(preload: Sequence[str], env: Mapping[str, str]) -> str:
    """A hash of everything the server's imports depend on (see the module's doc)."""
    code = hashlib.sha256()
    for module in (forkserver.__file__, __file__):
        code.update(Path(module).read_bytes())
    libraries = {}
    for name in sorted({item.split(".")[0] for item in preload}):
        with contextlib.suppress(Exception):  # a library that is not there has no version
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.origin:
                libraries[name] = [spec.origin, os.stat(spec.origin).st_mtime_ns]
    facts = {
        # `python` and `python3` of one virtual environment are the same interpreter
        "python": [os.path.dirname(sys.executable), os.path.realpath(sys.executable)],
        "version": __version__,
        "code": code.hexdigest(),
        "preload": list(preload),
        "libraries": libraries,
        "env": {k: v for k, v in sorted(env.items()) if k.startswith(_IMPORT_ENV_PREFIXES)},
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def socket_path(folder: Path, key: str) -> Path:
    """Short on purpose: a Unix socket's path may not exceed 107 bytes (``OSError`` if so)."""
    path = folder / f"fs-{key[:16]}"
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise OSError(f"the socket's path {path} is longer than {_MAX_SOCKET_PATH} bytes")
    return path


class ResidentForkServer:
    """A connection to the resident server, started when there is none.

    Never raises when made: what went wrong is kept and raised as ``ForkServerError`` by
    :meth:`spawn`, whose caller then starts the run the ordinary way and logs why. Made early
    (before compiling), a server it starts imports while the command compiles.
    """

    def __init__(self, preload: Sequence[str] = PRELOAD) -> None:
        self.name = "the resident fork server"
        self.server_pid: int | None = None
        self._lock = threading.Lock()
        self._greeting = threading.Lock()
        self._sock: socket.socket | None = None
        self._greeted = False
        self._error: str | None = None
        env = server_env()
        self._key = server_key(preload, env)
        try:
            self._path = socket_path(runtime_dir(), self._key)
        except OSError as exc:
            self._error = f"no resident fork server: {exc.strerror or exc}"
            return
        try:
            self._sock = _connect(self._path)
        except OSError:
            try:
                self._sock = self._start(preload, env)
            except OSError as exc:
                self._error = f"cannot start the resident fork server: {exc.strerror or exc}"

    def _start(self, preload: Sequence[str], env: dict[str, str]) -> socket.socket:
        command = [sys.executable, "-m", __name__, str(self._path), self._key, *preload]
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # detached: not ended by this terminal's Ctrl-C
            cwd=forkserver.PACKAGE_PARENT,
        )
        try:
            # It forks the server and exits once that listens: 0, or 1 when it could not
            # (or another server won the race for the lock, and listens instead).
            process.wait(timeout=_LISTEN_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise OSError(f"it did not listen within {_LISTEN_TIMEOUT:g} s") from None
        deadline = time.monotonic() + (0.0 if process.returncode == 0 else _RACE_WAIT)
        while True:
            try:
                return _connect(self._path)
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise OSError(f"cannot connect to {self._path}: {exc}") from None
                time.sleep(0.01)

    def spawn(
        self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None
    ) -> ForkedProcess:
        """Run ``argv`` as a fork of the resident server."""
        if self._sock is None:
            raise ForkServerError(self._error or "the resident fork server is not connected")
        with self._greeting:  # several threads may spawn at once (``--parallel``)
            if not self._greeted:
                self._greet(self._sock)
            sock = self._sock
        if sock is None:
            raise ForkServerError("the resident fork server is not connected")
        return forkserver.request_fork(sock, self._lock, argv, env=env, cwd=cwd)

    def _greet(self, sock: socket.socket) -> None:
        """Wait for the server's greeting (after its imports) and check it is the right one."""
        sock.settimeout(forkserver.START_TIMEOUT)
        try:
            data = sock.recv(4096)
        except OSError as exc:
            self.close()
            raise ForkServerError(f"the resident fork server did not answer: {exc}") from None
        finally:
            if self._sock is not None:
                sock.settimeout(None)
        if not data:
            self.close()
            raise ForkServerError("the resident fork server has stopped")
        hello = load_message(data)
        pid = hello.get("pid")
        if hello.get("key") != self._key or not isinstance(pid, int):
            self.close()
            raise ForkServerError(f"{self._path} is not a fork server of this installation")
        self._greeted = True
        self.server_pid = pid
        self.name = f"the resident fork server (pid {pid})"

    def close(self) -> None:
        """Leave the server running for the next command; only this connection ends."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def running_servers(folder: Path) -> list[int]:
    """The pids of the servers alive in ``folder`` (each holds its lock file)."""
    pids = []
    for lock_path in sorted(folder.glob("fs-*.lock")):
        with contextlib.suppress(OSError, ValueError), open(lock_path, encoding="utf-8") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # held: its server lives
                pids.append(int(lock.read().strip()))
    return pids


def stop_servers(folder: Path) -> list[int]:
    """End the servers alive in ``folder`` (SIGTERM); their pids."""
    pids = running_servers(folder)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    return pids


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


# ---------------------------------------------------------------------------- the server


def serve(path: Path, key: str, preload: Sequence[str], idle: float, listening: int) -> None:
    """Hold the lock, listen at ``path`` (then write to and close ``listening``), import
    ``preload``, fork runs until idle."""
    lock = open(path.with_name(path.name + ".lock"), "a+", encoding="utf-8")  # noqa: SIM115
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # another server holds it: that one serves
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_signal)  # ends its runs and removes its socket
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket (its server is gone: we hold the lock) or garbage
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(path))
    listener.listen(16)
    inode = path.stat().st_ino
    os.write(listening, b"1")
    os.close(listening)
    forkserver.preload_modules(preload)
    hello = json.dumps({"key": key, "pid": os.getpid()}).encode()
    connections: dict[socket.socket, set[int]] = {}  # a connection → the runs it started
    children: dict[int, socket.socket] = {}
    busy = time.monotonic()
    try:
        while True:
            if children:
                wait: float | None = forkserver.REAP_INTERVAL
            elif connections:
                wait = None
            else:
                wait = max(0.0, busy + idle - time.monotonic())
            ready, _, _ = select.select([listener, *connections], [], [], wait)
            for sock in ready:
                if sock is listener:
                    with contextlib.suppress(OSError):
                        conn, _ = listener.accept()
                        conn.send(hello)
                        connections[conn] = set()
                    continue
                before = set(children)
                others: list[socket.socket | IO[str]] = [listener, lock, *connections]
                if forkserver.fork_next(sock, children, others):
                    connections[sock] |= set(children) - before
                else:  # the command has gone: so do the runs it left
                    for pid in connections.pop(sock) & set(children):
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(pid, signal.SIGKILL)
                    sock.close()
            forkserver.reap(children)
            if children or connections:
                busy = time.monotonic()
            elif time.monotonic() - busy >= idle:
                return
    finally:
        with contextlib.suppress(OSError):
            if path.stat().st_ino == inode:
                path.unlink()
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        lock.close()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m improve_dsl.resident PATH KEY MODULE...``: fork; the child serves, the
    parent exits once it listens (0) or could not (1), so the command that started us knows
    at once, and the server is nobody's child but init's."""
    args = list(sys.argv[1:] if argv is None else argv)
    ready, told = os.pipe()
    if os.fork() > 0:
        os.close(told)
        os._exit(0 if os.read(ready, 1) else 1)
    os.close(ready)
    serve(Path(args[0]), args[1], args[2:], idle_seconds(), told)


if __name__ == "__main__":
    main()
