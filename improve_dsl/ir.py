"""The typed, frozen IR of a spec: what validation produces and the templates render."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .registry import ParamValue


@dataclass(frozen=True)
class Op:
    """A resolved call: every parameter present, defaults filled, in registry order."""

    name: str
    params: Mapping[str, ParamValue]

    @classmethod
    def of(cls, name: str, params: Mapping[str, ParamValue]) -> Op:
        return cls(name, MappingProxyType(dict(params)))

    def __getitem__(self, key: str) -> ParamValue:
        return self.params[key]

    def number(self, key: str) -> float:
        value = self.params[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value)

    def integer(self, key: str) -> int:
        value = self.params[key]
        assert isinstance(value, int) and not isinstance(value, bool)
        return value


@dataclass(frozen=True)
class PipelineBlock:
    name: str
    metric: str
    seed: int


@dataclass(frozen=True)
class DataBlock:
    source: Op
    validation: Op
    batch_size: int


@dataclass(frozen=True)
class AugmentBlock:
    ops: tuple[Op, ...]


@dataclass(frozen=True)
class ModelBlock:
    arch: Op | None
    layers: tuple[Op, ...]
    dropout: float


@dataclass(frozen=True)
class TrainBlock:
    epochs: int
    optimizer: Op
    schedule: Op
    loss: Op
    precision: str
    compile: str  # auto, true or false
    ema: Op | None
    clip_grad_norm: float | None
    early_stopping: int | None


@dataclass(frozen=True)
class EvalBlock:
    tta: tuple[Op, ...]
    batch_size: int


@dataclass(frozen=True)
class Spec:
    """A valid pipeline."""

    path: str
    sha256: str
    pipeline: PipelineBlock
    data: DataBlock
    augment: AugmentBlock
    model: ModelBlock
    train: TrainBlock
    eval: EvalBlock
