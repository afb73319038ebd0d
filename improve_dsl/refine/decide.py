"""Keep or revert, and prune or go on: pure functions of measurements and options.

The keep rule is ``KEEP_RULE`` below, its one statement: the README and docs/architecture.md
quote it word for word (a test checks), ``improve refine --help`` prints it, and the loop
refers to it. ``decide`` applies it to one candidate; ``decide_round`` decides a whole round:
how each candidate ended (its journal status and score) and which one, if any, is kept.

A validation score is a noisy measurement. Two sources are estimated from what a run
already reports, with no extra training:

- the **sampling noise** of the validation split: a score p measured on n images has a
  binomial standard error sqrt(p (1 - p) / n);
- the **training noise**: how much the incumbent's score still swings from epoch to epoch
  at the end of its run (half the last epoch-to-epoch change, which is small once the
  learning rate has annealed and large for a constant rate); with several seeds, their
  spread (the standard error of their mean) takes its place.

They add in quadrature. The margin a gain must clear is ``Z`` times that noise, or
``min_delta`` if the user asked for more, raised by ``COST_WEIGHT`` per doubling of the
cost; a no-worse change is kept when its runs take at most ``CHEAPER`` of the time (the same
score for half the seconds is progress; measured seconds of short runs swing by a third, so
a smaller saving is not trusted).

A run is pruned only when it is clearly lost: its learning rate has annealed (or most of its
epochs are done) and it is several noise widths below the incumbent's final score,
or it trails the incumbent at the same epoch by more than ``prune_margin`` and by several
times the incumbent's swing.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Z = 1.0  # noise widths a gain must exceed: a neutral change then passes about 1 time in 6
COST_WEIGHT = 0.25  # extra margin per doubling of the run time, as a fraction of the margin
CHEAPER = 0.5  # a no-worse change is kept when runs take at most this share of the time
PRUNE_WIDTHS = (
    3.0  # noise widths below the incumbent's final score that a finished-looking run may trail
)
SWING_WIDTHS = 5.0  # swings of the incumbent a still-learning run may trail at the same epoch
ANNEALED = 0.05  # a learning rate below this share of its peak has annealed (one-cycle and
# cosine schedules still gain points until their rate is a few per cent of the peak)
LATE = 0.9  # the share of epochs after which a run with an unannealed rate is judged anyway

# The keep rule, as a user reads it (the README, docs/architecture.md and `improve refine
# --help` show this text; its numbers come from the constants above).
KEEP_RULE = (
    "A change is kept only if it beats the incumbent by more than "
    + ("" if Z == 1 else f"{Z:g} times ")
    + "the noise of the measurement (the validation split's binomial standard error and the "
    "incumbent's epoch-to-epoch swing, or with several seeds the standard error of their "
    "mean, added in quadrature) and by more than --min-delta; the margin grows by "
    f"{COST_WEIGHT:.0%} for each doubling of the time every later run takes. A change that "
    f"scores no lower and makes runs take at most {CHEAPER:.0%} of the time is kept too. Of "
    "the candidates of a round that would be kept, only the best scoring one is; the "
    "others are recorded as outranked by it."
)


@dataclass(frozen=True)
class Measurement:
    """What deciding needs to know about one scored spec."""

    metric: float  # the mean validation score over the seeds
    metrics: tuple[float, ...] = ()  # one score per seed
    curve: tuple[float, ...] = ()  # the score after each epoch (of the first seed)
    eval_size: int = 0  # validation images; 0 when unknown
    seconds: float = 0.0  # training seconds of one run (mean over the seeds)


@dataclass(frozen=True)
class Noise:
    """The estimated standard error of a score, and its parts."""

    sampling: float
    training: float

    @property
    def total(self) -> float:
        return math.hypot(self.sampling, self.training)

    def to_json(self) -> dict[str, float]:
        return {
            "sampling": round(self.sampling, 6),
            "training": round(self.training, 6),
            "total": round(self.total, 6),
        }


@dataclass(frozen=True)
class Verdict:
    """Whether to keep a change, and the figures that decided it (recorded in the journal)."""

    keep: bool
    gain: float | None
    margin: float
    noise: Noise
    cost_ratio: float
    cheaper: bool = False  # kept (or keepable) as no worse and at most CHEAPER the cost

    def to_json(self) -> dict[str, Any]:
        return {
            "gain": None if self.gain is None else round(self.gain, 6),
            "margin": round(self.margin, 6),
            "noise": self.noise.to_json(),
            "cost_ratio": round(self.cost_ratio, 3),
            "cheaper": self.cheaper,
        }


def swing(curve: Sequence[float]) -> float:
    """How much the score still moves at the end of a run: half the last epoch's change."""
    finite = [v for v in curve if math.isfinite(v)]
    if len(finite) < 2:
        return 0.0
    return abs(finite[-1] - finite[-2]) / 2


def estimate_noise(incumbent: Measurement) -> Noise:
    """The standard error of the incumbent's score (see the module docstring)."""
    p = min(max(incumbent.metric, 0.0), 1.0)
    sampling = math.sqrt(p * (1 - p) / incumbent.eval_size) if incumbent.eval_size > 0 else 0.0
    seeds = [m for m in incumbent.metrics if math.isfinite(m)]
    if len(seeds) > 1:
        training = statistics.stdev(seeds) / math.sqrt(len(seeds))
    else:
        training = swing(incumbent.curve)
    return Noise(sampling, training)


def required_margin(noise: Noise, min_delta: float, cost_ratio: float) -> float:
    """The gain a change must exceed: the noise (or ``min_delta``), more for costlier runs."""
    base = max(min_delta, Z * noise.total)
    if cost_ratio > 1:
        base *= 1 + COST_WEIGHT * math.log2(cost_ratio)
    return base


def decide(
    candidate: Measurement, incumbent: Measurement | None, min_delta: float = 0.0
) -> Verdict:
    """Keep ``candidate`` over ``incumbent``? Any scored candidate beats no incumbent."""
    if incumbent is None:
        return Verdict(True, None, 0.0, Noise(0.0, 0.0), 1.0)
    noise = estimate_noise(incumbent)
    cost_ratio = (
        candidate.seconds / incumbent.seconds
        if candidate.seconds > 0 and incumbent.seconds > 0
        else 1.0
    )
    margin = required_margin(noise, min_delta, cost_ratio)
    gain = candidate.metric - incumbent.metric
    cheaper = gain >= 0 and cost_ratio <= CHEAPER
    return Verdict(gain > margin or cheaper, gain, margin, noise, cost_ratio, cheaper)


def measurement(
    metrics: Sequence[float | None],
    curves: Sequence[Sequence[Mapping[str, Any]]],
    metric_key: str,
    eval_size: int,
    seconds: Sequence[float],
) -> Measurement | None:
    """A Measurement from per-seed results (None when no seed produced a score)."""
    scores = tuple(float(m) for m in metrics if m is not None)
    if not scores:
        return None
    first = curves[0] if curves else []
    curve = tuple(
        float(e[metric_key]) for e in first if isinstance(e.get(metric_key), (int, float))
    )
    mean_seconds = sum(seconds) / len(seconds) if seconds else 0.0
    return Measurement(sum(scores) / len(scores), scores, curve, eval_size, mean_seconds)


def should_prune(
    event: Mapping[str, Any],
    peak_lr: float,
    incumbent: Measurement | None,
    metric_key: str,
    prune_margin: float,
) -> bool:
    """Stop this run now? ``event`` is its latest epoch event, ``peak_lr`` its highest rate so far.

    Never before epoch 2, never without an incumbent to compare with.
    """
    if incumbent is None or not incumbent.curve:
        return False
    epoch, epochs, value = event.get("epoch"), event.get("epochs"), event.get(metric_key)
    if not isinstance(epoch, int) or not isinstance(value, (int, float)) or epoch < 2:
        return False
    total = epochs if isinstance(epochs, int) and epochs >= epoch else epoch
    lr = event.get("lr")
    annealed = isinstance(lr, (int, float)) and peak_lr > 0 and lr <= ANNEALED * peak_lr
    noise = estimate_noise(incumbent)
    floor = incumbent.metric - max(PRUNE_WIDTHS * noise.total, 0.01)
    if (annealed or epoch >= LATE * total) and value < floor:
        return True  # little is left to gain, and it is well below what the incumbent ended with
    # Still learning: only a gap far beyond anything the incumbent's own swing explains.
    reference = incumbent.curve[min(epoch, len(incumbent.curve)) - 1]
    gap = reference - value
    return epoch >= max(2, math.ceil(total / 2)) and gap > max(
        prune_margin, SWING_WIDTHS * swing(incumbent.curve)
    )


# ---------------------------------------------------------------- a round's outcome

# The run statuses (``run.RunStatus``) of a seed whose run broke: its candidate failed.
BROKEN = ("failed", "timeout", "nan", "oom")


@dataclass(frozen=True)
class SeedResult:
    """One seed's run of a candidate, as deciding its round reads it."""

    status: str  # a ``run.RunStatus``: ok, pruned, failed, timeout, nan, oom, interrupted
    metric: float | None = None  # its final score (status ok)
    cached: bool = False  # read back from the results cache, not trained now
    last: float | None = None  # its score at its last epoch: where a pruned run stopped


@dataclass(frozen=True)
class Contender:
    """One candidate of a round: its seeds' runs, or None when its proposal was invalid (it
    was never trained), and what ``decide`` reads of its finished seeds."""

    iteration: int
    runs: tuple[SeedResult, ...] | None
    measured: Measurement | None = None


@dataclass(frozen=True)
class Outcome:
    """How one candidate of a round ended: its journal status, the score it is recorded with,
    and why (the verdict that judged it, the sibling that outranked it)."""

    iteration: int
    status: str  # a journal status (``journal.STATUSES``)
    metric: float | None  # the mean over its scored seeds; pruned: over where each stopped
    verdict: Verdict | None = None  # every candidate whose seeds all scored has one
    outranked_by: int | None = None  # it beat the incumbent, but this sibling did better


@dataclass(frozen=True)
class RoundDecision:
    """The outcome of every candidate of a round, in the round's order."""

    outcomes: tuple[Outcome, ...]

    @property
    def kept(self) -> int | None:
        """The iteration that becomes the incumbent (None: the incumbent stays)."""
        return next((o.iteration for o in self.outcomes if o.status == "accepted"), None)


def last_score(history: Sequence[Mapping[str, Any]], metric_key: str) -> float | None:
    """The score in a run's last event (None when it has none)."""
    value = history[-1].get(metric_key) if history else None
    return float(value) if isinstance(value, (int, float)) else None


def decide_round(
    contenders: Sequence[Contender], incumbent: Measurement | None, min_delta: float = 0.0
) -> RoundDecision:
    """How each candidate of a round ended, and which one is kept.

    A candidate is invalid when it was never trained; scored when every seed finished with a
    score; pruned when a seed was pruned and none broke (``BROKEN``); failed otherwise. Of
    the scored candidates that ``decide`` would keep, the one with the highest mean score is
    accepted (the earliest on a tie) and the others are marked as outranked by it. A scored
    candidate not accepted is cached when all its seeds came from the results cache, else
    rejected.
    """
    ended = [_ended(c) for c in contenders]
    verdicts: dict[int, Verdict] = {}
    scores: dict[int, float] = {}
    for index, (contender, (kind, metric)) in enumerate(zip(contenders, ended, strict=True)):
        if kind == "scored" and metric is not None:
            assert contender.measured is not None, contender
            verdicts[index] = decide(contender.measured, incumbent, min_delta)
            scores[index] = metric
    winners = [index for index, verdict in verdicts.items() if verdict.keep]
    best = max(winners, key=scores.__getitem__) if winners else None
    outcomes = []
    for index, (contender, (kind, metric)) in enumerate(zip(contenders, ended, strict=True)):
        status, outranked_by = kind, None
        if kind == "scored":
            if index == best:
                status = "accepted"
            elif contender.runs and all(r.cached for r in contender.runs):
                status = "cached"
            else:
                status = "rejected"
            if best is not None and index != best and index in winners:
                outranked_by = contenders[best].iteration
        outcomes.append(
            Outcome(contender.iteration, status, metric, verdicts.get(index), outranked_by)
        )
    return RoundDecision(tuple(outcomes))


def _ended(contender: Contender) -> tuple[str, float | None]:
    """``invalid``, ``scored``, ``pruned`` or ``failed``, and the score it is recorded with."""
    runs = contender.runs
    if runs is None:
        return "invalid", None
    scores = [r.metric for r in runs if r.status == "ok" and r.metric is not None]
    if runs and len(scores) == len(runs):
        return "scored", mean_or_none(scores)
    statuses = {r.status for r in runs}
    if "pruned" in statuses and not statuses.intersection(BROKEN):
        return "pruned", mean_or_none([r.last for r in runs if r.last is not None])
    return "failed", mean_or_none(scores)


def mean_or_none(values: Sequence[float]) -> float | None:
    """The mean, or None for no values (a candidate none of whose seeds scored)."""
    return sum(values) / len(values) if values else None
