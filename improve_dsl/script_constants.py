"""The script's constants block: every value the spec sets, as ``NAME = literal  # why``.

Every hyperparameter of a generated script lives here, grouped by the spec block that sets
it, so the code below the block names values and never restates them: the training recipe,
the data, the architecture's parameters (or each layer's, for a ``layers`` list) and each
augment and TTA op's. A comment says what a value means, never only what its name already
says.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from . import registry
from .code_literals import LINE_LENGTH, call_text, identifier, literal
from .ir import Op, Spec
from .registry import ParamValue


@dataclass(frozen=True)
class Constant:
    """A module-level hyperparameter: ``NAME = literal  # comment`` (no comment when empty)."""

    name: str
    value: ParamValue
    comment: str = ""

    @property
    def inline(self) -> bool:
        """Whether the comment fits after the value on one line."""
        line = f"{self.name} = {literal(self.value)}  # {self.comment}"
        return len(line) <= LINE_LENGTH


@dataclass(frozen=True)
class ConstantGroup:
    """The constants one spec block sets."""

    block: str
    constants: tuple[Constant, ...]


@dataclass(frozen=True)
class OpCall:
    """A call of an augment or TTA function, each of the op's parameters passed as the
    keyword argument ``param=CONSTANT``."""

    function: str
    arguments: tuple[tuple[str, str], ...]
    mixes_labels: bool = False

    def source(self, target: str, inputs: str, indent: int, tail: str = "") -> str:
        """``target function(inputs, param=CONSTANT, ...)tail``, laid out as black would."""
        keywords = [
            f"{identifier(name)}={identifier(constant)}" for name, constant in self.arguments
        ]
        head = f"{target}{identifier(self.function)}("
        return call_text(head, [inputs, *keywords], indent, tail)


# Constant names that are not simply the parameter's name in capitals.
_CONSTANT_NAMES = {
    ("source", "root"): "DATA_ROOT",
    ("validation", "fraction"): "VALIDATION_FRACTION",
    ("validation", "seed"): "VALIDATION_SEED",
    ("schedule", "every"): "STEP_EVERY",
    ("schedule", "gamma"): "STEP_GAMMA",
    ("ema", "decay"): "EMA_DECAY",
    ("eval", "batch_size"): "EVAL_BATCH_SIZE",
    ("arch", "torchvision.name"): "MODEL_NAME",
    ("arch", "torchvision.pretrained"): "PRETRAINED",
}

# Source constants the script reads even when the spec leaves them unset (None).
_ALWAYS_DEFINED = frozenset({"DATA_ROOT", "MEMORY_BUDGET", "CACHE"})

# "Why" comments where the registry's "what" is not enough.
_WHY = {
    "VALIDATION_SEED": "independent of SEED: a new training seed never moves images between splits",
    "SUBSET": "a stratified sample of the training share; validation stays whole",
    "EVAL_BATCH_SIZE": "no gradients are kept at evaluation, so larger batches fit",
    "LABEL_SMOOTHING": "softened targets: less over-confidence, often better accuracy",
    "EMA_DECAY": "per step, warmed up so short runs are not dominated by the initial weights",
    "PRECISION": "auto: bf16 autocast on CUDA, fp32 on CPU; bf16 also on CPUs with native bf16",
    "COMPILE": "torch.compile the model; auto: only on CUDA runs long enough to repay it",
    "MEMORY_BUDGET": "GiB of decoded images kept in memory, else streamed (None: half of free)",
    "CACHE": "folder of the decode cache (None: the user's, ~/.cache/improve/folders)",
    "PRETRAINED": "ImageNet weights from the torch hub cache, or downloaded into it once",
}

# Words a comment may add to its constant's name and still only echo it.
_FILLER = frozenset({"a", "an", "the", "of", "s", "training"})


def comment_for(name: str, text: str) -> str:
    """``text`` as the constant's comment, or "" when it only repeats the name
    (``MOMENTUM = 0.9  # momentum``, ``BATCH_SIZE = 256  # training batch size``)."""
    words = set(re.findall(r"[a-z0-9]+", text.lower())) - _FILLER
    return "" if words <= set(name.lower().split("_")) else text


def _constant(name: str, value: ParamValue, text: str) -> Constant:
    return Constant(name, value, comment_for(name, _WHY.get(name, text)))


def _constant_name(category: str, param: str) -> str:
    return _CONSTANT_NAMES.get((category, param), param.upper())


def _docs(category: str, op: Op) -> dict[str, str]:
    comp = registry.component(category, op.name)
    assert comp is not None, f"{category} {op.name} is not in the registry"
    return {p.name: p.doc for p in comp.params}


def _named_constants(category: str, op: Op, names: Mapping[str, str]) -> list[Constant]:
    """The op's parameters as constants, each under its name in ``names``."""
    docs = _docs(category, op)
    return [_constant(names[param], value, docs[param]) for param, value in op.params.items()]


def _op_constants(category: str, op: Op) -> list[Constant]:
    return _named_constants(category, op, {p: _constant_name(category, p) for p in op.params})


def _field_constant(block: str, field: str, value: ParamValue) -> Constant:
    spec = registry.block(block).field(field)
    assert spec is not None
    return _constant(_constant_name(block, field), value, spec.doc)


def _compile_constant(value: str) -> Constant:
    """``COMPILE``: True or False as the spec says, or "auto" (the script decides)."""
    constant = _field_constant("train", "compile", value)
    flag = {"true": True, "false": False}.get(value)
    return constant if flag is None else dataclasses.replace(constant, value=flag)


def graph_blocker(spec: Spec) -> str | None:
    """Why one CUDA graph cannot replay the spec's training step, or None when it can."""
    if spec.train.precision == "fp16":
        return "fp16 loss scaling reads the gradients' overflow flag on the host"
    for op in spec.augment.ops:
        comp = registry.component("augment", op.name)
        if comp is not None and comp.graph_blocker is not None:
            return comp.graph_blocker
    return None


def _graph_constant(spec: Spec) -> Constant:
    blocker = graph_blocker(spec)
    why = blocker or "on CUDA the step runs as one captured graph (--cuda-graph off: eager)"
    return Constant("CUDA_GRAPH", blocker is None, why)


# ---------------------------------------------------------------- ops named by their constants


def arch_constant_names(arch: Op) -> dict[str, str]:
    """Each of the architecture's parameters -> its constant (``RESNET_DEPTH``)."""
    return {
        param: _CONSTANT_NAMES.get(("arch", f"{arch.name}.{param}"), f"{arch.name}_{param}".upper())
        for param in arch.params
    }


def layer_constant_names(layers: tuple[Op, ...]) -> tuple[dict[str, str], ...]:
    """For each layer of a ``layers`` list, its parameters -> their constants, numbered by
    kind in the list's order: ``CONV_1_OUT``, ``CONV_2_OUT``, ``LINEAR_1_OUT``."""
    seen: Counter[str] = Counter()
    names = []
    for op in layers:
        seen[op.name] += 1
        names.append({param: f"{op.name}_{seen[op.name]}_{param}".upper() for param in op.params})
    return tuple(names)


def op_calls(category: str, ops: tuple[Op, ...], prefix: str = "") -> tuple[OpCall, ...]:
    """The calls of the spec's augment (or TTA) ops, in order, each parameter passed as its
    constant: ``RANDOM_CROP_PADDING``, then ``RANDOM_CROP_2_PADDING`` for a second crop."""
    seen: Counter[str] = Counter()
    calls = []
    for op in ops:
        seen[op.name] += 1
        stem = f"{prefix}{op.name}" + (f"_{seen[op.name]}" if seen[op.name] > 1 else "")
        comp = registry.component(category, op.name)
        calls.append(
            OpCall(
                prefix + op.name,
                tuple((param, f"{stem}_{param}".upper()) for param in op.params),
                comp is not None and comp.mixes_labels,
            )
        )
    return tuple(calls)


def _calls_constants(category: str, ops: tuple[Op, ...], prefix: str = "") -> list[Constant]:
    constants = []
    for op, call in zip(ops, op_calls(category, ops, prefix), strict=True):
        constants += _named_constants(category, op, dict(call.arguments))
    return constants


def _model_constants(spec: Spec) -> list[Constant]:
    model = spec.model
    constants = []
    if model.arch is not None:
        constants += _named_constants("arch", model.arch, arch_constant_names(model.arch))
    for layer, names in zip(model.layers, layer_constant_names(model.layers), strict=True):
        constants += _named_constants("layer", layer, names)
    if model.dropout > 0:  # otherwise the script has no dropout before the classifier
        constants.append(_field_constant("model", "dropout", model.dropout))
    return constants


# ---------------------------------------------------------------- the block


def constants(spec: Spec) -> tuple[ConstantGroup, ...]:
    """The constants block, one group per spec block that sets a value."""
    train = spec.train
    groups = [
        ConstantGroup(
            "pipeline",
            (
                Constant("PIPELINE", spec.pipeline.name, "the spec's pipeline name"),
                Constant("SPEC_SHA256", spec.sha256, "the spec this script was compiled from"),
                _field_constant("pipeline", "metric", spec.pipeline.metric),
                _field_constant("pipeline", "seed", spec.pipeline.seed),
            ),
        ),
        ConstantGroup(
            "data",
            (
                *(
                    c
                    for c in _op_constants("source", spec.data.source)
                    if c.value is not None or c.name in _ALWAYS_DEFINED
                ),
                *_op_constants("validation", spec.data.validation),
                _field_constant("data", "batch_size", spec.data.batch_size),
            ),
        ),
        ConstantGroup("augment", tuple(_calls_constants("augment", spec.augment.ops))),
        ConstantGroup("model", tuple(_model_constants(spec))),
    ]
    optional: list[Constant] = []
    if train.ema is not None:
        optional += _op_constants("ema", train.ema)
    if train.clip_grad_norm is not None:
        optional.append(_field_constant("train", "clip_grad_norm", train.clip_grad_norm))
    if train.early_stopping is not None:
        optional.append(_field_constant("train", "early_stopping", train.early_stopping))
    groups.append(
        ConstantGroup(
            "train",
            (
                _field_constant("train", "epochs", train.epochs),
                *_op_constants("optimizer", train.optimizer),
                *_op_constants("schedule", train.schedule),
                *_op_constants("loss", train.loss),
                _field_constant("train", "precision", train.precision),
                _compile_constant(train.compile),
                _graph_constant(spec),
                *optional,
            ),
        )
    )
    groups.append(
        ConstantGroup(
            "eval",
            (
                _field_constant("eval", "batch_size", spec.eval.batch_size),
                *_calls_constants("tta", spec.eval.tta, prefix="tta_"),
            ),
        )
    )
    groups = [g for g in groups if g.constants]
    names = [c.name for g in groups for c in g.constants]
    assert len(names) == len(set(names)), f"constant names collide: {names}"
    return tuple(groups)
