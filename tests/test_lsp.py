"""``improve lsp`` end to end: a real LSP client (pytest-lsp) drives the server over stdio.

Every answer is checked against the stage that owns the fact: diagnostics against the
validator (and ``improve check``'s own output), hover and completion against the registry,
formatting against ``improve fmt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("pygls", reason="the lsp extra is not installed: pip install -e '.[lsp]'")
pytest_lsp = pytest.importorskip(
    "pytest_lsp", reason="pytest-lsp is not installed: pip install -e '.[lsp]'"
)

from lsprotocol import types  # noqa: E402
from pytest_lsp import ClientServerConfig, LanguageClient  # noqa: E402

from improve_dsl import docs, registry  # noqa: E402
from improve_dsl.cli import main  # noqa: E402
from improve_dsl.fmt import format_text  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SERVER = [sys.executable, "-m", "improve_dsl.cli", "lsp"]  # the `improve lsp` verb

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_lsp.fixture(scope="module", config=ClientServerConfig(server_command=SERVER))
async def client(lsp_client: LanguageClient):  # type: ignore[no-untyped-def]
    await lsp_client.initialize_session(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(),
            root_uri=ROOT.as_uri(),
        )
    )
    yield
    await lsp_client.shutdown_session()


_counter = iter(range(10_000))


async def _open(client: LanguageClient, text: str, tmp_path: Path) -> str:
    """Open ``text`` as a new document and wait for its diagnostics; its URI."""
    path = tmp_path / f"spec{next(_counter)}.imp"
    path.write_text(text, encoding="utf-8")
    uri = path.as_uri()
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="imp", version=1, text=text)
        )
    )
    await client.wait_for_notification(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    return uri


DIGITS = (ROOT / "specs" / "digits.imp").read_text(encoding="utf-8")
TYPO = DIGITS.replace("  epochs = 4\n", "  epocs = 4\n")


async def test_diagnostics_as_improve_check_says_them(
    client: LanguageClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = await _open(client, TYPO, tmp_path)
    [found] = client.diagnostics[uri]
    line = TYPO.splitlines().index("  epocs = 4")
    assert found.range == types.Range(
        start=types.Position(line=line, character=2), end=types.Position(line=line, character=7)
    )
    assert found.severity == types.DiagnosticSeverity.Error
    assert found.message == ("unknown field 'epocs' in block 'train'\nhint: did you mean 'epochs'?")
    # The same words as the command line's.
    spec = tmp_path / "typo.imp"
    spec.write_text(TYPO)
    assert main(["check", str(spec)]) == 2
    printed = capsys.readouterr().err
    assert f"{spec}:{line + 1}:3: error: unknown field 'epocs' in block 'train'" in printed
    assert "hint: did you mean 'epochs'?" in printed


async def test_diagnostics_follow_each_change(client: LanguageClient, tmp_path: Path) -> None:
    uri = await _open(client, TYPO, tmp_path)
    assert len(client.diagnostics[uri]) == 1
    line = TYPO.splitlines().index("  epocs = 4")
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[
                types.TextDocumentContentChangePartial(
                    range=types.Range(
                        start=types.Position(line=line, character=6),
                        end=types.Position(line=line, character=6),
                    ),
                    text="h",
                )
            ],
        )
    )
    await client.wait_for_notification(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    assert list(client.diagnostics[uri]) == []
    # A half-typed value: every problem at once, in order.
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=3),
            content_changes=[
                types.TextDocumentContentChangeWholeDocument(
                    text=DIGITS.replace("epochs = 4", "epochs = 0").replace(
                        "batch_size = 64", "batch_size = big"
                    )
                )
            ],
        )
    )
    await client.wait_for_notification(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    messages = [d.message for d in client.diagnostics[uri]]
    assert messages == [
        "field 'batch_size' expects an integer, found 'big'",
        "field 'epochs' must be at least 1, not 0",
    ]


async def test_syntax_errors_and_data_checks(client: LanguageClient, tmp_path: Path) -> None:
    unclosed = DIGITS.rstrip().removesuffix("}")  # the last block never closed
    uri = await _open(client, unclosed, tmp_path)
    [found] = client.diagnostics[uri]
    row = unclosed.splitlines().index("eval {")
    assert found.message == (
        "block 'eval' opened here is never closed\n"
        f"hint: add '}}' after the last field of 'eval' (opened at {row + 1}:1)"
    )
    assert found.range.start == types.Position(line=row, character=0)
    missing = tmp_path / "no such folder"
    text = DIGITS.replace("source = digits()", f'source = image_folder(root = "{missing}")')
    uri = await _open(client, text, tmp_path)
    [found] = client.diagnostics[uri]
    assert found.message == f"the image folder '{missing}' does not exist"
    line = text.splitlines().index(next(x for x in text.splitlines() if "source =" in x))
    assert found.range.start == types.Position(line=line, character=2)


async def test_ranges_are_in_utf16_units(client: LanguageClient, tmp_path: Path) -> None:
    # "😀" is one code point but two UTF-16 units, the LSP's default position encoding.
    text = DIGITS.replace("source = digits()", 'source = image_folder(root = "😀", sizee = 3)')
    uri = await _open(client, text, tmp_path)
    [found] = client.diagnostics[uri]
    line_text = next(x for x in text.splitlines() if "sizee" in x)
    column = line_text.index("sizee") + 1  # the emoji counts twice
    assert found.message.startswith("unknown parameter 'sizee' of 'image_folder'")
    assert (found.range.start.character, found.range.end.character) == (column, column + 5)


async def test_hover_shows_the_registry_entry(client: LanguageClient, tmp_path: Path) -> None:
    uri = await _open(client, DIGITS, tmp_path)
    lines = DIGITS.splitlines()
    row = next(i for i, x in enumerate(lines) if "optimizer = sgd(" in x)
    column = lines[row].index("lr")
    result = await client.text_document_hover_async(
        types.HoverParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=row, character=column + 1),
        )
    )
    assert result is not None
    sgd = registry.component("optimizer", "sgd")
    assert sgd is not None
    lr = sgd.param("lr")
    assert lr is not None
    assert isinstance(result.contents, types.MarkupContent)
    assert "lr: float, 1e-06..10.0, default 0.1 — learning rate" in result.contents.value
    assert docs.param_reference(lr, with_default=True) in result.contents.value
    assert result.range == types.Range(
        start=types.Position(line=row, character=column),
        end=types.Position(line=row, character=column + 2),
    )
    # A field: its type, range, default and doc.
    row = next(i for i, x in enumerate(lines) if x.strip().startswith("epochs"))
    result = await client.text_document_hover_async(
        types.HoverParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=row, character=3),
        )
    )
    assert result is not None and isinstance(result.contents, types.MarkupContent)
    assert "epochs (int; default 10; 1..1000)" in result.contents.value
    assert "passes over the training split" in result.contents.value


async def _complete(
    client: LanguageClient, uri: str, line: int, character: int
) -> list[types.CompletionItem]:
    result = await client.text_document_completion_async(
        types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
        )
    )
    assert isinstance(result, types.CompletionList)
    return result.items


async def test_completion_from_the_registry(client: LanguageClient, tmp_path: Path) -> None:
    text = "train {\n  optimizer = \n}\n"
    uri = await _open(client, text, tmp_path)
    items = await _complete(client, uri, 1, 14)
    assert [i.label for i in items] == [c.name for c in registry.components("optimizer")]
    sgd = next(i for i in items if i.label == "sgd")
    assert sgd.insert_text == (
        "sgd(lr = ${1:0.1}, momentum = ${2:0.9}, nesterov = ${3|true,false|}, "
        "weight_decay = ${4:0.0005})"
    )
    assert sgd.insert_text_format == types.InsertTextFormat.Snippet
    assert sgd.detail == docs.component_signature(registry.component("optimizer", "sgd"))  # type: ignore[arg-type]

    text = "train {\n  epochs = 3\n  optimizer = adamw(lr = 0.01, )\n  \n}\n"
    uri = await _open(client, text, tmp_path)
    params = await _complete(client, uri, 2, text.splitlines()[2].index(")"))
    assert [i.label for i in params] == ["weight_decay", "beta1", "beta2"]  # lr is given
    fields = await _complete(client, uri, 3, 2)
    train = registry.block("train")
    assert [i.label for i in fields] == [
        f.name for f in train.fields if f.name not in ("epochs", "optimizer")
    ]
    precision = next(i for i in fields if i.label == "precision")
    assert precision.insert_text == "precision = ${1|auto,fp32,bf16,fp16|}"

    text = "train {\n  precision = b\n}\n"
    uri = await _open(client, text, tmp_path)
    values = await _complete(client, uri, 1, 15)
    assert [i.label for i in values] == ["bf16"]  # filtered by what is typed

    text = "pipeline p {\n  seed = 1\n}\n\n"
    uri = await _open(client, text, tmp_path)
    blocks = await _complete(client, uri, 4, 0)
    assert [i.label for i in blocks] == [b for b in registry.BLOCK_NAMES if b != "pipeline"]


async def test_formatting_is_improve_fmt(client: LanguageClient, tmp_path: Path) -> None:
    messy = "pipeline p {metric=accuracy   # kept\nseed=0}\ndata{source=digits()}\n"
    uri = await _open(client, messy, tmp_path)
    edits = await client.text_document_formatting_async(
        types.DocumentFormattingParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            options=types.FormattingOptions(tab_size=2, insert_spaces=True),
        )
    )
    assert edits is not None and len(edits) == 1
    assert edits[0].new_text == format_text(messy)
    assert edits[0].range.start == types.Position(line=0, character=0)
    uri = await _open(client, DIGITS, tmp_path)  # already canonical: nothing to change
    edits = await client.text_document_formatting_async(
        types.DocumentFormattingParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            options=types.FormattingOptions(tab_size=2, insert_spaces=True),
        )
    )
    assert edits is not None and list(edits) == []


async def test_document_symbols_are_the_blocks(client: LanguageClient, tmp_path: Path) -> None:
    uri = await _open(client, DIGITS, tmp_path)
    symbols = await client.text_document_document_symbol_async(
        types.DocumentSymbolParams(text_document=types.TextDocumentIdentifier(uri=uri))
    )
    assert symbols is not None
    names = [s.name for s in symbols]
    assert names == ["pipeline digits", "data", "augment", "model", "train", "eval"]
    train = symbols[names.index("train")]
    assert isinstance(train, types.DocumentSymbol)
    assert [c.name for c in train.children or []] == ["epochs", "optimizer", "schedule", "loss"]
    lines = DIGITS.splitlines()
    assert train.range.start.line == lines.index("train {")
    assert lines[train.range.end.line] == "}"
