"""The language verbs: check, fmt, docs, grammar, diff and compile. Each ``add_VERB`` declares
the verb's flags; the ``cmd_VERB`` below it reads them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import registry
from ..diagnostics import DiagnosticError
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError, Verbs, err


def add_check(verbs: Verbs) -> None:
    p = verbs.add_parser(
        "check",
        help="check specs and print diagnostics",
        description="Parse and validate specs; print every diagnostic. Exit 0 "
        "when all are valid, 2 otherwise.",
    )
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also build the model on the meta device and report parameters and FLOPs per image",
    )
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    """Check specs; print every diagnostic."""
    from ..check import check_data_folder
    from ..syntax import parse, read_spec_text
    from ..validate import validate

    status = EXIT_OK
    for path in args.specs:
        try:
            if args.verbose:  # parse, validate, render and build the model on `meta`
                from ..compiler import compile_spec

                summary = compile_spec(Path(path)).summary()
            else:
                ast = parse(read_spec_text(Path(path)), path)
                spec = validate(ast)
                check_data_folder(spec, ast)
                summary = f"pipeline '{spec.pipeline.name}'"
        except DiagnosticError as exc:
            print(exc.render(), file=sys.stderr)
            status = EXIT_USAGE
            continue
        print(f"{path}: ok ({summary})")
    return status


def add_fmt(verbs: Verbs) -> None:
    p = verbs.add_parser(
        "fmt",
        help="format specs canonically (comments kept)",
        description="Rewrite specs in canonical layout; comments are kept and "
        "formatting twice changes nothing.",
    )
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument(
        "--check",
        action="store_true",
        help="change nothing; print a diff and exit 1 when a spec is not formatted",
    )
    p.set_defaults(func=cmd_fmt)


def cmd_fmt(args: argparse.Namespace) -> int:
    """Rewrite specs in canonical layout, or with --check report which would change."""
    import difflib

    from ..fmt import format_text
    from ..journal import atomic_write_text
    from ..syntax import read_spec_text

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
            atomic_write_text(path, formatted)
            print(f"{name}: formatted", file=sys.stderr)
    return status


def add_docs(verbs: Verbs) -> None:
    p = verbs.add_parser(
        "docs",
        help="reference of blocks, fields and ops",
        description="Print the language reference from the registry, or the "
        "entry for NAME (a block, `block.field`, or an op such as sgd).",
    )
    p.add_argument("name", nargs="?", metavar="NAME")
    p.set_defaults(func=cmd_docs)


def cmd_docs(args: argparse.Namespace) -> int:
    """Print the language reference, or the entry for one name."""
    from .. import docs

    if args.name is None:
        print(docs.overview(), end="")
        return EXIT_OK
    text = docs.lookup(args.name)
    if text is None:
        hint = docs.suggestion(args.name)
        raise UsageError(
            f"no block, field or op called '{args.name}'"
            + (f"; {hint}" if hint else "; run `improve docs` for the whole reference")
        )
    print(text, end="")
    return EXIT_OK


def add_grammar(verbs: Verbs) -> None:
    p = verbs.add_parser(
        "grammar",
        help="the grammar an LLM is held to when rewriting a block",
        description="Print the reply grammar for one refinable block (or all of "
        "them, in order, for all-at-once rewriting): closed vocabulary, locked "
        "fields absent. `improve refine` sends the Lark form to OpenAI (a custom tool, "
        "GPT-5 models) and the GBNF form to vLLM, SGLang and llama.cpp.",
    )
    p.add_argument(
        "--block",
        choices=registry.REFINABLE_BLOCKS,
        help="the block (default: every refinable block)",
    )
    p.add_argument(
        "--format",
        choices=["lark", "gbnf"],
        default="lark",
        help="lark (OpenAI's custom tools with GPT-5; vLLM takes it too) or gbnf (vLLM, "
        "SGLang, llama.cpp); default lark",
    )
    p.set_defaults(func=cmd_grammar)


def cmd_grammar(args: argparse.Namespace) -> int:
    """Print the grammar an LLM is held to when rewriting a block (or all refinable blocks)."""
    from ..grammar_export import blocks_grammar

    blocks = [args.block] if args.block else list(registry.REFINABLE_BLOCKS)
    try:
        print(blocks_grammar(blocks, args.format), end="")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return EXIT_OK


def add_diff(verbs: Verbs) -> None:
    p = verbs.add_parser(
        "diff",
        help="which blocks differ between two specs, and how",
        description="Block-level semantic diff; exit 0 when the specs agree, 1 "
        "when they differ, 2 when one does not parse.",
    )
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.set_defaults(func=cmd_diff)


def cmd_diff(args: argparse.Namespace) -> int:
    """Say which blocks differ between two specs, and how. Exit 0 when none differ, 1 otherwise."""
    from ..diff import block_diff, validation_problem
    from ..syntax import read_spec_text

    texts = [read_spec_text(Path(p)) for p in (args.a, args.b)]
    changes = block_diff(texts[0], texts[1], args.a, args.b)
    for path, text in zip((args.a, args.b), texts, strict=True):
        problem = validation_problem(text, path)
        if problem is not None:
            # Still diffed (as written), but a reader must not take it for a valid pipeline.
            print(
                f"improve: warning: {path} does not validate ({problem}); run `improve check "
                f"{path}`. The diff compares the text as written.",
                file=sys.stderr,
            )
    if not changes:
        print("no differences")
        return EXIT_OK
    for change in changes:
        print(change.describe())
    return EXIT_FAILED


def add_compile(verbs: Verbs) -> None:
    p = verbs.add_parser(
        "compile",
        help="compile a spec to a standalone PyTorch training script",
        description="Check SPEC (diagnostics: exit 2) and write the training "
        "script it compiles to: one black-formatted file that needs only torch, "
        "torchvision and numpy. Run it with `python train.py --help`. Compiling does not "
        "import torch; --check-model (or `improve check -v`) also builds the model.",
    )
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("-o", "--output", metavar="FILE", help="write the script here (default: stdout)")
    checks = p.add_mutually_exclusive_group()
    checks.add_argument(
        "--check-model",
        action="store_true",
        help="also build the model on the meta device for the dataset's images (imports "
        "torch: a few seconds) and report its parameters and FLOPs; `improve run` and "
        "`improve refine` always do",
    )
    checks.add_argument(
        "--no-check",
        action="store_true",
        help="skip the dataset check too (e.g. when the dataset is not on this machine)",
    )
    p.set_defaults(func=cmd_compile)


def cmd_compile(args: argparse.Namespace) -> int:
    """Compile a spec to one standalone training script, written to -o FILE or stdout."""
    from ..code_literals import RenderError
    from ..compiler import compile_spec

    try:
        compiled = compile_spec(
            Path(args.spec), check_shapes=args.check_model, check_data=not args.no_check
        )
    except RenderError as exc:  # a defect in improve's templates, not in the spec
        err(f"internal error while rendering the script: {exc}")
        return EXIT_FAILED
    if args.output is None:
        sys.stdout.write(compiled.script)
        return EXIT_OK
    out = Path(args.output)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(compiled.script, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(f"wrote {out} ({compiled.summary()})", file=sys.stderr)
    return EXIT_OK


def add_lsp(verbs: Verbs) -> None:
    p = verbs.add_parser(
        "lsp",
        help="language server for editors (stdio)",
        description="Serve the Language Server Protocol on stdin/stdout: diagnostics as you "
        "type, hover, completion, formatting and document symbols for .imp specs. Editors "
        "start it themselves (see the README). Needs pip install 'improve-dsl[lsp]'.",
    )
    p.set_defaults(func=cmd_lsp)


def cmd_lsp(args: argparse.Namespace) -> int:
    """Serve the language server protocol on stdin/stdout for an editor."""
    from ..lsp import LspUnavailable, serve

    try:
        serve()
    except LspUnavailable as exc:
        raise UsageError(str(exc)) from None
    return EXIT_OK
