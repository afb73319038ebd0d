"""The refinement verbs: refine and report. Each ``add_VERB`` declares the verb's flags; the
``cmd_VERB`` below it reads them."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from ..refine.decide import KEEP_RULE
from ..refine.experts import expert_choices, experts_help
from . import common
from .common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError, Verbs, err

if TYPE_CHECKING:
    from ..refine.reporting import Reporter

REFINE_DESCRIPTION = f"""\
Improve SPEC by Iterative Refinement. First the spec as it is is trained and scored on
the validation split (iteration 0). Then, each iteration, a block is selected, an expert
rewrites that block only, the rewrite is checked (one block, locked fields untouched,
validation and shape checks; refused replies go back to the expert up to 3 times), trained
on the validation split, and kept only if it beats the best spec so far (the incumbent)
by the rule below. A kept change is written back to SPEC atomically (never over your own
edits: then the best spec stays in the run directory as best.imp). At the end the best spec
is scored once on the test split, which refinement never sees.

{textwrap.fill(KEEP_RULE, 88, break_on_hyphens=False)}

Everything is recorded in SPEC's stem + .improve/RUN-ID/: start.imp, journal.jsonl (one
record per attempt), candidates/N/ (spec, script, log, metrics), best.imp, final.json.
Repeated proposals are answered from a results cache. Ctrl-C saves the state; continue
with --resume RUN_DIR, which neither loses nor repeats a finished attempt."""

# After the "experts:" section, which the experts' table writes (refine/experts/catalog.py).
REFINE_EPILOG = """\
The candidates start as forks of a helper that has imported torch once, on CPUs and GPUs
(about a second each besides training, instead of about six); IMPROVE_FORK_SERVER=0 turns
it off.

grammar (--grammar, or $IMPROVE_GRAMMAR; the mode used is journalled per attempt):
  auto   ask the server once who it is and send the strongest constraint it takes:
         OpenAI (GPT-5): the block's Lark grammar as a custom tool; vLLM: GBNF in
         structured_outputs (guided_grammar before 0.10.2); SGLang: GBNF as ebnf;
         llama.cpp: GBNF as grammar; Ollama and others: a JSON schema holding the
         block as a string; else free text
  lark   the Lark grammar (OpenAI custom tool; vLLM structured_outputs)
  gbnf   the GBNF grammar (vLLM, SGLang, llama.cpp)
  json   the JSON schema only;  none: free text, checked and fed back
  A server that refuses a constraint with HTTP 400 naming it steps down one rung
  (grammar, then JSON, then free text), says so, and keeps what worked.

examples:
  improve refine specs/digits.imp --iters 5
  improve refine spec.imp --iters 20 --expert openai:gpt-5-mini --seeds 3 --git
  improve refine spec.imp --expert openai:Qwen/Qwen3-8B --base-url http://gpu:8000/v1
  improve refine spec.imp --zero-shot --expert openai     # the paper's baseline
  improve refine --resume spec.improve/20261104-101500

exit codes: 0 done, 1 no candidate could be trained, 2 bad input, 130 interrupted"""


def add_refine(verbs: Verbs) -> None:
    p = verbs.add_parser(
        "refine",
        help="improve a spec by Iterative Refinement, one block at a time",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=REFINE_DESCRIPTION,
        epilog=f"{experts_help()}\n\n{REFINE_EPILOG}",
    )
    p.add_argument("spec", nargs="?", metavar="SPEC", help="the pipeline spec (.imp file)")
    p.add_argument(
        "--iters",
        type=int,
        metavar="N",
        help="refinement iterations after the baseline (default 10)",
    )
    p.add_argument("--expert", metavar="EXPERT", help=f"{expert_choices()} (see below)")
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="OpenAI-compatible server for the openai expert (default "
        "$OPENAI_BASE_URL, else OpenAI)",
    )
    p.add_argument(
        "--grammar",
        choices=("auto", "lark", "gbnf", "json", "none"),
        help="how the openai expert's replies are held to the block's grammar (see below; "
        "default $IMPROVE_GRAMMAR, else auto)",
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
        help="train each candidate with K seeds; their spread then measures the noise a "
        "change must beat (default 1: the last epoch's swing does)",
    )
    p.add_argument(
        "--min-delta",
        type=float,
        default=0.0,
        metavar="D",
        help="a change is kept only if it gains more than D and more than the noise of the "
        "measurement (validation size, epoch-to-epoch swing), more for costlier runs "
        "(default 0: the noise alone); a change no worse and at least twice as fast is kept too",
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
        type=common.seconds,
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
        help="never stop a candidate early (default: stop one whose learning rate has "
        "annealed well below the incumbent's score, or that trails it by more than 0.1 "
        "and five epoch-to-epoch swings after half its epochs)",
    )
    p.add_argument("--device", type=common.device, help="auto (default), cpu, cuda or cuda:N")
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
        type=common.seed,
        default=0,
        metavar="N",
        help="seed of the expert's tie-breaks (default 0)",
    )
    p.add_argument(
        "--no-history",
        dest="history",
        action="store_false",
        help="neither read nor add to the evidence store of earlier refines "
        "($XDG_DATA_HOME/improve/evidence.sqlite; see `improve history`)",
    )
    p.add_argument(
        "--mlflow",
        action="store_true",
        help="log to MLflow (MLFLOW_TRACKING_URI): a parent run for the refinement, a nested "
        "run per attempt; a resumed run continues its parent (pip install 'improve-dsl[mlflow]')",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing while refining")
    p.set_defaults(func=cmd_refine, test=None, prune=None)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _with_mlflow(reporter: Reporter, args: argparse.Namespace) -> Reporter:
    """The view's reporter and an MLflow one (exit 2 when MLflow is missing or unusable)."""
    from ..tracking import TrackingUnavailable, connect, with_mlflow
    from ..validate import load

    # The experiment is named after the pipeline: from SPEC, or the resumed run's start.
    spec = Path(args.spec) if args.spec else Path(args.resume) / "start.imp"
    try:
        return with_mlflow(reporter, connect(load(spec).pipeline.name))
    except TrackingUnavailable as exc:
        raise UsageError(str(exc)) from None


def cmd_refine(args: argparse.Namespace) -> int:
    """Improve a spec by Iterative Refinement, one block per iteration."""
    import signal

    from ..executors.ray_executor import RayUnavailable
    from ..refine.live import make_reporter
    from ..refine.loop import refine
    from ..refine.options import RefineError, RefineInterrupted, RefineOptions

    if args.spec is None and args.resume is None:
        raise UsageError("give a SPEC to refine, or --resume RUN_DIR")
    if args.ray_address is not None and args.executor not in (None, "ray"):
        raise UsageError("--ray-address goes with --executor ray")
    options = RefineOptions.from_args(args)
    if options.executor == "ray":
        from ..executors.ray_executor import import_ray, probe_address

        try:  # before any run folder is made: Ray absent, or its cluster unreachable
            import_ray()
            if options.ray_address is not None:
                probe_address(options.ray_address)
        except RayUnavailable as exc:
            raise UsageError(str(exc)) from None
    # A polite kill (SIGTERM) saves the state like Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    reporter = make_reporter(quiet=args.quiet)
    if args.mlflow:
        reporter = _with_mlflow(reporter, args)
    spec = Path(args.spec) if args.spec else None
    try:
        result = refine(spec, options, reporter, RefineOptions.given_flags(args))
    except RefineInterrupted as exc:
        err(str(exc))
        return EXIT_INTERRUPTED
    except (RefineError, RayUnavailable) as exc:
        raise UsageError(str(exc)) from None
    if result.best_metric is None:
        err(f"no candidate finished training; see the logs in {result.run_dir}")
        return EXIT_FAILED
    return EXIT_OK


def add_report(verbs: Verbs) -> None:
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


def cmd_report(args: argparse.Namespace) -> int:
    """Write the HTML report of a refinement run, and its plot as a PNG beside it."""
    from ..report import ReportError, write_report

    out = Path(args.output) if args.output else None
    try:
        paths = write_report(Path(args.run_dir), out)
    except ReportError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {paths.html} (plot: {paths.png})")
    return EXIT_OK
