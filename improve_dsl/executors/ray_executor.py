"""Run training jobs as tasks on a Ray cluster: one GPU per task (or CPUs on a CPU cluster).

The compiled script is standalone, so it travels with the task as text: the worker writes it
into a temporary folder, runs it there with :func:`improve_dsl.run.run_script` and sends back
``metrics.json``, the log and ``model.pt`` (when it is small enough), which land in the job's
``out_dir`` on the driver, exactly where the local executor would have put them.

Epoch events stream back through a small actor while the task runs, so progress and pruning
work as they do locally; a prune decision reaches the task at its next event after the
driver has seen it (usually one epoch late). A task whose worker or node dies is retried once
by Ray (``max_retries=1``); a second loss, or any error of the task itself, is a ``failed``
result with the reason, never an exception. Ctrl-C (:meth:`RayExecutor.cancel_all`)
force-cancels every outstanding task.

The dataset must be readable on every worker: at the same path (a shared filesystem), through
the worker's own ``$IMPROVE_DATA`` (the driver's value is passed on when the worker has none),
or fetched by the source itself (``download=true``). See docs/ray.md.

Compiled graphs travel too: a task gets the artifacts of earlier tasks' compiles
(:mod:`.compile_artifacts`), so a worker on a machine of its own compiles nothing twice.

Ray is optional: it is imported only when this executor is built.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..paths import user_cache_dir
from ..run import RunResult
from .base import Executor, JobHandle, TrainJob
from .compile_artifacts import ArtifactShelf
from .ray_worker import PASSED_ON, EventChannel, WorkerReply, run_on_worker

MISSING_RAY = "--executor ray needs Ray: pip install 'improve-dsl[ray]'"

# Files a run leaves in its out_dir that are shipped back; anything larger stays behind.
DEFAULT_MODEL_LIMIT = 64 * 2**20
# How often the driver looks for finished tasks and new events (seconds).
_POLL = 0.2
# Ray errors that mean the worker (or its node) went away rather than the task failing.
_LOST = (
    "WorkerCrashedError",
    "NodeDiedError",
    "ObjectLostError",
    "OwnerDiedError",
    "LocalRayletDiedError",
    "ActorDiedError",
    "ObjectReconstructionFailedError",
)


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached: a one-line message for users."""


def probe_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with :class:`RayUnavailable`, when ``HOST:PORT`` does not answer.

    ``ray.init`` keeps retrying an unreachable head for minutes; a TCP connect says at once.
    Other address forms (``auto``, ``local``, ``ray://...``) are left to Ray.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address or not host:
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise RayUnavailable(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} "
            "(is `ray start --head` running there, and the port open?)"
        ) from None


def import_ray() -> Any:
    """The ``ray`` module, or :class:`RayUnavailable` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable(MISSING_RAY) from None
    return ray


# ---------------------------------------------------------------- the driver side


class RayHandle(JobHandle):
    """A job: queued on the driver, running as a Ray task, or finished (``result`` set)."""

    def __init__(self, job: TrainJob, key: str, result: RunResult | None = None) -> None:
        self.job = job
        self.key = key
        self.ref: Any = None  # the task's ObjectRef once launched
        self.result = result  # set once the result is collected on the driver

    def done(self) -> bool:
        if self.result is not None:
            return True
        if self.ref is None:
            return False
        ray = import_ray()
        ready, _ = ray.wait([self.ref], num_returns=1, timeout=0)
        return bool(ready)


class RayExecutor(Executor):
    """Training jobs as Ray tasks, at most ``slots`` of them on the cluster at once.

    Jobs beyond ``slots`` wait in a queue on the driver, as with the local executor.
    ``address`` is the cluster to join (``ray.init(address=...)``; None: ``$RAY_ADDRESS`` or
    a new local cluster). When Ray is already initialised in this process (a notebook, a
    test), that connection is used and left open on :meth:`close`. Each task asks for one GPU
    when the cluster has GPUs and ``device`` is not ``cpu``; otherwise ``threads`` CPUs
    (default: the cluster's CPUs divided between the slots, at most one node's worth), and the
    script is told to use that many threads. Files over ``model_limit`` bytes (a large
    ``model.pt``) are left behind with a note in the log.
    """

    def __init__(
        self,
        slots: int = 1,
        *,
        address: str | None = None,
        device: str = "auto",
        threads: int | None = None,
        model_limit: int = DEFAULT_MODEL_LIMIT,
    ) -> None:
        if slots < 1:
            raise ValueError("an executor needs at least one slot")
        ray = import_ray()
        self.slots = slots
        self.address = address
        self.device = device
        self.model_limit = model_limit
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            _connect(ray, address)
        try:
            self._configure(ray, threads)
            channel_class = ray.remote(num_cpus=0, max_restarts=-1)(EventChannel)
            self._channel = channel_class.remote()
            self._task = ray.remote(run_on_worker)
        except BaseException:
            if self._owns_ray:
                ray.shutdown()
            raise
        self._handles: dict[str, RayHandle] = {}
        self._queued: deque[RayHandle] = deque()
        self._running: dict[Any, RayHandle] = {}  # ObjectRef → handle
        self._cancelled = False
        cache = user_cache_dir()
        self._shelf = ArtifactShelf(cache / "compile-artifacts" if cache is not None else None)
        self._shipped: tuple[int, Any] | None = None  # (shelf version, ObjectRef of its bundle)

    def _configure(self, ray: Any, threads: int | None) -> None:
        """Decide what each task asks the cluster for."""
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        if self.device.startswith("cuda") and gpus < 1:
            raise RayUnavailable(
                f"--device {self.device} asks for a GPU, but the Ray cluster has none"
            )
        self.use_gpu = gpus >= 1 and self.device != "cpu"
        if self.use_gpu:
            self.num_cpus, self.num_gpus, self.threads = 1.0, 1.0, threads
            return
        node_cpus = [
            float(node.get("Resources", {}).get("CPU", 0))
            for node in ray.nodes()
            if node.get("Alive")
        ]
        biggest = int(max(node_cpus, default=1)) or 1
        total = int(sum(node_cpus)) or 1
        per_task = threads if threads is not None else max(1, min(biggest, total // self.slots))
        if per_task > biggest:
            raise RayUnavailable(
                f"--threads {per_task} asks each Ray task for {per_task} CPUs, but the largest "
                f"node has {biggest}"
            )
        self.num_cpus, self.num_gpus, self.threads = float(per_task), 0.0, per_task

    # ------------------------------------------------------------ the interface

    def submit(self, job: TrainJob) -> RayHandle:
        if self._cancelled:
            raise RuntimeError("the executor was cancelled")
        handle = RayHandle(job, uuid.uuid4().hex)
        self._handles[handle.key] = handle
        self._queued.append(handle)
        self._launch()
        return handle

    def wait(self, handle: JobHandle) -> RunResult:
        for _, result in self.as_completed([handle]):
            return result
        raise AssertionError("unreachable")  # as_completed yields every handle once

    def as_completed(self, handles: Iterable[JobHandle]) -> Iterator[tuple[JobHandle, RunResult]]:
        remaining: list[RayHandle] = []
        for handle in handles:
            assert isinstance(handle, RayHandle)
            remaining.append(handle)
        while remaining:
            finished = [h for h in remaining if h.result is not None]
            for handle in finished:
                remaining.remove(handle)
                assert handle.result is not None
                yield handle, handle.result
            if remaining:
                self._step()

    def cancel_all(self) -> None:
        self._cancelled = True
        ray = import_ray()
        while self._queued:
            handle = self._queued.popleft()
            handle.result = _local_result(handle.job, "interrupted", "cancelled")
        for ref in list(self._running):
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)

    def close(self) -> None:
        self.cancel_all()
        ray = import_ray()
        if not ray.is_initialized():
            return
        with contextlib.suppress(Exception):
            ray.kill(self._channel)
        if self._owns_ray:
            ray.shutdown()

    # ------------------------------------------------------------ helpers

    def _launch(self) -> None:
        """Start queued jobs while fewer than ``slots`` tasks are on the cluster."""
        while self._queued and len(self._running) < self.slots and not self._cancelled:
            handle = self._queued.popleft()
            job = handle.job
            try:
                text = job.script.read_text(encoding="utf-8")
            except OSError as exc:
                reason = f"cannot read the training script {job.script}: {exc.strerror or exc}"
                handle.result = _local_result(job, "failed", reason)
                continue
            options = {
                "split": job.split,
                "device": job.device,
                "seed": job.seed,
                "timeout": job.timeout,
                "batch_size": job.batch_size,
                "threads": job.threads if job.threads is not None else self.threads,
            }
            task = self._task.options(
                num_cpus=self.num_cpus,
                num_gpus=self.num_gpus,
                max_retries=1,  # a lost worker or node: try once more elsewhere
                retry_exceptions=False,  # a failing run is a result, never retried by Ray
                name=f"improve:{job.out_dir.name}",
            )
            handle.ref = task.remote(
                handle.key,
                job.script.name,
                text,
                options,
                self._channel,
                self.model_limit,
                os.environ.get("IMPROVE_DATA"),
                {name: os.environ[name] for name in PASSED_ON if os.environ.get(name)},
                self._artifacts(),
            )
            self._running[handle.ref] = handle

    def _artifacts(self) -> Any:
        """The shelf's bundle in Ray's object store, put there once per version of it."""
        if self._shipped is None or self._shipped[0] != self._shelf.version:
            self._shipped = (self._shelf.version, import_ray().put(self._shelf.bundle()))
        return self._shipped[1]

    def _step(self) -> None:
        """Wait a moment for any task to end; pass on events; collect; launch queued jobs."""
        ray = import_ray()
        if self._running:
            # A timeout keeps the driver responsive to Ctrl-C and lets events through.
            refs = list(self._running)
            ready, _ = ray.wait(refs, num_returns=1, timeout=_POLL)
            self._pump_events()
            if ready:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                self._collect(self._running.pop(ref))
        self._launch()
        if not self._running and self._queued:
            raise AssertionError("queued jobs but none could start")  # _launch always starts one

    def _pump_events(self) -> None:
        """Hand the events that arrived to their jobs' callbacks; stop jobs that say so."""
        ray = import_ray()
        try:
            events = ray.get(self._channel.drain.remote(), timeout=10)
        except Exception:  # the channel restarts if it died; events in it are lost, not runs
            return
        for key, event in events:
            handle = self._handles.get(key)
            if handle is None or handle.result is not None or handle.job.on_event is None:
                continue
            if self._cancelled or handle.job.on_event(event) is False:
                self._channel.stop.remote(key)

    def _collect(self, handle: RayHandle) -> RunResult:
        """The task's result, its files written into the job's out_dir on this machine."""
        ray = import_ray()
        job = handle.job
        try:
            reply: WorkerReply = ray.get(handle.ref)
        except Exception as exc:
            handle.result = self._error_result(job, exc)
            return handle.result
        job.out_dir.mkdir(parents=True, exist_ok=True)
        # A retried or repeated job must not keep an earlier attempt's files.
        for stale in ("metrics.json", "model.pt"):
            with contextlib.suppress(FileNotFoundError):
                (job.out_dir / stale).unlink()
        for name, data in reply.files.items():
            _write_atomic(job.out_dir / name, data)
        self._shelf.add(reply.artifacts)
        log_path = job.out_dir / "log"
        notes = [f"improve: ran on Ray node {reply.node}"]
        for name, size in reply.skipped.items():
            notes.append(
                f"improve: {name} ({size / 2**20:.1f} MiB) was not copied back from the Ray "
                f"node: it is over the {self.model_limit / 2**20:.0f} MiB limit"
            )
        with open(log_path, "a", encoding="utf-8") as log:
            log.write("\n".join(notes) + "\n")
        result = replace(reply.result, log_path=log_path)
        if self._cancelled and result.status != "ok":
            result = replace(result, status="interrupted", reason="cancelled")
        handle.result = result
        return result

    def _error_result(self, job: TrainJob, exc: Exception) -> RunResult:
        """A Ray error as a result: cancelled → interrupted; a lost worker or a bug → failed."""
        name = type(exc).__name__
        if name == "TaskCancelledError" or (self._cancelled and name in _LOST):
            return _local_result(job, "interrupted", "cancelled")
        if name in _LOST:
            reason = (
                "the Ray worker running this job was lost twice (the task was retried once): "
                + _first_line(str(exc))
            )
        else:
            cause = getattr(exc, "cause", None)
            text = f"{type(cause).__name__}: {cause}" if cause is not None else f"{name}: {exc}"
            reason = "the Ray task failed: " + _first_line(text)
        return _local_result(job, "failed", reason)


def _connect(ray: Any, address: str | None) -> None:
    """Join (or start) the cluster, shipping this package to the workers."""
    package = str(Path(__file__).resolve().parent.parent)
    kwargs: dict[str, Any] = {
        "address": address,
        # Workers import improve_dsl.run from the driver's copy: no install needed on nodes.
        "runtime_env": {"py_modules": [package]},
        "log_to_driver": False,  # the runs' output goes to their logs, not to this terminal
        "logging_level": logging.WARNING,
    }
    if address is None:
        kwargs["include_dashboard"] = False
    else:
        probe_address(address)
    try:
        ray.init(**kwargs)
    except Exception as exc:
        where = f"at {address}" if address else "(a new local cluster)"
        raise RayUnavailable(f"cannot start Ray {where}: {_first_line(str(exc))}") from None


def _local_result(job: TrainJob, status: Any, reason: str) -> RunResult:
    """A result made on the driver (no run took place there), with the reason in the log."""
    job.out_dir.mkdir(parents=True, exist_ok=True)
    log_path = job.out_dir / "log"
    with open(log_path, "w", encoding="utf-8") as log:  # no earlier attempt's log survives
        log.write(f"improve: {reason}\n")
    return RunResult(status, None, f"{job.split}_accuracy", [], reason, 0.0, log_path)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no details"


__all__ = [
    "MISSING_RAY",
    "RayExecutor",
    "RayHandle",
    "RayUnavailable",
    "import_ray",
    "probe_address",
]
