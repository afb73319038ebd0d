"""How an OpenAI-compatible server can hold a reply to the block's grammar, and which server
it is.

``--grammar`` (or ``$IMPROVE_GRAMMAR``) says what to send: ``auto`` (the strongest constraint
the server is known to take), ``lark``, ``gbnf``, ``json`` or ``none``. The server's kind
decides how it travels. ``probe`` asks the server once who it is, the way each documents it:

- vLLM, SGLang and llama.cpp name themselves in ``GET /v1/models`` (``owned_by`` is
  ``vllm``, ``sglang`` or ``llamacpp``); llama.cpp also answers ``GET /props``;
- Ollama answers ``GET /api/version``; vLLM's ``GET /version`` gives its version, which
  matters because ``structured_outputs`` first appeared in 0.10.2 and an older server
  silently ignores fields it does not know (it took ``guided_grammar`` instead);
- OpenAI's own API is known by its address and needs no probe; OpenAI and proxies in front
  of it list models ``owned_by`` ``system`` or ``openai``.

``ladder`` turns a choice and a server into modes, strongest first, always ending in free
text; a server that refuses one with a 400 naming its parameter steps down one rung.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal, get_args
from urllib.parse import urlparse

GrammarChoice = Literal["auto", "lark", "gbnf", "json", "none"]
GRAMMAR_CHOICES: tuple[str, ...] = get_args(GrammarChoice)
GRAMMAR_ENV = "IMPROVE_GRAMMAR"

ServerKind = Literal["openai", "vllm", "sglang", "llama-cpp", "ollama", "unknown"]

# The wire modes, each one request shape; the journal records which one produced a reply.
Mode = Literal[
    "responses-lark",  # OpenAI Responses: custom tool, format grammar/lark
    "chat-lark",  # OpenAI Chat Completions: custom tool, format grammar/lark
    "vllm-gbnf",  # vLLM >= 0.10.2: structured_outputs.grammar (GBNF)
    "vllm-lark",  # vLLM >= 0.10.2: structured_outputs.grammar (Lark)
    "vllm-guided-gbnf",  # vLLM < 0.10.2: guided_grammar (GBNF)
    "sglang-gbnf",  # SGLang: ebnf (GBNF, XGrammar's default)
    "llama-gbnf",  # llama.cpp server: grammar (GBNF)
    "json-schema",  # response_format / text.format json_schema, the block as a string
    "none",  # free text, extracted strictly by reply.split_reply
]
MODES: tuple[str, ...] = get_args(Mode)

MODE_LABELS: dict[str, str] = {
    "responses-lark": "the block's Lark grammar as an OpenAI custom tool (Responses API)",
    "chat-lark": "the block's Lark grammar as an OpenAI custom tool (Chat Completions)",
    "vllm-gbnf": "the block's GBNF grammar in vLLM's structured_outputs",
    "vllm-lark": "the block's Lark grammar in vLLM's structured_outputs",
    "vllm-guided-gbnf": "the block's GBNF grammar in vLLM's guided_grammar (before 0.10.2)",
    "sglang-gbnf": "the block's GBNF grammar in SGLang's ebnf field",
    "llama-gbnf": "the block's GBNF grammar in llama.cpp's grammar field",
    "json-schema": "a JSON schema with the block as a string field",
    "none": "free text, checked and fed back",
}

# The request fields a mode adds: a 400 whose message names one of them refuses the mode.
MODE_PARAMETERS: dict[str, tuple[str, ...]] = {
    "responses-lark": ("tools", "custom", "grammar", "lark", "tool_choice"),
    "chat-lark": ("tools", "custom", "grammar", "lark", "tool_choice"),
    "vllm-gbnf": ("structured_outputs", "grammar"),
    "vllm-lark": ("structured_outputs", "grammar"),
    "vllm-guided-gbnf": ("guided_grammar", "grammar"),
    "sglang-gbnf": ("ebnf", "grammar"),
    "llama-gbnf": ("grammar",),
    "json-schema": ("response_format", "json_schema", "text.format", "schema", "format"),
    "none": (),
}

_KIND_NAMES = {
    "openai": "OpenAI",
    "vllm": "vLLM",
    "sglang": "SGLang",
    "llama-cpp": "llama.cpp",
    "ollama": "Ollama",
    "unknown": "an OpenAI-compatible server",
}
_OWNED_BY: dict[str, ServerKind] = {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llama-cpp"}
STRUCTURED_OUTPUTS_SINCE = (0, 10, 2)  # vLLM release that added structured_outputs


class ConstraintError(Exception):
    """A ``--grammar`` the server cannot take (e.g. GBNF for OpenAI's API)."""


@dataclass(frozen=True)
class Server:
    """What a server said about itself."""

    kind: ServerKind
    version: str = ""
    evidence: str = ""  # how it was recognised, for the console

    def describe(self) -> str:
        name = _KIND_NAMES[self.kind]
        version = f" {self.version}" if self.version else ""
        return f"{name}{version}" + (f" ({self.evidence})" if self.evidence else "")


def is_openai_url(base_url: str | None) -> bool:
    """True for OpenAI's own API (the default when no base URL is given)."""
    if base_url is None:
        return True
    return (urlparse(base_url).hostname or "").lower() == "api.openai.com"


def grammar_choice(value: str | None) -> str:
    """The choice from ``--grammar`` or else ``$IMPROVE_GRAMMAR`` (default ``auto``);
    ConstraintError for a value that is neither a choice nor a wire mode."""
    chosen = (value or os.environ.get(GRAMMAR_ENV) or "auto").strip().lower()
    if chosen not in GRAMMAR_CHOICES and chosen not in MODES:
        source = "--grammar" if value else f"${GRAMMAR_ENV}"
        raise ConstraintError(
            f"{source} must be one of {', '.join(GRAMMAR_CHOICES)}, not {chosen!r}"
        )
    return chosen


# ---------------------------------------------------------------- probing


def _get_json(url: str, api_key: str | None, timeout: float) -> Any:
    """The JSON a GET returns, or None (any failure: a probe only ever informs)."""
    request = urllib.request.Request(url, headers={"accept": "application/json"})
    if api_key:
        request.add_header("authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status != 200:
                return None
            return json.loads(response.read(1_000_000).decode("utf-8"))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _root(base_url: str) -> str:
    """The server's root: the base URL without its trailing ``/v1``."""
    trimmed = base_url.rstrip("/")
    return trimmed[: -len("/v1")] if trimmed.endswith("/v1") else trimmed


def _version_text(value: Any) -> str:
    if isinstance(value, dict) and isinstance(value.get("version"), str):
        return str(value["version"])
    return ""


def probe(base_url: str | None, api_key: str | None = None, timeout: float = 3.0) -> Server:
    """Which server answers at ``base_url``: at most four short GETs, never an error."""
    if is_openai_url(base_url):
        return Server("openai", evidence="its address")
    assert base_url is not None
    base = base_url.rstrip("/")
    root = _root(base)
    kind: ServerKind = "unknown"
    evidence = ""
    models = _get_json(f"{base}/models", api_key, timeout)
    entries = models.get("data") if isinstance(models, dict) else None
    owners = [e.get("owned_by") for e in entries or [] if isinstance(e, dict)]
    for owner in owners:
        if isinstance(owner, str) and owner.lower() in _OWNED_BY:
            kind, evidence = _OWNED_BY[owner.lower()], f"/v1/models owned_by {owner}"
            break
    else:
        # OpenAI lists its models as owned by "system" or "openai"; so do proxies in front
        # of it (LiteLLM, Azure's v1 API), which take its request shapes.
        if any(o in ("openai", "system", "openai-internal") for o in owners):
            kind, evidence = "openai", f"/v1/models owned_by {owners[0]}"
    if kind == "unknown":
        props = _get_json(f"{root}/props", api_key, timeout)
        if isinstance(props, dict) and "default_generation_settings" in props:
            kind, evidence = "llama-cpp", "/props"
    version = ""
    if kind == "unknown":
        ollama = _version_text(_get_json(f"{root}/api/version", api_key, timeout))
        if ollama:
            kind, evidence, version = "ollama", "/api/version", ollama
    if kind == "vllm":
        version = _version_text(_get_json(f"{root}/version", api_key, timeout))
    return Server(kind, version, evidence)


def _version_tuple(text: str) -> tuple[int, ...] | None:
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        return None
    return tuple(int(part or 0) for part in match.groups())


# ---------------------------------------------------------------- the ladder


def _takes_lark_tools(model: str) -> bool:
    """GPT-5 models take custom tools with a Lark grammar (OpenAI, Azure, proxies)."""
    return model.rsplit("/", 1)[-1].lower().startswith("gpt-5")


def _lark_tool(server: Server, api: str | None) -> Mode:
    if api == "responses" or (api is None and server.kind == "openai"):
        return "responses-lark"
    return "chat-lark"


def _gbnf(server: Server) -> Mode:
    if server.kind == "vllm":
        version = _version_tuple(server.version)
        if version is not None and version < STRUCTURED_OUTPUTS_SINCE:
            return "vllm-guided-gbnf"
        return "vllm-gbnf"
    if server.kind == "sglang":
        return "sglang-gbnf"
    if server.kind in ("openai", "ollama"):
        raise ConstraintError(
            f"{_KIND_NAMES[server.kind]} takes no GBNF grammar; use --grammar "
            f"{'lark' if server.kind == 'openai' else 'json'} or auto"
        )
    return "llama-gbnf"  # llama.cpp's field, also taken by LocalAI and others


def ladder(choice: str, server: Server, model: str, api: str | None = None) -> list[Mode]:
    """The modes to try, strongest first, each refusal one step down; ends in ``none``."""
    top: Mode | None
    if choice in MODES:
        top = choice  # type: ignore[assignment]  # a wire mode asked for by name
    elif choice == "none":
        top = None
    elif choice == "json":
        top = "json-schema"
    elif choice == "gbnf":
        top = _gbnf(server)
    elif choice == "lark":
        if server.kind in ("llama-cpp", "ollama", "sglang"):
            raise ConstraintError(
                f"{_KIND_NAMES[server.kind]} takes no Lark grammar; use --grammar "
                f"{'json' if server.kind == 'ollama' else 'gbnf'} or auto"
            )
        top = "vllm-lark" if server.kind == "vllm" else _lark_tool(server, api)
    elif server.kind in ("vllm", "sglang", "llama-cpp"):
        top = _gbnf(server)
    elif server.kind in ("openai", "unknown") and _takes_lark_tools(model):
        top = _lark_tool(server, api)
    else:
        top = "json-schema"
    rungs: list[Mode] = [] if top is None else [top]
    if top == "responses-lark":
        rungs.append("chat-lark")  # a proxy without the Responses API answers 404 there
    if top not in (None, "json-schema", "none"):
        rungs.append("json-schema")
    if top != "none":
        rungs.append("none")
    return rungs


def names_parameter(mode: str, message: str) -> bool:
    """Whether a 400's message names a request field that ``mode`` added."""
    text = message.lower()
    return any(
        re.search(rf"(?<![a-z_]){re.escape(word)}(?![a-z_])", text)
        for word in MODE_PARAMETERS.get(mode, ())
    )
