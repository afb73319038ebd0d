"""The shapes of registry entries: parameters, components, fields, blocks, dataset facts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

ParamValue = Union[int, float, bool, str, tuple[int, ...], None]
ParamKind = Literal["int", "float", "bool", "str", "enum", "int_list"]
FieldKind = Literal["int", "float", "bool", "enum", "call", "call_list"]
# The allowed values of an int (ints) or enum (names) parameter; empty when any value in range.
Choices = Union[tuple[int, ...], tuple[str, ...]]
# What a layer of a ``layers = [...]`` list outputs: images (conv, pooling, batch norm),
# vectors (flatten, linear), or the same kind as its input (activations, dropout).
LayerOutput = Literal["image", "vector", "same"]


@dataclass(frozen=True)
class Param:
    """A parameter of a callable, e.g. ``lr`` of ``sgd(...)``."""

    name: str
    kind: ParamKind
    default: ParamValue
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    choices: Choices = ()
    required: bool = False
    optional: bool = False  # ``none`` is accepted and means "not set"


@dataclass(frozen=True)
class DatasetFacts:
    """What is known about a built-in dataset without loading a pixel.

    ``train_count`` and ``test_count`` are the split sizes the generated script trains and
    tests on (the validation share is later drawn from the training split);
    ``train_class_counts`` are training images per class as stored (for ``digits``: before
    the test share is held out).
    """

    channels: int
    image_size: int  # square images
    class_names: tuple[str, ...]
    train_count: int
    test_count: int
    train_class_counts: tuple[int, ...]
    flips_safe: bool  # a left-right mirrored image is still an image of the same class
    system_folders: tuple[str, ...] = ()  # where a system package installs the files

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Component:
    """A callable: a data source, an augmentation op, an architecture, an optimizer..."""

    name: str
    category: str
    doc: str
    params: tuple[Param, ...] = ()
    dataset: DatasetFacts | None = None  # data sources: the built-in dataset's facts
    mixes_labels: bool = False  # augment ops: the op blends labels (targets become soft rows)
    # Augment ops: why a CUDA graph cannot hold the op (it draws on the host, which a graph
    # would replay unchanged, or reads the device back, which capture refuses); None: it can.
    graph_blocker: str | None = None
    output: LayerOutput = "image"  # layers: what the layer outputs

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
    choices: Choices = ()
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


def param(name: str, kind: ParamKind, default: ParamValue, doc: str, **kw: object) -> Param:
    """A ``Param`` written compactly in the tables."""
    return Param(name, kind, default, doc, **kw)  # type: ignore[arg-type]
