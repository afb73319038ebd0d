"""Strict reply handling: extracting blocks from replies and merging them into a spec."""

from __future__ import annotations

from pathlib import Path

import lark
import pytest

from improve_dsl import grammar_export, syntax, validate
from improve_dsl.diagnostics import DiagnosticError
from improve_dsl.refine.reply import (
    EditError,
    apply_edit,
    editable_view,
    extract_blocks,
    feedback_for,
    rationale_of,
)

ROOT = Path(__file__).resolve().parents[1]
SPEC_PATH = "specs/digits.imp"
SPEC = (ROOT / SPEC_PATH).read_text(encoding="utf-8")

NEW_TRAIN = """\
train {  # why: more epochs and momentum
  epochs = 12
  optimizer = sgd(lr = 0.05, momentum = 0.9, nesterov = true, weight_decay = 0.0005)
  schedule = cosine()
}
"""


def block_texts(text: str) -> dict[str, str]:
    """Each block's exact source lines (with the comments just above it)."""
    ast = syntax.parse(text, "x")
    lines = text.splitlines()
    out: dict[str, str] = {}
    start = 1
    for block in ast.blocks:
        out[block.kind] = "\n".join(lines[start - 1 : block.end_line])
        start = block.end_line + 1
    return out


# ---------------------------------------------------------------- editable_view


def test_editable_view_hides_locked_fields_and_comments() -> None:
    view = editable_view(SPEC, "data")
    assert view == "data {\n  batch_size = 64\n}"
    assert "source" not in view and "validation" not in view


def test_editable_view_of_a_missing_block_is_empty() -> None:
    spec = SPEC.replace("eval {\n  tta = []\n}\n", "")
    assert "eval" not in spec
    assert editable_view(spec, "eval") == "eval {\n}"


# ---------------------------------------------------------------- extract_blocks


def test_extract_accepts_a_bare_block() -> None:
    assert extract_blocks(NEW_TRAIN, ["train"]) == NEW_TRAIN


def test_extract_accepts_one_fence_and_ignores_prose_outside_it() -> None:
    reply = f"I raised the epochs.\n\n```imp\n{NEW_TRAIN}```\nThat should help."
    assert extract_blocks(reply, ["train"]) == NEW_TRAIN
    assert rationale_of(reply, ["train"]) == "I raised the epochs. That should help."


def test_extract_accepts_a_plain_fence_and_leading_comments() -> None:
    reply = f"```\n# longer training\n{NEW_TRAIN}```"
    assert extract_blocks(reply, ["train"]).startswith("# longer training\ntrain {")
    assert rationale_of(reply, ["train"]) == "longer training why: more epochs and momentum"


def test_extract_several_blocks_for_all_at_once() -> None:
    reply = "model {\n  arch = mlp(width = 64)\n}\n\n" + NEW_TRAIN
    assert extract_blocks(reply, ["model", "train"]) == reply


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("", "the reply is empty; send only the `train` block; the other blocks are unchanged"),
        (
            f"Sure! Here is the block:\n{NEW_TRAIN}",
            "the reply has text before the block that is not .imp: 'Sure! Here is the block:'",
        ),
        (
            f"{NEW_TRAIN}This should raise accuracy.",
            "the reply has text after the block that is not .imp: 'This should raise accuracy.'",
        ),
        (NEW_TRAIN + NEW_TRAIN, "the reply holds block 'train' 2 times"),
        ("model {\n  arch = mlp()\n}", "the reply holds block 'model', but 'train' was asked for"),
        (
            "def train(model):\n    return model.fit()\n",
            "the reply is not .imp text (no block, only 'def train(model): return model.fit()')",
        ),
        ("train {\n  epochs = 12\n", "block 'train' in the reply is never closed; add '}'"),
        (f"```imp\n{NEW_TRAIN}", "the reply opens a ``` code fence that is never closed"),
        (f"```imp\n{NEW_TRAIN}```\n```imp\n{NEW_TRAIN}```", "the reply has 2 code fences"),
    ],
    ids=[
        "empty",
        "prose-before",
        "prose-after",
        "twice",
        "wrong",
        "python",
        "unclosed",
        "open-fence",
        "two-fences",
    ],
)
def test_extract_refuses_bad_replies_and_says_what_to_send(reply: str, message: str) -> None:
    with pytest.raises(EditError) as info:
        extract_blocks(reply, ["train"])
    assert message in str(info.value)
    assert str(info.value).endswith("send only the `train` block; the other blocks are unchanged")
    assert info.value.raw == reply


def test_extract_names_a_missing_block_of_several() -> None:
    with pytest.raises(
        EditError, match="the reply has no 'train' block; send only the `model` and"
    ):
        extract_blocks("model {\n}\n", ["model", "train"])


def test_braces_in_strings_and_comments_do_not_confuse_the_scan() -> None:
    reply = "train {  # a } in a comment\n  epochs = 3\n}\n"
    assert extract_blocks(reply, ["train"]) == reply


# ---------------------------------------------------------------- apply_edit


def test_apply_changes_only_the_requested_block() -> None:
    new = apply_edit(SPEC, SPEC_PATH, ["train"], NEW_TRAIN)
    before, after = block_texts(SPEC), block_texts(new)
    assert before.keys() == after.keys()
    for kind in before:
        if kind != "train":
            assert after[kind] == before[kind], kind
    assert "epochs = 12" in after["train"]
    assert "# why: more epochs and momentum" in after["train"]
    spec = validate.load_text(new, SPEC_PATH)
    assert spec.train.epochs == 12 and spec.train.schedule.name == "cosine"


def test_apply_puts_back_locked_fields_with_their_comments() -> None:
    new = apply_edit(SPEC, SPEC_PATH, ["data"], "data {\n  batch_size = 32\n}")
    data = block_texts(new)["data"]
    assert "source = digits()  # locked: refinement never changes the data or the split" in data
    assert "validation = holdout(fraction = 0.2)" in data
    assert validate.load_text(new, SPEC_PATH).data.batch_size == 32
    assert {k: v for k, v in block_texts(new).items() if k != "data"} == {
        k: v for k, v in block_texts(SPEC).items() if k != "data"
    }


def test_apply_handles_a_one_line_block_with_locked_fields() -> None:
    new = apply_edit(SPEC, SPEC_PATH, ["data"], "data { batch_size = 16 }")
    assert validate.load_text(new, SPEC_PATH).data.batch_size == 16
    assert "source = digits()" in block_texts(new)["data"]


def test_apply_adds_a_block_the_spec_lacks_in_its_usual_place() -> None:
    spec = SPEC.replace("augment {\n  ops = []\n}\n\n", "")
    new = apply_edit(spec, SPEC_PATH, ["augment"], "augment {\n  ops = [translate(pixels = 1)]\n}")
    assert list(block_texts(new)) == ["pipeline", "data", "augment", "model", "train", "eval"]
    assert validate.load_text(new, SPEC_PATH).augment.ops[0].name == "translate"


def test_apply_several_blocks_at_once() -> None:
    reply = "model {\n  arch = mlp(width = 64, depth = 2)\n}\n" + NEW_TRAIN
    new = apply_edit(SPEC, SPEC_PATH, ["model", "train"], reply)
    spec = validate.load_text(new, SPEC_PATH)
    assert spec.model.arch is not None and spec.model.arch["width"] == 64
    assert spec.train.epochs == 12
    assert block_texts(new)["augment"] == block_texts(SPEC)["augment"]


def test_a_locked_field_is_refused_by_name() -> None:
    with pytest.raises(DiagnosticError) as info:
        apply_edit(SPEC, SPEC_PATH, ["data"], "data {\n  source = mnist()\n  batch_size = 32\n}")
    feedback = feedback_for(info.value)
    assert (
        "<reply>:2:3: error: 'source' in block 'data' is locked: refinement never changes it"
        in feedback
    )
    assert "2 |   source = mnist()" in feedback
    assert feedback.endswith(
        "nothing was applied: the spec is unchanged; fix the reply and send only the `data` "
        "block; the other blocks are unchanged"
    )


def test_the_wrong_or_duplicate_block_is_refused_with_its_position() -> None:
    with pytest.raises(DiagnosticError) as info:
        apply_edit(SPEC, SPEC_PATH, ["train"], "model {\n}\n")
    text = feedback_for(info.value)
    assert "<reply>:1:1: error: block 'model' was not asked for (only 'train')" in text
    assert "error: the reply has no 'train' block" in text
    with pytest.raises(DiagnosticError, match="block 'train' appears twice in the reply"):
        apply_edit(SPEC, SPEC_PATH, ["train"], NEW_TRAIN + NEW_TRAIN)


def test_a_syntax_error_in_the_reply_is_located_in_the_reply() -> None:
    with pytest.raises(DiagnosticError) as info:
        apply_edit(SPEC, SPEC_PATH, ["train"], "train {\n  epochs = = 3\n}")
    assert feedback_for(info.value).startswith("<reply>:2:12: error: unexpected '='")


def test_validation_errors_are_reported_as_a_user_sees_them() -> None:
    reply = "train {\n  epochs = 3000\n  optimiser = sgd()\n}"
    with pytest.raises(DiagnosticError) as info:
        apply_edit(SPEC, SPEC_PATH, ["train"], reply)
    feedback = feedback_for(info.value)
    # Located in the merged spec, exactly as `improve check` would show them.
    assert f"{SPEC_PATH}:" in feedback
    assert "error: field 'epochs' must be at most 1000, not 3000" in feedback
    assert "error: unknown field 'optimiser' in block 'train'" in feedback
    assert "hint: did you mean 'optimizer'?" in feedback
    assert "the spec is unchanged" in feedback


def test_an_unchanged_block_is_refused() -> None:
    same = editable_view(SPEC, "train")
    with pytest.raises(EditError, match="the proposal leaves `train` exactly as it is"):
        apply_edit(SPEC, SPEC_PATH, ["train"], same)


def test_only_refinable_blocks_can_be_requested() -> None:
    with pytest.raises(ValueError, match="not refinable"):
        apply_edit(SPEC, SPEC_PATH, ["pipeline"], "pipeline x {\n}")


def test_an_indented_block_from_a_reply_lands_canonical() -> None:
    reply = "    train {\n        epochs = 7\n    }\n"
    new = apply_edit(SPEC, SPEC_PATH, ["train"], reply)
    assert "train {\n  epochs = 7\n}" in new


@pytest.mark.parametrize("block", ["data", "augment", "model", "train", "eval"])
def test_what_an_expert_sees_is_expressible_in_its_grammar(block: str) -> None:
    # A grammar-constrained expert must be able to send back the block it was shown.
    parser = lark.Lark(grammar_export.block_grammar(block, "lark"), parser="earley")
    parser.parse(editable_view(SPEC, block) + "\n")


def test_a_reason_comment_on_the_first_line_is_in_the_grammar() -> None:
    parser = lark.Lark(grammar_export.block_grammar("train", "lark"), parser="earley")
    parser.parse(NEW_TRAIN)


def test_compile_time_checks_refuse_a_model_that_does_not_fit_the_data() -> None:
    pytest.importorskip("improve_dsl.compiler")
    pytest.importorskip("improve_dsl.check")  # the meta-device model check
    # Digits are 8x8: three 2x2 poolings leave nothing to pool the fourth time.
    reply = "model {\n  layers = [conv(out = 8), " + ", ".join(["max_pool(size = 2)"] * 4) + "]\n}"
    new = apply_edit(SPEC, SPEC_PATH, ["model"], reply)  # valid without the shape check
    assert "max_pool" in new
    with pytest.raises(DiagnosticError) as info:
        apply_edit(SPEC, SPEC_PATH, ["model"], reply, check_shapes=True)
    feedback = feedback_for(info.value)
    assert "specs/digits.imp:19:3: error: the model does not fit 1x8x8 images" in feedback
    assert "the spec is unchanged" in feedback
