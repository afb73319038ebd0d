"""The LLM expert: any OpenAI-compatible endpoint through the ``openai`` client.

Output is held to the block's grammar where the server can do it (``constraint`` says how,
and which server it is): an OpenAI custom tool with a Lark grammar (Responses or Chat), vLLM
``structured_outputs``, SGLang ``ebnf``, llama.cpp ``grammar`` (GBNF), a JSON schema with
the block as a string field (Ollama and most others), else free text. A server that refuses
a constraint with a 400 naming its field steps down one rung, says so, and keeps the mode
that worked. Either way the caller still checks the text with ``reply.apply_edit`` before
anything runs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import openai

from .... import grammar_export
from ...reply import EditError, rationale_of, split_reply
from ..base import Context, ExpertError, Proposal, Selection, Usage
from . import prompts
from .constraint import (
    MODE_LABELS,
    ConstraintError,
    Mode,
    Server,
    grammar_choice,
    is_openai_url,
    ladder,
    names_parameter,
    probe,
)
from .pricing import PriceError, cost_usd, load_prices

Api = Literal["chat", "responses"]

DEFAULT_MODEL = "gpt-5-mini"  # `--expert openai` without a model: cheap, and takes Lark tools
DEFAULT_BASE_URL = "https://api.openai.com/v1"
TOOL_NAME = "edit"
_RETRYABLE = {408, 409, 429}  # and every 5xx
_PROBED_CHOICES = ("auto", "lark", "gbnf")  # the choices whose request shape needs the server


class RefusedError(ExpertError):
    """The server refused a request (a 4xx other than 408/409/429): not retried."""

    def __init__(self, message: str, status: int, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # the server's own words (and the parameter it named)


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
            param = error.get("param")
            extra = f" (param: {param})" if isinstance(param, str) and param else ""
            return str(error["message"]) + extra
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


def _json_object(raw: str) -> dict[str, Any] | None:
    """The first JSON object in ``raw`` (all of it, or one inside prose), else None."""
    decoder = json.JSONDecoder()
    for start in [i for i, ch in enumerate(raw) if ch == "{"][:50]:
        try:
            value, _ = decoder.raw_decode(raw, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


class OpenAIExpert:
    """Proposes block rewrites (and, as analyst, block choices) with an OpenAI-compatible LLM."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        grammar_mode: str | None = "auto",
        api: Api | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        prices: Mapping[str, Any] | str | Path | None = None,
        max_cost: float | None = None,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        try:
            self.choice = grammar_choice(grammar_mode)
        except ConstraintError as exc:
            raise ExpertError(str(exc)) from None
        if api is not None and api not in get_args(Api):
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
        self.api_key = key
        self.api: Api | None = api
        self.max_retries = max(0, max_retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_cost = max_cost
        self.notify = notify or (lambda text: None)
        try:
            self.prices = load_prices(prices)
        except PriceError as exc:
            raise ExpertError(str(exc)) from None
        self.usage = Usage()
        self.server: Server | None = None
        self._modes: list[Mode] = []
        self._refused: set[str] = set()  # modes this server refused: never asked again
        self._lark = self._gbnf = ""  # the grammar of the blocks being proposed
        # Step-downs during the current attempt (every reply of it carries them, so the
        # journal keeps them whichever reply ends the attempt), and who called last.
        self._notes: list[str] = []
        self._last_call = ""
        # Retries are ours (below): the same backoff for every shape of failure, and a
        # clear message when they run out.
        self.client = openai.OpenAI(
            base_url=self.base_url, api_key=key, timeout=timeout, max_retries=0
        )

    # ------------------------------------------------------------ what the server takes

    def detect(self) -> list[Mode]:
        """Probe the server once (only when the choice needs it) and settle the ladder of
        modes; ExpertError for a choice this server cannot take."""
        if self.server is None:
            if self.choice in _PROBED_CHOICES:
                server = probe(self.base_url, self.api_key)
            else:
                server = Server("openai" if is_openai_url(self.base_url) else "unknown")
            try:
                self._modes = ladder(self.choice, server, self.model, self.api)
            except ConstraintError as exc:
                raise ExpertError(f"{self.name}: {exc}") from None
            self.server = server
            if self.choice in _PROBED_CHOICES:
                self.notify(
                    f"{self.name}: {server.describe()}; replies held to "
                    f"{MODE_LABELS[self._modes[0]]}"
                )
        return self._modes

    @property
    def grammar_mode(self) -> Mode:
        """The mode the next proposal will use."""
        return self.detect()[0]

    def _api(self) -> Api:
        """Responses on OpenAI's own API (its recommended one), Chat Completions elsewhere:
        every OpenAI-compatible server and proxy has it."""
        if self.api is not None:
            return self.api
        return "responses" if is_openai_url(self.base_url) else "chat"

    def _step_down(self, modes: list[Mode], exc: RefusedError) -> str:
        """Drop a refused mode for good; the note said on the console and journalled."""
        refused = modes[0]
        self._refused.add(refused)
        self._modes = [m for m in self._modes if m not in self._refused] or ["none"]
        remaining = [m for m in modes if m not in self._refused] or ["none"]
        note = (
            f"the server refused {refused} (HTTP {exc.status}: {exc.reason}); stepped down "
            f"to {remaining[0]}"
        )
        self.notify(f"{self.name}: {note}: {MODE_LABELS[remaining[0]]}")
        return note

    def _refusal_of(self, mode: Mode, exc: ExpertError) -> RefusedError | None:
        if not isinstance(exc, RefusedError) or mode == "none":
            return None
        if exc.status in (400, 422) and names_parameter(mode, exc.reason):
            return exc
        if exc.status == 404 and mode == "responses-lark":
            return exc  # no Responses API here (a proxy): the Chat shape of the same tool
        return None

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
                    reason = _server_message(exc)
                    raise RefusedError(
                        f"{self.name}: the server refused the request (HTTP {status}): {reason}",
                        status,
                        reason,
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

    # ------------------------------------------------------------ one request per mode

    def _ask(
        self,
        mode: Mode,
        what: str,
        messages: list[dict[str, str]],
        schema: tuple[str, dict[str, Any]],
    ) -> tuple[str, int, float]:
        """Send ``messages`` constrained by ``mode``: the raw reply, its tokens and cost.
        The grammar modes send the blocks' grammar, ``json-schema`` the named ``schema``."""
        api = self._api()
        if mode == "responses-lark":
            response, tokens, cost = self._request(
                "responses",
                what,
                instructions=messages[0]["content"],
                input=messages[1:],
                tools=[
                    {
                        "type": "custom",
                        "name": TOOL_NAME,
                        "description": prompts.TOOL_DESCRIPTION,
                        "format": {"type": "grammar", "syntax": "lark", "definition": self._lark},
                    }
                ],
                tool_choice="required",
                parallel_tool_calls=False,
            )
            return self._responses_text(response, tool=True), tokens, cost
        if mode == "chat-lark":
            custom = {
                "name": TOOL_NAME,
                "description": prompts.TOOL_DESCRIPTION,
                "format": {
                    "type": "grammar",
                    "grammar": {"syntax": "lark", "definition": self._lark},
                },
            }
            response, tokens, cost = self._request(
                "chat",
                what,
                messages=messages,
                tools=[{"type": "custom", "custom": custom}],
                tool_choice="required",
                parallel_tool_calls=False,
            )
            return self._chat_text(response, tool=True), tokens, cost
        if mode in ("vllm-gbnf", "vllm-lark", "vllm-guided-gbnf", "sglang-gbnf", "llama-gbnf"):
            text = self._lark if mode == "vllm-lark" else self._gbnf
            fields: dict[str, dict[str, Any]] = {
                "vllm-gbnf": {"structured_outputs": {"grammar": text}},
                "vllm-lark": {"structured_outputs": {"grammar": text}},
                "vllm-guided-gbnf": {"guided_grammar": text},
                "sglang-gbnf": {"ebnf": text},
                "llama-gbnf": {"grammar": text},
            }
            extra = fields[mode]
            response, tokens, cost = self._request(
                "chat", what, messages=messages, extra_body=extra
            )
            return self._chat_text(response, tool=False), tokens, cost
        kwargs: dict[str, Any] = {}
        name, body = schema
        if mode == "json-schema" and api == "responses":
            kwargs["text"] = {
                "format": {"type": "json_schema", "name": name, "strict": True, "schema": body}
            }
        elif mode == "json-schema":
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": name, "strict": True, "schema": body},
            }
        if api == "responses":
            response, tokens, cost = self._request(
                "responses", what, instructions=messages[0]["content"], input=messages[1:], **kwargs
            )
            return self._responses_text(response, tool=False), tokens, cost
        response, tokens, cost = self._request("chat", what, messages=messages, **kwargs)
        return self._chat_text(response, tool=False), tokens, cost

    def _constrained(
        self,
        modes: list[Mode],
        what: str,
        messages_for: Callable[[Mode], list[dict[str, str]]],
        schema: tuple[str, dict[str, Any]],
    ) -> tuple[Mode, str, int, float]:
        """Ask with the strongest mode left, stepping down on a refusal that names it:
        (mode used, raw reply, tokens, cost); a step-down is noted for the attempt."""
        while True:
            mode = modes[0]
            try:
                raw, tokens, cost = self._ask(mode, what, messages_for(mode), schema)
            except ExpertError as exc:
                refusal = self._refusal_of(mode, exc)
                if refusal is None:
                    raise
                self._notes.append(self._step_down(modes, refusal))
                modes = [m for m in modes if m not in self._refused] or ["none"]
                continue
            return mode, raw, tokens, cost

    # ------------------------------------------------------------ the Expert protocol

    def propose(self, context: Context) -> Proposal:
        """A rewrite of ``context.blocks``. A reply of the wrong shape raises EditError (with
        the raw reply and its cost); an unreachable or unpaid server raises ExpertError."""
        blocks = list(context.blocks)
        self._lark = grammar_export.blocks_grammar(blocks, "lark")
        self._gbnf = grammar_export.blocks_grammar(blocks, "gbnf")

        def messages_for(mode: Mode) -> list[dict[str, str]]:
            return prompts.expert_messages(
                context, constrained=mode != "none", json_reply=mode == "json-schema"
            )

        if context.feedback is None and self._last_call == "propose":
            self._notes = []  # a new attempt (the analyst's call, if any, began it)
        self._last_call = "propose"
        mode, raw, tokens, cost = self._constrained(
            list(self.detect()),
            "propose",
            messages_for,
            (prompts.PROPOSAL_SCHEMA_NAME, prompts.proposal_schema()),
        )
        rationale = ""
        text_reply = raw
        if mode == "json-schema" or raw.lstrip().startswith("{"):
            data = _json_object(raw)
            if data is not None and isinstance(data.get("block"), str):
                text_reply = data["block"]
                rationale = " ".join(str(data.get("reason") or "").split())
        note = "; ".join(self._notes)
        try:
            text, _ = split_reply(text_reply, blocks)
        except EditError as exc:
            raise EditError(
                exc.message, raw=raw, tokens=tokens, cost_usd=cost, grammar=mode, grammar_note=note
            ) from None
        rationale = rationale or rationale_of(text_reply, blocks)
        return Proposal(
            text=text,
            rationale=rationale,
            tokens=tokens,
            cost_usd=cost,
            raw=raw,
            grammar=mode,
            grammar_note=note,
        )

    def select(self, context: Context, candidates: Sequence[str]) -> Selection | None:
        """The analyst's choice among ``candidates``, as JSON (schema-constrained where the
        server takes it); ExpertError when the reply is not a valid choice."""
        if not candidates:
            return None
        if len(candidates) == 1:
            return Selection(candidates[0], "the only candidate")
        self.detect()
        messages = prompts.analyst_messages(context, candidates)
        schema = (prompts.SELECTION_SCHEMA_NAME, prompts.selection_schema(candidates))
        modes: list[Mode] = [
            m for m in ("json-schema", "none") if m not in self._refused and self.choice != "none"
        ] or ["none"]
        self._notes, self._last_call = [], "select"  # the analyst's call begins an attempt
        _, raw, tokens, cost = self._constrained(modes, "select", lambda _: messages, schema)
        data = _json_object(raw)
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
