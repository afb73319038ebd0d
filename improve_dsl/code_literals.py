"""How values become Python source in a generated script: the strict filters every template
uses (``literal`` for values, ``identifier`` and ``module_name`` for names, and the
docstring and comment text), and ``RenderError``, raised when a template would write
anything else.
"""

from __future__ import annotations

import keyword
import math
from collections.abc import Sequence

import jinja2

LINE_LENGTH = 100  # black's, for the generated script


class RenderError(Exception):
    """The templates could not produce a script: a defect in improve, not in the spec."""


def literal(value: object) -> str:
    """``value`` as Python source that evaluates back to it, or ``RenderError``.

    Only exact ``int``, ``float`` (finite), ``bool``, ``str``, ``None`` and tuples of them:
    subclasses could override ``__repr__`` and Jinja's ``Undefined`` must never become code.
    """
    if isinstance(value, jinja2.Undefined):
        raise RenderError("a template passed an undefined value to the literal filter")
    kind = type(value)
    if kind is str:
        assert isinstance(value, str)
        return _string(value)
    if value is None or kind in (bool, int):
        return repr(value)
    if kind is float:
        assert isinstance(value, float)
        if not math.isfinite(value):
            raise RenderError(f"{value!r} has no Python literal")
        return repr(value)
    if kind is tuple:
        assert isinstance(value, tuple)
        items = [literal(item) for item in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    raise RenderError(f"a {kind.__name__} cannot be rendered as a Python literal")


def _string(value: str) -> str:
    """``repr(value)`` with the quotes black prefers: double, unless that takes more escapes
    (so black has nothing to change in the literal)."""
    text = repr(value)
    if text[0] == '"' or value.count('"') > value.count("'"):
        return text
    body = text[1:-1].replace("\\'", "'").replace('"', '\\"')
    return f'"{body}"'


def identifier(value: object) -> str:
    """A Python name (registry names, constant names), checked, never a keyword."""
    if type(value) is not str or not value.isidentifier() or keyword.iskeyword(value):
        raise RenderError(f"{value!r} is not a Python identifier")
    return value


def module_name(value: object) -> str:
    """A dotted module path, each part an identifier."""
    if type(value) is not str:
        raise RenderError(f"{value!r} is not a module name")
    for part in value.split("."):
        identifier(part)
    return value


def docstring_text(value: object) -> str:
    """Text made safe inside a triple-quoted (non-raw) docstring: escapes, no quotes."""
    if type(value) is not str:
        raise RenderError(f"docstring text must be a str, not {type(value).__name__}")
    return value.encode("unicode_escape").decode("ascii").replace('"', '\\"')


def comment_text(value: object) -> str:
    """One line of comment text (from the registry or render.py, never from a spec)."""
    if type(value) is not str or not value.isprintable():
        raise RenderError(f"{value!r} cannot be a one-line comment")
    return value


def call_text(head: str, arguments: Sequence[str], indent: int, tail: str = "") -> str:
    """``head(arguments)tail`` laid out as black lays out a call that ends its line: on one
    line if it fits, else its arguments on a line of their own, else one per line with a
    trailing comma. The text after the first line's indent; black still formats the script,
    this only spares it the work."""
    joined = ", ".join(arguments)
    if indent + len(head) + len(joined) + 1 + len(tail) <= LINE_LENGTH:
        return f"{head}{joined}){tail}"
    inner = " " * (indent + 4)
    if len(inner) + len(joined) <= LINE_LENGTH:
        return f"{head}\n{inner}{joined}\n{' ' * indent}){tail}"
    lines = "".join(f"{inner}{argument},\n" for argument in arguments)
    return f"{head}\n{lines}{' ' * indent}){tail}"
