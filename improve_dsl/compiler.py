"""The compile pipeline: spec text → AST → IR → script, plus the compile-time model check.

``compile_spec`` is what ``improve compile``, ``improve check -v`` and refinement call: a spec
is accepted into a run only once it parses, validates, renders and (with ``check_shapes``)
its model builds on the ``meta`` device with the dataset's input shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .check import ModelReport, check_model
from .check import check_data as check_data_shape
from .ir import Spec
from .render import render_script
from .syntax import SpecAST, parse, read_spec_text
from .validate import validate


@dataclass(frozen=True)
class Compiled:
    """A spec that passed every compile-time stage, and its script."""

    ast: SpecAST
    spec: Spec
    script: str
    report: ModelReport | None

    def summary(self) -> str:
        """One line: the pipeline, and the model's size when it was checked."""
        text = f"pipeline '{self.spec.pipeline.name}'"
        if self.report is not None:
            text += f", {self.report.describe()}"
        return text


def compile_spec(
    path: Path | None = None,
    *,
    text: str | None = None,
    check_shapes: bool = True,
    check_data: bool = False,
) -> Compiled:
    """Parse, validate and render a spec (from ``path``, or ``text`` named ``path``).

    ``check_shapes`` builds the model on the meta device (this imports torch, seconds in a
    fresh process, and reads the dataset's shape first); ``check_data`` alone reads only the
    dataset's shape, without torch. Parsing, validating and rendering never import torch.

    Raises ``DiagnosticError`` for any problem in the spec, located in its source;
    ``code_literals.RenderError`` only for a defect in improve's own templates.
    """
    if text is None:
        if path is None:
            raise TypeError("compile_spec needs a path or text")
        text = read_spec_text(path)
    ast = parse(text, str(path) if path is not None else "<spec>")
    spec = validate(ast)
    script = render_script(spec)
    report = None
    if check_shapes:
        report = check_model(spec, ast, script)
    elif check_data:
        check_data_shape(spec, ast)
    return Compiled(ast, spec, script, report)
