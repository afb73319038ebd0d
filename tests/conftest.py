"""Shared pytest options and fixtures."""

from __future__ import annotations

import signal
from collections.abc import Iterator

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
