"""Generated scripts really train: every source, augment op, optimizer, schedule, loss, EMA,
TTA, precision, early stopping and gradient clipping, on tiny data on the CPU.

Most runs import the generated module and call ``main(argv)`` in-process (torch is imported
once); a few run the script as a real program. Every run uses one thread: on a shared
2-core machine, two OpenMP threads that get descheduled make tiny steps 100x slower.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from conftest import load_script, slow_except
from PIL import Image

from improve_dsl import registry
from improve_dsl.render import render_script
from improve_dsl.validate import load_text

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

BASE = """\
pipeline t {{
  metric = {metric}
  seed = 0
}}
data {{
  source = {source}
  validation = holdout(fraction = 0.2)
  batch_size = {batch_size}
}}
augment {{
  ops = [{ops}]
}}
model {{
  arch = {arch}
}}
train {{
  epochs = {epochs}
  optimizer = {optimizer}
  schedule = {schedule}
  loss = cross_entropy(label_smoothing = {smoothing})
  precision = {precision}
  {extra}
}}
eval {{
  tta = [{tta}]
}}
"""

DEFAULTS = {
    "metric": "accuracy",
    "source": "digits()",
    "batch_size": "64",
    "ops": "",
    "arch": "mlp(width = 64, depth = 1)",
    "epochs": "3",
    "optimizer": "sgd(lr = 0.1, momentum = 0.9, nesterov = true, weight_decay = 0.0)",
    "schedule": "constant()",
    "smoothing": "0.0",
    "precision": "auto",
    "extra": "",
    "tta": "",
}

_counter = itertools.count()


def spec_text(**overrides: str) -> str:
    return BASE.format(**{**DEFAULTS, **overrides})


def write_script(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"train_{next(_counter)}.py"
    path.write_text(render_script(load_text(text, "t.imp")), encoding="utf-8")
    return path


def script_module(tmp_path: Path, **overrides: str) -> ModuleType:
    return load_script(write_script(tmp_path, spec_text(**overrides)))


class Run:
    """One in-process run: the result, every stdout event, stderr."""

    def __init__(self, module: ModuleType, capsys: pytest.CaptureFixture[str], *args: str):
        self.result: dict[str, Any] = module.main(["--threads", "1", *args])
        out, self.stderr = capsys.readouterr()
        # Nothing but JSON events on stdout.
        self.events = [json.loads(line) for line in out.splitlines()]
        assert self.events[-1] == self.result
        self.epochs = [e for e in self.events if e["event"] == "epoch"]
        self.start = next((e for e in self.events if e["event"] == "start"), {})

    @property
    def ok(self) -> bool:
        return bool(self.result["status"] == "ok")

    def losses(self) -> list[float]:
        return [e["train_loss"] for e in self.epochs]


def run(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str, **overrides: str) -> Run:
    return Run(script_module(tmp_path, **overrides), capsys, *args)


def run_program(
    script: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, str(script), "--threads", "1", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        cwd=script.parent,
    )


# ---------------------------------------------------------------- the script as a program


@pytest.mark.slow
def test_digits_script_runs_as_a_program(tmp_path: Path) -> None:
    spec = ROOT / "specs" / "digits.imp"
    script = tmp_path / "train.py"
    proc = subprocess.run(
        [PYTHON, "-m", "improve_dsl.cli", "compile", str(spec), "-o", str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "run"
    proc = run_program(script, "--out", str(out), "--epochs", "2")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # JSON lines only
    assert [e["event"] for e in events] == ["start", "warmup", "epoch", "epoch", "result"]
    start, result = events[0], events[-1]
    assert start["split"] == "val" and start["device"] == "cpu" and start["params"] > 0
    assert start["train_size"] + start["eval_size"] == 1438  # 1,797 less the 359 test images
    assert result["status"] == "ok" and 0 <= result["val_accuracy"] <= 1
    assert result["images_per_second"] > 0 and result["epochs_run"] == 2

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_accuracy"] == result["val_accuracy"]
    assert [e["epoch"] for e in metrics["history"]] == [1, 2]
    assert metrics["seed"] == 0
    assert metrics["spec_sha256"] == load_text(spec.read_text(), str(spec)).sha256

    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["class_names"] == [str(d) for d in range(10)]
    assert saved["input_size"] == [1, 8, 8] and len(saved["mean"]) == len(saved["std"]) == 1
    module = load_script(script)
    model = module.build_model((1, 8, 8), 10)
    model.load_state_dict(saved["state_dict"])
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 10)


def test_split_test_trains_the_same_and_scores_the_test_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = script_module(tmp_path, epochs="2")
    val = Run(module, capsys)
    test = Run(module, capsys, "--split", "test")
    assert test.events[0]["eval_size"] == 359 and test.events[0]["split"] == "test"
    assert test.ok and 0 <= test.result["test_accuracy"] <= 1 and "val_accuracy" not in test.result
    # Same training: the epochs (scored on validation) are identical.
    assert [e["val_accuracy"] for e in test.epochs] == [e["val_accuracy"] for e in val.epochs]
    assert test.losses() == val.losses()


def test_seed_and_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = script_module(tmp_path)
    first = Run(module, capsys, "--epochs", "1", "--batch-size", "32")
    again = Run(module, capsys, "--epochs", "1", "--batch-size", "32")
    other = Run(module, capsys, "--epochs", "1", "--batch-size", "32", "--seed", "1")
    assert first.events[0]["epochs"] == 1 and len(first.epochs) == 1
    assert first.losses() == again.losses()
    assert first.losses() != other.losses()


def test_nan_loss_is_a_failure_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    huge = "sgd(lr = 10.0, momentum = 0.9, nesterov = true, weight_decay = 0.0)"
    deep = "mlp(width = 64, depth = 3)"
    diverged = run(tmp_path, capsys, optimizer=huge, arch=deep)
    assert diverged.result["status"] == "failed" and diverged.result["reason"] == "nan_loss"
    assert "learning rate" in diverged.result["message"]
    # Gradient clipping keeps the same learning rate finite.
    clipped = run(tmp_path, capsys, optimizer=huge, arch=deep, extra="clip_grad_norm = 0.01")
    assert clipped.ok, clipped.result
    assert all(math.isfinite(loss) for loss in clipped.losses())


def test_data_missing_is_exit_1_with_a_message(tmp_path: Path) -> None:
    script = write_script(tmp_path, spec_text(source="mnist()"))
    proc = run_program(script, env={"IMPROVE_DATA": str(tmp_path / "empty")})
    assert proc.returncode == 1
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["status"] == "failed" and result["reason"] == "data_missing"
    assert "MNIST not found: looked for" in result["message"]
    assert "download = true" in result["message"]
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- sources


# One source on the fast tier (a render each), every one on the slow tier.
@pytest.mark.parametrize("source", slow_except(["mnist", "cifar10", "cifar100", "svhn"], "mnist"))
def test_torchvision_sources_fail_clearly_offline(
    source: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMPROVE_DATA", str(tmp_path / "data"))
    failed = run(tmp_path, capsys, source=f"{source}()")
    assert failed.result["reason"] == "data_missing"
    assert "not found: looked for" in failed.result["message"]
    assert str(tmp_path / "data") in failed.result["message"]
    assert "download = true" in failed.result["message"]
    assert not list((tmp_path / "data").rglob("*.gz"))  # nothing was downloaded


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_fashion_mnist_reads_idx_files_from_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "fm"
    raw = root / "FashionMNIST" / "raw"  # torchvision's layout
    raw.mkdir(parents=True)
    for prefix, n in (("train", 200), ("t10k", 50)):
        labels = np.arange(n) % 10
        # Learnable: each class is a bright band at its own rows.
        images = rng.integers(0, 40, (n, 28, 28))
        for i, label in enumerate(labels):
            images[i, label * 2 : label * 2 + 4] = 250
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels)
    source = f'fashion_mnist(root = "{root}", subset = 100)'
    result = run(tmp_path, capsys, "--split", "test", source=source, batch_size="20")
    assert result.ok, result.result
    assert result.events[0]["train_size"] == 100  # subset of the 160 left after validation
    assert result.events[0]["eval_size"] == 50
    assert result.result["test_accuracy"] > 0.5


@pytest.mark.skipif(
    not FASHION_MNIST.is_dir(),
    reason="needs Fashion-MNIST in /usr/share/datasets/fashion-mnist "
    "(apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_subset_from_the_system_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run(
        tmp_path,
        capsys,
        "--out",
        str(tmp_path / "out"),
        source="fashion_mnist(subset = 500)",
        epochs="1",
    )
    assert result.ok, result.result
    assert result.events[0]["train_size"] == 500
    assert result.events[0]["eval_size"] == 12000  # the held-out 20% stays whole
    assert result.result["val_accuracy"] > 0.4
    saved = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert saved["class_names"][0] == "T-shirt/top" and saved["input_size"] == [1, 28, 28]


def test_fashion_mnist_missing_names_where_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMPROVE_DATA", str(tmp_path / "env"))
    module = script_module(tmp_path, source=f'fashion_mnist(root = "{tmp_path / "root"}")')
    module.SYSTEM_FOLDER = tmp_path / "system"  # hide an installed system copy
    failed = Run(module, capsys)
    assert failed.result["reason"] == "data_missing"
    message = failed.result["message"]
    for folder in (tmp_path / "root", tmp_path / "env" / "fashion-mnist", tmp_path / "system"):
        assert str(folder) in message
    assert "apt-get install dataset-fashion-mnist" in message


def make_image_folder(folder: Path, per_class: int) -> None:
    """Three classes of images in assorted modes, sizes and formats, plus a corrupt file."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(["cat", "dog", "emu"]):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            size = (20 + i % 7, 16 + i % 5)
            base = np.zeros((size[1], size[0], 3), dtype=np.uint8)
            base[..., label] = 200  # the class is the colour
            base += rng.integers(0, 40, base.shape, dtype=np.uint8)
            image = Image.fromarray(base)
            kind = i % 5
            if kind == 0:
                image.save(folder / name / f"{i}.png")
            elif kind == 1:
                image.save(folder / name / f"{i}.jpg", quality=90)
            elif kind == 2:
                image.convert("RGBA").save(folder / name / f"{i}.PNG")
            elif kind == 3:
                image.convert("P").save(folder / name / f"{i}.gif")
            else:
                image.convert("L").save(folder / name / f"{i}.bmp")
    (folder / "dog" / "broken.png").write_bytes(b"not an image at all")
    (folder / "emu" / "notes.txt").write_text("not an image, not an image extension")


@pytest.mark.slow
def test_image_folder_trains_on_mixed_images(tmp_path: Path) -> None:
    folder = tmp_path / "pictures"
    make_image_folder(folder, per_class=15)
    source = f'image_folder(root = "{folder}", image_size = 16)'
    script = write_script(
        tmp_path,
        spec_text(source=source, batch_size="8", epochs="4", arch="cnn(channels = [8, 16])"),
    )
    proc = run_program(script, "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "skipping" in proc.stderr and "broken.png" in proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    start = next(e for e in events if e["event"] == "start")
    # 45 images: 9 held out as the test split, then 20% of the other 36 for validation.
    assert start["train_size"] == 29 and start["eval_size"] == 7
    assert events[-1]["status"] == "ok" and events[-1]["val_accuracy"] > 0.5
    saved = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert saved["class_names"] == ["cat", "dog", "emu"] and saved["input_size"] == [3, 16, 16]


def test_image_folder_with_train_and_test_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_image_folder(tmp_path / "data" / "train", per_class=10)
    make_image_folder(tmp_path / "data" / "test", per_class=4)
    source = f'image_folder(root = "{tmp_path / "data"}", image_size = 12, channels = 1)'
    result = run(tmp_path, capsys, "--split", "test", source=source, batch_size="8", epochs="1")
    assert result.ok, result.result
    assert result.start["eval_size"] == 12  # every readable image of test/
    assert result.start["train_size"] == 24


def test_image_folder_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    failed = run(tmp_path, capsys, source=f'image_folder(root = "{tmp_path / "nope"}")')
    assert failed.result["reason"] == "data_missing"
    assert "does not exist" in failed.result["message"]
    (tmp_path / "empty" / "only_class").mkdir(parents=True)
    failed = run(tmp_path, capsys, source=f'image_folder(root = "{tmp_path / "empty"}")')
    assert failed.result["reason"] == "data_missing"
    assert "at least two class sub-folders" in failed.result["message"]


# ---------------------------------------------------------------- augment


AUGMENT_OPS = [c.name for c in registry.components("augment")]
MIXING = {"mixup", "cutmix"}
# Parameters that make an op act on every image, so its effect is certain.
CERTAIN = {"horizontal_flip": {"p": 1.0}, "vertical_flip": {"p": 1.0}, "random_erasing": {"p": 1.0}}


@pytest.fixture(scope="module")
def all_ops_module(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    ops = ", ".join(f"{name}()" for name in AUGMENT_OPS)
    tta = "horizontal_flip, vertical_flip, translate(pixels = 1)"
    text = spec_text(ops=ops, tta=tta, metric="balanced_accuracy")
    return load_script(write_script(tmp_path_factory.mktemp("ops"), text))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", AUGMENT_OPS)
def test_each_augment_op_changes_pixels_not_shape(
    all_ops_module: ModuleType, name: str, channels: int
) -> None:
    comp = registry.component("augment", name)
    assert comp is not None
    params = {p.name: p.default for p in comp.params} | CERTAIN.get(name, {})
    torch.manual_seed(0)
    images = torch.rand(16, channels, 12, 12) * 0.8 + 0.1
    labels = torch.arange(16) % 4
    op = getattr(all_ops_module, name)
    if name in MIXING:
        targets = torch.nn.functional.one_hot(labels, 4).float()
        out, mixed = op(images, targets, **params)
        assert mixed.shape == (16, 4)
        assert torch.allclose(mixed.sum(1), torch.ones(16))
        assert not torch.equal(mixed, targets)
    else:
        out = op(images, **params)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert not torch.equal(out, images), f"{name} left every pixel as it was"
    assert out.min() >= 0 and out.max() <= 1


def test_augment_batch_keeps_labels(all_ops_module: ModuleType, tmp_path: Path) -> None:
    images, labels = torch.rand(8, 1, 8, 8), torch.arange(8) % 10
    out, targets = all_ops_module.augment_batch(images, labels, 10)
    assert out.shape == images.shape and targets.shape == (8, 10)  # mixup: soft targets
    plain = script_module(tmp_path, ops="random_crop(padding = 2), rotation(degrees = 20)")
    out, targets = plain.augment_batch(images, labels)  # no mixing: no class count
    assert out.shape == images.shape and torch.equal(targets, labels)


def test_random_crop_survives_padding_larger_than_the_image(all_ops_module: ModuleType) -> None:
    images = torch.rand(4, 1, 8, 8)
    assert all_ops_module.random_crop(images, padding=16).shape == images.shape


def test_tta_views(all_ops_module: ModuleType) -> None:
    images = torch.rand(3, 1, 8, 8)
    views = all_ops_module.tta_views(images)
    assert len(views) == 5  # plain, two flips, translate both ways
    assert all(v.shape == images.shape for v in views)
    assert torch.equal(views[1], images.flip(3))


def test_training_with_every_augment_op_and_tta(
    all_ops_module: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    result = Run(all_ops_module, capsys, "--epochs", "2")
    assert result.ok, result.result
    assert 0 <= result.result["val_balanced_accuracy"] <= 1
    assert "val_balanced_accuracy" in result.epochs[0]


# ---------------------------------------------------------------- train


SCHEDULES = {
    "constant()": lambda lrs, base: all(lr == pytest.approx(base) for lr in lrs),
    "one_cycle(warmup = 0.3)": lambda lrs, base: lrs[0] > 0.5 * base and lrs[-1] < 1e-4 * base,
    "cosine(warmup = 0.1, min_lr_ratio = 0.1)": lambda lrs, base: (
        lrs[0] > lrs[1] and lrs[-1] == pytest.approx(0.1 * base)
    ),
    "linear(warmup = 0.1)": lambda lrs, base: lrs[0] > lrs[1] > lrs[2] == 0,
    "step(every = 1, gamma = 0.5)": lambda lrs, base: (
        lrs == pytest.approx([base / 2, base / 4, base / 8])
    ),
}
OPTIMIZERS = [
    ("sgd(lr = 0.1, momentum = 0.9, nesterov = true, weight_decay = 0.0005)", 0.1),
    ("adamw(lr = 0.01, weight_decay = 0.01)", 0.01),
    ("adam(lr = 0.01)", 0.01),
    ("rmsprop(lr = 0.003, momentum = 0.5)", 0.003),
    ("sgd(lr = 0.2, momentum = 0.0, nesterov = true, weight_decay = 0.0)", 0.2),
]


@pytest.mark.parametrize(
    ("optimizer", "schedule"),
    list(zip(OPTIMIZERS, SCHEDULES, strict=True)),
    ids=[
        f"{o[0].split('(')[0]}-{s.split('(')[0]}"
        for o, s in zip(OPTIMIZERS, SCHEDULES, strict=True)
    ],
)
def test_optimizers_and_schedules_train(
    optimizer: tuple[str, float],
    schedule: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text, base_lr = optimizer
    result = run(tmp_path, capsys, optimizer=text, schedule=schedule)
    assert result.ok, result.result
    losses = result.losses()
    assert losses[-1] < losses[0], f"the loss did not fall: {losses}"
    assert result.result["val_accuracy"] > 0.8
    lrs = [e["lr"] for e in result.epochs]
    assert SCHEDULES[schedule](lrs, base_lr), f"{schedule}: learning rates {lrs}"


def test_label_smoothing_is_applied(tmp_path: Path) -> None:
    module = script_module(tmp_path, smoothing="0.2")
    confident = torch.full((4, 10), -20.0)
    confident[torch.arange(4), torch.arange(4)] = 20.0
    assert module.LABEL_SMOOTHING == 0.2
    assert float(module.loss_fn(confident, torch.arange(4))) > 1.0  # smoothing punishes it
    assert float(torch.nn.functional.cross_entropy(confident, torch.arange(4))) < 1e-6


def test_ema_averages_the_weights_and_trains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = script_module(tmp_path, extra="ema = ema(decay = 0.9)")
    model = module.build_model((1, 8, 8), 10)
    ema = module.EMA(model, 0.5)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()  # averages the tensors it was made with: the model's own
    for old, new, average in zip(before, model.parameters(), ema.module.parameters(), strict=True):
        assert torch.all(average > old) and torch.all(average < new)
    result = Run(module, capsys)
    assert result.ok and result.result["val_accuracy"] > 0.8


def test_fp16_falls_back_to_fp32_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(tmp_path, capsys, precision="fp16", extra="clip_grad_norm = 5.0", epochs="2")
    assert result.ok, result.result
    assert "precision fp16 needs CUDA; training in fp32 on cpu" in result.stderr
    assert result.start["precision"] == "fp32"
    assert result.losses()[-1] < result.losses()[0]


def test_bf16_on_cpu_uses_native_bf16_or_says_why_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run(tmp_path, capsys, precision="bf16", extra="clip_grad_norm = 5.0", epochs="2")
    assert result.ok, result.result
    assert result.losses()[-1] < result.losses()[0]
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if native:  # this machine's CPU has AVX512-BF16: the step runs under bf16 autocast
        assert result.start["precision"] == "bf16"
        assert "warning" not in result.stderr
    else:
        assert result.start["precision"] == "fp32"
        assert "needs CUDA or a CPU with native bf16; training in fp32" in result.stderr


def test_auto_precision_is_fp32_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(tmp_path, capsys, precision="auto", epochs="1")
    assert result.ok, result.result
    assert result.start["precision"] == "fp32" and "warning" not in result.stderr


@pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("IMPROVE_TEST_COMPILE") != "1",
    reason="torch.compile's CPU backend (inductor, C++) needs ~55 s on 2 cores for its first "
    "compile; runs on CUDA or with IMPROVE_TEST_COMPILE=1",
)
def test_compile_true_trains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(tmp_path, capsys, extra="compile = true", epochs="1")
    assert result.ok, result.result


def test_early_stopping_keeps_the_best_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stalled = "sgd(lr = 0.000001, momentum = 0.0, nesterov = false, weight_decay = 0.0)"
    result = run(tmp_path, capsys, optimizer=stalled, epochs="12", extra="early_stopping = 2")
    assert result.ok, result.result
    assert result.result["epochs_run"] < 12
    metrics = [e["val_accuracy"] for e in result.epochs]
    assert result.result["val_accuracy"] == max(metrics)


def test_balanced_accuracy_weighs_classes_equally(tmp_path: Path) -> None:
    module = script_module(tmp_path, metric="balanced_accuracy")
    labels = torch.tensor([0] * 8 + [1] * 2)
    always_zero = torch.zeros(10, dtype=torch.long)
    assert module.score(always_zero, labels, 2) == pytest.approx(0.5)  # accuracy would be 0.8


@pytest.mark.slow
def test_tuned_digits_reaches_97_percent_within_a_minute(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = ROOT / "tests" / "fixtures" / "valid" / "digits_tuned.imp"
    started = time.monotonic()
    module = load_script(write_script(tmp_path, spec.read_text()))
    result = Run(module, capsys)
    seconds = time.monotonic() - started
    assert result.ok, result.result
    assert result.result["val_accuracy"] >= 0.97, result.epochs
    assert seconds < 60, f"took {seconds:.0f} s"


# ---------------------------------------------------------------- warm-up and the CUDA graph


def _no_seconds(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events without their clocks, to compare two runs' training."""
    clocks = {"seconds", "images_per_second", "warmup_seconds", "wall_seconds", "steps"}
    return [
        {k: v for k, v in e.items() if k not in clocks} for e in events if e["event"] != "warmup"
    ]


def test_the_warm_up_is_untimed_and_undone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Warm-up steps change nothing the run trains: weights, optimizer state (momentum) and
    random draws (crops) are put back, so the history equals a run without any."""
    module = script_module(
        tmp_path,
        ops="random_crop(padding = 1)",
        schedule="one_cycle(warmup = 0.3)",
        extra="ema = ema(decay = 0.9)",
    )
    warmed = Run(module, capsys, "--warmup-steps", "5")
    cold = Run(module, capsys, "--warmup-steps", "0")
    assert warmed.ok and cold.ok
    assert _no_seconds(warmed.events) == _no_seconds(cold.events)
    warmup = next(e for e in warmed.events if e["event"] == "warmup")
    assert warmup["steps"] == 5 and warmup["cuda_graph"] is False
    assert warmup["compiled"] is False and warmup["compile_cache_misses"] == 0
    result = warmed.result
    assert result["warmup_seconds"] == warmup["seconds"] > 0
    assert result["wall_seconds"] > result["seconds"] + result["warmup_seconds"]


@pytest.mark.parametrize(
    "optimizer",
    [
        "sgd(lr = 0.1, momentum = 0.9, nesterov = true, weight_decay = 0.0)",
        pytest.param("adamw(lr = 0.01)", marks=pytest.mark.slow),
    ],
)
def test_a_failed_capture_warns_and_trains_eagerly_to_the_same_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], optimizer: str
) -> None:
    """--cuda-graph on tries the capture where there is no GPU: it fails, the run says so
    and trains eagerly, exactly as --cuda-graph off does (a graph never fails a run)."""
    if torch.cuda.is_available():
        pytest.skip("capture succeeds on this machine; see the CUDA comparison below")
    module = script_module(tmp_path, ops="horizontal_flip(p = 0.5)", optimizer=optimizer)
    tried = Run(module, capsys, "--cuda-graph", "on")
    assert tried.ok, tried.result
    assert "the CUDA graph of the training step could not be captured" in tried.stderr
    assert "training eagerly" in tried.stderr
    assert next(e for e in tried.events if e["event"] == "warmup")["cuda_graph"] is False
    eager = Run(module, capsys, "--cuda-graph", "off")
    assert "warning" not in eager.stderr
    tried_losses, eager_losses = tried.losses(), eager.losses()
    assert tried_losses == pytest.approx(eager_losses, rel=1e-6)
    assert tried.result["val_accuracy"] == eager.result["val_accuracy"]


def test_a_spec_a_graph_cannot_hold_is_compiled_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_script(tmp_path, spec_text(ops="mixup(alpha = 0.2)"))
    script = path.read_text()
    assert "CUDA_GRAPH = False  # mixup draws its weight on the host" in script
    assert "def graph_step" not in script and "capturable=False" in script
    result = Run(load_script(path), capsys, "--cuda-graph", "on", "--epochs", "1")
    assert result.ok, result.result
    assert "--cuda-graph on: not for this spec: mixup draws its weight on the host" in (
        result.stderr
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "optimizer",
    [
        "sgd(lr = 0.05, momentum = 0.9, nesterov = true, weight_decay = 0.0005)",
        "adamw(lr = 0.003, weight_decay = 0.01)",
    ],
)
def test_graphed_and_eager_steps_agree_on_cuda(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], optimizer: str
) -> None:
    module = script_module(
        tmp_path,
        ops="random_crop(padding = 1), horizontal_flip(p = 0.5)",
        arch="cnn(channels = [16, 32])",
        optimizer=optimizer,
        schedule="one_cycle(warmup = 0.3)",
        precision="bf16",
    )
    graphed = Run(module, capsys, "--device", "cuda", "--cuda-graph", "on")
    eager = Run(module, capsys, "--device", "cuda", "--cuda-graph", "off")
    assert graphed.ok and eager.ok
    assert next(e for e in graphed.events if e["event"] == "warmup")["cuda_graph"] is True
    assert "warning" not in graphed.stderr
    # bf16 autocast on both, but kernels and their order differ: bf16's tolerance.
    assert graphed.losses() == pytest.approx(eager.losses(), rel=2e-2)
    assert abs(graphed.result["val_accuracy"] - eager.result["val_accuracy"]) < 0.03


@pytest.mark.slow
def test_a_second_candidate_compiles_from_the_shared_inductor_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two candidates that differ in their learning rate compile the same model: the first
    compiles it afresh, the second loads it from the user's inductor cache, and its log says
    so (the warm-up event counts the cache's hits and misses)."""
    from improve_dsl.run import run_script

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    warmups = []
    for lr in ("0.1", "0.05"):
        optimizer = f"sgd(lr = {lr}, momentum = 0.9, nesterov = true, weight_decay = 0.0)"
        script = write_script(tmp_path, spec_text(optimizer=optimizer, extra="compile = true"))
        out = tmp_path / f"run_{lr}"
        result = run_script(
            script, out, device="cpu", threads=2, timeout=600, extra_args=("--epochs", "1")
        )
        assert result.ok, result.reason
        log = (out / "log").read_text()
        warmups.append(json.loads(next(ln for ln in log.splitlines() if '"warmup"' in ln)))
    first, second = warmups
    assert first["compiled"] and first["compile_cache_misses"] > 0, first
    assert second["compile_cache_hits"] > 0 and second["compile_cache_misses"] == 0, second
    assert second["seconds"] < first["seconds"]
    assert (tmp_path / "cache" / "improve" / "inductor").is_dir()


@pytest.mark.slow
def test_a_machine_without_the_cache_compiles_from_the_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two machines that share no inductor cache (two cache folders here): the first compiles
    and writes its artifacts (--compile-artifacts), the second loads them and compiles
    nothing afresh, as a Ray worker on another machine does."""
    from improve_dsl.run import run_script

    script = write_script(tmp_path, spec_text(extra="compile = true"))
    artifacts = tmp_path / "artifacts"
    warmups = []
    for machine in ("first", "second"):
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / machine / "inductor"))
        monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / machine / "triton"))
        out = tmp_path / f"run_{machine}"
        result = run_script(
            script,
            out,
            device="cpu",
            threads=2,
            timeout=600,
            extra_args=("--epochs", "1", "--compile-artifacts", str(artifacts)),
        )
        assert result.ok, result.reason
        log = (out / "log").read_text()
        warmups.append(json.loads(next(ln for ln in log.splitlines() if '"warmup"' in ln)))
        if machine == "first":
            saved = sorted(artifacts.glob("*.bin"))
            assert len(saved) == 1 and saved[0].stat().st_size > 0
            # A damaged file beside it (a torn copy, another tool's) is only a warning.
            damaged = artifacts / ("f" * 32 + ".bin")
            damaged.write_bytes(b"not an artifact")
    first, second = warmups
    assert first["compile_cache_misses"] > 0 and first["compile_cache_hits"] == 0, first
    assert second["compile_cache_hits"] > 0 and second["compile_cache_misses"] == 0, second
    assert f"compile artifacts {damaged.name} not loaded" in log
    # Nothing new compiled, so nothing new written.
    assert sorted(artifacts.glob("*.bin")) == sorted([*saved, damaged])


def test_a_run_that_does_not_compile_leaves_the_artifacts_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / ("0" * 32 + ".bin")).write_bytes(b"not an artifact")
    args = ("--device", "cpu", "--epochs", "1", "--compile-artifacts", str(artifacts))
    done = run(tmp_path, capsys, *args)  # in this process: nothing is compiled, nothing loaded
    assert done.result["status"] == "ok", done.stderr
    assert [path.name for path in artifacts.iterdir()] == ["0" * 32 + ".bin"]
