"""A real HTTP server on loopback speaking the OpenAI protocol, for tests.

``POST /v1/chat/completions`` and ``POST /v1/responses`` answer from a queue of scripted
replies (status, body, delay, headers); every request is recorded for assertions. Use::

    with OpenAIServer() as server:
        server.push(Reply(body=chat_completion("train {\\n}")))
        client = OpenAI(base_url=server.url, api_key="x")
        ...
        assert server.requests[0].body["model"] == "m"

An empty queue answers HTTP 418 (not retried by clients), so a test that asks more than it
scripted fails loudly instead of hanging.

Two more roles, for the grammar tests:

- ``OpenAIServer(kind="vllm", version="0.11.0")`` answers the GETs each server documents
  about itself (``/v1/models`` with its ``owned_by``, vLLM's ``/version``, llama.cpp's
  ``/props``, Ollama's ``/api/version``), so the expert's probe finds it;
- ``generate=True`` answers an unscripted request from the constraint the request carries
  (a custom tool's Lark grammar, ``structured_outputs``/``guided_grammar``/``ebnf``/``grammar``
  GBNF, a ``json_schema``), applied by the real engines (llguidance, XGrammar) to the
  server's own seeded random bytes: every reply is grammar-valid by construction, as a real
  constrained server's would be; ``refuse`` names request fields answered with a 400, as a
  server that does not take them answers.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from grammar_engines import Syntax, matcher_for, sample

PATHS = ("/v1/chat/completions", "/v1/responses")
OWNED_BY = {"vllm": "vllm", "sglang": "sglang", "llama-cpp": "llamacpp", "openai": "system"}
FREE_TEXT = "I would train for longer with a better optimizer."  # what an unconstrained model says


@dataclass
class Reply:
    """One scripted answer: a JSON body (dict) or raw text (str), after ``delay`` seconds."""

    body: Any = None
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    """One request as the server received it."""

    path: str
    body: Any
    headers: dict[str, str]


def error_body(message: str, kind: str = "server_error") -> dict[str, Any]:
    """An OpenAI-style error object."""
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def chat_completion(
    content: str | None = None,
    *,
    tool_input: str | None = None,
    prompt_tokens: int = 100,
    completion_tokens: int = 20,
    model: str = "test-model",
) -> dict[str, Any]:
    """A Chat Completions reply: text content, or a custom tool call carrying ``tool_input``."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_input is not None:
        message["tool_calls"] = [
            {"id": "call_1", "type": "custom", "custom": {"name": "edit", "input": tool_input}}
        ]
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if tool_input is not None else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def response_object(
    text: str | None = None,
    *,
    tool_input: str | None = None,
    input_tokens: int = 100,
    output_tokens: int = 20,
    model: str = "test-model",
) -> dict[str, Any]:
    """A Responses reply: an output_text message, or a custom_tool_call item."""
    output: list[dict[str, Any]] = []
    if text is not None:
        output.append(
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    if tool_input is not None:
        output.append(
            {
                "type": "custom_tool_call",
                "id": "ctc_1",
                "call_id": "call_1",
                "name": "edit",
                "input": tool_input,
                "status": "completed",
            }
        )
    return {
        "id": "resp_test",
        "object": "response",
        "created_at": 0,
        "model": model,
        "status": "completed",
        "output": output,
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


def constraint_of(path: str, body: Any) -> tuple[Syntax, str, str] | None:
    """(syntax, grammar or schema text, where it came from) of a request, or None."""
    if not isinstance(body, dict):
        return None
    for tool in body.get("tools") or []:
        fmt = (tool.get("custom") or tool).get("format") or {}
        if fmt.get("type") == "grammar":
            grammar = fmt.get("grammar") or fmt  # Chat nests it one level deeper
            return "lark", str(grammar["definition"]), "custom tool"
    structured = body.get("structured_outputs")
    if isinstance(structured, dict) and isinstance(structured.get("grammar"), str):
        grammar = structured["grammar"]
        syntax: Syntax = "gbnf" if "::=" in grammar else "lark"
        return syntax, grammar, "structured_outputs"
    for key in ("guided_grammar", "ebnf", "grammar"):
        if isinstance(body.get(key), str):
            return "gbnf", body[key], key
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        return "json", json.dumps(response_format["json_schema"]["schema"]), "response_format"
    text_format = (body.get("text") or {}).get("format") or {}
    if text_format.get("type") == "json_schema":
        return "json", json.dumps(text_format["schema"]), "text.format"
    return None


def _identity(kind: str | None, version: str, path: str) -> Any:
    """What a server of ``kind`` answers to a GET of ``path`` (None: 404)."""
    if kind is None:
        return None
    if path == "/v1/models":
        owner = OWNED_BY.get(kind, "library")  # Ollama lists its own models as "library"
        return {
            "object": "list",
            "data": [{"id": "test-model", "object": "model", "owned_by": owner}],
        }
    if path == "/version" and kind == "vllm":
        return {"version": version or "0.11.0"}
    if path == "/props" and kind == "llama-cpp":
        return {"default_generation_settings": {"n_ctx": 4096}, "build_info": "b6000"}
    if path == "/api/version" and kind == "ollama":
        return {"version": version or "0.12.0"}
    return None


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        owner.record(Request(self.path, None, {k.lower(): v for k, v in self.headers.items()}))
        answer = _identity(owner.kind, owner.version, self.path)
        if answer is None:
            self._send(Reply(error_body(f"no route {self.path}", "not_found"), status=404))
        else:
            self._send(Reply(answer))

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length).decode("utf-8")
        try:
            body: Any = json.loads(raw)
        except json.JSONDecodeError:
            body = raw
        owner = self.server.owner
        owner.record(Request(self.path, body, {k.lower(): v for k, v in self.headers.items()}))
        if self.path not in PATHS:
            self._send(Reply(error_body(f"no route {self.path}", "not_found"), status=404))
            return
        self._send(owner.next_reply(self.path, body))

    def _send(self, reply: Reply) -> None:
        if reply.delay:
            time.sleep(reply.delay)
        data = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
        payload = data.encode("utf-8")
        try:
            self.send_response(reply.status)
            content_type = "text/plain" if isinstance(reply.body, str) else "application/json"
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(payload)))
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing to answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler still sleeping through a timeout must not block exit
    owner: OpenAIServer


class OpenAIServer:
    """The loopback server: start with ``with``, script with ``push``, read ``requests``."""

    def __init__(
        self,
        kind: str | None = None,
        *,
        version: str = "",
        generate: bool = False,
        seed: int = 0,
        refuse: Collection[str] = (),
    ) -> None:
        self.kind = kind
        self.version = version
        self.generate = generate
        self.refuse = set(refuse)
        self._rng = random.Random(seed)
        self.replies: list[str] = []  # what was generated, in order
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._lock = threading.Lock()
        self._replies: deque[Reply] = deque()
        self.requests: list[Request] = []
        # A short poll keeps shutdown (each test's teardown) quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL to give the client (ends in ``/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def push(self, *replies: Reply) -> None:
        """Queue replies, answered in order."""
        with self._lock:
            self._replies.extend(replies)

    def pending(self) -> int:
        """Scripted replies not yet used."""
        with self._lock:
            return len(self._replies)

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def next_reply(self, path: str = PATHS[0], body: Any = None) -> Reply:
        with self._lock:
            if self._replies:
                return self._replies.popleft()
            refused = sorted(k for k in self.refuse if isinstance(body, dict) and k in body)
            if refused:
                message = f"Unsupported parameter: '{refused[0]}' is not supported with this model."
                return Reply(error_body(message, "invalid_request_error"), 400)
            if self.generate:
                return Reply(self._generated(path, body))
        return Reply(error_body("openai_server: no scripted reply left", "test_error"), 418)

    def _generated(self, path: str, body: Any) -> dict[str, Any]:
        """A reply the request's own constraint allows, from the server's seeded bytes."""
        constraint = constraint_of(path, body)
        if constraint is None:
            text = FREE_TEXT
        else:
            syntax, grammar, _ = constraint
            text = sample(matcher_for(grammar, syntax), random.Random(self._rng.random()))
        self.replies.append(text)
        tool = constraint is not None and constraint[2] == "custom tool"
        if path == "/v1/responses":
            return response_object(None if tool else text, tool_input=text if tool else None)
        return chat_completion(None if tool else text, tool_input=text if tool else None)

    def start(self) -> OpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
