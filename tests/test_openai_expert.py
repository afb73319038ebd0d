"""The OpenAI expert against a real HTTP server on loopback, with the real ``openai`` client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from openai_server import (
    OpenAIServer,
    Reply,
    chat_completion,
    constraint_of,
    error_body,
    response_object,
)

from improve_dsl import docs, grammar_export, validate
from improve_dsl.diagnostics import DiagnosticError
from improve_dsl.refine.experts.base import Attempt, Context, ExpertError, Proposal
from improve_dsl.refine.experts.llm import prompts
from improve_dsl.refine.experts.llm.expert import OpenAIExpert
from improve_dsl.refine.reply import EditError, apply_edit, feedback_for

ROOT = Path(__file__).resolve().parents[1]
SPEC_PATH = "specs/digits.imp"
SPEC = (ROOT / SPEC_PATH).read_text(encoding="utf-8")

NEW_TRAIN = """\
train {  # why: train longer with momentum
  epochs = 12
  optimizer = sgd(lr = 0.05, momentum = 0.9, nesterov = true, weight_decay = 0.0005)
}
"""
NEW_MODEL = "model {\n  arch = mlp(width = 64, depth = 2)\n}\n"

CURVES = [
    {
        "event": "epoch",
        "epoch": 1,
        "epochs": 2,
        "train_loss": 1.9876,
        "val_loss": 1.7,
        "val_accuracy": 0.6111,
        "lr": 0.01,
        "seconds": 0.4,
    },
    {
        "event": "epoch",
        "epoch": 2,
        "epochs": 2,
        "train_loss": 1.2345,
        "val_loss": 1.1,
        "val_accuracy": 0.8123,
        "lr": 0.01,
        "seconds": 0.8,
    },
]
HISTORY = [
    Attempt(
        iteration=1,
        block="model",
        status="rejected",
        metric=0.7901,
        incumbent_metric=0.8123,
        diff="- arch = mlp(width = 32, depth = 1)\n+ arch = mlp(width = 16, depth = 1)",
        rationale="a narrower net to cut overfitting",
        seconds=3.24,
    )
]


def make_context(blocks: tuple[str, ...] = ("train",)) -> Context:
    return Context(
        spec_text=SPEC,
        spec_path=SPEC_PATH,
        blocks=blocks,
        profile="digits: 1,797 images, 8x8, 1 channel, 10 balanced classes",
        metric_name="val_accuracy",
        incumbent_metric=0.8123,
        curves=CURVES,
        history=HISTORY,
        incumbent_seconds=2.5,
        budget_seconds=1800.0,
        elapsed_seconds=300.0,
        max_cost=2.0,
        spent_usd=0.5,
    )


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


def make_expert(server: OpenAIServer, model: str = "test-model", **options: Any) -> OpenAIExpert:
    settings: dict[str, Any] = {
        "base_url": server.url,
        "api_key": "test-key",
        "grammar_mode": "none",
        "timeout": 1.0,
        "max_retries": 2,
        "backoff": 0.01,
    }
    settings.update(options)
    return OpenAIExpert(model, **settings)


def run_attempt(expert: OpenAIExpert, context: Context, tries: int = 3) -> tuple[str, str]:
    """What the refinement loop does: propose, apply, feed refusals back, at most ``tries``."""
    feedback = ""
    for _ in range(tries):
        proposal: Proposal | None = None
        try:
            proposal = expert.propose(context)
            return "accepted", apply_edit(SPEC, SPEC_PATH, context.blocks, proposal.text)
        except (EditError, DiagnosticError) as exc:
            feedback = feedback_for(exc)
            raw = exc.raw if isinstance(exc, EditError) else proposal.raw if proposal else ""
            context = replace(context, feedback=feedback, previous_reply=raw)
    return "invalid", feedback


def messages_text(body: dict[str, Any]) -> str:
    messages = body.get("messages") or body.get("input") or []
    parts = [str(body.get("instructions", ""))] + [str(m["content"]) for m in messages]
    return "\n".join(parts)


# ---------------------------------------------------------------- request bodies


def test_free_text_request_carries_spec_reference_curves_and_history(
    server: OpenAIServer,
) -> None:
    server.push(
        Reply(chat_completion(f"```imp\n{NEW_TRAIN}```", prompt_tokens=900, completion_tokens=60))
    )
    expert = make_expert(server)
    proposal = expert.propose(make_context())

    request = server.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer test-key"
    body = request.body
    assert body["model"] == "test-model"
    assert "tools" not in body and "response_format" not in body
    system, user = body["messages"][0], body["messages"][1]
    assert system["role"] == "system" and "Never write Python" in system["content"]
    assert "Answer with only the `train` block" in system["content"]
    content = user["content"]
    assert SPEC.rstrip() in content
    assert docs.block_reference("train").rstrip() in content
    assert "digits: 1,797 images" in content
    assert "epoch  train_loss  val_loss  val_accuracy" in content
    assert "2  1.2345  1.1000  0.8123" in content
    assert "#1 model: rejected, 0.7901 vs 0.8123 (-0.0222), trained in 3.2 s" in content
    assert "## Its score on the validation split: val_accuracy = 0.8123, trained in 2.5 s" in (
        content
    )
    assert "## Budget\ntime: 25.0 min left of 30.0 min" in content
    assert "cost: $1.50 left of $2.00" in content
    assert "why: a narrower net to cut overfitting" in content
    assert "+ arch = mlp(width = 16, depth = 1)" in content

    assert proposal.text == NEW_TRAIN
    assert proposal.rationale == "why: train longer with momentum"
    assert proposal.tokens == 960
    new = apply_edit(SPEC, SPEC_PATH, ["train"], proposal.text)
    assert validate.load_text(new, SPEC_PATH).train.epochs == 12


def test_chat_lark_sends_the_grammar_as_a_custom_tool(server: OpenAIServer) -> None:
    server.push(Reply(chat_completion(tool_input=NEW_TRAIN)))
    proposal = make_expert(server, grammar_mode="chat-lark").propose(make_context())
    body = server.requests[0].body
    assert server.requests[0].path == "/v1/chat/completions"
    assert body["tools"] == [
        {
            "type": "custom",
            "custom": {
                "name": "edit",
                "description": prompts.TOOL_DESCRIPTION,
                "format": {
                    "type": "grammar",
                    "grammar": {
                        "syntax": "lark",
                        "definition": grammar_export.block_grammar("train", "lark"),
                    },
                },
            },
        }
    ]
    assert body["parallel_tool_calls"] is False
    assert body["tool_choice"] == "required"
    assert "```imp" not in body["messages"][0]["content"].split("Rules:")[1]
    assert proposal.text == NEW_TRAIN


def test_responses_lark_sends_the_grammar_in_the_responses_shape(server: OpenAIServer) -> None:
    server.push(Reply(response_object(tool_input=NEW_TRAIN, input_tokens=700, output_tokens=40)))
    expert = make_expert(server, grammar_mode="responses-lark")
    proposal = expert.propose(make_context())
    request = server.requests[0]
    assert request.path == "/v1/responses"
    body = request.body
    assert body["model"] == "test-model"
    assert body["tools"] == [
        {
            "type": "custom",
            "name": "edit",
            "description": prompts.TOOL_DESCRIPTION,
            "format": {
                "type": "grammar",
                "syntax": "lark",
                "definition": grammar_export.block_grammar("train", "lark"),
            },
        }
    ]
    assert body["parallel_tool_calls"] is False
    assert "Never write Python" in body["instructions"]
    assert SPEC.rstrip() in body["input"][0]["content"]
    assert proposal.text == NEW_TRAIN
    assert proposal.tokens == 740
    assert expert.usage.prompt_tokens == 700 and expert.usage.completion_tokens == 40


def test_all_at_once_uses_the_several_blocks_grammar(server: OpenAIServer) -> None:
    server.push(Reply(response_object(tool_input=NEW_MODEL + "\n" + NEW_TRAIN)))
    expert = make_expert(server, grammar_mode="responses-lark")
    proposal = expert.propose(make_context(("model", "train")))
    definition = server.requests[0].body["tools"][0]["format"]["definition"]
    assert definition == grammar_export.blocks_grammar(["model", "train"], "lark")
    new = apply_edit(SPEC, SPEC_PATH, ["model", "train"], proposal.text)
    assert validate.load_text(new, SPEC_PATH).train.epochs == 12


def test_vllm_and_llama_cpp_get_their_grammar_in_the_extra_body(server: OpenAIServer) -> None:
    gbnf = grammar_export.block_grammar("train", "gbnf")
    server.push(Reply(chat_completion(NEW_TRAIN)), Reply(chat_completion(NEW_TRAIN)))
    make_expert(server, grammar_mode="vllm-gbnf").propose(make_context())
    make_expert(server, grammar_mode="llama-gbnf").propose(make_context())
    vllm, llama = server.requests[0].body, server.requests[1].body
    assert vllm["structured_outputs"] == {"grammar": gbnf}
    assert "grammar" not in vllm and "tools" not in vllm
    assert llama["grammar"] == gbnf
    assert "structured_outputs" not in llama


def test_free_text_over_the_responses_api(server: OpenAIServer) -> None:
    server.push(Reply(response_object(f"Here you go:\n```imp\n{NEW_TRAIN}```")))
    proposal = make_expert(server, api="responses").propose(make_context())
    assert server.requests[0].path == "/v1/responses"
    assert "tools" not in server.requests[0].body
    assert proposal.text == NEW_TRAIN and proposal.rationale == "Here you go:"


@pytest.mark.parametrize(
    ("kind", "version", "model", "mode"),
    [
        ("vllm", "0.11.0", "Qwen/Qwen3-8B", "vllm-gbnf"),
        ("vllm", "0.9.2", "Qwen/Qwen3-8B", "vllm-guided-gbnf"),  # before structured_outputs
        ("sglang", "", "Qwen/Qwen3-8B", "sglang-gbnf"),
        ("llama-cpp", "", "qwen3-8b-q4", "llama-gbnf"),
        ("ollama", "0.12.0", "qwen3:8b", "json-schema"),
        (None, "", "gpt-5-mini", "chat-lark"),  # a proxy (or Azure) in front of GPT-5
        (None, "", "some-local-model", "json-schema"),
    ],
)
def test_auto_probes_the_server_once_and_picks_its_strongest_constraint(
    kind: str | None, version: str, model: str, mode: str
) -> None:
    notes: list[str] = []
    with OpenAIServer(kind, version=version) as server:
        server.push(Reply(chat_completion(NEW_TRAIN)), Reply(chat_completion(NEW_TRAIN)))
        expert = make_expert(server, model, grammar_mode="auto", notify=notes.append)
        assert expert.grammar_mode == mode
        probes = [r.path for r in server.requests]
        assert probes[0] == "/v1/models" and all(r.body is None for r in server.requests)
        for _ in range(2):
            assert expert.propose(make_context()).grammar == mode
        assert [r.path for r in server.requests if r.body is None] == probes  # probed once
        posts = [r for r in server.requests if r.body is not None]
    assert [constraint_of(r.path, r.body) is not None for r in posts] == [True, True]
    assert len(notes) == 1 and "replies held to" in notes[0]


def test_gpt5_on_openais_own_api_gets_the_lark_tool_without_a_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("IMPROVE_GRAMMAR", raising=False)
    assert OpenAIExpert("gpt-5-mini", api_key="k").grammar_mode == "responses-lark"
    assert OpenAIExpert("gpt-4o", api_key="k").grammar_mode == "json-schema"
    assert OpenAIExpert("gpt-5", api_key="k", grammar_mode="none").grammar_mode == "none"


@pytest.mark.parametrize(
    ("kind", "choice", "mode"),
    [
        ("vllm", "lark", "vllm-lark"),
        ("vllm", "json", "json-schema"),
        ("llama-cpp", "none", "none"),
        (None, "gbnf", "llama-gbnf"),
        (None, "lark", "chat-lark"),
    ],
)
def test_the_grammar_option_overrides_detection(kind: str | None, choice: str, mode: str) -> None:
    with OpenAIServer(kind) as server:
        assert make_expert(server, grammar_mode=choice).grammar_mode == mode


def test_the_environment_variable_chooses_when_no_option_does(
    server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMPROVE_GRAMMAR", "json")
    assert make_expert(server, grammar_mode=None).grammar_mode == "json-schema"
    monkeypatch.setenv("IMPROVE_GRAMMAR", "regex")
    with pytest.raises(ExpertError, match=r"\$IMPROVE_GRAMMAR must be one of auto, lark"):
        make_expert(server, grammar_mode=None)


@pytest.mark.parametrize(
    ("kind", "choice", "message"),
    [
        ("ollama", "gbnf", "Ollama takes no GBNF grammar; use --grammar json or auto"),
        ("llama-cpp", "lark", "llama.cpp takes no Lark grammar; use --grammar gbnf or auto"),
    ],
)
def test_a_grammar_the_server_cannot_take_is_a_clear_error(
    kind: str, choice: str, message: str
) -> None:
    with OpenAIServer(kind) as server, pytest.raises(ExpertError, match=message):
        make_expert(server, grammar_mode=choice).detect()


def test_json_mode_sends_the_block_as_a_string_and_reads_it_back(server: OpenAIServer) -> None:
    answer = {"reason": "momentum trains faster", "block": NEW_TRAIN}
    server.push(Reply(chat_completion(json.dumps(answer))))
    proposal = make_expert(server, grammar_mode="json").propose(make_context())
    body = server.requests[0].body
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {
            "name": "block_rewrite",
            "strict": True,
            "schema": prompts.proposal_schema(),
        },
    }
    assert '"block"' in body["messages"][0]["content"]
    assert (proposal.text, proposal.rationale, proposal.grammar) == (
        NEW_TRAIN,
        "momentum trains faster",
        "json-schema",
    )


def test_a_refused_constraint_steps_down_once_and_stays_down(server: OpenAIServer) -> None:
    refusal = error_body(
        "Unsupported parameter: 'tools' is not supported with this model.",
        "invalid_request_error",
    )
    answer = json.dumps({"reason": "longer", "block": NEW_TRAIN})
    server.push(
        Reply(refusal, status=400),
        Reply(chat_completion(answer)),
        Reply(chat_completion(answer)),
    )
    notes: list[str] = []
    expert = make_expert(server, "gpt-5-mini", grammar_mode="auto", notify=notes.append)
    first = expert.propose(make_context())
    second = expert.propose(make_context())
    posts = [r.body for r in server.requests if r.body is not None]
    assert "tools" in posts[0] and "tools" not in posts[1] and "tools" not in posts[2]
    assert "response_format" in posts[1] and "response_format" in posts[2]
    assert first.grammar == second.grammar == "json-schema"
    assert first.grammar_note.startswith("the server refused chat-lark (HTTP 400: Unsupported")
    assert first.grammar_note.endswith("stepped down to json-schema")
    assert second.grammar_note == ""
    assert any("stepped down to json-schema" in note for note in notes)
    assert first.text == NEW_TRAIN


def test_a_proxy_without_the_responses_api_gets_the_chat_shape_of_the_tool() -> None:
    with OpenAIServer("openai") as server:  # lists models owned_by "system", as OpenAI does
        server.push(
            Reply(error_body("Not Found", "not_found"), status=404),
            Reply(chat_completion(tool_input=NEW_TRAIN)),
        )
        expert = make_expert(server, "gpt-5-mini", grammar_mode="auto")
        assert expert.grammar_mode == "responses-lark"
        proposal = expert.propose(make_context())
    posts = [r for r in server.requests if r.body is not None]
    assert [r.path for r in posts] == ["/v1/responses", "/v1/chat/completions"]
    assert posts[1].body["tools"][0]["custom"]["format"]["grammar"]["syntax"] == "lark"
    assert (proposal.grammar, proposal.text) == ("chat-lark", NEW_TRAIN)
    assert "the server refused responses-lark (HTTP 404" in proposal.grammar_note


def test_a_400_that_names_another_field_is_not_a_step_down(server: OpenAIServer) -> None:
    server.push(Reply(error_body("'messages' must not be empty", "invalid_request_error"), 400))
    with pytest.raises(ExpertError, match=r"refused the request \(HTTP 400\)"):
        make_expert(server, grammar_mode="llama-gbnf").propose(make_context())
    assert len(server.requests) == 1


def test_a_missing_api_key_is_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ExpertError, match="no API key for OpenAI: set OPENAI_API_KEY"):
        OpenAIExpert("gpt-5")


def test_a_local_server_needs_no_api_key(
    server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server.push(Reply(chat_completion(NEW_TRAIN)))
    expert = OpenAIExpert("local", base_url=server.url, grammar_mode="none", timeout=1.0)
    assert expert.propose(make_context()).text == NEW_TRAIN


# ---------------------------------------------------------------- replies of every bad shape

LOCKED = "data {\n  source = mnist()\n  batch_size = 32\n}\n"


@pytest.mark.parametrize(
    ("reply", "blocks", "expected"),
    [
        (f"Sure, here it is:\n{NEW_TRAIN}Hope it helps!", ("train",), "text before the block"),
        (NEW_TRAIN + "\n" + NEW_TRAIN, ("train",), "holds block 'train' 2 times"),
        (NEW_MODEL, ("train",), "holds block 'model', but 'train' was asked for"),
        ("import torch\nmodel = torch.nn.Linear(64, 10)\n", ("train",), "is not .imp text"),
        ("train {\n  epochs = 12\n", ("train",), "block 'train' in the reply is never closed"),
        (LOCKED, ("data",), "'source' in block 'data' is locked: refinement never changes it"),
        ("train {\n  epochs = 0\n}\n", ("train",), "field 'epochs' must be at least 1"),
    ],
    ids=["prose", "two-blocks", "wrong-block", "python", "unclosed", "locked", "invalid"],
)
def test_bad_replies_are_fed_back_then_recorded_invalid(
    server: OpenAIServer, reply: str, blocks: tuple[str, ...], expected: str
) -> None:
    server.push(*[Reply(chat_completion(reply)) for _ in range(3)])
    status, feedback = run_attempt(make_expert(server), make_context(blocks))
    assert status == "invalid"
    assert expected in feedback
    assert len(server.requests) == 3
    # Each retry shows the refused reply and the feedback, as aider's reflections do.
    retry = server.requests[1].body["messages"]
    assert retry[2] == {"role": "assistant", "content": reply}
    assert retry[3]["role"] == "user"
    assert expected in retry[3]["content"]
    assert "Your reply was not applied" in retry[3]["content"]
    assert f"send only the `{blocks[0]}` block" in retry[3]["content"]


def test_a_bad_reply_then_a_good_one_is_accepted(server: OpenAIServer) -> None:
    server.push(
        Reply(chat_completion("train {\n  optimiser = adam()\n}")),
        Reply(chat_completion(NEW_TRAIN)),
    )
    status, new = run_attempt(make_expert(server), make_context())
    assert status == "accepted"
    assert validate.load_text(new, SPEC_PATH).train.epochs == 12
    retry = server.requests[1].body["messages"][3]["content"]
    assert "unknown field 'optimiser' in block 'train'" in retry
    assert "did you mean 'optimizer'?" in retry


def test_an_empty_tool_call_is_an_invalid_reply(server: OpenAIServer) -> None:
    server.push(Reply(chat_completion(None)))
    with pytest.raises(EditError, match="the reply is empty") as info:
        make_expert(server, grammar_mode="chat-lark").propose(make_context())
    assert info.value.tokens == 120


# ---------------------------------------------------------------- HTTP failures


def test_429_then_success_is_retried(server: OpenAIServer) -> None:
    server.push(
        Reply(
            error_body("Rate limit reached", "rate_limit_exceeded"),
            status=429,
            headers={"retry-after": "0"},
        ),
        Reply(chat_completion(NEW_TRAIN)),
    )
    proposal = make_expert(server).propose(make_context())
    assert proposal.text == NEW_TRAIN
    assert len(server.requests) == 2


def test_repeated_500s_end_as_an_expert_error(server: OpenAIServer) -> None:
    server.push(*[Reply(error_body("the model is overloaded"), status=500) for _ in range(3)])
    started = time.monotonic()
    with pytest.raises(ExpertError) as info:
        make_expert(server, max_retries=2).propose(make_context())
    assert str(info.value) == (
        "openai:test-model: HTTP 500: the model is overloaded (gave up after 3 tries)"
    )
    assert len(server.requests) == 3
    assert time.monotonic() - started < 5


def test_a_timeout_is_retried_then_reported(server: OpenAIServer) -> None:
    server.push(Reply(chat_completion(NEW_TRAIN), delay=1.0), Reply(chat_completion(NEW_TRAIN)))
    expert = make_expert(server, timeout=0.3, max_retries=1)
    assert expert.propose(make_context()).text == NEW_TRAIN
    server.push(*[Reply(chat_completion(NEW_TRAIN), delay=1.0) for _ in range(2)])
    with pytest.raises(ExpertError, match="the request timed out \\(gave up after 2 tries\\)"):
        expert.propose(make_context())


def test_a_refused_request_is_not_retried(server: OpenAIServer) -> None:
    server.push(
        Reply(error_body("Incorrect API key provided", "invalid_request_error"), status=401)
    )
    with pytest.raises(ExpertError, match=r"refused the request \(HTTP 401\): Incorrect API key"):
        make_expert(server).propose(make_context())
    assert len(server.requests) == 1


def test_a_reply_that_is_not_json_is_an_expert_error(server: OpenAIServer) -> None:
    server.push(Reply("<html>gateway error</html>"))
    with pytest.raises(ExpertError, match="openai:test-model"):
        make_expert(server).propose(make_context())


def test_an_unreachable_server_is_an_expert_error() -> None:
    with OpenAIServer() as gone:
        url = gone.url
    expert = OpenAIExpert(
        "m",
        base_url=url,
        api_key="k",
        grammar_mode="none",
        timeout=0.5,
        max_retries=1,
        backoff=0.01,
    )
    with pytest.raises(ExpertError, match=r"cannot reach http://127\.0\.0\.1"):
        expert.propose(make_context())


# ---------------------------------------------------------------- tokens and cost


def test_cost_is_counted_and_the_limit_stops_before_calling(server: OpenAIServer) -> None:
    server.push(Reply(chat_completion(NEW_TRAIN, prompt_tokens=1000, completion_tokens=500)))
    expert = make_expert(
        server, prices={"test-model": {"input": 1000.0, "output": 2000.0}}, max_cost=1.5
    )
    proposal = expert.propose(make_context())
    assert proposal.cost_usd == pytest.approx(2.0)  # 1000 x $1000/M + 500 x $2000/M
    assert expert.usage.cost_usd == pytest.approx(2.0)
    with pytest.raises(ExpertError, match=r"^cost limit reached: \$2\.00 of \$1\.50$"):
        expert.propose(make_context())
    assert len(server.requests) == 1


def test_prices_come_from_a_json_file(server: OpenAIServer, tmp_path: Path) -> None:
    table = tmp_path / "prices.json"
    table.write_text(json.dumps({"test-model": [3.0, 6.0]}))
    server.push(Reply(chat_completion(NEW_TRAIN, prompt_tokens=2_000_000, completion_tokens=0)))
    proposal = make_expert(server, prices=str(table)).propose(make_context())
    assert proposal.cost_usd == pytest.approx(6.0)


def test_an_unknown_model_costs_nothing_but_tokens_count(server: OpenAIServer) -> None:
    server.push(Reply(chat_completion(NEW_TRAIN, prompt_tokens=321, completion_tokens=9)))
    expert = make_expert(server, model="my-local-llama")
    proposal = expert.propose(make_context())
    assert proposal.cost_usd == 0.0 and proposal.tokens == 330
    assert expert.usage.prompt_tokens == 321 and expert.usage.calls == ["propose"]


# ---------------------------------------------------------------- the analyst


def test_select_asks_for_strict_json_over_chat(server: OpenAIServer) -> None:
    answer = {"block": "augment", "reason": "train accuracy far above validation"}
    server.push(Reply(chat_completion(json.dumps(answer), prompt_tokens=50, completion_tokens=10)))
    candidates = ["augment", "model", "train", "eval"]
    selection = make_expert(server, grammar_mode="json").select(make_context(), candidates)
    assert selection is not None
    assert (selection.block, selection.reason, selection.tokens) == (
        "augment",
        "train accuracy far above validation",
        60,
    )
    body = server.requests[0].body
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {
            "name": "block_choice",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {
                    "block": {"type": "string", "enum": candidates},
                    "reason": {"type": "string"},
                },
                "required": ["block", "reason"],
                "additionalProperties": False,
            },
        },
    }
    text = messages_text(body)
    assert "performance analyst" in text and "a narrower net to cut overfitting" in text
    assert "0.8123" in text


def test_select_over_responses_uses_text_format(server: OpenAIServer) -> None:
    server.push(Reply(response_object(json.dumps({"block": "train", "reason": "underfits"}))))
    expert = make_expert(server, api="responses", grammar_mode="json")
    selection = expert.select(make_context(), ["model", "train"])
    assert selection is not None and selection.block == "train"
    fmt = server.requests[0].body["text"]["format"]
    assert fmt["type"] == "json_schema" and fmt["strict"] is True
    assert fmt["schema"]["properties"]["block"]["enum"] == ["model", "train"]


def test_the_analyst_steps_down_to_free_text_when_json_schema_is_refused(
    server: OpenAIServer,
) -> None:
    refusal = error_body("response_format: json_schema is not supported", "invalid_request_error")
    server.push(
        Reply(refusal, status=400),
        Reply(chat_completion('I would pick {"block": "train", "reason": "it underfits"}.')),
    )
    notes: list[str] = []
    expert = make_expert(server, grammar_mode="json", notify=notes.append)
    selection = expert.select(make_context(), ["model", "train"])
    assert selection is not None and selection.block == "train"
    bodies = [r.body for r in server.requests]
    assert "response_format" in bodies[0] and "response_format" not in bodies[1]
    assert "stepped down to none" in notes[0]
    assert expert.grammar_mode == "none"  # proposals, too, no longer ask for it


def test_a_bad_analyst_reply_is_an_expert_error(server: OpenAIServer) -> None:
    server.push(Reply(chat_completion(json.dumps({"block": "pipeline", "reason": "x"}))))
    with pytest.raises(ExpertError, match="the analyst's reply is not a choice among"):
        make_expert(server).select(make_context(), ["model", "train"])


def test_select_with_one_candidate_does_not_call(server: OpenAIServer) -> None:
    selection = make_expert(server).select(make_context(), ["train"])
    assert selection is not None and selection.block == "train"
    assert server.requests == []


def test_long_curves_are_shown_compactly_with_the_last_epoch() -> None:
    curves = [
        {"epoch": i, "train_loss": 1.0 / i, "val_loss": 1.0, "val_accuracy": i / 100}
        for i in range(1, 101)
    ]
    table = prompts.curves_table(curves, "val_accuracy").splitlines()
    assert table[0] == "epoch  train_loss  val_loss  val_accuracy"
    assert len(table) == 1 + prompts.MAX_CURVE_ROWS
    assert table[1].startswith("1  ") and table[-1] == "100  0.0100  1.0000  1.0000"
