"""Every expert ``--expert`` can name, in one table (``EXPERTS``): its name, the argument it
takes, one line of help and the factory that builds it. ``make_expert``, ``default_expert``,
the ``--expert`` help, its "experts:" section and the unknown-expert error all read the table,
so adding an expert is one entry here. The factories import their expert when called, so the
command line starts without the openai package."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from .base import Expert, ExpertError


@dataclass(frozen=True)
class ExpertSettings:
    """What the command line gives every expert; each factory takes what it needs."""

    base_url: str | None = None
    seed: int = 0
    max_cost: float | None = None
    grammar: str | None = None
    notify: Callable[[str], None] | None = None


# The factory gets the text after ``NAME:`` ("" when there is none) and the settings.
ExpertFactory = Callable[[str, ExpertSettings], Expert]


@dataclass(frozen=True)
class ExpertKind:
    """One expert ``--expert`` can name: ``NAME``, ``NAME[:ARG]`` or ``NAME:ARG``."""

    name: str
    help: str  # one line; the "experts:" section of ``improve refine --help`` wraps it
    factory: ExpertFactory
    argument: str = ""  # what follows ``NAME:`` (MODEL, FILE), "" for none
    argument_required: bool = False

    @property
    def usage(self) -> str:
        """How ``--expert`` writes it: heuristic, openai[:MODEL], replay:FILE."""
        if not self.argument:
            return self.name
        if self.argument_required:
            return f"{self.name}:{self.argument}"
        return f"{self.name}[:{self.argument}]"


def _heuristic(argument: str, settings: ExpertSettings) -> Expert:
    from .heuristic.expert import HeuristicExpert

    return HeuristicExpert(settings.seed)


def _openai(model: str, settings: ExpertSettings) -> Expert:
    """An expert that probes its server here, once (``--grammar auto``): a constraint the
    server cannot take is an ExpertError before any run folder exists."""
    from .llm.expert import DEFAULT_MODEL, OpenAIExpert

    expert = OpenAIExpert(
        model or DEFAULT_MODEL,
        base_url=settings.base_url,
        max_cost=settings.max_cost,
        grammar_mode=settings.grammar,
        notify=settings.notify,
    )
    expert.detect()
    return expert


def _replay(path: str, settings: ExpertSettings) -> Expert:
    from .replay import ReplayExpert

    return ReplayExpert(path)


EXPERTS: tuple[ExpertKind, ...] = (
    ExpertKind(
        "heuristic",
        "rule-based, offline: reads the curves (over/underfitting, instability, slow "
        "convergence) and tries the moves a practitioner would",
        _heuristic,
    ),
    ExpertKind(
        "openai",
        "any OpenAI-compatible server (OPENAI_API_KEY, --base-url or OPENAI_BASE_URL): "
        "OpenAI, vLLM, SGLang, llama.cpp, Ollama; replies are held to the block's grammar "
        "as the server allows (see --grammar)",
        _openai,
        argument="MODEL",
    ),
    ExpertKind(
        "replay",
        "proposals read from a file (.jsonl or .imp), for reproducible runs",
        _replay,
        argument="FILE",
        argument_required=True,
    ),
)

DEFAULT_HELP = "The default is openai when OPENAI_API_KEY or --base-url is set, else heuristic."


def default_expert(base_url: str | None = None) -> str:
    """``openai`` when an API key (or a server) is configured, else ``heuristic``."""
    if os.environ.get("OPENAI_API_KEY") or base_url:
        return "openai"
    return "heuristic"


def expert_choices() -> str:
    """The experts as ``--expert`` writes them: "heuristic, openai[:MODEL] or replay:FILE"."""
    usages = [kind.usage for kind in EXPERTS]
    return " or ".join([", ".join(usages[:-1]), usages[-1]] if len(usages) > 1 else usages)


def experts_help(width: int = 89) -> str:
    """The "experts:" section of ``improve refine --help``: one entry per expert, its help
    wrapped to ``width`` (as the epilog's other sections are) three spaces past the longest
    usage."""
    column = 2 + max(len(kind.usage) for kind in EXPERTS) + 3
    lines = ["experts:"]
    for kind in EXPERTS:
        lines += textwrap.wrap(
            kind.help,
            width,
            initial_indent=f"  {kind.usage}".ljust(column),
            subsequent_indent=" " * column,
        )
    lines.append(f"  {DEFAULT_HELP}")
    return "\n".join(lines)


def make_expert(
    spec: str | None,
    *,
    base_url: str | None = None,
    seed: int = 0,
    max_cost: float | None = None,
    grammar: str | None = None,
    notify: Callable[[str], None] | None = None,
) -> Expert:
    """The expert named by ``--expert`` (one of ``EXPERTS``; None: ``default_expert``).

    Raises ExpertError for a name no entry takes and for an expert that cannot start (no API
    key, a constraint its server refuses, an unreadable replay file). ``notify`` hears what an
    expert found out about its server and any constraint refused later (the console)."""
    spec = spec or default_expert(base_url)
    name, colon, argument = spec.partition(":")
    kind = next((kind for kind in EXPERTS if kind.name == name), None)
    if kind is None or (not kind.argument if colon else kind.argument_required):
        raise ExpertError(f"unknown expert {spec!r}; choose {expert_choices()}")
    if kind.argument_required and not argument:
        raise ExpertError(f"--expert {kind.usage} needs a {kind.argument.lower()}")
    settings = ExpertSettings(base_url, seed, max_cost, grammar, notify)
    return kind.factory(argument, settings)
