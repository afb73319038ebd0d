"""The LLM expert: any OpenAI-compatible endpoint through the ``openai`` client.

Output is held to the block's grammar where the server can do it: an OpenAI custom tool with
a Lark grammar (Responses or Chat Completions shape), vLLM ``structured_outputs``, llama.cpp
``grammar`` (GBNF). Otherwise the reply is free text, extracted strictly by ``edit``. Either
way the caller still checks the text with ``edit.apply_edit`` before anything runs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlparse

import openai

from .. import grammar_export
from . import prompts
from .edit import EditError, rationale_of, split_reply
from .expert import Context, ExpertError, Proposal, Selection, Usage
from .pricing import PriceError, cost_usd, load_prices

GrammarMode = Literal["auto", "responses-lark", "chat-lark", "vllm", "llama-cpp", "none"]
Api = Literal["chat", "responses"]

DEFAULT_MODEL = "gpt-5-mini"  # `--expert openai` without a model: cheap, and takes Lark tools
DEFAULT_BASE_URL = "https://api.openai.com/v1"
TOOL_NAME = "edit"
_RETRYABLE = {408, 409, 429}  # and every 5xx


def is_openai_url(base_url: str | None) -> bool:
    """True for OpenAI's own API (the default when no base URL is given)."""
    if base_url is None:
        return True
    return (urlparse(base_url).hostname or "").lower() == "api.openai.com"


def resolve_grammar_mode(mode: GrammarMode, model: str, base_url: str | None) -> GrammarMode:
    """``auto``: OpenAI's Lark custom tools for GPT-5 models on OpenAI's API, else free text."""
    if mode != "auto":
        return mode
    name = model.rsplit("/", 1)[-1].lower()
    if name.startswith("gpt-5") and is_openai_url(base_url):
        return "responses-lark"
    return "none"


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return exc.message


def _usd(amount: float) -> str:
    """Dollars with cents, or four decimals for fractions of a cent's worth of tokens."""
    return f"${amount:.2f}" if amount >= 0.1 or amount == 0 else f"${amount:.4f}"


def _tokens(response: Any) -> tuple[int, int]:
    """(input, output) tokens from Chat (prompt/completion) or Responses (input/output) usage."""
    usage = getattr(response, "usage", None)
    if usage is None:
        return 0, 0
    counts = []
    for names in (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens")):
        value = next((getattr(usage, n, None) for n in names if getattr(usage, n, None)), 0)
        counts.append(value if isinstance(value, int) and value > 0 else 0)
    return counts[0], counts[1]


class OpenAIExpert:
    """Proposes block rewrites (and, as analyst, block choices) with an OpenAI-compatible LLM."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        grammar_mode: GrammarMode = "auto",
        api: Api = "chat",
        timeout: float = 120.0,
        max_retries: int = 3,
        prices: Mapping[str, Any] | str | Path | None = None,
        max_cost: float | None = None,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        if grammar_mode not in get_args(GrammarMode):
            raise ValueError(f"grammar mode must be one of {', '.join(get_args(GrammarMode))}")
        if api not in get_args(Api):
            raise ValueError("api must be 'chat' or 'responses'")
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if is_openai_url(self.base_url):
                raise ExpertError(
                    "no API key for OpenAI: set OPENAI_API_KEY, or give --base-url of a local "
                    "OpenAI-compatible server (vLLM, llama.cpp, Ollama)"
                )
            key = "unused"  # local servers ignore it, the client insists on one
        self.grammar_mode: GrammarMode = resolve_grammar_mode(grammar_mode, model, self.base_url)
        self.api: Api = api
        self.max_retries = max(0, max_retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_cost = max_cost
        try:
            self.prices = load_prices(prices)
        except PriceError as exc:
            raise ExpertError(str(exc)) from None
        self.usage = Usage()
        # Retries are ours (below): the same backoff for every shape of failure, and a
        # clear message when they run out.
        self.client = openai.OpenAI(
            base_url=self.base_url, api_key=key, timeout=timeout, max_retries=0
        )

    # ------------------------------------------------------------ HTTP with retries and cost

    def _check_budget(self) -> None:
        if self.max_cost is not None and self.usage.cost_usd >= self.max_cost:
            raise ExpertError(
                f"cost limit reached: {_usd(self.usage.cost_usd)} of {_usd(self.max_cost)}"
            )

    def _delay(self, attempt: int, exc: BaseException) -> float:
        hinted = _retry_after(exc)
        if hinted is not None and hinted >= 0:
            return min(hinted, self.max_backoff)
        return float(min(self.backoff * (2**attempt), self.max_backoff))

    def _request(self, api: Api, what: str, **kwargs: Any) -> tuple[Any, int, float]:
        """One call (retried on 408/409/429/5xx, timeouts and connection errors) → the
        response, its tokens and its cost."""
        self._check_budget()
        create: Callable[..., Any] = (
            self.client.chat.completions.create if api == "chat" else self.client.responses.create
        )
        tries = self.max_retries + 1
        failure = ""
        for attempt in range(tries):
            last: BaseException
            try:
                response = create(model=self.model, **kwargs)
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status not in _RETRYABLE and status < 500:
                    raise ExpertError(
                        f"{self.name}: the server refused the request (HTTP {status}): "
                        f"{_server_message(exc)}"
                    ) from None
                failure, last = f"HTTP {status}: {_server_message(exc)}", exc
            except openai.APITimeoutError as exc:
                failure, last = "the request timed out", exc
            except openai.APIConnectionError as exc:
                where = self.base_url or DEFAULT_BASE_URL
                failure, last = f"cannot reach {where}: {exc.message}", exc
            except openai.APIError as exc:  # a reply the client could not read
                raise ExpertError(f"{self.name}: unreadable reply from the server: {exc}") from None
            else:
                if isinstance(response, (str, bytes)) or not hasattr(response, "usage"):
                    raise ExpertError(f"{self.name}: the server's reply is not an API response")
                tokens_in, tokens_out = _tokens(response)
                cost = cost_usd(self.model, tokens_in, tokens_out, self.prices)
                self.usage.prompt_tokens += tokens_in
                self.usage.completion_tokens += tokens_out
                self.usage.cost_usd += cost
                self.usage.calls.append(what)
                return response, tokens_in + tokens_out, cost
            if attempt + 1 < tries:
                time.sleep(self._delay(attempt, last))
        raise ExpertError(f"{self.name}: {failure} (gave up after {tries} tries)")

    # ------------------------------------------------------------ reading replies

    def _chat_text(self, response: Any, *, tool: bool) -> str:
        choices = getattr(response, "choices", None) or []
        if not choices:
            raise ExpertError(f"{self.name}: the server's reply has no choices")
        message = choices[0].message
        if tool:
            for call in getattr(message, "tool_calls", None) or []:
                custom = getattr(call, "custom", None)
                if custom is not None and isinstance(getattr(custom, "input", None), str):
                    return str(custom.input)
        content = getattr(message, "content", None)
        return content if isinstance(content, str) else ""

    def _responses_text(self, response: Any, *, tool: bool) -> str:
        if tool:
            for item in getattr(response, "output", None) or []:
                if getattr(item, "type", None) == "custom_tool_call":
                    value = getattr(item, "input", None)
                    if isinstance(value, str):
                        return value
        text = getattr(response, "output_text", "")
        return text if isinstance(text, str) else ""

    # ------------------------------------------------------------ the Expert protocol

    def propose(self, context: Context) -> Proposal:
        """A rewrite of ``context.blocks``. A reply of the wrong shape raises EditError (with
        the raw reply and its cost); an unreachable or unpaid server raises ExpertError."""
        blocks = list(context.blocks)
        mode = self.grammar_mode
        messages = prompts.expert_messages(context, constrained=mode != "none")
        if mode == "responses-lark":
            response, tokens, cost = self._request(
                "responses",
                "propose",
                instructions=messages[0]["content"],
                input=messages[1:],
                tools=[
                    {
                        "type": "custom",
                        "name": TOOL_NAME,
                        "description": prompts.TOOL_DESCRIPTION,
                        "format": {
                            "type": "grammar",
                            "syntax": "lark",
                            "definition": grammar_export.blocks_grammar(blocks, "lark"),
                        },
                    }
                ],
                tool_choice="required",
                parallel_tool_calls=False,
            )
            raw = self._responses_text(response, tool=True)
        elif mode == "chat-lark":
            response, tokens, cost = self._request(
                "chat",
                "propose",
                messages=messages,
                tools=[
                    {
                        "type": "custom",
                        "custom": {
                            "name": TOOL_NAME,
                            "description": prompts.TOOL_DESCRIPTION,
                            "format": {
                                "type": "grammar",
                                "grammar": {
                                    "syntax": "lark",
                                    "definition": grammar_export.blocks_grammar(blocks, "lark"),
                                },
                            },
                        },
                    }
                ],
                tool_choice="required",
                parallel_tool_calls=False,
            )
            raw = self._chat_text(response, tool=True)
        elif mode in ("vllm", "llama-cpp"):
            grammar = grammar_export.blocks_grammar(blocks, "gbnf")
            extra = (
                {"structured_outputs": {"grammar": grammar}}
                if mode == "vllm"
                else {"grammar": grammar}
            )
            response, tokens, cost = self._request(
                "chat", "propose", messages=messages, extra_body=extra
            )
            raw = self._chat_text(response, tool=False)
        elif self.api == "responses":
            response, tokens, cost = self._request(
                "responses", "propose", instructions=messages[0]["content"], input=messages[1:]
            )
            raw = self._responses_text(response, tool=False)
        else:
            response, tokens, cost = self._request("chat", "propose", messages=messages)
            raw = self._chat_text(response, tool=False)
        try:
            text, _ = split_reply(raw, blocks)
        except EditError as exc:
            raise EditError(exc.message, raw=raw, tokens=tokens, cost_usd=cost) from None
        rationale = rationale_of(raw, blocks)
        return Proposal(text=text, rationale=rationale, tokens=tokens, cost_usd=cost, raw=raw)

    def select(self, context: Context, candidates: Sequence[str]) -> Selection | None:
        """The analyst's choice among ``candidates``, as strict JSON; ExpertError when the
        reply is not a valid choice."""
        if not candidates:
            return None
        if len(candidates) == 1:
            return Selection(candidates[0], "the only candidate")
        messages = prompts.analyst_messages(context, candidates)
        schema = prompts.selection_schema(candidates)
        name = prompts.SELECTION_SCHEMA_NAME
        if self.api == "responses":
            response, tokens, cost = self._request(
                "responses",
                "select",
                instructions=messages[0]["content"],
                input=messages[1:],
                text={
                    "format": {
                        "type": "json_schema",
                        "name": name,
                        "strict": True,
                        "schema": schema,
                    }
                },
            )
            raw = self._responses_text(response, tool=False)
        else:
            response, tokens, cost = self._request(
                "chat",
                "select",
                messages=messages,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": name, "strict": True, "schema": schema},
                },
            )
            raw = self._chat_text(response, tool=False)
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            data = None
        if (
            not isinstance(data, dict)
            or data.get("block") not in candidates
            or not isinstance(data.get("reason"), str)
        ):
            shown = " ".join(raw.split())[:120]
            raise ExpertError(
                f"{self.name}: the analyst's reply is not a choice among "
                f"{', '.join(candidates)}: {shown!r}"
            )
        return Selection(str(data["block"]), data["reason"].strip(), tokens, cost)
