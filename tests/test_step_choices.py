"""The two step choices a GPU measurement is to settle (bench/gpu.py, step step_choices):
augmenting the whole training split once per epoch (--augment per-epoch) rather than each
batch inside the step, and batch norm on fp32 inputs under autocast (--batchnorm-fp32). Both
are off by default until measured; here, on the CPU, they train, say so, and appear only in
scripts whose spec they apply to."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import load_script
from test_training import Run, make_image_folder, script_module, spec_text, write_script

FLIPS = "horizontal_flip(p = 1.0)"


def test_per_epoch_augment_trains_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = script_module(tmp_path, ops="random_crop(padding = 1), horizontal_flip(p = 0.5)")
    per_batch = Run(module, capsys)
    per_epoch = Run(module, capsys, "--augment", "per-epoch")
    assert per_batch.ok and per_epoch.ok, (per_batch.result, per_epoch.result)
    warmups = [next(e for e in r.events if e["event"] == "warmup") for r in (per_batch, per_epoch)]
    assert [w["augment"] for w in warmups] == ["per-batch", "per-epoch"]
    # Other draws of the same ops: a different run, but one that learns as well.
    assert per_epoch.losses() != per_batch.losses()
    assert per_epoch.losses()[-1] < per_epoch.losses()[0]
    assert abs(per_epoch.result["val_accuracy"] - per_batch.result["val_accuracy"]) < 0.1


def test_augment_split_augments_every_image_in_chunks_and_keeps_uint8(tmp_path: Path) -> None:
    module = script_module(tmp_path, ops=FLIPS)
    images = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    split = module.Split(images, torch.arange(10) % 3)
    # 3 images of 64 float pixels a chunk: four chunks, the last one short.
    buffer = torch.empty_like(images)
    augmented = module.augment_split(split, buffer, chunk_bytes=3 * 64 * 4)
    assert augmented.images is buffer and augmented.images.dtype == torch.uint8
    assert torch.equal(augmented.images, images.flip(3))  # every image, exactly once
    assert torch.equal(augmented.labels, split.labels)
    assert torch.equal(split.images, images)  # the split itself is left as it was


def test_batchnorm_fp32_feeds_every_norm_fp32_inputs_under_autocast(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = script_module(tmp_path, arch="cnn(channels = [8, 16])", precision="bf16")
    seen: list[torch.dtype] = []

    def record(model: torch.nn.Module) -> None:
        for norm in model.modules():
            if isinstance(norm, torch.nn.BatchNorm2d):
                norm.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].dtype))

    images = torch.rand(4, 1, 8, 8)
    for fp32 in (False, True):
        model = module.build_model((1, 8, 8), 10)
        changed = module.batchnorm_in_fp32(model) if fp32 else 0
        record(model)
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(images)
        assert changed == (2 if fp32 else 0)
        assert seen == [torch.float32 if fp32 else torch.bfloat16] * 2

    result = Run(module, capsys, "--batchnorm-fp32", "--epochs", "1")
    assert result.ok, result.result
    assert next(e for e in result.events if e["event"] == "warmup")["batchnorm_fp32"] == 2


@pytest.mark.parametrize(
    ("overrides", "absent"),
    [
        ({"ops": "mixup(alpha = 0.2)"}, ("--augment", "def augment_split")),  # soft targets
        pytest.param(  # nothing to augment
            {"ops": ""}, ("--augment", "def augment_split"), marks=pytest.mark.slow
        ),
        ({"precision": "fp32"}, ("--batchnorm-fp32", "def batchnorm_in_fp32")),  # no autocast
    ],
)
def test_a_choice_appears_only_where_the_spec_allows_it(
    tmp_path: Path, overrides: dict[str, str], absent: tuple[str, ...]
) -> None:
    script = write_script(tmp_path, spec_text(**{"ops": FLIPS, **overrides})).read_text()
    for text in absent:
        assert text not in script
    everything = write_script(tmp_path, spec_text(ops=FLIPS, precision="bf16")).read_text()
    for text in absent:
        assert text in everything


def test_a_streamed_split_is_augmented_per_batch_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "pictures"
    make_image_folder(folder, per_class=6)
    source = f'image_folder(root = "{folder}", image_size = 8, memory_budget = 0.0)'
    text = spec_text(source=source, ops=FLIPS, batch_size="4", epochs="1")
    result = Run(load_script(write_script(tmp_path, text)), capsys, "--augment", "per-epoch")
    assert result.ok, result.result
    assert "--augment per-epoch: the training images stream from their cache" in result.stderr
    assert next(e for e in result.events if e["event"] == "warmup")["augment"] == "per-batch"
