"""The replay expert: proposals from a file, in order, then NoMoreMoves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from improve_dsl import validate
from improve_dsl.refine.experts.base import Context, ExpertError, NoMoreMoves
from improve_dsl.refine.experts.replay import ReplayExpert
from improve_dsl.refine.reply import apply_edit

ROOT = Path(__file__).resolve().parents[1]
SPEC_PATH = "specs/digits.imp"
SPEC = (ROOT / SPEC_PATH).read_text(encoding="utf-8")


def context(*blocks: str) -> Context:
    return Context(SPEC, SPEC_PATH, tuple(blocks), "digits", "val_accuracy", 0.8, [], [])


def test_jsonl_proposals_come_in_order_per_block_then_run_out(tmp_path: Path) -> None:
    path = tmp_path / "moves.jsonl"
    lines = [
        {"block": "train", "text": "train {\n  epochs = 8\n}\n", "rationale": "longer"},
        {"block": "model", "text": "model {\n  arch = mlp(width = 64)\n}\n", "rationale": "wider"},
        {"text": "train {\n  epochs = 16\n}\n", "rationale": "longer still"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    expert = ReplayExpert(path)
    assert expert.name == f"replay:{path}"

    first = expert.propose(context("train"))
    assert (first.text, first.rationale) == ("train {\n  epochs = 8\n}\n", "longer")
    assert first.move == f"replay:{path}:1"
    new = apply_edit(SPEC, SPEC_PATH, ["train"], first.text)
    assert validate.load_text(new, SPEC_PATH).train.epochs == 8

    assert expert.propose(context("train")).rationale == "longer still"
    with pytest.raises(NoMoreMoves, match="no proposal left for train"):
        expert.propose(context("train"))
    assert expert.propose(context("model")).rationale == "wider"
    assert expert.remaining() == 0


def test_select_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "moves.jsonl"
    path.write_text(
        json.dumps({"block": "augment", "text": "augment {\n  ops = [translate()]\n}"})
        + "\n"
        + json.dumps({"block": "train", "text": "train {\n  epochs = 5\n}"})
        + "\n"
    )
    expert = ReplayExpert(path)
    candidates = ["augment", "model", "train", "eval"]
    selection = expert.select(context("augment"), candidates)
    assert selection is not None and selection.block == "augment"
    expert.propose(context("augment"))
    selection = expert.select(context("train"), candidates)
    assert selection is not None and selection.block == "train"
    expert.propose(context("train"))
    assert expert.select(context("train"), candidates) is None


def test_an_imp_file_with_separators_and_comments_as_rationale(tmp_path: Path) -> None:
    path = tmp_path / "moves.imp"
    path.write_text(
        "# add flips\naugment {\n  ops = [horizontal_flip()]\n}\n---\n"
        "# wider and longer, together\nmodel {\n  arch = mlp(width = 128)\n}\n"
        "train {\n  epochs = 10\n}\n"
    )
    expert = ReplayExpert(path)
    first = expert.propose(context("augment"))
    assert first.rationale == "add flips" and first.text.startswith("# add flips\naugment {")
    both = expert.propose(context("model", "train"))
    assert both.rationale == "wider and longer, together"
    assert both.move == f"replay:{path}:6"
    new = apply_edit(SPEC, SPEC_PATH, ["model", "train"], both.text)
    assert validate.load_text(new, SPEC_PATH).train.epochs == 10


def test_an_imp_file_without_separators_is_one_proposal_per_block(tmp_path: Path) -> None:
    path = tmp_path / "moves.imp"
    path.write_text("train {\n  epochs = 6\n}\n\n# more\ntrain {\n  epochs = 9\n}\n")
    expert = ReplayExpert(path)
    assert expert.propose(context("train")).text == "train {\n  epochs = 6\n}\n"
    second = expert.propose(context("train"))
    assert second.text == "# more\ntrain {\n  epochs = 9\n}\n" and second.rationale == "more"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"block": "train", "text": \n', r"bad.jsonl:1: not a JSON object"),
        ("bad.jsonl", '{"block": "train"}\n', r"bad.jsonl:1: expected \{\"block\""),
        (
            "bad.jsonl",
            '{"block": "pipeline", "text": "pipeline x {\\n}"}\n',
            "'pipeline' is not a refinable block",
        ),
        ("bad.imp", "train {\n  epochs = \n", "bad.imp: the replay file does not parse"),
        ("empty.imp", "# nothing here\n", "holds no proposal"),
    ],
)
def test_a_bad_replay_file_is_a_clear_message(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ExpertError, match=message):
        ReplayExpert(path)


def test_a_missing_replay_file_is_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ExpertError, match="cannot read the replay file: No such file"):
        ReplayExpert(tmp_path / "nope.jsonl")
