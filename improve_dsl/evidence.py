"""The evidence store: every refinement attempt of every run, in one SQLite database.

``$XDG_DATA_HOME/improve/evidence.sqlite`` (default ``~/.local/share/improve``) holds one
row per finished attempt: the dataset's profile (image size, channels, classes, training
size, architecture family), the block, the typed edit (field deltas and op changes), the
move the expert named, the gain, noise, margin and cost ratio that decided it, its status,
and a provenance manifest (spec and script sha256, data fingerprint, seeds, torch version,
device). The offline expert's priors, the LLM prompt's "on similar datasets" section and
``improve history`` read it back.

Refines running side by side share the file: it is opened in WAL mode with a busy timeout,
and every write is one ``BEGIN IMMEDIATE`` transaction; ``(run, iteration)`` is unique, so a
resumed run never counts an attempt twice. A file that is not a database, or a database
some other program made, raises ``StoreError`` with a one-line message; callers then go on
without history. This module knows SQL and nothing of specs: rows come in as plain values.
"""

from __future__ import annotations

import json
import math
import os
import random
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

APPLICATION = "improve-evidence"
SCHEMA_VERSION = 1
FILE_NAME = "evidence.sqlite"
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    run TEXT NOT NULL,
    iteration INTEGER NOT NULL,
    recorded_at REAL NOT NULL,
    dataset TEXT NOT NULL,
    image_size INTEGER NOT NULL,
    channels INTEGER NOT NULL,
    classes INTEGER NOT NULL,
    train_size INTEGER NOT NULL,
    arch TEXT NOT NULL,
    block TEXT NOT NULL,
    move TEXT NOT NULL,
    edit TEXT NOT NULL,
    status TEXT NOT NULL,
    metric REAL,
    incumbent_metric REAL,
    gain REAL,
    noise REAL,
    margin REAL,
    cost_ratio REAL,
    expert TEXT NOT NULL,
    provenance TEXT NOT NULL,
    UNIQUE (run, iteration)
);
CREATE INDEX IF NOT EXISTS attempts_by_move ON attempts (move);
"""


class StoreError(Exception):
    """The store cannot be used (corrupt, foreign, unwritable); the message is one line."""


def default_path() -> Path:
    """``$XDG_DATA_HOME/improve/evidence.sqlite`` (XDG's default: ``~/.local/share``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "improve" / FILE_NAME


@dataclass(frozen=True)
class Profile:
    """What makes two datasets similar, as far as moves go."""

    dataset: str
    image_size: int
    channels: int
    classes: int
    train_size: int
    arch: str  # the model's architecture family (cnn, resnet, mlp...)

    def similarity(self, other: Profile) -> float:
        """1 for the same profile, falling towards 0 as sizes, channels, class counts,
        training sizes and architecture family differ (a product of per-feature factors)."""

        def ratio(a: int, b: int) -> float:
            return abs(math.log2(max(a, 1) / max(b, 1)))

        distance = (
            0.5 * ratio(self.image_size, other.image_size)
            + (1.0 if self.channels != other.channels else 0.0)
            + 0.3 * ratio(self.classes, other.classes)
            + 0.25 * ratio(self.train_size, other.train_size)
            + (0.7 if self.arch != other.arch else 0.0)
        )
        return math.exp(-distance)


@dataclass(frozen=True)
class Evidence:
    """One attempt as the store keeps it."""

    run: str  # the run folder's absolute path
    iteration: int
    profile: Profile
    block: str
    move: str  # the move the expert named ("" when it named none)
    edit: Mapping[str, Any]  # {"fields": {name: [old, new]}, "ops": {...}}
    status: str
    metric: float | None
    incumbent_metric: float | None
    gain: float | None
    noise: float | None
    margin: float | None
    cost_ratio: float | None
    expert: str
    provenance: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> bool:
        return self.status == "accepted"


_COLUMNS = (
    "run, iteration, recorded_at, dataset, image_size, channels, classes, train_size, arch, "
    "block, move, edit, status, metric, incumbent_metric, gain, noise, margin, cost_ratio, "
    "expert, provenance"
)


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


class Store:
    """The evidence database at ``path`` (created on first use)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()

    # ------------------------------------------------------------ connection

    def _session(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` on an open, checked connection. A lock another refine holds past the busy
        timeout's first wait (SQLite does not wait on every path: a WAL switch, a recovery)
        is waited out here, up to ``BUSY_TIMEOUT_S``; each ``work`` is one transaction, so a
        retry repeats nothing half-done."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        pause = 0.01
        while True:
            try:
                return self._once(work)
            except sqlite3.OperationalError as exc:
                locked = "locked" in str(exc) or "busy" in str(exc)
                if not locked or time.monotonic() > deadline:
                    raise self._unusable(exc) from None
            except sqlite3.DatabaseError as exc:
                raise self._unusable(exc) from None
            time.sleep(pause * (1 + random.random()))
            pause = min(pause * 2, 0.5)

    def _unusable(self, exc: BaseException) -> StoreError:
        return StoreError(
            f"the evidence store {self.path} is unusable ({exc}); "
            "going on without history (move it away to start a new one)"
        )

    def _once(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except OSError as exc:
            raise StoreError(f"cannot open the evidence store {self.path}: {exc}") from None
        with closing(db):
            db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode = WAL")
            self._check(db)
            return work(db)

    def _check(self, db: sqlite3.Connection) -> None:
        """Create the schema in an empty file; refuse a database some other program made."""
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if not tables:
            # Two refines may meet an empty file at once: one transaction creates it all,
            # and every statement tolerates the other having done it first.
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(statement)
                db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('application', ?), ('schema', ?)",
                    (APPLICATION, str(SCHEMA_VERSION)),
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return
        meta = (
            dict(db.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
        )
        if meta.get("application") != APPLICATION or "attempts" not in tables:
            raise StoreError(
                f"{self.path} is not an improve evidence store (another program's database); "
                "going on without history"
            )
        if meta.get("schema") != str(SCHEMA_VERSION):
            raise StoreError(
                f"{self.path} has evidence schema {meta.get('schema')}, this improve reads "
                f"{SCHEMA_VERSION}; going on without history"
            )

    def check(self) -> None:
        """Open the store once (creating it); StoreError when it cannot be used."""
        self._session(lambda db: None)

    # ------------------------------------------------------------ writing

    def add(self, rows: Sequence[Evidence]) -> int:
        """Append ``rows`` in one transaction; a (run, iteration) already stored is kept as it
        was. The number of rows newly stored."""
        if not rows:
            return 0
        values = [
            (
                e.run,
                e.iteration,
                time.time(),
                e.profile.dataset,
                e.profile.image_size,
                e.profile.channels,
                e.profile.classes,
                e.profile.train_size,
                e.profile.arch,
                e.block,
                e.move,
                json.dumps(e.edit, sort_keys=True),
                e.status,
                _finite(e.metric),
                _finite(e.incumbent_metric),
                _finite(e.gain),
                _finite(e.noise),
                _finite(e.margin),
                _finite(e.cost_ratio),
                e.expert,
                json.dumps(e.provenance, sort_keys=True),
            )
            for e in rows
        ]
        marks = ", ".join("?" * len(values[0]))

        def insert(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            try:
                before = db.total_changes
                db.executemany(
                    f"INSERT OR IGNORE INTO attempts ({_COLUMNS}) VALUES ({marks})", values
                )
                added = db.total_changes - before
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return added

        return self._session(insert)

    # ------------------------------------------------------------ reading

    def rows(self, dataset: str | None = None, exclude_run: str | None = None) -> list[Evidence]:
        """Every stored attempt (of ``dataset`` only, when named), oldest first."""
        query = f"SELECT {_COLUMNS} FROM attempts"
        where: list[str] = []
        params: list[Any] = []
        if dataset is not None:
            where.append("dataset = ?")
            params.append(dataset)
        if exclude_run is not None:
            where.append("run != ?")
            params.append(exclude_run)
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY id"
        found = self._session(lambda db: db.execute(query, params).fetchall())
        return [_evidence(row) for row in found]


def _evidence(row: Sequence[Any]) -> Evidence:
    (run, iteration, _at, dataset, size, channels, classes, train_size, arch) = row[:9]
    (block, move, edit, status, metric, incumbent, gain, noise, margin, cost, expert) = row[9:20]
    return Evidence(
        run=run,
        iteration=iteration,
        profile=Profile(dataset, size, channels, classes, train_size, arch),
        block=block,
        move=move,
        edit=_json(edit),
        status=status,
        metric=metric,
        incumbent_metric=incumbent,
        gain=gain,
        noise=noise,
        margin=margin,
        cost_ratio=cost,
        expert=expert,
        provenance=_json(row[20]),
    )


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
