"""The standard datasets' loaders, on small files written in each dataset's real on-disk
format: CIFAR's Python pickles, SVHN's MATLAB files, MNIST's IDX files."""

from __future__ import annotations

import functools
import gzip
import json
import pickle
import struct
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from improve_dsl.render import render_script
from improve_dsl.validate import load_text

RNG = np.random.default_rng(0)


@functools.cache
def script_module(source: str) -> types.ModuleType:
    """The generated script for a spec reading `source`, imported without running main
    (rendering takes a second: once per source; tests pass their folder to load_source)."""
    spec = load_text(
        "pipeline t {\n  seed = 0\n}\n"
        f"data {{\n  source = {source}\n}}\n"
        "model {\n  arch = mlp(width = 16, depth = 1)\n}\n"
        "train {\n  epochs = 1\n}\n"
    )
    module = types.ModuleType("generated_train")
    sys.modules[module.__name__] = module
    try:
        exec(compile(render_script(spec), "train.py", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module


# ---------------------------------------------------------------- writers of the real formats


def write_cifar_pickle(path: Path, images: np.ndarray, labels_key: str, labels: list[int]) -> None:
    """A CIFAR batch as the dataset ships it: a pickled dict whose "data" holds one row of
    3,072 bytes per image (the red, then green, then blue 32x32 plane)."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # NHWC -> planar rows
    batch = {"batch_label": "testing batch", labels_key: labels, "data": rows}
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes: magic 0x00000803 (images) or 0x00000801 (labels),
    big-endian dimension sizes, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_svhn_mat(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """SVHN's format: X is [32, 32, 3, N] uint8, y is [N, 1] with 10 standing for digit 0."""
    import scipy.io

    stored = np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]
    scipy.io.savemat(str(path), {"X": images.transpose(1, 2, 3, 0), "y": stored})


def colour_images(count: int) -> np.ndarray:
    return RNG.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)  # NHWC


# ---------------------------------------------------------------- the loaders


def test_cifar10_reads_its_python_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"  # torchvision's download layout
    folder.mkdir()
    batches = [colour_images(4) for _ in range(5)]
    for i, images in enumerate(batches, start=1):
        write_cifar_pickle(folder / f"data_batch_{i}", images, "labels", [i % 10, 1, 2, 3])
    test_images = colour_images(3)
    write_cifar_pickle(folder / "test_batch", test_images, "labels", [7, 8, 9])
    names = ["airplane", "automobile", "bird", "cat", "deer"] + [f"c{i}" for i in range(5)]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=2))

    train, test, class_names = script_module("cifar10()").load_source(str(tmp_path))
    assert class_names == names
    assert tuple(train.images.shape) == (20, 3, 32, 32) and len(test) == 3
    # The pixel at row 5, column 7 of the 1st image of batch 2, as the loader sees it (CHW).
    assert train.images[4, :, 5, 7].tolist() == batches[1][0, 5, 7].tolist()
    assert test.labels.tolist() == [7, 8, 9] and train.labels[:4].tolist() == [1, 1, 2, 3]


def test_cifar100_reads_its_python_pickles_with_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train_images = colour_images(6)
    write_cifar_pickle(folder / "train", train_images, "fine_labels", [0, 99, 5, 5, 42, 1])
    write_cifar_pickle(folder / "test", colour_images(2), "fine_labels", [3, 4])
    fine = [f"fine{i}" for i in range(100)]
    (folder / "meta").write_bytes(
        pickle.dumps({"fine_label_names": fine, "coarse_label_names": ["a"] * 20}, protocol=2)
    )
    train, test, names = script_module("cifar100()").load_source(str(folder))
    assert names == fine and len(test) == 2
    assert train.labels.tolist() == [0, 99, 5, 5, 42, 1]
    assert train.images[2, 2].tolist() == train_images[2, :, :, 2].tolist()  # the blue plane


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("this must never run",))

    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(pickle.dumps({"data": Exploit()}, protocol=2))
    module = script_module("cifar100()")
    with pytest.raises(module.RunFailed, match=r"print is not allowed in a dataset file"):
        module.load_source(str(folder))


def test_svhn_reads_its_matlab_files(tmp_path: Path) -> None:
    train_images, train_labels = colour_images(5), np.array([0, 1, 2, 9, 0])
    write_svhn_mat(tmp_path / "train_32x32.mat", train_images, train_labels)
    write_svhn_mat(tmp_path / "test_32x32.mat", colour_images(2), np.array([3, 0]))
    train, test, names = script_module("svhn()").load_source(str(tmp_path))
    assert names == [str(d) for d in range(10)]
    assert train.labels.tolist() == [0, 1, 2, 9, 0] and test.labels.tolist() == [3, 0]
    assert tuple(train.images.shape) == (5, 3, 32, 32)
    assert train.images[3, :, 10, 20].tolist() == train_images[3, 10, 20].tolist()


@pytest.mark.parametrize("layout", ["", "MNIST/raw"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_mnist_reads_its_idx_files(tmp_path: Path, layout: str, suffix: str) -> None:
    folder = tmp_path / layout
    folder.mkdir(parents=True, exist_ok=True)
    images = RNG.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", np.array([5, 0, 4, 1, 9, 2]))
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", images[:2])
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", np.array([7, 2]))
    train, test, _ = script_module("mnist()").load_source(str(tmp_path))
    assert train.labels.tolist() == [5, 0, 4, 1, 9, 2] and test.labels.tolist() == [7, 2]
    assert tuple(train.images.shape) == (6, 1, 28, 28)
    assert train.images[3, 0].tolist() == images[3].tolist()


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("cifar10", "CIFAR-10 not found: looked for data_batch_1"),
        ("cifar100", "CIFAR-100 not found: looked for train, test, meta"),
        ("svhn", "SVHN not found: looked for train_32x32.mat"),
        ("mnist", "MNIST not found: looked for its IDX files"),
    ],
)
def test_a_missing_dataset_says_where_it_looked(tmp_path: Path, source: str, words: str) -> None:
    module = script_module(f"{source}()")
    with pytest.raises(module.RunFailed, match=words) as caught:
        module.load_source(str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(caught.value)


@pytest.mark.slow
def test_a_cifar10_spec_trains_on_the_written_pickles(tmp_path: Path) -> None:
    """The whole way: the compiled script on the pickles, one epoch of a tiny MLP."""
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        write_cifar_pickle(
            folder / f"data_batch_{i}", colour_images(20), "labels", list(range(10)) * 2
        )
    write_cifar_pickle(folder / "test_batch", colour_images(10), "labels", list(range(10)))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}))
    spec = tmp_path / "c.imp"
    spec.write_text(
        "pipeline c {\n  seed = 0\n}\n"
        'data {\n  source = cifar10(root = "data")\n  batch_size = 16\n}\n'
        "model {\n  arch = mlp(width = 16, depth = 1)\n}\n"
        "train {\n  epochs = 1\n}\n"
    )
    out = tmp_path / "run"
    (tmp_path / "t.py").write_text(render_script(load_text(spec.read_text(), "c.imp")))
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "t.py"), "--out", str(out), "--threads", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "ok" and 0.0 <= metrics["val_accuracy"] <= 1.0
