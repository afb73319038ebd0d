"""The body of a Ray task, which runs on a worker: write the script, train, collect files.

Kept apart from the driver (:mod:`.ray_executor`) so that what a worker imports and sends
back is in one place. Ray is imported inside the task, where it is always installed.
"""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..run import RunResult, run_script
from .compile_artifacts import ARTIFACT_NAME

# The driver's compile caches, passed to workers that set none (a shared folder, say).
PASSED_ON = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


class EventChannel:
    """A Ray actor (wrapped at run time) that carries epoch events from tasks to the driver.

    Tasks ``put`` each event and learn whether to go on; the driver ``drain``s the events and
    ``stop``s a job it wants pruned or cancelled.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.stopped: set[str] = set()

    def put(self, key: str, event: dict[str, Any]) -> bool:
        self.events.append((key, event))
        return key not in self.stopped

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        events, self.events = self.events, []
        return events

    def stop(self, key: str) -> None:
        self.stopped.add(key)


@dataclass(frozen=True)
class WorkerReply:
    """What a task sends back: the run's result, the files of its out_dir, where it ran, and
    the compile artifacts it made."""

    result: RunResult
    files: dict[str, bytes]
    skipped: dict[str, int]  # file name → size in bytes, for files over the limit
    node: str
    artifacts: dict[str, bytes]  # name → content, only those the task did not receive


def run_on_worker(
    key: str,
    script_name: str,
    script_text: str,
    options: dict[str, Any],
    channel: Any,
    model_limit: int,
    driver_data: str | None,
    driver_env: dict[str, str] | None = None,
    artifacts: dict[str, bytes] | None = None,
) -> WorkerReply:
    """The body of a Ray task: write the script to a temporary folder, train, collect files.

    ``options`` are :func:`run_script`'s keyword arguments (split, device, seed, ...).
    ``driver_env`` holds the variables of :data:`PASSED_ON` the user set on the driver; a
    worker that has none of its own gets them. The compile caches otherwise default to the
    worker's own user cache folder (``run_script`` sets them), shared by its tasks.
    ``artifacts`` are compile artifacts for the script to load; what it compiles afresh comes
    back in the reply.
    """
    import ray

    received = artifacts or {}
    env: dict[str, str] = {}
    if driver_data and not os.environ.get("IMPROVE_DATA"):
        env["IMPROVE_DATA"] = driver_data  # same path on every node (a shared filesystem)
    for name, value in (driver_env or {}).items():
        if name in PASSED_ON and value and not os.environ.get(name):
            env[name] = value

    def on_event(event: dict[str, Any]) -> bool:
        try:
            return bool(ray.get(channel.put.remote(key, event)))
        except Exception:  # a lost channel must not cost the run; only the driver prunes
            return True

    with tempfile.TemporaryDirectory(prefix="improve-job-") as tmp:
        script = Path(tmp) / script_name
        script.write_text(script_text, encoding="utf-8")
        out_dir = Path(tmp) / "out"
        shelf = Path(tmp) / "compile-artifacts"
        shelf.mkdir()
        for name, data in received.items():
            if ARTIFACT_NAME.fullmatch(name):
                (shelf / name).write_bytes(data)
        result = run_script(
            script,
            out_dir,
            on_event=on_event,
            extra_env=env,
            extra_args=("--compile-artifacts", str(shelf)),
            **options,
        )
        made = {
            path.name: path.read_bytes()
            for path in sorted(shelf.iterdir())
            if ARTIFACT_NAME.fullmatch(path.name) and path.name not in received
        }
        files: dict[str, bytes] = {}
        skipped: dict[str, int] = {}
        for path in sorted(out_dir.iterdir()):
            if not path.is_file():
                continue
            size = path.stat().st_size
            if path.name != "log" and size > model_limit:
                skipped[path.name] = size
            else:
                files[path.name] = path.read_bytes()
    return WorkerReply(result, files, skipped, socket.gethostname(), made)
