"""Known-good recipes sized to the data: the offline expert's scaling rules, in one place.

Every rule is a small function of what the spec says about the data (no loading):

- **Step budget.** Budgets are set in optimizer steps, not epochs: a few hundred steps for
  about a thousand images, growing slowly with the data (``target_steps``: 400 steps at
  1,500 images, x1.6 per 10x images, between 300 and 3,000). Epochs follow from the batch.
- **SGD.** Nesterov momentum 0.9, learning rate proportional to the batch (0.1 per 256
  images, Goyal et al. 2017), weight decay 5e-4, a one-cycle schedule (warm-up over 20% of
  the steps, then annealing), label smoothing 0.1 (airbench, hlb-CIFAR10, DAWNBench).
- **AdamW.** decoupled weight decay 0.05 (small CNNs from scratch); the recipe itself is SGD.
- **Model.** A batch-normalised CNN for images: two stages (32, 64 channels) for images of
  12 pixels or less, three (32, 64, 128) up to 20,000 training images, a ResNet-8 of width
  16 beyond (residual connections pay off once there is data to fill them).
- **Augmentation.** A 1-pixel translate for tiny images (a crop loses too much of 8x8);
  else a random crop with 2 pixels of padding, plus horizontal flips where mirrored images
  keep their class (not digits, MNIST or SVHN).

Sources: FACTS.md's "Recipes known to work" (airbench94, hlb-CIFAR10, DAWNBench ResNet-9,
Fashion-MNIST CNNs) and "Scaling rules in common use".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .... import registry
from ....fmt import call
from ....ir import Op, Spec

SGD_LR_PER_256 = 0.1
SGD_MOMENTUM = 0.9
SGD_WEIGHT_DECAY = 5e-4
ADAMW_WEIGHT_DECAY = 0.05
WARMUP = 0.2
LABEL_SMOOTHING = 0.1
MIN_EPOCHS, MAX_EPOCHS = 3, 40


@dataclass(frozen=True)
class DataInfo:
    """What the recipes need to know about the dataset, read from the spec (no loading)."""

    source: str
    channels: int
    size: int
    classes: int
    train_size: int
    flips_ok: bool  # mirrored images are still images of the same class

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, self.train_size // max(1, min(batch_size, self.train_size)))


def data_info(spec: Spec) -> DataInfo:
    """Channels, size, classes and training-set size of the spec's data source (from the
    registry's facts; a folder's from its parameters, with 5,000 images assumed)."""
    source = spec.data.source
    facts = registry.dataset_facts(source.name)
    if facts is not None:
        channels, size, classes, count = (
            facts.channels,
            facts.image_size,
            facts.num_classes,
            facts.train_count,
        )
    else:
        channels = int(source.params.get("channels") or 3)  # type: ignore[arg-type]
        size = int(source.params.get("image_size") or 32)  # type: ignore[arg-type]
        classes, count = 10, 5000
    fraction = spec.data.validation.params.get("fraction", 0.1)
    count = int(count * (1.0 - float(fraction or 0.1)))  # type: ignore[arg-type]
    subset = source.params.get("subset")  # a subset of the training split
    if isinstance(subset, int):
        count = min(count, subset)
    return DataInfo(source.name, channels, size, classes, count, registry.flips_safe(source.name))


def target_steps(info: DataInfo) -> int:
    """Optimizer steps a short, well-tuned run needs on this much data."""
    return int(min(3000, max(300, 400 * (info.train_size / 1500) ** 0.2)))


def epochs_for(info: DataInfo, batch_size: int, steps: int | None = None) -> int:
    """Epochs that give ``steps`` (default: the target) optimizer steps at this batch size."""
    wanted = target_steps(info) if steps is None else steps
    epochs = math.ceil(wanted / info.steps_per_epoch(batch_size))
    return min(MAX_EPOCHS, max(MIN_EPOCHS, epochs))


def sgd_lr(batch_size: int) -> float:
    """The linear scaling rule, kept inside the range small nets train well in."""
    return round(min(0.4, max(0.01, SGD_LR_PER_256 * batch_size / 256)), 4)


def train_recipe(info: DataInfo, batch_size: int) -> dict[str, str]:
    """The train block's fields of the SGD recipe, as .imp text."""
    return {
        "epochs": str(epochs_for(info, batch_size)),
        "optimizer": call(
            "sgd",
            {
                "lr": sgd_lr(batch_size),
                "momentum": SGD_MOMENTUM,
                "nesterov": True,
                "weight_decay": SGD_WEIGHT_DECAY,
            },
        ),
        "schedule": call("one_cycle", {"warmup": WARMUP}),
        "loss": call("cross_entropy", {"label_smoothing": LABEL_SMOOTHING}),
    }


def model_recipe(info: DataInfo) -> str:
    """The arch that trains best in a short budget at this image and data size."""
    if info.size <= 12:
        return call("cnn", {"channels": (32, 64), "convs_per_stage": 1, "batch_norm": True})
    if info.train_size <= 20000:
        return call("cnn", {"channels": (32, 64, 128), "convs_per_stage": 1, "batch_norm": True})
    return call("resnet", {"depth": 8, "width": 16})


def smaller_than_recipe(arch: Op, info: DataInfo) -> bool:
    """A CNN with fewer stages than the recipe's, or under half its channels."""
    if arch.name != "cnn":
        return False
    channels = arch.params["channels"]
    assert isinstance(channels, tuple)
    wanted = (32, 64) if info.size <= 12 else (32, 64, 128)
    return len(channels) < len(wanted) or max(int(c) for c in channels) * 2 <= max(wanted)


def augment_recipe(info: DataInfo) -> list[str]:
    """The cheap augmentations that almost always help, safe for this data."""
    if info.size <= 16:
        return [call("translate", {"pixels": 1})]
    ops = [call("random_crop", {"padding": 2})]
    if info.flips_ok:
        ops.append(call("horizontal_flip", {"p": 0.5}))
    return ops
