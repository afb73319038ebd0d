"""`improve refine --expert openai:MODEL --base-url URL` against a loopback server of each
kind that holds its own seeded random replies to the grammar it receives (llguidance for Lark
and JSON schemas, XGrammar for GBNF): no flag is needed for the constraint to travel, the
journal says which mode each attempt used, and a refused constraint steps down once.

Real training on digits (one epoch, one iteration), the real `openai` client over HTTP.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from grammar_engines import accepts, matcher_for
from openai_server import OpenAIServer, constraint_of

from improve_dsl import cli
from improve_dsl.journal import RunDir
from improve_dsl.report import write_report

ROOT = Path(__file__).resolve().parent.parent
TINY = (ROOT / "specs" / "digits.imp").read_text().replace("epochs = 4", "epochs = 1")


def _refine(
    tmp_path: Path, server: OpenAIServer, model: str, *extra: str
) -> tuple[int, RunDir, list[dict[str, Any]]]:
    spec = tmp_path / "tiny.imp"
    spec.write_text(TINY)
    code = cli.main(
        [
            "refine",
            str(spec),
            "--expert",
            f"openai:{model}",
            "--base-url",
            server.url,
            "--iters",
            "1",
            "--timeout",
            "90",
            "--no-test",
            *extra,
        ]
    )
    (folder,) = [p for p in (tmp_path / "tiny.improve").iterdir() if (p / "state.json").exists()]
    run = RunDir(folder)
    records = [r.to_json() for r in run.records()]
    return code, run, records


def _check_every_request_was_constrained(server: OpenAIServer, source: str, mode: str) -> None:
    posts = [r for r in server.requests if r.body is not None]
    proposals = [r for r in posts if "block_choice" not in json.dumps(r.body)]
    assert posts and proposals
    for request in posts:
        constraint = constraint_of(request.path, request.body)
        assert constraint is not None, request.body
    for request in proposals:
        syntax, grammar, where = constraint_of(request.path, request.body) or ("", "", "")
        assert where == source
    # Every reply the server made is a sentence of the grammar it was sent.
    for request, reply in zip(posts, server.replies, strict=True):
        syntax, grammar, _ = constraint_of(request.path, request.body) or ("", "", "")
        assert accepts(matcher_for(grammar, syntax), reply), reply  # type: ignore[arg-type]
    assert mode in MODE_PATHS and {r.path for r in proposals} == {MODE_PATHS[mode]}


MODE_PATHS = {
    "responses-lark": "/v1/responses",
    "chat-lark": "/v1/chat/completions",
    "vllm-gbnf": "/v1/chat/completions",
    "llama-gbnf": "/v1/chat/completions",
    "json-schema": "/v1/chat/completions",
}

SERVERS = [
    pytest.param("openai", "gpt-5-mini", "responses-lark", "custom tool", id="openai-responses"),
    pytest.param(None, "gpt-5-mini", "chat-lark", "custom tool", id="openai-chat-proxy"),
    pytest.param("vllm", "Qwen/Qwen3-8B", "vllm-gbnf", "structured_outputs", id="vllm"),
    pytest.param("llama-cpp", "qwen3-8b", "llama-gbnf", "grammar", id="llama-cpp"),
    pytest.param("ollama", "qwen3:8b", "json-schema", "response_format", id="ollama-json"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "model", "mode", "source"), SERVERS)
def test_refine_holds_each_server_kind_to_the_grammar(
    tmp_path: Path, kind: str | None, model: str, mode: str, source: str
) -> None:
    with OpenAIServer(kind, generate=True, seed=1) as server:
        code, _, records = _refine(tmp_path, server, model)
    assert code == 0
    _check_every_request_was_constrained(server, source, mode)
    attempts = [r for r in records if r["iteration"] > 0]
    assert attempts and all(r["grammar"] == mode for r in attempts), attempts
    assert "grammar_note" not in attempts[0]


def test_refine_against_llama_cpp_in_the_fast_tier(tmp_path: Path) -> None:
    with OpenAIServer("llama-cpp", generate=True, seed=3) as server:
        code, run, records = _refine(tmp_path, server, "qwen3-8b")
    assert code == 0
    _check_every_request_was_constrained(server, "grammar", "llama-gbnf")
    assert [r["grammar"] for r in records if r["iteration"] > 0] == ["llama-gbnf"]
    # The prompt says what the incumbent's training cost and what budget is left.
    prompt = json.dumps([r.body for r in server.requests if r.body is not None][-1])
    seconds = records[0]["seconds"]
    assert f"val_accuracy = {records[0]['metric']:.4f}, trained in" in prompt
    assert seconds > 0 and "## Budget\\ntime: no limit" in prompt
    html = write_report(run.path).html.read_text()
    assert "<dt>reply held to</dt><dd>llama-gbnf</dd>" in html


@pytest.mark.slow
def test_a_refused_grammar_steps_down_once_and_the_run_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with OpenAIServer("vllm", generate=True, refuse={"structured_outputs"}) as server:
        code, run, records = _refine(tmp_path, server, "Qwen/Qwen3-8B")
    assert code == 0
    posts = [r.body for r in server.requests if r.body is not None]
    refused = [b for b in posts if "structured_outputs" in b]
    assert len(refused) == 1  # asked once, never again
    (attempt,) = [r for r in records if r["iteration"] > 0]
    assert attempt["grammar"] == "json-schema"
    assert attempt["grammar_note"].startswith("the server refused vllm-gbnf (HTTP 400")
    out = capsys.readouterr().out
    html = write_report(run.path).html.read_text()
    # The report says how each reply was held, and the step-down on the way.
    assert "<dt>reply held to</dt><dd>json-schema (the server refused vllm-gbnf (HTTP 400" in html
    assert "vLLM 0.11.0 (/v1/models owned_by vllm); replies held to the block's GBNF" in out
    assert "stepped down to json-schema: a JSON schema with the block as a string" in out


@pytest.mark.slow
def test_the_grammar_option_overrides_detection(tmp_path: Path) -> None:
    with OpenAIServer("vllm", generate=True, seed=2) as server:
        code, _, records = _refine(tmp_path, server, "Qwen/Qwen3-8B", "--grammar", "json")
    assert code == 0
    _check_every_request_was_constrained(server, "response_format", "json-schema")
    assert [r["grammar"] for r in records if r["iteration"] > 0] == ["json-schema"]


def test_a_grammar_the_server_cannot_take_is_refused_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # OpenAI's address: known without a probe
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    spec = tmp_path / "tiny.imp"
    spec.write_text(TINY)
    argv = ["refine", str(spec), "--expert", "openai:gpt-5-mini", "--grammar", "gbnf"]
    assert cli.main(argv) == 2
    assert "OpenAI takes no GBNF grammar; use --grammar lark or auto" in capsys.readouterr().err
    assert not (tmp_path / "tiny.improve").exists()
