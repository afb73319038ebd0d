"""``improve init``: profile a dataset and write a starting spec suited to it.

The choices are the ones a careful practitioner makes before any tuning, read off the
dataset's size, image size, channels and balance: a plain CNN for grayscale images, a small
CIFAR-style ResNet for colour ones, crop (and flip where mirroring keeps the class)
augmentation, SGD with Nesterov momentum and a one-cycle schedule, label smoothing. The
profile goes into a ``#`` comment at the top, so the spec says what it was written for. The
text is in canonical layout (``improve fmt --check`` passes) and is validated before it is
written.
"""

from __future__ import annotations

import keyword
import os
import re
import shlex
import statistics
from dataclasses import dataclass
from pathlib import Path

from . import fmt, registry
from .dataset_profile import IMAGE_EXTENSIONS, DatasetProfile, ProfileError, profile_dataset
from .diagnostics import DiagnosticError, did_you_mean
from .ir import Op
from .registry import ParamValue

BUILTINS = registry.BUILTIN_DATASETS
# Square sizes folder images are resized to; capped at 64 so a first run fits a CPU.
IMAGE_SIZES = (8, 12, 16, 24, 28, 32, 48, 64)
# Image files whose headers are read to find the typical size and colour mode.
SIZE_SAMPLE = 500
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


class InitError(Exception):
    """The dataset or the output path cannot be used; the message is one line."""


@dataclass(frozen=True)
class Choices:
    """What the starting spec sets, and why (the reasons become comments)."""

    name: str
    source: str
    metric: str
    validation_fraction: float
    batch_size: int
    augment: tuple[str, ...]
    arch: str
    epochs: int
    tta: tuple[str, ...]
    reasons: tuple[str, ...]


# ---------------------------------------------------------------- the data


def source_op(data: str) -> Op:
    """The data source ``data`` names: a built-in dataset, or a folder of class folders."""
    if data in BUILTINS:
        return _op("source", data, {})
    path = Path(data).expanduser()
    if not path.exists():
        hint = did_you_mean(data.replace("-", "_").lower(), BUILTINS)
        raise InitError(
            f"'{data}' is neither a folder nor a built-in dataset ("
            + ", ".join(BUILTINS)
            + ")"
            + (f"; {hint}" if hint else "")
        )
    if not path.is_dir():
        raise InitError(f"'{data}' is a file; --data takes a folder with one sub-folder per class")
    if not os.access(path, os.R_OK | os.X_OK):
        raise InitError(f"the folder '{data}' cannot be read (permission denied)")
    return _op("source", "image_folder", {"root": str(path)})


def _op(category: str, name: str, given: dict[str, object]) -> Op:
    """An Op with every registry parameter present: the given ones, defaults for the rest."""
    component = registry.component(category, name)
    assert component is not None, name
    params = {p.name: given.get(p.name, p.default) for p in component.params}
    return Op.of(name, params)  # type: ignore[arg-type]


def _profile(source: Op) -> DatasetProfile:
    try:
        return profile_dataset(source)
    except ProfileError as exc:
        raise InitError(str(exc)) from None


def _folder_images(root: Path) -> list[Path]:
    """The training image files under root, as the script finds them."""
    base = root / "train" if (root / "train").is_dir() and (root / "test").is_dir() else root
    files: list[Path] = []
    for class_dir in sorted(base.iterdir()):
        if class_dir.is_dir() and not class_dir.name.startswith("."):
            files += sorted(
                p
                for p in class_dir.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
            )
    return files


def typical_shape(files: list[Path]) -> tuple[int, int]:
    """(square size, channels) for a folder: the image size most images can be shrunk to
    without stretching (the median shorter side, rounded down to a listed size, at most 64),
    and 1 channel when every image read is grayscale, else 3."""
    from PIL import Image

    step = max(1, len(files) // SIZE_SAMPLE)
    sides: list[int] = []
    gray = True
    for path in files[::step][:SIZE_SAMPLE]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
                gray = gray and image.mode in _GRAY_MODES
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue  # corrupt files are skipped by the script too
    if not sides:
        raise InitError("none of the image files could be read")
    typical = int(statistics.median(sides))
    size = max([s for s in IMAGE_SIZES if s <= typical], default=IMAGE_SIZES[0])
    return size, 1 if gray else 3


# ---------------------------------------------------------------- the choices


def choose(profile: DatasetProfile, source: Op, name: str) -> Choices:
    """The starting spec's settings for this dataset."""
    count, channels, size = profile.train_count, profile.channels, profile.height
    reasons: list[str] = []

    counts = [c for c in profile.class_counts if c > 0]
    imbalance = max(counts) / min(counts) if counts else 1.0
    metric = "balanced_accuracy" if imbalance >= 3 else "accuracy"
    if metric == "balanced_accuracy":
        reasons.append(
            f"metric: balanced_accuracy, as the largest class is {imbalance:.1f}x the smallest"
        )

    fraction = 0.1 if count >= 5000 else 0.2
    batch_size = 128 if count >= 5000 else 64 if count >= 1000 else 32

    if channels == 1:
        stages = (32, 64) if size <= 12 else (32, 64, 128)
        arch = fmt.call("cnn", {"channels": stages})
        reasons.append("model: a plain CNN with batch norm, enough for small grayscale images")
    else:
        depth = 20 if count >= 20000 else 8
        arch = fmt.call("resnet", {"depth": depth, "width": 16})
        reasons.append(
            f"model: a CIFAR-style ResNet-{depth} for {size}x{size} colour images"
            + (" (deeper for a large dataset)" if depth > 8 else " (small: few images)")
        )

    epochs = 20 if count <= 5000 else 15 if count <= 20000 else 10

    padding = 1 if size <= 12 else 2 if size <= 28 else max(2, size // 8)
    flip = registry.flips_safe(source.name)
    crop = (
        fmt.call("translate", {"pixels": padding})
        if size <= 12
        else fmt.call("random_crop", {"padding": padding})
    )
    augment: tuple[str, ...] = (crop,)
    if flip:
        augment += (fmt.call("horizontal_flip", {"p": 0.5}),)
        if source.name == "image_folder":
            reasons.append(
                "augment: drop horizontal_flip if a mirrored image changes its class "
                "(text, digits, arrows)"
            )
    else:
        reasons.append("augment: no flips, as a mirrored digit is not the same digit")
    tta = ("horizontal_flip",) if flip else ()
    reasons.append(
        f"train: {epochs} epochs of SGD with Nesterov momentum, a one-cycle schedule and label "
        f"smoothing, a robust recipe for a batch of {batch_size}"
    )

    return Choices(
        name=name,
        source=_source_text(source),
        metric=metric,
        validation_fraction=fraction,
        batch_size=batch_size,
        augment=augment,
        arch=arch,
        epochs=epochs,
        tta=tta,
        reasons=tuple(reasons),
    )


def _source_text(source: Op) -> str:
    if source.name != "image_folder":
        return fmt.call(source.name)
    wanted = ("root", "image_size", "channels")
    return fmt.call(source.name, {k: source.params[k] for k in wanted}, "source")


def pipeline_name(data: str) -> str:
    """A pipeline name from the dataset's name or folder: lower case, ``_`` for the rest."""
    base = data if data in BUILTINS else Path(data).expanduser().resolve().name
    name = re.sub(r"[^a-z0-9_]+", "_", base.lower()).strip("_")
    if not name or name[0].isdigit() or keyword.iskeyword(name) or name in ("true", "false"):
        name = f"data_{name}".rstrip("_")
    return name


# ---------------------------------------------------------------- the text

# SGD with Nesterov momentum: robust across the small datasets init sees, with one_cycle.
_OPTIMIZER: dict[str, ParamValue] = {
    "lr": 0.05,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 0.0005,
}


def _comment(text: str) -> list[str]:
    """Text as ``#`` lines; anything unprintable (from file names) becomes ``?``."""
    lines = []
    for line in text.splitlines() or [""]:
        clean = "".join(ch if ch.isprintable() else "?" for ch in line).rstrip()
        lines.append(f"# {clean}".rstrip())
    return lines


def compose_spec(choices: Choices, profile: DatasetProfile, data: str, source: Op) -> str:
    """The spec text, in canonical layout."""
    lines = _comment(f"Starting spec written by `improve init --data {shlex.quote(data)}`.")
    lines += _comment(profile.describe())
    if source.name in ("mnist", "cifar10", "cifar100", "svhn"):
        lines += _comment(
            f'The {source.name} files are looked for under root = "..." or $IMPROVE_DATA; '
            "add download = true to the source to fetch them."
        )
    lines += _comment("Choices:") + [
        line for reason in choices.reasons for line in _comment(f"- {reason}")
    ]
    augment = ", ".join(choices.augment)
    tta = ", ".join(choices.tta)
    lines += [
        f"pipeline {choices.name} {{",
        f"  metric = {choices.metric}",
        f"  seed = {fmt.literal(0)}",
        "}",
        "",
        "data {",
        f"  source = {choices.source}",
        f"  validation = {fmt.call('holdout', {'fraction': choices.validation_fraction})}",
        f"  batch_size = {fmt.literal(choices.batch_size)}",
        "}",
        "",
        "augment {",
        f"  ops = [{augment}]",
        "}",
        "",
        "model {",
        f"  arch = {choices.arch}",
        "}",
        "",
        "train {",
        f"  epochs = {fmt.literal(choices.epochs)}",
        f"  optimizer = {fmt.call('sgd', _OPTIMIZER)}",
        f"  schedule = {fmt.call('one_cycle', {'warmup': 0.2})}",
        f"  loss = {fmt.call('cross_entropy', {'label_smoothing': 0.1})}",
        "}",
        "",
        "eval {",
        f"  tta = [{tta}]",
        "}",
    ]
    return "\n".join(lines) + "\n"


def spec_text(data: str, spec_folder: Path | None = None) -> str:
    """The starting spec for ``data`` (a built-in dataset name or a folder), to be written
    into ``spec_folder`` (default: the working folder): a relative folder is written
    relative to the spec's own folder, where a spec's relative root is read from."""
    source = source_op(data)
    profile = _profile(source)  # also refuses empty and one-class folders
    if source.name == "image_folder":
        root = source.params["root"]
        assert isinstance(root, str)
        size, channels = typical_shape(_folder_images(Path(root)))
        source = _op(
            "source", "image_folder", {"root": root, "image_size": size, "channels": channels}
        )
        profile = _profile(source)
        if spec_folder is not None and not Path(root).is_absolute():
            written = os.path.relpath(Path(root).resolve(), spec_folder.resolve())
            source = _op("source", "image_folder", {**source.params, "root": written})
    choices = choose(profile, source, pipeline_name(data))
    return compose_spec(choices, profile, data, source)


def write_spec(data: str, output: Path, *, force: bool = False) -> str:
    """Write the starting spec for ``data`` to ``output`` (atomically) and return its text."""
    from .validate import load_text

    if output.exists() and not force:
        raise InitError(f"{output} already exists; pass --force to overwrite it")
    if output.is_dir():
        raise InitError(f"{output} is a folder; -o takes the path of the spec file to write")
    text = spec_text(data, output.parent)
    try:
        load_text(text, str(output))
    except DiagnosticError as exc:  # a defect here, but the user should see what it is
        raise InitError("the generated spec does not validate:\n" + exc.render()) from None
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(f".{output.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(output)
    except OSError as exc:
        raise InitError(f"cannot write {output}: {exc.strerror or exc}") from None
    return text
