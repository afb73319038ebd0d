"""Compile-time model checks: build the generated script's model on PyTorch's ``meta`` device.

The ``meta`` device has shapes but no storage, so any model (even one of hundreds of
millions of parameters) is built and run in milliseconds without memory: a model that does
not fit the dataset's images fails here, located on the spec's ``model`` block, before any
training run is spent on it.
"""

from __future__ import annotations

import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

from .dataset_profile import ProfileError, input_shape, missing_folder
from .diagnostics import Diagnostic, DiagnosticError, Span
from .ir import Spec
from .syntax import Call, SpecAST, String

_MODULE_NAME = "improve_checked_script"


@dataclass(frozen=True)
class ModelReport:
    """Size and cost of a spec's model for the dataset's images."""

    params: int
    flops: int  # per image, forward pass (a multiply-add counts as two)
    input_shape: tuple[int, int, int]  # channels, height, width

    def describe(self) -> str:
        """E.g. ``1.2M parameters, 35.1 MFLOPs per image, input 1x28x28``."""
        channels, height, width = self.input_shape
        return (
            f"{_scaled(self.params, '')} parameters, {_scaled(self.flops, ' ')}FLOPs per "
            f"image, input {channels}x{height}x{width}"
        )


def _scaled(count: int, gap: str) -> str:
    """1234567 → ``1.2M`` (``gap`` goes between number and unit prefix)."""
    for size, unit in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K")):
        if count >= size:
            value = count / size
            text = f"{value:.1f}" if value < 100 else f"{value:.0f}"
            return f"{text}{gap}{unit}"
    return f"{count}{gap}"


def check_model(spec: Spec, ast: SpecAST, script: str) -> ModelReport:
    """Build the script's model on the meta device for the dataset's input shape.

    Counts parameters and the FLOPs of one forward pass per image. A model that does not fit
    the images raises a ``DiagnosticError`` on the model block's ``arch`` or ``layers``
    field; an unusable image folder raises one on the data block's ``source`` field.
    Pretrained weights are never loaded (nor downloaded) here.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    channels, height, width, num_classes = check_data(spec, ast)
    module = _load_script(script)
    if hasattr(module, "PRETRAINED"):
        # The same shapes without the weights: nothing is downloaded or read from the cache.
        setattr(module, "PRETRAINED", False)  # noqa: B010
    build = module.build_model
    image = f"{channels}x{height}x{width}"
    try:
        try:
            with torch.device("meta"):
                model = build((channels, height, width), num_classes)
        except NotImplementedError as exc:
            if "meta" not in str(exc):
                raise
            # A few torchvision builders (RegNet) compute their widths with tensors, which
            # the meta device cannot read back: build those for real and drop the storage.
            model = build((channels, height, width), num_classes).to("meta")
        model.eval()  # batch norm in training mode refuses a batch of one 1x1 map
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            output = model(torch.zeros(1, channels, height, width, device="meta"))
    except Exception as exc:  # any failure here is the model not fitting the images
        raise _not_fitting(spec, ast, image, exc) from None
    if tuple(output.shape) != (1, num_classes):
        raise _located(
            ast,
            "model",
            _model_field(spec),
            f"the model gives outputs of shape {tuple(output.shape)} for one image, not "
            f"(1, {num_classes})",
            None,
        )
    params = sum(
        p.numel()
        for p in model.parameters()
        if not isinstance(p, torch.nn.parameter.UninitializedParameter)
    )
    return ModelReport(params, int(counter.get_total_flops()), (channels, height, width))


def check_data_folder(spec: Spec, ast: SpecAST) -> None:
    """An image folder that does not exist, as a diagnostic on the data block's ``source``
    (cheap: no torch, no image opened; plain ``improve check`` runs it)."""
    source = spec.data.source
    root = source.params.get("root")
    if source.name != "image_folder" or not isinstance(root, str) or Path(root).is_dir():
        return
    written = next(
        (
            arg.value
            for block in ast.blocks
            if block.kind == "data"
            for fld in block.fields
            if fld.name == "source" and isinstance(fld.value, Call)
            for arg in fld.value.args
            if arg.keyword == "root" and isinstance(arg.value, String)
        ),
        None,
    )
    hint = None
    if written is not None and not Path(written.value).is_absolute():
        hint = (
            f'root = "{written.value}" is read from the spec\'s folder '
            f"({Path(ast.path).parent}); write it relative to that folder, or absolute"
        )
    raise _located(ast, "data", "source", missing_folder(Path(root)), hint)


def check_data(spec: Spec, ast: SpecAST) -> tuple[int, int, int, int]:
    """(channels, height, width, classes) of the spec's data, read without loading pixels.

    Cheap enough to run as the user types; an unusable image folder raises a
    ``DiagnosticError`` on the data block's ``source`` field.
    """
    check_data_folder(spec, ast)
    try:
        return input_shape(spec.data.source)
    except ProfileError as exc:
        raise _located(ast, "data", "source", str(exc), None) from None


def _load_script(script: str) -> types.ModuleType:
    """The generated script as a module, without running its ``main``."""
    module = types.ModuleType(_MODULE_NAME)
    module.__file__ = "<generated train.py>"
    code = compile(script, module.__file__, "exec")
    # Registered while it runs: dataclasses look their module up in sys.modules.
    sys.modules[_MODULE_NAME] = module
    try:
        exec(code, module.__dict__)
    finally:
        sys.modules.pop(_MODULE_NAME, None)
    return module


def _model_field(spec: Spec) -> str:
    return "arch" if spec.model.arch is not None else "layers"


def _not_fitting(spec: Spec, ast: SpecAST, image: str, exc: BaseException) -> DiagnosticError:
    field = _model_field(spec)
    reason = _reason(exc)
    if field == "layers":
        hint = "use fewer pooling layers or strides, or a larger image_size"
    elif spec.model.arch is not None and spec.model.arch.name == "torchvision":
        hint = (
            "ImageNet models shrink images 32-fold; choose a CIFAR-sized arch (resnet, "
            "preact_resnet, wide_resnet, airbench) or a larger image_size"
        )
    else:
        hint = "use fewer stages or a larger image_size"
    return _located(ast, "model", field, f"the model does not fit {image} images: {reason}", hint)


_POOLED = re.compile(
    r"Given input size: \((\d+x\d+x\d+)\)\. Calculated output size: \((\d+x-?\d+x-?\d+)\)"
)
_KERNEL = re.compile(r"input size per channel: \((\d+) x (\d+)\)\. Kernel size: \((\d+) x (\d+)\)")
_SHRUNK = "the feature maps shrink to nothing before the classifier"


def _reason(exc: BaseException) -> str:
    """A short, plain reason, with torch's own words where no plainer ones are known."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    pooled = _POOLED.search(text)
    if pooled:
        return f"{_SHRUNK} (a {pooled[1]} map would become {pooled[2]})"
    kernel = _KERNEL.search(text)
    if kernel:
        return f"{_SHRUNK} (a {kernel[3]}x{kernel[4]} kernel meets a {kernel[1]}x{kernel[2]} map)"
    if "Expected more than 1 value per channel" in text:
        return f"batch norm sees a single value per channel ({_shorten(text)})"
    return _shorten(text)


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _located(
    ast: SpecAST, block_kind: str, field_name: str, message: str, hint: str | None
) -> DiagnosticError:
    """A diagnostic on a block's field (the block's keyword when the field is absent)."""
    span = Span(1, 1)
    for block in ast.blocks:
        if block.kind == block_kind:
            span = block.span
            for fld in block.fields:
                if fld.name == field_name:
                    span = fld.span
    return DiagnosticError([Diagnostic(ast.path, span, message, hint)], ast.source)
