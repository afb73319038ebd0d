"""The heuristic expert: the moves a careful practitioner tries, chosen from the curves.

No network and no randomness beyond a seeded tie-break. For the chosen block it lists the
moves that make sense for this spec and this dataset (no horizontal flips for digits, a
2-pixel translate rather than a 4-pixel crop for 8x8 images, an EMA decay sized to the
number of steps...), ranks them by what the incumbent's curves say (unstable, overfitting,
slow, underfitting, plateau), and proposes the best one it has not seen fail. A move that
was rejected, failed, pruned or came back invalid is never proposed again; a move that was
accepted may be repeated (wider again, longer again) up to a small limit.

The proposal is the block's editable view (locked fields left out) with the move's fields
changed, printed canonically.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .. import fmt, syntax, validate
from ..ir import Op, Spec
from ..registry import ParamValue
from . import edit
from .diagnose import Diagnosis, diagnose
from .expert import Context, NoMoreMoves, Proposal, Selection

FAILED = ("rejected", "invalid", "failed", "pruned", "cached", "pending")

# ---------------------------------------------------------------- what the data allows


@dataclass(frozen=True)
class DataInfo:
    """What the moves need to know about the dataset, read from the spec (no loading)."""

    source: str
    channels: int
    size: int
    classes: int
    train_size: int
    flips_ok: bool  # mirrored images are still images of the same class

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, math.ceil(self.train_size / max(1, batch_size)))


# channels, image size, classes, training images before the validation split
_SOURCES: dict[str, tuple[int, int, int, int]] = {
    "digits": (1, 8, 10, 1437),
    "mnist": (1, 28, 10, 60000),
    "fashion_mnist": (1, 28, 10, 60000),
    "cifar10": (3, 32, 10, 50000),
    "cifar100": (3, 32, 100, 50000),
    "svhn": (3, 32, 10, 73257),
}
# Digits and house numbers change meaning (or become non-digits) when mirrored.
_NO_FLIPS = ("digits", "mnist", "svhn")


def data_info(spec: Spec) -> DataInfo:
    """Channels, size, classes and training-set size of the spec's data source."""
    source = spec.data.source
    channels, size, classes, count = _SOURCES.get(source.name, (3, 32, 10, 5000))
    if source.name == "image_folder":
        channels = int(source.params.get("channels") or 3)  # type: ignore[arg-type]
        size = int(source.params.get("image_size") or 32)  # type: ignore[arg-type]
    fraction = spec.data.validation.params.get("fraction", 0.1)
    count = int(count * (1.0 - float(fraction or 0.1)))  # type: ignore[arg-type]
    subset = source.params.get("subset")
    if isinstance(subset, int):
        count = min(count, subset)
    return DataInfo(source.name, channels, size, classes, count, source.name not in _NO_FLIPS)


# ---------------------------------------------------------------- printing values


def _num(value: float) -> str:
    text = f"{value:.4g}"
    return text if any(c in text for c in ".en") else text + ".0"


def literal(value: ParamValue) -> str:
    """A Python value as .imp text."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    return value  # enum choices are bare names


def call(name: str, params: Mapping[str, ParamValue] | None = None) -> str:
    """``name(key = value, ...)``, leaving out parameters that are not set."""
    args = ", ".join(f"{k} = {literal(v)}" for k, v in (params or {}).items() if v is not None)
    return f"{name}({args})"


def op_text(op: Op, **updates: ParamValue) -> str:
    """An op with some parameters changed, every parameter written out."""
    params = dict(op.params)
    params.update(updates)
    return call(op.name, params)


def ops_text(ops: Sequence[Op]) -> str:
    return "[" + ", ".join(op_text(op) for op in ops) + "]"


# ---------------------------------------------------------------- moves


@dataclass(frozen=True)
class Move:
    """One change to one block: which fields get which new text, and why.

    ``weights`` say how much the move helps against each signal of the diagnosis; a move
    with no weight for any present signal is not proposed.
    """

    id: str
    block: str
    changes: Mapping[str, str | None]  # field → new value text; None removes the field
    rationale: str
    weights: Mapping[str, float] = field(default_factory=dict)
    max_uses: int = 1
    cost: float = 1.0  # training time afterwards, relative to now

    def score(self, diagnosis: Diagnosis) -> float:
        """How much the move should help, less a charge for making every later run slower."""
        gain = sum(
            weight * (1.0 if signal == diagnosis.kind else 0.5)
            for signal, weight in self.weights.items()
            if diagnosis.has(signal)
        )
        return gain - 2.0 * math.log2(self.cost) if gain > 0 else 0.0


MoveMaker = Callable[[Spec, DataInfo], list[Move]]


def _round(value: float) -> float:
    return float(f"{value:.3g}")


def _train_moves(spec: Spec, info: DataInfo) -> list[Move]:
    t = spec.train
    opt = t.optimizer
    lr = opt.number("lr")
    moves: list[Move] = []
    if opt.name == "sgd" and opt.number("momentum") < 0.5:
        moves.append(
            Move(
                "train.momentum",
                "train",
                {"optimizer": op_text(opt, momentum=0.9, nesterov=True)},
                "plain SGD crawls; Nesterov momentum 0.9 speeds convergence about tenfold at the "
                "same learning rate",
                {"slow": 10, "underfitting": 9, "plateau": 6, "unknown": 6},
            )
        )
    if t.epochs < 200:
        epochs = min(t.epochs * 2, t.epochs + 30, 200)
        moves.append(
            Move(
                "train.epochs_up",
                "train",
                {"epochs": str(epochs)},
                f"the model is still learning when training stops; train {epochs} epochs instead "
                f"of {t.epochs}",
                {"slow": 9, "underfitting": 7, "plateau": 3, "unknown": 3},
                max_uses=2,
                cost=epochs / t.epochs,
            )
        )
    top = {"sgd": 1.0, "adamw": 0.01, "adam": 0.01, "rmsprop": 0.01}.get(opt.name, 0.01)
    if opt.name == "sgd" and opt.number("momentum") < 0.5:
        top = 3.0
    if lr * 3 <= top:
        moves.append(
            Move(
                "train.lr_up",
                "train",
                {"optimizer": op_text(opt, lr=_round(lr * 3))},
                f"the loss falls slowly: raise the learning rate 3x ({lr:g} → {_round(lr * 3):g})",
                {"slow": 8, "underfitting": 6, "plateau": 1},
                max_uses=2,
            )
        )
    if t.schedule.name in ("constant", "step"):
        moves.append(
            Move(
                "train.one_cycle",
                "train",
                {"schedule": call("one_cycle", {"warmup": 0.25})},
                "a constant learning rate never anneals; a one-cycle schedule (warm-up, then "
                "annealing) settles into a better minimum",
                {
                    "plateau": 8,
                    "unstable": 5,
                    "slow": 4,
                    "underfitting": 4,
                    "overfitting": 3,
                    "unknown": 4,
                },
            )
        )
        moves.append(
            Move(
                "train.cosine",
                "train",
                {"schedule": call("cosine", {"warmup": 0.1})},
                "anneal the learning rate with a short warm-up and cosine decay",
                {"plateau": 6, "unstable": 3, "slow": 2, "underfitting": 2, "overfitting": 2},
            )
        )
    if opt.name in ("sgd", "rmsprop") or (opt.name == "adam" and opt.number("weight_decay") == 0):
        moves.append(
            Move(
                "train.adamw",
                "train",
                {"optimizer": call("adamw", {"lr": 0.002, "weight_decay": 0.05})},
                "switch to AdamW, which adapts per-parameter step sizes and needs little tuning",
                {"underfitting": 7, "slow": 6, "unstable": 4, "unknown": 3},
            )
        )
    low = {"sgd": 1e-4, "adamw": 1e-5}.get(opt.name, 1e-5)
    if lr / 3 >= low:
        moves.append(
            Move(
                "train.lr_down",
                "train",
                {"optimizer": op_text(opt, lr=_round(lr / 3))},
                f"the training is unstable: lower the learning rate 3x ({lr:g} → "
                f"{_round(lr / 3):g})",
                {"unstable": 10, "overfitting": 1},
            )
        )
    if t.clip_grad_norm is None:
        moves.append(
            Move(
                "train.clip",
                "train",
                {"clip_grad_norm": "1.0"},
                "clip the gradient norm to 1 so single bad batches cannot blow the weights up",
                {"unstable": 8},
            )
        )
    if t.loss.number("label_smoothing") == 0.0:
        moves.append(
            Move(
                "train.label_smoothing",
                "train",
                {"loss": op_text(t.loss, label_smoothing=0.1)},
                "label smoothing 0.1 keeps the network from becoming over-confident",
                {"overfitting": 6, "plateau": 5},
            )
        )
    if opt.name == "sgd" and opt.number("weight_decay") < 5e-4:
        moves.append(
            Move(
                "train.weight_decay",
                "train",
                {"optimizer": op_text(opt, weight_decay=5e-4)},
                "add weight decay 5e-4, the usual L2 penalty for SGD on small images",
                {"overfitting": 7, "plateau": 4},
            )
        )
    elif opt.name == "adamw" and opt.number("weight_decay") < 0.05:
        moves.append(
            Move(
                "train.weight_decay",
                "train",
                {"optimizer": op_text(opt, weight_decay=0.05)},
                "raise AdamW's decoupled weight decay to 0.05",
                {"overfitting": 7, "plateau": 4},
            )
        )
    if t.ema is None:
        steps = t.epochs * info.steps_per_epoch(spec.data.batch_size)
        # Average over roughly the last tenth of training.
        decay = min(0.9999, max(0.9, 1.0 - 10.0 / max(steps, 1)))
        moves.append(
            Move(
                "train.ema",
                "train",
                {"ema": call("ema", {"decay": _round(decay)})},
                f"evaluate an exponential moving average of the weights (decay {_round(decay):g}, "
                f"about the last tenth of {steps} steps), which smooths out the last noisy updates",
                {"plateau": 3, "unstable": 3, "overfitting": 2},
            )
        )
    return moves


def _stages(size: int) -> tuple[int, ...]:
    count = 2 if size <= 12 else 3
    return (32, 64, 128)[:count]


def _model_moves(spec: Spec, info: DataInfo) -> list[Move]:
    m = spec.model
    arch = m.arch
    moves: list[Move] = []
    if arch is None or arch.name == "mlp":
        stages = _stages(info.size)
        text = call(
            "cnn", {"channels": stages, "convs_per_stage": 1, "kernel_size": 3, "batch_norm": True}
        )
        changes: dict[str, str | None] = {"arch": text}
        if arch is None:
            changes["layers"] = None
        moves.append(
            Move(
                "model.cnn",
                "model",
                changes,
                f"a multi-layer perceptron ignores that neighbouring pixels belong together; a "
                f"small CNN ({len(stages)} conv stages with batch norm) is the right inductive "
                "bias for images",
                {"underfitting": 10, "plateau": 8, "slow": 6, "overfitting": 5, "unknown": 6},
            )
        )
    if arch is not None:
        widened: dict[str, ParamValue] | None = None
        if arch.name == "mlp" and arch.integer("width") * 2 <= 1024:
            widened = {"width": arch.integer("width") * 2}
        elif arch.name == "cnn":
            channels = arch.params["channels"]
            assert isinstance(channels, tuple)
            if max(channels) * 2 <= 512:
                widened = {"channels": tuple(c * 2 for c in channels)}
        elif arch.name in ("resnet", "preact_resnet") and arch.integer("width") * 2 <= 128:
            widened = {"width": arch.integer("width") * 2}
        elif arch.name == "wide_resnet" and arch.integer("widen") + 2 <= 12:
            widened = {"widen": arch.integer("widen") + 2}
        elif arch.name == "airbench" and arch.integer("width") * 2 <= 256:
            widened = {"width": arch.integer("width") * 2}
        if widened is not None:
            moves.append(
                Move(
                    "model.widen",
                    "model",
                    {"arch": op_text(arch, **widened)},
                    "the model lacks capacity: double its width",
                    {"underfitting": 8, "plateau": 4},
                    max_uses=2,
                    cost=1.5,
                )
            )
        deeper: dict[str, ParamValue] | None = None
        if arch.name == "mlp" and arch.integer("depth") < 4:
            deeper = {"depth": arch.integer("depth") + 1}
        elif arch.name == "cnn" and arch.integer("convs_per_stage") < 3:
            deeper = {"convs_per_stage": arch.integer("convs_per_stage") + 1}
        elif arch.name == "resnet":
            order = (8, 14, 20, 32, 44, 56)
            depth = arch.integer("depth")
            if depth in order[:-1]:
                deeper = {"depth": order[order.index(depth) + 1]}
        if deeper is not None:
            moves.append(
                Move(
                    "model.deepen",
                    "model",
                    {"arch": op_text(arch, **deeper)},
                    "add depth, so the model can build more abstract features",
                    {"underfitting": 6, "plateau": 3},
                    cost=1.3,
                )
            )
        if arch.name == "cnn" and info.size >= 16:
            channels = arch.params["channels"]
            assert isinstance(channels, tuple)
            width = 32 if max(channels) >= 64 else 16
            moves.append(
                Move(
                    "model.resnet",
                    "model",
                    {"arch": call("resnet", {"depth": 14, "width": width})},
                    "residual connections let a deeper network train well: switch to a CIFAR-style "
                    "ResNet-14",
                    {"plateau": 6, "underfitting": 5},
                    cost=2.0,
                )
            )
        if arch.name == "cnn" and arch.params.get("batch_norm") is False:
            moves.append(
                Move(
                    "model.batch_norm",
                    "model",
                    {"arch": op_text(arch, batch_norm=True)},
                    "batch norm after each conv stabilises and speeds up training",
                    {"unstable": 8, "slow": 6, "underfitting": 5},
                )
            )
    if m.dropout < 0.5:
        dropout = _round(m.dropout + 0.2 if m.dropout == 0 else m.dropout + 0.1)
        moves.append(
            Move(
                "model.dropout",
                "model",
                {"dropout": _num(dropout)},
                f"the model memorises the training set: dropout {dropout:g} before the classifier",
                {"overfitting": 9},
                max_uses=2,
            )
        )
    if m.dropout > 0:
        moves.append(
            Move(
                "model.less_dropout",
                "model",
                {"dropout": "0.0"},
                "the model does not even fit the training data: remove dropout",
                {"underfitting": 5},
            )
        )
    return moves


_STRONG_AUGMENTS = (
    "mixup",
    "cutmix",
    "rand_augment",
    "trivial_augment",
    "cutout",
    "random_erasing",
)


def _augment_moves(spec: Spec, info: DataInfo) -> list[Move]:
    ops = list(spec.augment.ops)
    names = {op.name for op in ops}

    def plus(text: str) -> str:
        return "[" + ", ".join([*(op_text(o) for o in ops), text]) + "]"

    moves: list[Move] = []
    if not names & {"random_crop", "translate"}:
        if info.size <= 16:
            text = call("translate", {"pixels": 1})
            what = "shift images by up to 1 pixel (a crop would lose too much of an 8x8 image)"
        else:
            text = call("random_crop", {"padding": max(2, info.size // 8)})
            what = f"random crops with {max(2, info.size // 8)}-pixel padding"
        moves.append(
            Move(
                "augment.translate",
                "augment",
                {"ops": plus(text)},
                f"{what}: the cheapest augmentation that almost always reduces overfitting",
                {"overfitting": 10, "plateau": 6, "unknown": 2},
            )
        )
    if info.flips_ok and "horizontal_flip" not in names:
        moves.append(
            Move(
                "augment.flip",
                "augment",
                {"ops": plus(call("horizontal_flip", {"p": 0.5}))},
                "mirrored images are still the same class here: random horizontal flips double the "
                "effective data",
                {"overfitting": 9, "plateau": 6, "unknown": 2},
            )
        )
    if not info.flips_ok and "rotation" not in names:
        moves.append(
            Move(
                "augment.rotation",
                "augment",
                {"ops": plus(call("rotation", {"degrees": 10.0}))},
                "flips would change the meaning of these images, but small rotations (±10°) do not",
                {"overfitting": 6, "plateau": 4},
            )
        )
    if info.size >= 16 and not names & {"cutout", "random_erasing"}:
        size = max(4, info.size // 4)
        moves.append(
            Move(
                "augment.cutout",
                "augment",
                {"ops": plus(call("cutout", {"size": size}))},
                f"cutout ({size}x{size}) makes the model use the whole image, not one telltale "
                "patch",
                {"overfitting": 7, "plateau": 3},
            )
        )
    if not names & {"mixup", "cutmix"}:
        moves.append(
            Move(
                "augment.mixup",
                "augment",
                {"ops": plus(call("mixup", {"alpha": 0.2}))},
                "mixup (alpha 0.2) blends pairs of images and labels, a strong regulariser",
                {"overfitting": 5},
            )
        )
    if info.channels == 3 and "color_jitter" not in names:
        moves.append(
            Move(
                "augment.color_jitter",
                "augment",
                {
                    "ops": plus(
                        call(
                            "color_jitter", {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2}
                        )
                    )
                },
                "colour jitter makes the model robust to lighting",
                {"overfitting": 4, "plateau": 2},
            )
        )
    strong = [op for op in ops if op.name in _STRONG_AUGMENTS]
    if strong:
        drop = strong[-1]
        kept = [op for op in ops if op is not drop]
        moves.append(
            Move(
                "augment.drop_strongest",
                "augment",
                {"ops": ops_text(kept)},
                f"the model underfits: remove {drop.name}, which makes the training task harder",
                {"underfitting": 7, "slow": 4},
            )
        )
    return moves


def _data_moves(spec: Spec, info: DataInfo) -> list[Move]:
    batch = spec.data.batch_size
    steps = info.steps_per_epoch(batch)
    moves: list[Move] = []
    if batch >= 32 and steps < 200:
        moves.append(
            Move(
                "data.batch_down",
                "data",
                {"batch_size": str(batch // 2)},
                f"only {steps} steps per epoch: halve the batch ({batch} → {batch // 2}) for "
                "twice the updates",
                {"slow": 6, "underfitting": 5, "plateau": 2},
                cost=1.3,
            )
        )
    if batch <= 1024 and steps >= 20:
        moves.append(
            Move(
                "data.batch_up",
                "data",
                {"batch_size": str(batch * 2)},
                f"double the batch ({batch} → {batch * 2}) for less noisy gradients",
                {"unstable": 5, "plateau": 1},
            )
        )
    return moves


def _eval_moves(spec: Spec, info: DataInfo) -> list[Move]:
    augments = {op.name for op in spec.augment.ops}
    tta = list(spec.eval.tta)
    names = {op.name for op in tta}
    moves: list[Move] = []

    def plus(text: str) -> str:
        return "[" + ", ".join([*(op_text(o) for o in tta), text]) + "]"

    if info.flips_ok and "horizontal_flip" not in names and "horizontal_flip" in augments:
        moves.append(
            Move(
                "eval.flip_tta",
                "eval",
                {"tta": plus("horizontal_flip()")},
                "the model was trained on mirrored images: average its predictions over each test "
                "image and its mirror",
                {"plateau": 6, "overfitting": 5, "underfitting": 2, "slow": 2, "unknown": 2},
            )
        )
    if "translate" not in names and augments & {"translate", "random_crop"}:
        moves.append(
            Move(
                "eval.translate_tta",
                "eval",
                {"tta": plus(call("translate", {"pixels": 1}))},
                "the model was trained on shifted images: average over 1-pixel shifts",
                {"plateau": 4, "overfitting": 3, "slow": 1},
            )
        )
    return moves


MOVE_MAKERS: dict[str, MoveMaker] = {
    "train": _train_moves,
    "model": _model_moves,
    "augment": _augment_moves,
    "data": _data_moves,
    "eval": _eval_moves,
}


def apply_changes(spec_text: str, block: str, changes: Mapping[str, str | None]) -> str:
    """The block's editable view with ``changes`` made, printed canonically."""
    view = edit.editable_view(spec_text, block)
    ast = syntax.parse(view, "<view>")
    fields: dict[str, str] = {}
    if ast.blocks:
        for fld in ast.blocks[0].fields:
            fields[fld.name] = fmt.print_value(fld.value)
    for name, text in changes.items():
        if text is None:
            fields.pop(name, None)
        else:
            fields[name] = text
    lines = [f"{block} {{", *(f"  {k} = {v}" for k, v in fields.items()), "}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the expert


class HeuristicExpert:
    """A rule-based expert: real ML judgement, no network, deterministic for a seed."""

    name = "heuristic"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        # Moves whose replies the loop refused in the current attempt (it sent feedback).
        self._refused: set[str] = set()
        self._last: tuple[str, str] | None = None

    def select(self, context: Context, candidates: Sequence[str]) -> Selection | None:
        """The heuristic has no analyst: the loop selects by diagnosis."""
        return None

    def diagnosis(self, context: Context, spec: Spec | None = None) -> Diagnosis:
        spec = spec or validate.load_text(context.spec_text, context.spec_path)
        return diagnose(context.curves, context.metric_name, data_info(spec).classes)

    def moves(self, context: Context, block: str) -> list[Move]:
        """The untried moves for ``block``, best first."""
        spec = validate.load_text(context.spec_text, context.spec_path)
        info = data_info(spec)
        diagnosis = diagnose(context.curves, context.metric_name, info.classes)
        maker = MOVE_MAKERS.get(block)
        if maker is None:
            return []
        failed = {m for a in context.history if a.status in FAILED for m in a.move.split("+") if m}
        failed |= self._refused
        used: dict[str, int] = {}
        for attempt in context.history:
            if attempt.status == "accepted":
                for move_id in filter(None, attempt.move.split("+")):
                    used[move_id] = used.get(move_id, 0) + 1
        rng = random.Random(f"{self.seed}:{block}:{len(context.history)}")
        ranked: list[tuple[float, float, Move]] = []
        for move in maker(spec, info):
            if move.id in failed or used.get(move.id, 0) >= move.max_uses:
                continue
            score = move.score(diagnosis)
            if score > 0:
                ranked.append((-score, rng.random(), move))
        ranked.sort(key=lambda item: (item[0], item[1]))
        return [move for _, _, move in ranked]

    def propose(self, context: Context) -> Proposal:
        if not context.feedback:
            self._refused.clear()
        elif self._last is not None and context.previous_reply == self._last[0]:
            self._refused.update(self._last[1].split("+"))
        spec = validate.load_text(context.spec_text, context.spec_path)
        diagnosis = self.diagnosis(context, spec)
        texts: list[str] = []
        chosen: list[Move] = []
        for block in context.blocks:
            ranked = self.moves(context, block)
            if ranked:
                move = ranked[0]
                chosen.append(move)
                texts.append(apply_changes(context.spec_text, block, move.changes))
            elif len(context.blocks) > 1:
                texts.append(edit.editable_view(context.spec_text, block) + "\n")
        if not chosen:
            blocks = ", ".join(context.blocks)
            raise NoMoreMoves(f"no untried move for {blocks} fits the diagnosis ({diagnosis.kind})")
        text = "\n".join(texts)
        move_id = "+".join(m.id for m in chosen)
        rationale = " ".join(m.rationale[0].upper() + m.rationale[1:] + "." for m in chosen)
        rationale += f" (Diagnosis: {diagnosis.kind}; {diagnosis.reason}.)"
        self._last = (text, move_id)
        return Proposal(text=text, rationale=rationale, move=move_id, raw=text)
