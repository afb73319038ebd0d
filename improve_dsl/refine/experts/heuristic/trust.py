"""Trust regions for the offline expert's continuous fields (learning rate, weight decay,
epochs, width, batch): how far the next step goes, read from the field's history."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# field → (first step factor, largest factor)
STEP_SIZES: dict[str, tuple[float, float]] = {
    "train.lr": (2.0, 4.0),
    "train.weight_decay": (3.0, 9.0),
    "train.epochs": (2.0, 4.0),
    "model.width": (2.0, 2.0),  # per arch: model.width@cnn, model.width@resnet...
    "data.batch": (2.0, 2.0),
}


@dataclass(frozen=True)
class TrustRegion:
    """The step factor of one continuous field, read from its history.

    Starts at ``start``; a kept step grows it (squared, up to ``largest``) and makes its
    direction the preferred one; a refused step shrinks it (square root, down to
    ``smallest``). ``tried`` holds the step ids refused against the current incumbent.
    """

    factor: float
    preferred: str  # "up", "down" or ""
    smallest: float
    back: float = 0.0  # after a kept step, the (smaller) factor of a step back

    @classmethod
    def read(
        cls, name: str, outcomes: Sequence[tuple[str, bool]], start: float, largest: float
    ) -> TrustRegion:
        factor, preferred, smallest, back = start, "", 1.25, 0.0
        for move_id, kept in outcomes:
            head, _, direction = move_id.partition(":")
            if head != name:
                continue
            direction = direction.split("*")[0]
            if kept:
                # Going on grows the step; going back halves it (in log terms), so a step
                # back never returns exactly to the spec the kept step left.
                back = max(math.sqrt(factor), smallest)
                factor, preferred = min(factor * factor, largest), direction
            else:
                factor, back = max(math.sqrt(factor), smallest), 0.0
        return cls(factor, preferred, smallest, back)

    def size(self, direction: str) -> float:
        """The step factor in ``direction``."""
        if self.back and self.preferred and direction != self.preferred:
            return self.back
        return self.factor

    def steps(self) -> list[tuple[str, float]]:
        """(direction, multiplier) pairs, the preferred direction first."""
        order = ("down", "up") if self.preferred == "down" else ("up", "down")
        return [(d, self.size(d) if d == "up" else 1 / self.size(d)) for d in order]

    def weight(self, start: float, direction: str) -> float:
        """Smaller steps promise less; the preferred direction more."""
        size = math.log(self.size(direction)) / math.log(start)
        return size * (1.5 if direction == self.preferred else 1.0)
