"""Validation: AST → typed IR, collecting every error at once."""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from . import registry
from .diagnostics import Diagnostic, DiagnosticError, Span, all_of, did_you_mean, one_of
from .ir import (
    AugmentBlock,
    DataBlock,
    EvalBlock,
    ModelBlock,
    Op,
    PipelineBlock,
    Spec,
    TrainBlock,
)
from .registry import BlockSpec, Choices, Component, FieldSpec, Param, ParamValue
from .syntax import (
    Arg,
    Block,
    Call,
    ListValue,
    Name,
    Number,
    SpecAST,
    String,
    Value,
    parse,
    read_spec_text,
)

_BLOCK_TYPES: dict[str, Callable[..., Any]] = {
    "pipeline": PipelineBlock,
    "data": DataBlock,
    "augment": AugmentBlock,
    "model": ModelBlock,
    "train": TrainBlock,
    "eval": EvalBlock,
}


class _Invalid(Exception):
    """A value could not be converted; the diagnostic is already recorded."""


class _Validator:
    def __init__(self, ast: SpecAST) -> None:
        self.ast = ast
        self.errors: list[Diagnostic] = []

    def error(self, span: Span, message: str, hint: str | None = None) -> None:
        self.errors.append(Diagnostic(self.ast.path, span, message, hint))

    # ------------------------------------------------------------ spec and blocks

    def spec(self) -> Spec | None:
        seen: dict[str, Block] = {}
        built: dict[str, Any] = {}
        for block in self.ast.blocks:
            try:
                spec = registry.block(block.kind)
            except KeyError:
                self.error(
                    block.span,
                    f"unknown block '{block.kind}'",
                    did_you_mean(block.kind, registry.BLOCK_NAMES)
                    or f"blocks are {all_of(registry.BLOCK_NAMES)}",
                )
                continue
            if block.kind in seen:
                first = seen[block.kind].span
                self.error(
                    block.span,
                    f"block '{block.kind}' appears twice",
                    f"the first is at line {first.line}; merge them",
                )
                continue
            seen[block.kind] = block
            values = self.block(spec, block)
            if values is not None:
                built[block.kind] = values
        end = self._end_span()
        if not self.ast.blocks:
            required = [b.name for b in registry.BLOCKS if b.required]
            self.error(
                end,
                "the spec is empty: it needs the blocks "
                + ", ".join(f"'{name}'" for name in required),
                "`improve init --data digits -o spec.imp` writes a starting spec",
            )
            return None
        for spec in registry.BLOCKS:
            if spec.required and spec.name not in seen:
                example = "pipeline NAME { ... }" if spec.labelled else f"{spec.name} {{ ... }}"
                self.error(end, f"missing block '{spec.name}'", f"add `{example}`")
            elif spec.name not in seen:
                built[spec.name] = self.defaults(spec)
        if self.errors:
            return None
        pipeline_block = seen["pipeline"]
        built["pipeline"]["name"] = pipeline_block.label
        source = built["data"]["source"]
        root = source.params.get("root")
        if isinstance(root, str):
            built["data"]["source"] = Op.of(
                source.name, {**source.params, "root": resolve_root(root, self.ast.path)}
            )
        return Spec(
            path=self.ast.path,
            sha256=hashlib.sha256(self.ast.source.encode("utf-8")).hexdigest(),
            **{name: _BLOCK_TYPES[name](**values) for name, values in built.items()},
        )

    def _end_span(self) -> Span:
        lines = self.ast.source.splitlines() or [""]
        return Span(max(1, len(lines)), 1)

    def defaults(self, spec: BlockSpec) -> dict[str, Any]:
        return {f.name: self.default(f) for f in spec.fields}

    def default(self, field: FieldSpec) -> Any:
        if field.kind == "call":
            if field.default is None:
                return None
            comp = registry.component(field.category or "", str(field.default))
            assert comp is not None
            return self.op(comp, None)
        if field.kind == "call_list":
            return ()
        return field.default

    def block(self, spec: BlockSpec, block: Block) -> dict[str, Any] | None:
        if spec.labelled and block.label is None:
            self.error(
                block.span,
                f"block '{spec.name}' needs a name",
                f"write `{spec.name} my_pipeline {{`",
            )
        elif not spec.labelled and block.label is not None and block.label_span is not None:
            self.error(
                block.label_span, f"block '{spec.name}' takes no name", f"write `{spec.name} {{`"
            )
        values: dict[str, Any] = {}
        ok = True
        for fld in block.fields:
            fspec = spec.field(fld.name)
            if fspec is None:
                self.error(
                    fld.span,
                    f"unknown field '{fld.name}' in block '{spec.name}'",
                    did_you_mean(fld.name, [f.name for f in spec.fields])
                    or f"fields of '{spec.name}' are {all_of([f.name for f in spec.fields])}",
                )
                ok = False
                continue
            if fld.name in values:
                self.error(fld.span, f"field '{fld.name}' is set twice in block '{spec.name}'")
                ok = False
                continue
            try:
                values[fld.name] = self.field_value(spec, fspec, fld.value)
            except _Invalid:
                ok = False
                values[fld.name] = None
        for fspec in spec.fields:
            if fspec.name not in values:
                if fspec.required:
                    self.error(
                        block.span,
                        f"block '{spec.name}' needs the field '{fspec.name}'",
                        f"{fspec.name}: {fspec.doc}",
                    )
                    ok = False
                else:
                    values[fspec.name] = self.default(fspec)
        if ok and spec.name == "model":
            self.check_model(block, values)
        return values if ok else None

    def check_model(self, block: Block, values: dict[str, Any]) -> None:
        has_arch = values.get("arch") is not None
        has_layers = bool(values.get("layers"))
        if has_arch == has_layers:
            self.error(
                block.span,
                "block 'model' needs exactly one of 'arch' and 'layers'",
                "for example `arch = cnn(channels = [32, 64])`",
            )

    # ------------------------------------------------------------ values

    def field_value(self, block: BlockSpec, fspec: FieldSpec, value: Value) -> Any:
        where = f"field '{fspec.name}'"
        if fspec.optional and isinstance(value, Name) and value.value == "none":
            return None
        if fspec.kind == "call":
            return self.call(fspec.category or "", value, where)
        if fspec.kind == "call_list":
            if not isinstance(value, ListValue):
                self.expected(value, f"a list like `[{self.example(fspec.category or '')}]`", where)
            return tuple(self.call(fspec.category or "", item, where) for item in value.items)
        return self.scalar(
            fspec.kind, value, where, fspec.minimum, fspec.maximum, fspec.choices, fspec.optional
        )

    def example(self, category: str) -> str:
        return registry.components(category)[0].name

    def call(self, category: str, value: Value, where: str) -> Op:
        args: tuple[Arg, ...] = ()
        if isinstance(value, Name):
            name, span = value.value, value.span
        elif isinstance(value, Call):
            name, span, args = value.name, value.span, value.args
        else:
            choices = [c.name for c in registry.components(category)]
            known = isinstance(value, String) and registry.component(category, value.value)
            self.expected(value, f"one of {one_of(choices)}", where, _unquote_hint(value, known))
        comp = registry.component(category, name)
        if comp is None:
            choices = [c.name for c in registry.components(category)]
            self.error(
                Span(span.line, span.column, len(name)),
                f"unknown {_CATEGORY_WORDS[category]} '{name}' in {where}",
                did_you_mean(name, choices) or f"choose {one_of(choices)}",
            )
            raise _Invalid
        given: dict[str, ParamValue] = {}
        failed = False
        for index, arg in enumerate(args):
            if arg.keyword is None:
                if index >= len(comp.params):
                    self.error(
                        _value_span(arg.value),
                        f"'{name}' takes at most {len(comp.params)} positional "
                        f"argument{'s' if len(comp.params) != 1 else ''}",
                    )
                    failed = True
                    continue
                param = comp.params[index]
            else:
                found = comp.param(arg.keyword)
                if found is None:
                    names = [p.name for p in comp.params]
                    assert arg.keyword_span is not None
                    self.error(
                        arg.keyword_span,
                        f"unknown parameter '{arg.keyword}' of '{name}'",
                        did_you_mean(arg.keyword, names)
                        or (
                            f"'{name}' takes {all_of(names)}"
                            if names
                            else f"'{name}' takes no parameters"
                        ),
                    )
                    failed = True
                    continue
                param = found
            if param.name in given:
                self.error(
                    _value_span(arg.value), f"parameter '{param.name}' of '{name}' is given twice"
                )
                failed = True
                continue
            try:
                given[param.name] = self.param_value(comp, param, arg.value)
            except _Invalid:
                failed = True
        for param in comp.params:
            if param.required and param.name not in given:
                self.error(
                    Span(span.line, span.column, len(name)),
                    f"'{name}' needs the parameter '{param.name}'",
                    param.doc,
                )
                failed = True
        if failed:
            raise _Invalid
        return self.op(comp, given)

    def op(self, comp: Component, given: dict[str, ParamValue] | None) -> Op:
        given = given or {}
        return Op.of(comp.name, {p.name: given.get(p.name, p.default) for p in comp.params})

    def param_value(self, comp: Component, param: Param, value: Value) -> ParamValue:
        where = f"parameter '{param.name}' of '{comp.name}'"
        if param.optional and isinstance(value, Name) and value.value == "none":
            return None
        if param.kind == "int_list":
            if not isinstance(value, ListValue) or not value.items:
                self.expected(value, "a list of integers like `[32, 64]`", where)
            items = tuple(
                self.scalar("int", item, where, 1, 4096, (), False) for item in value.items
            )
            if len(items) > 8:
                self.error(value.span, f"{where} takes at most 8 entries")
                raise _Invalid
            return tuple(int(i) for i in items)
        result: ParamValue = self.scalar(
            param.kind, value, where, param.minimum, param.maximum, param.choices, param.optional
        )
        return result

    def scalar(
        self,
        kind: str,
        value: Value,
        where: str,
        minimum: float | None,
        maximum: float | None,
        choices: Choices,
        optional: bool,
    ) -> Any:
        none_hint = " or none" if optional else ""
        if kind == "bool":
            if isinstance(value, Name) and value.value in ("true", "false"):
                return value.value == "true"
            hint = (
                did_you_mean(value.value, ("true", "false"))
                if isinstance(value, Name)
                else _unquote_hint(value, value.value in ("true", "false"))
                if isinstance(value, String)
                else None
            )
            self.expected(value, f"true or false{none_hint}", where, hint)
        if kind == "str":
            if isinstance(value, String):
                return value.value
            self.expected(value, f'a string like "path/to/data"{none_hint}', where)
        words = [str(choice) for choice in choices]
        if kind == "enum":
            if isinstance(value, Name) and value.value in words:
                return value.value
            if isinstance(value, String) and value.value in words:
                self.expected(value, one_of(words), where, _unquote_hint(value, True))
            if isinstance(value, (Name, String)):
                word = value.value
                self.error(
                    _value_span(value),
                    f"'{word}' is not a choice for {where}",
                    did_you_mean(word, words) or f"choose {one_of(words)}",
                )
                raise _Invalid
            self.expected(value, one_of(words), where)
        # numbers
        if not isinstance(value, Number):
            article = "an integer" if kind == "int" else "a number"
            numeric = isinstance(value, String) and _NUMBER.fullmatch(value.value.strip())
            self.expected(value, article + none_hint, where, _unquote_hint(value, numeric))
        if not _NUMBER.fullmatch(value.text):
            self.error(value.span, f"malformed number '{value.text}'")
            raise _Invalid
        number: int | float
        if kind == "int":
            try:
                number = int(value.text)
            except ValueError:
                self.error(value.span, f"{where} must be an integer, not {value.text}")
                raise _Invalid from None
        else:
            number = float(value.text)
            if not math.isfinite(number):
                self.error(value.span, f"the number {value.text} is out of range for {where}")
                raise _Invalid
        if choices and number not in choices:
            self.error(
                value.span, f"{value.text} is not a choice for {where}", f"choose {one_of(words)}"
            )
            raise _Invalid
        if minimum is not None and number < minimum:
            self.error(value.span, f"{where} must be at least {_fmt(minimum)}, not {value.text}")
            raise _Invalid
        if maximum is not None and number > maximum:
            self.error(value.span, f"{where} must be at most {_fmt(maximum)}, not {value.text}")
            raise _Invalid
        return number

    def expected(self, value: Value, what: str, where: str, hint: str | None = None) -> NoReturn:
        self.error(_value_span(value), f"{where} expects {what}, found {_describe(value)}", hint)
        raise _Invalid


_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")

_CATEGORY_WORDS = {
    "source": "data source",
    "validation": "validation split",
    "augment": "augmentation op",
    "arch": "architecture",
    "layer": "layer",
    "optimizer": "optimizer",
    "schedule": "schedule",
    "loss": "loss",
    "ema": "weight average",
    "tta": "test-time augmentation",
}


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() and abs(number) < 1e15 else repr(number)


def _value_span(value: Value) -> Span:
    if isinstance(value, Call):
        return Span(value.span.line, value.span.column, len(value.name))
    return value.span


def _unquote_hint(value: Value, fits_unquoted: object) -> str | None:
    """``remove the quotes`` when a string would be right without them (``"sgd"``, ``"64"``)."""
    if isinstance(value, String) and fits_unquoted:
        return f'remove the quotes: write {value.value.strip()}, not "{value.value}"'
    return None


def _describe(value: Value) -> str:
    if isinstance(value, Number):
        return f"the number {value.text}"
    if isinstance(value, String):
        return "a string"
    if isinstance(value, Name):
        return f"'{value.value}'"
    if isinstance(value, Call):
        return f"a call to '{value.name}'"
    return "a list"


def resolve_root(root: str, spec_path: str) -> str:
    """A data folder as the spec means it: a relative ``root`` is read from the spec's own
    folder (as config languages do), not from wherever improve happens to run. The result
    stays relative when the spec's path was (``sub/y.imp`` with ``root = "fm3"`` gives
    ``sub/fm3``); specs without a file (``<spec>``) and absolute roots are left alone."""
    folder = os.path.dirname(spec_path)
    if not root or os.path.isabs(root) or spec_path.startswith("<") or not folder:
        return root
    return os.path.normpath(os.path.join(folder, root))


def validate(ast: SpecAST) -> Spec:
    """Turn a parsed spec into the typed IR, or raise every problem found at once."""
    validator = _Validator(ast)
    spec = validator.spec()
    if spec is None:
        raise DiagnosticError(validator.errors, ast.source)
    return spec


def load_text(source: str, path: str = "<spec>") -> Spec:
    """Parse and validate spec text."""
    return validate(parse(source, path))


def load(path: str | Path) -> Spec:
    """Read, parse and validate a spec file."""
    path = Path(path)
    return load_text(read_spec_text(path), str(path))
