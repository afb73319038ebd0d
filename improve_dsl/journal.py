"""The record of a refinement run, and the results cache shared by a spec's runs.

A run lives in ``<spec>.improve/<run-id>/``::

    start.imp            the spec as it was when the run began
    journal.jsonl        one JSON record per finished attempt, appended and fsynced
    state.json           what ``--resume`` needs: the options, the spec path, what was written
    best.imp             the best spec so far
    final.json           the best spec's one score on the test split, at the end
    candidates/<i>/      each attempt's spec.imp, train.py, log and metrics.json

The journal is the truth: state is rebuilt from it on resume, and a reader skips a torn last
line (a process killed mid-write). ``<spec>.improve/cache/`` maps a compiled script, a seed
and a split to the metrics of its run, so a repeated proposal costs nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Status:
    """One way an attempt can end, and how it is shown wherever attempts are listed."""

    name: str
    colour: str  # in the report's plot and page (hex), so a point and its row match
    style: str  # in the terminal view (a rich style)


# How an attempt ended: the one table of statuses and their colours (the report, the live
# view, tracking and the experts read it from here). Only "accepted" changes the incumbent.
ATTEMPT_STATUSES = (
    Status("accepted", "#1a7f37", "bold green"),  # kept: the new incumbent
    Status("rejected", "#6e7781", "yellow"),  # scored, not kept
    Status("invalid", "#9a6700", "magenta"),  # the reply could not be used: never trained
    Status("failed", "#cf222e", "red"),  # training broke (error, timeout, NaN, out of memory)
    Status("pruned", "#bc4c00", "dim yellow"),  # stopped early, clearly lost
    Status("cached", "#0969da", "cyan"),  # scored from the results cache, not kept
)
STATUSES = tuple(s.name for s in ATTEMPT_STATUSES)
STATUS_COLOURS = {s.name: s.colour for s in ATTEMPT_STATUSES}
NOT_ACCEPTED = tuple(s for s in STATUSES if s != "accepted")
# Not a journal status: how an expert sees a candidate of the current round still training.
PENDING = "pending"
# The fields every journal record has, in this order; anything else goes into ``extras``.
RECORD_FIELDS = (
    "iteration",
    "block",
    "status",
    "metric",
    "incumbent_metric",
    "spec_sha256",
    "diff",
    "rationale",
    "expert",
    "tokens",
    "cost_usd",
    "seconds",
)
BASELINE = "baseline"  # the block name of iteration 0, the run of the starting spec


class JournalError(Exception):
    """A run directory that cannot be used (missing, or not a run directory)."""


def sha256_text(text: str) -> str:
    """The hex sha256 of text encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` all at once: a reader sees the old or the new file, never
    half of one (write a temporary file beside it, fsync, rename over)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode: int | None = None
    with contextlib.suppress(FileNotFoundError):
        mode = path.stat().st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is on disk.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_json(path: Path, value: Any) -> None:
    """``atomic_write_text`` of an indented JSON document."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


# ---------------------------------------------------------------- records


@dataclass
class Record:
    """One finished attempt (iteration 0 is the baseline run of the starting spec).

    ``metric`` is the mean validation score over the seeds (None when no run finished);
    ``extras`` holds what else the loop keeps: ``move``, ``seeds``, ``metrics`` (one per
    seed), ``candidate`` (its folder, relative to the run), ``reason``, ``feedback``...
    """

    iteration: int
    block: str
    status: str
    metric: float | None
    incumbent_metric: float | None
    spec_sha256: str
    diff: str = ""
    rationale: str = ""
    expert: str = ""
    tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown attempt status {self.status!r}")

    @property
    def move(self) -> str:
        return str(self.extras.get("move", ""))

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    def to_json(self) -> dict[str, Any]:
        """The record as one JSON object: the fixed fields first, then the extras."""
        value: dict[str, Any] = {name: getattr(self, name) for name in RECORD_FIELDS}
        for key, extra in self.extras.items():
            if key not in value:
                value[key] = extra
        return value

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Record:
        """A record from its JSON object; missing optional fields take their defaults.

        Raises ValueError naming the field when one has the wrong type (a hand-edited or
        foreign journal), so that no reader ever sees a score that is not a number.
        """
        if not isinstance(value, Mapping):
            raise ValueError("not a JSON object")
        known = {name: value[name] for name in RECORD_FIELDS if name in value}
        for name in ("iteration", "block", "status", "metric", "incumbent_metric", "spec_sha256"):
            if name not in known:
                raise ValueError(f"no {name}")
        for name, kinds in _FIELD_TYPES.items():
            if name in known and not _has_type(known[name], kinds):
                raise ValueError(f"{name} is not {_TYPE_WORDS[kinds]}")
        extras = {k: v for k, v in value.items() if k not in RECORD_FIELDS}
        return cls(**known, extras=extras)


_NUMBER, _OPTIONAL_NUMBER, _TEXT, _WHOLE = "number", "number or null", "text", "whole number"
_TYPE_WORDS = {
    _NUMBER: "a number",
    _OPTIONAL_NUMBER: "a number or null",
    _TEXT: "text",
    _WHOLE: "a whole number",
}
_FIELD_TYPES = {
    "iteration": _WHOLE,
    "block": _TEXT,
    "status": _TEXT,
    "metric": _OPTIONAL_NUMBER,
    "incumbent_metric": _OPTIONAL_NUMBER,
    "spec_sha256": _TEXT,
    "diff": _TEXT,
    "rationale": _TEXT,
    "expert": _TEXT,
    "tokens": _WHOLE,
    "cost_usd": _NUMBER,
    "seconds": _NUMBER,
}


def _has_type(value: Any, kind: str) -> bool:
    if kind == _TEXT:
        return isinstance(value, str)
    if kind == _OPTIONAL_NUMBER and value is None:
        return True
    # bool is an int subclass in Python; true/false in a score field is a writer's bug.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    # NaN stays a number: a record the loop wrote must read back, whatever its score.
    return isinstance(value, int) if kind == _WHOLE else True


@dataclass(frozen=True)
class JournalScan:
    """What a journal file holds: its usable records in file order, and a note for each line
    that was skipped (``line 9 of journal.jsonl is incomplete ...``)."""

    records: list[Record]
    notes: list[str]


def scan_journal(path: Path) -> JournalScan:
    """The one reader of journal files: every complete record, and why any line was skipped.

    A last line without its newline is what a kill mid-write leaves: that attempt did not
    finish, and it is skipped. A bad line elsewhere (not JSON, not a record) is skipped too,
    since the rest of the run is still worth reading.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return JournalScan([], [])
    records: list[Record] = []
    notes: list[str] = []
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        if number == len(lines):  # after the last newline: a torn write, never a record
            notes.append(
                f"line {number} of {path.name} is incomplete (the run stopped while writing "
                "it) and was skipped"
            )
            continue
        try:
            value = json.loads(raw.decode("utf-8"))
        except ValueError:
            notes.append(f"line {number} of {path.name} is not JSON and was skipped")
            continue
        try:
            records.append(Record.from_json(value))
        except (ValueError, TypeError) as exc:
            notes.append(f"line {number} of {path.name} is not a record ({exc}) and was skipped")
    return JournalScan(records, notes)


def read_journal(path: Path) -> list[Record]:
    """Every complete record in a journal file, in file order (see ``scan_journal``)."""
    return scan_journal(path).records


# ---------------------------------------------------------------- the run directory


def runs_root(spec_path: Path) -> Path:
    """``<spec>.improve/``: where a spec's runs and its results cache live."""
    return spec_path.parent / f"{spec_path.stem}.improve"


def new_run_id(root: Path) -> str:
    """A fresh, sortable run id: the local time, with a suffix when two start in one second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = stamp
    n = 2
    while (root / candidate).exists():
        candidate = f"{stamp}-{n}"
        n += 1
    return candidate


class RunDir:
    """One run's folder: journal, state, candidates and the best spec."""

    def __init__(self, path: Path) -> None:
        self.path = path

    # ------------------------------------------------------------ creating and opening

    @classmethod
    def create(cls, path: Path, start_text: str) -> RunDir:
        """A new run folder at ``path`` holding the starting spec."""
        if path.exists() and any(path.iterdir()):
            raise JournalError(f"{path} already exists and is not empty; choose another --run-dir")
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        # Keep runs and the cache out of `git status` unless the user asks for them.
        ignore = path.parent / ".gitignore"
        if path.parent.name.endswith(".improve") and not ignore.exists():
            with contextlib.suppress(OSError):
                ignore.write_text("# written by improve: run folders and the results cache\n*\n")
        atomic_write_text(run.start_spec, start_text)
        run.candidates.mkdir(exist_ok=True)
        return run

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """An existing run folder, for ``--resume``."""
        run = cls(path)
        if not path.is_dir():
            raise JournalError(f"{path} is not a run directory (it does not exist)")
        if not run.state_path.is_file() or not run.start_spec.is_file():
            raise JournalError(
                f"{path} is not a run directory of `improve refine` (no state.json or start.imp)"
            )
        return run

    # ------------------------------------------------------------ paths

    @property
    def start_spec(self) -> Path:
        return self.path / "start.imp"

    @property
    def journal_path(self) -> Path:
        return self.path / "journal.jsonl"

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    @property
    def best_spec(self) -> Path:
        return self.path / "best.imp"

    @property
    def final_path(self) -> Path:
        return self.path / "final.json"

    @property
    def candidates(self) -> Path:
        return self.path / "candidates"

    def candidate_dir(self, iteration: int) -> Path:
        return self.candidates / str(iteration)

    # ------------------------------------------------------------ journal

    def append(self, record: Record) -> None:
        """Append one record and make it durable before returning."""
        line = json.dumps(record.to_json(), ensure_ascii=False) + "\n"
        with open(self.journal_path, "ab") as handle:
            # A torn line left by an earlier kill must not swallow this record.
            if handle.tell() > 0 and not _ends_with_newline(self.journal_path):
                handle.write(b"\n")
            handle.write(line.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())

    def records(self) -> list[Record]:
        """The finished attempts, in iteration order; the first record of an iteration wins."""
        return self.read().records

    def read(self) -> JournalScan:
        """``records()`` and the notes about skipped lines (for readers that show them)."""
        scan = scan_journal(self.journal_path)
        seen: dict[int, Record] = {}
        for record in scan.records:
            seen.setdefault(record.iteration, record)
        return JournalScan([seen[i] for i in sorted(seen)], scan.notes)

    # ------------------------------------------------------------ state, best, final

    def write_state(self, state: Mapping[str, Any]) -> None:
        atomic_write_json(self.state_path, dict(state))

    def read_state(self) -> dict[str, Any]:
        try:
            value = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise JournalError(f"cannot read {self.state_path}: {exc}") from None
        if not isinstance(value, dict):
            raise JournalError(f"{self.state_path} does not hold a JSON object")
        return value

    def write_best(self, text: str) -> None:
        atomic_write_text(self.best_spec, text)

    def write_final(self, value: Mapping[str, Any]) -> None:
        atomic_write_json(self.final_path, dict(value))


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def iter_runs(spec_path: Path) -> Iterator[Path]:
    """The run folders of a spec, oldest first."""
    root = runs_root(spec_path)
    if not root.is_dir():
        return
    for child in sorted(root.iterdir()):
        if child.is_dir() and (child / "state.json").is_file():
            yield child


# ---------------------------------------------------------------- results cache


class ResultCache:
    """Metrics of finished runs, keyed by the compiled script, the seed and the split.

    The script embeds every hyperparameter, so the same script and seed train the same model:
    a repeated proposal is answered from here instead of training again. One small JSON file
    per entry, written atomically, so concurrent runs and kills cannot corrupt it.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def key(script: str, seed: int | None, split: str, **overrides: object) -> str:
        """The entry's name: sha256 of the script, the seed, the split and any overrides."""
        parts = [sha256_text(script), f"seed={seed}", f"split={split}"]
        parts += [f"{k}={v}" for k, v in sorted(overrides.items()) if v is not None]
        return sha256_text("\n".join(parts))

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached metrics, or None."""
        try:
            value = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def put(self, key: str, metrics: Mapping[str, Any]) -> None:
        with contextlib.suppress(OSError):  # a cache that cannot be written only costs time
            atomic_write_json(self._path(key), dict(metrics))

    def _script_path(self, spec_text: str, spec_path: str, fingerprint: str) -> Path:
        key = sha256_text("\n".join([sha256_text(spec_text), spec_path, fingerprint]))
        return self.root / "scripts" / key[:2] / f"{key}.py"

    def script(self, spec_text: str, spec_path: str, fingerprint: str) -> str | None:
        """The script compiled (and checked) earlier from this exact spec text, or None."""
        try:
            return self._script_path(spec_text, spec_path, fingerprint).read_text("utf-8")
        except OSError:
            return None

    def put_script(self, spec_text: str, spec_path: str, fingerprint: str, script: str) -> None:
        with contextlib.suppress(OSError):
            atomic_write_text(self._script_path(spec_text, spec_path, fingerprint), script)
