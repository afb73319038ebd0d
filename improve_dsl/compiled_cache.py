"""What ``improve run`` compiled before, kept on disk so a second run compiles nothing.

Two kinds of entry, in the user cache folder (``$XDG_CACHE_HOME/improve/compiled``):

- a **script**, keyed by the spec's bytes, the path it was given as (a relative image folder
  is read from the spec's folder, so the path is part of the script) and
  ``paths.compiler_fingerprint`` (the package's version, its sources, templates and grammar);
- a **model check** (``check.check_model``: the model built on the meta device), keyed by
  the script's text, torch's version and the dataset it was checked against (for an image
  folder: where it is and what it holds at its top, which decide the class count and whether
  it exists at all).

A hit on both means the command imports neither lark, Jinja, black nor torch. Anything
unreadable is a miss: the spec is compiled again, as it would have been without a cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .journal import atomic_write_text
from .paths import compiler_fingerprint, user_cache_dir

# Entries kept; the oldest go first once there are more (each is a script of tens of KB).
MAX_ENTRIES = 400


@dataclass(frozen=True)
class CompiledRun:
    """What a run needs of a compiled spec, and whether each part came from the cache."""

    script: str
    pipeline: str  # the pipeline's name
    script_cached: bool
    check_cached: bool


def compile_for_run(path: Path) -> CompiledRun:
    """The checked script of the spec at ``path``, from the cache where it can be.

    Raises what ``compiler.compile_spec`` and ``check.check_model`` raise (a
    ``DiagnosticError`` for a problem in the spec), only on a miss.
    """
    folder = _cache_folder()
    try:
        data = path.read_bytes()
    except OSError:
        data = None  # the compiler says why, as a diagnostic
    script_key = _script_key(path, data) if data is not None else None
    entry = _read(folder, script_key)
    if entry is not None and _data_stamp(entry.get("data_root")) != entry.get("data_stamp"):
        entry = None  # the image folder moved, vanished or gained a class
    compiled: Any = None
    if entry is None:
        from .compiler import compile_spec

        compiled = compile_spec(path, check_shapes=False)
        root = compiled.spec.data.source.params.get("root")
        root = root if compiled.spec.data.source.name == "image_folder" else None
        entry = {
            "script": compiled.script,
            "pipeline": compiled.spec.pipeline.name,
            "data_root": root,
            "data_stamp": _data_stamp(root),
        }
        with contextlib.suppress(OSError):
            if script_key is not None and path.read_bytes() == data:  # unchanged meanwhile
                _write(folder, script_key, entry)
    script, pipeline = str(entry["script"]), str(entry["pipeline"])
    check_key = _digest("check", script, _torch_stamp(), json.dumps(entry["data_stamp"]))
    check_cached = _read(folder, check_key) is not None
    if not check_cached:
        from .check import check_model

        if compiled is None:
            from .compiler import compile_spec

            compiled = compile_spec(path, check_shapes=False)
        report = check_model(compiled.spec, compiled.ast, script)
        found = {"params": report.params, "flops": report.flops}
        _write(folder, check_key, {**found, "input_shape": list(report.input_shape)})
    return CompiledRun(script, pipeline, script_cached=compiled is None, check_cached=check_cached)


def _script_key(path: Path, data: bytes) -> str:
    return _digest("script", str(path), compiler_fingerprint(), hashlib.sha256(data).hexdigest())


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _torch_stamp() -> str:
    """Torch's version file, read without importing torch (a new torch: checks again)."""
    try:
        spec = importlib.util.find_spec("torch")
        if spec is None or not spec.origin:
            return "no torch"
        return (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    except (OSError, ImportError, ValueError):
        return "no torch"


def _data_stamp(root: object) -> list[Any] | None:
    """Where an image folder is and what its top holds (and its ``train/``'s): its class
    folders. None for a spec without one."""
    if not isinstance(root, str):
        return None
    where = os.path.abspath(root)
    try:
        names = sorted(os.listdir(where))
    except OSError:
        return [where, None]
    inner: list[str] = []
    if "train" in names:
        with contextlib.suppress(OSError):
            inner = sorted(os.listdir(os.path.join(where, "train")))
    return [where, names, inner]


def _cache_folder() -> Path | None:
    base = user_cache_dir()
    return None if base is None else base / "compiled"


def _read(folder: Path | None, key: str | None) -> dict[str, Any] | None:
    if folder is None or key is None:
        return None
    try:
        value = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write(folder: Path | None, key: str, entry: dict[str, Any]) -> None:
    """Keep ``entry`` (quietly not, when the folder is not writable); drop the oldest."""
    if folder is None:
        return
    with contextlib.suppress(OSError):
        atomic_write_text(folder / f"{key}.json", json.dumps(entry))
        files = sorted(folder.glob("*.json"), key=lambda f: f.stat().st_mtime)
        for old in files[:-MAX_ENTRIES]:
            old.unlink()
