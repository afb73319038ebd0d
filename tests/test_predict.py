"""``improve predict``: a finished run's model classifies image files as in training.

One tiny digits model is trained once for the session (conftest: a compiled spec run by the runner);
images are written as PNG files the way the digits loader scales them, so a model that was
preprocessed differently at prediction time would visibly lose accuracy.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from improve_dsl.cli import main
from improve_dsl.predict import PredictError, predict


@pytest.fixture(scope="module")
def run_dir(digits_run_dir: Path) -> Path:
    """A tiny digits CNN trained once for the session (conftest)."""
    return digits_run_dir


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str]]:
    """Thirty digits as 8-bit PNGs (0..16 stretched to 0..255, as the loader does), with some
    saved as RGB or larger so conversion and resizing are exercised."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = tmp_path_factory.mktemp("digits images")
    items = []
    for i in range(0, 1500, 50):
        pixels = np.round(digits.images[i] * (255 / 16)).astype(np.uint8)
        image = Image.fromarray(pixels, "L")
        if i % 150 == 0:
            image = image.convert("RGB")  # the model wants one channel: converted back
        path = folder / f"digit {i}.png"
        image.save(path)
        items.append((path, str(digits.target[i])))
    return items


def test_predict_prints_class_and_probability_per_image(
    run_dir: Path, digit_images: list[tuple[Path, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [str(p) for p, _ in digit_images]
    assert main(["predict", str(run_dir), *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(paths)
    right = 0
    for line, (path, truth) in zip(lines, digit_images, strict=True):
        match = re.fullmatch(r"(.+): (\S+) \((\d\.\d{3})\)", line)
        assert match is not None, line
        assert match[1] == str(path)
        assert 0.0 < float(match[3]) <= 1.0
        right += match[2] == truth
    # Most of these were training images; preprocessing that differed from training would
    # show here as near-chance accuracy.
    assert right >= 0.8 * len(lines)


def test_predictions_do_not_depend_on_the_batch(
    run_dir: Path, digit_images: list[tuple[Path, str]]
) -> None:
    paths = [p for p, _ in digit_images[:6]]
    together = predict(run_dir, paths)
    alone = [predict(run_dir, [p])[0] for p in paths]
    assert [p.label for p in together] == [p.label for p in alone]
    for a, b in zip(together, alone, strict=True):
        assert a.probability == pytest.approx(b.probability, abs=1e-5)


def test_a_larger_colour_image_is_converted_and_resized(
    run_dir: Path, digit_images: list[tuple[Path, str]], tmp_path: Path
) -> None:
    path, _ = digit_images[1]
    big = tmp_path / "big.png"
    Image.open(path).convert("RGB").resize((64, 64), Image.Resampling.NEAREST).save(big)
    small, large = predict(run_dir, [path, big])
    assert large.label == small.label  # shrunk back to 8x8, one channel: the same digit


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("no_dir", "is not a run directory"),
        ("no_model", "has no model.pt"),
        ("bad_image", "is not an image that can be read"),
        ("missing_image", "no such file"),
    ],
)
def test_clear_one_line_errors(
    run_dir: Path,
    digit_images: list[tuple[Path, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    words: str,
) -> None:
    image = str(digit_images[0][0])
    target = str(run_dir)
    if case == "no_dir":
        target = str(tmp_path / "nowhere")
    elif case == "no_model":
        (tmp_path / "train.py").write_text((run_dir / "train.py").read_text())
        target = str(tmp_path)
    elif case == "bad_image":
        bad = tmp_path / "notes.png"
        bad.write_text("this is text, not a PNG")
        image = str(bad)
    elif case == "missing_image":
        image = str(tmp_path / "gone.png")
    assert main(["predict", target, image]) == 2
    captured = capsys.readouterr()
    assert words in captured.err
    assert captured.err.startswith("improve: error:") and captured.err.count("\n") == 1
    assert captured.out == ""


def test_predict_error_is_raised_for_a_truncated_image(run_dir: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole.png"
    noise = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(noise).save(whole)  # noise: the file is large, so the cut loses pixels
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:300])
    with pytest.raises(PredictError, match=r"cut\.png"):
        predict(run_dir, [cut])


def test_a_run_compiled_before_build_model_took_the_input_size_still_predicts(
    run_dir: Path, digit_images: list[tuple[Path, str]], tmp_path: Path
) -> None:
    """Scripts compiled before Dec 2026 define build_model(in_channels, num_classes,
    image_size); their runs keep predicting."""
    import shutil

    old = tmp_path / "old run"
    shutil.copytree(run_dir, old)
    script = old / "train.py"
    script.write_text(
        script.read_text()
        + "\n\n_build = build_model\n\n\n"
        + "def build_model(in_channels, num_classes, image_size):  # the old signature\n"
        + "    return _build((in_channels, image_size, image_size), num_classes)\n"
    )
    paths = [p for p, _ in digit_images[:5]]
    assert [p.label for p in predict(old, paths)] == [p.label for p in predict(run_dir, paths)]
