"""The component registry: every block, field and callable of the language.

One source for validation, ``improve docs``, the block reference shown to an LLM, the
per-block LLM grammar, the heuristic expert's moves and the template each entry renders
through. Names and defaults follow torchvision and PyTorch where those exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

ParamValue = Union[int, float, bool, str, tuple[int, ...], None]
ParamKind = Literal["int", "float", "bool", "str", "enum", "int_list"]
FieldKind = Literal["int", "float", "bool", "enum", "call", "call_list"]


@dataclass(frozen=True)
class Param:
    """A parameter of a callable, e.g. ``lr`` of ``sgd(...)``."""

    name: str
    kind: ParamKind
    default: ParamValue
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    required: bool = False
    optional: bool = False  # ``none`` is accepted and means "not set"


@dataclass(frozen=True)
class Component:
    """A callable: a data source, an augmentation op, an architecture, an optimizer..."""

    name: str
    category: str
    doc: str
    params: tuple[Param, ...] = ()
    channels: tuple[int, ...] = (1, 3)  # input channel counts it works with

    @property
    def template(self) -> str:
        """The template fragment this component renders through."""
        return f"{self.category}/{self.name}.py.jinja"

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


@dataclass(frozen=True)
class FieldSpec:
    """A field of a block, e.g. ``optimizer`` of ``train``."""

    name: str
    kind: FieldKind
    doc: str
    default: ParamValue | str = None
    category: str | None = None  # for call and call_list fields: which components
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    locked: bool = False  # the user's alone: refinement never changes it
    required: bool = False
    optional: bool = False


@dataclass(frozen=True)
class BlockSpec:
    """A block of a spec."""

    name: str
    doc: str
    fields: tuple[FieldSpec, ...]
    labelled: bool = False  # ``pipeline NAME { ... }``
    refinable: bool = True
    required: bool = False

    @property
    def template(self) -> str:
        return f"blocks/{self.name}.py.jinja"

    def field(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)

    @property
    def editable_fields(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if not f.locked)


def _p(name: str, kind: ParamKind, default: ParamValue, doc: str, **kw: object) -> Param:
    return Param(name, kind, default, doc, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- Data sources

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
    "folder holding the dataset files (default: $IMPROVE_DATA or the usual system location)",
    optional=True,
)
_DOWNLOAD = _p("download", "bool", False, "download the dataset with torchvision when missing")

SOURCES = (
    Component(
        "digits",
        "source",
        "scikit-learn's bundled 8x8 handwritten digits (1,797 images, "
        "10 classes); the test split is a fixed seeded 20% of it",
        (_SUBSET,),
        (1,),
    ),
    Component(
        "fashion_mnist",
        "source",
        "Fashion-MNIST, 28x28 grayscale, 10 classes (60k train, "
        "10k test); IDX files from Debian's dataset-fashion-mnist, root=, $IMPROVE_DATA or "
        "a torchvision download",
        (_ROOT, _SUBSET, _DOWNLOAD),
        (1,),
    ),
    Component(
        "mnist",
        "source",
        "MNIST handwritten digits, 28x28 grayscale, 10 classes",
        (_ROOT, _SUBSET, _DOWNLOAD),
        (1,),
    ),
    Component(
        "cifar10",
        "source",
        "CIFAR-10, 32x32 colour, 10 classes (50k train, 10k test)",
        (_ROOT, _SUBSET, _DOWNLOAD),
        (3,),
    ),
    Component(
        "cifar100",
        "source",
        "CIFAR-100, 32x32 colour, 100 classes",
        (_ROOT, _SUBSET, _DOWNLOAD),
        (3,),
    ),
    Component(
        "svhn",
        "source",
        "SVHN street-view house numbers, 32x32 colour, 10 classes",
        (_ROOT, _SUBSET, _DOWNLOAD),
        (3,),
    ),
    Component(
        "image_folder",
        "source",
        "a folder with one sub-folder per class (optionally under "
        "train/ and test/); images of any mode and size are converted and resized",
        (
            _p("root", "str", None, "the dataset folder", required=True),
            _p(
                "image_size",
                "int",
                32,
                "images are resized to this square size",
                minimum=8,
                maximum=512,
            ),
            _p("channels", "int", 3, "1 for grayscale, 3 for RGB", choices=("1", "3")),
            _p(
                "test_fraction",
                "float",
                0.2,
                "held-out test share when there is no test/ folder",
                minimum=0.05,
                maximum=0.5,
            ),
            _SUBSET,
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

# ---------------------------------------------------------------- Augmentation

_PROB = {"minimum": 0.0, "maximum": 1.0}
AUGMENTS = (
    Component(
        "random_crop",
        "augment",
        "pad by `padding` pixels (reflect) and crop back at a random offset",
        (_p("padding", "int", 4, "pixels of padding", minimum=1, maximum=16),),
    ),
    Component(
        "translate",
        "augment",
        "shift by up to `pixels` in each direction, zero-filled",
        (_p("pixels", "int", 2, "largest shift", minimum=1, maximum=16),),
    ),
    Component(
        "horizontal_flip",
        "augment",
        "mirror left-right with probability p",
        (_p("p", "float", 0.5, "probability", **_PROB),),
    ),
    Component(
        "vertical_flip",
        "augment",
        "mirror top-bottom with probability p",
        (_p("p", "float", 0.5, "probability", **_PROB),),
    ),
    Component(
        "rotation",
        "augment",
        "rotate by a random angle in [-degrees, degrees]",
        (_p("degrees", "float", 15.0, "largest angle", minimum=0.0, maximum=180.0),),
    ),
    Component(
        "random_erasing",
        "augment",
        "erase a random rectangle (torchvision RandomErasing)",
        (
            _p("p", "float", 0.5, "probability", **_PROB),
            _p("scale_min", "float", 0.02, "smallest erased share", minimum=0.0, maximum=1.0),
            _p("scale_max", "float", 0.33, "largest erased share", minimum=0.0, maximum=1.0),
        ),
    ),
    Component(
        "cutout",
        "augment",
        "zero a random size x size square",
        (_p("size", "int", 8, "side of the square in pixels", minimum=1, maximum=256),),
    ),
    Component(
        "color_jitter",
        "augment",
        "random brightness, contrast and saturation",
        (
            _p("brightness", "float", 0.2, "strength", minimum=0.0, maximum=1.0),
            _p("contrast", "float", 0.2, "strength", minimum=0.0, maximum=1.0),
            _p(
                "saturation",
                "float",
                0.2,
                "strength (colour images only)",
                minimum=0.0,
                maximum=1.0,
            ),
        ),
    ),
    Component(
        "mixup",
        "augment",
        "blend pairs of images and their labels (Zhang et al.)",
        (_p("alpha", "float", 0.2, "Beta(alpha, alpha) mixing", minimum=0.01, maximum=10.0),),
    ),
    Component(
        "cutmix",
        "augment",
        "paste a patch of another image, mixing labels by area",
        (_p("alpha", "float", 1.0, "Beta(alpha, alpha) area", minimum=0.01, maximum=10.0),),
    ),
    Component(
        "rand_augment",
        "augment",
        "RandAugment: num_ops random ops at a fixed magnitude",
        (
            _p("num_ops", "int", 2, "ops per image", minimum=1, maximum=5),
            _p("magnitude", "int", 9, "strength out of 30", minimum=0, maximum=30),
        ),
    ),
    Component("trivial_augment", "augment", "TrivialAugment: one random op at a random magnitude"),
)

# ---------------------------------------------------------------- Models

ARCHS = (
    Component(
        "mlp",
        "arch",
        "a multi-layer perceptron on the flattened image",
        (
            _p("width", "int", 256, "hidden units per layer", minimum=8, maximum=8192),
            _p("depth", "int", 2, "hidden layers", minimum=1, maximum=8),
        ),
    ),
    Component(
        "cnn",
        "arch",
        "a plain CNN: per stage, convs with batch norm and ReLU, then 2x2 "
        "max pooling; global average pooling and a linear classifier",
        (
            _p("channels", "int_list", (32, 64), "output channels of each stage"),
            _p("convs_per_stage", "int", 1, "conv layers per stage", minimum=1, maximum=4),
            _p("kernel_size", "int", 3, "conv kernel size", choices=("3", "5")),
            _p("batch_norm", "bool", True, "batch norm after each conv"),
        ),
    ),
    Component(
        "resnet",
        "arch",
        "CIFAR-style ResNet (He et al.): depth 6n+2, three stages of width, 2x width, 4x width",
        (
            _p("depth", "int", 8, "total depth", choices=("8", "14", "20", "32", "44", "56")),
            _p("width", "int", 16, "channels of the first stage", minimum=4, maximum=256),
        ),
    ),
    Component(
        "preact_resnet",
        "arch",
        "pre-activation ResNet-18/34 sized for small images",
        (
            _p("depth", "int", 18, "18 or 34", choices=("18", "34")),
            _p("width", "int", 64, "channels of the first stage", minimum=4, maximum=256),
        ),
    ),
    Component(
        "wide_resnet",
        "arch",
        "Wide ResNet (Zagoruyko & Komodakis): depth 6n+4",
        (
            _p("depth", "int", 16, "total depth", choices=("10", "16", "22", "28")),
            _p("widen", "int", 4, "width multiplier", minimum=1, maximum=12),
            _p("dropout", "float", 0.0, "dropout inside blocks", minimum=0.0, maximum=0.9),
        ),
    ),
    Component(
        "airbench",
        "arch",
        "airbench-style fast net: conv stem, three conv-pool-BN-GELU "
        "blocks of width, 4x, 4x channels",
        (_p("width", "int", 64, "channels of the first block", minimum=8, maximum=256),),
    ),
    Component(
        "torchvision",
        "arch",
        "a torchvision zoo model, first conv and classifier adapted to the data",
        (
            _p(
                "name",
                "enum",
                "resnet18",
                "the model",
                choices=(
                    "resnet18",
                    "resnet34",
                    "resnet50",
                    "mobilenet_v3_small",
                    "efficientnet_b0",
                    "convnext_tiny",
                    "regnet_y_400mf",
                ),
            ),
            _p(
                "pretrained",
                "bool",
                False,
                "start from ImageNet weights (needs them cached or a network)",
            ),
        ),
    ),
)

LAYERS = (
    Component(
        "conv",
        "layer",
        "2-d convolution (same padding)",
        (
            _p("out", "int", 32, "output channels", minimum=1, maximum=4096),
            _p("kernel", "int", 3, "kernel size", minimum=1, maximum=11),
            _p("stride", "int", 1, "stride", minimum=1, maximum=4),
        ),
    ),
    Component("batch_norm", "layer", "batch normalisation"),
    Component("relu", "layer", "ReLU"),
    Component("gelu", "layer", "GELU"),
    Component(
        "max_pool",
        "layer",
        "max pooling",
        (_p("size", "int", 2, "window and stride", minimum=2, maximum=8),),
    ),
    Component(
        "avg_pool",
        "layer",
        "average pooling",
        (_p("size", "int", 2, "window and stride", minimum=2, maximum=8),),
    ),
    Component("global_avg_pool", "layer", "average over all positions"),
    Component("flatten", "layer", "flatten to a vector"),
    Component(
        "dropout",
        "layer",
        "dropout",
        (_p("p", "float", 0.5, "drop probability", minimum=0.0, maximum=0.95),),
    ),
    Component(
        "linear",
        "layer",
        "fully connected layer",
        (_p("out", "int", 128, "output units", minimum=1, maximum=65536),),
    ),
)

# ---------------------------------------------------------------- Training

OPTIMIZERS = (
    Component(
        "sgd",
        "optimizer",
        "stochastic gradient descent (torch.optim.SGD)",
        (
            _p("lr", "float", 0.1, "learning rate", minimum=1e-6, maximum=10.0),
            _p("momentum", "float", 0.9, "momentum", minimum=0.0, maximum=0.999),
            _p("nesterov", "bool", True, "Nesterov momentum"),
            _p("weight_decay", "float", 5e-4, "L2 penalty", minimum=0.0, maximum=0.1),
        ),
    ),
    Component(
        "adamw",
        "optimizer",
        "Adam with decoupled weight decay (torch.optim.AdamW)",
        (
            _p("lr", "float", 1e-3, "learning rate", minimum=1e-6, maximum=1.0),
            _p("weight_decay", "float", 0.01, "decoupled weight decay", minimum=0.0, maximum=1.0),
            _p("beta1", "float", 0.9, "first-moment decay", minimum=0.0, maximum=0.999),
            _p("beta2", "float", 0.999, "second-moment decay", minimum=0.0, maximum=0.9999),
        ),
    ),
    Component(
        "adam",
        "optimizer",
        "Adam (torch.optim.Adam)",
        (
            _p("lr", "float", 1e-3, "learning rate", minimum=1e-6, maximum=1.0),
            _p("weight_decay", "float", 0.0, "L2 penalty", minimum=0.0, maximum=0.1),
        ),
    ),
    Component(
        "rmsprop",
        "optimizer",
        "RMSprop (torch.optim.RMSprop)",
        (
            _p("lr", "float", 1e-3, "learning rate", minimum=1e-6, maximum=1.0),
            _p("momentum", "float", 0.0, "momentum", minimum=0.0, maximum=0.999),
            _p("weight_decay", "float", 0.0, "L2 penalty", minimum=0.0, maximum=0.1),
        ),
    ),
)

SCHEDULES = (
    Component("constant", "schedule", "the same learning rate throughout"),
    Component(
        "one_cycle",
        "schedule",
        "one-cycle: warm up to lr, then anneal (torch OneCycleLR)",
        (_p("warmup", "float", 0.3, "share of steps spent warming up", minimum=0.0, maximum=0.9),),
    ),
    Component(
        "cosine",
        "schedule",
        "linear warm-up, then cosine decay to min_lr_ratio x lr",
        (
            _p("warmup", "float", 0.0, "share of steps spent warming up", minimum=0.0, maximum=0.9),
            _p("min_lr_ratio", "float", 0.0, "final lr as a share of lr", minimum=0.0, maximum=1.0),
        ),
    ),
    Component(
        "linear",
        "schedule",
        "linear warm-up, then linear decay to zero (airbench)",
        (_p("warmup", "float", 0.1, "share of steps spent warming up", minimum=0.0, maximum=0.9),),
    ),
    Component(
        "step",
        "schedule",
        "multiply lr by gamma every `every` epochs (StepLR)",
        (
            _p("every", "int", 10, "epochs between drops", minimum=1, maximum=1000),
            _p("gamma", "float", 0.1, "factor", minimum=0.0, maximum=1.0),
        ),
    ),
)

LOSSES = (
    Component(
        "cross_entropy",
        "loss",
        "cross-entropy with optional label smoothing",
        (_p("label_smoothing", "float", 0.0, "label smoothing", minimum=0.0, maximum=0.5),),
    ),
)

EMAS = (
    Component(
        "ema",
        "ema",
        "evaluate an exponential moving average of the weights",
        (_p("decay", "float", 0.999, "decay per step", minimum=0.5, maximum=0.99999),),
    ),
)

TTAS = (
    Component("horizontal_flip", "tta", "average predictions over the image and its mirror"),
    Component("vertical_flip", "tta", "average over the image and its top-bottom mirror"),
    Component(
        "translate",
        "tta",
        "average over the image shifted by +/- pixels",
        (_p("pixels", "int", 1, "shift", minimum=1, maximum=8),),
    ),
)

COMPONENTS: dict[str, tuple[Component, ...]] = {
    "source": SOURCES,
    "validation": VALIDATIONS,
    "augment": AUGMENTS,
    "arch": ARCHS,
    "layer": LAYERS,
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "loss": LOSSES,
    "ema": EMAS,
    "tta": TTAS,
}

# ---------------------------------------------------------------- Blocks

BLOCKS = (
    BlockSpec(
        "pipeline",
        "names the pipeline and the metric refinement maximises",
        (
            FieldSpec(
                "metric",
                "enum",
                "the score maximised on the validation split",
                "accuracy",
                choices=("accuracy", "balanced_accuracy"),
                locked=True,
            ),
            FieldSpec(
                "seed",
                "int",
                "seed of initialisation and data order",
                0,
                minimum=0,
                maximum=2**31 - 1,
            ),
        ),
        labelled=True,
        refinable=False,
        required=True,
    ),
    BlockSpec(
        "data",
        "where the images come from, the validation split and the batch size",
        (
            FieldSpec(
                "source", "call", "the dataset", category="source", locked=True, required=True
            ),
            FieldSpec(
                "validation",
                "call",
                "how the validation split is drawn",
                "holdout",
                category="validation",
                locked=True,
            ),
            FieldSpec("batch_size", "int", "training batch size", 128, minimum=1, maximum=8192),
        ),
        required=True,
    ),
    BlockSpec(
        "augment",
        "augmentations applied to whole training batches on the device, in order",
        (FieldSpec("ops", "call_list", "augmentation ops", (), category="augment"),),
    ),
    BlockSpec(
        "model",
        "the network; input channels and class count are inferred from the data",
        (
            FieldSpec("arch", "call", "a named architecture", category="arch", optional=True),
            FieldSpec(
                "layers",
                "call_list",
                "a free-form layer list (instead of arch); a linear classifier is appended",
                (),
                category="layer",
            ),
            FieldSpec(
                "dropout", "float", "dropout before the classifier", 0.0, minimum=0.0, maximum=0.9
            ),
        ),
        required=True,
    ),
    BlockSpec(
        "train",
        "the training procedure",
        (
            FieldSpec(
                "epochs", "int", "passes over the training split", 10, minimum=1, maximum=1000
            ),
            FieldSpec("optimizer", "call", "the optimizer", "sgd", category="optimizer"),
            FieldSpec(
                "schedule", "call", "the learning-rate schedule", "constant", category="schedule"
            ),
            FieldSpec("loss", "call", "the training loss", "cross_entropy", category="loss"),
            FieldSpec(
                "precision",
                "enum",
                "auto: bf16 autocast on CUDA, fp32 on CPU; bf16 also on CPUs with native bf16",
                "auto",
                choices=("auto", "fp32", "bf16", "fp16"),
            ),
            FieldSpec("compile", "bool", "torch.compile the model", False),
            FieldSpec(
                "ema",
                "call",
                "weight averaging for evaluation",
                None,
                category="ema",
                optional=True,
            ),
            FieldSpec(
                "clip_grad_norm",
                "float",
                "clip the gradient norm to this value",
                None,
                minimum=0.0,
                maximum=1000.0,
                optional=True,
            ),
            FieldSpec(
                "early_stopping",
                "int",
                "stop after this many epochs without a better validation score",
                None,
                minimum=1,
                maximum=1000,
                optional=True,
            ),
        ),
    ),
    BlockSpec(
        "eval",
        "evaluation: test-time augmentation and batch size",
        (
            FieldSpec(
                "tta",
                "call_list",
                "test-time augmentations averaged with the plain view",
                (),
                category="tta",
            ),
            FieldSpec("batch_size", "int", "evaluation batch size", 512, minimum=1, maximum=65536),
        ),
    ),
)

BLOCK_NAMES = tuple(b.name for b in BLOCKS)
REFINABLE_BLOCKS = tuple(b.name for b in BLOCKS if b.refinable)


def block(name: str) -> BlockSpec:
    """The block called ``name`` (KeyError when unknown)."""
    for spec in BLOCKS:
        if spec.name == name:
            return spec
    raise KeyError(name)


def components(category: str) -> tuple[Component, ...]:
    return COMPONENTS[category]


def component(category: str, name: str) -> Component | None:
    return next((c for c in COMPONENTS[category] if c.name == name), None)


def locked_fields() -> tuple[tuple[str, str], ...]:
    """(block, field) pairs that no expert may change."""
    return tuple((b.name, f.name) for b in BLOCKS for f in b.fields if f.locked)
