"""Reading training curves the way a practitioner does: unstable, overfitting, slow, underfitting.

The input is the incumbent's ``epoch`` events (``train_loss``, ``val_loss``, the metric,
``epoch``, ``epochs``). The output names every signal that applies, the most pressing one
first, with a sentence saying why, for the log and for the expert's rationale.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# In the order they are acted on: a run that diverges must be fixed before anything else, and
# a model that memorises the training set needs regularising before it needs capacity.
SIGNALS = ("unstable", "overfitting", "slow", "underfitting", "plateau", "unknown")


@dataclass(frozen=True)
class Diagnosis:
    """What the curves say: the primary signal, all signals, and why."""

    kind: str
    signals: tuple[str, ...]
    reason: str

    def has(self, signal: str) -> bool:
        return signal in self.signals


def _series(curves: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    values: list[float] = []
    for event in curves:
        value = event.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values.append(float(value))
        elif value is None and key in event:
            values.append(math.nan)
    return values


def _finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def diagnose(
    curves: Sequence[Mapping[str, Any]], metric_key: str, num_classes: int = 10
) -> Diagnosis:
    """The signals in the incumbent's epoch curves (most pressing first)."""
    if not curves:
        return Diagnosis("unknown", ("unknown",), "no training curves (the run did not finish)")
    train = _series(curves, "train_loss")
    val_loss = _series(curves, "val_loss")
    metric = _series(curves, metric_key)
    found: dict[str, str] = {}

    # Unstable: non-finite losses, a training loss that ends above where it started, or a
    # validation score that swings up and down by several points.
    if not _finite(train) or not _finite(val_loss) or not _finite(metric):
        found["unstable"] = "the loss became NaN or infinite"
    elif len(train) >= 2 and train[-1] > train[0] * 1.1:
        found["unstable"] = (
            f"the training loss went up ({train[0]:.3f} → {train[-1]:.3f}): the learning rate "
            "is too high"
        )
    elif len(metric) >= 4:
        steps = [b - a for a, b in itertools.pairwise(metric)]
        swings = sum(
            1 for a, b in itertools.pairwise(steps) if a * b < 0 and min(abs(a), abs(b)) > 0.03
        )
        if swings >= 2:
            found["unstable"] = f"the validation score oscillates ({swings} large swings)"
    if "unstable" in found:
        metric = [v for v in metric if math.isfinite(v)]

    chance_loss = math.log(max(2, num_classes))
    if train and val_loss and _finite(train[-1:]) and _finite(val_loss[-1:]):
        last_train, last_val = train[-1], val_loss[-1]
        best_val = min(v for v in val_loss if math.isfinite(v))
        rising = len(val_loss) >= 3 and last_val > best_val * 1.15 + 0.01
        gap = last_val > 2.0 * last_train + 0.1
        falling = len(metric) >= 3 and metric[-1] < max(metric) - 0.01 and train[-1] < train[-2]
        if (gap and (rising or falling)) or (gap and last_train < 0.05):
            found["overfitting"] = (
                f"the training loss ({last_train:.3f}) is far below the validation loss "
                f"({last_val:.3f})" + (", which is rising" if rising else "")
            )
        elif falling and rising:
            found["overfitting"] = "the validation score falls while the training loss improves"

    if len(metric) >= 2:
        last_gain = metric[-1] - metric[-2]
        first_gain = metric[-1] - metric[0]
        steep = last_gain > 0.01 and last_gain > 0.1 * max(first_gain, 1e-9)
        if steep:
            found["slow"] = (
                f"still improving steeply at the last epoch (+{last_gain:.3f} {metric_key})"
            )
    elif len(train) == 1:
        found["slow"] = "a single epoch is too short to converge"
    if (
        "slow" not in found
        and len(train) >= 2
        and _finite(train[-2:])
        and train[-1] < train[-2] * 0.85
        and train[-2] - train[-1] > 0.05  # a tiny loss halving is not slow convergence
    ):
        found["slow"] = "the training loss still drops fast at the last epoch"

    if train and _finite(train[-1:]) and train[-1] > 0.3 * chance_loss:
        found["underfitting"] = (
            f"the training loss is still high ({train[-1]:.3f}; chance is "
            f"{chance_loss:.2f}): the model does not fit the training data"
        )
    elif metric and metric[-1] < 0.5:
        found["underfitting"] = f"the validation score is low ({metric[-1]:.3f})"

    if not found:
        found["plateau"] = "the curves have flattened out without clear over- or underfitting"
    signals = tuple(s for s in SIGNALS if s in found)
    return Diagnosis(signals[0], signals, found[signals[0]])
