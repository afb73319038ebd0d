"""The blocks of a spec and their fields; lookups over every registry table."""

from __future__ import annotations

from .ops import ARCHS, AUGMENTS, EMAS, LAYERS, LOSSES, OPTIMIZERS, SCHEDULES, TTAS
from .schema import BlockSpec, Component, FieldSpec
from .sources import SOURCES, VALIDATIONS

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
            FieldSpec(
                "compile",
                "enum",
                "torch.compile the model: true, false, or auto (only where a run repays it)",
                "auto",
                choices=("auto", "true", "false"),
            ),
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
