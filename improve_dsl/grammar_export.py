"""The grammar an LLM is held to when rewriting blocks, generated from the registry.

The vocabulary is closed: only real field, op and parameter names can be produced, and
locked fields are absent. One description of the rules is written out two ways: Lark (the
subset OpenAI's grammar-constrained custom tools accept: no lookarounds, no terminal
priorities, no ``%import``) and GBNF (llama.cpp). Whitespace is explicit, never ``%ignore``d.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from . import registry
from .registry import BlockSpec, Choices, Component, FieldSpec, Param

GrammarFormat = Literal["lark", "gbnf"]


@dataclass(frozen=True)
class Lit:
    text: str


@dataclass(frozen=True)
class Ref:
    rule: str


@dataclass(frozen=True)
class Opt:
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Star:
    items: tuple[Item, ...]


Item = Lit | Ref | Opt | Star
Alternative = tuple[Item, ...]

# Terminals, bounded, in both syntaxes.
_TERMINALS: dict[str, tuple[str, str]] = {
    "INT": ("/[0-9]{1,10}/", "[0-9]{1,10}"),
    "NUMBER": (
        r"/([0-9]{1,10}(\.[0-9]{0,10})?|\.[0-9]{1,10})([eE][-+]?[0-9]{1,3})?/",
        r'([0-9]{1,10} ("." [0-9]{0,10})? | "." [0-9]{1,10}) ([eE] [-+]? [0-9]{1,3})?',
    ),
    "STRING": (
        r'/"([^"\\\r\n]|\\["\\nrt0]){0,300}"/',
        r'"\"" ([^"\\\r\n] | "\\" ["\\nrt0]){0,300} "\""',
    ),
    "INDENT": ("/[ \\t]{1,8}/", "[ \\t]{1,8}"),
    "NL": (
        "/[ \\t]{0,8}(#[^\\r\\n]{0,200})?\\r?\\n/",
        '[ \\t]{0,8} ("#" [^\\r\\n]{0,200})? "\\r"? "\\n"',
    ),
}


class _Builder:
    def __init__(self) -> None:
        self.rules: dict[str, list[Alternative]] = {}
        self.used_terminals: set[str] = set()

    def term(self, name: str) -> Ref:
        self.used_terminals.add(name)
        return Ref(name)

    def eq(self) -> Alternative:
        return (Opt((Lit(" "),)), Lit("="), Opt((Lit(" "),)))

    def comma(self) -> Alternative:
        return (Lit(","), Opt((Lit(" "),)))

    def listing(self, element: Item) -> Alternative:
        return (Lit("["), Opt((element, Star((*self.comma(), element)))), Lit("]"))

    def scalar(self, kind: str, choices: Choices) -> list[Alternative]:
        if choices:
            return [(Lit(str(c)),) for c in choices]
        if kind == "int":
            return [(self.term("INT"),)]
        if kind == "float":
            return [(self.term("NUMBER"),)]
        if kind == "bool":
            return [(Lit("true"),), (Lit("false"),)]
        if kind == "str":
            return [(self.term("STRING"),)]
        if kind == "int_list":
            return [self.listing(self.term("INT"))]
        raise ValueError(kind)

    def param_value(self, comp: Component, param: Param) -> list[Alternative]:
        alts = self.scalar(param.kind, param.choices)
        if param.optional:
            alts.append((Lit("none"),))
        return alts

    def component(self, comp: Component) -> str:
        rule = f"{comp.category}_{comp.name}"
        if rule in self.rules:
            return rule
        self.rules[rule] = []  # reserve: avoid recursion
        if comp.params:
            arg_rule = f"{rule}_arg"
            self.rules[arg_rule] = [
                (Lit(p.name), *self.eq(), *alt)
                for p in comp.params
                for alt in self.param_value(comp, p)
            ]
            args = Opt((Ref(arg_rule), Star((*self.comma(), Ref(arg_rule)))))
            self.rules[rule] = [(Lit(comp.name), Opt((Lit("("), args, Lit(")"))))]
        else:
            self.rules[rule] = [(Lit(comp.name), Opt((Lit("("), Lit(")"))))]
        return rule

    def category(self, category: str) -> str:
        rule = f"any_{category}"
        if rule not in self.rules:
            self.rules[rule] = [(Ref(self.component(c)),) for c in registry.components(category)]
        return rule

    def field_value(self, fld: FieldSpec) -> list[Alternative]:
        if fld.kind == "call":
            alts: list[Alternative] = [(Ref(self.category(fld.category or "")),)]
        elif fld.kind == "call_list":
            alts = [self.listing(Ref(self.category(fld.category or "")))]
        else:
            alts = self.scalar(fld.kind, fld.choices)
        if fld.optional:
            alts.append((Lit("none"),))
        return alts

    def block(self, spec: BlockSpec) -> str:
        field_rule = f"{spec.name}_field"
        self.rules[field_rule] = [
            (Lit(f.name), *self.eq(), *alt)
            for f in spec.editable_fields
            for alt in self.field_value(f)
        ]
        line = (self.term("INDENT"), Ref(field_rule), self.term("NL"))
        rule = f"{spec.name}_block"
        self.rules[rule] = [(Lit(f"{spec.name} {{"), self.term("NL"), Star(line), Lit("}"))]
        return rule


def _refinable(block: str) -> BlockSpec:
    try:
        spec = registry.block(block)
    except KeyError:
        raise ValueError(
            f"unknown block '{block}'; refinable blocks are {', '.join(registry.REFINABLE_BLOCKS)}"
        ) from None
    if not spec.refinable:
        raise ValueError(
            f"block '{block}' is not refinable; refinable blocks are "
            f"{', '.join(registry.REFINABLE_BLOCKS)}"
        )
    return spec


def blocks_grammar(blocks: Sequence[str], fmt: GrammarFormat = "lark") -> str:
    """The grammar for a reply holding exactly these blocks, in this order."""
    builder = _Builder()
    specs = [_refinable(b) for b in blocks]
    block_rules = [builder.block(s) for s in specs]
    start: list[Item] = []
    for index, rule in enumerate(block_rules):
        if index:
            start += [builder.term("NL"), Star((builder.term("NL"),))]
        start.append(Ref(rule))
    start.append(Opt((builder.term("NL"),)))
    rules = {"start": [tuple(start)], **builder.rules}
    title = ", ".join(blocks)
    if fmt == "lark":
        return _to_lark(rules, builder.used_terminals, title)
    return _to_gbnf(rules, builder.used_terminals, title)


def block_grammar(block: str, fmt: GrammarFormat = "lark") -> str:
    """The grammar for a reply holding exactly one block of this kind."""
    return blocks_grammar([block], fmt)


# ---------------------------------------------------------------- writers


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _items(items: Sequence[Item], name: Callable[[str], str]) -> str:
    parts: list[str] = []
    for item in items:
        if isinstance(item, Lit):
            parts.append(_quote(item.text))
        elif isinstance(item, Ref):
            parts.append(name(item.rule))
        elif isinstance(item, Opt):
            parts.append(f"({_items(item.items, name)})?")
        else:
            parts.append(f"({_items(item.items, name)})*")
    return " ".join(parts)


def _to_lark(rules: dict[str, list[Alternative]], terminals: set[str], title: str) -> str:
    def name(rule: str) -> str:
        return rule if rule in _TERMINALS else rule.lower()

    lines = [f"// Reply grammar for the block(s): {title}. Generated from the registry.", ""]
    lines.append("// ---------------------------------------------------------------- Rules")
    for rule, alts in rules.items():
        body = "\n    | ".join(_items(alt, name) for alt in alts)
        lines.append(f"{name(rule)}: {body}")
    lines += ["", "// ---------------------------------------------------------------- Terminals"]
    for term in sorted(terminals):
        lines.append(f"{term}: {_TERMINALS[term][0]}")
    return "\n".join(lines) + "\n"


def _to_gbnf(rules: dict[str, list[Alternative]], terminals: set[str], title: str) -> str:
    def name(rule: str) -> str:
        if rule == "start":
            return "root"
        return rule.lower().replace("_", "-")

    lines = [f"# Reply grammar for the block(s): {title}. Generated from the registry."]
    for rule, alts in rules.items():
        body = " | ".join(_items(alt, name) for alt in alts)
        lines.append(f"{name(rule)} ::= {body}")
    for term in sorted(terminals):
        lines.append(f"{name(term)} ::= {_TERMINALS[term][1]}")
    return "\n".join(lines) + "\n"
