"""The component registry: every block, field and callable of the language, and every fact
about them (dataset shapes and sizes, which ops mix labels, how layers change shape).

One source for validation, ``improve docs``, the block reference shown to an LLM, the
per-block LLM grammar, the heuristic expert's moves, ``improve init`` and the template each
entry renders through. Names and defaults follow torchvision and PyTorch where those exist.
"""

from .blocks import (
    BLOCK_NAMES,
    BLOCKS,
    COMPONENTS,
    REFINABLE_BLOCKS,
    block,
    component,
    components,
    locked_fields,
)
from .ops import ARCHS, AUGMENTS, EMAS, LAYERS, LOSSES, OPTIMIZERS, SCHEDULES, TTAS
from .schema import (
    BlockSpec,
    Choices,
    Component,
    DatasetFacts,
    FieldKind,
    FieldSpec,
    LayerOutput,
    Param,
    ParamKind,
    ParamValue,
)
from .sources import BUILTIN_DATASETS, SOURCES, VALIDATIONS, dataset_facts, flips_safe

__all__ = [
    "ARCHS",
    "AUGMENTS",
    "BLOCKS",
    "BLOCK_NAMES",
    "BUILTIN_DATASETS",
    "COMPONENTS",
    "EMAS",
    "LAYERS",
    "LOSSES",
    "OPTIMIZERS",
    "REFINABLE_BLOCKS",
    "SCHEDULES",
    "SOURCES",
    "TTAS",
    "VALIDATIONS",
    "BlockSpec",
    "Choices",
    "Component",
    "DatasetFacts",
    "FieldKind",
    "FieldSpec",
    "LayerOutput",
    "Param",
    "ParamKind",
    "ParamValue",
    "block",
    "component",
    "components",
    "dataset_facts",
    "flips_safe",
    "locked_fields",
]
