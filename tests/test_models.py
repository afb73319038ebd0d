"""The model section of the generated script and the compile-time model check.

Every architecture and layer is rendered through the real compiler (``render_script``),
imported from the script's source, built on the meta device for the dataset's images, and
the small ones are trained for a few steps on CPU; a model that does not fit the images
must end in a located diagnostic, never in a traceback.
"""

from __future__ import annotations

import functools
import sys
import urllib.error
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import load_script, slow_except
from PIL import Image
from torch import nn

from improve_dsl import registry
from improve_dsl.check import ModelReport, check_model
from improve_dsl.diagnostics import DiagnosticError
from improve_dsl.ir import Spec
from improve_dsl.paths import templates_dir
from improve_dsl.render import render_script
from improve_dsl.syntax import SpecAST, parse
from improve_dsl.validate import validate

# Sources by the image shape they give: digits is 1x8x8, cifar10 3x32x32 (both static).
SHAPES = {"digits()": (1, 8, 8, 10), "cifar10()": (3, 32, 32, 10), "cifar100()": (3, 32, 32, 100)}


def spec_text(model: str, source: str = "digits()") -> str:
    """A whole spec whose model block holds ``model`` (one field per line)."""
    fields = "\n".join(f"  {line}" for line in model.splitlines())
    return (
        "pipeline t {\n  seed = 0\n}\n\n"
        f"data {{\n  source = {source}\n}}\n\n"
        f"model {{\n{fields}\n}}\n"
    )


@functools.cache
def compiled(model: str, source: str = "digits()") -> tuple[SpecAST, Spec, str]:
    ast = parse(spec_text(model, source), "t.imp")
    spec = validate(ast)
    return ast, spec, render_script(spec)


def build(model: str, source: str = "digits()", device: str = "meta") -> nn.Module:
    channels, size, _, classes = SHAPES[source]
    module = load_script(compiled(model, source)[2])
    if hasattr(module, "PRETRAINED"):
        module.PRETRAINED = False
    try:
        with torch.device(device):
            return module.build_model((channels, size, size), classes)  # type: ignore[no-any-return]
    except NotImplementedError:  # RegNet computes its widths with tensors: build, then move
        return module.build_model((channels, size, size), classes).to(device)  # type: ignore[no-any-return]


def report(model: str, source: str = "digits()") -> ModelReport:
    ast, spec, script = compiled(model, source)
    return check_model(spec, ast, script)


def diagnostic(model: str, source: str = "digits()") -> str:
    ast, spec, script = compiled(model, source)
    with pytest.raises(DiagnosticError) as caught:
        check_model(spec, ast, script)
    return caught.value.render()


# ---------------------------------------------------------------- every entry has a template


def test_every_arch_and_layer_has_a_template() -> None:
    for category in ("arch", "layer"):
        for component in registry.components(category):
            assert (templates_dir() / component.template).is_file(), component.template


# ---------------------------------------------------------------- shapes on the meta device

ARCHS = [
    "arch = mlp(width = 64, depth = 2)",
    "arch = cnn(channels = [16, 32], convs_per_stage = 2, kernel_size = 5)",
    "arch = cnn(channels = [16, 32, 64], batch_norm = false)",
    "arch = resnet(depth = 8, width = 16)",
    "arch = preact_resnet(depth = 18, width = 16)",
    "arch = preact_resnet(depth = 34, width = 8)",
    "arch = wide_resnet(depth = 10, widen = 2, dropout = 0.3)",
    "arch = airbench(width = 16)",
    "arch = torchvision(name = resnet18)",
    "arch = torchvision(name = resnet34)",
    "arch = torchvision(name = resnet50)",
    "arch = torchvision(name = mobilenet_v3_small)",
    "arch = torchvision(name = efficientnet_b0)",
    "arch = torchvision(name = regnet_y_400mf)",
    "layers = [conv(16), batch_norm, relu, max_pool(2), conv(32, 3, 2), gelu, global_avg_pool, "
    "flatten, dropout(0.2), linear(32), relu]",
]


# Each build costs a second or more. The fast tier builds one of each kind: a custom arch (the
# others train in test_small_models_learn_a_fixed_batch), a torchvision model, RegNet (built,
# then moved) and a layer list; the slow tier every one, and on colour images with 100 classes.
@pytest.mark.parametrize("source", ["digits()", pytest.param("cifar100()", marks=pytest.mark.slow)])
@pytest.mark.parametrize(
    "model",
    slow_except(
        ARCHS,
        "arch = mlp(width = 64, depth = 2)",
        "arch = resnet(depth = 8, width = 16)",
        "arch = torchvision(name = resnet18)",
        "arch = torchvision(name = regnet_y_400mf)",
        ARCHS[-1],  # the layer list
    ),
)
def test_architectures_build_on_meta_with_one_output_per_class(model: str, source: str) -> None:
    channels, size, _, classes = SHAPES[source]
    model += "\ndropout = 0.1"
    net = build(model, source)
    net.eval()
    output = net(torch.zeros(3, channels, size, size, device="meta"))
    assert tuple(output.shape) == (3, classes)
    info = report(model, source)
    assert info.input_shape == (channels, size, size)
    assert info.params == sum(p.numel() for p in net.parameters())
    assert info.flops > 0


def test_convnext_builds_for_32px_images() -> None:
    net = build("arch = torchvision(name = convnext_tiny)", "cifar10()")
    assert tuple(net(torch.zeros(2, 3, 32, 32, device="meta")).shape) == (2, 10)


LAYERS = {
    "conv": "conv(out = 8, kernel = 5, stride = 2)",
    "batch_norm": "batch_norm",
    "relu": "relu",
    "gelu": "gelu",
    "max_pool": "max_pool(2)",
    "avg_pool": "avg_pool(size = 2)",
    "global_avg_pool": "global_avg_pool",
    "flatten": "flatten",
    "dropout": "dropout(p = 0.3)",
    "linear": "linear(out = 24)",
}


def test_the_layer_table_covers_the_registry() -> None:
    assert set(LAYERS) == {c.name for c in registry.components("layer")}


# The layer list of ARCHS builds every other layer on the fast tier.
@pytest.mark.parametrize("name", slow_except(sorted(LAYERS), "avg_pool"))
def test_each_layer_builds_after_a_conv(name: str) -> None:
    net = build(f"layers = [conv(8), {LAYERS[name]}]")
    assert tuple(net(torch.zeros(2, 1, 8, 8, device="meta")).shape) == (2, 10)
    assert report(f"layers = [conv(8), {LAYERS[name]}]").params > 0


def test_layers_get_a_flatten_only_where_images_reach_a_linear_layer() -> None:
    script = compiled("layers = [conv(8), linear(16), relu, linear(12)]\ndropout = 0.25")[2]
    body = script[script.index("model = nn.Sequential(") : script.index("LazyLinear(num_classes)")]
    assert body.count("nn.Flatten()") == 1  # before the first linear only
    assert "nn.Dropout(DROPOUT)" in body and "\nDROPOUT = 0.25  # " in script
    no_dropout = compiled("layers = [conv(8)]")[2]
    assert "nn.Dropout(" not in no_dropout[no_dropout.index("def build_model") :]


# ---------------------------------------------------------------- sizes a practitioner knows


# ResNet-20 on the fast tier (the report test renders the same spec), the rest slow.
@pytest.mark.parametrize(
    ("model", "millions"),
    slow_except(
        [
            ("arch = resnet(depth = 20, width = 16)", 0.27),  # He et al.: ResNet-20, 0.27M
            ("arch = resnet(depth = 56, width = 16)", 0.86),  # ResNet-56, 0.85M (+ projections)
            ("arch = preact_resnet(depth = 18)", 11.17),  # PreAct ResNet-18, 11.2M
            ("arch = preact_resnet(depth = 34)", 21.28),
            ("arch = wide_resnet(depth = 16, widen = 4)", 2.75),  # WRN-16-4, 2.7M
            ("arch = wide_resnet(depth = 28, widen = 10)", 36.48),  # WRN-28-10, 36.5M
            ("arch = airbench(width = 64)", 1.97),  # airbench94: about 2M
            ("arch = torchvision(name = resnet18)", 11.18),  # 11.7M with the 1000-class head
            ("arch = torchvision(name = resnet50)", 23.53),
        ],
        ("arch = resnet(depth = 20, width = 16)", 0.27),
    ),
)
def test_parameter_counts_match_the_literature(model: str, millions: float) -> None:
    info = report(model, "cifar10()")
    assert info.params / 1e6 == pytest.approx(millions, abs=0.01)


def test_report_describes_size_cost_and_input() -> None:
    info = report("arch = resnet(depth = 20, width = 16)", "cifar10()")
    # ResNet-20 on CIFAR-10 is about 41M multiply-adds: 82 MFLOPs.
    assert info.flops / 1e6 == pytest.approx(81.6, abs=0.5)
    assert info.describe() == "272K parameters, 81.6 MFLOPs per image, input 3x32x32"
    assert ModelReport(1_234_567, 35_100_000, (1, 28, 28)).describe() == (
        "1.2M parameters, 35.1 MFLOPs per image, input 1x28x28"
    )


# ---------------------------------------------------------------- real training on CPU


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """One intra-op thread: the tiny models here lose more to thread hand-offs than they gain."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = [
    "arch = mlp(width = 32, depth = 1)",
    "arch = cnn(channels = [8, 16])",
    "arch = resnet(depth = 8, width = 4)",
    "arch = preact_resnet(depth = 18, width = 4)",
    "arch = wide_resnet(depth = 10, widen = 1, dropout = 0.1)",
    "arch = airbench(width = 8)",
    "layers = [conv(8), batch_norm, relu, max_pool, conv(16), gelu, global_avg_pool, linear(16)]",
]


def learnable(count: int, channels: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images that are a class's pattern (random, plus a class brightness) and noise, so any
    of the models can learn them, global pooling ones included."""
    brightness = torch.linspace(-1, 1, 10)[:, None, None, None]
    patterns = torch.randn(10, channels, size, size) + brightness
    labels = torch.arange(count) % 10
    return patterns[labels] + 0.5 * torch.randn(count, channels, size, size), labels


def train_steps(
    net: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int
) -> list[float]:
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    net.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# The fast tier trains a plain, a convolutional and a residual net and a layer list.
@pytest.mark.parametrize("model", slow_except(SMALL, *SMALL[:3], SMALL[-1]))
def test_small_models_learn_a_fixed_batch(model: str) -> None:
    torch.manual_seed(0)
    net = build(model + "\ndropout = 0.1", device="cpu")
    losses = train_steps(net, *learnable(40, 1, 8), steps=15)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("name", slow_except(["resnet18", "mobilenet_v3_small"], "resnet18"))
def test_torchvision_models_train_on_grey_images(name: str) -> None:
    torch.manual_seed(0)
    # Grey 32x32 images: the first conv must be adapted from ImageNet's 3 channels.
    module = load_script(compiled(f"arch = torchvision(name = {name})", "cifar10()")[2])
    net = module.build_model((1, 32, 32), 10)
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1 and first.weight.shape[1] == 1
    losses = train_steps(net, *learnable(20, 1, 32), steps=8)
    assert losses[-1] < losses[0], losses


# ---------------------------------------------------------------- models that do not fit


def test_layers_that_pool_8px_images_to_nothing_are_located() -> None:
    model = "layers = [conv(16), max_pool, max_pool, max_pool, max_pool, linear(10)]"
    assert diagnostic(model) == (
        "t.imp:10:3: error: the model does not fit 1x8x8 images: the feature maps shrink to "
        "nothing before the classifier (a 16x1x1 map would become 16x0x0)\n"
        "   |\n"
        "10 |   layers = [conv(16), max_pool, max_pool, max_pool, max_pool, linear(10)]\n"
        "   |   ^^^^^^\n"
        "   = hint: use fewer pooling layers or strides, or a larger image_size"
    )


def test_a_cnn_too_deep_for_the_images_is_located_on_arch() -> None:
    text = diagnostic("dropout = 0.2\narch = cnn(channels = [16, 32, 64, 128])")
    assert text.startswith(
        "t.imp:11:3: error: the model does not fit 1x8x8 images: the feature maps shrink to "
        "nothing before the classifier (a 128x1x1 map would become 128x0x0)"
    )
    assert "11 |   arch = cnn(channels = [16, 32, 64, 128])" in text
    assert "hint: use fewer stages or a larger image_size" in text
    # The same net fits 32x32 images.
    assert report("arch = cnn(channels = [16, 32, 64, 128])", "cifar10()").params > 0


def test_imagenet_models_that_need_bigger_images_are_located() -> None:
    text = diagnostic("arch = torchvision(name = convnext_tiny)")
    assert text.startswith(
        "t.imp:10:3: error: the model does not fit 1x8x8 images: the feature maps shrink to "
        "nothing before the classifier (a 2x2 kernel meets a 1x1 map)"
    )
    assert "hint: ImageNet models shrink images 32-fold" in text


def test_an_unusable_image_folder_is_located_on_the_source(tmp_path: Path) -> None:
    source = f'image_folder(root = "{tmp_path / "missing"}")'
    text = diagnostic("arch = mlp()", source)
    assert text.startswith(
        f"t.imp:6:3: error: the image folder '{tmp_path / 'missing'}' does not exist"
    )


def test_check_uses_the_image_folder_shape(tmp_path: Path) -> None:
    for name in ("cat", "dog", "eel"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (20, 12)).save(tmp_path / name / "a.png")
    info = report(
        "arch = resnet(depth = 8, width = 8)",
        f'image_folder(root = "{tmp_path}", image_size = 48, channels = 1)',
    )
    assert info.input_shape == (1, 48, 48)
    # Three classes, not digits' ten: the classifier on 4 x 8 features is 7 x 33 smaller.
    assert info.params == report("arch = resnet(depth = 8, width = 8)").params - 7 * (4 * 8 + 1)


# ---------------------------------------------------------------- pretrained weights


def test_check_never_fetches_pretrained_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    fetched: list[Any] = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: fetched.append(a))
    info = report("arch = torchvision(name = resnet18, pretrained = true)", "cifar10()")
    assert info.params / 1e6 == pytest.approx(11.18, abs=0.01)
    assert fetched == [] and list(tmp_path.iterdir()) == []


def test_missing_pretrained_weights_offline_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch hub cache

    def offline(*args: Any, **kwargs: Any) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    module = load_script(compiled("arch = torchvision(name = resnet18, pretrained = true)")[2])
    assert module.PRETRAINED is True
    with pytest.raises(RuntimeError) as caught:
        module.build_model((1, 32, 32), 10)
    message = str(caught.value)
    assert message.startswith(
        "the pretrained resnet18 weights could not be downloaded or found in the torch hub "
        f"cache ({tmp_path / 'hub'})"
    )
    assert "no network" in message


# ---------------------------------------------------------------- the code reads well


MODEL_BANNER = "# " + "-" * 76 + " model\n"
CONSTANTS_BANNER = "# " + "-" * 76 + " hyperparameters\n"


@pytest.mark.slow
def test_model_sections_are_black_clean_and_mypy_strict_clean(tmp_path: Path) -> None:
    """The model section of every architecture, alone with the script's imports and its
    constants, passes mypy --strict (black formatting is render_script's own check)."""
    import subprocess

    models = [a for a in ARCHS if "torchvision" not in a] + [
        "arch = torchvision(name = resnet18, pretrained = true)\ndropout = 0.2"
    ]
    for index, model in enumerate(models):
        script = compiled(model)[2]
        start = script.index(MODEL_BANNER)
        end = script.index("\n# ---", start + len(MODEL_BANNER))
        first = script.index(CONSTANTS_BANNER)
        constants = script[first : script.index("\n# ---", first + len(CONSTANTS_BANNER))]
        section = "import torch\nfrom torch import nn\n\n" + constants + "\n\n"
        section += script[start:end].strip() + "\n"
        (tmp_path / f"model_{index}.py").write_text(section)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--ignore-missing-imports",
            "--no-incremental",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    "model",
    slow_except(
        ["arch = resnet(depth = 8, width = 16)", "arch = wide_resnet(depth = 10, widen = 2)"],
        "arch = resnet(depth = 8, width = 16)",
    ),
)
def test_residual_networks_keep_pytorchs_default_initialisation(model: str) -> None:
    """Kaiming fan-out on the convolutions trained 1.8 points worse after 2 epochs than a
    hand-written script with PyTorch's defaults (issue 9, BENCHMARKS.md). The default draws
    from U(-1/sqrt(fan_in), 1/sqrt(fan_in)); fan-out normal draws exceed that bound."""
    torch.manual_seed(0)
    net = build(model, "cifar10()", device="cpu")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) >= 6
    for conv in convs:
        fan_in = conv.weight[0].numel()
        assert conv.weight.abs().max() <= 1 / fan_in**0.5 + 1e-6, conv
