"""The training verbs: run, evaluate, predict, export and init. Each ``add_VERB`` declares
the verb's flags; the ``cmd_VERB`` below it reads them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import registry
from . import common
from .common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError, Verbs, err

if TYPE_CHECKING:
    from ..resident import ResidentForkServer
    from ..tracking import TrainingRun


def _train_flags() -> argparse.ArgumentParser:
    """The flags `run` and `evaluate` share."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument(
        "--device",
        type=common.device,
        default="auto",
        help="auto (CUDA when there is a GPU, else CPU), cpu, cuda or cuda:N; default auto",
    )
    flags.add_argument(
        "--mlflow",
        action="store_true",
        help="log the run to MLflow (MLFLOW_TRACKING_URI; experiment "
        "MLFLOW_EXPERIMENT_NAME or the pipeline's name); pip install 'improve-dsl[mlflow]'",
    )
    flags.add_argument(
        "--seed",
        type=common.seed,
        help="training seed (default: the spec's pipeline seed); the "
        "validation split has its own seed in the spec and never changes",
    )
    return flags


def _tracked_run(spec_path: Path, split: str) -> TrainingRun:
    """The MLflow run of `--mlflow` (exit 2 when MLflow is missing or its store unusable)."""
    from ..tracking import TrackingUnavailable, TrainingRun, connect
    from ..validate import load

    spec = load(spec_path)  # diagnostics first; the pipeline names the experiment
    try:
        return TrainingRun(connect(spec.pipeline.name), spec, spec_path, split)
    except TrackingUnavailable as exc:
        raise UsageError(str(exc)) from None


def _train(args: argparse.Namespace, split: str) -> int:
    """Compile SPEC, write the script into the run directory and train on ``split``.

    The script starts as a fork of the resident fork server (``resident.py``), which has
    imported torch already; asked for first, a server that has to start imports while the
    spec compiles. A spec compiled and checked before comes from ``compiled_cache``.
    """
    from .. import forkserver
    from ..resident import ResidentForkServer

    server = ResidentForkServer() if forkserver.wanted() else None
    try:
        return _compile_and_train(args, split, server)
    finally:
        if server is not None:
            server.close()


def _compile_and_train(
    args: argparse.Namespace, split: str, server: ResidentForkServer | None
) -> int:
    import shutil

    from rich.console import Console

    from ..compiled_cache import compile_for_run
    from ..progress import EpochProgress
    from ..run import default_run_dir, run_script

    spec_path = Path(args.spec)
    # MLflow first: an unusable store is reported before any compiling or training.
    tracked = _tracked_run(spec_path, split) if args.mlflow else None
    compiled = compile_for_run(spec_path)
    out = Path(args.out) if args.out else default_run_dir(spec_path, split)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train.py").write_text(compiled.script, encoding="utf-8")
        shutil.copyfile(spec_path, out / "spec.imp")  # what was trained, kept beside it
    except OSError as exc:
        raise UsageError(f"cannot write the run directory {out}: {exc.strerror or exc}") from None
    console = Console(stderr=True)
    label = compiled.pipeline + (" (test split)" if split == "test" else "")
    try:
        with EpochProgress(console, label) as progress:

            def on_event(event: dict[str, Any]) -> bool:
                if tracked is not None:
                    tracked.on_event(event)
                return progress(event)

            result = run_script(
                out / "train.py",
                out,
                split=split,
                device=args.device,
                seed=args.seed,
                timeout=getattr(args, "timeout", None),
                on_event=on_event,
                fork_server=server,
            )
    except KeyboardInterrupt:
        if tracked is not None:
            tracked.interrupted()
        err(f"interrupted; the partial log is in {out / 'log'}")
        return EXIT_INTERRUPTED
    if tracked is not None:
        tracked.finish(out, result.metric_name, result.metric, result.ok)
    if not result.ok or result.metric is None:
        reason = (result.reason or "unknown reason").splitlines()
        err(f"the run failed ({result.status}): {reason[0]}")
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


def add_run(verbs: Verbs) -> None:
    p = verbs.add_parser(
        "run",
        parents=[_train_flags()],
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
        "--timeout", type=common.seconds, metavar="S", help="stop the run after S seconds (exit 1)"
    )
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    """Compile a spec, train it and score it on the validation split."""
    return _train(args, "val")


def add_evaluate(verbs: Verbs) -> None:
    p = verbs.add_parser(
        "evaluate",
        parents=[_train_flags()],
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Train as `run` does and score the untouched test split once."""
    return _train(args, "test")


def add_predict(verbs: Verbs) -> None:
    p = verbs.add_parser(
        "predict",
        help="classify images with a finished run's model",
        description="Load RUN_DIR/model.pt and the architecture from "
        "RUN_DIR/train.py (or a model file written by `improve export`: ONNX or "
        "TorchScript), prepare each image as in training (colour mode, resize to the input "
        "size, the saved normalisation) and print `IMAGE: CLASS (PROBABILITY)` per image.",
    )
    p.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="a directory written by `improve run`, `improve evaluate` or `improve refine` "
        "(its best spec's model), or a file written by `improve export` (model.onnx needs "
        "pip install 'improve-dsl[onnx]')",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    """Classify images with a finished run's model."""
    from ..predict import PredictError, predict

    try:
        predictions = predict(Path(args.run_dir), [Path(p) for p in args.images])
    except PredictError as exc:
        raise UsageError(str(exc)) from None
    for item in predictions:
        print(f"{item.path}: {item.label} ({item.probability:.3f})")
    return EXIT_OK


def add_export(verbs: Verbs) -> None:
    p = verbs.add_parser(
        "export",
        help="write a run's model as ONNX or TorchScript",
        description="Write the model of a finished run (a directory of `improve run`, "
        "`improve evaluate`, or a refinement candidate) as ONNX or TorchScript, with the "
        "class names, input size and normalisation in the file's metadata. Input: float32 "
        "N x C x H x W, pixels scaled to 0..1 then (x - mean) / std; output: one logit per "
        "class. `improve predict FILE IMAGE...` reads the file back. ONNX needs "
        "pip install 'improve-dsl[onnx]'.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a directory holding model.pt and train.py")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="where to write the model: FILE.onnx (ONNX) or FILE.pt (TorchScript)",
    )
    p.add_argument(
        "--format",
        choices=("onnx", "torchscript"),
        help="the format (default: from the suffix of FILE)",
    )
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Write a finished run's model as ONNX or TorchScript, with its class names and
    normalisation in the file's metadata."""
    from ..export import ExportError, export_run

    try:
        exported = export_run(Path(args.run_dir), Path(args.output), args.format)
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    print(exported.describe())
    return EXIT_OK


def add_init(verbs: Verbs) -> None:
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


def cmd_init(args: argparse.Namespace) -> int:
    """Profile a dataset and write a starting spec for it."""
    from ..init import InitError, write_spec

    try:
        text = write_spec(args.data, Path(args.output), force=args.force)
    except InitError as exc:
        raise UsageError(str(exc)) from None
    lines = text.splitlines()
    name = next(line for line in lines if line.startswith("pipeline "))
    # An image folder: its size on disk and decoded, and whether runs will stream it.
    for line in lines:
        if line.startswith("# storage: "):
            print(line.removeprefix("# "))
    print(f"wrote {args.output} ({name.removesuffix(' {')}); next: improve run {args.output}")
    return EXIT_OK
