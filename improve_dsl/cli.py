"""The ``improve`` command line. Each verb is a small function; stages do the work.

Exit codes: 0 success, 1 a run failed, 2 the user's input is wrong, 130 interrupted.
Heavy imports (torch, openai) happen inside the verbs that need them, so ``check`` and
``fmt`` start fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .diagnostics import DiagnosticError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A problem with the command line or the user's files: printed, exit 2."""


def _err(message: str) -> None:
    print(f"improve: error: {message}", file=sys.stderr)


# ---------------------------------------------------------------- language verbs


def cmd_check(args: argparse.Namespace) -> int:
    """Check specs; print every diagnostic."""
    from .validate import load

    status = EXIT_OK
    for path in args.specs:
        try:
            spec = load(path)
        except DiagnosticError as exc:
            print(exc.render(), file=sys.stderr)
            status = EXIT_USAGE
            continue
        if args.verbose:
            from .compiler import compile_spec

            try:
                compiled = compile_spec(Path(path))
            except DiagnosticError as exc:
                print(exc.render(), file=sys.stderr)
                status = EXIT_USAGE
                continue
            print(f"{path}: ok ({compiled.summary()})")
        else:
            print(f"{path}: ok (pipeline '{spec.pipeline.name}')")
    return status


def cmd_fmt(args: argparse.Namespace) -> int:
    """Rewrite specs in canonical layout, or with --check report which would change."""
    import difflib

    from .fmt import format_text
    from .syntax import read_spec_text

    status = EXIT_OK
    for name in args.specs:
        path = Path(name)
        try:
            text = read_spec_text(path)
            formatted = format_text(text, name)
        except DiagnosticError as exc:
            print(exc.render(), file=sys.stderr)
            status = EXIT_USAGE
            continue
        if formatted == text:
            continue
        if args.check:
            diff = difflib.unified_diff(
                text.splitlines(keepends=True),
                formatted.splitlines(keepends=True),
                f"{name} (current)",
                f"{name} (formatted)",
            )
            sys.stdout.writelines(diff)
            print(f"{name}: would be reformatted", file=sys.stderr)
            status = max(status, EXIT_FAILED)
        else:
            _write_atomic(path, formatted)
            print(f"{name}: formatted", file=sys.stderr)
    return status


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def cmd_docs(args: argparse.Namespace) -> int:
    """Print the language reference, or the entry for one name."""
    from . import docs

    if args.name is None:
        print(docs.overview(), end="")
        return EXIT_OK
    text = docs.lookup(args.name)
    if text is None:
        hint = docs.suggestion(args.name)
        raise UsageError(f"no block, field or op called '{args.name}'" + (f"; {hint}" if hint
                         else "; run `improve docs` for the whole reference"))
    print(text, end="")
    return EXIT_OK


def cmd_grammar(args: argparse.Namespace) -> int:
    """Print the grammar an LLM is held to when rewriting a block (or all refinable blocks)."""
    from . import registry
    from .grammar_export import blocks_grammar

    blocks = [args.block] if args.block else list(registry.REFINABLE_BLOCKS)
    try:
        print(blocks_grammar(blocks, args.format), end="")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    """Say which blocks differ between two specs, and how. Exit 0 when none differ, 1 otherwise."""
    from .diff import block_diff
    from .syntax import read_spec_text

    texts = [read_spec_text(Path(p)) for p in (args.a, args.b)]
    changes = block_diff(texts[0], texts[1], args.a, args.b)
    if not changes:
        print("no differences")
        return EXIT_OK
    for change in changes:
        print(change.describe())
    return EXIT_FAILED


def cmd_report(args: argparse.Namespace) -> int:
    """Write the HTML report of a refinement run, and its plot as a PNG beside it."""
    from .report import ReportError, write_report

    out = Path(args.output) if args.output else None
    try:
        paths = write_report(Path(args.run_dir), out)
    except ReportError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {paths.html} (plot: {paths.png})")
    return EXIT_OK


# (further verbs are defined below and registered in build_parser)

# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="improve",
        description="A language for image-classification training pipelines: check, format, "
        "compile and run specs, and improve them by Iterative Refinement.",
        epilog="Exit codes: 0 success, 1 a run failed, 2 bad input, 130 interrupted. "
        "Run `improve VERB --help` for each verb.",
    )
    parser.add_argument("--version", action="version", version=f"improve {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    p = verbs.add_parser("check", help="check specs and print diagnostics",
                         description="Parse and validate specs; print every diagnostic. Exit 0 "
                         "when all are valid, 2 otherwise.")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also build the model on the meta device and report parameters and "
                   "FLOPs per image")
    p.set_defaults(func=cmd_check)

    p = verbs.add_parser("fmt", help="format specs canonically (comments kept)",
                         description="Rewrite specs in canonical layout; comments are kept and "
                         "formatting twice changes nothing.")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--check", action="store_true",
                   help="change nothing; print a diff and exit 1 when a spec is not formatted")
    p.set_defaults(func=cmd_fmt)

    p = verbs.add_parser("docs", help="reference of blocks, fields and ops",
                         description="Print the language reference from the registry, or the "
                         "entry for NAME (a block, `block.field`, or an op such as sgd).")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.set_defaults(func=cmd_docs)

    p = verbs.add_parser("grammar", help="the grammar an LLM is held to when rewriting a block",
                         description="Print the reply grammar for one refinable block (or all of "
                         "them, in order, for all-at-once rewriting): closed vocabulary, locked "
                         "fields absent.")
    p.add_argument("--block", choices=["data", "augment", "model", "train", "eval"],
                   help="the block (default: every refinable block)")
    p.add_argument("--format", choices=["lark", "gbnf"], default="lark",
                   help="lark (OpenAI custom tools, vLLM) or gbnf (llama.cpp); default lark")
    p.set_defaults(func=cmd_grammar)

    p = verbs.add_parser("diff", help="which blocks differ between two specs, and how",
                         description="Block-level semantic diff; exit 0 when the specs agree, 1 "
                         "when they differ, 2 when one does not parse.")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.set_defaults(func=cmd_diff)

    p = verbs.add_parser("report", help="HTML report of a refinement run",
                         description="Write one self-contained HTML page for a run directory of "
                         "`improve refine`: the metric per iteration, each attempt's diff, "
                         "rationale, time and cost, and the final test score when present. The "
                         "plot is also saved as a PNG next to the page.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="where to write the page (default: RUN_DIR/report.html)")
    p.set_defaults(func=cmd_report)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
        _err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
