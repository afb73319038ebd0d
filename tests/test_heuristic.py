"""The heuristic expert, the curve diagnosis and block selection (no training here)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import slow_except

from improve_dsl import diff, registry, syntax, validate
from improve_dsl.journal import sha256_text
from improve_dsl.refine import reply
from improve_dsl.refine.curves import diagnose
from improve_dsl.refine.experts.base import Attempt, Context, NoMoreMoves, Selection
from improve_dsl.refine.experts.heuristic import recipes
from improve_dsl.refine.experts.heuristic.expert import (
    MOVE_MAKERS,
    HeuristicExpert,
    apply_changes,
    data_info,
)
from improve_dsl.refine.select import by_diagnosis, choose_block, round_robin

REFINABLE = registry.REFINABLE_BLOCKS
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
    return Attempt(
        iteration=iteration,
        block=block,
        status=status,
        metric=0.5,
        incumbent_metric=0.6,
        diff="",
        rationale="",
        move=move,
    )


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


def region(history: Sequence[Attempt] = ()) -> Any:
    return HeuristicExpert._regions(history)


# The default spec on the fast tier; each spec's model moves check shapes (a render each).
@pytest.mark.parametrize(
    "spec_name",
    slow_except(["digits.imp", "cifar10.imp", "fashion_mnist_quick.imp"], "digits.imp"),
)
def test_every_move_is_a_valid_edit_of_its_block_only(spec_name: str) -> None:
    text = (SPECS / spec_name).read_text()
    spec = validate.load_text(text, spec_name)
    info = data_info(spec)
    count = 0
    for block, maker in MOVE_MAKERS.items():
        for move in maker(spec, info, region()):
            proposal = apply_changes(text, block, move.changes)
            for field_name in reply.locked_fields(block):
                assert f"{field_name} =" not in proposal, move.id
            # Only model moves can break shapes; the meta-device check costs a second each.
            merged = reply.apply_edit(
                text, spec_name, (block,), proposal, check_shapes=block == "model"
            )
            assert diff.changed_blocks(text, merged) == [block], move.id
            count += 1
    assert count >= 12


def test_flips_only_where_mirrored_images_keep_their_class() -> None:
    digits = validate.load_text(DIGITS, "d.imp")
    fashion = validate.load_text(DIGITS.replace("digits()", "fashion_mnist()"), "f.imp")
    digit_moves = {m.id: m for m in MOVE_MAKERS["augment"](digits, data_info(digits), region())}
    fashion_moves = {m.id: m for m in MOVE_MAKERS["augment"](fashion, data_info(fashion), region())}
    assert "horizontal_flip" not in str(digit_moves["augment.recipe"].changes)
    assert "augment.rotation" in digit_moves
    assert "horizontal_flip" in str(fashion_moves["augment.recipe"].changes)
    # 8x8 digits get a 1-pixel shift, not a crop that would cut a digit in half.
    assert "translate(pixels = 1)" in str(digit_moves["augment.recipe"].changes["ops"])
    assert "random_crop(padding = 2)" in str(fashion_moves["augment.recipe"].changes["ops"])


def test_a_weak_train_block_gets_the_recipe_sized_to_the_data() -> None:
    proposal = HeuristicExpert().propose(context())
    assert proposal.move == "train.recipe"
    assert proposal.text.startswith("train {")
    # Digits: 1,150 training images at batch 64 = 17 steps per epoch; about 380 steps.
    assert "epochs = 23" in proposal.text
    assert "sgd(lr = 0.025, momentum = 0.9, nesterov = true, weight_decay = 0.0005)" in (
        proposal.text
    )
    assert "one_cycle(warmup = 0.2)" in proposal.text and "label_smoothing = 0.1" in proposal.text
    assert "plain SGD without momentum" in proposal.rationale
    assert "(Diagnosis: slow; " in proposal.rationale


def test_recipes_scale_with_the_batch_and_the_data() -> None:
    small = data_info(validate.load_text(DIGITS, "d.imp"))
    big = data_info(validate.load_text(DIGITS.replace("digits()", "fashion_mnist()"), "f.imp"))
    assert recipes.sgd_lr(512) == 2 * recipes.sgd_lr(256) == 0.2
    assert recipes.target_steps(small) < recipes.target_steps(big) <= 3000
    assert recipes.epochs_for(big, 256) < recipes.epochs_for(small, 64)
    assert recipes.model_recipe(small).startswith("cnn(channels = [32, 64]")
    assert recipes.model_recipe(big).startswith("resnet(depth = 8")


def test_an_mlp_becomes_a_cnn_sized_to_the_images() -> None:
    proposal = HeuristicExpert().propose(context(block="model"))
    assert proposal.move == "model.recipe@mlp"
    assert "cnn(channels = [32, 64]" in proposal.text and "batch_norm = true" in proposal.text


@pytest.mark.parametrize(
    ("block", "curves_", "expected"),
    [
        ("augment", OVERFIT, "augment.recipe"),
        ("model", OVERFIT, "model.dropout:up"),
        ("train", UNSTABLE, "train.lr:down*2"),
    ],
)
def test_the_move_answers_the_diagnosis(
    block: str, curves_: list[dict[str, Any]], expected: str
) -> None:
    text = DIGITS.replace("mlp(width = 32, depth = 1)", "cnn(channels = [32, 64])")
    text = text.replace(
        "sgd(lr = 0.01, momentum = 0.0, nesterov = false, weight_decay = 0.0)",
        "sgd(lr = 0.025, momentum = 0.9, nesterov = true, weight_decay = 0.0005)",
    )
    text = text.replace("constant()", "one_cycle()").replace("epochs = 4", "epochs = 18")
    move = HeuristicExpert().propose(context(text, block=block, curves_=curves_)).move
    assert move == expected


def test_the_expert_chooses_the_block_of_its_best_move() -> None:
    expert = HeuristicExpert()
    selection = expert.select(context(blocks=()), REFINABLE)
    assert selection is not None and selection.block == "train"
    assert "train.recipe" in selection.reason
    # Once the train block is the recipe, the MLP is the largest shortfall.
    history = [attempt(1, "train", "accepted", "train.recipe")]
    text = HeuristicExpert().propose(context()).text
    merged = reply.apply_edit(DIGITS, "d.imp", ("train",), text)
    selection = expert.select(context(merged, blocks=(), history=history), REFINABLE)
    assert selection is not None and selection.block == "model"
    assert expert.select(context(blocks=()), []) is None


def test_cost_is_counted_in_expected_seconds() -> None:
    # When runs take a minute, a recipe that trains 4.5x longer gives way to a cheap step of
    # equal promise; when they take a second, the start-up cost dominates and it does not.
    slow = [{**event, "seconds": 60.0 * event["epoch"]} for event in PLATEAU]
    fast = [{**event, "seconds": 0.2 * event["epoch"]} for event in PLATEAU]
    expert = HeuristicExpert()
    costly = {r.move.id: r for r in expert.ranked(context(curves_=slow), ("train",))}
    cheap = {r.move.id: r for r in expert.ranked(context(curves_=fast), ("train",))}
    ratio_slow = costly["train.recipe"].value / costly["train.lr:up*2"].value
    ratio_fast = cheap["train.recipe"].value / cheap["train.lr:up*2"].value
    assert ratio_slow < ratio_fast
    assert costly["train.recipe"].seconds > 200 > cheap["train.recipe"].seconds


def test_a_refused_move_returns_once_the_incumbent_changes() -> None:
    expert = HeuristicExpert()
    refused = [attempt(1, "train", "rejected", "train.recipe")]
    assert "train.recipe" not in [m.id for m in expert.moves(context(history=refused), "train")]
    moved_on = [*refused, attempt(2, "model", "accepted", "model.recipe@mlp")]
    assert "train.recipe" in [m.id for m in expert.moves(context(history=moved_on), "train")]


def test_move_ids_name_the_architecture_they_apply_to() -> None:
    cnn = DIGITS.replace("mlp(width = 32, depth = 1)", "cnn(channels = [32, 64])")
    refused = [attempt(1, "model", "rejected", "model.width@mlp:up*2")]
    ids = [m.id for m in HeuristicExpert().moves(context(cnn, history=refused), "model")]
    assert "model.width@cnn:up*2" in ids


def test_trust_regions_grow_after_a_kept_step_and_shrink_after_a_refused_one() -> None:
    start = region()("train.lr")
    assert start.factor == 2.0 and start.preferred == ""
    grown = region([attempt(1, "train", "accepted", "train.lr:down*2")])("train.lr")
    assert grown.factor == 4.0 and grown.preferred == "down"
    assert grown.steps()[0] == ("down", 0.25)
    # A step back is smaller, so it never lands on the spec the kept step left.
    assert grown.steps()[1] == ("up", pytest.approx(2**0.5))
    shrunk = region([attempt(1, "train", "rejected", "train.lr:up*2")])("train.lr")
    assert shrunk.factor == pytest.approx(2**0.5)
    # After a refusal the other direction is still open, and the smaller step is a new move.
    ids = [
        m.id
        for m in HeuristicExpert().moves(
            context(history=[attempt(1, "train", "rejected", "train.lr:up*2")]), "train"
        )
    ]
    assert "train.lr:up*1.41" in ids and "train.lr:down*1.41" in ids
    assert "train.lr:up*2" not in ids


def test_a_move_whose_spec_was_already_trained_is_skipped() -> None:
    expert = HeuristicExpert()
    first = expert.propose(context())
    merged = reply.apply_edit(DIGITS, "d.imp", ("train",), first.text)
    again = expert.propose(context(tried=frozenset({sha256_text(merged)})))
    assert again.move != first.move


def test_a_recipe_is_applied_once() -> None:
    history = [attempt(1, "train", "accepted", "train.recipe")]
    assert "train.recipe" not in [
        m.id for m in HeuristicExpert().moves(context(history=history), "train")
    ]


def test_the_selected_move_is_the_proposed_move() -> None:
    # Moves of equal promise (a learning-rate step up or down) must keep their order whether
    # all blocks are ranked (select) or only the chosen one (propose).
    for seed in range(8):
        expert = HeuristicExpert(seed=seed)
        ctx = context(curves_=PLATEAU, blocks=())
        every = [r.move.id for r in expert.ranked(ctx, REFINABLE) if r.move.block == "train"]
        assert every == [r.move.id for r in expert.ranked(ctx, ("train",))], seed


def test_a_perfect_validation_score_still_gets_proposals() -> None:
    perfect = Context(DIGITS, "spec.imp", (), "", "val_accuracy", 1.0, list(PLATEAU), [])
    assert HeuristicExpert().select(perfect, REFINABLE) is not None


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
    merged = reply.apply_edit(DIGITS, "d.imp", blocks, proposal.text, check_shapes=True)
    assert len(diff.changed_blocks(DIGITS, merged)) >= 2
    assert "+" in proposal.move


# ---------------------------------------------------------------- selection


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
