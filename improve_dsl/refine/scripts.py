"""A spec's training script for refinement: compiled and checked once, then read from the cache."""

from __future__ import annotations

from pathlib import Path

from ..journal import ResultCache


def compile_script(text: str, path: str, cache: ResultCache | None = None) -> str:
    """The training script of a spec, after the compile-time checks.

    With a cache, a spec text compiled before (same compiler fingerprint) is not compiled
    again: a repeated proposal then costs a file read, not a render and a model check."""
    from ..compiler import compile_spec
    from ..paths import compiler_fingerprint as fingerprint

    if cache is not None:
        known = cache.script(text, path, fingerprint())
        if known is not None:
            return known
    script = str(compile_spec(Path(path), text=text, check_shapes=True).script)
    if cache is not None:
        cache.put_script(text, path, fingerprint(), script)
    return script
