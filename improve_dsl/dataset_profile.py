"""Dataset profiles: the input shape a model must fit, and facts about a dataset for prompts.

Built-in datasets are described from known facts (no pixels are loaded, nothing is
downloaded); an ``image_folder`` is scanned the way the generated script reads it: the
class sub-folders of ``root`` (or of ``root/train`` when ``root`` has both ``train/`` and
``test/``), image files at any depth below them. This module does not import torch.
"""

from __future__ import annotations

import gzip
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import registry
from .folder_memory import folder_memory
from .ir import Op
from .registry import DatasetFacts

# The suffixes the generated script reads (templates/source/image_folder.py.jinja).
IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
)
# Image headers opened per folder scan, and images fully decoded; larger folders are sampled.
HEADER_SAMPLE = 2000
DECODE_SAMPLE = 64


class ProfileError(Exception):
    """The dataset cannot be used as given; the message is one line for the user."""


@dataclass(frozen=True)
class DatasetProfile:
    """What a practitioner (or an expert's prompt) should know about a dataset.

    ``class_counts`` are images per class in the training files as stored (before the
    validation share, and for ``digits`` and folders without ``test/`` before the test
    share, is held out); ``train_count`` and ``test_count`` are the split sizes the script
    trains and tests on (``train_count`` includes the validation share).
    """

    name: str
    train_count: int
    test_count: int
    num_classes: int
    class_names: tuple[str, ...]
    channels: int
    height: int
    width: int
    class_counts: tuple[int, ...]
    corrupt_files: int = 0
    notes: tuple[str, ...] = field(default=())
    storage: str = ""  # an image folder's size on disk and decoded, and whether it streams

    def describe(self) -> str:
        """A few readable lines: sizes, image shape, classes and their balance, notes."""
        colour = "grayscale" if self.channels == 1 else "colour"
        lines = [
            f"dataset: {self.name}: {self.train_count:,} training and {self.test_count:,} test "
            f"images, {self.num_classes} classes",
            f"images: {self.channels}x{self.height}x{self.width} ({colour})",
            f"classes: {_names(self.class_names)}",
        ]
        if self.class_counts:
            lines.append(f"class balance: {_balance(self.class_counts)}")
        if self.corrupt_files:
            lines.append(f"unreadable files: {self.corrupt_files:,} (skipped by the script)")
        if self.storage:
            lines.append(f"storage: {self.storage}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _names(names: Sequence[str], shown: int = 12) -> str:
    if len(names) <= shown:
        return ", ".join(names)
    return ", ".join(names[:shown]) + f", ... ({len(names) - shown} more)"


def _balance(counts: Sequence[int]) -> str:
    low, high = min(counts), max(counts)
    if low == high:
        return f"balanced, {low:,} images per class"
    ratio = f"{high / low:.1f}x" if low else "some classes are empty"
    return f"{low:,} to {high:,} images per class (largest/smallest {ratio})"


# ---------------------------------------------------------------- built-in datasets


def input_shape(source: Op) -> tuple[int, int, int, int]:
    """(channels, height, width, num_classes) of a data source, without loading pixels.

    Raises ``ProfileError`` for an image folder that is missing or has fewer than two
    classes with images.
    """
    if source.name == "image_folder":
        size = source.integer("image_size")
        classes = _folder_classes(Path(_root(source)))
        return source.integer("channels"), size, size, len(classes)
    known = _known(source)
    return known.channels, known.image_size, known.image_size, known.num_classes


def profile_dataset(source: Op) -> DatasetProfile:
    """Sizes, classes, balance and image shape of a data source (``ProfileError`` if unusable)."""
    if source.name == "image_folder":
        return _profile_folder(source)
    known = _known(source)
    counts = known.train_class_counts
    notes: list[str] = []
    if source.name == "digits":
        counts = _digits_counts() or counts
    elif source.name == "fashion_mnist":
        labels = _fashion_labels(source)
        if labels is not None:
            counts = labels
    train_count = known.train_count
    subset = source.params.get("subset")
    if isinstance(subset, int) and subset < train_count:
        notes.append(
            f"subset = {subset:,}: training uses a stratified {subset:,} of the "
            f"{train_count:,} training images"
        )
        train_count = subset
    return DatasetProfile(
        name=source.name,
        train_count=train_count,
        test_count=known.test_count,
        num_classes=known.num_classes,
        class_names=known.class_names,
        channels=known.channels,
        height=known.image_size,
        width=known.image_size,
        class_counts=counts,
        notes=tuple(notes),
    )


def _known(source: Op) -> DatasetFacts:
    known = registry.dataset_facts(source.name)
    if known is None:
        raise ProfileError(f"no profile for the data source '{source.name}'")
    return known


def _digits_counts() -> tuple[int, ...] | None:
    """Images per class in scikit-learn's digits (bundled, read in milliseconds)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return None
    target = load_digits().target
    counts = Counter(int(t) for t in target)
    return tuple(counts[d] for d in range(10))


def _fashion_labels(source: Op) -> tuple[int, ...] | None:
    """Images per class from the Fashion-MNIST training labels file, when one is found."""
    folders: list[Path] = []
    root = source.params.get("root")
    for base in (root, os.environ.get("IMPROVE_DATA")):
        if isinstance(base, str) and base:
            path = Path(base).expanduser()
            folders += [path, path / "fashion-mnist", path / "FashionMNIST" / "raw"]
    folders += [Path(f) for f in _known(source).system_folders]
    for folder in folders:
        for name in ("train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte"):
            path = folder / name
            if path.is_file():
                try:
                    data = (
                        gzip.decompress(path.read_bytes())
                        if name.endswith(".gz")
                        else (path.read_bytes())
                    )
                except (OSError, EOFError, gzip.BadGzipFile):
                    continue
                if len(data) < 8 or int.from_bytes(data[:4], "big") != 2049:
                    continue  # not an IDX label file
                counts = Counter(data[8:])
                return tuple(counts[c] for c in range(10))
    return None


# ---------------------------------------------------------------- image folders


def _root(source: Op) -> str:
    root = source.params.get("root")
    if not isinstance(root, str) or not root:
        raise ProfileError('image_folder needs root = "path/to/images"')
    return root


def missing_folder(root: Path) -> str:
    """The image folder does not exist: say so, and where a relative one was looked for."""
    where = "" if root.is_absolute() else f" (looked in {Path.cwd() / root})"
    return f"the image folder '{root}' does not exist{where}"


def _split_folders(root: Path) -> tuple[Path, Path | None]:
    """The training folder and the test folder (None: a share of training is held out)."""
    if not root.exists():
        raise ProfileError(missing_folder(root))
    if not root.is_dir():
        raise ProfileError(f"'{root}' is a file, not a folder of class sub-folders")
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root / "train", root / "test"
    return root, None


def _class_dirs(folder: Path) -> list[Path]:
    try:
        return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError as exc:
        raise ProfileError(f"cannot read the image folder '{folder}': {exc.strerror}") from None


def _images(folder: Path) -> list[Path]:
    """Image files at any depth below a class folder, sorted, as the script lists them."""
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


def _folder_classes(root: Path) -> dict[str, list[Path]]:
    """Class name → image files of the training folder; at least two classes with images."""
    train, _ = _split_folders(root)
    classes = {d.name: _images(d) for d in _class_dirs(train)}
    with_images = [name for name, files in classes.items() if files]
    where = f"'{root}'"
    if not with_images:
        raise ProfileError(
            f"no images found in class sub-folders of {where}: expected "
            f"{root}/<class>/<image> (or train/ and test/ folders that hold class folders)"
        )
    if len(with_images) < 2:
        only = with_images[0]
        hint = (
            " (a train/ folder is read as a class unless test/ sits beside it)"
            if only == "train"
            else ""
        )
        raise ProfileError(
            f"only one class ('{only}') has images in {where}; a classifier needs at least "
            f"two class sub-folders{hint}"
        )
    return classes


@dataclass
class _Scan:
    """What opening a sample of image files found."""

    opened: int = 0
    corrupt: list[Path] = field(default_factory=list)
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    modes: Counter[str] = field(default_factory=Counter)


def _scan_images(files: Sequence[Path]) -> _Scan:
    """Open the headers of (a sample of) the files, and fully decode a smaller sample."""
    from PIL import Image

    scan = _Scan()
    rng = random.Random(0)
    sample = list(files) if len(files) <= HEADER_SAMPLE else rng.sample(list(files), HEADER_SAMPLE)
    decode = set(rng.sample(range(len(sample)), min(DECODE_SAMPLE, len(sample))))
    for index, path in enumerate(sample):
        scan.opened += 1
        try:
            with Image.open(path) as image:
                scan.sizes[image.size] += 1
                scan.modes[image.mode] += 1
                if index in decode:
                    image.load()  # headers can be fine while the pixel data is truncated
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            scan.corrupt.append(path)
    return scan


def _profile_folder(source: Op) -> DatasetProfile:
    root = Path(_root(source))
    classes = _folder_classes(root)
    _, test_folder = _split_folders(root)
    names = tuple(classes)
    all_files = [p for files in classes.values() for p in files]
    scan = _scan_images(all_files)
    notes: list[str] = []
    corrupt = set(scan.corrupt)
    if scan.opened < len(all_files):
        # Sampled: counts are of files, the unreadable ones estimated from the sample.
        counts = tuple(len(files) for files in classes.values())
        corrupt_count = round(len(corrupt) * len(all_files) / max(1, scan.opened))
        notes.append(
            f"image sizes, modes and unreadable files from a sample of {scan.opened:,} files"
        )
    else:
        # Every header was read: count what the script will read, as it skips the rest.
        counts = tuple(sum(p not in corrupt for p in files) for files in classes.values())
        corrupt_count = len(corrupt)
    total = sum(counts)
    if sum(1 for count in counts if count) < 2:
        raise ProfileError(
            f"fewer than two classes in '{root}' have images that can be read "
            f"({len(corrupt)} unreadable files, e.g. {scan.corrupt[0].name})"
        )
    if test_folder is not None:
        test_count = sum(len(_images(test_folder / name)) for name in names)
        train_count = total
        extra = sorted({d.name for d in _class_dirs(test_folder)} - set(names))
        if extra:
            notes.append(f"test/ has classes that train/ lacks (ignored): {', '.join(extra)}")
    else:
        test_fraction = source.number("test_fraction")
        # As the script's stratified_split: round(fraction x images), at least one each side.
        test_count = min(total - 1, max(1, round(test_fraction * total)))
        train_count = total - test_count
        notes.append(
            f"no test/ folder: a seeded, stratified {test_fraction:.0%} of the images "
            "is held out as the test split"
        )
    empty = [name for name, count in zip(names, counts, strict=True) if not count]
    if empty:
        notes.append(f"class folders without images: {', '.join(empty)}")
    subset = source.params.get("subset")
    if isinstance(subset, int) and subset < train_count:
        notes.append(
            f"subset = {subset:,}: training uses a stratified {subset:,} of the "
            f"{train_count:,} training images"
        )
        train_count = subset
    if scan.corrupt:
        shown = ", ".join(str(p.relative_to(root)) for p in scan.corrupt[:3])
        notes.append(f"unreadable image files, e.g. {shown}")
    size = source.integer("image_size")
    channels = source.integer("channels")
    if len(scan.sizes) > 1:
        ((common, _),) = scan.sizes.most_common(1)
        widths = [w for w, _ in scan.sizes]
        heights = [h for _, h in scan.sizes]
        notes.append(
            f"mixed image sizes: {len(scan.sizes)} different, {min(widths)}-{max(widths)} wide "
            f"and {min(heights)}-{max(heights)} high (most {common[0]}x{common[1]}); all are "
            f"resized to {size}x{size}"
        )
    elif scan.sizes:
        ((only, _),) = scan.sizes.most_common(1)
        if only != (size, size):
            notes.append(f"images are {only[0]}x{only[1]}, resized to {size}x{size}")
    target = "L (grayscale)" if channels == 1 else "RGB"
    if len(scan.modes) > 1:
        modes = ", ".join(f"{mode} ({count})" for mode, count in scan.modes.most_common())
        notes.append(f"mixed image modes: {modes}; all are converted to {target}")
    elif scan.modes:
        ((mode, _),) = scan.modes.most_common(1)
        if mode != ("L" if channels == 1 else "RGB"):
            notes.append(f"images are mode {mode}, converted to {target}")
    budget = source.params.get("memory_budget")
    # The training folder (the whole folder when it has no test/) decides whether runs stream.
    memory = folder_memory(
        [p for p in all_files if p not in corrupt],
        size,
        channels,
        float(budget) if isinstance(budget, (int, float)) else None,
    )
    return DatasetProfile(
        name=f"image_folder({root})",
        train_count=train_count,
        test_count=test_count,
        num_classes=len(names),
        class_names=names,
        channels=channels,
        height=size,
        width=size,
        class_counts=counts,
        corrupt_files=corrupt_count,
        notes=tuple(notes),
        storage=memory.describe(),
    )
