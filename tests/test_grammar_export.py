"""The per-block LLM grammars: they accept real blocks and refuse locked fields and unknown ops."""

from __future__ import annotations

import re
from pathlib import Path

import lark
import pytest

from improve_dsl import cli, registry
from improve_dsl.fmt import print_block
from improve_dsl.grammar_export import block_grammar, blocks_grammar
from improve_dsl.syntax import parse

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.imp"))
BLOCKS = registry.REFINABLE_BLOCKS


def _parser(grammar: str) -> lark.Lark:
    return lark.Lark(grammar, parser="earley", lexer="dynamic")


def _editable(block: registry.BlockSpec, spec: Path) -> str:
    for node in parse(spec.read_text(), str(spec)).blocks:
        if node.kind == block.name:
            return print_block(node, skip_fields=[f.name for f in block.fields if f.locked])
    pytest.skip(f"{spec.name} has no {block.name} block")


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
@pytest.mark.parametrize("name", BLOCKS)
def test_block_grammar_accepts_each_example_block(spec: Path, name: str) -> None:
    _parser(block_grammar(name)).parse(_editable(registry.block(name), spec))


def test_data_grammar_refuses_locked_fields() -> None:
    parser = _parser(block_grammar("data"))
    parser.parse("data {\n  batch_size = 64\n}\n")
    for locked in ("source = digits()", "validation = holdout(fraction = 0.5)"):
        with pytest.raises(lark.exceptions.UnexpectedInput):
            parser.parse(f"data {{\n  {locked}\n}}\n")
    assert "source" not in block_grammar("data")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("augment", "augment {\n  ops = [shear(degrees = 3)]\n}\n"),
        ("train", "train {\n  optimizer = lamb(lr = 0.1)\n}\n"),
        ("model", "model {\n  arch = vit()\n}\n"),
        ("train", "train {\n  optimizer = sgd(learning_rate = 0.1)\n}\n"),
        ("train", "model {\n  arch = mlp()\n}\n"),
        ("train", "train {\n  epochs = 3\n}\nmodel {\n  arch = mlp()\n}\n"),
        ("train", "Here you go:\ntrain {\n  epochs = 3\n}\n"),
        ("train", "train {\n  epochs = __import__('os')\n}\n"),
    ],
)
def test_block_grammar_refuses_unknown_ops_and_other_text(name: str, text: str) -> None:
    with pytest.raises(lark.exceptions.UnexpectedInput):
        _parser(block_grammar(name)).parse(text)


def test_all_blocks_grammar_accepts_every_refinable_block_in_order() -> None:
    spec = ROOT / "specs" / "digits.imp"
    text = "\n".join(_editable(registry.block(b), spec) for b in BLOCKS)
    _parser(blocks_grammar(list(BLOCKS))).parse(text)


@pytest.mark.parametrize("name", BLOCKS)
def test_lark_output_stays_in_the_subset_openai_accepts(name: str) -> None:
    grammar = block_grammar(name)
    assert "%import" not in grammar and "%ignore" not in grammar and "%declare" not in grammar
    assert "(?=" not in grammar and "(?!" not in grammar and "(?<" not in grammar
    assert not re.search(r"^[A-Z_]+\.\d+\s*:", grammar, re.MULTILINE)  # no priorities
    assert not re.search(r"[*+?]\?", grammar.replace('"?"', ""))  # no lazy quantifiers


_GBNF_TOKEN = re.compile(
    r'(?P<string>"(\\.|[^"\\])*")'
    r"|(?P<cls>\[(\\.|[^\]\\])*\])(?P<rep>\{(?P<lo>\d+),(?P<hi>\d+)\})?"
    r"|(?P<name>[a-z][a-z0-9-]*)"
    r"|(?P<other>\S)"
)


def _gbnf_to_lark(gbnf: str) -> str:
    """Translate our GBNF output back to Lark, to parse with lark itself."""
    out = []
    for line in gbnf.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, body = line.partition(" ::= ")
        parts = []
        for m in _GBNF_TOKEN.finditer(body):
            if m.group("string"):
                parts.append(m.group("string"))
            elif m.group("cls"):
                lo, hi = m.group("lo"), m.group("hi")
                if lo is None:
                    parts.append(f"/{m.group('cls')}/")
                elif lo == "0":
                    parts.append(f"(/{m.group('cls')}{{1,{hi}}}/)?")
                else:
                    parts.append(f"/{m.group('cls')}{{{lo},{hi}}}/")
            elif m.group("name"):
                parts.append(m.group("name").replace("-", "_"))
            else:
                parts.append(m.group("other"))
        out.append(f"{name.replace('-', '_')}: {' '.join(parts)}")
    return "\n".join(out).replace("root:", "start:") + "\n"


@pytest.mark.parametrize("name", BLOCKS)
def test_gbnf_export_is_well_formed_and_equivalent(name: str) -> None:
    gbnf = block_grammar(name, "gbnf")
    assert gbnf.count("root ::=") == 1
    defined = {line.split(" ::= ")[0] for line in gbnf.splitlines() if " ::= " in line}
    bodies = " ".join(line.split(" ::= ")[1] for line in gbnf.splitlines() if " ::= " in line)
    used = set(
        re.findall(
            r"(?<![\w\"\[\\-])([a-z][a-z0-9-]*)(?![\w\"\]])",
            re.sub(r'"(\\.|[^"\\])*"', "", re.sub(r"\[[^\]]*\]", "", bodies)),
        )
    )
    assert used <= defined, used - defined
    assert "_" not in "".join(defined)
    parser = _parser(_gbnf_to_lark(gbnf))
    parser.parse(_editable(registry.block(name), ROOT / "specs" / "digits.imp"))
    with pytest.raises(lark.exceptions.UnexpectedInput):
        parser.parse(f"{name} {{\n  bogus = 1\n}}\n")


def test_grammar_verb(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["grammar", "--block", "train"]) == 0
    assert capsys.readouterr().out == block_grammar("train")
    assert cli.main(["grammar", "--format", "gbnf"]) == 0
    assert "root ::=" in capsys.readouterr().out
