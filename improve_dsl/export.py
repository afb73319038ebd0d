"""``improve export RUN_DIR -o model.onnx``: a finished run's model as ONNX or TorchScript.

The model is loaded exactly as ``improve predict`` loads it (the run's ``train.py`` builds the
architecture, ``model.pt`` holds the weights) and written with what a user of the file needs
to feed it: the class names, the input size and the normalisation, in the ONNX model's
metadata (``metadata_props``) or a TorchScript file's extra file ``improve.json``. Input: a
float32 batch ``N x C x H x W`` of pixels scaled to 0..1 and normalised as
``(x - mean) / std``; output: one logit per class. ``improve predict`` reads both files back.

ONNX needs the ``onnx`` extra (``pip install 'improve-dsl[onnx]'``: onnx and onnxruntime).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .predict import METADATA_FILE, LoadedModel, PredictError, load_exported, load_run
from .predict import metadata as model_metadata

if TYPE_CHECKING:
    import torch

FORMATS = ("onnx", "torchscript")
_SUFFIXES = {
    ".onnx": "onnx",
    ".pt": "torchscript",
    ".ts": "torchscript",
    ".torchscript": "torchscript",
}
INPUT_NOTE = "float32 NxCxHxW, pixels scaled to 0..1, then (x - mean) / std per channel"
ONNX_OPSET = 17


class ExportError(Exception):
    """A problem with the run directory, the output path or the extra: told in one line."""


@dataclass(frozen=True)
class Exported:
    """What was written, and how closely the written model agrees with the trained one."""

    path: Path
    format: str
    max_difference: float  # largest |logit difference| on a check batch

    def describe(self) -> str:
        return (
            f"wrote {self.path} ({self.format}); its logits match the trained model's within "
            f"{self.max_difference:.1e} on a check batch"
        )


def format_for(path: Path, given: str | None) -> str:
    """The format named by ``--format``, else by the output's suffix."""
    if given is not None:
        if given not in FORMATS:
            raise ExportError(f"--format must be {' or '.join(FORMATS)}, not {given!r}")
        return given
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise ExportError(
            f"cannot tell the format from {path.name!r}: name it .onnx (ONNX) or .pt "
            "(TorchScript), or pass --format onnx|torchscript"
        )
    return found


def metadata(loaded: LoadedModel, run_dir: Path) -> dict[str, str]:
    """What a user of the exported file needs to feed it and read its output."""
    return {
        **model_metadata(loaded),
        "improve.input": INPUT_NOTE,
        "improve.output": "logits, one per class in the order of improve.class_names",
        "improve.version": __version__,
        "improve.run_dir": str(run_dir),
    }


def export_run(run_dir: Path, output: Path, fmt: str | None = None) -> Exported:
    """Write the run's model to ``output`` as ONNX or TorchScript, with its metadata."""
    import torch

    fmt = format_for(output, fmt)
    try:
        loaded = load_run(run_dir)
    except PredictError as exc:
        raise ExportError(str(exc)) from None
    model = loaded.model
    assert isinstance(model, torch.nn.Module)
    meta = metadata(loaded, run_dir)
    example = torch.zeros(2, loaded.channels, loaded.height, loaded.width)
    check = torch.randn(5, loaded.channels, loaded.height, loaded.width, generator=_seeded())
    if not output.parent.is_dir():
        raise ExportError(f"cannot write {output}: the folder {output.parent} does not exist")
    with _temporary_beside(output) as tmp:
        if fmt == "onnx":
            _write_onnx(model, example, meta, tmp)
        else:
            _write_torchscript(model, example, meta, tmp)
        try:
            written = load_exported(tmp, fmt)
        except PredictError as exc:  # the file just written does not read back: a defect
            raise ExportError(f"the exported file does not load: {exc}") from None
        with torch.no_grad():
            expected = model(check).float()
            difference = float((written.model(check).float() - expected).abs().max())
        os.replace(tmp, output)
    return Exported(output, fmt, difference)


def _seeded() -> torch.Generator:
    import torch

    generator = torch.Generator()
    generator.manual_seed(0)
    return generator


class _temporary_beside:
    """A temporary file next to ``path``, removed unless it was moved into place."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, *exc: object) -> None:
        self.tmp.unlink(missing_ok=True)


def _write_onnx(
    model: torch.nn.Module, example: torch.Tensor, meta: dict[str, str], path: Path
) -> None:
    import torch

    onnx = _import_onnx()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of the torch.export one, which
        # needs onnxscript and takes ~15 s for a small CNN on a CPU; this one takes well under
        # a second and handles every architecture the registry builds.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET,
        )
    proto = onnx.load(str(path))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "improve"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _write_torchscript(
    model: torch.nn.Module, example: torch.Tensor, meta: dict[str, str], path: Path
) -> None:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        traced = torch.jit.trace(model, example)  # type: ignore[no-untyped-call]
        torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: json.dumps(meta)})


def _import_onnx() -> Any:
    try:
        import onnx
        import onnxruntime  # noqa: F401  (checked here: predict needs it for the file)
    except ImportError:
        raise ExportError(
            "ONNX export needs onnx and onnxruntime: pip install 'improve-dsl[onnx]'"
        ) from None
    return onnx
