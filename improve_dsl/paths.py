"""The one place that knows where the grammar and the templates live, and our user cache
(and so the fingerprint of what decides a compiled script).

In a source checkout they sit at the repository root (``grammar/``, ``templates/``);
in an installed wheel they are packaged inside ``improve_dsl/`` under the same names.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (_PACKAGE_DIR / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"improve: the {name}/ folder is missing from the installation")


def grammar_dir() -> Path:
    """The folder holding ``imp.lark``."""
    return _find("grammar")


def templates_dir() -> Path:
    """The folder holding ``train.py.jinja`` and its partials."""
    return _find("templates")


def specs_dir() -> Path:
    """The folder of example specs (only in a source checkout or an sdist)."""
    return _find("specs")


def user_cache_dir() -> Path | None:
    """``$XDG_CACHE_HOME/improve`` (default ``~/.cache/improve``), private to the user.

    None when it cannot be made: callers then work without a cache.
    """
    try:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "improve"
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # RuntimeError: no home directory can be determined
        return None
    return path


def compile_cache_env() -> dict[str, str]:
    """Where torch.compile keeps what it compiled, for every training run improve starts:
    ``TORCHINDUCTOR_CACHE_DIR`` (``$XDG_CACHE_HOME/improve/inductor``) and
    ``TRITON_CACHE_DIR`` beside it, so that one candidate's compile is the next one's cache
    hit. Only the variables the user has not set; none without a user cache folder."""
    cache = user_cache_dir()
    if cache is None:
        return {}
    wanted = {
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "TRITON_CACHE_DIR": str(cache / "triton"),
    }
    return {name: value for name, value in wanted.items() if not os.environ.get(name)}


@functools.lru_cache(maxsize=1)
def compiler_fingerprint() -> str:
    """A hash of everything of ours that decides a compiled script besides the spec: the
    version, the package's sources, the templates and the grammar. Two compilations of one
    spec text with one fingerprint give the same script, so caches key by both."""
    from . import __version__

    digest = hashlib.sha256(__version__.encode())
    for root, pattern in ((templates_dir(), "*"), (grammar_dir(), "*"), (_PACKAGE_DIR, "*.py")):
        for file in sorted(root.rglob(pattern)):
            if file.is_file():
                digest.update(file.relative_to(root).as_posix().encode())
                digest.update(file.read_bytes())
    return digest.hexdigest()
