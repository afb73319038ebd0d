"""Reference text from the registry: ``improve docs`` and the block reference in prompts."""

from __future__ import annotations

from . import registry
from .diagnostics import did_you_mean
from .fmt import literal as _literal
from .registry import BlockSpec, Component, DatasetFacts, FieldSpec, Param, ParamValue


def _param_range(param: Param | FieldSpec) -> str:
    if param.choices:
        return "one of " + ", ".join(str(c) for c in param.choices)
    if param.minimum is not None and param.maximum is not None:
        return f"{_literal(param.minimum)}..{_literal(param.maximum)}"
    if param.minimum is not None:
        return f">= {_literal(param.minimum)}"
    return ""


def component_signature(comp: Component) -> str:
    """``sgd(lr = 0.1, momentum = 0.9, ...)`` with the defaults."""
    args = ", ".join(
        f"{p.name} = {'REQUIRED' if p.required else _literal(p.default, p.kind)}"
        for p in comp.params
    )
    return f"{comp.name}({args})"


def dataset_summary(facts: DatasetFacts) -> str:
    """``1x28x28 grayscale, 10 classes, 60,000 training and 10,000 test images; ...``."""
    colour = "grayscale" if facts.channels == 1 else "colour"
    flips = "keep" if facts.flips_safe else "change"
    return (
        f"{facts.channels}x{facts.image_size}x{facts.image_size} {colour}, "
        f"{facts.num_classes} classes, {facts.train_count:,} training and "
        f"{facts.test_count:,} test images; horizontal flips {flips} the class"
    )


def component_reference(comp: Component, indent: str = "") -> list[str]:
    lines = [f"{indent}{component_signature(comp)}", f"{indent}    {comp.doc}"]
    if comp.dataset is not None:
        lines.append(f"{indent}    {dataset_summary(comp.dataset)}")
    lines += [f"{indent}    {param_reference(p)}" for p in comp.params]
    return lines


def param_reference(param: Param, *, with_default: bool = False) -> str:
    """One parameter: ``lr: float, 1e-06..10.0 — learning rate`` (and its default)."""
    extra = _param_range(param)
    default = ""
    if with_default:
        written = _literal(param.default, param.kind)
        default = ", required" if param.required else f", default {written}"
    return (
        f"{param.name}: {param.kind}{', ' + extra if extra else ''}"
        f"{', or none' if param.optional else ''}{default} — {param.doc}"
    )


def field_reference(block: BlockSpec, fld: FieldSpec, *, with_ops: bool = True) -> list[str]:
    default = "required" if fld.required else f"default {_literal(_field_default(fld))}"
    lock = " [locked: only the user changes it]" if fld.locked else ""
    extra = _param_range(fld)
    lines = [
        f"  {fld.name} ({_field_kind(fld)}; {default}{'; ' + extra if extra else ''}){lock}",
        f"      {fld.doc}",
    ]
    if with_ops and fld.category:
        for comp in registry.components(fld.category):
            lines += component_reference(comp, "      ")
    return lines


def _field_kind(fld: FieldSpec) -> str:
    if fld.kind == "call":
        return f"one {fld.category}" + (" or none" if fld.optional else "")
    if fld.kind == "call_list":
        return f"list of {fld.category}"
    return fld.kind + (" or none" if fld.optional else "")


def _field_default(fld: FieldSpec) -> ParamValue | str:
    if fld.kind == "call" and isinstance(fld.default, str):
        comp = registry.component(fld.category or "", fld.default)
        return component_signature(comp) if comp else fld.default
    if fld.kind == "call_list":
        return "[]"
    return fld.default


def block_reference(block: str, *, include_locked: bool = False, with_ops: bool = True) -> str:
    """The block's fields and ops, as text for ``improve docs`` and for an expert's prompt."""
    spec = registry.block(block)
    header = f"block {spec.name}" + (" NAME" if spec.labelled else "") + f" — {spec.doc}"
    lines = [header]
    for fld in spec.fields:
        if fld.locked and not include_locked:
            continue
        lines += field_reference(spec, fld, with_ops=with_ops)
    return "\n".join(lines) + "\n"


def overview() -> str:
    """The whole language reference."""
    parts = [
        "The .imp language: one file is one pipeline; blocks hold `field = value` lines.",
        'Values: numbers, "strings", true/false, none, names, calls like sgd(lr = 0.1), and '
        "[lists]. Comments start with #.",
        "",
    ]
    parts += [block_reference(b.name, include_locked=True) for b in registry.BLOCKS]
    return "\n".join(parts)


def lookup(name: str) -> str | None:
    """Reference for a block, a ``block.field``, or a component name; None when unknown."""
    if name in registry.BLOCK_NAMES:
        return block_reference(name, include_locked=True)
    if "." in name:
        block_name, _, field_name = name.partition(".")
        if block_name in registry.BLOCK_NAMES:
            spec = registry.block(block_name)
            fld = spec.field(field_name)
            if fld is not None:
                return "\n".join([f"{block_name}.{field_name}", *field_reference(spec, fld)]) + "\n"
    found = [
        (category, comp)
        for category, comps in registry.COMPONENTS.items()
        for comp in comps
        if comp.name == name
    ]
    if found:
        lines: list[str] = []
        for category, comp in found:
            lines.append(f"{category}:")
            lines += component_reference(comp, "  ")
        return "\n".join(lines) + "\n"
    return None


def all_names() -> list[str]:
    names = list(registry.BLOCK_NAMES)
    names += [f"{b.name}.{f.name}" for b in registry.BLOCKS for f in b.fields]
    names += sorted({c.name for comps in registry.COMPONENTS.values() for c in comps})
    return names


def suggestion(name: str) -> str | None:
    return did_you_mean(name, all_names())
