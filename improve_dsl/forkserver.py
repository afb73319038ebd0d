"""Start training scripts as forks of a process that has already imported torch.

A compiled script spends about 3.5 s of a 2-core CPU before its first epoch, most of it in
``import torch``; during refinement every candidate pays that again. The fork server pays it
once: a helper process imports the libraries the scripts use, then forks one child per run,
and the child executes the script with ``runpy`` as ``python script.py ARGS`` would:
``__name__ == "__main__"``, the requested ``sys.argv``, environment and working directory,
``sys.path[0]`` the script's folder, stdin from /dev/null, stdout and stderr on the caller's
pipes, a session of its own. The script stays standalone (nothing of this package reaches
it; the server only saves its imports) and every run is a fresh fork, so runs share nothing.

Linux only. The server itself never touches CUDA (it only imports), so a forked child
initialises the GPU as a fresh process would; on an H200 a 2-iteration refinement ran every
run fine this way and 1.45x faster. ``IMPROVE_FORK_SERVER=0`` turns it off. When the server
cannot start a run, the caller starts the script the ordinary way.

Two kinds of server speak the same protocol: :class:`ForkServer`, private to one caller and
ended with it (the local executor's), and the resident one of ``resident.py``, which outlives
the command that started it so that the next ``improve run`` finds torch imported already.

The protocol: the caller sends a JSON request (argv, env, cwd) with three file descriptors
over a Unix socket pair — a socket for this run's replies, and the write ends of its stdout
and stderr pipes. The server answers on the run's socket with ``{"pid": N}`` once it has
forked, and ``{"returncode": N}`` once the child has ended (``-N`` for a signal, as
``subprocess`` reports it). When the caller goes away the server ends its children and exits.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import io
import json
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

# What the compiled scripts import; ``torch._dynamo`` is pulled in by torch's optimizers on
# their first step and costs a second of its own.
PRELOAD = (
    "numpy",
    "torch",
    "torch.nn.functional",
    "torch._dynamo",
    "torchvision",
    "sklearn.datasets",
    "PIL.Image",
)
# How long a caller waits for the server to fork its run (the first waits for the imports).
START_TIMEOUT = 120.0
# How often the server looks for ended children while some are running.
REAP_INTERVAL = 0.02
_MAX_MESSAGE = 1 << 20
# The folder holding this package: the servers' working folder (see ``ForkServer``).
PACKAGE_PARENT = Path(__file__).resolve().parent.parent


class ForkServerError(RuntimeError):
    """The server could not start a run; the caller should start it the ordinary way."""


def wanted() -> bool:
    """Whether this platform and the user's environment allow a fork server (any value of
    ``IMPROVE_FORK_SERVER`` but ``0``; ``always``, once needed for GPUs, still means on)."""
    return sys.platform == "linux" and os.environ.get("IMPROVE_FORK_SERVER", "1") != "0"


class ForkServer:
    """A helper process that imports ``preload`` once and forks a child per run.

    The imports start at once, in the background; the first ``spawn`` waits for them.
    """

    def __init__(
        self, preload: Sequence[str] = PRELOAD, *, env: Mapping[str, str] | None = None
    ) -> None:
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._lock = threading.Lock()
        self._used = False
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno()), *preload],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=None if env is None else dict(env),
                start_new_session=True,  # the terminal's Ctrl-C is ours to handle
                # ``-m`` puts the working folder first on sys.path: the folder holding this
                # package, not the user's, whose own modules could shadow torch's imports.
                cwd=PACKAGE_PARENT,
            )
        self.name = f"the fork server (pid {self._process.pid})"

    def spawn(
        self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None
    ) -> ForkedProcess:
        """Run ``argv`` (``[python, script, args...]``) as a fork of the server."""
        with self._lock:
            self._used = True
        return request_fork(self._control, self._lock, argv, env=env, cwd=cwd)

    def close(self) -> None:
        """Stop the server; runs it still has are ended.

        A server never asked for a run (a refinement answered from its cache) or still
        importing has no runs and may not read its socket yet: it is killed, not waited for.
        """
        self._control.close()
        try:
            self._process.wait(timeout=1.0 if self._used else 0.0)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def request_fork(
    control: socket.socket,
    lock: threading.Lock,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    timeout: float = START_TIMEOUT,
) -> ForkedProcess:
    """Ask the server at the other end of ``control`` to run ``argv`` as a fork of itself."""
    request = {"argv": list(argv[1:]), "env": dict(env), "cwd": str(cwd or Path.cwd())}
    message = json.dumps(request).encode()
    if len(message) > _MAX_MESSAGE:
        raise ForkServerError("the request is too large for the fork server")
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        with lock:
            socket.send_fds(control, [message], [theirs.fileno(), out_write, err_write])
        mine.settimeout(timeout)
        reply = load_message(mine.recv(_MAX_MESSAGE))
        pid = reply.get("pid")
        if not isinstance(pid, int):
            raise ForkServerError(str(reply.get("error") or "the fork server has stopped"))
    except (OSError, ForkServerError) as exc:
        mine.close()
        os.close(out_read)
        os.close(err_read)
        if isinstance(exc, ForkServerError):
            raise
        raise ForkServerError(f"the fork server did not answer: {exc}") from None
    finally:
        theirs.close()
        os.close(out_write)
        os.close(err_write)
    return ForkedProcess(list(argv), pid, mine, open(out_read, "rb"), open(err_read, "rb"))


class ForkedProcess:
    """A run started by the fork server, with what ``run.py`` uses of ``subprocess.Popen``."""

    def __init__(
        self,
        args: list[str],
        pid: int,
        channel: socket.socket,
        stdout: IO[bytes],
        stderr: IO[bytes],
    ) -> None:
        self.args = args
        self.pid = pid
        self.stdout: IO[bytes] | None = stdout
        self.stderr: IO[bytes] | None = stderr
        self.returncode: int | None = None
        self._channel = channel

    def poll(self) -> int | None:
        if self.returncode is None:
            self._receive(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._receive(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return self.returncode

    def _receive(self, timeout: float | None) -> None:
        self._channel.settimeout(timeout)
        try:
            data = self._channel.recv(_MAX_MESSAGE)
        except (BlockingIOError, TimeoutError):
            return
        except OSError:
            data = b""
        returncode = load_message(data).get("returncode")
        if isinstance(returncode, int):
            self.returncode = returncode
        else:  # the server is gone, and with it the child's exit status: end the child
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self.returncode = -signal.SIGKILL
        self._channel.close()


def load_message(data: bytes) -> dict[str, Any]:
    """A JSON object sent over a socket, or {} for anything else (an ended peer, garbage)."""
    try:
        value = json.loads(data) if data else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------------------- the server


def preload_modules(preload: Sequence[str]) -> None:
    """Import what the scripts will import (a missing library is the script's to report)."""
    for name in preload:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def serve(control: socket.socket, preload: Sequence[str]) -> None:
    """Import ``preload``, then fork a child for each request until the caller goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    preload_modules(preload)
    children: dict[int, socket.socket] = {}
    try:
        while True:
            ready, _, _ = select.select([control], [], [], REAP_INTERVAL if children else None)
            if ready and not fork_next(control, children):
                return
            reap(children)
    finally:
        for pid, channel in children.items():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(pid, 0)
                send(channel, {"returncode": os.waitstatus_to_exitcode(status)})
            channel.close()


def fork_next(
    control: socket.socket,
    children: dict[int, socket.socket],
    others: Sequence[socket.socket | IO[str]] = (),
) -> bool:
    """Start the run the caller asks for; False once the caller has gone. ``others`` are
    more of the server's sockets, closed in the child."""
    try:
        message, fds, _flags, _address = socket.recv_fds(control, _MAX_MESSAGE, 3)
    except OSError:
        return False
    if not message:
        return False
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        return True
    channel = socket.socket(fileno=fds[0])
    stdout, stderr = fds[1], fds[2]
    try:
        pid = os.fork()
    except OSError as exc:
        send(channel, {"error": f"cannot fork: {exc.strerror or exc}"})
        channel.close()
        pid = -1
    if pid == 0:
        _child(
            load_message(message),
            stdout,
            stderr,
            close=[control, channel, *children.values(), *others],
        )
    os.close(stdout)
    os.close(stderr)
    if pid > 0:
        send(channel, {"pid": pid})
        children[pid] = channel
    return True


def reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        channel = children.pop(pid, None)
        if channel is not None:
            send(channel, {"returncode": os.waitstatus_to_exitcode(status)})
            channel.close()


def send(channel: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # a caller that has gone needs no answer
        channel.send(json.dumps(message).encode())


def _child(
    request: dict[str, Any], stdout: int, stderr: int, close: list[socket.socket | IO[str]]
) -> NoReturn:
    """In the forked child: become ``python script.py ARGS`` and never return."""
    code = 1
    try:
        os.setsid()
        for sock in close:  # the server's sockets are not the script's to hold
            sock.close()
        devnull = os.open(os.devnull, os.O_RDONLY)
        for fd, target in ((devnull, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
            os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = _text_stream(1, "strict")
        sys.stderr = _text_stream(2, "backslashreplace")
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in dict(request["env"]).items()})
        os.chdir(str(request["cwd"]))
        argv = [str(a) for a in request["argv"]]
        sys.argv = argv
        sys.path[0] = str(Path(argv[0]).resolve().parent)
        code = _execute(argv[0])
    except BaseException:  # the server's own set-up failed: say so where the caller reads
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _execute(script: str) -> int:
    """Run ``script`` as ``__main__``; its exit status, as the interpreter would give it."""
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = _exit_status(exc.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    return code


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _text_stream(fd: int, errors: str) -> io.TextIOWrapper:
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(raw, encoding="utf-8", errors=errors, line_buffering=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    control = socket.socket(fileno=int(args[0]))
    serve(control, args[1:])


if __name__ == "__main__":
    main()
