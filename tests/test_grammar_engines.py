"""The reply grammars under the real engines servers run: llguidance (OpenAI's custom-tool
grammars, Lark) and XGrammar (vLLM's and SGLang's default backend, GBNF).

Each grammar compiles, accepts the current block of every example spec and refuses what an
LLM must not send; and replies sampled from the engines' own byte masks are each accepted by
the reply parser or refused with a located diagnostic, never a traceback: the grammar and the
parser agree.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from grammar_engines import (
    GrammarEngineError,
    Matcher,
    accepts,
    llguidance_matcher,
    sample,
    xgrammar_matcher,
)

from improve_dsl import registry
from improve_dsl.diagnostics import DiagnosticError
from improve_dsl.fmt import print_block
from improve_dsl.grammar_export import block_grammar, blocks_grammar
from improve_dsl.refine.reply import REPLY_PATH, EditError, apply_edit, split_reply
from improve_dsl.syntax import parse

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.imp"))
BLOCKS = registry.REFINABLE_BLOCKS
SAMPLES_PER_ENGINE = 100  # per block: 100 from llguidance (Lark) + 100 from XGrammar (GBNF)


def _editable(block: str, spec: Path) -> str | None:
    locked = [f.name for f in registry.block(block).fields if f.locked]
    for node in parse(spec.read_text(), str(spec)).blocks:
        if node.kind == block:
            return print_block(node, skip_fields=locked)
    return None


def _engines(blocks: list[str]) -> list[Matcher]:
    return [
        llguidance_matcher(blocks_grammar(blocks, "lark"), "lark"),
        xgrammar_matcher(blocks_grammar(blocks, "gbnf")),
        llguidance_matcher(blocks_grammar(blocks, "gbnf"), "gbnf"),
    ]


@pytest.mark.parametrize("name", BLOCKS)
def test_each_grammar_compiles_and_accepts_every_example_block(name: str) -> None:
    matchers = _engines([name])
    checked = 0
    for spec in SPECS:
        text = _editable(name, spec)
        if text is None:
            continue
        for matcher in matchers:
            assert accepts(matcher, text), f"{matcher.engine} refused {spec.name}'s {name} block"
        checked += 1
    assert checked >= 1


def test_the_all_blocks_grammar_accepts_every_spec_in_order() -> None:
    matchers = _engines(list(BLOCKS))
    for spec in SPECS:
        texts = [_editable(b, spec) or f"{b} {{\n}}\n" for b in BLOCKS]
        for matcher in matchers:
            assert accepts(matcher, "\n".join(texts)), f"{matcher.engine}: {spec.name}"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("train", "model {\n  arch = mlp()\n}\n"),  # another block
        ("train", "train {\n  epochs = 3\n}\ntrain {\n  epochs = 4\n}\n"),  # two blocks
        ("train", "Here you go:\ntrain {\n  epochs = 3\n}\n"),  # prose
        ("train", "```imp\ntrain {\n  epochs = 3\n}\n```\n"),  # a code fence
        ("data", "data {\n  source = digits()\n}\n"),  # a locked field
        ("data", "data {\n  validation = holdout(fraction = 0.5)\n}\n"),  # a locked field
        ("train", "train {\n  epochs = 3\n"),  # never closed
        ("train", "train {\n  optimizer = lamb(lr = 0.1)\n}\n"),  # an unknown op
        ("train", "train {\n  epochs = __import__('os')\n}\n"),  # Python
    ],
    ids=[
        "other-block",
        "two-blocks",
        "prose",
        "fence",
        "locked-source",
        "locked-validation",
        "unclosed",
        "unknown-op",
        "python",
    ],
)
def test_each_engine_refuses_what_an_llm_must_not_send(name: str, text: str) -> None:
    for matcher in _engines([name]):
        assert not accepts(matcher, text), f"{matcher.engine} accepted {text!r}"


def test_an_engine_refuses_a_broken_grammar() -> None:
    with pytest.raises(GrammarEngineError):
        llguidance_matcher('start: "a" undefined_rule\n', "lark")
    with pytest.raises(GrammarEngineError):
        xgrammar_matcher('root ::= "a" undefined-rule\n')


def _verdict(reply: str, block: str, spec_text: str) -> str:
    """What the loop does with a reply: extract it, apply it, check it; 'accepted' or
    'refused'. A refusal must name where; anything else escaping is the test's failure."""
    text, prose = split_reply(reply, [block])  # grammar-valid: exactly one block, no prose
    assert prose == ""
    try:
        apply_edit(spec_text, "specs/digits.imp", [block], text)
    except DiagnosticError as exc:
        assert exc.diagnostics, reply
        for diagnostic in exc.diagnostics:
            assert diagnostic.span.line >= 1 and diagnostic.span.column >= 1, reply
            assert diagnostic.path in (REPLY_PATH, "specs/digits.imp"), reply
        assert "error:" in exc.render() and "^" in exc.render(), reply
        return "refused"
    except EditError as exc:
        assert "leaves `" in exc.message, reply  # the only unlocated refusal: no change
        return "unchanged"
    return "accepted"


@pytest.mark.slow
@pytest.mark.parametrize("name", BLOCKS)
def test_grammar_sampled_replies_are_accepted_or_refused_with_a_location(name: str) -> None:
    spec_text = (ROOT / "specs" / "digits.imp").read_text()
    lark, gbnf = (
        llguidance_matcher(block_grammar(name, "lark"), "lark"),
        xgrammar_matcher(block_grammar(name, "gbnf")),
    )
    verdicts: dict[str, int] = {}
    replies: list[str] = []
    for engine, offset in ((lark, 0), (gbnf, SAMPLES_PER_ENGINE)):
        for seed in range(offset, offset + SAMPLES_PER_ENGINE):
            reply = sample(engine, random.Random(seed))
            replies.append(reply)
            verdict = _verdict(reply, name, spec_text)
            verdicts[verdict] = verdicts.get(verdict, 0) + 1
    assert len(replies) >= 200 and len(set(replies)) > 150  # random, not one reply 200 times
    # The two exports describe one language: each engine accepts the other's replies.
    for reply in replies[:20]:
        assert accepts(gbnf, reply), reply
    for reply in replies[-20:]:
        assert accepts(lark, reply), reply
    # Both outcomes occur: the grammar does not over-constrain (some pass every check) and
    # validation still has work to do (ranges, shapes) that a context-free grammar cannot.
    assert verdicts.get("accepted", 0) > 0 and verdicts.get("refused", 0) > 0, verdicts
