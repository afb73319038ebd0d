"""An image folder is decoded once into a cache the generated script keeps, and streamed from
it when the decoded images exceed the memory budget.

Tiny real folders (PNG and JPEG files written with Pillow), real generated scripts; the runs
are in-process (one thread) except the refinement, which is the real command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import load_script
from PIL import Image
from rich.console import Console
from test_training import Run, spec_text, write_script

from improve_dsl.dataset_profile import profile_dataset
from improve_dsl.folder_memory import FolderMemory, human_bytes
from improve_dsl.ir import Op
from improve_dsl.progress import EpochProgress

CLASSES = ("red", "green", "blue")


def make_folder(root: Path, per_class: int = 10) -> Path:
    """Three classes told apart by colour, PNG and JPEG files of assorted sizes, one broken."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (18 + i % 4, 20, 3), dtype=np.uint8)
            pixels[..., label] += 180
            suffix = ".jpg" if i % 2 else ".png"
            Image.fromarray(pixels).save(root / name / f"{i}{suffix}")
    (root / "green" / "broken.png").write_bytes(b"not an image")
    return root


def folder_script(tmp_path: Path, root: Path, **source: str) -> Path:
    params = "".join(f", {key} = {value}" for key, value in source.items())
    text = spec_text(
        source=f'image_folder(root = "{root}", image_size = 12{params})',
        batch_size="8",
        epochs="2",
        arch="cnn(channels = [8, 16])",
        ops="random_crop(padding = 2), horizontal_flip(p = 0.5)",
    )
    return write_script(tmp_path, text)


def run_script(script: Path, capsys: pytest.CaptureFixture[str], *args: str) -> Run:
    """A fresh import each time, as a new process would see it."""
    return Run(load_script(script), capsys, *args)


def kinds(run: Run, kind: str) -> list[dict[str, Any]]:
    return [e for e in run.events if e["event"] == kind]


def the_data_event(run: Run) -> dict[str, Any]:
    (event,) = kinds(run, "data")
    return event


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One script for the tests that read folders (rendering takes seconds); each gives its
    folder to load_source, and has its own user cache folder."""
    return folder_script(tmp_path_factory.mktemp("script"), Path("unused"))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's cache folder: the default one, under its own $XDG_CACHE_HOME."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "improve" / "folders"


def load_pool(script: Path, folder: Path) -> Any:
    """The training pool (the test share taken out) as the script's load_source gives it, in a
    fresh import, as a new process would see it."""
    return load_script(script).load_source(str(folder))[0]


def entry_of(cache: Path) -> Path:
    (entry,) = cache.glob("pictures-12px-3ch-*")
    return entry


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "pictures")


def test_decoded_once_then_reopened(script: Path, folder: Path, cache: Path) -> None:
    assert load_pool(script, folder).cache.status == "new"
    entry = entry_of(cache)
    assert sorted(p.name for p in entry.iterdir()) == ["images.npy", "labels.npy", "manifest.json"]
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]
    images = np.load(entry / "images.npy", mmap_mode="r")  # a plain memory-mappable .npy
    labels = np.load(entry / "labels.npy")
    assert images.shape == (31, 3, 12, 12) and images.dtype == np.uint8
    assert sorted(labels.tolist()).count(-1) == 1  # the broken file, kept out of every split
    manifest = json.loads((entry / "manifest.json").read_text())
    assert (manifest["files"], manifest["decoded"], manifest["why"]) == (31, 30, "new")
    # The red class (label 2: classes are sorted by name) is red once decoded.
    red = images[labels == 2].astype(float).mean(axis=(0, 2, 3))
    assert red[0] > red[1] + 100 and red[0] > red[2] + 100

    reopened = load_pool(script, folder)
    assert reopened.cache.status == "hit" and len(reopened) == 24  # 30 less the test share
    assert torch.equal(reopened.cache.read(torch.arange(31)), torch.from_numpy(images.copy()))


def test_a_changed_added_or_removed_file_means_decoding_again(
    script: Path, folder: Path, cache: Path
) -> None:
    assert load_pool(script, folder).cache.status == "new"
    # Changed: a red image repainted blue; same name and size, a new modification time.
    target = folder / "red" / "0.png"
    pixels = np.zeros((18, 20, 3), dtype=np.uint8)
    pixels[..., 2] = 250
    Image.fromarray(pixels).save(target)
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert load_pool(script, folder).cache.status == "changed"
    images = np.load(entry_of(cache) / "images.npy")
    blue = [i for i in range(len(images)) if images[i, 2].mean() > 240 and images[i, :2].max() == 0]
    assert len(blue) == 1  # the new pixels are in the cache

    assert load_pool(script, folder).cache.status == "hit"
    Image.fromarray(pixels).save(folder / "blue" / "new.png")
    added = load_pool(script, folder)
    assert added.cache.status == "changed" and int((added.cache.labels >= 0).sum()) == 31
    (folder / "red" / "1.jpg").unlink()
    removed = load_pool(script, folder)
    assert removed.cache.status == "changed" and int((removed.cache.labels >= 0).sum()) == 30
    # One cache per folder, replaced rather than piled up.
    assert len(list(cache.glob("pictures-12px-3ch-*"))) == 1


@pytest.mark.parametrize("damage", ["truncated", "manifest", "labels", "half-written"])
def test_a_broken_cache_is_rebuilt_never_trusted(
    script: Path, folder: Path, cache: Path, capfd: pytest.CaptureFixture[str], damage: str
) -> None:
    good = load_pool(script, folder).cache.read(torch.arange(31))
    entry = entry_of(cache)
    if damage == "truncated":
        with open(entry / "images.npy", "r+b") as file:
            file.truncate((entry / "images.npy").stat().st_size - 100)
    elif damage == "manifest":
        (entry / "manifest.json").write_text('{"key": ')
    elif damage == "labels":
        (entry / "labels.npy").write_bytes(b"\x93NUMPY garbage")
    else:  # a run killed while decoding leaves its temporary folder, never a cache
        entry.rename(entry.with_name(f".{entry.name}.tmp-999"))
    capfd.readouterr()
    again = load_pool(script, folder)
    assert again.cache.status == ("new" if damage == "half-written" else "rebuilt")
    if damage != "half-written":
        assert "decoding the folder again" in capfd.readouterr().err
    assert torch.equal(again.cache.read(torch.arange(31)), good)
    assert load_pool(script, folder).cache.status == "hit"


def test_streamed_batches_are_the_cached_rows_and_the_reader_stops(
    script: Path, folder: Path, cache: Path
) -> None:
    module = load_script(script)
    module.emit = lambda event: None
    module.MEMORY_BUDGET = 0  # as the spec's memory_budget = 0 sets it
    pool, _, _ = module.load_source(str(folder))
    streamed = pool.to(torch.device("cpu"))
    assert streamed.images is None and streamed.cache.stream
    module.MEMORY_BUDGET = None
    held = module.load_source(str(folder))[0].to(torch.device("cpu"))
    assert held.images is not None and not held.cache.stream

    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(1))
    compared = 0  # batch by batch: a streamed batch's buffer is reused after the next one
    for (a_images, a_labels), (b_images, b_labels) in zip(
        streamed.batches(order, 5), held.batches(order, 5), strict=True
    ):
        assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)
        compared += 1
    assert compared == 5
    # Leaving early (as an exception in training would) stops the reading thread.
    before = threading.active_count()
    batches = streamed.batches(order, 2)
    next(batches)
    assert threading.active_count() == before + 1
    batches.close()
    assert threading.active_count() == before


@pytest.mark.parametrize(("prefetch_bytes", "ahead"), [(2**30, 4), (1, 1)])
def test_the_reader_runs_ahead_by_at_most_prefetch_batches_and_bytes(
    script: Path, folder: Path, cache: Path, prefetch_bytes: int, ahead: int
) -> None:
    module = load_script(script)
    module.emit = lambda event: None
    module.MEMORY_BUDGET = 0
    module.PREFETCH_BYTES = prefetch_bytes  # 1: less than one batch, so one batch ahead
    streamed = module.load_source(str(folder))[0].to(torch.device("cpu"))
    reads = 0
    read = streamed.cache.read

    def counted(rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        nonlocal reads
        reads += 1
        return read(rows, out)

    streamed.cache.read = counted
    batches = streamed.batches(torch.arange(len(streamed)), 2)
    next(batches)
    # The one handed out, `ahead` queued and one more waiting for room in the queue.
    deadline = time.monotonic() + 10
    while reads < ahead + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert reads == ahead + 2
    batches.close()


def test_a_split_with_no_images_is_empty_not_an_error(
    script: Path, tmp_path: Path, cache: Path
) -> None:
    make_folder(tmp_path / "data" / "train")
    for name in CLASSES:
        (tmp_path / "data" / "test" / name).mkdir(parents=True)
    train, test, _ = load_script(script).load_source(str(tmp_path / "data"))
    assert len(train) == 30 and len(test) == 0


def test_an_unwritable_cache_folder_is_a_clear_failure(
    script: Path, tmp_path: Path, folder: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    module = load_script(script)
    module.CACHE = str(blocker / "cache")  # as the spec's cache = "..." sets it
    with pytest.raises(module.RunFailed) as failed:
        module.load_source(str(folder))
    assert failed.value.reason == "data_missing"
    assert "cannot write the image cache" in str(failed.value)
    assert 'set cache = "a/writable/folder"' in str(failed.value)


# ---------------------------------------------------------------- what the user is told


def test_the_profile_says_how_big_the_folder_is_and_whether_it_streams(folder: Path) -> None:
    def storage(**params: object) -> str:
        source = Op(
            "image_folder",
            {"root": str(folder), "image_size": 64, "channels": 3, "test_fraction": 0.2, **params},
        )  # type: ignore[dict-item]
        return profile_dataset(source).storage

    on_disk = sum(p.stat().st_size for p in folder.rglob("*.*") if p.name != "broken.png")
    held = storage()
    assert held.startswith(f"{human_bytes(on_disk)} in 30 files, {human_bytes(30 * 3 * 64 * 64)}")
    assert "held in memory" in held and "half the memory available here" in held
    streamed = storage(memory_budget=0.0001)
    assert "stream from the decode cache" in streamed and "budget 107 kB: memory_budget" in streamed
    described = profile_dataset(
        Op(
            "image_folder",
            {"root": str(folder), "image_size": 64, "channels": 3, "test_fraction": 0.2},
        )
    ).describe()
    assert f"storage: {held.split(' (budget')[0]} (budget " in described


def test_human_sizes() -> None:
    assert [human_bytes(n) for n in (0, 999, 1000, 123_456, 2_460_000_000, 10**13)] == [
        "0 B",
        "999 B",
        "1 kB",
        "123 kB",
        "2.46 GB",
        "1e+04 GB",
    ]
    memory = FolderMemory(files=2, file_bytes=10, decoded_bytes=11, budget=10, budget_set=False)
    assert memory.streams


def test_run_progress_shows_decoding_and_where_the_images_are() -> None:
    out = StringIO()
    progress = EpochProgress(Console(file=out, force_terminal=False, width=200), "run")
    with progress:
        progress({"event": "decode", "done": 64, "total": 256, "seconds": 2.0})
        progress({"event": "decode", "done": 256, "total": 256, "seconds": 8.0})
        progress(
            {
                "event": "data",
                "cache": "new",
                "images": 255,
                "decoded_bytes": 2_000_000,
                "memory_budget": 1_000_000,
                "stream": True,
                "cache_dir": "/c/x",
            }
        )
    lines = out.getvalue().splitlines()
    assert lines == [
        "decoding images: 64/256 files, about 6 s left",
        "decoding images: 256/256 files",
        "images: 255 (decoded now), 2 MB against a memory budget of 1 MB; streamed from the "
        "cache (cache: /c/x)",
    ]


# ---------------------------------------------------------------- whole runs


@pytest.mark.slow
def test_runs_decode_once_and_train_the_same_from_the_cache(
    tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = folder_script(tmp_path, folder, cache=f'"{tmp_path / "cache"}"')
    first = run_script(script, capsys)
    assert first.ok, first.result
    assert the_data_event(first)["cache"] == "new" and not the_data_event(first)["stream"]
    progress = kinds(first, "decode")
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 31
    second = run_script(script, capsys)
    assert second.ok and the_data_event(second)["cache"] == "hit"
    assert not kinds(second, "decode")
    assert second.losses() == first.losses()  # decoding leaves the random state alone
    assert second.result["val_accuracy"] == first.result["val_accuracy"]
    # 30 images: 6 held out for test, 5 of the other 24 for validation.
    assert second.start["train_size"] == first.start["train_size"] == 19


@pytest.mark.slow
def test_past_the_memory_budget_batches_stream_from_the_cache(
    tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = f'"{tmp_path / "cache"}"'
    in_memory = run_script(folder_script(tmp_path, folder, cache=cache), capsys)
    streamed = run_script(folder_script(tmp_path, folder, cache=cache, memory_budget="0"), capsys)
    event = the_data_event(streamed)
    assert event["stream"] and event["memory_budget"] == 0 and event["cache"] == "hit"
    assert event["decoded_bytes"] == 30 * 3 * 12 * 12
    # Same batches in the same order, augmented on the device the same way: same training.
    assert streamed.losses() == in_memory.losses()
    assert streamed.result["val_accuracy"] == in_memory.result["val_accuracy"]
    test = run_script(
        folder_script(tmp_path, folder, cache=cache, memory_budget="0"), capsys, "--split", "test"
    )
    assert test.ok and test.start["eval_size"] == 6


# ---------------------------------------------------------------- refinement


@pytest.mark.slow
def test_a_refinement_decodes_the_folder_once(tmp_path: Path, folder: Path) -> None:
    spec = tmp_path / "pictures.imp"
    spec.write_text(
        spec_text(
            source=f'image_folder(root = "{folder}", image_size = 12)',
            batch_size="8",
            epochs="1",
            arch="cnn(channels = [8, 16])",
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "user-cache")
    done = subprocess.run(
        [sys.executable, "-m", "improve_dsl.cli", "refine", str(spec), "--iters", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    logs = sorted((tmp_path / "pictures.improve").rglob("log"))
    assert len(logs) >= 3  # the start, two candidates (and the final test run)
    statuses = []
    for log in logs:
        events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        statuses += [e["cache"] for e in events if e["event"] == "data"]
    assert statuses.count("new") == 1 and statuses.count("hit") == len(statuses) - 1
    assert len(statuses) >= len(logs)
    assert list((tmp_path / "user-cache" / "improve" / "folders").glob("pictures-12px-3ch-*"))
