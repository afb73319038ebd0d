"""Shared pytest options and fixtures."""

from __future__ import annotations

import signal
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


# ---------------------------------------------------------------- one trained model
#
# `improve predict` and `improve export` need a finished run; one tiny digits CNN, trained
# once per session by the real runner, serves both.

TINY_DIGITS_SPEC = """\
pipeline tiny_digits {
  metric = accuracy
  seed = 0
}

data {
  source = digits()
  validation = holdout(fraction = 0.2)
  batch_size = 32
}

augment {
  ops = []
}

model {
  arch = cnn(channels = [16, 32])
}

train {
  epochs = 6
  optimizer = adamw(lr = 0.003)
  schedule = constant()
  loss = cross_entropy()
}

eval {
  tta = []
}
"""


@pytest.fixture(scope="session")
def digits_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a finished `improve run` of a tiny digits CNN (model.pt, train.py)."""
    from improve_dsl.compiler import compile_spec
    from improve_dsl.run import run_script

    work = tmp_path_factory.mktemp("digits run")
    spec = work / "tiny_digits.imp"
    spec.write_text(TINY_DIGITS_SPEC)
    out = work / "run"
    out.mkdir()
    (out / "train.py").write_text(compile_spec(spec).script)
    result = run_script(out / "train.py", out, device="cpu", threads=1)
    assert result.status == "ok", result.reason
    return out
