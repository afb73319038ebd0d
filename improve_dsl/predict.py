"""Classify images with a finished run's model: ``improve predict RUN_DIR IMAGE...``.

The run directory holds ``model.pt`` (weights, class names, input size, normalisation) and
``train.py``, the script that trained it. The model class is taken from that script, imported
as a module (it is our own template output, and its training code sits behind
``if __name__ == "__main__":``), so the architecture is exactly the one that was trained.
A file written by ``improve export`` is read here too: ONNX (run in onnxruntime, the ``onnx``
extra) or TorchScript, each carrying the same class names, input size and normalisation.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class PredictError(Exception):
    """A problem with the run directory or an image, told in one line."""


META = "improve."  # the prefix of the metadata keys in an exported file
METADATA_FILE = "improve.json"  # a TorchScript file's extra file holding the metadata


@dataclass(frozen=True)
class Prediction:
    """The most likely class of one image and its probability."""

    path: str
    label: str
    probability: float


@dataclass
class LoadedModel:
    """A trained model ready for inference, with what its inputs must look like.

    ``model`` maps a normalised batch to logits: the torch module of a run directory, or an
    exported file read back by ``export.load_exported`` (TorchScript, or ONNX in onnxruntime).
    """

    model: Callable[[torch.Tensor], torch.Tensor]
    class_names: list[str]
    channels: int
    height: int
    width: int
    mean: list[float]
    std: list[float]


def load_model(path: Path) -> LoadedModel:
    """A run directory's model, or a file written by ``improve export`` (ONNX, TorchScript)."""
    return load_exported(path) if path.is_file() else load_run(path)


def model_dir(run_dir: Path) -> Path:
    """The folder holding the model to use: ``run_dir`` itself for ``improve run``; for a
    run of ``improve refine``, the best spec's model (trained once for its test score, else
    the best attempt's own run)."""
    if not run_dir.is_dir():
        raise PredictError(f"{run_dir} is not a run directory (it does not exist)")
    if (run_dir / "model.pt").is_file():
        return run_dir
    from .journal import JournalError, RunDir

    try:
        run = RunDir.open(run_dir)
    except JournalError:
        raise PredictError(
            f"{run_dir} has no model.pt (looked for {run_dir / 'model.pt'}): the run did not "
            "finish, or this is not a run directory of `improve run` or `improve refine`"
        ) from None
    accepted = [r.iteration for r in run.records() if r.accepted]
    folders = [run.path / "test"]
    if accepted:
        best = run.candidate_dir(max(accepted))
        folders += [best, *sorted(p.parent for p in best.glob("*/model.pt"))]
    for folder in folders:
        if (folder / "model.pt").is_file():
            return folder
    looked = ", ".join(str(folder / "model.pt") for folder in folders)
    raise PredictError(
        f"{run_dir} is a refine run without a saved model of its best spec (looked for "
        f"{looked}); train it with `improve run {run.best_spec} --out DIR` and predict with DIR"
    )


def load_run(run_dir: Path) -> LoadedModel:
    """The model of a finished run (``improve run`` or ``improve refine``), in eval mode on
    the CPU."""
    run_dir = model_dir(run_dir)
    weights = run_dir / "model.pt"
    script = run_dir / "train.py"
    if not script.is_file():
        raise PredictError(f"{run_dir} has no train.py, so the model's architecture is unknown")
    import torch

    try:
        checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say so in one line
        raise PredictError(f"cannot read {weights}: {_first_line(exc)}") from None
    try:
        state_dict = checkpoint["state_dict"]
        class_names = [str(name) for name in checkpoint["class_names"]]
        channels, height, width = (int(v) for v in checkpoint["input_size"])
        mean = [float(v) for v in _flat(checkpoint["mean"])]
        std = [float(v) for v in _flat(checkpoint["std"])]
    except (KeyError, TypeError, ValueError) as exc:
        raise PredictError(f"{weights} is not a model saved by improve ({exc!s})") from None
    module = _import_script(script)
    try:
        model: torch.nn.Module = _build_model(module, (channels, height, width), len(class_names))
        # A compiled model's weights are saved under ``_orig_mod.``; the plain module has none.
        cleaned = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
        model.load_state_dict(cleaned)
    except Exception as exc:
        raise PredictError(
            f"the weights in {weights} do not fit the model of {script}: {_first_line(exc)}"
        ) from None
    model.eval()
    return LoadedModel(model, class_names, channels, height, width, mean, std)


def _build_model(module: Any, input_size: tuple[int, int, int], num_classes: int) -> Any:
    """The script's model: ``build_model(input_size, num_classes)``, or, in a script compiled
    before Dec 2026, ``build_model(in_channels, num_classes, image_size)``."""
    parameters = list(inspect.signature(module.build_model).parameters)
    if parameters[:1] == ["in_channels"]:
        return module.build_model(input_size[0], num_classes, input_size[1])
    return module.build_model(input_size, num_classes)


def _flat(value: Any) -> list[Any]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (int, float)):
        return [value]
    out: list[Any] = []
    for item in value:
        out.extend(_flat(item))
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _import_script(script: Path) -> Any:
    """The run's ``train.py`` as a module (nothing trains on import)."""
    name = f"_improve_run_{abs(hash(script.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, script)
    if spec is None or spec.loader is None:
        raise PredictError(f"cannot import {script}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses in the script look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise PredictError(f"cannot import {script}: {_first_line(exc)}") from None
    if not callable(getattr(module, "build_model", None)):
        raise PredictError(f"{script} defines no build_model()")
    return module


def load_image(path: Path, loaded: LoadedModel) -> torch.Tensor:
    """One image as the model saw its training images: mode, size, then normalisation."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            # As the training script's decode_image: 16-bit and float images are stretched to
            # 8 bits, then converted to the model's mode and resized bilinearly.
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                values = np.asarray(image, dtype=np.float32)
                values = values * (255 / max(float(values.max()), 1.0))
                image8 = Image.fromarray(values.astype(np.uint8))
            else:
                image8 = image.copy()
        converted = image8.convert("L" if loaded.channels == 1 else "RGB")
        if converted.size != (loaded.width, loaded.height):
            converted = converted.resize((loaded.width, loaded.height), Image.Resampling.BILINEAR)
        array = np.asarray(converted, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise PredictError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PredictError(f"{path} is a folder, not an image") from None
    except UnidentifiedImageError:
        raise PredictError(f"{path} is not an image that can be read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # truncated or corrupt image data
        raise PredictError(f"{path} cannot be read as an image: {_first_line(exc)}") from None
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    mean = torch.tensor(loaded.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(loaded.std, dtype=torch.float32).view(-1, 1, 1)
    return (tensor - mean) / std


def predict(run_dir: Path, images: list[Path]) -> list[Prediction]:
    """The most likely class of each image, in order, by a run's model or an exported file.
    Every image is read before any is classified, so an unreadable one stops the command
    before it prints anything."""
    import torch

    loaded = load_model(run_dir)
    batch = torch.stack([load_image(path, loaded) for path in images])
    with torch.no_grad():
        probabilities = torch.softmax(loaded.model(batch).float(), dim=1)
    best = probabilities.max(dim=1)
    return [
        Prediction(str(path), loaded.class_names[int(index)], float(prob))
        for path, prob, index in zip(images, best.values, best.indices, strict=True)
    ]


# ---------------------------------------------------------------- files of `improve export`


def metadata(loaded: LoadedModel) -> dict[str, str]:
    """What a user of an exported file needs to feed it: class names, input size and
    normalisation, as the string pairs ONNX and TorchScript files carry."""
    return {
        f"{META}class_names": json.dumps(loaded.class_names),
        f"{META}input_size": json.dumps([loaded.channels, loaded.height, loaded.width]),
        f"{META}mean": json.dumps(loaded.mean),
        f"{META}std": json.dumps(loaded.std),
    }


def load_exported(path: Path, fmt: str | None = None) -> LoadedModel:
    """A file of ``improve export`` (ONNX, run in onnxruntime, or TorchScript) and its
    metadata, ready to classify as a run's model is."""
    fmt = fmt or _sniff(path)
    if fmt == "onnx":
        model, meta = _load_onnx(path)
    else:
        model, meta = _load_torchscript(path)
    try:
        channels, height, width = (int(v) for v in json.loads(meta[f"{META}input_size"]))
        return LoadedModel(
            model=model,
            class_names=[str(n) for n in json.loads(meta[f"{META}class_names"])],
            channels=channels,
            height=height,
            width=width,
            mean=[float(v) for v in json.loads(meta[f"{META}mean"])],
            std=[float(v) for v in json.loads(meta[f"{META}std"])],
        )
    except (KeyError, TypeError, ValueError):
        raise PredictError(
            f"{path} has no improve metadata (class names, input size, normalisation): "
            "export it with `improve export`"
        ) from None


def _sniff(path: Path) -> str:
    """ONNX files are protobuf; TorchScript files are zip archives (``PK``)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise PredictError(f"cannot read {path}: {exc.strerror or exc}") from None
    return "torchscript" if head.startswith(b"PK") else "onnx"


def _load_onnx(path: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, str]]:
    try:
        import onnxruntime
    except ImportError:
        raise PredictError(
            f"{path.name} is an ONNX model; reading it needs onnxruntime: "
            "pip install 'improve-dsl[onnx]'"
        ) from None
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for foreign files
        raise PredictError(
            f"{path} is not an ONNX model that can be run: {_first_line(exc)}"
        ) from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    input_name = session.get_inputs()[0].name

    def run(batch: torch.Tensor) -> torch.Tensor:
        import torch

        [logits] = session.run(None, {input_name: batch.float().numpy()})[:1]
        return torch.from_numpy(logits)

    return run, meta


def _load_torchscript(path: Path) -> tuple[torch.nn.Module, dict[str, str]]:
    import torch

    extra = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(  # type: ignore[no-untyped-call]
                str(path), map_location="cpu", _extra_files=extra
            )
    except Exception as exc:  # a truncated or foreign archive: say so in one line
        raise PredictError(f"{path} is not a TorchScript model: {_first_line(exc)}") from None
    try:
        meta = json.loads(extra[METADATA_FILE] or "{}")
    except ValueError:
        meta = {}
    module.eval()
    return module, {str(k): str(v) for k, v in meta.items()}
