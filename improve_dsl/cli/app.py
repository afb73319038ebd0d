"""The ``improve`` command line: the top-level parser and ``main``.

Each verb family lives in its own module, with every verb's flags declared beside the
function that reads them: ``language`` (check, fmt, docs, grammar, diff, compile, lsp),
``training`` (run, evaluate, predict, export, init) and ``refining`` (refine, report). Heavy
imports (torch, openai, pygls, mlflow) happen inside the verbs that need them, so ``check``
and ``fmt`` start fast.

Exit codes: 0 success, 1 a run failed, 2 the user's input is wrong, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, cast

from .. import __version__
from ..diagnostics import DiagnosticError
from . import language, learning, refining, training
from .common import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError, Verbs, err

# The verbs in the order `improve --help` lists them.
VERBS: tuple[Callable[[Verbs], None], ...] = (
    language.add_check,
    language.add_fmt,
    language.add_docs,
    language.add_grammar,
    language.add_diff,
    refining.add_report,
    language.add_compile,
    training.add_run,
    training.add_evaluate,
    training.add_predict,
    training.add_export,
    training.add_init,
    refining.add_refine,
    learning.add_ablate,
    learning.add_history,
    language.add_lsp,
)


class Parser(argparse.ArgumentParser):
    """argparse with one error prefix for every verb: ``improve: error: ...`` (argparse's
    own would say ``improve refine: error:`` for a verb's flags, ``improve:`` elsewhere)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        err(message)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every verb; each verb's parser names its handler as ``func``."""
    parser = Parser(
        prog="improve",
        description="A language for image-classification training pipelines: check, format, "
        "compile and run specs, and improve them by Iterative Refinement.",
        epilog="Exit codes: 0 success, 1 a run failed, 2 bad input, 130 interrupted. "
        "Run `improve VERB --help` for each verb.",
    )
    parser.add_argument("--version", action="version", version=f"improve {__version__}")
    # Every verb's parser is a Parser too (its errors carry the same prefix).
    verbs = cast(Verbs, parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser))
    for add_verb in VERBS:
        add_verb(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the verb ``argv`` names and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return func(args)
    except DiagnosticError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        err("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
