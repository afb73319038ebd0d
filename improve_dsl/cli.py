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

from . import __version__, registry
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
            if args.verbose:  # parse, validate, render and build the model on `meta`
                from .compiler import compile_spec

                summary = compile_spec(Path(path)).summary()
            else:
                summary = f"pipeline '{load(path).pipeline.name}'"
        except DiagnosticError as exc:
            print(exc.render(), file=sys.stderr)
            status = EXIT_USAGE
            continue
        print(f"{path}: ok ({summary})")
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
        raise UsageError(
            f"no block, field or op called '{args.name}'"
            + (f"; {hint}" if hint else "; run `improve docs` for the whole reference")
        )
    print(text, end="")
    return EXIT_OK


def cmd_grammar(args: argparse.Namespace) -> int:
    """Print the grammar an LLM is held to when rewriting a block (or all refinable blocks)."""
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


def cmd_compile(args: argparse.Namespace) -> int:
    """Compile a spec to one standalone training script, written to -o FILE or stdout."""
    from .compiler import compile_spec
    from .render import RenderError

    try:
        compiled = compile_spec(Path(args.spec), check_shapes=not args.no_check)
    except RenderError as exc:  # a defect in improve's templates, not in the spec
        _err(f"internal error while rendering the script: {exc}")
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


# (further verbs are defined below and registered in build_parser)

# ---------------------------------------------------------------- training verbs


def _device(value: str) -> str:
    """argparse type for --device: auto, cpu, cuda or cuda:N."""
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"'{value}' is not auto, cpu, cuda or cuda:N")
    return value


def _seconds(value: str) -> float:
    """argparse type for --timeout: a positive number of seconds."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a number of seconds") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value} must be above 0")
    return number


def _seed(value: str) -> int:
    """argparse type for --seed: a whole number from 0 to 2**31 - 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a whole number") from None
    if not 0 <= number < 2**31:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 2147483647")
    return number


def _train(args: argparse.Namespace, split: str) -> int:
    """Compile SPEC, write the script into the run directory and train on ``split``."""
    import shutil

    from rich.console import Console

    from .compiler import compile_spec
    from .progress import EpochProgress
    from .run import default_run_dir, run_script

    spec_path = Path(args.spec)
    compiled = compile_spec(spec_path)
    out = Path(args.out) if args.out else default_run_dir(spec_path, split)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train.py").write_text(compiled.script, encoding="utf-8")
        shutil.copyfile(spec_path, out / "spec.imp")  # what was trained, kept beside it
    except OSError as exc:
        raise UsageError(f"cannot write the run directory {out}: {exc.strerror or exc}") from None
    console = Console(stderr=True)
    label = compiled.spec.pipeline.name + (" (test split)" if split == "test" else "")
    try:
        with EpochProgress(console, label) as progress:
            result = run_script(
                out / "train.py",
                out,
                split=split,
                device=args.device,
                seed=args.seed,
                timeout=getattr(args, "timeout", None),
                on_event=progress,
            )
    except KeyboardInterrupt:
        _err(f"interrupted; the partial log is in {out / 'log'}")
        return EXIT_INTERRUPTED
    if not result.ok or result.metric is None:
        reason = (result.reason or "unknown reason").splitlines()
        _err(f"the run failed ({result.status}): {reason[0]}")
        for line in reason[1:]:
            print(line, file=sys.stderr)
        print(f"  see {result.log_path}", file=sys.stderr)
        return EXIT_FAILED
    facts = result.result or {}
    epochs, speed = facts.get("epochs_run"), facts.get("images_per_second")
    took = facts.get("seconds", result.seconds)
    detail = f"after {epochs} epochs in {took:.1f} s" if epochs is not None else ""
    if isinstance(speed, (int, float)):
        detail += f", {speed:,.0f} images/s"
    print(f"{result.metric_name} {result.metric:.4f} ({detail}); results in {out}")
    if split == "test":
        print(
            "This is the once-only test score: the model was trained exactly as `improve run` "
            "trains it (same training split; the validation share held out and unused for "
            "fitting) and scored once on the untouched test split. Report it; do not choose "
            "between specs with it."
        )
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Compile a spec, train it and score it on the validation split."""
    return _train(args, "val")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Train as `run` does and score the untouched test split once."""
    return _train(args, "test")


def cmd_predict(args: argparse.Namespace) -> int:
    """Classify images with a finished run's model."""
    from .predict import PredictError, predict

    try:
        predictions = predict(Path(args.run_dir), [Path(p) for p in args.images])
    except PredictError as exc:
        raise UsageError(str(exc)) from None
    for item in predictions:
        print(f"{item.path}: {item.label} ({item.probability:.3f})")
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    """Profile a dataset and write a starting spec for it."""
    from .init import InitError, write_spec

    try:
        text = write_spec(args.data, Path(args.output), force=args.force)
    except InitError as exc:
        raise UsageError(str(exc)) from None
    name = next(line for line in text.splitlines() if line.startswith("pipeline "))
    print(f"wrote {args.output} ({name.removesuffix(' {')}); next: improve run {args.output}")
    return EXIT_OK


# ---------------------------------------------------------------- refinement


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_refine(args: argparse.Namespace) -> int:
    """Improve a spec by Iterative Refinement, one block per iteration."""
    import signal

    from .executors.ray_executor import RayUnavailable
    from .refine.live import make_reporter
    from .refine.loop import RESUMABLE, refine
    from .refine.options import RefineError, RefineInterrupted, RefineOptions

    if args.spec is None and args.resume is None:
        raise UsageError("give a SPEC to refine, or --resume RUN_DIR")
    if args.ray_address is not None and args.executor not in (None, "ray"):
        raise UsageError("--ray-address goes with --executor ray")
    if args.ray_address is not None:
        args.executor = "ray"
    if args.executor == "ray":
        from .executors.ray_executor import import_ray, probe_address

        try:  # before any run folder is made: Ray absent, or its cluster unreachable
            import_ray()
            if args.ray_address is not None:
                probe_address(args.ray_address)
        except RayUnavailable as exc:
            raise UsageError(str(exc)) from None
    defaults = RefineOptions()
    given = {
        "iters": args.iters,
        "parallel": args.parallel,
        "timeout": args.timeout,
        "budget_minutes": args.budget_minutes,
        "max_cost": args.max_cost,
        "device": args.device,
        "threads": args.threads,
        "test": args.test,
        "prune": args.prune,
        "executor": args.executor,
        "ray_address": args.ray_address,
    }
    options = RefineOptions(
        expert=args.expert,
        base_url=args.base_url,
        select=args.select,
        strategy=args.strategy,
        zero_shot=args.zero_shot,
        seeds=args.seeds,
        min_delta=args.min_delta,
        run_dir=Path(args.run_dir) if args.run_dir else None,
        resume=Path(args.resume) if args.resume else None,
        git=args.git,
        expert_seed=args.expert_seed,
        **{k: (v if v is not None else getattr(defaults, k)) for k, v in given.items()},
    )
    overrides = {k: v for k, v in given.items() if k in RESUMABLE and v is not None}
    # A polite kill (SIGTERM) saves the state like Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    reporter = make_reporter(quiet=args.quiet)
    try:
        result = refine(Path(args.spec) if args.spec else None, options, reporter, overrides)
    except RefineInterrupted as exc:
        _err(str(exc))
        return EXIT_INTERRUPTED
    except (RefineError, RayUnavailable) as exc:
        raise UsageError(str(exc)) from None
    if result.best_metric is None:
        _err(f"no candidate finished training; see the logs in {result.run_dir}")
        return EXIT_FAILED
    return EXIT_OK


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

    p = verbs.add_parser(
        "docs",
        help="reference of blocks, fields and ops",
        description="Print the language reference from the registry, or the "
        "entry for NAME (a block, `block.field`, or an op such as sgd).",
    )
    p.add_argument("name", nargs="?", metavar="NAME")
    p.set_defaults(func=cmd_docs)

    p = verbs.add_parser(
        "grammar",
        help="the grammar an LLM is held to when rewriting a block",
        description="Print the reply grammar for one refinable block (or all of "
        "them, in order, for all-at-once rewriting): closed vocabulary, locked "
        "fields absent.",
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
        help="lark (OpenAI custom tools, vLLM) or gbnf (llama.cpp); default lark",
    )
    p.set_defaults(func=cmd_grammar)

    p = verbs.add_parser(
        "diff",
        help="which blocks differ between two specs, and how",
        description="Block-level semantic diff; exit 0 when the specs agree, 1 "
        "when they differ, 2 when one does not parse.",
    )
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.set_defaults(func=cmd_diff)

    p = verbs.add_parser(
        "report",
        help="HTML report of a refinement run",
        description="Write one self-contained HTML page for a run directory of "
        "`improve refine`: the metric per iteration, each attempt's diff, "
        "rationale, time and cost, and the final test score when present. The "
        "plot is also saved as a PNG next to the page.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="where to write the page (default: RUN_DIR/report.html)",
    )
    p.set_defaults(func=cmd_report)

    p = verbs.add_parser(
        "compile",
        help="compile a spec to a standalone PyTorch training script",
        description="Check SPEC (diagnostics: exit 2) and write the training "
        "script it compiles to: one black-formatted file that needs only torch, "
        "torchvision and numpy. Run it with `python train.py --help`.",
    )
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("-o", "--output", metavar="FILE", help="write the script here (default: stdout)")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip building the model on the meta device (e.g. when the dataset is "
        "not on this machine)",
    )
    p.set_defaults(func=cmd_compile)

    train_flags = argparse.ArgumentParser(add_help=False)
    train_flags.add_argument(
        "--device",
        type=_device,
        default="auto",
        help="auto (CUDA when there is a GPU, else CPU), cpu, cuda or cuda:N; default auto",
    )
    train_flags.add_argument(
        "--seed",
        type=_seed,
        help="training seed (default: the spec's pipeline seed); the "
        "validation split has its own seed in the spec and never changes",
    )

    p = verbs.add_parser(
        "run",
        parents=[train_flags],
        help="compile a spec, train it, score it on the validation split",
        description="Compile SPEC (diagnostics: exit 2), write the script to "
        "DIR/train.py and train it, showing epoch, ETA and the latest score. "
        "The score is measured on the validation split; the test split is not "
        "touched. DIR gets train.py, spec.imp, log, metrics.json and model.pt. "
        "Exit 1 when the run fails (NaN loss, out of memory, crash, timeout), "
        "130 on Ctrl-C.",
    )
    p.add_argument("spec", metavar="SPEC", help="the pipeline spec (.imp file)")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="run directory (default: SPEC's stem + .improve/runs/<timestamp>, beside the spec)",
    )
    p.add_argument(
        "--timeout", type=_seconds, metavar="S", help="stop the run after S seconds (exit 1)"
    )
    p.set_defaults(func=cmd_run)

    p = verbs.add_parser(
        "evaluate",
        parents=[train_flags],
        help="the once-only score on the untouched test split",
        description="Train SPEC exactly as `improve run` does (the same "
        "training split; the validation share is held out and not used for "
        "fitting) and score it once on the test split, which nothing else "
        "reads. Use it to report a final figure, not to choose between specs. "
        "DIR gets train.py, spec.imp, log, metrics.json and model.pt.",
    )
    p.add_argument("spec", metavar="SPEC", help="the pipeline spec (.imp file)")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="run directory (default: SPEC's stem + .improve/evaluate/<timestamp>)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = verbs.add_parser(
        "predict",
        help="classify images with a finished run's model",
        description="Load RUN_DIR/model.pt and the architecture from "
        "RUN_DIR/train.py, prepare each image as in training (colour mode, "
        "resize to the input size, the saved normalisation) and print "
        "`IMAGE: CLASS (PROBABILITY)` per image.",
    )
    p.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="a directory written by `improve run` or `improve evaluate`",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.set_defaults(func=cmd_predict)

    p = verbs.add_parser(
        "init",
        help="write a starting spec for a dataset",
        description="Profile a dataset (image count, classes, balance, sizes, "
        "channels) and write a starting spec suited to it, with the profile in "
        "a comment at the top. The spec checks, is canonically formatted, and "
        "is a baseline for `improve refine`.",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="DATA",
        help="a folder with one sub-folder of images per class (optionally under "
        "train/ and test/), or a built-in dataset: "
        + ", ".join(registry.BUILTIN_DATASETS)
        + " (write ./NAME for a folder called NAME)",
    )
    p.add_argument("-o", "--output", required=True, metavar="SPEC", help="where to write the spec")
    p.add_argument("--force", action="store_true", help="overwrite SPEC if it exists")
    p.set_defaults(func=cmd_init)

    p = verbs.add_parser(
        "refine",
        help="improve a spec by Iterative Refinement, one block at a time",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Improve SPEC by Iterative Refinement. First the spec as it is is trained and scored on
the validation split (iteration 0). Then, each iteration, a block is selected, an expert
rewrites that block only, the rewrite is checked (one block, locked fields untouched,
validation and shape checks; refused replies go back to the expert up to 3 times), trained
on the validation split, and kept only if it beats the best spec so far. A kept change is
written back to SPEC atomically (never over your own edits: then the best spec stays in the
run directory as best.imp). At the end the best spec is scored once on the test split, which
refinement never sees.

Everything is recorded in SPEC's stem + .improve/RUN-ID/: start.imp, journal.jsonl (one
record per attempt), candidates/N/ (spec, script, log, metrics), best.imp, final.json.
Repeated proposals are answered from a results cache. Ctrl-C saves the state; continue
with --resume RUN_DIR, which neither loses nor repeats a finished attempt.""",
        epilog="""\
experts:
  heuristic        rule-based, offline: reads the curves (over/underfitting, instability,
                   slow convergence) and tries the moves a practitioner would
  openai[:MODEL]   any OpenAI-compatible server (OPENAI_API_KEY, --base-url or
                   OPENAI_BASE_URL: OpenAI, vLLM, llama.cpp, Ollama), held to the block's
                   grammar where the server supports it
  replay:FILE      proposals read from a file (.jsonl or .imp), for reproducible runs
  The default is openai when OPENAI_API_KEY or --base-url is set, else heuristic.

On a CPU the candidates start as forks of a helper that has imported torch once (about a
second each besides training, instead of about six); IMPROVE_FORK_SERVER=0 turns it off.

examples:
  improve refine specs/digits.imp --iters 5
  improve refine spec.imp --iters 20 --expert openai:gpt-5-mini --seeds 3 --git
  improve refine spec.imp --zero-shot --expert openai     # the paper's baseline
  improve refine --resume spec.improve/20261104-101500

exit codes: 0 done, 1 no candidate could be trained, 2 bad input, 130 interrupted""",
    )
    p.add_argument("spec", nargs="?", metavar="SPEC", help="the pipeline spec (.imp file)")
    p.add_argument(
        "--iters",
        type=int,
        metavar="N",
        help="refinement iterations after the baseline (default 10)",
    )
    p.add_argument(
        "--expert", metavar="EXPERT", help="heuristic, openai[:MODEL] or replay:FILE (see below)"
    )
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="OpenAI-compatible server for the openai expert (default "
        "$OPENAI_BASE_URL, else OpenAI)",
    )
    p.add_argument(
        "--select",
        choices=("analyst", "diagnose", "round-robin"),
        default="analyst",
        help="how the block to rewrite is chosen: analyst (the expert reads the "
        "curves and names one; rules when it has no analyst), diagnose (rules over "
        "the curves: overfitting → augment/regularise, underfitting → model/train, "
        "unstable → train), round-robin; default analyst",
    )
    p.add_argument(
        "--strategy",
        choices=("iterative", "all-at-once"),
        default="iterative",
        help="rewrite one block per iteration (default), or every block at once (for comparison)",
    )
    p.add_argument(
        "--zero-shot",
        action="store_true",
        help="one all-blocks proposal and no iteration (the zero-shot baseline)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="K",
        help="train each candidate with K seeds; keep it only if its mean beats the "
        "incumbent by more than the seed noise (default 1)",
    )
    p.add_argument(
        "--min-delta",
        type=float,
        default=0.0,
        metavar="D",
        help="a change is kept only if it gains more than D (default 0)",
    )
    p.add_argument(
        "--parallel",
        type=int,
        metavar="K",
        help="train K runs at once (candidates and seeds; one GPU each where there "
        "are GPUs, CPU threads divided between them); default 1",
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        help="where runs train: local (default) or ray, tasks on a Ray cluster "
        "(pip install 'improve-dsl[ray]'; see docs/ray.md)",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="the Ray cluster to join, e.g. HEAD:6379 (implies --executor ray; "
        "default $RAY_ADDRESS, else a new local cluster)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="stop a training run after S seconds (recorded as failed)",
    )
    p.add_argument(
        "--budget-minutes", type=float, metavar="M", help="start no new attempt after M minutes"
    )
    p.add_argument(
        "--max-cost", type=float, metavar="USD", help="stop once the expert has cost USD dollars"
    )
    p.add_argument(
        "--no-prune",
        dest="prune",
        action="store_const",
        const=False,
        help="never stop a candidate early (default: stop one that falls more than "
        "0.1 below the incumbent at the same epoch, after half its epochs)",
    )
    p.add_argument("--device", type=_device, help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads per training run")
    p.add_argument(
        "--no-test",
        dest="test",
        action="store_const",
        const=False,
        help="skip the final once-only score of the best spec on the test split",
    )
    p.add_argument(
        "--run-dir",
        metavar="DIR",
        help="where to keep this run (default SPEC's stem + .improve/RUN-ID)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run; --iters, --budget-minutes, --max-cost, "
        "--parallel, --timeout, --device, --threads may be changed",
    )
    p.add_argument(
        "--git",
        action="store_true",
        help="commit SPEC after each kept change (only SPEC; the message names the "
        "block, the score change and the rationale)",
    )
    p.add_argument(
        "--expert-seed",
        type=_seed,
        default=0,
        metavar="N",
        help="seed of the expert's tie-breaks (default 0)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing while refining")
    p.set_defaults(func=cmd_refine, test=None, prune=None)

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
