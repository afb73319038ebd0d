"""The real grammar engines, driven byte by byte, for tests and the loopback server.

llguidance (what OpenAI runs custom-tool grammars with, and a vLLM/SGLang backend) takes the
Lark export and JSON schemas; XGrammar (vLLM's and SGLang's default backend) takes the GBNF
export. Neither needs a model: a vocabulary of the 256 one-byte tokens plus an end-of-sequence
token drives their matchers, and ``sample`` walks the allowed-byte mask with a seeded random
choice to make replies that are grammar-valid by construction.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import llguidance
import numpy as np

EOS = 256  # the end-of-sequence token, after the 256 byte tokens
CLOSERS = frozenset(b')]}\n"')  # bytes that end what is open: preferred past the soft length

Syntax = Literal["lark", "gbnf", "json"]


class _ByteVocabulary:
    """What llguidance's TokenizerWrapper reads: token i is byte i, then EOS."""

    def __init__(self) -> None:
        self.eos_token_id = EOS
        self.bos_token_id = None
        self.tokens = [bytes([i]) for i in range(256)] + [b"</s>"]
        self.special_token_ids = [EOS]

    def __call__(self, text: str | bytes) -> list[int]:
        return list(text.encode("utf-8") if isinstance(text, str) else text)


_LLG_TOKENIZER: Any = None
_XGR_COMPILER: Any = None


def _llg_tokenizer() -> Any:
    global _LLG_TOKENIZER
    if _LLG_TOKENIZER is None:
        wrapper = llguidance.TokenizerWrapper(_ByteVocabulary())
        _LLG_TOKENIZER = llguidance.LLTokenizer(wrapper, slices=[])
    return _LLG_TOKENIZER


def _xgrammar() -> Any:
    """XGrammar, imported on first use: it loads torch, a few seconds in every test worker."""
    import xgrammar

    return xgrammar


def _xgr_compiler() -> Any:
    global _XGR_COMPILER
    if _XGR_COMPILER is None:
        xgrammar = _xgrammar()
        info = xgrammar.TokenizerInfo(
            [bytes([i]) for i in range(256)] + [b"</s>"],
            vocab_type=xgrammar.VocabType.RAW,
            stop_token_ids=[EOS],
        )
        _XGR_COMPILER = xgrammar.GrammarCompiler(info, max_threads=1)
    return _XGR_COMPILER


class GrammarEngineError(Exception):
    """The engine refused the grammar itself."""


@dataclass
class Matcher:
    """One engine's matcher behind four calls: allowed tokens, consume one, accepting, and
    reset (to the start, for the next sentence)."""

    engine: str
    allowed: Callable[[], list[int]]
    consume: Callable[[int], bool]
    accepting: Callable[[], bool]
    reset: Callable[[], Any]


def _bits(mask: bytes) -> list[int]:
    """The set bits of a little-endian bitmask, up to EOS."""
    flags = np.unpackbits(np.frombuffer(mask, dtype=np.uint8), bitorder="little")[: EOS + 1]
    return [int(i) for i in np.flatnonzero(flags)]


def llguidance_matcher(grammar: str, syntax: Syntax) -> Matcher:
    """A llguidance matcher for a Lark or GBNF grammar, or a JSON schema (as text)."""
    fmt: Any = {"lark": "lark", "gbnf": "gbnf", "json": "json_schema"}[syntax]
    try:
        definition = llguidance.grammar_from(fmt, grammar)
    except ValueError as exc:
        raise GrammarEngineError(str(exc)) from None
    tokenizer = _llg_tokenizer()
    error = llguidance.LLMatcher.validate_grammar(definition, tokenizer)
    if error:
        raise GrammarEngineError(error)
    matcher = llguidance.LLMatcher(tokenizer, definition, log_level=0)
    if matcher.is_error():
        raise GrammarEngineError(matcher.get_error())

    def allowed() -> list[int]:
        return _bits(matcher.compute_bitmask())

    return Matcher(
        "llguidance", allowed, matcher.consume_token, matcher.is_accepting, matcher.reset
    )


def xgrammar_matcher(gbnf: str) -> Matcher:
    """An XGrammar matcher for a GBNF grammar."""
    try:
        compiled = _xgr_compiler().compile_grammar(gbnf)
    except (RuntimeError, ValueError) as exc:
        raise GrammarEngineError(str(exc)) from None
    xgrammar = _xgrammar()
    matcher = xgrammar.GrammarMatcher(compiled, terminate_without_stop_token=False)
    bitmask = xgrammar.allocate_token_bitmask(1, EOS + 1)

    def allowed() -> list[int]:
        matcher.fill_next_token_bitmask(bitmask)
        return _bits(bitmask[0].numpy().tobytes())

    def accepting() -> bool:
        return EOS in allowed()

    return Matcher("xgrammar", allowed, matcher.accept_token, accepting, matcher.reset)


def matcher_for(grammar: str, syntax: Syntax) -> Matcher:
    """The engine a server of that kind would use: XGrammar for GBNF, llguidance else."""
    if syntax == "gbnf":
        return xgrammar_matcher(grammar)
    return llguidance_matcher(grammar, syntax)


def accepts(matcher: Matcher, text: str) -> bool:
    """Whether the whole of ``text`` is a complete sentence of the matcher's grammar."""
    matcher.reset()
    for byte in text.encode("utf-8"):
        if byte not in matcher.allowed() or not matcher.consume(byte):
            return False
    return matcher.accepting()


def _keeps_utf8(out: bytearray, token: int) -> bool:
    """Whether ``out`` + ``token`` is still valid UTF-8 so far: a server answers text, and
    XGrammar's byte masks allow UTF-16 surrogates (``ED A0``...) that no text holds."""
    if token < 0x80 and (not out or out[-1] < 0x80):
        return True  # ASCII after a complete character: the common case, decided at once
    tail = bytes(out[-3:]) + bytes([token])
    for start in range(len(tail)):
        if tail[start] < 0x80 or tail[start] >= 0xC0:  # where the last character starts
            piece = tail[start:]
            break
    else:
        piece = tail
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.reason == "unexpected end of data" and exc.end == len(piece)
    return True


def sample(
    matcher: Matcher,
    rng: random.Random,
    *,
    stop: float = 0.5,
    close: float = 0.2,
    soft_length: int = 400,
    max_length: int = 6000,
) -> str:
    """A random complete sentence: each byte drawn among those the engine allows.

    Where the sentence may end it ends with probability ``stop``; a byte that closes what is
    open (``)]}``, a quote, a newline) is preferred with probability ``close``, always past
    ``soft_length`` bytes, so that bounded repetitions end and replies stay short.
    """
    matcher.reset()
    out = bytearray()
    while len(out) < max_length:
        allowed = matcher.allowed()
        if not allowed:
            break
        if EOS in allowed and (len(allowed) == 1 or rng.random() < stop):
            break
        choices = [t for t in allowed if t != EOS]
        closing = [t for t in choices if t in CLOSERS]
        if closing and (len(out) > soft_length or rng.random() < close):
            choices = closing
        token = rng.choice(choices)
        while not _keeps_utf8(out, token):
            choices.remove(token)
            if not choices:
                raise GrammarEngineError(f"{matcher.engine} allows no valid UTF-8 after {out!r}")
            token = rng.choice(choices)
        if not matcher.consume(token):
            raise GrammarEngineError(f"{matcher.engine} refused a byte it allowed: {token}")
        out.append(token)
    return out.decode("utf-8")


def sample_text(grammar: str, syntax: Syntax, seed: int) -> str:
    """One grammar-valid random reply for ``grammar`` (a JSON schema as JSON text)."""
    return sample(matcher_for(grammar, syntax), random.Random(seed))
