"""Block-level semantic diff of two specs: ``improve diff A B``."""

from __future__ import annotations

from dataclasses import dataclass

from .fmt import print_value
from .syntax import Block, SpecAST, parse


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


def _fields(block: Block) -> dict[str, str]:
    return {f.name: print_value(f.value) for f in block.fields}


def _key(block: Block) -> str:
    return block.kind


def diff_ast(a: SpecAST, b: SpecAST) -> list[BlockChange]:
    """Changes from a to b, in b's block order (removed blocks last)."""
    before = {_key(blk): blk for blk in a.blocks}
    after = {_key(blk): blk for blk in b.blocks}
    changes: list[BlockChange] = []
    for key, blk in after.items():
        if key not in before:
            changes.append(BlockChange(key, "added"))
            continue
        old, new = _fields(before[key]), _fields(blk)
        fields = [
            FieldChange(name, old.get(name), new.get(name))
            for name in [*new, *(n for n in old if n not in new)]
            if old.get(name) != new.get(name)
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
