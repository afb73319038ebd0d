"""The heuristic expert, the curve diagnosis and block selection (no training here)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from improve_dsl import diff, registry, syntax, validate
from improve_dsl.refine import edit
from improve_dsl.refine.diagnose import diagnose
from improve_dsl.refine.expert import Attempt, Context, NoMoreMoves, Selection
from improve_dsl.refine.heuristic import (
    MOVE_MAKERS,
    HeuristicExpert,
    apply_changes,
    data_info,
)
from improve_dsl.refine.select import by_diagnosis, choose_block, round_robin

SPECS = Path(__file__).resolve().parent.parent / "specs"
DIGITS = (SPECS / "digits.imp").read_text()


def curves(
    train: Sequence[float], val: Sequence[float], acc: Sequence[float]
) -> list[dict[str, Any]]:
    return [
        {
            "event": "epoch",
            "epoch": i + 1,
            "epochs": len(train),
            "train_loss": t,
            "val_loss": v,
            "val_accuracy": a,
        }
        for i, (t, v, a) in enumerate(zip(train, val, acc, strict=True))
    ]


UNDERFIT_SLOW = curves([2.2, 1.9, 1.6, 1.3], [2.2, 1.9, 1.6, 1.35], [0.3, 0.5, 0.6, 0.7])
OVERFIT = curves(
    [0.9, 0.4, 0.1, 0.02, 0.01], [0.9, 0.6, 0.55, 0.7, 0.85], [0.7, 0.82, 0.85, 0.84, 0.83]
)
UNSTABLE = curves([1.0, 0.8, float("nan")], [1.0, 0.9, float("nan")], [0.6, 0.7, 0.1])
PLATEAU = curves([0.30, 0.25, 0.24, 0.235], [0.32, 0.3, 0.29, 0.29], [0.90, 0.91, 0.912, 0.913])


def context(
    spec_text: str = DIGITS,
    block: str = "train",
    curves_: Sequence[dict[str, Any]] = UNDERFIT_SLOW,
    history: Sequence[Attempt] = (),
    **kw: Any,
) -> Context:
    blocks = kw.pop("blocks", (block,))
    return Context(
        spec_text, "spec.imp", blocks, "", "val_accuracy", 0.7, list(curves_), list(history), **kw
    )


def attempt(iteration: int, block: str, status: str, move: str) -> Attempt:
    return Attempt(iteration, block, status, 0.5, 0.6, "", "", move)


# ---------------------------------------------------------------- diagnosis


@pytest.mark.parametrize(
    ("curves_", "kind"),
    [
        (UNDERFIT_SLOW, "slow"),
        (OVERFIT, "overfitting"),
        (UNSTABLE, "unstable"),
        (curves([1.0, 1.2, 1.5], [1.0, 1.3, 1.6], [0.6, 0.5, 0.4]), "unstable"),
        (PLATEAU, "plateau"),
        (curves([2.0, 1.95, 1.94], [2.0, 1.96, 1.95], [0.3, 0.31, 0.31]), "underfitting"),
        ([], "unknown"),
    ],
)
def test_the_diagnosis_reads_the_curves(curves_: list[dict[str, Any]], kind: str) -> None:
    diagnosis = diagnose(curves_, "val_accuracy")
    assert diagnosis.kind == kind
    assert diagnosis.reason


def test_slow_and_underfitting_are_both_reported() -> None:
    assert diagnose(UNDERFIT_SLOW, "val_accuracy").signals == ("slow", "underfitting")


# ---------------------------------------------------------------- moves


@pytest.mark.parametrize("spec_name", ["digits.imp", "cifar10.imp", "fashion_mnist_quick.imp"])
def test_every_move_is_a_valid_edit_of_its_block_only(spec_name: str) -> None:
    text = (SPECS / spec_name).read_text()
    spec = validate.load_text(text, spec_name)
    info = data_info(spec)
    count = 0
    for block, maker in MOVE_MAKERS.items():
        for move in maker(spec, info):
            proposal = apply_changes(text, block, move.changes)
            for field_name in edit.locked_fields(block):
                assert f"{field_name} =" not in proposal, move.id
            # Only model moves can break shapes; the meta-device check costs a second each.
            merged = edit.apply_edit(
                text, spec_name, (block,), proposal, check_shapes=block == "model"
            )
            assert diff.changed_blocks(text, merged) == [block], move.id
            count += 1
    assert count >= 12


def test_flips_only_where_mirrored_images_keep_their_class() -> None:
    digits = validate.load_text(DIGITS, "d.imp")
    fashion = validate.load_text(DIGITS.replace("digits()", "fashion_mnist()"), "f.imp")
    digit_moves = {m.id for m in MOVE_MAKERS["augment"](digits, data_info(digits))}
    fashion_moves = {m.id for m in MOVE_MAKERS["augment"](fashion, data_info(fashion))}
    assert "augment.flip" not in digit_moves and "augment.rotation" in digit_moves
    assert "augment.flip" in fashion_moves
    # 8x8 digits get a 1-pixel shift, not a 4-pixel crop that would cut a digit in half.
    (translate,) = [
        m for m in MOVE_MAKERS["augment"](digits, data_info(digits)) if m.id == "augment.translate"
    ]
    assert "translate(pixels = 1)" in str(translate.changes["ops"])


def test_plain_sgd_that_underfits_gets_momentum_first() -> None:
    proposal = HeuristicExpert().propose(context())
    assert proposal.move == "train.momentum"
    assert "momentum = 0.9" in proposal.text and "nesterov = true" in proposal.text
    assert proposal.text.startswith("train {")
    assert proposal.rationale.startswith("Plain SGD crawls")
    assert "(Diagnosis: slow; " in proposal.rationale


def test_an_mlp_that_underfits_becomes_a_cnn() -> None:
    proposal = HeuristicExpert().propose(context(block="model"))
    assert proposal.move == "model.cnn"
    assert "cnn(channels = [32, 64]" in proposal.text


@pytest.mark.parametrize(
    ("block", "curves_", "expected"),
    [
        ("augment", OVERFIT, "augment.translate"),
        ("model", OVERFIT, "model.dropout"),
        ("train", UNSTABLE, "train.lr_down"),
    ],
)
def test_the_move_answers_the_diagnosis(
    block: str, curves_: list[dict[str, Any]], expected: str
) -> None:
    assert HeuristicExpert().propose(context(block=block, curves_=curves_)).move == expected


def test_a_move_that_failed_is_never_proposed_again() -> None:
    expert = HeuristicExpert()
    seen: list[str] = []
    history: list[Attempt] = []
    for i in range(1, 30):
        try:
            proposal = expert.propose(context(history=history))
        except NoMoreMoves:
            break
        assert proposal.move not in seen
        seen.append(proposal.move)
        history.append(attempt(i, "train", "rejected", proposal.move))
    assert len(seen) >= 4 and len(set(seen)) == len(seen)


def test_accepted_moves_may_repeat_up_to_their_limit() -> None:
    history = [
        attempt(1, "train", "accepted", "train.momentum"),
        attempt(2, "train", "accepted", "train.epochs_up"),
        attempt(3, "train", "accepted", "train.epochs_up"),
    ]
    text = DIGITS.replace("momentum = 0.0, nesterov = false", "momentum = 0.9, nesterov = true")
    moves = [m.id for m in HeuristicExpert().moves(context(text, history=history), "train")]
    assert "train.epochs_up" not in moves and "train.momentum" not in moves
    assert "train.lr_up" in moves


def test_same_context_same_proposal() -> None:
    a = HeuristicExpert(seed=3).propose(context(curves_=PLATEAU))
    b = HeuristicExpert(seed=3).propose(context(curves_=PLATEAU))
    assert (a.text, a.move, a.rationale) == (b.text, b.move, b.rationale)


def test_nothing_sensible_left_raises_no_more_moves() -> None:
    # Digits cannot be flipped and have no shift augmentation: no test-time augmentation fits.
    with pytest.raises(NoMoreMoves):
        HeuristicExpert().propose(context(block="eval", curves_=PLATEAU))


def test_a_refused_reply_is_not_sent_again_on_retry() -> None:
    expert = HeuristicExpert()
    first = expert.propose(context())
    retry = expert.propose(context(feedback="error: ...", previous_reply=first.raw))
    assert retry.move != first.move


def test_all_at_once_rewrites_every_block_in_one_valid_edit() -> None:
    blocks = registry.REFINABLE_BLOCKS
    proposal = HeuristicExpert().propose(context(blocks=blocks))
    assert {b.kind for b in syntax.parse(proposal.text).blocks} == set(blocks)
    merged = edit.apply_edit(DIGITS, "d.imp", blocks, proposal.text, check_shapes=True)
    assert len(diff.changed_blocks(DIGITS, merged)) >= 2
    assert "+" in proposal.move


def test_heuristic_has_no_analyst() -> None:
    assert HeuristicExpert().select(context(), ["train", "model"]) is None


# ---------------------------------------------------------------- selection

REFINABLE = registry.REFINABLE_BLOCKS


@pytest.mark.parametrize(
    ("curves_", "block"),
    [
        (OVERFIT, "augment"),
        (UNSTABLE, "train"),
        (UNDERFIT_SLOW, "train"),
        (curves([2.0, 1.95, 1.94], [2.0, 1.96, 1.95], [0.3, 0.31, 0.31]), "model"),
    ],
)
def test_diagnose_points_at_the_right_block(curves_: list[dict[str, Any]], block: str) -> None:
    choice = by_diagnosis(diagnose(curves_, "val_accuracy"), [], REFINABLE)
    assert choice is not None and choice.block == block


def test_diagnose_alternates_and_skips_failed_and_exhausted_blocks() -> None:
    diagnosis = diagnose(OVERFIT, "val_accuracy")
    after_accept = [attempt(1, "augment", "accepted", "a")]
    choice = by_diagnosis(diagnosis, after_accept, REFINABLE)
    assert choice is not None and choice.block == "model"  # augment just had its turn
    failed = [*after_accept, attempt(2, "model", "rejected", "m")]
    choice = by_diagnosis(diagnosis, failed, REFINABLE)
    assert choice is not None and choice.block == "augment"
    choice = by_diagnosis(diagnosis, failed, REFINABLE, exhausted={"augment"})
    assert choice is not None and choice.block == "train"
    assert by_diagnosis(diagnosis, [], REFINABLE, exhausted=set(REFINABLE)) is None


def test_round_robin_cycles_through_refinable_blocks() -> None:
    order = []
    history: list[Attempt] = []
    for i in range(len(REFINABLE) + 1):
        choice = round_robin(history, REFINABLE)
        assert choice is not None
        order.append(choice.block)
        history.append(attempt(i + 1, choice.block, "rejected", ""))
    assert order == [*REFINABLE, REFINABLE[0]]


class _Analyst:
    name = "analyst"

    def __init__(self, answer: str | None) -> None:
        self.answer = answer

    def propose(self, context: Context) -> Any:
        raise NotImplementedError

    def select(self, context: Context, candidates: Sequence[str]) -> Selection | None:
        return None if self.answer is None else Selection(self.answer, "because", tokens=7)


def test_the_analyst_decides_and_the_rules_step_in_when_it_cannot() -> None:
    ctx = context(curves_=OVERFIT, blocks=())
    chosen = choose_block("analyst", _Analyst("eval"), ctx, REFINABLE)
    assert chosen is not None and (chosen.block, chosen.selector, chosen.tokens) == (
        "eval",
        "analyst",
        7,
    )
    fallback = choose_block("analyst", _Analyst(None), ctx, REFINABLE)
    assert fallback is not None and (fallback.block, fallback.selector) == ("augment", "diagnose")
    wrong = choose_block("analyst", _Analyst("eval"), ctx, REFINABLE, exhausted={"eval"})
    assert wrong is not None and wrong.block == "augment" and "cannot be chosen" in wrong.reason


def test_nan_curves_do_not_break_the_diagnosis() -> None:
    diagnosis = diagnose(curves([float("nan")], [float("nan")], [math.nan]), "val_accuracy")
    assert diagnosis.kind == "unstable"
