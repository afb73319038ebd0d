"""The words sent to an LLM expert, kept apart from the logic (as in aider's ``*_prompts.py``).

Two roles: the **expert** rewrites the chosen block(s); the **analyst** reads the curves and
the history and names the block to change next, as JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .... import docs, registry
from ...reply import editable_view
from ..base import Attempt, Context

MAX_HISTORY = 12  # the most recent attempts shown; older ones rarely change the next move
MAX_DIFF_LINES = 24
MAX_CURVE_ROWS = 30

# ---------------------------------------------------------------- the expert

EXPERT_SYSTEM = """\
You improve image-classification training pipelines written in `.imp`, a small declarative \
language that is compiled into a PyTorch training script. A spec is a list of blocks \
({blocks}); each block holds one `field = value` per line; \
a value is a number, a string, true/false, a name, a call such as `sgd(lr = 0.1)` or a list \
`[a, b]`. Comments start with `#`.

Each turn you rewrite {what} to raise {metric} on the validation split. The spec is trained \
from scratch after your change and your change is kept only if the score improves.

Rules:
- {answer_rule}
- Use only the fields and ops in the block reference; a field you leave out takes its default.
- Never write Python; it would not run.
- Locked fields ({locked}) are not yours: leave them out and they are kept as they are.
- {reason_rule}
- Prefer one or two well-founded changes. Learn from the earlier attempts: do not repeat a \
change that was rejected or failed, and build on those that were accepted.
- Training time grows with epochs, model size and image count; each attempt shows what its \
training took, and the budget left is stated: trade accuracy against time as a careful \
practitioner would.
"""

FENCE_RULE = "; you may wrap the block in one ```imp fence"
ANSWER_RULE = (
    "Answer with only {what}, complete: every field you want set, in `.imp`. No prose, no "
    "Markdown headings, no other block{fence_rule}."
)
JSON_ANSWER_RULE = (
    'Answer with a JSON object {{"reason": why you change it, in one sentence, "block": '
    "{what} as `.imp` text, complete: every field you want set, no other block}}."
)
COMMENT_REASON_RULE = (
    "Put the reason for your change in a `#` comment at the end of the first line "
    "(`{first} {{  # why: ...`)."
)
JSON_REASON_RULE = "Put the reason for your change in the `reason` field."


def _what(blocks: Sequence[str]) -> str:
    names = [f"`{b}`" for b in blocks]
    if len(names) == 1:
        return f"the {names[0]} block"
    return "the " + ", ".join(names[:-1]) + " and " + names[-1] + " blocks"


def expert_system(
    blocks: Sequence[str], metric_name: str, *, constrained: bool, json_reply: bool = False
) -> str:
    """The expert's system prompt: the language, the one-block rule, no Python; with
    ``json_reply`` the answer is a JSON object holding the block as a string."""
    what = _what(blocks)
    answer = JSON_ANSWER_RULE if json_reply else ANSWER_RULE
    reason = JSON_REASON_RULE if json_reply else COMMENT_REASON_RULE
    return EXPERT_SYSTEM.format(
        blocks=", ".join(registry.BLOCK_NAMES),
        locked=", ".join(f"{b}.{f}" for b, f in registry.locked_fields()),
        what=what,
        metric=metric_name,
        answer_rule=answer.format(what=what, fence_rule="" if constrained else FENCE_RULE),
        reason_rule=reason.format(first=blocks[0]),
    )


def _number(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def curves_table(curves: Sequence[Mapping[str, Any]], metric_name: str) -> str:
    """The incumbent's epochs as a compact table: epoch, train_loss, val_loss, the metric."""
    if not curves:
        return "(no curves yet)"
    columns = ["epoch", "train_loss"]
    if any("val_loss" in row for row in curves):
        columns.append("val_loss")
    columns.append(metric_name)
    rows = list(curves)
    if len(rows) > MAX_CURVE_ROWS:
        # Evenly spaced epochs, always with the last one: the shape matters, not every row.
        step = len(rows) / (MAX_CURVE_ROWS - 1)
        picked = {int(i * step) for i in range(MAX_CURVE_ROWS - 1)} | {len(rows) - 1}
        rows = [rows[i] for i in sorted(picked)]
    lines = ["  ".join(columns)]
    for row in rows:
        lines.append("  ".join(_number(row.get(c), 0 if c == "epoch" else 4) for c in columns))
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def _trained(seconds: float | None) -> str:
    return f", trained in {_duration(seconds)}" if seconds else ""


def _score(attempt: Attempt) -> str:
    if attempt.metric is None:
        return "no score" + _trained(attempt.seconds)
    if attempt.incumbent_metric is None:
        return f"{attempt.metric:.4f}" + _trained(attempt.seconds)
    delta = attempt.metric - attempt.incumbent_metric
    return f"{attempt.metric:.4f} vs {attempt.incumbent_metric:.4f} ({delta:+.4f})" + _trained(
        attempt.seconds
    )


def _clip(text: str, limit: int) -> str:
    lines = text.rstrip("\n").splitlines()
    if len(lines) <= limit:
        return "\n".join(lines)
    return "\n".join([*lines[:limit], f"... ({len(lines) - limit} more lines)"])


def history_text(history: Sequence[Attempt]) -> str:
    """Earlier attempts, oldest first: block, status, score against the incumbent, diff, why."""
    if not history:
        return "(none yet: this is the first attempt)"
    shown = list(history)[-MAX_HISTORY:]
    out: list[str] = []
    if len(history) > len(shown):
        out.append(f"({len(history) - len(shown)} older attempts not shown)")
    for attempt in shown:
        out.append(f"#{attempt.iteration} {attempt.block}: {attempt.status}, {_score(attempt)}")
        if attempt.rationale:
            out.append(f"  why: {' '.join(attempt.rationale.split())}")
        if attempt.diff.strip():
            out.append("  diff:")
            out += ["    " + line for line in _clip(attempt.diff, MAX_DIFF_LINES).splitlines()]
    return "\n".join(out)


MAX_SIMILAR = 8  # lines of the "on similar datasets" section


def _incumbent(context: Context) -> str:
    if context.incumbent_metric is None:
        return "not scored yet"
    return f"{context.metric_name} = {context.incumbent_metric:.4f}" + _trained(
        context.incumbent_seconds
    )


def budget_text(context: Context) -> str:
    """What is left of --budget-minutes and --max-cost, one line each."""
    lines = []
    if context.budget_seconds is not None:
        left = max(0.0, context.budget_seconds - context.elapsed_seconds)
        lines.append(
            f"time: {_duration(left)} left of {_duration(context.budget_seconds)} "
            "(no new attempt starts after that)"
        )
    else:
        lines.append(f"time: no limit ({_duration(context.elapsed_seconds)} spent so far)")
    if context.max_cost is not None:
        left_usd = max(0.0, context.max_cost - context.spent_usd)
        lines.append(f"cost: ${left_usd:.2f} left of ${context.max_cost:.2f}")
    else:
        lines.append(f"cost: no limit (${context.spent_usd:.2f} spent so far)")
    return "\n".join(lines)


def situation(context: Context) -> list[str]:
    """What every prompt shows: the data, the spec, its score and curves, earlier attempts."""
    return [
        "## Dataset",
        context.profile.strip() or "(no profile)",
        "",
        f"## The current spec ({context.spec_path})",
        "```imp",
        context.spec_text.rstrip("\n"),
        "```",
        "",
        f"## Its score on the validation split: {_incumbent(context)}",
        "",
        "## Its training curves",
        curves_table(context.curves, context.metric_name),
        "",
        "## Earlier attempts",
        history_text(context.history),
        "",
        *similar_text(context),
        "## Budget",
        budget_text(context),
    ]


def similar_text(context: Context) -> list[str]:
    """The bounded "on similar datasets" section (empty when the store knows nothing)."""
    if not context.similar:
        return []
    return [
        "## On similar datasets (earlier refines; move: how often kept, mean gain ± spread)",
        *(f"- {line[:160]}" for line in context.similar[:MAX_SIMILAR]),
        "",
    ]


def expert_user(context: Context) -> str:
    """The expert's task: the data, the spec, the block reference, the curves, the history."""
    blocks = context.blocks
    parts = situation(context)
    for block in blocks:
        parts += ["", f"## Reference of the `{block}` block", docs.block_reference(block).rstrip()]
    parts += ["", "## Your task", f"Rewrite {_what(blocks)} to raise {context.metric_name}."]
    for block in blocks:
        parts += [
            f"The current `{block}` block (locked fields left out):",
            "```imp",
            editable_view(context.spec_text, block),
            "```",
        ]
    parts.append(f"Answer with only {_what(blocks)}.")
    return "\n".join(parts) + "\n"


def retry_user(context: Context) -> str:
    """The follow-up after a refused reply: the diagnostics, exactly as a user sees them."""
    return (
        "Your reply was not applied:\n\n"
        f"{(context.feedback or '').rstrip()}\n\n"
        f"Answer again with only {_what(context.blocks)}, fixed."
    )


def expert_messages(
    context: Context, *, constrained: bool, json_reply: bool = False
) -> list[dict[str, str]]:
    """Chat messages for a proposal; a retry adds the refused reply and the feedback."""
    system = expert_system(
        context.blocks, context.metric_name, constrained=constrained, json_reply=json_reply
    )
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": expert_user(context)},
    ]
    if context.feedback:
        if context.previous_reply:
            messages.append({"role": "assistant", "content": context.previous_reply})
        messages.append({"role": "user", "content": retry_user(context)})
    return messages


TOOL_DESCRIPTION = (
    "Submit the rewritten block(s) in .imp. The input is the complete block text, nothing else."
)

PROPOSAL_SCHEMA_NAME = "block_rewrite"


def proposal_schema() -> dict[str, Any]:
    """The strict JSON schema of a proposal where only JSON can be enforced (e.g. Ollama):
    the block travels as a string, checked by ``refine/reply.py`` like any other reply."""
    return {
        "type": "object",
        "properties": {"reason": {"type": "string"}, "block": {"type": "string"}},
        "required": ["reason", "block"],
        "additionalProperties": False,
    }


# ---------------------------------------------------------------- the analyst

ANALYST_SYSTEM = """\
You are the performance analyst of an iterative refinement loop for image-classification \
training pipelines written in `.imp`. Each iteration changes exactly one block, retrains, and \
keeps the change only if {metric} on the validation split improves.

Read the training curves and the history of attempts and name the one block whose change is \
most likely to raise the score next, with a short reason grounded in the evidence: a large gap \
between training and validation (overfitting) points at augment or regularisation; high \
training loss (underfitting) at the model or the training procedure; unstable or diverging \
loss at the training procedure. Avoid blocks whose recent attempts kept failing unless you \
have a new idea for them.

Answer with a JSON object: {{"block": one of the candidates, "reason": a sentence}}.
"""


def analyst_messages(context: Context, candidates: Sequence[str]) -> list[dict[str, str]]:
    """Chat messages asking which block to change next."""
    choices = "\n".join(f"- {name}: {registry.block(name).doc}" for name in candidates)
    user = "\n".join(
        [
            *situation(context),
            "",
            "## Candidate blocks",
            choices,
            "",
            "Which block should change next, and why?",
        ]
    )
    return [
        {"role": "system", "content": ANALYST_SYSTEM.format(metric=context.metric_name)},
        {"role": "user", "content": user + "\n"},
    ]


SELECTION_SCHEMA_NAME = "block_choice"


def selection_schema(candidates: Sequence[str]) -> dict[str, Any]:
    """The strict JSON schema of the analyst's answer."""
    return {
        "type": "object",
        "properties": {
            "block": {"type": "string", "enum": list(candidates)},
            "reason": {"type": "string"},
        },
        "required": ["block", "reason"],
        "additionalProperties": False,
    }
