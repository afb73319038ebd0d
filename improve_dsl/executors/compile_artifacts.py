"""torch.compile's cache artifacts, carried to machines that share no cache folder.

Every run on one machine shares the inductor cache under the user cache folder
(``paths.compile_cache_env``), so one candidate's compile is the next one's cache hit. A Ray
worker on another machine starts with an empty cache and would compile each graph again.
So the driver keeps the artifacts its tasks send back (``torch.compiler.save_cache_artifacts``,
written by the script under ``--compile-artifacts``) in ``$XDG_CACHE_HOME/improve/
compile-artifacts``, and ships them with every task, newest first up to :data:`SHIP_LIMIT`
bytes; the script loads them before it compiles. Artifacts of another torch version or
another device load but never hit, so nothing needs keying here: each file is named by its
content, and the oldest go once the shelf holds more than :data:`KEEP_LIMIT` bytes.

Nothing here imports torch or Ray.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

SHIP_LIMIT = 256 * 2**20  # bytes of artifacts sent with one task
KEEP_LIMIT = 1024 * 2**20  # bytes kept on the driver's disk
# What a script writes: 32 hex digits of the content's sha256. Anything else a worker sends
# (a path, a stray file) is not stored.
ARTIFACT_NAME = re.compile(r"[0-9a-f]{32}\.bin")


class ArtifactShelf:
    """The driver's artifacts: what to ship (:meth:`bundle`), what came back (:meth:`add`).

    ``folder`` None (no user cache folder) keeps nothing and ships nothing. A folder that
    cannot be read or written costs compiles, never a run.
    """

    def __init__(
        self, folder: Path | None, ship_limit: int = SHIP_LIMIT, keep_limit: int = KEEP_LIMIT
    ) -> None:
        self.folder = folder
        self.ship_limit = ship_limit
        self.keep_limit = keep_limit
        self.version = 0  # bumped by every add that stored something: the bundle changed

    def _files(self) -> list[Path]:
        """The shelf's artifact files, newest first."""
        if self.folder is None:
            return []
        try:
            files = [path for path in self.folder.iterdir() if ARTIFACT_NAME.fullmatch(path.name)]
            return sorted(files, key=lambda path: path.stat().st_mtime, reverse=True)
        except OSError:
            return []

    def bundle(self) -> dict[str, bytes]:
        """Name -> content of the newest artifacts, at most ``ship_limit`` bytes in all."""
        shipped: dict[str, bytes] = {}
        total = 0
        for path in self._files():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if total + len(data) > self.ship_limit:
                break
            shipped[path.name] = data
            total += len(data)
        return shipped

    def add(self, artifacts: Mapping[str, bytes]) -> int:
        """Store the artifacts a task sent back (ill-named ones are dropped); how many were
        new. Then the oldest go while the shelf holds more than ``keep_limit`` bytes."""
        if self.folder is None:
            return 0
        added = 0
        for name, data in artifacts.items():
            path = self.folder / name
            if not ARTIFACT_NAME.fullmatch(name) or path.exists():
                continue
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(f".{os.getpid()}.partial")
                partial.write_bytes(data)
                partial.replace(path)
            except OSError:
                continue
            added += 1
        if added:
            self.version += 1
            self._prune()
        return added

    def _prune(self) -> None:
        total = 0
        for path in self._files():
            with contextlib.suppress(OSError):
                total += path.stat().st_size
                if total > self.keep_limit:
                    path.unlink()
