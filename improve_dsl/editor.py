"""What an editor asks about a spec: problems, the entry under the cursor, what may come next.

Pure functions over spec text, with no editor protocol in them (``lsp.py`` speaks LSP): the
problems are the parser's and validator's diagnostics plus the cheap data check of
``check.py``; hover text and completions come from the registry through ``docs.py``; the
cursor's place is read from the grammar's own tokens, so a half-typed spec still gets help.
Positions are 0-based lines and 0-based character offsets into the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from lark import Token

from . import docs, registry
from .diagnostics import Diagnostic, DiagnosticError
from .fmt import literal
from .registry import Component, FieldSpec, Param, ParamValue
from .syntax import SpecAST, parse, tokens

# ---------------------------------------------------------------- problems


def problems(text: str, path: str) -> list[Diagnostic]:
    """Every diagnostic of ``improve check`` for this text, then the cheap data check."""
    from .check import check_data
    from .validate import validate

    try:
        ast = parse(text, path)
        spec = validate(ast)
        check_data(spec, ast)
    except DiagnosticError as exc:
        return sorted(exc.diagnostics, key=lambda d: d.span)
    return []


def outline(text: str, path: str) -> SpecAST | None:
    """The parsed spec for an outline of its blocks, or None while it does not parse."""
    try:
        return parse(text, path)
    except DiagnosticError:
        return None


# ---------------------------------------------------------------- the cursor's place

Expecting = Literal["block", "field", "value", "param", "nothing"]


@dataclass
class Frame:
    """An open call or list around the cursor."""

    kind: Literal["call", "list"]
    name: str = ""  # the call's op
    given: list[str] = field(default_factory=list)  # parameters already written
    param: str | None = None  # the parameter whose value comes next


@dataclass
class Place:
    """Where a position sits in a spec, and what may be written there."""

    expecting: Expecting = "block"
    block: str | None = None
    field_name: str | None = None
    frames: list[Frame] = field(default_factory=list)
    blocks_seen: list[str] = field(default_factory=list)
    fields_seen: list[str] = field(default_factory=list)

    @property
    def call(self) -> Frame | None:
        return self.frames[-1] if self.frames and self.frames[-1].kind == "call" else None


@dataclass(frozen=True)
class Role:
    """What one name token is: a block keyword, a field, an op, a parameter or a value."""

    token: Token
    kind: Literal["block", "label", "field", "op", "param", "value"]
    block: str | None
    field_name: str | None
    op: str | None = None
    param: str | None = None


class _Walk:
    """Reads tokens left to right, keeping the place; notes each name token's role.

    A name's meaning depends on the token after it (``sgd(`` is an op, ``lr =`` in a call a
    parameter), so a name waits as ``pending`` until the next token arrives.
    """

    def __init__(self) -> None:
        self.place = Place()
        self.roles: list[Role] = []
        self._header: list[Token] = []
        self._pending: tuple[Token, Expecting] | None = None

    def feed(self, token: Token) -> None:
        if self._pending is not None:
            name, was = self._pending
            self._pending = None
            self._settle(name, was, token)
        place, kind = self.place, token.type
        if place.block is None:  # between blocks: `name [label] {`
            if kind == "NAME":
                self._header.append(token)
                place.expecting = "nothing"
            elif kind == "LBRACE" and self._header:
                self._open_block()
            else:
                self._header = []
            return
        if kind == "NAME":
            self._pending = (token, place.expecting)
            place.expecting = "nothing"
        elif kind == "RBRACE":  # also closes a call or list left open by mistake
            place.block, place.field_name, place.frames = None, None, []
            place.expecting = "block"
        elif kind in ("NUMBER", "STRING"):
            self._value_done()
        elif kind == "LSQB":
            place.frames.append(Frame("list"))
            place.expecting = "value"
        elif kind in ("RSQB", "RPAR") and place.frames:
            place.frames.pop()
            self._value_done()
        elif kind == "COMMA" and place.frames:
            frame = place.frames[-1]
            frame.param = None
            place.expecting = "param" if frame.kind == "call" else "value"

    def _open_block(self) -> None:
        place = self.place
        keyword = self._header[0]
        place.block = str(keyword)
        place.blocks_seen.append(place.block)
        self.roles.append(Role(keyword, "block", place.block, None))
        if len(self._header) > 1:
            self.roles.append(Role(self._header[1], "label", place.block, None))
        self._header = []
        place.expecting = "field"
        place.fields_seen = []

    def _settle(self, name: Token, was: Expecting, after: Token) -> None:
        """Decide what ``name`` was, now that the token after it is known."""
        place, word = self.place, str(name)
        call = place.call
        if was == "field" or (was == "nothing" and not place.frames and after.type == "EQUAL"):
            place.field_name = word
            place.fields_seen.append(word)
            self.roles.append(Role(name, "field", place.block, word))
            place.expecting = "value" if after.type == "EQUAL" else "nothing"
        elif after.type == "LPAR" and was in ("value", "param"):
            self.roles.append(Role(name, "op", place.block, place.field_name, word))
            place.frames.append(Frame("call", word))
            place.expecting = "param"
        elif was == "param" and call is not None and after.type == "EQUAL":
            call.param = word
            call.given.append(word)
            self.roles.append(Role(name, "param", place.block, place.field_name, call.name, word))
            place.expecting = "value"
        elif was in ("value", "param"):
            if call is not None:
                role = Role(name, "value", place.block, place.field_name, call.name, call.param)
            elif self._names_op(word):
                role = Role(name, "op", place.block, place.field_name, word)
            else:
                role = Role(name, "value", place.block, place.field_name)
            self.roles.append(role)
            self._value_done()

    def _names_op(self, name: str) -> bool:
        fspec = _field_spec(self.place.block, self.place.field_name)
        return bool(fspec and fspec.category and registry.component(fspec.category, name))

    def _value_done(self) -> None:
        place = self.place
        if place.frames:
            place.frames[-1].param = None
            place.expecting = "nothing"
        else:
            place.expecting = "field"

    def finish(self) -> None:
        """Settle a name left at the end as if the text went on with a new line."""
        if self._pending is not None:
            name, was = self._pending
            self._pending = None
            self._settle(name, was, Token("NAME", "_"))


def _field_spec(block: str | None, name: str | None) -> FieldSpec | None:
    if block is None or name is None or block not in registry.BLOCK_NAMES:
        return None
    return registry.block(block).field(name)


def _offset(text: str, line: int, character: int) -> int:
    lines = text.splitlines(keepends=True)
    before = sum(len(item) for item in lines[:line])
    if line < len(lines):  # a position past the end of its line means the line's end
        character = min(character, len(lines[line].rstrip("\r\n")))
    return min(len(text), before + character)


def place_at(text: str, line: int, character: int) -> tuple[Place, str]:
    """The place at a position, and the part of a name typed just before it."""
    offset = _offset(text, line, character)
    start = offset
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
        start -= 1
    walk = _Walk()
    for token in tokens(text[:start]):
        walk.feed(token)
    walk.finish()
    return walk.place, text[start:offset]


def roles(text: str) -> list[Role]:
    """The role of every name token in the text (as far as the grammar can read it)."""
    walk = _Walk()
    for token in tokens(text):
        walk.feed(token)
    walk.finish()
    return walk.roles


# ---------------------------------------------------------------- hover


@dataclass(frozen=True)
class HoverText:
    """Reference text for the name under the cursor, and where that name is."""

    text: str
    line: int
    character: int
    width: int


def hover(text: str, line: int, character: int) -> HoverText | None:
    """The registry's entry for the block, field, op, parameter or value under the cursor."""
    offset = _offset(text, line, character)
    for role in roles(text):
        start = role.token.start_pos or 0
        if start <= offset <= start + len(str(role.token)):
            body = _reference(role)
            if body is None:
                return None
            return HoverText(
                body,
                (role.token.line or 1) - 1,
                (role.token.column or 1) - 1,
                len(str(role.token)),
            )
    return None


def _reference(role: Role) -> str | None:
    if role.kind == "block":
        if role.block not in registry.BLOCK_NAMES:
            return None
        return docs.block_reference(str(role.block), include_locked=True, with_ops=False)
    fspec = _field_spec(role.block, role.field_name)
    if fspec is None or role.block is None:
        return None
    bspec = registry.block(role.block)
    if role.kind == "field" or (role.kind == "value" and role.op is None):
        return f"{bspec.name}.{fspec.name}\n" + "\n".join(
            docs.field_reference(bspec, fspec, with_ops=False)
        )
    comp = _component(fspec, role.op)
    if comp is None:
        return None
    if role.kind == "op":
        return "\n".join(docs.component_reference(comp)) + "\n"
    if role.kind in ("param", "value"):
        param = comp.param(role.param) if role.param is not None else None
        if param is None:
            return "\n".join(docs.component_reference(comp)) + "\n"
        return f"{comp.name}(...)\n  " + docs.param_reference(param, with_default=True) + "\n"
    return None


def _component(fspec: FieldSpec, name: str | None) -> Component | None:
    if name is None or fspec.category is None:
        return None
    return registry.component(fspec.category, name)


# ---------------------------------------------------------------- completion


@dataclass(frozen=True)
class Completion:
    """One suggestion: a label, what to insert (a snippet), and its reference text."""

    label: str
    kind: Literal["block", "field", "op", "param", "value"]
    insert: str  # LSP snippet syntax: ${1:default}, ${1|a,b|}, $0
    detail: str
    documentation: str


def complete(text: str, line: int, character: int) -> list[Completion]:
    """What may be written at a position, filtered by the part of a name already typed."""
    place, prefix = place_at(text, line, character)
    if place.expecting == "block":
        found = _blocks(place)
    elif place.expecting == "field":
        found = _fields(place)
    elif place.expecting == "param":
        found = _params(place)
        call = place.call
        fspec = _field_spec(place.block, place.field_name)
        if call is not None and fspec is not None and not call.given:
            comp = _component(fspec, call.name)
            if comp is not None and comp.params:  # a positional first argument
                found += _values_of(comp.params[0])
    elif place.expecting == "value":
        found = _values(place)
    else:
        found = []
    return [c for c in found if c.label.startswith(prefix)]


def _blocks(place: Place) -> list[Completion]:
    result = []
    for spec in registry.BLOCKS:
        if spec.name in place.blocks_seen:
            continue
        head = f"{spec.name} ${{1:name}}" if spec.labelled else spec.name
        required = [f for f in spec.fields if f.required]
        first = 2 if spec.labelled else 1
        body = "".join(f"  {f.name} = ${{{first + i}}}\n" for i, f in enumerate(required))
        result.append(
            Completion(
                spec.name,
                "block",
                f"{head} {{\n{body}  $0\n}}",
                spec.doc,
                docs.block_reference(spec.name, include_locked=True),
            )
        )
    return result


def _fields(place: Place) -> list[Completion]:
    if place.block not in registry.BLOCK_NAMES:
        return []
    bspec = registry.block(str(place.block))
    result = []
    for fspec in bspec.fields:
        if fspec.name in place.fields_seen:
            continue
        reference = docs.field_reference(bspec, fspec, with_ops=False)
        result.append(
            Completion(
                fspec.name,
                "field",
                f"{fspec.name} = {_field_placeholder(fspec)}",
                reference[0].strip(),
                "\n".join(reference),
            )
        )
    return result


def _field_placeholder(fspec: FieldSpec) -> str:
    if fspec.kind == "call_list":
        return "[$0]"
    if fspec.kind == "call":
        return f"${{1:{_escape(str(fspec.default))}()}}" if fspec.default else "$0"
    if fspec.kind in ("enum", "bool") or fspec.choices:
        return _choice(1, fspec.default, _choices(fspec.kind, fspec.choices, fspec.optional))
    if fspec.default is None:
        return "$0"
    return f"${{1:{_escape(literal(fspec.default))}}}"


def _values(place: Place) -> list[Completion]:
    fspec = _field_spec(place.block, place.field_name)
    if fspec is None:
        return []
    call = place.call
    if call is not None:  # a parameter's value
        comp = _component(fspec, call.name)
        param = comp.param(call.param) if comp is not None and call.param else None
        return _values_of(param) if param is not None else []
    if fspec.category is not None:
        in_list = bool(place.frames) or fspec.kind == "call"
        ops = [_op(comp) for comp in registry.components(fspec.category)] if in_list else []
        if fspec.kind == "call_list" and not place.frames:
            ops = [_op(comp, in_list=True) for comp in registry.components(fspec.category)]
        if fspec.optional:
            ops.append(Completion("none", "value", "none", "not set", fspec.doc))
        return ops
    words = _choices(fspec.kind, fspec.choices, fspec.optional)
    return [Completion(w, "value", w, f"{place.block}.{fspec.name}", fspec.doc) for w in words]


def _values_of(param: Param) -> list[Completion]:
    words = _choices(param.kind, param.choices, param.optional)
    return [Completion(w, "value", w, param.name, param.doc) for w in words]


def _choices(kind: str, choices: Sequence[str | int], optional: bool) -> list[str]:
    words = [str(c) for c in choices] if choices else (["true", "false"] if kind == "bool" else [])
    return words + (["none"] if optional and words else [])


def _op(comp: Component, *, in_list: bool = False) -> Completion:
    args = ", ".join(
        f"{p.name} = {_param_placeholder(i + 1, p)}" for i, p in enumerate(comp.params)
    )
    insert = f"{comp.name}({args})"
    return Completion(
        comp.name,
        "op",
        f"[{insert}$0]" if in_list else insert,
        docs.component_signature(comp),
        "\n".join(docs.component_reference(comp)),
    )


def _param_placeholder(index: int, param: Param) -> str:
    if param.kind == "bool" or param.choices:
        return _choice(index, param.default, _choices(param.kind, param.choices, False))
    if param.kind == "str":
        default = "" if param.default is None else str(param.default)
        return f'"${{{index}:{_escape(default)}}}"'
    return f"${{{index}:{_escape(literal(param.default))}}}"


def _params(place: Place) -> list[Completion]:
    call = place.call
    fspec = _field_spec(place.block, place.field_name)
    comp = _component(fspec, call.name) if call is not None and fspec is not None else None
    if comp is None or call is None:
        return []
    return [
        Completion(
            p.name,
            "param",
            f"{p.name} = {_param_placeholder(1, p)}",
            docs.param_reference(p, with_default=True),
            p.doc,
        )
        for p in comp.params
        if p.name not in call.given
    ]


def _choice(index: int, default: ParamValue | str, words: Sequence[str]) -> str:
    """A snippet choice among ``words``, the default first."""
    first = literal(default) if default is not None else ""
    ordered = ([first] if first in words else []) + [w for w in words if w != first]
    if not ordered:
        return f"${{{index}}}"
    return f"${{{index}|{','.join(ordered)}|}}"


def _escape(text: str) -> str:
    """Text inside a snippet placeholder: ``$``, ``}`` and ``\\`` are escaped."""
    return text.replace("\\", "\\\\").replace("$", "\\$").replace("}", "\\}")
