"""``improve lsp``: a language server for .imp specs on stdin/stdout (pygls).

It only translates between the Language Server Protocol and ``editor.py``, which answers
from the same parser, validator, formatter and registry as the command line: diagnostics
as you type (those of ``improve check``, plus the cheap data check), hover text from the
registry, completion of blocks, fields, ops (with their parameters and defaults as
snippets) and values, ``improve fmt`` as document formatting, and the blocks as symbols.
Needs the ``lsp`` extra: ``pip install 'improve-dsl[lsp]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import __version__, editor
from .diagnostics import Diagnostic, DiagnosticError

if TYPE_CHECKING:
    from pygls.lsp.server import LanguageServer

SERVER_NAME = "improve"


class LspUnavailable(Exception):
    """pygls or lsprotocol is not installed."""


def build_server() -> LanguageServer:
    """The language server with every feature registered (not yet started)."""
    try:
        from lsprotocol import types
        from pygls.lsp.server import LanguageServer
        from pygls.uris import to_fs_path
        from pygls.workspace.position_codec import ServerTextPosition, ServerTextRange
    except ImportError:
        raise LspUnavailable(
            "the language server needs pygls and lsprotocol: pip install 'improve-dsl[lsp]'"
        ) from None

    server = LanguageServer(SERVER_NAME, __version__)

    def document(uri: str) -> Any:
        return server.workspace.get_text_document(uri)

    def path_of(uri: str) -> str:
        return str(to_fs_path(uri) or uri)

    def to_range(doc: Any, line: int, column: int, width: int) -> Any:
        """A 0-based code-point span → the client's units (UTF-16 unless agreed otherwise)."""
        start = ServerTextPosition(line, column)
        end = ServerTextPosition(line, column + width)
        return doc.range_to_client_units(ServerTextRange(start, end))

    def lsp_diagnostic(doc: Any, found: Diagnostic) -> Any:
        span = found.span
        line = max(0, span.line - 1)
        lines = doc.lines
        text = lines[line].rstrip("\r\n") if line < len(lines) else ""
        column = min(max(0, span.column - 1), len(text))
        width = max(1, min(span.width, len(text) - column)) if text else 0
        message = found.message + (f"\nhint: {found.hint}" if found.hint else "")
        return types.Diagnostic(
            range=to_range(doc, line, column, width),
            message=message,
            severity=types.DiagnosticSeverity.Error
            if found.severity == "error"
            else types.DiagnosticSeverity.Warning,
            source=SERVER_NAME,
        )

    def publish(uri: str) -> None:
        doc = document(uri)
        found = editor.problems(doc.source, path_of(uri))
        server.text_document_publish_diagnostics(
            types.PublishDiagnosticsParams(
                uri=uri,
                version=doc.version,
                diagnostics=[lsp_diagnostic(doc, d) for d in found],
            )
        )

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(params: Any) -> None:
        publish(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(params: Any) -> None:
        publish(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE)
    def did_save(params: Any) -> None:
        publish(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(params: Any) -> None:
        server.text_document_publish_diagnostics(
            types.PublishDiagnosticsParams(uri=params.text_document.uri, diagnostics=[])
        )

    @server.feature(types.TEXT_DOCUMENT_HOVER)
    def hover(params: Any) -> Any:
        doc = document(params.text_document.uri)
        where = doc.position_from_client_units(params.position)
        found = editor.hover(doc.source, where.line, where.character)
        if found is None:
            return None
        return types.Hover(
            contents=types.MarkupContent(
                kind=types.MarkupKind.Markdown, value=f"```text\n{found.text.rstrip()}\n```"
            ),
            range=to_range(doc, found.line, found.character, found.width),
        )

    kinds = {
        "block": types.CompletionItemKind.Module,
        "field": types.CompletionItemKind.Field,
        "op": types.CompletionItemKind.Function,
        "param": types.CompletionItemKind.Property,
        "value": types.CompletionItemKind.EnumMember,
    }

    @server.feature(
        types.TEXT_DOCUMENT_COMPLETION,
        types.CompletionOptions(trigger_characters=["(", "[", ",", "=", " "]),
    )
    def completion(params: Any) -> Any:
        doc = document(params.text_document.uri)
        where = doc.position_from_client_units(params.position)
        items = [
            types.CompletionItem(
                label=item.label,
                kind=kinds[item.kind],
                detail=item.detail,
                documentation=types.MarkupContent(
                    kind=types.MarkupKind.Markdown, value=f"```text\n{item.documentation}\n```"
                ),
                insert_text=item.insert,
                insert_text_format=types.InsertTextFormat.Snippet,
                sort_text=f"{index:04d}",  # registry order, not alphabetical
            )
            for index, item in enumerate(editor.complete(doc.source, where.line, where.character))
        ]
        return types.CompletionList(is_incomplete=False, items=items)

    @server.feature(types.TEXT_DOCUMENT_FORMATTING)
    def formatting(params: Any) -> Any:
        from .fmt import format_text

        uri = params.text_document.uri
        doc = document(uri)
        try:
            formatted = format_text(doc.source, path_of(uri))
        except DiagnosticError:
            return None  # the diagnostics already say why; nothing to format yet
        if formatted == doc.source:
            return []
        lines = doc.lines
        end = types.Position(line=len(lines), character=0)
        whole = types.Range(start=types.Position(line=0, character=0), end=end)
        return [types.TextEdit(range=whole, new_text=formatted)]

    @server.feature(types.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
    def document_symbol(params: Any) -> Any:
        uri = params.text_document.uri
        doc = document(uri)
        ast = editor.outline(doc.source, path_of(uri))
        if ast is None:
            return []
        symbols = []
        for block in ast.blocks:
            children = [
                types.DocumentSymbol(
                    name=fld.name,
                    kind=types.SymbolKind.Field,
                    range=_lines_range(types, doc, fld.span.line, fld.end_line),
                    selection_range=to_range(
                        doc, fld.span.line - 1, fld.span.column - 1, fld.span.width
                    ),
                )
                for fld in block.fields
            ]
            symbols.append(
                types.DocumentSymbol(
                    name=f"{block.kind} {block.label}" if block.label else block.kind,
                    kind=types.SymbolKind.Module,
                    range=_lines_range(types, doc, block.span.line, block.end_line),
                    selection_range=to_range(
                        doc, block.span.line - 1, block.span.column - 1, block.span.width
                    ),
                    children=children,
                )
            )
        return symbols

    return server


def _lines_range(types: Any, doc: Any, first: int, last: int) -> Any:
    """Whole lines ``first``..``last`` (1-based, inclusive) as an LSP range."""
    lines = doc.lines
    end_text = lines[last - 1].rstrip("\r\n") if 0 < last <= len(lines) else ""
    return types.Range(
        start=types.Position(line=first - 1, character=0),
        end=doc.position_to_client_units(_server_position(last - 1, len(end_text))),
    )


def _server_position(line: int, character: int) -> Any:
    from pygls.workspace.position_codec import ServerTextPosition

    return ServerTextPosition(line, character)


def serve() -> None:
    """Run the language server on stdin/stdout until the client says exit."""
    build_server().start_io()


if __name__ == "__main__":
    serve()
