"""The keep-or-revert rule, a round's outcomes and the prune rule, as tables: no training."""

from __future__ import annotations

import math

import pytest

from improve_dsl.refine.decide import (
    Contender,
    Measurement,
    SeedResult,
    decide,
    decide_round,
    estimate_noise,
    last_score,
    required_margin,
    should_prune,
    swing,
)

FLAT = (0.80, 0.85, 0.88, 0.90, 0.90)  # annealed: the last epoch did not move


def m(metric: float, **kw: object) -> Measurement:
    return Measurement(metric, **kw)  # type: ignore[arg-type]


def test_sampling_noise_is_the_binomial_standard_error() -> None:
    noise = estimate_noise(m(0.9, eval_size=400))
    assert noise.sampling == pytest.approx(math.sqrt(0.9 * 0.1 / 400))
    assert noise.training == 0.0


def test_training_noise_is_the_last_swing_or_the_seed_spread() -> None:
    assert swing((0.5, 0.7, 0.6)) == pytest.approx(0.05)
    assert estimate_noise(m(0.6, curve=(0.5, 0.7, 0.6))).training == pytest.approx(0.05)
    seeds = estimate_noise(m(0.6, metrics=(0.58, 0.62), curve=(0.5, 0.7, 0.6)))
    assert seeds.training == pytest.approx(0.02828427 / math.sqrt(2), rel=1e-4)


@pytest.mark.parametrize(
    ("candidate", "incumbent", "min_delta", "keep", "why"),
    [
        # 2 images of 3,000 is noise, not progress (the old rule kept this).
        (m(0.9007), m(0.9, eval_size=3000, curve=FLAT), 0.0, False, "inside sampling noise"),
        (m(0.92), m(0.9, eval_size=3000, curve=FLAT), 0.0, True, "well beyond the noise"),
        # A gain that beats the sampling noise but not the incumbent's own swing.
        (m(0.91), m(0.9, eval_size=3000, curve=(0.8, 0.94, 0.90)), 0.0, False, "swing 2 pts"),
        # The user's --min-delta raises the bar above the noise.
        (m(0.92), m(0.9, eval_size=3000, curve=FLAT), 0.03, False, "min-delta 3 pts"),
        # A change that makes every run 4x slower needs a larger margin...
        (
            m(0.9075, seconds=40.0),
            m(0.9, eval_size=3000, curve=FLAT, seconds=10.0),
            0.0,
            False,
            "costlier",
        ),
        # ... which the same gain at equal cost clears.
        (
            m(0.9075, seconds=10.0),
            m(0.9, eval_size=3000, curve=FLAT, seconds=10.0),
            0.0,
            True,
            "same cost",
        ),
        # A cheaper change is not penalised.
        (
            m(0.9075, seconds=2.0),
            m(0.9, eval_size=3000, curve=FLAT, seconds=10.0),
            0.0,
            True,
            "cheaper",
        ),
        # The same score for a third of the seconds is kept, though inside the noise...
        (
            m(0.9, seconds=3.0),
            m(0.9, eval_size=3000, curve=FLAT, seconds=10.0),
            0.0,
            True,
            "no worse, a third of the cost",
        ),
        # ... but not a saving that timing noise could explain, nor a lower score.
        (
            m(0.9, seconds=7.0),
            m(0.9, eval_size=3000, curve=FLAT, seconds=10.0),
            0.0,
            False,
            "no worse, 70% of the cost",
        ),
        (
            m(0.8995, seconds=1.0),
            m(0.9, eval_size=3000, curve=FLAT, seconds=10.0),
            0.0,
            False,
            "a tenth of the cost but lower",
        ),
        (m(0.3), None, 0.0, True, "anything beats no incumbent"),
        (m(0.8), m(0.9, eval_size=3000, curve=FLAT), 0.0, False, "worse"),
    ],
)
def test_decide(
    candidate: Measurement, incumbent: Measurement | None, min_delta: float, keep: bool, why: str
) -> None:
    verdict = decide(candidate, incumbent, min_delta)
    assert verdict.keep is keep, why
    record = verdict.to_json()
    assert set(record) == {"gain", "margin", "noise", "cost_ratio", "cheaper"}


def test_a_cheaper_change_kept_inside_the_noise_says_so() -> None:
    incumbent = m(0.9, eval_size=3000, curve=FLAT, seconds=10.0)
    verdict = decide(m(0.9003, seconds=4.0), incumbent)
    assert verdict.keep and verdict.cheaper
    assert verdict.gain is not None and verdict.gain < verdict.margin
    assert not decide(m(0.9003, seconds=10.0), incumbent).cheaper


def test_margin_grows_with_each_doubling_of_cost() -> None:
    noise = estimate_noise(m(0.9, eval_size=3000, curve=FLAT))
    one, two, four = (required_margin(noise, 0.0, r) for r in (1.0, 2.0, 4.0))
    assert one < two < four
    assert two == pytest.approx(one * 1.25)


def epoch(e: int, of: int, value: float, lr: float = 0.1) -> dict[str, object]:
    return {"event": "epoch", "epoch": e, "epochs": of, "val_accuracy": value, "lr": lr}


INCUMBENT = m(0.90, eval_size=3000, curve=(0.70, 0.80, 0.86, 0.90))


@pytest.mark.parametrize(
    ("event", "peak_lr", "prune", "why"),
    [
        (epoch(1, 4, 0.10, lr=0.1), 0.1, False, "never at epoch 1"),
        # A 20-epoch candidate, still at its peak rate, behind an annealed 4-epoch incumbent
        # by 8 points: the old rule (10 points after half the epochs of a 4-epoch reference)
        # would judge it against the incumbent's final score; it is still learning.
        (epoch(4, 20, 0.82, lr=0.1), 0.1, False, "still learning"),
        (epoch(12, 20, 0.85, lr=0.08), 0.1, False, "half-way, small gap"),
        # Annealed and clearly below the incumbent's final score: lost.
        (epoch(3, 4, 0.80, lr=0.004), 0.1, True, "annealed and far below"),
        (epoch(3, 4, 0.895, lr=0.004), 0.1, False, "annealed but within noise"),
        # One-cycle at epoch 11 of 14: the rate is at 17% of its peak and the last epochs
        # still bring several points (a crop+flip candidate was cut here, 3.5 points behind).
        (epoch(11, 14, 0.865, lr=0.017), 0.1, False, "still annealing"),
        # Not annealed but hopeless: far beyond any swing of the incumbent.
        (epoch(2, 4, 0.30, lr=0.1), 0.1, True, "far below at half-way"),
        (epoch(9, 10, 0.80, lr=0.1), 0.1, True, "late (90%) and far below"),
    ],
)
def test_should_prune(event: dict[str, object], peak_lr: float, prune: bool, why: str) -> None:
    assert should_prune(event, peak_lr, INCUMBENT, "val_accuracy", 0.1) is prune, why


def test_no_pruning_without_an_incumbent_curve() -> None:
    assert not should_prune(epoch(3, 4, 0.0, lr=0.0), 0.1, None, "val_accuracy", 0.1)
    assert not should_prune(epoch(3, 4, 0.0, lr=0.0), 0.1, m(0.9), "val_accuracy", 0.1)


# ---------------------------------------------------------------- a round's outcomes


def ok(metric: float, cached: bool = False) -> SeedResult:
    return SeedResult("ok", metric, cached, last=metric)


def stopped(status: str, last: float | None = None) -> SeedResult:
    return SeedResult(status, None, last=last)


def entrant(iteration: int, *runs: SeedResult) -> Contender:
    """A trained candidate; measured as the loop measures it, from its seeds that scored."""
    scores = tuple(r.metric for r in runs if r.status == "ok" and r.metric is not None)
    measured = m(sum(scores) / len(scores), metrics=scores) if scores else None
    return Contender(iteration, tuple(runs), measured)


NEVER_TRAINED = Contender(1, None)
ROUND_INCUMBENT = m(0.9, eval_size=3000, curve=FLAT)  # a margin of about 0.0055


@pytest.mark.parametrize(
    ("contenders", "incumbent", "expected", "why"),
    [
        ([entrant(1, ok(0.95))], ROUND_INCUMBENT, [("accepted", 0.95, None)], "better: kept"),
        ([entrant(1, ok(0.902))], ROUND_INCUMBENT, [("rejected", 0.902, None)], "in the noise"),
        (
            [entrant(1, ok(0.902, cached=True))],
            ROUND_INCUMBENT,
            [("cached", 0.902, None)],
            "a repeat from the cache, not kept",
        ),
        (
            [entrant(1, ok(0.95, cached=True))],
            ROUND_INCUMBENT,
            [("accepted", 0.95, None)],
            "a repeat from the cache that is better is kept all the same",
        ),
        (
            [entrant(1, ok(0.93)), entrant(2, ok(0.95))],
            ROUND_INCUMBENT,
            [("rejected", 0.93, 2), ("accepted", 0.95, None)],
            "two beat the incumbent: the better is kept, the other outranked by it",
        ),
        (
            [entrant(1, ok(0.95)), entrant(2, ok(0.95))],
            ROUND_INCUMBENT,
            [("accepted", 0.95, None), ("rejected", 0.95, 1)],
            "a tie goes to the earlier",
        ),
        (
            [entrant(1, ok(0.93, cached=True)), entrant(2, ok(0.95)), entrant(3, ok(0.9))],
            ROUND_INCUMBENT,
            [("cached", 0.93, 2), ("accepted", 0.95, None), ("rejected", 0.9, None)],
            "an outranked repeat stays cached; a loser is not outranked",
        ),
        ([NEVER_TRAINED], ROUND_INCUMBENT, [("invalid", None, None)], "never trained"),
        (
            [entrant(1, stopped("pruned", 0.5), stopped("pruned", 0.6))],
            ROUND_INCUMBENT,
            [("pruned", pytest.approx(0.55), None)],
            "pruned: recorded where its seeds stopped",
        ),
        (
            [entrant(1, ok(0.9), stopped("pruned", 0.5), stopped("interrupted"))],
            ROUND_INCUMBENT,
            [("pruned", pytest.approx(0.7), None)],
            "one seed pruned, none broken: pruned",
        ),
        (
            [entrant(1, ok(0.95), stopped("nan"))],
            ROUND_INCUMBENT,
            [("failed", 0.95, None)],
            "a seed broke: failed, with the scores of the seeds that finished",
        ),
        (
            [entrant(1, stopped("pruned", 0.5), stopped("oom"))],
            ROUND_INCUMBENT,
            [("failed", None, None)],
            "pruned beside a broken seed: failed",
        ),
        ([entrant(1, stopped("timeout"))], ROUND_INCUMBENT, [("failed", None, None)], "timeout"),
        ([entrant(1)], ROUND_INCUMBENT, [("failed", None, None)], "no run at all"),
        (
            [entrant(1, ok(0.3)), entrant(2, ok(0.4))],
            None,
            [("rejected", 0.3, 2), ("accepted", 0.4, None)],
            "no incumbent yet: the best score of the round is kept",
        ),
        (
            [
                NEVER_TRAINED,
                entrant(2, stopped("failed")),
                entrant(3, ok(0.8)),
                entrant(4, ok(0.96)),
            ],
            ROUND_INCUMBENT,
            [
                ("invalid", None, None),
                ("failed", None, None),
                ("rejected", 0.8, None),
                ("accepted", 0.96, None),
            ],
            "a mixed round",
        ),
    ],
)
def test_decide_round(
    contenders: list[Contender],
    incumbent: Measurement | None,
    expected: list[tuple[str, float | None, int | None]],
    why: str,
) -> None:
    decision = decide_round(contenders, incumbent)
    got = [(o.status, o.metric, o.outranked_by) for o in decision.outcomes]
    assert got == expected, why
    assert [o.iteration for o in decision.outcomes] == [c.iteration for c in contenders]
    accepted = [o.iteration for o in decision.outcomes if o.status == "accepted"]
    assert decision.kept == (accepted[0] if accepted else None)
    for contender, outcome in zip(contenders, decision.outcomes, strict=True):
        # Every candidate whose seeds all scored is judged by the keep rule, and says how.
        scored = outcome.status in ("accepted", "rejected", "cached")
        assert (outcome.verdict is not None) is scored, why
        if outcome.verdict is not None:
            assert contender.measured is not None
            assert outcome.verdict == decide(contender.measured, incumbent)


def test_a_round_is_judged_with_min_delta() -> None:
    round_ = [entrant(1, ok(0.95))]
    assert decide_round(round_, ROUND_INCUMBENT, 0.0).kept == 1
    assert decide_round(round_, ROUND_INCUMBENT, 0.1).kept is None


def test_last_score_reads_the_last_event() -> None:
    history = [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.6}]
    assert last_score(history, "val_accuracy") == 0.6
    assert last_score([*history, {"event": "result"}], "val_accuracy") is None
    assert last_score([], "val_accuracy") is None
