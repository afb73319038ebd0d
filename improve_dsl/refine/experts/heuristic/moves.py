"""The offline expert's moves: one coordinated edit of one block, with what it should bring.

A move says which fields of a block get which new text, why, the share of the remaining
error it is expected to remove (``share``), how much longer every later run will take
(``cost``), and how the curves change that expectation (``fits``: a factor per diagnosis
signal). Three kinds:

- **recipes** (``train.recipe``, ``model.recipe@mlp``, ``augment.recipe``): a block
  rewritten to the known-good recipe of ``recipes.py`` when it is far from it;
- **steps** of a continuous field (learning rate, weight decay, epochs, width, batch) by a
  trust-region factor in either direction (``train.lr:up*2``); the factor comes from the
  field's history (see ``TrustRegion``);
- **discrete** changes (label smoothing, EMA, dropout, cutout, flip TTA...).

A move's id names what it does and what it applies to (``model.width@cnn:up*2``), so a
refusal of widening a CNN says nothing about widening a ResNet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ....fmt import call, literal
from ....ir import Op, Spec
from ....journal import NOT_ACCEPTED, PENDING
from ....registry import ParamValue
from . import recipes
from .recipes import DataInfo
from .trust import TrustRegion

# Refused against an incumbent: any outcome but acceptance, or still in flight beside it.
FAILED = (*NOT_ACCEPTED, PENDING)


@dataclass(frozen=True)
class Move:
    """One change to one block (see the module docstring)."""

    id: str
    block: str
    changes: Mapping[str, str | None]  # field → new value text; None removes the field
    rationale: str
    share: float  # expected share of the remaining error it removes
    cost: float = 1.0  # run time afterwards relative to now
    fits: Mapping[str, float] = field(default_factory=dict)

    def expected_share(self, signals: Sequence[str]) -> float:
        """``share`` adjusted by the diagnosis: each present signal multiplies it."""
        share = self.share
        for signal in signals:
            share *= self.fits.get(signal, 1.0)
        return min(share, 0.9)


# ---------------------------------------------------------------- printing a changed op


def op_text(op: Op, **updates: ParamValue) -> str:
    """An op with some parameters changed, every parameter written out."""
    params = dict(op.params)
    params.update(updates)
    return call(op.name, params)


def ops_text(ops: Sequence[Op], *extra: str) -> str:
    return "[" + ", ".join([*(op_text(op) for op in ops), *extra]) + "]"


def _round(value: float) -> float:
    return float(f"{value:.3g}")


def _step_id(name: str, direction: str, factor: float) -> str:
    return f"{name}:{direction}*{factor:.3g}"


# ---------------------------------------------------------------- moves per block

Regions = Callable[[str], TrustRegion]  # a field's trust region, e.g. regions("train.lr")
MoveMaker = Callable[[Spec, DataInfo, Regions], list[Move]]

UNDERFIT = {"underfitting": 2.0, "slow": 1.5, "overfitting": 0.5}
OVERFIT = {"overfitting": 3.0, "underfitting": 0.3, "slow": 0.5}


def train_weaknesses(spec: Spec, info: DataInfo) -> list[str]:
    """How the train block falls short of the recipe, in words (empty: it does not)."""
    t, opt = spec.train, spec.train.optimizer
    weak: list[str] = []
    lr = opt.number("lr")
    if opt.name == "sgd":
        if opt.number("momentum") < 0.5:
            weak.append("plain SGD without momentum")
        wanted = recipes.sgd_lr(spec.data.batch_size)
        if not wanted / 4 <= lr <= wanted * 4:
            weak.append(f"a learning rate of {lr:g} far from {wanted:g} for this batch size")
    elif opt.name in ("adam", "adamw") and not 3e-4 <= lr <= 1e-2:
        weak.append(f"an {opt.name} learning rate of {lr:g} outside 3e-4..1e-2")
    elif opt.name == "rmsprop":
        weak.append("RMSprop, which small CNNs rarely train best with")
    if t.schedule.name in ("constant", "step"):
        weak.append(f"a {t.schedule.name} learning rate that never anneals smoothly")
    steps = t.epochs * info.steps_per_epoch(spec.data.batch_size)
    if steps < recipes.target_steps(info) / 2:
        weak.append(f"only {steps} optimizer steps")
    return weak


def _train_moves(spec: Spec, info: DataInfo, regions: Regions) -> list[Move]:
    t, opt = spec.train, spec.train.optimizer
    moves: list[Move] = []
    weak = train_weaknesses(spec, info)
    if weak:
        recipe = recipes.train_recipe(info, spec.data.batch_size)
        epochs = int(recipe["epochs"])
        moves.append(
            Move(
                "train.recipe",
                "train",
                recipe,
                f"the train block has {', '.join(weak)}: use the known-good recipe (Nesterov "
                f"SGD, lr scaled to the batch, one-cycle, label smoothing, {epochs} epochs "
                f"for about {recipes.target_steps(info)} steps)",
                min(0.7, 0.1 + 0.2 * len(weak)),
                cost=epochs / t.epochs,
                fits=UNDERFIT,
            )
        )
    for direction, factor in regions("train.lr").steps():
        lr = _round(opt.number("lr") * factor)
        if not 1e-5 <= lr <= (1.0 if opt.name == "sgd" else 0.03):
            continue
        fits = (
            {"underfitting": 1.5, "slow": 2.0, "unstable": 0.2}
            if direction == "up"
            else {"unstable": 4.0, "slow": 0.5}
        )
        moves.append(
            Move(
                _step_id("train.lr", direction, regions("train.lr").size(direction)),
                "train",
                {"optimizer": op_text(opt, lr=lr)},
                f"step the learning rate {direction} ({opt.number('lr'):g} → {lr:g})",
                0.08 * regions("train.lr").weight(2.0, direction),
                fits=fits,
            )
        )
    decay = opt.number("weight_decay") if "weight_decay" in opt.params else 0.0
    base = recipes.SGD_WEIGHT_DECAY if opt.name == "sgd" else recipes.ADAMW_WEIGHT_DECAY
    region = regions("train.weight_decay")
    for direction, factor in region.steps():
        value = _round(decay * factor) if decay > 0 else (base if direction == "up" else 0.0)
        if value == decay or value > (0.05 if opt.name == "sgd" else 0.5):
            continue
        moves.append(
            Move(
                _step_id("train.weight_decay", direction, region.size(direction)),
                "train",
                {"optimizer": op_text(opt, weight_decay=value)},
                f"step the weight decay {direction} ({decay:g} → {value:g})",
                0.04 * region.weight(3.0, direction),
                fits=OVERFIT if direction == "up" else UNDERFIT,
            )
        )
    region = regions("train.epochs")
    for direction, factor in region.steps():
        epochs = max(1, min(recipes.MAX_EPOCHS * 2, round(t.epochs * factor)))
        if epochs == t.epochs:
            continue
        moves.append(
            Move(
                _step_id("train.epochs", direction, region.size(direction)),
                "train",
                {"epochs": str(epochs)},
                f"train {epochs} epochs instead of {t.epochs}",
                (0.1 if direction == "up" else 0.02) * region.weight(2.0, direction),
                cost=epochs / t.epochs,
                fits=(
                    {"slow": 2.0, "underfitting": 1.5, "overfitting": 0.3}
                    if direction == "up"
                    else {"overfitting": 2.0, "slow": 0.2}
                ),
            )
        )
    if t.loss.number("label_smoothing") == 0.0:
        moves.append(
            Move(
                "train.label_smoothing",
                "train",
                {"loss": op_text(t.loss, label_smoothing=recipes.LABEL_SMOOTHING)},
                "label smoothing 0.1 keeps the network from becoming over-confident",
                0.04,
                fits={"overfitting": 2.0, "plateau": 1.5},
            )
        )
    if t.ema is None:
        steps = t.epochs * info.steps_per_epoch(spec.data.batch_size)
        decay_ = _round(min(0.999, max(0.9, 1.0 - 10.0 / max(steps, 1))))
        moves.append(
            Move(
                "train.ema",
                "train",
                {"ema": call("ema", {"decay": decay_})},
                f"evaluate an exponential moving average of the weights (decay {decay_:g}, "
                f"about the last tenth of {steps} steps)",
                0.03,
                fits={"unstable": 2.0, "plateau": 1.5},
            )
        )
    if t.clip_grad_norm is None:
        moves.append(
            Move(
                "train.clip",
                "train",
                {"clip_grad_norm": "1.0"},
                "clip the gradient norm to 1 so single bad batches cannot blow the weights up",
                0.01,
                fits={"unstable": 10.0},
            )
        )
    return moves


def _width(arch: Op) -> tuple[str, int] | None:
    """The parameter that sets an arch's width, and its value (None: no width)."""
    if arch.name == "cnn":
        channels = arch.params["channels"]
        assert isinstance(channels, tuple)
        return "channels", min(int(c) for c in channels)
    key = {"mlp": "width", "resnet": "width", "preact_resnet": "width", "airbench": "width"}
    if arch.name in key:
        return key[arch.name], arch.integer(key[arch.name])
    return None


def _model_moves(spec: Spec, info: DataInfo, regions: Regions) -> list[Move]:
    m, arch = spec.model, spec.model.arch
    moves: list[Move] = []
    name = arch.name if arch is not None else "layers"
    recipe = recipes.model_recipe(info)
    weak = arch is None or arch.name == "mlp" or arch.params.get("batch_norm") is False
    small = not weak and arch is not None and recipes.smaller_than_recipe(arch, info)
    if weak or small:
        changes: dict[str, str | None] = {"arch": recipe}
        if arch is None:
            changes["layers"] = None
        moves.append(
            Move(
                f"model.recipe@{name}",
                "model",
                changes,
                (
                    f"a {name} this small has too few stages and channels for {info.size}-pixel "
                    if small
                    else f"a {name} is the wrong inductive bias or trains slowly on "
                )
                + f"images: use {recipe}, a batch-normalised CNN sized to the images and the data",
                0.25 if small else 0.5 if arch is None or arch.name == "mlp" else 0.3,
                cost=3.0,
                fits=UNDERFIT,
            )
        )
    width = _width(arch) if arch is not None else None
    if arch is not None and width is not None:
        key, value = width
        region = regions(f"model.width@{arch.name}")
        for direction, factor in region.steps():
            if arch.name == "cnn":
                channels = arch.params["channels"]
                assert isinstance(channels, tuple)
                widths = tuple(max(8, round(int(c) * factor)) for c in channels)
                if max(widths) > 512 or widths == channels:
                    continue
                new: ParamValue = widths
            else:
                new = max(8, round(value * factor))
                if new > (2048 if arch.name == "mlp" else 128) or new == value:
                    continue
            moves.append(
                Move(
                    _step_id(f"model.width@{arch.name}", direction, region.size(direction)),
                    "model",
                    {"arch": op_text(arch, **{key: new})},
                    f"{'widen' if direction == 'up' else 'narrow'} the {arch.name} "
                    f"({key} {literal(arch.params[key])} → {literal(new)})",
                    (0.06 if direction == "up" else 0.01) * region.weight(2.0, direction),
                    cost=factor**1.5,
                    fits=UNDERFIT if direction == "up" else OVERFIT,
                )
            )
    deeper: dict[str, ParamValue] | None = None
    if arch is not None and arch.name == "cnn" and arch.integer("convs_per_stage") < 3:
        deeper = {"convs_per_stage": arch.integer("convs_per_stage") + 1}
    elif arch is not None and arch.name == "resnet":
        ladder = (8, 14, 20, 32, 44, 56)
        if arch.integer("depth") in ladder[:-1]:
            deeper = {"depth": ladder[ladder.index(arch.integer("depth")) + 1]}
    if arch is not None and deeper is not None:
        moves.append(
            Move(
                f"model.deepen@{arch.name}",
                "model",
                {"arch": op_text(arch, **deeper)},
                f"add depth to the {arch.name}, so it can build more abstract features",
                0.05,
                cost=1.6,
                fits=UNDERFIT,
            )
        )
    if arch is not None and arch.name == "cnn" and info.size >= 16:
        moves.append(
            Move(
                "model.resnet@cnn",
                "model",
                {"arch": call("resnet", {"depth": 8, "width": 16})},
                "residual connections let a deeper network train well: switch to a ResNet-8",
                0.04,
                cost=2.0,
                fits={"plateau": 1.5, "underfitting": 1.5},
            )
        )
    if m.dropout < 0.5:
        dropout = _round(m.dropout + 0.2 if m.dropout == 0 else m.dropout + 0.1)
        moves.append(
            Move(
                "model.dropout:up",
                "model",
                {"dropout": literal(dropout)},
                f"the model memorises the training set: dropout {dropout:g} before the classifier",
                0.02,
                fits={"overfitting": 4.0, "underfitting": 0.1, "slow": 0.3},
            )
        )
    if m.dropout > 0:
        moves.append(
            Move(
                "model.dropout:down",
                "model",
                {"dropout": "0.0"},
                "the model does not fit the training data: remove dropout",
                0.03,
                fits=UNDERFIT,
            )
        )
    return moves


_STRONG = ("mixup", "cutmix", "rand_augment", "trivial_augment", "cutout", "random_erasing")


def _augment_moves(spec: Spec, info: DataInfo, regions: Regions) -> list[Move]:
    ops = list(spec.augment.ops)
    names = {op.name for op in ops}
    moves: list[Move] = []
    recipe = [text for text in recipes.augment_recipe(info) if text.split("(")[0] not in names]
    if recipe and not names & {"random_crop", "translate"}:
        moves.append(
            Move(
                "augment.recipe",
                "augment",
                {"ops": ops_text(ops, *recipe)},
                f"add {', '.join(recipe)}: the cheap augmentations that almost always reduce "
                "overfitting, safe for this data",
                0.08,
                cost=1.1,
                fits={"overfitting": 3.0, "plateau": 1.5, "underfitting": 0.5, "slow": 0.5},
            )
        )
    if info.flips_ok and "horizontal_flip" not in names and not recipe:
        moves.append(
            Move(
                "augment.flip",
                "augment",
                {"ops": ops_text(ops, call("horizontal_flip", {"p": 0.5}))},
                "mirrored images keep their class here: random horizontal flips",
                0.04,
                fits=OVERFIT,
            )
        )
    if info.size >= 16 and not names & {"cutout", "random_erasing"}:
        size = max(4, info.size // 4)
        moves.append(
            Move(
                "augment.cutout",
                "augment",
                {"ops": ops_text(ops, call("cutout", {"size": size}))},
                f"cutout ({size}x{size}) makes the model use the whole image",
                0.02,
                fits=OVERFIT,
            )
        )
    if not info.flips_ok and "rotation" not in names:
        moves.append(
            Move(
                "augment.rotation",
                "augment",
                {"ops": ops_text(ops, call("rotation", {"degrees": 10.0}))},
                "small rotations (±10°) keep these images' meaning, unlike flips",
                0.02,
                fits=OVERFIT,
            )
        )
    strong = [op for op in ops if op.name in _STRONG]
    if strong:
        kept = [op for op in ops if op is not strong[-1]]
        moves.append(
            Move(
                f"augment.drop@{strong[-1].name}",
                "augment",
                {"ops": ops_text(kept)},
                f"the model underfits: remove {strong[-1].name}, which makes training harder",
                0.03,
                fits={"underfitting": 3.0, "slow": 2.0, "overfitting": 0.1},
            )
        )
    return moves


def _data_moves(spec: Spec, info: DataInfo, regions: Regions) -> list[Move]:
    batch = spec.data.batch_size
    region = regions("data.batch")
    moves: list[Move] = []
    for direction, factor in region.steps():
        new = round(batch * factor)
        steps = info.steps_per_epoch(new)
        if new < 16 or new > min(1024, info.train_size) or (direction == "up" and steps < 20):
            continue
        moves.append(
            Move(
                _step_id("data.batch", direction, region.size(direction)),
                "data",
                {"batch_size": str(new)},
                f"{'halve' if direction == 'down' else 'double'} the batch ({batch} → {new}): "
                f"{steps} steps per epoch",
                (0.03 if direction == "down" else 0.01) * region.weight(2.0, direction),
                cost=1.3 if direction == "down" else 0.8,
                fits=(
                    {"slow": 2.0, "underfitting": 1.5}
                    if direction == "down"
                    else {"unstable": 3.0, "slow": 0.3}
                ),
            )
        )
    return moves


def _eval_moves(spec: Spec, info: DataInfo, regions: Regions) -> list[Move]:
    augments = {op.name for op in spec.augment.ops}
    tta = list(spec.eval.tta)
    names = {op.name for op in tta}
    moves: list[Move] = []
    if info.flips_ok and "horizontal_flip" not in names and "horizontal_flip" in augments:
        moves.append(
            Move(
                "eval.flip_tta",
                "eval",
                {"tta": ops_text(tta, "horizontal_flip()")},
                "the model was trained on mirrored images: average over each image and its mirror",
                0.03,
                cost=1.05,
            )
        )
    if "translate" not in names and augments & {"translate", "random_crop"}:
        moves.append(
            Move(
                "eval.translate_tta",
                "eval",
                {"tta": ops_text(tta, call("translate", {"pixels": 1}))},
                "the model was trained on shifted images: average over 1-pixel shifts",
                0.015,
                cost=1.1,
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
