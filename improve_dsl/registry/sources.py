"""Data sources and validation splits, with what is known about each built-in dataset."""

from __future__ import annotations

from .schema import Component, DatasetFacts
from .schema import param as _p

_DIGIT_NAMES = tuple(str(d) for d in range(10))
_FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_CIFAR10_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_CIFAR100_WORDS = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach "
    "couch crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster "
    "house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree "
    "motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear "
    "pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
    "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel "
    "streetcar sunflower sweet_pepper table tank telephone television tiger tractor train "
    "trout tulip turtle wardrobe whale willow_tree wolf woman worm"
)
_CIFAR100_NAMES = tuple(_CIFAR100_WORDS.split())

# Digits and house numbers change meaning (or stop being digits) when mirrored; clothes and
# CIFAR's objects do not (flip augmentation is standard for both).
DIGITS = DatasetFacts(
    channels=1,
    image_size=8,
    class_names=_DIGIT_NAMES,
    # 1,797 images; the script holds out a seeded, stratified 20% as the test split.
    train_count=1438,
    test_count=359,
    train_class_counts=(178, 182, 177, 183, 181, 182, 181, 179, 174, 180),
    flips_safe=False,
)
MNIST = DatasetFacts(
    1,
    28,
    _DIGIT_NAMES,
    60000,
    10000,
    (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    flips_safe=False,
)
FASHION_MNIST = DatasetFacts(
    1,
    28,
    _FASHION_NAMES,
    60000,
    10000,
    (6000,) * 10,
    flips_safe=True,
    # Debian's dataset-fashion-mnist package (IDX files, gzipped).
    system_folders=("/usr/share/datasets/fashion-mnist",),
)
CIFAR10 = DatasetFacts(3, 32, _CIFAR10_NAMES, 50000, 10000, (5000,) * 10, flips_safe=True)
CIFAR100 = DatasetFacts(3, 32, _CIFAR100_NAMES, 50000, 10000, (500,) * 100, flips_safe=True)
# SVHN's train split (extra is not used); torchvision maps the digit 0 (label 10) to 0.
SVHN = DatasetFacts(
    3,
    32,
    _DIGIT_NAMES,
    73257,
    26032,
    (4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659),
    flips_safe=False,
)

_SUBSET = _p(
    "subset",
    "int",
    None,
    "use only this many training images (stratified)",
    minimum=10,
    optional=True,
)
_ROOT = _p(
    "root",
    "str",
    None,
    "the dataset's folder, relative to the spec's (default: $IMPROVE_DATA or the system location)",
    optional=True,
)
_DOWNLOAD = _p("download", "bool", False, "download the dataset with torchvision when missing")

SOURCES = (
    Component(
        "digits",
        "source",
        "scikit-learn's bundled handwritten digits; the test split is a fixed seeded 20% of them",
        (_SUBSET,),
        dataset=DIGITS,
    ),
    Component(
        "fashion_mnist",
        "source",
        "Fashion-MNIST (Zalando's clothing images); IDX files from root=, $IMPROVE_DATA, "
        "Debian's dataset-fashion-mnist or a torchvision download",
        (_ROOT, _SUBSET, _DOWNLOAD),
        dataset=FASHION_MNIST,
    ),
    Component(
        "mnist",
        "source",
        "MNIST handwritten digits",
        (_ROOT, _SUBSET, _DOWNLOAD),
        dataset=MNIST,
    ),
    Component(
        "cifar10",
        "source",
        "CIFAR-10 small colour photos",
        (_ROOT, _SUBSET, _DOWNLOAD),
        dataset=CIFAR10,
    ),
    Component(
        "cifar100",
        "source",
        "CIFAR-100 small colour photos",
        (_ROOT, _SUBSET, _DOWNLOAD),
        dataset=CIFAR100,
    ),
    Component(
        "svhn",
        "source",
        "SVHN street-view house numbers",
        (_ROOT, _SUBSET, _DOWNLOAD),
        dataset=SVHN,
    ),
    Component(
        "image_folder",
        "source",
        "a folder with one sub-folder per class (optionally under "
        "train/ and test/); images of any mode and size are converted and resized",
        (
            _p(
                "root",
                "str",
                None,
                "the dataset folder, relative to the spec's folder",
                required=True,
            ),
            _p(
                "image_size",
                "int",
                32,
                "images are resized to this square size",
                minimum=8,
                maximum=512,
            ),
            _p("channels", "int", 3, "1 for grayscale, 3 for RGB", choices=(1, 3)),
            _p(
                "test_fraction",
                "float",
                0.2,
                "held-out test share when there is no test/ folder",
                minimum=0.05,
                maximum=0.5,
            ),
            _SUBSET,
            _p(
                "memory_budget",
                "float",
                None,
                "GiB of decoded images a run may hold in memory; past it, batches stream from "
                "the decode cache (default: half the memory available, and of a GPU's free "
                "memory)",
                minimum=0.0,
                optional=True,
            ),
            _p(
                "cache",
                "str",
                None,
                "folder of the decode cache (default: $XDG_CACHE_HOME/improve/folders, "
                "else ~/.cache/improve/folders)",
                optional=True,
            ),
        ),
    ),
)

VALIDATIONS = (
    Component(
        "holdout",
        "validation",
        "a seeded, stratified share of the training split kept for validation",
        (
            _p(
                "fraction",
                "float",
                0.1,
                "share of the training images held out",
                minimum=0.01,
                maximum=0.5,
            ),
            _p("seed", "int", 0, "seed of the split (independent of the training seed)", minimum=0),
        ),
    ),
)


# The built-in datasets, by name (every source but image_folder).
BUILTIN_DATASETS = tuple(c.name for c in SOURCES if c.dataset is not None)


def dataset_facts(source: str) -> DatasetFacts | None:
    """The built-in dataset's facts; None for ``image_folder`` (or an unknown name)."""
    return next((c.dataset for c in SOURCES if c.name == source), None)


def flips_safe(source: str) -> bool:
    """Whether a left-right mirror keeps an image's class. Unknown for a user's folder: taken
    as safe, as for most photos (``improve init`` says to drop the flip for text or digits)."""
    facts = dataset_facts(source)
    return facts.flips_safe if facts is not None else True
