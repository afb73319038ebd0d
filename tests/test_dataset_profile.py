"""Dataset profiles: input shapes without pixels, facts for prompts, clear folder errors."""

from __future__ import annotations

import gzip
import subprocess
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from improve_dsl.dataset_profile import DatasetProfile, ProfileError, input_shape, profile_dataset
from improve_dsl.ir import Op
from improve_dsl.render import render_script
from improve_dsl.validate import load_text

REPO = Path(__file__).resolve().parent.parent


def source(name: str, **params: object) -> Op:
    """A source op as validation makes it: every registry parameter present."""
    from improve_dsl import registry

    component = registry.component("source", name)
    assert component is not None
    return Op.of(name, {p.name: params.get(p.name, p.default) for p in component.params})


def folder_source(root: Path, **params: object) -> Op:
    return source("image_folder", root=str(root), **params)


# ---------------------------------------------------------------- built-in datasets


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("digits", (1, 8, 8, 10)),
        ("fashion_mnist", (1, 28, 28, 10)),
        ("mnist", (1, 28, 28, 10)),
        ("cifar10", (3, 32, 32, 10)),
        ("cifar100", (3, 32, 32, 100)),
        ("svhn", (3, 32, 32, 10)),
    ],
)
def test_builtin_input_shapes(name: str, shape: tuple[int, int, int, int]) -> None:
    assert input_shape(source(name)) == shape
    profile = profile_dataset(source(name))
    assert (profile.channels, profile.height, profile.width, profile.num_classes) == shape
    assert len(profile.class_names) == len(profile.class_counts) == shape[3]
    assert len(set(profile.class_names)) == shape[3]


def test_the_profile_module_does_not_import_torch() -> None:
    code = "import sys, improve_dsl.dataset_profile; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_digits_profile_matches_scikit_learn_and_the_scripts_split() -> None:
    from sklearn.datasets import load_digits

    target = load_digits().target
    profile = profile_dataset(source("digits"))
    assert profile.class_counts == tuple(int((target == d).sum()) for d in range(10))
    # The script holds out round(20%) of the 1,797 images as the test split.
    assert (profile.train_count, profile.test_count) == (1438, 359)
    assert profile.describe() == (
        "dataset: digits: 1,438 training and 359 test images, 10 classes\n"
        "images: 1x8x8 (grayscale)\n"
        "classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9\n"
        "class balance: 174 to 183 images per class (largest/smallest 1.1x)"
    )


def test_known_counts_for_datasets_that_are_not_here() -> None:
    cifar = profile_dataset(source("cifar100"))
    assert (cifar.train_count, cifar.test_count, cifar.class_counts[0]) == (50000, 10000, 500)
    assert "apple, aquarium_fish" in cifar.describe() and "(88 more)" in cifar.describe()
    svhn = profile_dataset(source("svhn"))
    assert sum(svhn.class_counts) == svhn.train_count == 73257
    assert "4,659 to 13,861 images per class" in svhn.describe()


def test_fashion_mnist_counts_come_from_the_label_file(tmp_path: Path) -> None:
    labels = bytes([0] * 5 + [1] * 3 + [9] * 2)
    header = (2049).to_bytes(4, "big") + len(labels).to_bytes(4, "big")
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header + labels))
    profile = profile_dataset(source("fashion_mnist", root=str(tmp_path)))
    assert profile.class_counts == (5, 3, 0, 0, 0, 0, 0, 0, 0, 2)
    assert profile.class_names[9] == "Ankle boot"


def test_subset_is_noted() -> None:
    profile = profile_dataset(source("cifar10", subset=5000))
    assert profile.train_count == 5000
    assert "note: subset = 5,000: training uses a stratified 5,000 of the 50,000" in (
        profile.describe()
    )


# ---------------------------------------------------------------- image folders


def messy_folder(root: Path) -> Path:
    """Three classes: PNG and JPEG files, spaces in names, grey and RGBA images of mixed
    sizes, one corrupt file, a non-image file and a hidden folder (both ignored)."""
    (root / "red panda").mkdir(parents=True)
    (root / "cat").mkdir()
    (root / "dog" / "nested dir").mkdir(parents=True)
    (root / ".cache").mkdir()
    for i in range(4):
        Image.new("RGB", (40, 30), (200, 10 * i, 0)).save(root / "red panda" / f"img {i}.png")
    for i in range(3):
        Image.new("L", (64, 64), 20 * i).save(root / "cat" / f"cat {i}.JPG", format="JPEG")
    Image.new("RGBA", (16, 16)).save(root / "dog" / "nested dir" / "deep one.png")
    Image.new("RGB", (40, 30)).save(root / "dog" / "d.jpeg")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "dog" / "notes.txt").write_text("not an image")
    Image.new("RGB", (8, 8)).save(root / ".cache" / "x.png")
    return root


def test_image_folder_profile_reports_what_a_user_should_know(tmp_path: Path) -> None:
    root = messy_folder(tmp_path / "my images")
    op = folder_source(root, image_size=32, channels=3, test_fraction=0.2)
    assert input_shape(op) == (3, 32, 32, 3)
    profile = profile_dataset(op)
    assert profile.class_names == ("cat", "dog", "red panda")
    assert profile.class_counts == (3, 2, 4)  # the broken file is not counted
    assert (profile.train_count, profile.test_count) == (7, 2)
    assert profile.corrupt_files == 1
    text = profile.describe()
    assert text.splitlines()[:5] == [
        f"dataset: image_folder({root}): 7 training and 2 test images, 3 classes",
        "images: 3x32x32 (colour)",
        "classes: cat, dog, red panda",
        "class balance: 2 to 4 images per class (largest/smallest 2.0x)",
        "unreadable files: 1 (skipped by the script)",
    ]
    assert "note: unreadable image files, e.g. dog/broken.png" in text
    assert (
        "note: mixed image sizes: 3 different, 16-64 wide and 16-64 high (most 40x30); "
        "all are resized to 32x32"
    ) in text
    assert "note: mixed image modes: RGB (5), L (3), RGBA (1); all are converted to RGB" in text
    assert "no test/ folder: a seeded, stratified 20% of the images is held out" in text


def test_train_and_test_folders(tmp_path: Path) -> None:
    for split, count in (("train", 3), ("test", 2)):
        for name in ("ant", "bee"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("L", (28, 28)).save(tmp_path / split / name / f"{i}.png")
    profile = profile_dataset(folder_source(tmp_path, channels=1, image_size=28))
    assert (profile.train_count, profile.test_count) == (6, 4)
    assert profile.class_counts == (3, 3)
    assert "note:" not in profile.describe()  # grey 28x28 PNGs for a 1x28x28 model: nothing odd


def test_profile_agrees_with_the_generated_scripts_folder_reader(tmp_path: Path) -> None:
    root = messy_folder(tmp_path / "data")
    spec = load_text(
        "pipeline t {\n  seed = 0\n}\n"
        f'data {{\n  source = image_folder(root = "{root}")\n}}\n'
        "model {\n  arch = mlp()\n}\n"
    )
    module = types.ModuleType("generated_train")
    sys.modules[module.__name__] = module
    try:
        exec(compile(render_script(spec), "train.py", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    train, test, names = module.load_source(str(root))
    profile = profile_dataset(spec.data.source)
    assert tuple(names) == profile.class_names
    assert (len(train), len(test)) == (profile.train_count, profile.test_count)
    per_class = train.labels.bincount(minlength=3) + test.labels.bincount(minlength=3)
    assert tuple(per_class.tolist()) == profile.class_counts


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "the image folder '{root}' does not exist"),
        (
            lambda root: root.write_text("x"),
            "'{root}' is a file, not a folder of class sub-folders",
        ),
        (
            lambda root: root.mkdir(),
            "no images found in class sub-folders of '{root}': expected "
            "{root}/<class>/<image> (or train/ and test/ folders that hold class folders)",
        ),
        (
            lambda root: (root / "a" / "b").mkdir(parents=True),
            "no images found in class "
            "sub-folders of '{root}': expected {root}/<class>/<image> (or train/ and test/ "
            "folders that hold class folders)",
        ),
    ],
)
def test_unusable_folders_give_one_clear_line(tmp_path: Path, make: object, message: str) -> None:
    root = tmp_path / "imgs"
    make(root)  # type: ignore[operator]
    for call in (input_shape, profile_dataset):
        with pytest.raises(ProfileError) as caught:
            call(folder_source(root))  # type: ignore[operator]
        assert str(caught.value) == message.format(root=root)
        assert "\n" not in str(caught.value)


def test_one_class_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    (tmp_path / "empty").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "only" / "a.png")
    with pytest.raises(
        ProfileError,
        match=r"^only one class \('only'\) has images in '.*'; a "
        r"classifier needs at least two class sub-folders$",
    ):
        profile_dataset(folder_source(tmp_path))


def test_a_lone_train_folder_is_explained(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / name / "x.png")
    with pytest.raises(
        ProfileError,
        match=r"a train/ folder is read as a class unless test/ "
        r"sits beside it",
    ):
        input_shape(folder_source(tmp_path))


def test_empty_class_folders_are_noted_and_counted_as_classes(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (32, 32)).save(tmp_path / name / "x.png")
        Image.new("RGB", (32, 32)).save(tmp_path / name / "y.png")
    (tmp_path / "c").mkdir()
    profile = profile_dataset(folder_source(tmp_path))
    assert profile.num_classes == 3 == input_shape(folder_source(tmp_path))[3]
    assert "note: class folders without images: c" in profile.describe()
    assert "some classes are empty" in profile.describe()


def test_profile_is_a_frozen_value() -> None:
    profile = profile_dataset(source("cifar10"))
    assert isinstance(profile, DatasetProfile)
    with pytest.raises(AttributeError):
        profile.train_count = 1  # type: ignore[misc]


def test_a_folder_of_unreadable_files_is_refused(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "fine.png")
    (tmp_path / "b" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(
        ProfileError,
        match=r"^fewer than two classes in '.*' have images that "
        r"can be read \(1 unreadable files, e\.g\. bad\.jpg\)$",
    ):
        profile_dataset(folder_source(tmp_path))
