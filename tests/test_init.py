"""``improve init``: a starting spec from a dataset profile, for folders and built-ins.

The folders are made here with Pillow: PNG and JPEG files, mixed modes and sizes, names with
spaces, a corrupt file. A written spec must pass ``improve check`` and ``improve fmt --check``;
one is trained end to end with ``improve run``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from improve_dsl.cli import main
from improve_dsl.fmt import format_text
from improve_dsl.validate import load

REPO = Path(__file__).resolve().parent.parent


def _image(path: Path, size: tuple[int, int], mode: str, shade: int) -> None:
    """A synthetic image whose class shows in its brightness pattern."""
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    w, h = size
    base = np.full((h, w), shade, dtype=np.float32)
    base[: h // 2] = 255 - shade  # top half bright or dark, by class
    noise = rng.normal(0, 12, (h, w))
    gray = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(gray, "L")
    if mode != "L":
        image = image.convert("RGB").convert(mode) if mode != "P" else image.convert("P")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        image.convert("RGB" if mode != "L" else "L").save(path, quality=90)
    else:
        image.save(path)


def make_folder(root: Path, *, gray_only: bool = False, per_class: int = 12) -> Path:
    """Two classes ("light top" and "dark top") of PNG and JPEG files of mixed modes and sizes,
    with spaces in the names and one corrupt file."""
    sizes = [(40, 40), (48, 36), (64, 64), (36, 44)]
    modes = ["L"] if gray_only else ["L", "RGB", "RGBA", "P"]
    for label, (name, shade) in enumerate((("light top", 30), ("dark top", 225))):
        for i in range(per_class):
            suffix = ".jpg" if i % 3 == 0 else ".png"
            _image(
                root / name / f"sample {i}{suffix}",
                sizes[(i + label) % len(sizes)],
                modes[i % len(modes)],
                shade,
            )
    (root / "light top" / "broken file.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    (root / "notes.txt").write_text("not a class")
    return root


def init(data: str | Path, out: Path, *extra: str) -> int:
    return main(["init", "--data", str(data), "-o", str(out), *extra])


def test_folder_spec_checks_formats_and_describes_the_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_folder(tmp_path / 'my "pets" photos')
    out = tmp_path / "spec.imp"
    assert init(data, out) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed
    # The folder's size on disk and decoded (24 readable files at 3x32x32), and where it goes.
    assert " in 24 files, 73.7 kB decoded; they will be held in memory (budget " in printed
    text = out.read_text()
    assert "# storage: " in text
    assert format_text(text, str(out)) == text  # improve fmt --check passes
    spec = load(out)  # improve check passes
    source = spec.data.source
    assert source.name == "image_folder"
    assert source["root"] == str(data)  # quotes and spaces survive the string literal
    # Median shorter side is 40 → the largest listed size not above it; colour present → RGB.
    assert source["image_size"] == 32 and source["channels"] == 3
    assert spec.model.arch is not None and spec.model.arch.name == "resnet"
    assert spec.pipeline.name == "my_pets_photos"
    header = text.split("pipeline ")[0]
    assert "2 classes" in header and "dark top, light top" in header
    assert "unreadable" in header  # the corrupt file is counted
    assert "mixed image modes" in header and "mixed image sizes" in header
    assert main(["check", str(out)]) == 0
    assert main(["fmt", "--check", str(out)]) == 0


def test_grayscale_folder_gets_one_channel_and_a_cnn(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "gray", gray_only=True)
    out = tmp_path / "gray.imp"
    assert init(data, out) == 0
    spec = load(out)
    assert spec.data.source["channels"] == 1
    assert spec.model.arch is not None and spec.model.arch.name == "cnn"


@pytest.mark.parametrize(
    ("name", "arch", "flip"),
    [("digits", "cnn", False), ("fashion_mnist", "cnn", True), ("cifar10", "resnet", True)],
)
def test_builtin_datasets(tmp_path: Path, name: str, arch: str, flip: bool) -> None:
    out = tmp_path / f"{name}.imp"
    assert init(name, out) == 0
    text = out.read_text()
    assert format_text(text, str(out)) == text
    spec = load(out)
    assert spec.data.source.name == name
    assert spec.model.arch is not None and spec.model.arch.name == arch
    assert any(op.name == "horizontal_flip" for op in spec.augment.ops) == flip
    assert "10 classes" in text.split("pipeline ")[0]


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        ("empty", "no images found"),
        ("one_class", "only one class"),
        ("only_corrupt", "only one class"),
        ("missing", "neither a folder nor a built-in dataset"),
        ("file", "is a file"),
    ],
)
def test_unusable_data_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, words: str
) -> None:
    data = tmp_path / "data"
    if setup == "empty":
        (data / "a").mkdir(parents=True)
        (data / "b").mkdir()
    elif setup == "one_class":
        _image(data / "only" / "x.png", (16, 16), "L", 10)
    elif setup == "only_corrupt":
        _image(data / "good" / "x.png", (16, 16), "L", 10)
        (data / "bad").mkdir()
        (data / "bad" / "y.txt").write_text("no image")
    elif setup == "file":
        data.write_text("not a folder")
    out = tmp_path / "spec.imp"
    assert init(data, out) == 2
    err = capsys.readouterr().err
    assert words in err
    assert err.startswith("improve: error:") and "Traceback" not in err
    assert not out.exists()


def test_a_misspelt_builtin_gets_a_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert init("fashion-mnist", tmp_path / "s.imp") == 2
    assert "did you mean 'fashion_mnist'?" in capsys.readouterr().err


def test_an_existing_spec_is_kept_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "spec.imp"
    out.write_text("# mine\n")
    assert init("digits", out) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_text() == "# mine\n"
    assert init("digits", out, "--force") == 0
    assert "pipeline digits {" in out.read_text()


@pytest.mark.slow
def test_a_spec_from_init_trains_with_improve_run(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "pictures")
    spec = tmp_path / "pictures.imp"
    assert init(data, spec) == 0
    # Keep the run tiny: one epoch.
    spec.write_text(re.sub(r"epochs = \d+", "epochs = 1", spec.read_text()))
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "improve_dsl.cli",
            "run",
            str(spec),
            "--out",
            str(run_dir),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "val_accuracy" in proc.stdout and str(run_dir) in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok" and len(metrics["history"]) == 1
    assert (run_dir / "model.pt").is_file() and (run_dir / "train.py").is_file()
    assert "skipping" in (run_dir / "log").read_text()  # the corrupt file was skipped, logged
