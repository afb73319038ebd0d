"""Run training jobs on this machine: up to K subprocesses at once, one GPU each.

Each job runs ``run.run_script`` in a worker thread (the training itself is a subprocess, so
threads are enough). With several GPUs every running job sees one of them through
``CUDA_VISIBLE_DEVICES``; on CPU the cores are divided between concurrent jobs. On CPUs and
GPUs alike the scripts start as forks of a fork server that has imported torch once
(``forkserver.py``; on an H200 a refinement ran 1.45x faster this way, every run fine).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import queue
import signal
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import forkserver
from ..paths import compile_cache_env
from ..resident import ResidentForkServer
from ..run import RunResult, run_script
from .base import Executor, JobHandle, TrainJob


class LocalHandle(JobHandle):
    """A job running (or queued) in a local worker thread."""

    def __init__(self, job: TrainJob, future: cf.Future[RunResult]) -> None:
        self.job = job
        self.future = future

    def done(self) -> bool:
        return self.future.done()


def visible_gpus(device: str) -> list[str]:
    """The GPU ids jobs may be spread over: none unless ``device`` is auto or cuda."""
    if device not in ("auto", "cuda"):
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch
    except ImportError:
        return []
    try:
        count = int(torch.cuda.device_count())
    except Exception:  # a broken driver means no GPU, not a crash
        count = 0
    return [str(i) for i in range(count)]


class LocalExecutor(Executor):
    """``slots`` concurrent training subprocesses on this machine.

    ``gpus`` (default: detected for ``device``) are handed out one per running job;
    ``threads`` per job default to the CPU cores divided between the slots. ``fork_server``
    (default: on, on Linux, for CPU and GPU runs, unless ``IMPROVE_FORK_SERVER=0``) starts
    the scripts as forks of a process that has imported torch already: the resident one
    (``resident.py``, left running for the next command) unless ``resident`` is False or it
    cannot be reached, else one of the executor's own. Servers and runs share the compile
    caches of ``paths.compile_cache_env``.
    """

    def __init__(
        self,
        slots: int = 1,
        *,
        device: str = "auto",
        gpus: Sequence[str] | None = None,
        threads: int | None = None,
        fork_server: bool | None = None,
        resident: bool = True,
    ) -> None:
        if slots < 1:
            raise ValueError("an executor needs at least one slot")
        self.slots = slots
        self.gpus = list(visible_gpus(device) if gpus is None else gpus)
        cores = os.cpu_count() or 1
        self.threads = (
            threads if threads is not None else (max(1, cores // slots) if slots > 1 else None)
        )
        self._pool = cf.ThreadPoolExecutor(max_workers=slots, thread_name_prefix="improve-job")
        self._slots: queue.Queue[int] = queue.Queue()
        for index in range(slots):
            self._slots.put(index)
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[int, int] = {}  # slot → the process group of its training run
        self._handles: list[LocalHandle] = []
        if fork_server is None:
            fork_server = forkserver.wanted()
        self._fork_server: ForkServers | None = ForkServers(resident) if fork_server else None

    # ------------------------------------------------------------ the interface

    def submit(self, job: TrainJob) -> LocalHandle:
        if self._cancelled.is_set():
            raise RuntimeError("the executor was cancelled")
        handle = LocalHandle(job, self._pool.submit(self._run, job))
        self._handles.append(handle)
        return handle

    def wait(self, handle: JobHandle) -> RunResult:
        assert isinstance(handle, LocalHandle)
        return _result(handle.future)

    def as_completed(self, handles: Iterable[JobHandle]) -> Iterator[tuple[JobHandle, RunResult]]:
        by_future: dict[cf.Future[RunResult], LocalHandle] = {}
        for handle in handles:
            assert isinstance(handle, LocalHandle)
            by_future[handle.future] = handle
        pending = set(by_future)
        while pending:
            # A timeout keeps the main thread responsive to Ctrl-C.
            done, pending = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
            for future in done:
                yield by_future[future], _result(future)

    def cancel_all(self) -> None:
        self._cancelled.set()
        for handle in self._handles:
            handle.future.cancel()
        with self._lock:
            running = list(self._running.values())
        for group in running:
            # Now, without waiting for the run's next event (its watcher then sees it end).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGTERM)

    def close(self) -> None:
        self.cancel_all()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._fork_server is not None:
            self._fork_server.close()

    # ------------------------------------------------------------ a worker

    def _run(self, job: TrainJob) -> RunResult:
        slot = self._slots.get()

        def on_spawn(pid: int) -> None:
            with self._lock:
                self._running[slot] = pid
            if self._cancelled.is_set():  # cancelled while it was starting
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGTERM)

        try:
            if self._cancelled.is_set():
                return _interrupted(job)
            env: dict[str, str] = {}
            if self.gpus and (self.slots > 1 or len(self.gpus) > 1):
                env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
            result = run_script(
                job.script,
                job.out_dir,
                split=job.split,
                device=job.device,
                seed=job.seed,
                timeout=job.timeout,
                batch_size=job.batch_size,
                threads=job.threads if job.threads is not None else self.threads,
                on_event=self._events(job),
                extra_env=env,
                fork_server=self._fork_server,
                on_spawn=on_spawn,
            )
            if self._cancelled.is_set() and result.status != "ok":
                return replace(result, status="interrupted", reason="cancelled")
            return result
        finally:
            with self._lock:
                self._running.pop(slot, None)
            self._slots.put(slot)

    def _events(self, job: TrainJob) -> Any:
        def on_event(event: dict[str, Any]) -> bool:
            if self._cancelled.is_set():
                return False
            if job.on_event is None:
                return True
            return job.on_event(event) is not False

        return on_event


class ForkServers:
    """The resident fork server, and the executor's own once the resident one fails.

    Both start importing at once (the executor's own only when ``resident`` is False), so
    their imports overlap the loop's first compile.
    """

    def __init__(self, resident: bool = True, preload: Sequence[str] = forkserver.PRELOAD) -> None:
        self.name = "the fork server"
        self._preload = tuple(preload)
        self._lock = threading.Lock()
        self._resident = ResidentForkServer(self._preload) if resident else None
        self._private: forkserver.ForkServer | None = None
        if self._resident is None:
            self._start_private()

    def _start_private(self) -> None:
        # torch may read the compile caches' folders as it imports: the server too
        env = {**compile_cache_env(), **os.environ}
        with contextlib.suppress(OSError):  # without one, runs start the ordinary way
            self._private = forkserver.ForkServer(self._preload, env=env)

    def spawn(
        self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None
    ) -> forkserver.ForkedProcess:
        with self._lock:
            resident = self._resident
        if resident is not None:
            try:
                forked = resident.spawn(argv, env=env, cwd=cwd)
                self.name = resident.name
                return forked
            except forkserver.ForkServerError:
                with self._lock:
                    if self._resident is resident:
                        resident.close()
                        self._resident = None
                        self._start_private()
        with self._lock:
            private = self._private
        if private is None:
            raise forkserver.ForkServerError("no fork server could be started")
        forked = private.spawn(argv, env=env, cwd=cwd)
        self.name = private.name
        return forked

    def close(self) -> None:
        """Leave the resident server for the next command; stop our own."""
        if self._resident is not None:
            self._resident.close()
        if self._private is not None:
            self._private.close()


def _result(future: cf.Future[RunResult]) -> RunResult:
    try:
        return future.result()
    except cf.CancelledError:
        raise
    except Exception as exc:  # a bug of ours in a worker must still reach the caller
        raise RuntimeError(f"a training job failed to run: {exc}") from exc


def _interrupted(job: TrainJob) -> RunResult:
    return RunResult(
        "interrupted", None, f"{job.split}_accuracy", [], "cancelled", 0.0, job.out_dir / "log"
    )
