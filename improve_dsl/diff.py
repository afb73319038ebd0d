"""Block-level semantic diff of two specs: ``improve diff A B``."""

from __future__ import annotations

from dataclasses import dataclass

from . import registry
from .diagnostics import DiagnosticError
from .fmt import print_value
from .syntax import Block, Call, SpecAST, Value, parse


@dataclass(frozen=True)
class FieldChange:
    field: str
    before: str | None  # canonical text, None when absent
    after: str | None


@dataclass(frozen=True)
class BlockChange:
    block: str
    kind: str  # added | removed | changed
    fields: tuple[FieldChange, ...] = ()

    def describe(self) -> str:
        if self.kind != "changed":
            return f"{self.block}: {self.kind}"
        lines = [f"{self.block}: changed"]
        for change in self.fields:
            if change.before is None:
                lines.append(f"  + {change.field} = {change.after}")
            elif change.after is None:
                lines.append(f"  - {change.field} = {change.before}")
            else:
                lines.append(f"  ~ {change.field}: {change.before} -> {change.after}")
        return "\n".join(lines)


def _fields(block: Block) -> dict[str, Value]:
    return {f.name: f.value for f in block.fields}


def _param_names(block: str, field: str, op: str) -> list[str]:
    """The registry's parameter names of ``op`` in ``block.field`` (empty when unknown)."""
    try:
        spec = registry.block(block).field(field)
    except KeyError:
        return []
    comp = registry.component(spec.category, op) if spec and spec.category else None
    return [p.name for p in comp.params] if comp is not None else []


def _arguments(call: Call, params: list[str]) -> dict[str, str]:
    """A call's arguments by parameter name (positional ones named by ``params``)."""
    named: dict[str, str] = {}
    for index, arg in enumerate(call.args):
        name = arg.keyword or (params[index] if index < len(params) else f"#{index + 1}")
        named[name] = print_value(arg.value)
    return named


def _field_changes(
    block: str, name: str, old: Value | None, new: Value | None
) -> list[FieldChange]:
    """One change per differing field; for a call to the same op, one per differing argument
    (``optimizer.lr: 0.01 -> 0.05``) rather than the two whole calls."""
    if isinstance(old, Call) and isinstance(new, Call) and old.name == new.name:
        params = _param_names(block, name, old.name)
        before, after = _arguments(old, params), _arguments(new, params)
        return [
            FieldChange(f"{name}.{arg}", before.get(arg), after.get(arg))
            for arg in [*after, *(a for a in before if a not in after)]
            if before.get(arg) != after.get(arg)
        ]
    old_text = print_value(old) if old is not None else None
    new_text = print_value(new) if new is not None else None
    return [FieldChange(name, old_text, new_text)] if old_text != new_text else []


def _keyed(blocks: tuple[Block, ...]) -> dict[str, Block]:
    """Blocks by kind; a repeated block (the spec does not validate) keeps every copy, as
    ``train (2nd)`` and so on, rather than silently the last."""
    keyed: dict[str, Block] = {}
    for block in blocks:
        key, count = block.kind, 1
        while key in keyed:
            count += 1
            key = f"{block.kind} ({_ordinal(count)})"
        keyed[key] = block
    return keyed


def _ordinal(n: int) -> str:
    return f"{n}{'nd' if n == 2 else 'rd' if n == 3 else 'th'}"


def diff_ast(a: SpecAST, b: SpecAST) -> list[BlockChange]:
    """Changes from a to b, in b's block order (removed blocks last)."""
    before = _keyed(a.blocks)
    after = _keyed(b.blocks)
    changes: list[BlockChange] = []
    for key, blk in after.items():
        if key not in before:
            changes.append(BlockChange(key, "added"))
            continue
        old, new = _fields(before[key]), _fields(blk)
        fields = [
            change
            for name in [*new, *(n for n in old if n not in new)]
            for change in _field_changes(blk.kind, name, old.get(name), new.get(name))
        ]
        if before[key].label != blk.label:
            fields.insert(0, FieldChange("(name)", before[key].label, blk.label))
        if fields:
            changes.append(BlockChange(key, "changed", tuple(fields)))
    changes += [BlockChange(key, "removed") for key in before if key not in after]
    return changes


def block_diff(a_text: str, b_text: str, a_path: str = "a", b_path: str = "b") -> list[BlockChange]:
    """Changes between two spec texts (raises DiagnosticError when one does not parse)."""
    return diff_ast(parse(a_text, a_path), parse(b_text, b_path))


def changed_blocks(a_text: str, b_text: str) -> list[str]:
    """Names of the blocks that differ."""
    return [c.block for c in block_diff(a_text, b_text)]


def validation_problem(text: str, path: str) -> str | None:
    """Why a spec that parses does not validate (its first diagnostic), or None."""
    from .validate import load_text  # validation is only needed to warn

    try:
        load_text(text, path)
    except DiagnosticError as exc:
        first = sorted(exc.diagnostics, key=lambda d: d.span)[0]
        more = len(exc.diagnostics) - 1
        extra = f" (and {more:,} more)" if more else ""
        return f"{first.location()}: {first.message}{extra}"
    return None
