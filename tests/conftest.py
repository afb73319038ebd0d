"""Shared pytest options and fixtures."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # A job started in the background by a non-interactive shell (nohup, some CI runners)
    # inherits SIGINT ignored, and so would every process the tests start: the Ctrl-C tests
    # would then test nothing. Handling it here gives children the default again at exec.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The user cache ($XDG_CACHE_HOME: image-folder decode caches, the parser cache) is a
    folder of this test session, so tests neither read nor fill the real one."""
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user-cache")))
    yield
    patch.undo()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/ from the current templates instead of comparing with it",
    )


# ---------------------------------------------------------------- the shipped example specs
#
# The tests check the example specs as shipped (goldens, fmt, the weak digits start). The
# README's first command, `improve refine specs/digits.imp`, writes its best spec back into
# specs/digits.imp, so in a checkout where that has run, the committed examples are put in
# place for the session and the refined ones restored afterwards. They are first copied to
# `specs/<name>.imp.refined`, so nothing is lost even if the session is killed.

ROOT = Path(__file__).resolve().parent.parent
_SWAPPED: list[tuple[Path, Path]] = []


def _committed(spec: Path) -> bytes | None:
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"HEAD:{spec.relative_to(ROOT).as_posix()}"],
        capture_output=True,
        check=False,
    )
    return proc.stdout if proc.returncode == 0 else None


def pytest_sessionstart(session: pytest.Session) -> None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return
    for spec in sorted((ROOT / "specs").glob("*.imp")):
        shipped = _committed(spec)
        if shipped is None or shipped == spec.read_bytes():
            continue
        backup = spec.with_name(spec.name + ".refined")
        shutil.copy2(spec, backup)
        spec.write_bytes(shipped)
        _SWAPPED.append((spec, backup))
        print(
            f"\nconftest: {spec.relative_to(ROOT)} differs from the shipped example (refined?); "
            f"testing the shipped one, yours is kept in {backup.relative_to(ROOT)} and put back "
            "after the tests",
            file=sys.stderr,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for spec, backup in _SWAPPED:
        shutil.copy2(backup, spec)
        backup.unlink()
