"""``improve export``: a trained run's model as ONNX (run in onnxruntime) and TorchScript.

The tiny digits model conftest trains once per session (by the real runner) is exported; real
digit images go through the exported files and must get the trained model's predictions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from improve_dsl.cli import main
from improve_dsl.predict import load_image, load_run


@pytest.fixture(scope="module")
def run_dir(digits_run_dir: Path) -> Path:
    """A tiny digits CNN trained once for the session (conftest), shared with test_predict."""
    return digits_run_dir


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Forty real digits as PNG files, scaled as the digits loader scales them."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = tmp_path_factory.mktemp("digit images")
    paths = []
    for i in range(0, 1600, 40):
        path = folder / f"{i}.png"
        Image.fromarray(np.round(digits.images[i] * (255 / 16)).astype(np.uint8), "L").save(path)
        paths.append(path)
    return paths


def _torch_logits(run_dir: Path, images: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    loaded = load_run(run_dir)
    batch = torch.stack([load_image(p, loaded) for p in images])
    with torch.no_grad():
        return batch, loaded.model(batch)


def test_onnx_runs_in_onnxruntime_with_the_torch_predictions(
    run_dir: Path, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
    onnxruntime = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    out = tmp_path / "model.onnx"
    assert main(["export", str(run_dir), "-o", str(out)]) == 0
    assert f"wrote {out} (onnx)" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    checkpoint = torch.load(run_dir / "model.pt", weights_only=True)
    assert json.loads(meta["improve.class_names"]) == list(checkpoint["class_names"])
    assert json.loads(meta["improve.input_size"]) == [1, 8, 8]
    assert json.loads(meta["improve.mean"]) == pytest.approx(np.ravel(checkpoint["mean"]).tolist())
    assert json.loads(meta["improve.std"]) == pytest.approx(np.ravel(checkpoint["std"]).tolist())

    batch, expected = _torch_logits(run_dir, images)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    [logits] = session.run(["logits"], {"image": batch.numpy()})
    assert logits.shape == (len(images), 10)  # any batch size, not the export's example
    assert np.array_equal(logits.argmax(1), expected.argmax(1).numpy())
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_carries_the_same_model_and_metadata(
    run_dir: Path, images: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "model.pt"
    assert main(["export", str(run_dir), "-o", str(out)]) == 0
    extra = {"improve.json": ""}
    module = torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra["improve.json"])
    assert json.loads(meta["improve.class_names"]) == [str(d) for d in range(10)]
    batch, expected = _torch_logits(run_dir, images)
    with torch.no_grad():
        got = module(batch)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _predictions(output: str) -> list[tuple[str, str, float]]:
    rows = []
    for line in output.splitlines():
        match = re.fullmatch(r"(.+): (\S+) \((\d\.\d{3})\)", line)
        assert match is not None, line
        rows.append((match[1], match[2], float(match[3])))
    return rows


@pytest.mark.parametrize("name", ["model.onnx", "model.pt"])
def test_predict_accepts_the_exported_file(
    run_dir: Path,
    images: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
) -> None:
    if name.endswith(".onnx"):
        pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    out = tmp_path / name
    assert main(["export", str(run_dir), "-o", str(out)]) == 0
    capsys.readouterr()
    paths = [str(p) for p in images]
    assert main(["predict", str(run_dir), *paths]) == 0
    from_run = _predictions(capsys.readouterr().out)
    assert main(["predict", str(out), *paths]) == 0
    from_file = _predictions(capsys.readouterr().out)
    assert [(p, label) for p, label, _ in from_file] == [(p, label) for p, label, _ in from_run]
    for (_, _, a), (_, _, b) in zip(from_file, from_run, strict=True):
        assert a == pytest.approx(b, abs=0.0011)  # printed to 3 decimals


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["-o", "{tmp}/model.bin"], "cannot tell the format from 'model.bin'"),
        (["-o", "{tmp}/missing/model.onnx"], "does not exist"),
        (["-o", "{tmp}/m.onnx", "--format", "tflite"], "invalid choice: 'tflite'"),
    ],
)
def test_bad_export_requests_are_one_line_errors(
    run_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    words: str,
) -> None:
    given = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["export", str(run_dir), *given]) == 2
    err = capsys.readouterr().err
    assert words in err
    assert "Traceback" not in err


def test_a_run_without_a_model_and_a_foreign_file(
    tmp_path: Path, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(tmp_path), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "has no model.pt" in capsys.readouterr().err
    foreign = tmp_path / "notes.onnx"
    foreign.write_text("not a model")
    assert main(["predict", str(foreign), str(images[0])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("improve: error:") and "notes.onnx" in err
    assert err.count("\n") == 1
