"""How much an image folder takes on disk and decoded, and whether a run will stream it.

The generated script decodes a folder once into a cache of uint8 images and holds them in
memory when they fit its memory budget; past it, batches stream from the cache file
(templates/source/image_folder.py.jinja). This module applies the same rule on the user's
machine for ``improve init`` and the dataset profile, without importing torch; on CUDA the
script also keeps the decoded images under half of the GPU's free memory, which is not known
here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30


def available_memory() -> int:
    """Bytes of memory available now: MemAvailable on Linux, else half the physical memory
    (as the generated script's ``available_memory``)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, OSError, ValueError):
        return 8 * GIB


def memory_budget(gib: float | None) -> int:
    """Bytes of decoded images a run may hold in memory: ``gib`` when the spec sets
    ``memory_budget``, else half the memory available now."""
    return int(gib * GIB) if gib is not None else available_memory() // 2


def human_bytes(count: int) -> str:
    """``512 B``, ``3.4 MB``, ``2.46 GB`` (decimal units, as file managers show them)."""
    size = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.3g} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class FolderMemory:
    """An image folder's files on disk, its images decoded, and the budget they meet."""

    files: int
    file_bytes: int
    decoded_bytes: int
    budget: int
    budget_set: bool  # the spec sets memory_budget (else the machine's default)

    @property
    def streams(self) -> bool:
        return self.decoded_bytes > self.budget

    def describe(self) -> str:
        """One line: sizes, the budget and where the decoded images will live."""
        where = (
            "batches will stream from the decode cache"
            if self.streams
            else "they will be held in memory"
        )
        budget = "memory_budget" if self.budget_set else "half the memory available here"
        return (
            f"{human_bytes(self.file_bytes)} in {self.files:,} files, "
            f"{human_bytes(self.decoded_bytes)} decoded; {where} "
            f"(budget {human_bytes(self.budget)}: {budget})"
        )


def folder_memory(
    files: Sequence[Path], image_size: int, channels: int, budget_gib: float | None
) -> FolderMemory:
    """Sizes of these image files on disk and decoded at ``channels`` x ``image_size``²."""
    file_bytes = 0
    for path in files:
        try:
            file_bytes += path.stat().st_size
        except OSError:
            continue  # gone since the scan: the script will not see it either
    return FolderMemory(
        files=len(files),
        file_bytes=file_bytes,
        decoded_bytes=len(files) * channels * image_size * image_size,
        budget=memory_budget(budget_gib),
        budget_set=budget_gib is not None,
    )
