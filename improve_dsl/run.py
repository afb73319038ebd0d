"""Run a compiled training script in a subprocess and read its JSON-lines events.

The script prints one JSON object per line on stdout (``start``, one ``epoch`` per epoch, a
final ``result``); everything it prints, stdout and stderr, is also teed to ``out_dir/log``.
Scores are read from those events, never parsed out of prose. The run's outcome is one
:class:`RunResult`, whatever happened: a finished run, a failure the script reported, a
crash without a report, a timeout, or a stop asked for by the caller (pruning).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from .forkserver import ForkedProcess, ForkServerError
from .paths import compile_cache_env

RunStatus = Literal["ok", "failed", "timeout", "nan", "oom", "pruned", "interrupted"]
Event = dict[str, Any]

# Seconds a process group gets to exit after SIGTERM before it is killed outright.
_TERM_GRACE = 3.0
# How many trailing stderr lines a crash report carries.
_STDERR_TAIL = 8


class Spawner(Protocol):
    """A fork server: ``forkserver.ForkServer`` (one caller's) or ``resident``'s."""

    name: str

    def spawn(
        self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None
    ) -> ForkedProcess: ...


class TrainingProcess(Protocol):
    """What a run needs of its process: a ``subprocess.Popen`` or a fork server's child."""

    pid: int
    returncode: int | None

    @property
    def stdout(self) -> IO[bytes] | None: ...

    @property
    def stderr(self) -> IO[bytes] | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


@dataclass
class RunResult:
    """The outcome of one training run.

    ``metric`` is the final score (only when ``status == "ok"``); ``metric_name`` is its key in
    the events, e.g. ``val_accuracy``; ``history`` holds the ``epoch`` events in order;
    ``reason`` says in words why a run did not finish; ``seconds`` is the wall-clock time of
    the training process, from its start (not counting a wait for the fork server).
    ``start`` and ``result`` are the script's own ``start`` and ``result`` events when it
    printed them.
    """

    status: RunStatus
    metric: float | None
    metric_name: str
    history: list[Event]
    reason: str | None
    seconds: float
    log_path: Path
    start: Event | None = None
    result: Event | None = None
    returncode: int | None = None
    stderr_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def script_command(
    script: Path,
    out_dir: Path,
    *,
    split: str = "val",
    device: str = "auto",
    seed: int | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line that runs ``script`` with this interpreter."""
    command = [sys.executable, str(script), "--split", split, "--device", device]
    command += ["--out", str(out_dir)]
    if seed is not None:
        command += ["--seed", str(seed)]
    if batch_size is not None:
        command += ["--batch-size", str(batch_size)]
    if threads is not None:
        command += ["--threads", str(threads)]
    return command + list(extra_args)


def run_script(
    script: Path,
    out_dir: Path,
    *,
    split: str = "val",
    device: str = "auto",
    seed: int | None = None,
    timeout: float | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
    on_event: Callable[[Event], bool] | None = None,
    extra_env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    fork_server: Spawner | None = None,
    on_spawn: Callable[[int], None] | None = None,
) -> RunResult:
    """Train with ``script`` on ``split`` and return what happened.

    ``on_event`` sees every event as it arrives, in this thread; returning ``False`` stops the
    run (its process group is killed) and the status is ``"pruned"``. ``timeout`` (seconds)
    stops it with status ``"timeout"``. The log of stdout and stderr goes to
    ``out_dir/log``. Ctrl-C terminates the whole process group and re-raises
    ``KeyboardInterrupt``. With a ``fork_server`` the script runs as a fork of it (torch
    already imported), or as an ordinary subprocess when the server cannot start it.
    ``on_spawn`` is told the process id (also its process group) once the run has started.
    The run's environment is ours, plus ``extra_env``, plus the shared compile caches
    (``paths.compile_cache_env``) where the user has not set them.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "log"
    command = script_command(
        script,
        out_dir,
        split=split,
        device=device,
        seed=seed,
        batch_size=batch_size,
        threads=threads,
        extra_args=extra_args,
    )
    env = {**compile_cache_env(), **os.environ}
    env["PYTHONUNBUFFERED"] = "1"  # events must arrive as they happen, not at exit
    env.update(extra_env or {})

    with open(log_path, "w", encoding="utf-8", errors="replace") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        asked = time.monotonic()
        try:
            process = _start(command, env, fork_server, log)
        except OSError as exc:
            reason = f"cannot start the training process: {exc.strerror or exc}"
            log.write(reason + "\n")
            return RunResult(
                "failed",
                None,
                f"{split}_accuracy",
                [],
                reason,
                time.monotonic() - asked,
                log_path,
            )
        # The run's clock (its seconds and its time limit) starts with the process: a first
        # fork that waited for the server's imports costs no more than the rest.
        started = time.monotonic()
        if on_spawn is not None:
            on_spawn(process.pid)
        watcher = _Watcher(process, log, split, on_event, timeout, started)
        try:
            return watcher.watch()
        except BaseException:
            # Ctrl-C (or any error of ours): never leave a training process behind.
            _stop(process)
            log.write("improve: the run was interrupted\n")
            raise
        finally:
            watcher.close()


def _start(
    command: list[str], env: dict[str, str], fork_server: Spawner | None, log: IO[str]
) -> TrainingProcess:
    """The running script: a fork of ``fork_server`` where it can, else a subprocess."""
    if fork_server is not None:
        try:
            forked = fork_server.spawn(command, env=env)
        except ForkServerError as exc:
            log.write(f"improve: started without the fork server ({exc})\n")
        else:
            log.write(f"improve: started as a fork of {fork_server.name}\n")
            log.flush()
            return forked
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        # A group of its own, so a stop reaches DataLoader workers too, and the terminal's
        # Ctrl-C reaches only us: we decide how the child ends.
        start_new_session=True,
    )


class _Watcher:
    """Reads both pipes of one process, tees them to the log and interprets the events."""

    def __init__(
        self,
        process: TrainingProcess,
        log: IO[str],
        split: str,
        on_event: Callable[[Event], bool] | None,
        timeout: float | None,
        started: float,
    ) -> None:
        self.process = process
        self.log = log
        self.split = split
        self.on_event = on_event
        self.deadline = None if timeout is None else started + timeout
        self.timeout = timeout
        self.started = started
        self.lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self.stderr_tail: deque[str] = deque(maxlen=_STDERR_TAIL)
        self.history: list[Event] = []
        self.start_event: Event | None = None
        self.result_event: Event | None = None
        assert process.stdout is not None and process.stderr is not None
        self.readers = [
            threading.Thread(target=self._read, args=("out", process.stdout), daemon=True),
            threading.Thread(target=self._read, args=("err", process.stderr), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, stream: str, pipe: IO[bytes]) -> None:
        for raw in iter(pipe.readline, b""):
            self.lines.put((stream, raw.decode("utf-8", "replace").rstrip("\r\n")))
        self.lines.put((stream, None))

    def watch(self) -> RunResult:
        open_streams = 2
        stopped: RunStatus | None = None
        reason: str | None = None
        while open_streams:
            wait = None if self.deadline is None else self.deadline - time.monotonic()
            if wait is not None and wait <= 0:
                _stop(self.process)
                stopped = "timeout"
                reason = f"stopped after the time limit of {self.timeout:g} s"
                self.log.write(f"improve: {reason}\n")
                break
            try:
                stream, line = self.lines.get(timeout=wait)
            except queue.Empty:
                continue
            if line is None:
                open_streams -= 1
                continue
            self.log.write(line + "\n")
            self.log.flush()
            if stream == "err":
                if line.strip():
                    self.stderr_tail.append(line)
                continue
            event = _parse_event(line)
            if event is None:
                continue
            self._remember(event)
            if self.on_event is not None and self.on_event(event) is False:
                _stop(self.process)
                stopped = "pruned"
                epoch = event.get("epoch")
                reason = "stopped early by the caller" + (
                    f" after epoch {epoch}" if epoch is not None else ""
                )
                self.log.write(f"improve: {reason}\n")
                break
        returncode = self.process.wait()
        self.log.flush()
        seconds = time.monotonic() - self.started
        if stopped is not None:
            return self._result(stopped, None, reason, seconds, returncode)
        return self._outcome(returncode, seconds)

    def _remember(self, event: Event) -> None:
        kind = event.get("event")
        if kind == "start":
            self.start_event = event
        elif kind == "epoch":
            self.history.append(event)
        elif kind == "result":
            self.result_event = event

    def _outcome(self, returncode: int, seconds: float) -> RunResult:
        result = self.result_event
        if result is None:
            return self._result("failed", None, self._crash_reason(returncode), seconds, returncode)
        if result.get("status") == "ok":
            metric = _number(result.get(self.metric_name))
            if returncode != 0:
                reason = (
                    f"the training process reported a result but exited with code "
                    f"{returncode}" + self._tail_text()
                )
                return self._result("failed", None, reason, seconds, returncode)
            if metric is None:
                reason = f"the result has no '{self.metric_name}' score"
                return self._result("failed", None, reason, seconds, returncode)
            return self._result("ok", metric, None, seconds, returncode)
        kind = str(result.get("reason", "error"))
        message = str(result.get("message") or "").strip()
        if kind == "nan_loss":
            return self._result(
                "nan", None, message or "the training loss became NaN", seconds, returncode
            )
        if kind == "out_of_memory":
            return self._result("oom", None, message or "out of memory", seconds, returncode)
        return self._result(
            "failed", None, message or f"the run failed ({kind})", seconds, returncode
        )

    def _crash_reason(self, returncode: int) -> str:
        reason = f"the training process exited with code {returncode}"
        if returncode < 0:
            with contextlib.suppress(ValueError):
                reason += f" (killed by {signal.Signals(-returncode).name})"
        return reason + self._tail_text()

    def _tail_text(self) -> str:
        if not self.stderr_tail:
            return ""
        return "; its last error output:\n" + "\n".join(f"  {t}" for t in self.stderr_tail)

    @property
    def metric_name(self) -> str:
        """The key of the score in the events, e.g. ``val_accuracy``."""
        for event in (self.result_event, self.start_event):
            if event is not None and isinstance(event.get("metric"), str):
                return f"{self.split}_{event['metric']}"
        prefix = f"{self.split}_"
        for event in self.history[-1:]:
            for key in event:
                if key.startswith(prefix) and key != f"{prefix}loss":
                    return key
        return f"{prefix}accuracy"

    def _result(
        self,
        status: RunStatus,
        metric: float | None,
        reason: str | None,
        seconds: float,
        returncode: int,
    ) -> RunResult:
        return RunResult(
            status=status,
            metric=metric,
            metric_name=self.metric_name,
            history=self.history,
            reason=reason,
            seconds=seconds,
            log_path=Path(self.log.name),
            start=self.start_event,
            result=self.result_event,
            returncode=returncode,
            stderr_tail=list(self.stderr_tail),
        )

    def close(self) -> None:
        """Drain and close the pipes once the process is gone."""
        for reader in self.readers:
            reader.join(timeout=_TERM_GRACE)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


def _parse_event(line: str) -> Event | None:
    """A JSON object with an ``event`` key, or None for any other line."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get("event"), str):
        return value
    return None


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _stop(process: TrainingProcess) -> None:
    """End the process and its whole group: SIGTERM, then SIGKILL after a grace period."""
    if process.poll() is not None:
        _signal_group(process.pid, signal.SIGKILL)  # orphaned workers, if any
        return
    _signal_group(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=_TERM_GRACE)
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def read_metrics(out_dir: Path) -> dict[str, Any]:
    """The ``metrics.json`` a finished run wrote into ``out_dir``.

    Raises ``FileNotFoundError`` when there is none and ``ValueError`` when it is not a JSON
    object; both carry a message fit for a user.
    """
    path = out_dir / "metrics.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist (did the run finish?)") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return value


def default_run_dir(spec_path: Path, split: str = "val") -> Path:
    """``<spec stem>.improve/runs/<timestamp>`` beside the spec (``evaluate/`` for the test
    split); a suffix keeps two runs started in the same second apart."""
    kind = "evaluate" if split == "test" else "runs"
    base = spec_path.parent / f"{spec_path.stem}.improve" / kind
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = base / stamp
    number = 2
    while candidate.exists():
        candidate = base / f"{stamp}-{number}"
        number += 1
    return candidate
