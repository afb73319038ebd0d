"""A user's own images at scale: an image folder decoded once, and streamed when it does not fit.

Builds a synthetic folder of JPEGs from Fashion-MNIST (by default its first 50,000 training
images, upscaled 28 -> 128 px with bicubic resampling, as RGB, JPEG quality 90, one folder
per class), compiles a spec that reads it with `image_folder(image_size = 128)`, and reports:

- the first run's decode time: the compiled script's `load_source` (scan, decode every file
  by the script's worker processes, write the cache), in a fresh process, with no cache;
- a cached reopen: the same call again (scan and stat every file, check the key, open);
- training images/s with the decoded images held in memory and streamed from the cache
  (`memory_budget = 0`), with the same batch, model, augmentation and seed, as the script's
  own `images_per_second` (training loop only); the two are run alternately, `--rounds` times;
- the peak resident memory of each training process (the kernel's ru_maxrss, from wait4).

    nice python bench/folders.py                        # 50,000 images at 128 px, ~10 minutes
    python bench/folders.py --images 2000 --size 64     # a quick look

The folder and the cache live under --work (default: the temp folder); the folder is kept and
reused when its recipe matches, the cache is deleted first so that the first run decodes.
Figures go to bench/results/folders.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from improve_dsl.render import render_script  # noqa: E402
from improve_dsl.validate import load_text  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "t_shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)

SPEC = """\
pipeline folders_bench {{
  metric = accuracy
  seed = 0
}}

data {{
  source = image_folder(root = "{root}", image_size = {size}, channels = 3,
                        cache = "{cache}"{budget})
  validation = holdout(fraction = {validation})
  batch_size = {batch}
}}

augment {{
  ops = [random_crop(padding = {padding}), horizontal_flip(p = 0.5)]
}}

model {{
  # A light network (a 4x4 stride-4 stem), so that the data path weighs as much as it can.
  layers = [conv(out = 24, kernel = 4, stride = 4), batch_norm, relu, conv(out = 48, stride = 2),
            batch_norm, relu, global_avg_pool, flatten]
}}

train {{
  epochs = {epochs}
  optimizer = sgd(lr = 0.05, momentum = 0.9, nesterov = true, weight_decay = 0.0005)
  schedule = one_cycle(warmup = 0.2)
}}

eval {{
  batch_size = {batch}
}}
"""


def read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _write_images(job: tuple[Path, int, np.ndarray, np.ndarray, int]) -> int:
    from PIL import Image

    root, start, images, labels, size = job
    for offset, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        image = Image.fromarray(pixels, "L").resize((size, size), Image.Resampling.BICUBIC)
        path = root / CLASSES[int(label)] / f"{start + offset:05d}.jpg"
        image.convert("RGB").save(path, quality=90)
    return len(images)


def build_folder(root: Path, count: int, size: int) -> dict[str, Any]:
    """The synthetic folder (reused when its recipe matches); how long building it took."""
    recipe = {"source": "fashion-mnist train", "images": count, "size": size, "quality": 90}
    marker = root / "recipe.json"
    if marker.exists() and json.loads(marker.read_text()) == recipe:
        return {"built": False, "seconds": 0.0}
    shutil.rmtree(root, ignore_errors=True)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
    images = read_idx(FASHION / "train-images-idx3-ubyte.gz")[:count]
    labels = read_idx(FASHION / "train-labels-idx1-ubyte.gz")[:count]
    started = time.perf_counter()
    chunk = 1000
    jobs = [
        (root, i, images[i : i + chunk], labels[i : i + chunk], size)
        for i in range(0, count, chunk)
    ]
    with Pool(os.cpu_count() or 1) as pool:
        written = sum(pool.map(_write_images, jobs))
    assert written == count
    marker.write_text(json.dumps(recipe))
    return {"built": True, "seconds": time.perf_counter() - started}


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.jpg"))


def compile_spec(work: Path, name: str, **fields: Any) -> Path:
    text = SPEC.format(**fields)
    script = work / f"{name}.py"
    script.write_text(render_script(load_text(text, f"{name}.imp")), encoding="utf-8")
    return script


def time_load_source(script: Path) -> dict[str, Any]:
    """The compiled script's load_source in a fresh process: seconds and what it reported."""
    code = (
        "import json, sys, time\n"
        f"sys.path.insert(0, {str(script.parent)!r})\n"
        f"import {script.stem} as train\n"
        "started = time.perf_counter()\n"
        "pool, test, names = train.load_source(None)\n"
        "print(json.dumps({'event': 'timed', 'seconds': time.perf_counter() - started,\n"
        "  'cache': pool.cache.status, 'images': len(pool) + len(test)}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=3600
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    timed = next(e for e in events if e["event"] == "timed")
    decode = [e for e in events if e["event"] == "decode"]
    return {**timed, "decode_events": len(decode)}


def anonymous_bytes(pid: int) -> int:
    """The process's resident anonymous memory now (RssAnon): its own data, without the pages
    of the shared libraries it maps (torch's alone are hundreds of megabytes)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def train(script: Path, threads: int) -> dict[str, Any]:
    """One training run of the script as its own process: its result and data event, its peak
    resident memory (ru_maxrss, from wait4) and its peak anonymous memory (RssAnon, sampled
    every 50 ms), and its CPU seconds."""
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(
            [sys.executable, str(script), "--device", "cpu", "--threads", str(threads)],
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
        peak_anonymous = 0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak_anonymous = max(peak_anonymous, anonymous_bytes(process.pid))
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        events = [json.loads(line) for line in out if line.startswith("{")]
    result = events[-1]
    if result.get("status") != "ok":
        raise RuntimeError(f"{script.name} failed: {result}")
    data = next(e for e in events if e["event"] == "data")
    return {
        "images_per_second": result["images_per_second"],
        "train_seconds": result["seconds"],
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "val_accuracy": result["val_accuracy"],
        "stream": data["stream"],
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports kilobytes
        "peak_anonymous_bytes": peak_anonymous,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="in-memory/streaming run pairs")
    parser.add_argument(
        "--validation",
        type=float,
        default=0.5,
        help="share of the pool held out for validation (half by default: on a small CPU, "
        "evaluating is cheaper than training, and the set held in memory is the same)",
    )
    parser.add_argument(
        "--keep-cache",
        action="store_true",
        help="reuse the decode cache of an earlier run (no first-run decode is timed)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "improve-bench")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "folders.json")
    args = parser.parse_args()

    root = args.work / f"fashion{args.size}-{args.images}"
    cache = args.work / "cache"
    build = build_folder(root, args.images, args.size)
    print(
        f"folder: {args.images:,} JPEGs at {args.size} px, {folder_bytes(root) / 1e6:.0f} MB"
        + (f", built in {build['seconds']:.0f} s" if build["built"] else " (reused)"),
        flush=True,
    )
    fields = {
        "root": root,
        "size": args.size,
        "cache": cache,
        "batch": args.batch,
        "epochs": args.epochs,
        "padding": max(2, args.size // 16),
        "validation": args.validation,
    }
    in_memory = compile_spec(args.work, "in_memory", budget="", **fields)
    streamed = compile_spec(args.work, "streamed", budget=", memory_budget = 0", **fields)

    first: dict[str, Any] = {"seconds": None}
    if not args.keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
        first = time_load_source(in_memory)
        assert first["cache"] == "new", first
        print(
            f"first run: {first['images']:,} images decoded in {first['seconds']:.1f} s", flush=True
        )
    reopen = time_load_source(in_memory)
    assert reopen["cache"] == "hit" and reopen["decode_events"] == 0, reopen
    print(f"cached reopen: {reopen['seconds']:.2f} s", flush=True)

    runs: dict[str, list[dict[str, Any]]] = {"in_memory": [], "streamed": []}
    for round_ in range(args.rounds):
        for name, script in (("in_memory", in_memory), ("streamed", streamed)):
            run = train(script, args.threads)
            runs[name].append(run)
            print(
                f"round {round_ + 1} {name}: {run['images_per_second']:.0f} images/s, "
                f"peak RSS {run['peak_rss_bytes'] / 2**20:.0f} MiB, peak anonymous "
                f"{run['peak_anonymous_bytes'] / 2**20:.0f} MiB, {run['cpu_seconds']:.0f} CPU s, "
                f"val_accuracy {run['val_accuracy']:.4f}",
                flush=True,
            )
    assert not any(r["stream"] for r in runs["in_memory"])
    assert all(r["stream"] for r in runs["streamed"])

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    speed = median("streamed", "images_per_second") / median("in_memory", "images_per_second")
    memory = median("streamed", "peak_rss_bytes") / median("in_memory", "peak_rss_bytes")
    anonymous = median("streamed", "peak_anonymous_bytes") / median(
        "in_memory", "peak_anonymous_bytes"
    )
    cpu = median("in_memory", "cpu_seconds") / median("streamed", "cpu_seconds")
    decoded = args.images * 3 * args.size * args.size
    summary = {
        "images": args.images,
        "size": args.size,
        "folder_bytes": folder_bytes(root),
        "decoded_bytes": decoded,
        "batch": args.batch,
        "epochs": args.epochs,
        "validation": args.validation,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "build_seconds": build["seconds"] if build["built"] else None,
        "first_decode_seconds": first["seconds"],
        "cached_reopen_seconds": reopen["seconds"],
        "runs": runs,
        "streamed_over_in_memory_images_per_second": speed,
        "streamed_over_in_memory_peak_rss": memory,
        "streamed_over_in_memory_peak_anonymous": anonymous,
        "in_memory_over_streamed_cpu_seconds": cpu,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"streamed / in memory: images/s {speed:.2f} (target >= 0.90; by CPU seconds "
        f"{cpu:.2f}), peak RSS {memory:.2f}, peak anonymous memory {anonymous:.2f} "
        f"(target <= 0.25); wrote {args.out}"
    )


if __name__ == "__main__":
    main()
