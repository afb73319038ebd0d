"""Shared pytest options, fixtures and helpers.

Helpers the test modules share (import them with ``from conftest import ...``):
``improve_env`` and ``run_improve`` start the real ``improve`` in a subprocess (kept for the
one test per exit-code path, and for what needs a process: signals, Ctrl-C, a fresh import);
the ``improve`` fixture calls the same command line in-process, which costs no interpreter
start or torch import; ``load_script`` imports a generated training script as a module;
``slow_except`` keeps some cases of a parametrized test on the fast tier, all on the slow one.
"""

from __future__ import annotations

import fcntl
import importlib.util
import itertools
import os
import signal
import subprocess
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from improve_dsl.resident import stop_servers


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
    # `improve run` leaves a resident fork server behind: the session's own, short-lived,
    # and ended with the session (by the pid in its lock file), so none outlives the tests.
    runtime = tmp_path_factory.mktemp("runtime")
    patch.setenv("XDG_RUNTIME_DIR", str(runtime))
    patch.setenv("IMPROVE_FORK_SERVER_IDLE", "20")
    yield
    patch.undo()
    stop_servers(runtime / "improve")


@pytest.fixture(autouse=True)
def _evidence_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test gets its own user data folder ($XDG_DATA_HOME), so no refine in a test
    reads or fills the real evidence store (or another test's)."""
    patch = pytest.MonkeyPatch()
    data = tmp_path_factory.mktemp("user-data")
    patch.setenv("XDG_DATA_HOME", str(data))
    yield data
    patch.undo()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/ from the current templates instead of comparing with it",
    )


# ---------------------------------------------------------------- the two tiers


def slow_except(values: Sequence[Any], *fast: Any) -> list[Any]:
    """``values`` as ``parametrize`` arguments, all but ``fast`` marked slow: the fast tier
    keeps one case of each kind, the slow tier (CI) runs every case. A tuple is one case of
    several arguments."""
    missing = [value for value in fast if value not in values]
    assert not missing, f"not among the values: {missing}"
    slow = pytest.mark.slow
    return [
        v if v in fast else pytest.param(*(v if isinstance(v, tuple) else (v,)), marks=slow)
        for v in values
    ]


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
    """The folder of a finished `improve run` of a tiny digits CNN (model.pt, train.py), for
    reading only: trained once per session, by the first pytest-xdist worker that asks."""
    from improve_dsl.compiler import compile_spec
    from improve_dsl.run import run_script

    # Every worker's temporary folder is inside the session's (pytest-xdist's basetemp).
    base = tmp_path_factory.getbasetemp()
    work = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "digits run"
    work.mkdir(exist_ok=True)
    out = work / "run"
    with open(work / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the others wait for the first one's model
        if not (out / "model.pt").is_file():
            spec = work / "tiny_digits.imp"
            spec.write_text(TINY_DIGITS_SPEC)
            out.mkdir(exist_ok=True)
            (out / "train.py").write_text(compile_spec(spec).script)
            result = run_script(out / "train.py", out, device="cpu", threads=1)
            assert result.status == "ok", result.reason
    return out


# ---------------------------------------------------------------- running `improve`


def improve_env(**extra: str) -> dict[str, str]:
    """This environment without OpenAI settings (so the offline expert is the default), plus
    ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(extra)
    return env


def run_improve(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``improve ARGS`` in a real process (``python -m improve_dsl.cli``), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "improve_dsl.cli", *args],
        cwd=cwd,
        env=improve_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class CliResult:
    """What ``improve`` returned and printed, the same fields as ``CompletedProcess``."""

    returncode: int
    stdout: str
    stderr: str


ImproveCall = Callable[..., CliResult]


@pytest.fixture
def improve(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> ImproveCall:
    """``improve(*args, cwd=None, **env)``: the command line called in this process.

    ``cwd`` becomes the working folder and ``env`` is set for the call; OpenAI settings are
    removed, as for ``run_improve``.
    """
    from improve_dsl import cli

    def call(*args: str, cwd: Path | None = None, **env: str) -> CliResult:
        for key in [k for k in os.environ if k.startswith("OPENAI_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()  # drop what came before
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return call


# ---------------------------------------------------------------- generated scripts

_modules = itertools.count()


def load_script(script: str | Path) -> types.ModuleType:
    """Import a generated script (its text, or a file) as a module; its ``main`` does not run.

    The module is registered in ``sys.modules`` while it executes, as dataclasses look their
    module up there.
    """
    path = Path(script) if isinstance(script, Path) else None
    name = f"generated_train_{next(_modules)}"
    if path is not None:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        exec(compile(str(script), "train.py", "exec"), module.__dict__)
    finally:
        del sys.modules[name]
    return module
