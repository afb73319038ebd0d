"""How values become Python source in a generated script: the strict filters every template
uses (``literal`` for values, ``identifier`` and ``module_name`` for names, and the
docstring and comment text), and ``RenderError``, raised when a template would write
anything else.
"""

from __future__ import annotations

import keyword
import math

import jinja2


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
    if value is None or kind in (bool, int, str):
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
