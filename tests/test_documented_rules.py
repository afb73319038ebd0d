"""Rules written once in the code and quoted by the docs and the help: the quotes cannot
drift, because these tests read both."""

from __future__ import annotations

from pathlib import Path

import pytest

from improve_dsl.cli import refining
from improve_dsl.refine import decide, loop
from improve_dsl.refine.proposing import MAX_RETRIES

ROOT = Path(__file__).resolve().parent.parent


def _words(text: str) -> str:
    """Text with its line breaks and runs of spaces as single spaces (Markdown and help text
    wrap the same words differently)."""
    return " ".join(text.split())


@pytest.mark.parametrize("doc", ["README.md", "docs/architecture.md"])
def test_the_docs_quote_the_keep_rule_word_for_word(doc: str) -> None:
    assert _words(decide.KEEP_RULE) in _words((ROOT / doc).read_text(encoding="utf-8"))


def test_refine_help_prints_the_keep_rule() -> None:
    assert _words(decide.KEEP_RULE) in _words(refining.REFINE_DESCRIPTION)


def test_the_refine_package_and_loop_point_to_the_keep_rule() -> None:
    import improve_dsl.refine

    assert "KEEP_RULE" in (improve_dsl.refine.__doc__ or "")
    assert "KEEP_RULE" in (loop.__doc__ or "")


def test_the_retry_count_written_in_the_docs_is_max_retries() -> None:
    readme = _words((ROOT / "README.md").read_text(encoding="utf-8"))
    assert f"up to {MAX_RETRIES} retries" in readme
    assert f"up to {MAX_RETRIES} times" in _words(refining.REFINE_DESCRIPTION)
    assert "MAX_RETRIES" in (loop.__doc__ or "")
