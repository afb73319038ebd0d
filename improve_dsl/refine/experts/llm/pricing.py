"""What an LLM call costs: USD per million tokens, by model.

The table holds list prices of a few current OpenAI models (standard tier, no cached-input
discount). Prices change: pass a JSON file or a dict to override or extend it, as
``{"model": {"input": USD_PER_1M, "output": USD_PER_1M}}`` or ``{"model": [input, output]}``.
A model the table does not know costs 0; its tokens are still counted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Price:
    """USD per million input (prompt) and output (completion) tokens."""

    input: float
    output: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-5": Price(1.25, 10.0),
    "gpt-5-mini": Price(0.25, 2.0),
    "gpt-5-nano": Price(0.05, 0.40),
    "gpt-5-pro": Price(15.0, 120.0),
    "gpt-5.1": Price(1.25, 10.0),
    "gpt-4.1": Price(2.0, 8.0),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-4o": Price(2.50, 10.0),
    "gpt-4o-mini": Price(0.15, 0.60),
    "o3": Price(2.0, 8.0),
    "o4-mini": Price(1.10, 4.40),
}


class PriceError(ValueError):
    """A price table that cannot be read; the message says where and why."""


def _price(model: str, value: Any, where: str) -> Price:
    if isinstance(value, Mapping) and set(value) >= {"input", "output"}:
        pair = (value["input"], value["output"])
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        pair = (value[0], value[1])
    else:
        raise PriceError(
            f'{where}: the price of {model!r} must be {{"input": N, "output": N}} or '
            "[input, output] in USD per million tokens"
        )
    numbers = []
    for number in pair:
        if isinstance(number, bool) or not isinstance(number, (int, float)) or number < 0:
            raise PriceError(f"{where}: the price of {model!r} must be non-negative numbers")
        numbers.append(float(number))
    return Price(numbers[0], numbers[1])


def load_prices(source: Mapping[str, Any] | str | Path | None = None) -> dict[str, Price]:
    """The default table, overridden by a dict or a JSON file's entries."""
    table = dict(DEFAULT_PRICES)
    if source is None:
        return table
    where = "prices"
    if isinstance(source, (str, Path)):
        where = str(source)
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except OSError as exc:
            raise PriceError(f"{where}: cannot read the price table: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise PriceError(f"{where}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}") from None
    else:
        data = source
    if not isinstance(data, Mapping):
        raise PriceError(f"{where}: the price table must be a JSON object keyed by model")
    for model, value in data.items():
        table[str(model)] = value if isinstance(value, Price) else _price(model, value, where)
    return table


def price_of(model: str, table: Mapping[str, Price]) -> Price | None:
    """The model's price: an exact entry, else the longest entry it extends with ``-...``
    (dated snapshots like ``gpt-5-mini-2025-08-07``), else None."""
    if model in table:
        return table[model]
    name = model.rsplit("/", 1)[-1]  # "openai/gpt-5" as some routers spell it
    if name in table:
        return table[name]
    matches = [key for key in table if name.startswith(key + "-")]
    return table[max(matches, key=len)] if matches else None


def cost_usd(
    model: str, input_tokens: int, output_tokens: int, table: Mapping[str, Price]
) -> float:
    """The cost of one call, 0 for a model the table does not know."""
    price = price_of(model, table)
    return price.cost(input_tokens, output_tokens) if price is not None else 0.0
