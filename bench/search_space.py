"""The search space of the race in bench/refine_compare.py: what the offline expert can reach.

Optuna's samplers (TPE, random) search exactly the fields and ranges the heuristic expert's
moves and recipes can produce (improve_dsl/refine/experts/heuristic/moves.py, recipes.py):
batch size; MLP, batch-normalised CNN (2 stages, or 3 for images over 12 pixels) and ResNet-8/14
(images of 16 pixels or more); width; dropout; epochs 1-40; SGD (momentum, Nesterov) or
AdamW with learning rate and weight decay on log scales; constant, one-cycle or cosine
schedules; label smoothing; EMA; translate or crop, flips (only where label-safe),
rotation, cutout, mixup; flip and translate test-time augmentation. Names are checked
against the registry at import.

``params_of(spec)`` maps a spec into this space, so the starting spec is enqueued as the
first trial: every arm of the race starts from the same measured point.
"""

from __future__ import annotations

from typing import Any

from improve_dsl import registry
from improve_dsl.ir import Spec
from improve_dsl.refine.experts.heuristic.recipes import DataInfo, call

BATCH_SIZES = (16, 32, 64, 128, 256)
SMALL_CNN = ("16,32", "32,64", "64,128")
CNN = ("16,32", "32,64", "16,32,64", "32,64,128", "64,128,256")
MLP_WIDTHS = (32, 64, 128, 256, 512, 1024)
RESNET = ("8,16", "8,32", "14,16")
EPOCHS = (1, 40)
SGD_LR = (1e-3, 1.0)
ADAMW_LR = (1e-5, 3e-2)
WEIGHT_DECAY = (1e-6, 0.05)


def _check() -> None:
    for category, names in (
        ("arch", ("mlp", "cnn", "resnet")),
        ("optimizer", ("sgd", "adamw")),
        ("schedule", ("constant", "one_cycle", "cosine")),
        ("augment", ("translate", "random_crop", "horizontal_flip", "rotation", "cutout")),
        ("augment", ("mixup",)),
        ("tta", ("horizontal_flip", "translate")),
    ):
        for name in names:
            assert registry.component(category, name) is not None, (category, name)


_check()


def _f(value: float) -> float:
    return float(f"{value:.3g}")


def sample(trial: Any, info: DataInfo) -> dict[str, str]:
    """One point of the space as the text of each refinable block (define-by-run)."""
    batch = trial.suggest_categorical("batch_size", BATCH_SIZES)
    kinds = ["mlp", "cnn"] + (["resnet"] if info.size >= 16 else [])
    kind = trial.suggest_categorical("arch", kinds)
    if kind == "mlp":
        arch = call(
            "mlp",
            {
                "width": trial.suggest_categorical("mlp_width", MLP_WIDTHS),
                "depth": trial.suggest_int("mlp_depth", 1, 3),
            },
        )
    elif kind == "cnn":
        choice = trial.suggest_categorical("cnn_channels", SMALL_CNN if info.size <= 12 else CNN)
        arch = call(
            "cnn",
            {
                "channels": tuple(int(c) for c in choice.split(",")),
                "convs_per_stage": trial.suggest_int("cnn_convs", 1, 2),
                "batch_norm": trial.suggest_categorical("cnn_bn", (True, False)),
            },
        )
    else:
        depth, width = trial.suggest_categorical("resnet", RESNET).split(",")
        arch = call("resnet", {"depth": int(depth), "width": int(width)})
    dropout = trial.suggest_categorical("dropout", (0.0, 0.2, 0.4))

    epochs = trial.suggest_int("epochs", *EPOCHS, log=True)
    if trial.suggest_categorical("optimizer", ("sgd", "adamw")) == "sgd":
        optimizer = call(
            "sgd",
            {
                "lr": _f(trial.suggest_float("sgd_lr", *SGD_LR, log=True)),
                "momentum": trial.suggest_categorical("momentum", (0.0, 0.9)),
                "nesterov": trial.suggest_categorical("nesterov", (False, True)),
                "weight_decay": _weight_decay(trial),
            },
        )
    else:
        optimizer = call(
            "adamw",
            {
                "lr": _f(trial.suggest_float("adamw_lr", *ADAMW_LR, log=True)),
                "weight_decay": _weight_decay(trial),
            },
        )
    schedule_name = trial.suggest_categorical("schedule", ("constant", "one_cycle", "cosine"))
    schedule = "constant()" if schedule_name == "constant" else call(schedule_name, {"warmup": 0.2})
    smoothing = trial.suggest_categorical("label_smoothing", (0.0, 0.1, 0.2))
    train = [
        f"epochs = {epochs}",
        f"optimizer = {optimizer}",
        f"schedule = {schedule}",
        f"loss = {call('cross_entropy', {'label_smoothing': smoothing})}",
    ]
    if trial.suggest_categorical("ema", (False, True)):
        train.append(f"ema = {call('ema', {'decay': 0.99})}")

    ops: list[str] = []
    if trial.suggest_categorical("shift", (False, True)):
        ops.append(
            call("translate", {"pixels": 1})
            if info.size <= 16
            else call("random_crop", {"padding": 2})
        )
    flips = info.flips_ok and trial.suggest_categorical("flip", (False, True))
    if flips:
        ops.append(call("horizontal_flip", {"p": 0.5}))
    if not info.flips_ok and trial.suggest_categorical("rotation", (False, True)):
        ops.append(call("rotation", {"degrees": 10.0}))
    if info.size >= 16 and trial.suggest_categorical("cutout", (False, True)):
        ops.append(call("cutout", {"size": max(4, info.size // 4)}))
    if trial.suggest_categorical("mixup", (False, True)):
        ops.append(call("mixup", {"alpha": 0.2}))
    tta: list[str] = []
    if flips and trial.suggest_categorical("flip_tta", (False, True)):
        tta.append("horizontal_flip()")
    return {
        "data": f"data {{\n  batch_size = {batch}\n}}\n",
        "augment": "augment {\n  ops = [" + ", ".join(ops) + "]\n}\n",
        "model": f"model {{\n  arch = {arch}\n  dropout = {dropout}\n}}\n",
        "train": "train {\n" + "".join(f"  {line}\n" for line in train) + "}\n",
        "eval": "eval {\n  tta = [" + ", ".join(tta) + "]\n}\n",
    }


def _weight_decay(trial: Any) -> float:
    if not trial.suggest_categorical("use_weight_decay", (False, True)):
        return 0.0
    return _f(trial.suggest_float("weight_decay", *WEIGHT_DECAY, log=True))


def params_of(spec: Spec, info: DataInfo) -> dict[str, Any]:
    """The starting spec as a point of the space (for ``study.enqueue_trial``).

    Raises ValueError when the spec lies outside the space."""
    params: dict[str, Any] = {"batch_size": spec.data.batch_size}
    arch = spec.model.arch
    if arch is None:
        raise ValueError("a free-form layers model is outside the search space")
    params["arch"] = arch.name
    if arch.name == "mlp":
        params["mlp_width"], params["mlp_depth"] = arch.integer("width"), arch.integer("depth")
    elif arch.name == "cnn":
        channels = arch.params["channels"]
        assert isinstance(channels, tuple)
        params["cnn_channels"] = ",".join(str(c) for c in channels)
        params["cnn_convs"] = arch.integer("convs_per_stage")
        params["cnn_bn"] = bool(arch.params["batch_norm"])
    elif arch.name == "resnet":
        params["resnet"] = f"{arch.integer('depth')},{arch.integer('width')}"
    params["dropout"] = spec.model.dropout
    t = spec.train
    params["epochs"] = t.epochs
    opt = t.optimizer
    params["optimizer"] = opt.name
    if opt.name == "sgd":
        params["sgd_lr"] = opt.number("lr")
        params["momentum"] = opt.number("momentum")
        params["nesterov"] = bool(opt.params["nesterov"])
    elif opt.name == "adamw":
        params["adamw_lr"] = opt.number("lr")
    else:
        raise ValueError(f"optimizer {opt.name} is outside the search space")
    decay = opt.number("weight_decay")
    params["use_weight_decay"] = decay > 0
    if decay > 0:
        params["weight_decay"] = decay
    params["schedule"] = t.schedule.name
    params["label_smoothing"] = t.loss.number("label_smoothing")
    params["ema"] = t.ema is not None
    names = {op.name for op in spec.augment.ops}
    params["shift"] = bool(names & {"translate", "random_crop"})
    if info.flips_ok:
        params["flip"] = "horizontal_flip" in names
        if params["flip"]:
            params["flip_tta"] = any(op.name == "horizontal_flip" for op in spec.eval.tta)
    else:
        params["rotation"] = "rotation" in names
    if info.size >= 16:
        params["cutout"] = "cutout" in names
    params["mixup"] = "mixup" in names
    return params
