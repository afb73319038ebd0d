"""Loop overhead: what a candidate costs outside training, a cached repeat, cold check/compile.

Three measurements, each the median of ``--repeats`` tries:

1. Per candidate (specs/fashion_mnist_quick.imp, trained ``--epochs`` epoch(s) on the CPU):
   the compile step as the refine loop does it (parse, validate, render, black, the
   meta-device shape check; in a warm process), then one training run through
   ``run.run_script``, timed by when its events arrive: spawn → ``start`` event (interpreter
   start, ``import torch``, reading the dataset, building the model), the training seconds the
   script reports, evaluation (the rest of start → result), and result → exit (writing
   metrics.json and model.pt). Each run is started both ways: as a fresh subprocess (``improve
   run``, the Ray executor) and as a fork of the fork server (the local executor on CPU).
   ``import torch, torchvision`` alone is timed in a fresh interpreter to split the spawn →
   start span.
2. A cached repeat: ``improve refine`` (the library loop, heuristic expert) on a copy of
   specs/digits.imp for ``--iters`` iterations, then the same run again from the same start:
   every attempt of the second run is answered from the results cache. Per attempt it costs
   the expert's proposal, the check and compile (``propose_seconds``) plus the lookup
   (``seconds``), read from the second run's journal.
3. Cold ``improve check`` and ``improve compile`` on every example spec: a fresh process each
   time (``.venv/bin/improve``), wall clock, against a bare ``python -c pass`` and
   ``python -c "import improve_dsl.cli"``.

4. A second ``improve run`` of a small spec on an image folder that is already decoded
   (10 classes x 500 PNG images of 32x32, made deterministically in a temporary folder):
   the first run decodes the folder, compiles the spec and starts the resident fork server;
   the next ``--repeats`` runs are timed: the command's wall clock, the training ``seconds``
   the script reports, and what is left ("outside training"). One more run of the same
   command line, instrumented in its own process, splits that rest into parts: the
   interpreter and the CLI's imports, the compile (a cache lookup), the fork, the script's
   data loading and model building (fork → ``start``), its evaluation and saving after the
   last epoch, and the command's exit; and the same second run with
   ``IMPROVE_FORK_SERVER=0`` (a fresh ``python train.py``: its spawn → ``data`` is the
   interpreter and the script's own imports), for comparison. A user cache and
   runtime folder of the bench's own (``XDG_CACHE_HOME``, ``XDG_RUNTIME_DIR``), so nothing of
   an earlier run helps.

    python bench/overhead.py            # prints the tables; --json FILE keeps the figures
    python bench/overhead.py --skip cli,candidate,cache   # only the image-folder rerun
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PYTHON = sys.executable
IMPROVE = str(Path(PYTHON).parent / "improve")


def median_of(repeats: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(repeats))


def wall(command: Sequence[str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - started


# ---------------------------------------------------------------- 1. per candidate


def per_candidate(spec: Path, epochs: int, repeats: int, threads: int) -> dict[str, Any]:
    from improve_dsl.compiler import compile_spec
    from improve_dsl.forkserver import ForkServer

    text = spec.read_text(encoding="utf-8")
    started = time.perf_counter()
    compile_spec(spec, text=text, check_shapes=True)  # the first one pays for the imports
    first_compile = time.perf_counter() - started
    compile_warm = median_of(
        repeats, lambda: _timed(lambda: compile_spec(spec, text=text, check_shapes=True))
    )
    script = compile_spec(spec, text=text, check_shapes=True).script
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.py"
        path.write_text(script, encoding="utf-8")
        run = partial(_timed_run, path, epochs=epochs, threads=threads)
        plain = [run(Path(tmp) / f"plain{i}") for i in range(repeats)]
        # As the refine loop uses it: the server is started with the executor, so its
        # imports overlap the loop's own work; the first run waits for what is left of them.
        server = ForkServer()
        try:
            first = run(Path(tmp) / "first", fork_server=server)
            forked = [run(Path(tmp) / f"forked{i}", fork_server=server) for i in range(repeats)]
        finally:
            server.close()
    imports = median_of(repeats, lambda: wall([PYTHON, "-c", "import torch, torchvision"]))
    bare = median_of(repeats, lambda: wall([PYTHON, "-c", "pass"]))
    out: dict[str, Any] = {
        "compile_warm": compile_warm,
        "compile_first_in_process": first_compile,
        "python_start": bare,
        "import_torch_torchvision": imports,
    }
    for name, rows in (("subprocess", plain), ("fork_server", forked)):
        medians = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        medians["outside_training"] = (
            compile_warm + medians["spawn_to_start"] + medians["result_to_exit"]
        )
        out[name] = medians
    out["fork_server_first_run_spawn_to_start"] = first["spawn_to_start"]
    return out


def _timed_run(
    path: Path, out_dir: Path, *, epochs: int, threads: int, **how: Any
) -> dict[str, float]:
    """One training run through ``run.run_script``, timed by when its events arrive."""
    from improve_dsl.run import run_script

    stamps: dict[str, float] = {}

    def on_event(event: dict[str, Any]) -> bool:
        stamps.setdefault(str(event.get("event")), time.perf_counter())
        return True

    began = time.perf_counter()
    result = run_script(
        path,
        out_dir,
        split="val",
        device="cpu",
        threads=threads,
        on_event=on_event,
        extra_args=["--epochs", str(epochs)],
        **how,
    )
    ended = time.perf_counter()
    if result.status != "ok":
        raise SystemExit(f"the training run failed: {result.reason}")
    train = _train_seconds(out_dir)
    return {
        "spawn_to_start": stamps["start"] - began,
        "train": train,
        "evaluate": stamps["result"] - stamps["start"] - train,
        "result_to_exit": ended - stamps["result"],
        "run_total": ended - began,
    }


def _timed(thunk: Callable[[], object]) -> float:
    started = time.perf_counter()
    thunk()
    return time.perf_counter() - started


def _train_seconds(out_dir: Path) -> float:
    metrics = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
    return float(metrics["seconds"])


# ---------------------------------------------------------------- 2. cached repeat


def cached_repeat(iters: int, threads: int) -> dict[str, Any]:
    from improve_dsl.refine import loop
    from improve_dsl.refine.options import RefineOptions

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "digits.imp"
        start = (REPO / "specs" / "digits.imp").read_text(encoding="utf-8")
        runs: list[list[dict[str, Any]]] = []
        walls: list[float] = []
        for name in ("first", "repeat"):
            spec.write_text(start, encoding="utf-8")  # the first run wrote its best spec back
            options = RefineOptions(
                iters=iters,
                expert="heuristic",
                device="cpu",
                threads=threads,
                run_dir=Path(tmp) / name,
            )
            began = time.perf_counter()
            loop.refine(spec, options)
            walls.append(time.perf_counter() - began)
            records = [
                json.loads(line)
                for line in (Path(tmp) / name / "journal.jsonl").read_text().splitlines()
                if line
            ]
            runs.append(records)
        repeat = runs[1]
        per_attempt = [
            float(r.get("propose_seconds") or 0.0) + float(r["seconds"])
            for r in repeat
            if r["iteration"] > 0
        ]
        lookups = [float(r["seconds"]) for r in repeat if r["iteration"] > 0]
        all_cached = all(r.get("cached") for r in repeat)
        return {
            "iters": iters,
            "first_run_seconds": walls[0],
            "repeat_run_seconds": walls[1],
            "repeat_all_cached": all_cached,
            "repeat_attempt_median": statistics.median(per_attempt) if per_attempt else None,
            "repeat_attempt_max": max(per_attempt) if per_attempt else None,
            "repeat_lookup_median": statistics.median(lookups) if lookups else None,
            "repeat_baseline_seconds": float(repeat[0]["seconds"]),
        }


# ---------------------------------------------------------------- 3. cold check / compile


def cold_cli(repeats: int) -> dict[str, Any]:
    rows: dict[str, dict[str, float | str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in sorted((REPO / "specs").glob("*.imp")):
            out = str(Path(tmp) / f"{spec.stem}.py")
            probe = subprocess.run(
                [IMPROVE, "compile", str(spec), "-o", out],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=False,
            )
            if probe.returncode != 0:  # e.g. image_folder.imp needs its folder to exist
                first = (probe.stderr or probe.stdout).strip().splitlines()[:1]
                rows[spec.name] = {"error": first[0] if first else f"exit {probe.returncode}"}
                continue
            rows[spec.name] = {
                "check": median_of(repeats, partial(wall, [IMPROVE, "check", str(spec)])),
                "compile": median_of(
                    repeats, partial(wall, [IMPROVE, "compile", str(spec), "-o", out])
                ),
            }
    return {
        "specs": rows,
        "python_start": median_of(repeats, lambda: wall([PYTHON, "-c", "pass"])),
        "import_cli": median_of(repeats, lambda: wall([PYTHON, "-c", "import improve_dsl.cli"])),
        "import_torch": median_of(repeats, lambda: wall([PYTHON, "-c", "import torch"])),
    }


# ---------------------------------------------------------------- 4. a folder, run again

FOLDER_SPEC = """\
pipeline folder_rerun {{
  metric = accuracy
  seed = 0
}}

data {{
  source = image_folder(root = "{root}", image_size = 32, channels = 3)
  validation = holdout(fraction = 0.2)
  batch_size = 64
}}

augment {{
  ops = [random_crop(padding = 4), horizontal_flip(p = 0.5)]
}}

model {{
  arch = cnn(channels = [16, 32])
}}

train {{
  epochs = 2
  optimizer = adamw(lr = 0.002, weight_decay = 0.05)
  schedule = cosine(warmup = 0.1)
  loss = cross_entropy(label_smoothing = 0.1)
}}
"""

# The same command line, in a process that notes when each part of it ends (printed as one
# JSON line on stdout, after the command's own output).
INSTRUMENTED = """\
import json, sys, time
marks = {"interpreter": time.time()}
from improve_dsl.cli import app
from improve_dsl import compiled_cache, run
marks["imports"] = time.time()
compile_for_run = compiled_cache.compile_for_run
def timed_compile(path):
    marks["compile_from"] = time.time()
    try:
        return compile_for_run(path)
    finally:
        marks["compile"] = time.time()
compiled_cache.compile_for_run = timed_compile
run_script = run.run_script
def timed_run(*args, on_event=None, **kwargs):
    marks["spawn_from"] = time.time()
    def seen(event):
        marks.setdefault(str(event.get("event")), time.time())
        return True if on_event is None else on_event(event)
    try:
        return run_script(*args, on_event=seen, **kwargs)
    finally:
        marks["run_end"] = time.time()
run.run_script = timed_run
code = app.main(sys.argv[1:])
marks["main_end"] = time.time()
print(json.dumps(marks))
sys.exit(code)
"""


def make_folder(root: Path, classes: int = 10, per_class: int = 500, size: int = 32) -> Path:
    """``classes`` folders of ``per_class`` PNG images, each class its own mean colour."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"class{label:02d}"
        folder.mkdir(parents=True)
        tint = rng.integers(0, 160, 3)
        for index in range(per_class):
            noise = rng.integers(0, 96, (size, size, 3))
            Image.fromarray((noise + tint).astype(np.uint8)).save(folder / f"{index:04d}.png")
    return root


def folder_rerun(repeats: int, threads: int) -> dict[str, Any]:
    from improve_dsl.resident import stop_servers

    with tempfile.TemporaryDirectory(prefix="imp-bench-") as tmp:
        work = Path(tmp)
        root = make_folder(work / "images")
        spec = work / "spec.imp"
        spec.write_text(FOLDER_SPEC.format(root=root), encoding="utf-8")
        env = dict(os.environ, XDG_CACHE_HOME=str(work / "cache"), OMP_NUM_THREADS=str(threads))
        env["XDG_RUNTIME_DIR"] = str(work / "rt")
        (work / "rt").mkdir()
        env["IMPROVE_FORK_SERVER_IDLE"] = "120"
        try:
            first = _improve_run(spec, work / "run0", env)
            rows = [_improve_run(spec, work / f"run{i + 1}", env) for i in range(repeats)]
            parts = _instrumented_run(spec, work / "parts", env)
            # For comparison: the same second run started as a fresh `python train.py`.
            plain_env = dict(env, IMPROVE_FORK_SERVER="0")
            plain = [_improve_run(spec, work / f"plain{i}", plain_env) for i in range(repeats)]
            plain_parts = _instrumented_run(spec, work / "plain_parts", plain_env)
        finally:
            stop_servers(work / "rt" / "improve")
    medians = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    plain_medians = {key: statistics.median(row[key] for row in plain) for key in plain[0]}
    return {
        "images": 5000,
        "first_run": first,
        "second_run_median": medians,
        "second_run_parts": parts,
        "second_run_without_fork_server_median": plain_medians,
        # its spawn → data event: the interpreter and the script's own imports
        "second_run_without_fork_server_parts": plain_parts,
        "outside_training_ratio_without_to_with": plain_medians["outside_training"]
        / medians["outside_training"],
        "target_outside_training": 2.5,
    }


def _improve_run(spec: Path, out: Path, env: dict[str, str]) -> dict[str, float]:
    began = time.perf_counter()
    subprocess.run(
        [IMPROVE, "run", str(spec), "--out", str(out), "--device", "cpu"],
        cwd=spec.parent,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    took = time.perf_counter() - began
    train = _train_seconds(out)
    return {"wall": took, "training": train, "outside_training": took - train}


def _instrumented_run(spec: Path, out: Path, env: dict[str, str]) -> dict[str, float]:
    began = time.time()
    proc = subprocess.run(
        [PYTHON, "-c", INSTRUMENTED, "run", str(spec), "--out", str(out), "--device", "cpu"],
        cwd=spec.parent,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    ended = time.time()
    marks = json.loads(proc.stdout.strip().splitlines()[-1])
    train = _train_seconds(out)
    return {
        "wall": ended - began,
        "training": train,
        "interpreter_start": marks["interpreter"] - began,
        "cli_imports": marks["imports"] - marks["interpreter"],
        "arguments_and_server_connect": marks["compile_from"] - marks["imports"],
        "compile_cache_lookup": marks["compile"] - marks["compile_from"],
        "run_directory_and_progress": marks["spawn_from"] - marks["compile"],
        "spawn_to_data_event": marks["data"] - marks["spawn_from"],
        "data_to_start_event": marks["start"] - marks["data"],
        "start_to_result_less_training": marks["result"] - marks["start"] - train,
        "result_to_run_end": marks["run_end"] - marks["result"],
        "after_run_to_exit": ended - marks["run_end"],
    }


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3, help="iterations of the cached repeat")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--skip", default="", help="comma list of: candidate,cache,cli,folder")
    args = parser.parse_args(argv)
    if not shutil.which(IMPROVE):
        raise SystemExit(f"{IMPROVE} not found: install the package (pip install -e .)")
    skip = set(filter(None, args.skip.split(",")))
    figures: dict[str, Any] = {"load_average_before": os.getloadavg()}
    if "cli" not in skip:
        figures["cli"] = cold_cli(args.repeats)
        print("cold CLI (s):", json.dumps(figures["cli"], indent=1))
    if "candidate" not in skip:
        figures["candidate"] = per_candidate(
            REPO / "specs" / "fashion_mnist_quick.imp", args.epochs, args.repeats, args.threads
        )
        print("per candidate (s):", json.dumps(figures["candidate"], indent=1))
    if "cache" not in skip:
        figures["cache"] = cached_repeat(args.iters, args.threads)
        print("cached repeat (s):", json.dumps(figures["cache"], indent=1))
    if "folder" not in skip:
        figures["folder_rerun"] = folder_rerun(args.repeats, args.threads)
        print("second improve run on a decoded folder (s):")
        print(json.dumps(figures["folder_rerun"], indent=1))
    figures["load_average_after"] = os.getloadavg()
    figures["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
