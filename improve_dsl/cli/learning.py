"""The verbs that look back over refinements: ablate (which kept change mattered) and history
(what the evidence store knows). Each ``add_VERB`` declares the verb's flags; the
``cmd_VERB`` below it reads them."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from . import common
from .common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError, Verbs, err


def add_ablate(verbs: Verbs) -> None:
    p = verbs.add_parser(
        "ablate",
        help="which kept changes of a refinement matter: leave one out, add one in",
        description="Retrain the best spec of RUN_DIR with each accepted change reverted "
        "(leave one out) and the starting spec with each accepted change alone (add one "
        "in), K seeds each, and print a table: change, block, gain when kept, "
        "leave-one-out drop ± spread, add-one-in gain ± spread, seconds. A change whose "
        "removal costs less than the noise is marked so; one that no longer applies (a "
        "later change rewrote its fields) is reported. The table goes to RUN_DIR/"
        "ablation.md and ablation.json (drawn by `improve report`). Runs share refine's "
        "results cache: after Ctrl-C, run the same command again and nothing finished is "
        "repeated.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of `improve refine`")
    p.add_argument("--seeds", type=int, default=3, metavar="K", help="seeds per spec (default 3)")
    p.add_argument(
        "--parallel", type=int, default=1, metavar="K", help="train K runs at once (default 1)"
    )
    p.add_argument("--executor", choices=("local", "ray"), default="local", help="where runs train")
    p.add_argument("--ray-address", metavar="ADDR", help="the Ray cluster to join")
    p.add_argument("--device", type=common.device, default="auto", help="auto, cpu, cuda[:N]")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads per training run")
    p.add_argument("--timeout", type=common.seconds, metavar="S", help="stop a run after S seconds")
    p.set_defaults(func=cmd_ablate)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_ablate(args: argparse.Namespace) -> int:
    """Leave-one-out and add-one-in retraining of a run's accepted changes."""
    from ..executors import make_executor
    from ..executors.ray_executor import RayUnavailable
    from ..journal import JournalError, RunDir
    from ..refine.ablation import AblationError, ablate, table_text

    if args.seeds < 1:
        raise UsageError("--seeds must be at least 1")
    if args.parallel < 1:
        raise UsageError("--parallel must be at least 1")
    run_dir = Path(args.run_dir)
    try:  # before any executor starts
        RunDir.open(run_dir)
    except JournalError as exc:
        raise UsageError(str(exc)) from None
    try:
        executor = make_executor(
            "ray" if args.ray_address else args.executor,
            parallel=args.parallel,
            device=args.device,
            threads=args.threads,
            address=args.ray_address,
        )
    except RayUnavailable as exc:
        raise UsageError(str(exc)) from None
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        table = ablate(
            run_dir,
            executor,
            seeds=args.seeds,
            device=args.device,
            threads=args.threads,
            timeout=args.timeout,
        )
    except AblationError as exc:
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt:
        executor.cancel_all()
        err(f"interrupted; run `improve ablate {run_dir}` again to go on (finished runs are kept)")
        return EXIT_INTERRUPTED
    finally:
        executor.close()
    print(table_text(table))
    print(f"\nwrote {run_dir / 'ablation.md'} and ablation.json")
    measured = [r for r in table.rows if r.drop is not None or r.gain is not None]
    return EXIT_OK if measured else EXIT_FAILED


def add_history(verbs: Verbs) -> None:
    p = verbs.add_parser(
        "history",
        help="what the evidence store knows: moves by effect, with counts and spread",
        description="Read the evidence store every refine appends to "
        "($XDG_DATA_HOME/improve/evidence.sqlite, default ~/.local/share/improve) and list "
        "each move by its mean gain: how often it was tried and kept, and the spread of its "
        "gains. `improve refine --no-history` neither reads nor adds to it.",
    )
    p.add_argument("--dataset", metavar="NAME", help="only attempts on this data source")
    p.set_defaults(func=cmd_history)


def cmd_history(args: argparse.Namespace) -> int:
    """Moves by effect, from the evidence store."""
    from ..evidence import Store, StoreError
    from ..refine.memory import history_text

    store = Store()
    if not store.path.exists():
        print(f"no refinement attempts stored yet ({store.path})")
        return EXIT_OK
    try:
        rows = store.rows(dataset=args.dataset)
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    where = str(store.path) + (f", dataset {args.dataset}" if args.dataset else "")
    print(history_text(rows, where))
    return EXIT_OK
