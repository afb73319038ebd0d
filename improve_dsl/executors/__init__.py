"""Where training jobs run: ``local`` threads on this machine, or ``ray`` tasks on a cluster."""

from __future__ import annotations

from .base import Executor, JobHandle, TrainJob
from .local import LocalExecutor

__all__ = ["Executor", "JobHandle", "LocalExecutor", "TrainJob", "make_executor"]

EXECUTORS = ("local", "ray")


def make_executor(
    name: str = "local",
    *,
    parallel: int = 1,
    device: str = "auto",
    threads: int | None = None,
    address: str | None = None,
) -> Executor:
    """The executor called ``name`` with ``parallel`` slots.

    ``address`` is the Ray cluster to join (``ray`` only). Ray is imported only here, when
    chosen; without it, or without a reachable cluster, ``RayUnavailable`` (a RuntimeError)
    carries a one-line message for the user.
    """
    if name == "local":
        return LocalExecutor(parallel, device=device, threads=threads)
    if name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(parallel, address=address, device=device, threads=threads)
    raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
