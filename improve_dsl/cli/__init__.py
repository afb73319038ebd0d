"""The ``improve`` command line, one module per verb family (see ``app``)."""

from .app import build_parser, main

__all__ = ["build_parser", "main"]
