"""Search baselines for bench/refine_compare.py: a shared search space and a random expert.

The search space is a fixed, CPU-sized subset of the registry (names and ranges checked
against ``improve_dsl.registry`` at import): the same space serves the random one-block
edits (``RandomExpert``) and Optuna's TPE sampler (``OptunaExpert`` in refine_compare.py),
so neither baseline can reach a model the other cannot. Architectures too slow for two CPU
cores within the comparison's budget (ResNets, torchvision models) are left out of it; the
heuristic expert, which is the thing under test, is not restricted.

Values are drawn through a ``Draw``: ``RandomDraw`` (Python's ``random``) or an Optuna trial
adapter, so one function renders each field's text for both.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol

from improve_dsl import registry, validate
from improve_dsl.refine import edit, heuristic
from improve_dsl.refine.expert import Context, Proposal, Selection

# ---------------------------------------------------------------- drawing values


class Draw(Protocol):
    """Where sampled values come from (a seeded Random, or an Optuna trial)."""

    def choice(self, name: str, options: Sequence[Any]) -> Any: ...

    def uniform(self, name: str, low: float, high: float, log: bool = False) -> float: ...

    def integer(self, name: str, low: int, high: int) -> int: ...


class RandomDraw:
    """Uniform draws (log-uniform where asked) from a seeded ``random.Random``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def choice(self, name: str, options: Sequence[Any]) -> Any:
        return options[self.rng.randrange(len(options))]

    def uniform(self, name: str, low: float, high: float, log: bool = False) -> float:
        if log:
            import math

            return math.exp(self.rng.uniform(math.log(low), math.log(high)))
        return self.rng.uniform(low, high)

    def integer(self, name: str, low: int, high: int) -> int:
        return self.rng.randint(low, high)


# ---------------------------------------------------------------- the search space

BATCH_SIZES = (32, 64, 128, 256)
CNN_CHANNELS = ("16,32", "32,64", "32,64,128")  # strings: Optuna choices must be scalars
MLP_WIDTHS = (128, 256, 512)
MAX_EPOCHS = 8  # the heuristic reaches 8 from the spec's 2 (two doublings); same cap here
AUGMENT_POOL = ("random_crop", "horizontal_flip", "rotation", "cutout", "random_erasing", "mixup")
TTA_POOL = ("horizontal_flip", "translate")

# Fields each block may change, for the random one-block edits.
FIELDS: dict[str, tuple[str, ...]] = {
    "data": ("batch_size",),
    "augment": ("ops",),
    "model": ("arch", "dropout"),
    "train": ("epochs", "optimizer", "schedule", "loss", "ema", "clip_grad_norm"),
    "eval": ("tta",),
}


def _check_space() -> None:
    """Every name used here is a real registry entry (fails loudly if the registry moves)."""
    for category, names in (
        ("augment", AUGMENT_POOL),
        ("tta", TTA_POOL),
        ("arch", ("mlp", "cnn")),
        ("optimizer", ("sgd", "adamw")),
        ("schedule", ("constant", "one_cycle", "cosine")),
    ):
        for name in names:
            assert registry.component(category, name) is not None, (category, name)
    for block, fields in FIELDS.items():
        for name in fields:
            assert registry.block(block).field(name) is not None, (block, name)


_check_space()


def _f(value: float) -> str:
    """A float rounded to 3 significant digits, written without an exponent (the grammar
    reads ``1e-05`` as ``1e`` then ``-05``; see BENCHMARKS.md)."""
    text = f"{float(f'{value:.3g}'):.12f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _lit(value: Any) -> str:
    if isinstance(value, float) and not isinstance(value, bool):
        return _f(value)
    return heuristic.literal(value)


def _call(name: str, params: dict[str, Any]) -> str:
    return f"{name}(" + ", ".join(f"{k} = {_lit(v)}" for k, v in params.items()) + ")"


def augment_op(name: str, draw: Draw) -> str:
    """One augmentation op with drawn parameters."""
    if name == "random_crop":
        return _call(name, {"padding": draw.integer("crop_padding", 1, 4)})
    if name == "horizontal_flip":
        return "horizontal_flip(p = 0.5)"
    if name == "rotation":
        return f"rotation(degrees = {_f(draw.uniform('rotation_degrees', 5.0, 20.0))})"
    if name == "cutout":
        return _call(name, {"size": draw.integer("cutout_size", 4, 12)})
    if name == "random_erasing":
        return f"random_erasing(p = {_f(draw.uniform('erasing_p', 0.1, 0.5))})"
    if name == "mixup":
        return f"mixup(alpha = {_f(draw.uniform('mixup_alpha', 0.1, 0.4))})"
    raise KeyError(name)


def tta_op(name: str) -> str:
    return "translate(pixels = 1)" if name == "translate" else f"{name}()"


def field_text(block: str, name: str, draw: Draw) -> str:
    """A drawn value for one field (not ``ops``/``tta``, which are toggled per op)."""
    if (block, name) == ("data", "batch_size"):
        return str(draw.choice("batch_size", BATCH_SIZES))
    if (block, name) == ("model", "arch"):
        if draw.choice("arch", ("mlp", "cnn")) == "mlp":
            width = draw.choice("mlp_width", MLP_WIDTHS)
            depth = draw.integer("mlp_depth", 1, 3)
            return _call("mlp", {"width": width, "depth": depth})
        channels = tuple(int(c) for c in draw.choice("cnn_channels", CNN_CHANNELS).split(","))
        convs = draw.integer("cnn_convs_per_stage", 1, 2)
        return _call(
            "cnn",
            {
                "channels": channels,
                "convs_per_stage": convs,
                "batch_norm": draw.choice("cnn_batch_norm", (True, False)),
            },
        )
    if (block, name) == ("model", "dropout"):
        return _f(draw.uniform("dropout", 0.0, 0.5))
    if (block, name) == ("train", "epochs"):
        return str(draw.integer("epochs", 1, MAX_EPOCHS))
    if (block, name) == ("train", "optimizer"):
        if draw.choice("optimizer", ("sgd", "adamw")) == "sgd":
            momentum = float(f"{draw.uniform('sgd_momentum', 0.0, 0.95):.3g}")
            return _call(
                "sgd",
                {
                    "lr": float(f"{draw.uniform('sgd_lr', 1e-3, 0.5, log=True):.3g}"),
                    "momentum": momentum,
                    "nesterov": momentum > 0 and draw.choice("sgd_nesterov", (True, False)),
                    "weight_decay": float(f"{draw.uniform('sgd_wd', 1e-6, 1e-2, log=True):.3g}"),
                },
            )
        return _call(
            "adamw",
            {
                "lr": float(f"{draw.uniform('adamw_lr', 1e-4, 1e-2, log=True):.3g}"),
                "weight_decay": float(f"{draw.uniform('adamw_wd', 1e-4, 0.1, log=True):.3g}"),
            },
        )
    if (block, name) == ("train", "schedule"):
        kind = draw.choice("schedule", ("constant", "one_cycle", "cosine"))
        if kind == "one_cycle":
            return f"one_cycle(warmup = {_f(draw.uniform('one_cycle_warmup', 0.1, 0.4))})"
        if kind == "cosine":
            return f"cosine(warmup = {_f(draw.uniform('cosine_warmup', 0.0, 0.2))})"
        return "constant()"
    if (block, name) == ("train", "loss"):
        smoothing = draw.uniform("label_smoothing", 0.0, 0.2)
        return f"cross_entropy(label_smoothing = {_f(smoothing)})"
    if (block, name) == ("train", "ema"):
        if draw.choice("ema", (False, True)):
            return f"ema(decay = {_f(draw.uniform('ema_decay', 0.9, 0.999))})"
        return "none"
    if (block, name) == ("train", "clip_grad_norm"):
        return "1.0" if draw.choice("clip_grad_norm", (False, True)) else "none"
    raise KeyError((block, name))


def all_blocks_text(draw: Draw) -> str:
    """Every refinable block drawn at once (for Optuna): one full joint sample of the space."""
    ops = [augment_op(n, draw) for n in AUGMENT_POOL if draw.choice(f"aug_{n}", (False, True))]
    tta = [tta_op(n) for n in TTA_POOL if draw.choice(f"tta_{n}", (False, True))]
    train = {name: field_text("train", name, draw) for name in FIELDS["train"]}
    lines = [
        "data {",
        f"  batch_size = {field_text('data', 'batch_size', draw)}",
        "}",
        "augment {",
        f"  ops = [{', '.join(ops)}]",
        "}",
        "model {",
        f"  arch = {field_text('model', 'arch', draw)}",
        f"  dropout = {field_text('model', 'dropout', draw)}",
        "}",
        "train {",
        *(f"  {k} = {v}" for k, v in train.items() if v != "none"),
        "}",
        "eval {",
        f"  tta = [{', '.join(tta)}]",
        "}",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the random expert


def _toggled(current: Sequence[str], pool: Sequence[str], pick: str, new: str) -> list[str]:
    """``current`` op texts with ``pick`` removed if present, else ``new`` appended."""
    del pool
    kept = [t for t in current if not t.startswith(pick + "(")]
    return kept if len(kept) < len(current) else [*current, new]


class RandomExpert:
    """Random valid one-block edits: a random block, one random field redrawn from the space.

    No judgement at all: the loop's keep-if-better rule makes it a random local search, the
    baseline that shows what the heuristic's knowledge is worth.
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(f"random-expert:{seed}")
        self.draw = RandomDraw(self.rng)

    def select(self, context: Context, candidates: Sequence[str]) -> Selection | None:
        choices = [b for b in candidates if b in FIELDS]
        block = choices[self.rng.randrange(len(choices))]
        return Selection(block, "random block")

    def propose(self, context: Context) -> Proposal:
        block = context.blocks[0]
        for _ in range(50):  # redraw a no-op edit (e.g. the batch size it already has)
            text, what = self._draw(context, block)
            try:
                edit.apply_edit(context.spec_text, context.spec_path, (block,), text)
            except edit.EditError:
                continue
            break
        return Proposal(text=text, rationale=f"random: {what}", move=what.split(" =")[0], raw=text)

    def _draw(self, context: Context, block: str) -> tuple[str, str]:
        spec = validate.load_text(context.spec_text, context.spec_path)
        name = self.rng.choice(FIELDS[block])
        if name == "ops":
            current = [heuristic.op_text(op) for op in spec.augment.ops]
            pick = self.rng.choice(AUGMENT_POOL)
            items = _toggled(current, AUGMENT_POOL, pick, augment_op(pick, self.draw))
            value = "[" + ", ".join(items) + "]"
        elif name == "tta":
            current = [heuristic.op_text(op) for op in spec.eval.tta]
            pick = self.rng.choice(TTA_POOL)
            value = "[" + ", ".join(_toggled(current, TTA_POOL, pick, tta_op(pick))) + "]"
        else:
            value = field_text(block, name, self.draw)
        changes: dict[str, str | None] = {name: None if value == "none" else value}
        text = heuristic.apply_changes(context.spec_text, block, changes)
        return text, f"{block}.{name} = {value}"
