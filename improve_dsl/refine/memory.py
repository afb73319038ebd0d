"""What refinement learns across runs: attempts into the evidence store, priors out of it.

``field_changes`` turns two spec texts into the typed edit of one block (field deltas, and
op changes for lists of ops); ``evidence_of`` makes the store's row of a journal record;
``Priors`` reads what worked on similar data: per move family, a keep rate shrunk toward
the built-in ranking's (``PRIOR_WEIGHT`` pseudo-attempts at ``BASE_RATE``) and weighted by
profile similarity. The heuristic multiplies a move's expected gain by ``Priors.factor``;
the LLM expert's prompt shows ``Priors.lines``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import fmt, syntax, validate
from ..diagnostics import DiagnosticError
from ..evidence import Evidence, Profile, Store, StoreError
from ..journal import BASELINE, Record
from .experts.heuristic.recipes import data_info

BASE_RATE = 0.3  # the share of attempts kept, assumed where the store knows nothing
PRIOR_WEIGHT = 3.0  # pseudo-attempts of the built-in ranking each prior is shrunk toward
FACTOR_RANGE = (0.25, 3.0)  # how far evidence may move a move's expected gain
MIN_SIMILARITY = 0.05  # evidence from less similar data is ignored
MAX_PROMPT_LINES = 8  # the LLM prompt's "on similar datasets" section, at most


def profile_of(spec_text: str, spec_path: str) -> Profile:
    """The dataset profile of a spec (from the registry's facts; nothing is loaded)."""
    spec = validate.load_text(spec_text, spec_path)
    info = data_info(spec)
    arch = spec.model.arch.name if spec.model.arch is not None else "layers"
    return Profile(info.source, info.size, info.channels, info.classes, info.train_size, arch)


def move_identity(move: str) -> str:
    """The move an expert named, or "" when it named none (a replayed proposal's id is
    where it came from, a file and line, not a move)."""
    return "" if move.startswith("replay:") else move


def move_family(move: str) -> str:
    """A move id without its step factor: ``train.lr:up*2`` and ``train.lr:up*1.41`` are
    one family (``train.lr:up``); several moves joined by ``+`` keep each."""
    return "+".join(re.sub(r"\*[0-9.e+-]+$", "", part) for part in move.split("+") if part)


# ---------------------------------------------------------------- the typed edit


def _value(value: syntax.Value) -> Any:
    if isinstance(value, syntax.Number):
        return float(value.text)
    if isinstance(value, (syntax.String, syntax.Name)):
        return value.value
    return fmt.print_value(value)


def _block_fields(text: str, block: str) -> dict[str, syntax.Value]:
    ast = syntax.parse(text, "<spec>")
    found = next((b for b in ast.blocks if b.kind == block), None)
    return {f.name: f.value for f in found.fields} if found else {}


def field_changes(before: str, after: str, block: str) -> dict[str, Any]:
    """The edit of ``block`` from ``before`` to ``after``: ``fields`` maps a changed field
    (or ``field.param`` of a call kept by name) to ``[old, new]`` (None: absent), ``ops``
    maps a list field to the op names it ``added`` and ``removed``."""
    old, new = _block_fields(before, block), _block_fields(after, block)
    fields: dict[str, list[Any]] = {}
    ops: dict[str, dict[str, list[str]]] = {}
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        a_text = fmt.print_value(a) if a is not None else None
        b_text = fmt.print_value(b) if b is not None else None
        if a_text == b_text:
            continue
        if isinstance(a, syntax.Call) and isinstance(b, syntax.Call) and a.name == b.name:
            pa = {arg.keyword or str(i): arg.value for i, arg in enumerate(a.args)}
            pb = {arg.keyword or str(i): arg.value for i, arg in enumerate(b.args)}
            for param in sorted(set(pa) | set(pb)):
                va = _value(pa[param]) if param in pa else None
                vb = _value(pb[param]) if param in pb else None
                if va != vb:
                    fields[f"{name}.{param}"] = [va, vb]
            continue
        if isinstance(a, syntax.ListValue) or isinstance(b, syntax.ListValue):
            names_a = _op_names(a)
            names_b = _op_names(b)
            ops[name] = {
                "added": sorted(set(names_b) - set(names_a)),
                "removed": sorted(set(names_a) - set(names_b)),
            }
        scalar = not isinstance(a, (syntax.Call, syntax.ListValue)) and not isinstance(
            b, (syntax.Call, syntax.ListValue)
        )
        if scalar:
            fields[name] = [_value(a) if a else None, _value(b) if b else None]
        else:
            fields[name] = [a_text, b_text]
    return {"fields": fields, "ops": ops}


def _op_names(value: syntax.Value | None) -> list[str]:
    if not isinstance(value, syntax.ListValue):
        return []
    return [item.name if isinstance(item, syntax.Call) else _text(item) for item in value.items]


def _text(value: syntax.Value) -> str:
    return str(fmt.print_value(value))


# ---------------------------------------------------------------- journal record -> row


def data_fingerprint(spec_text: str, spec_path: str) -> str:
    """sha256 of the data a spec trains on, as the spec names it: the source, the validation
    split and the seed that draws it (the data block is locked, so it holds for a run)."""
    spec = validate.load_text(spec_text, spec_path)
    data = _block_fields(spec_text, "data")
    parts = [_text(data[k]) for k in ("source", "validation") if k in data]
    parts.append(f"seed={spec.pipeline.seed}")
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def evidence_of(
    record: Record,
    *,
    run: Path,
    profile: Profile,
    before: str,
    after: str | None,
    provenance: Mapping[str, Any],
) -> Evidence:
    """The store's row of one journal record (``before``: the incumbent it was tried on)."""
    decision = record.extras.get("decision") or {}
    noise = (decision.get("noise") or {}).get("total") if isinstance(decision, dict) else None
    edit: dict[str, Any] = {}
    if after is not None and record.block not in (BASELINE, "all"):
        try:
            edit = field_changes(before, after, record.block)
        except DiagnosticError:
            edit = {}
    gain = decision.get("gain") if isinstance(decision, dict) else None
    if gain is None and record.metric is not None and record.incumbent_metric is not None:
        gain = record.metric - record.incumbent_metric
    return Evidence(
        run=str(run.resolve()),
        iteration=record.iteration,
        profile=profile,
        block=record.block,
        move=move_identity(record.move),
        edit=edit,
        status=record.status,
        metric=record.metric,
        incumbent_metric=record.incumbent_metric,
        gain=gain,
        noise=noise if isinstance(noise, (int, float)) else None,
        margin=decision.get("margin") if isinstance(decision, dict) else None,
        cost_ratio=decision.get("cost_ratio") if isinstance(decision, dict) else None,
        expert=record.expert,
        provenance=dict(provenance),
    )


# ---------------------------------------------------------------- priors


@dataclass(frozen=True)
class MovePrior:
    """What the store says of one move family on data like this."""

    family: str
    weight: float  # the similarity-weighted number of attempts
    count: int  # attempts behind it
    kept: int  # of which were kept
    rate: float  # the keep rate, shrunk toward BASE_RATE
    mean_gain: float | None  # the mean gain of its scored attempts
    spread: float | None  # their standard deviation

    @property
    def factor(self) -> float:
        low, high = FACTOR_RANGE
        return min(max(self.rate / BASE_RATE, low), high)


@dataclass(frozen=True)
class Priors:
    """Move families' priors for one dataset profile (empty: no evidence)."""

    profile: Profile | None = None
    moves: Mapping[str, MovePrior] | None = None

    def factor(self, move: str) -> float:
        """How much the evidence raises (>1) or lowers (<1) this move's expected gain."""
        if not self.moves:
            return 1.0
        prior = self.moves.get(move_family(move))
        return prior.factor if prior is not None else 1.0

    def for_context(self) -> dict[str, Any]:
        """The expert ``Context`` fields these priors fill (``move_priors``, ``similar``)."""
        moves = self.moves or {}
        return {
            "move_priors": {family: p.factor for family, p in moves.items()},
            "similar": tuple(self.lines()),
        }

    def lines(self, limit: int = MAX_PROMPT_LINES) -> list[str]:
        """The best- and worst-evidenced moves, one line each, at most ``limit``."""
        if not self.moves:
            return []
        known = sorted(self.moves.values(), key=lambda p: (-p.weight, p.family))
        return [summary_line(p) for p in known[:limit]]


def summary_line(prior: MovePrior) -> str:
    """``train.recipe: kept 3 of 4 (gain +0.052 ± 0.010)``."""
    gain = ""
    if prior.mean_gain is not None:
        spread = f" ± {prior.spread:.3f}" if prior.spread is not None else ""
        gain = f", gain {prior.mean_gain:+.3f}{spread}"
    return f"{prior.family}: kept {prior.kept} of {prior.count}{gain}"


def summarize(rows: Sequence[Evidence], profile: Profile | None) -> dict[str, MovePrior]:
    """Move families' priors from ``rows``, each weighted by its profile's similarity to
    ``profile`` (all weigh 1 without one)."""
    grouped: dict[str, list[tuple[float, Evidence]]] = {}
    for row in rows:
        if not row.move or row.iteration == 0 or row.status == "invalid":
            continue
        weight = 1.0 if profile is None else profile.similarity(row.profile)
        if weight < MIN_SIMILARITY:
            continue
        grouped.setdefault(move_family(row.move), []).append((weight, row))
    priors: dict[str, MovePrior] = {}
    for family, items in grouped.items():
        weight = sum(w for w, _ in items)
        kept = sum(w for w, r in items if r.kept)
        rate = (PRIOR_WEIGHT * BASE_RATE + kept) / (PRIOR_WEIGHT + weight)
        gains = [r.gain for _, r in items if r.gain is not None]
        priors[family] = MovePrior(
            family,
            weight,
            len(items),
            sum(1 for _, r in items if r.kept),
            rate,
            statistics.fmean(gains) if gains else None,
            statistics.stdev(gains) if len(gains) > 1 else None,
        )
    return priors


def load_priors(
    store: Store | None, profile: Profile, exclude_run: Path | None = None
) -> tuple[Priors, str | None]:
    """The priors for ``profile`` (excluding this run's own attempts), and a warning when
    the store could not be read (then the priors are empty)."""
    if store is None:
        return Priors(), None
    try:
        rows = store.rows(exclude_run=str(exclude_run.resolve()) if exclude_run else None)
    except StoreError as exc:
        return Priors(), str(exc)
    return Priors(profile, summarize(rows, profile)), None


# ---------------------------------------------------------------- a run's memory


def torch_version() -> str:
    """The torch installed beside this package (what the local executor trains with)."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return ""


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


class Memory:
    """A refine run's link to the store: priors read once at the start, each finished
    attempt appended as it is journalled. A store that fails is warned about once (through
    ``warn``) and then left alone: the run goes on without history."""

    def __init__(
        self,
        store: Store | None,
        run: Path,
        start_text: str,
        spec_path: str,
        warn: Any,
        records: Sequence[Record] = (),
    ) -> None:
        self.store = store
        self.run = run
        self.spec_path = spec_path
        self.warn = warn
        self.profile = profile_of(start_text, spec_path)
        self.fingerprint = data_fingerprint(start_text, spec_path)
        self.priors = Priors()
        if store is not None:
            try:
                store.check()
            except StoreError as exc:
                self._fail(exc)
        if self.store is not None:
            self.priors, problem = load_priors(self.store, self.profile, run)
            if problem:
                self._fail(StoreError(problem))
        self._backfill(records, start_text)

    def _backfill(self, records: Sequence[Record], start_text: str) -> None:
        """A resumed run's journalled attempts, stored again where a kill came between the
        journal and the store (the rows already there are kept as they are)."""
        before = start_text
        for record in records:
            folder = self.run / "candidates" / str(record.iteration)
            after = _read(folder / "spec.imp") if record.iteration else start_text
            self.remember(record, before, after, _read(folder / "train.py"), [])
            if record.accepted and after is not None:
                before = after

    def _fail(self, exc: StoreError) -> None:
        self.store = None
        self.warn(f"warning: {exc}")

    def remember(
        self,
        record: Record,
        before: str,
        after: str | None,
        script: str | None,
        devices: Sequence[str],
    ) -> None:
        """Append ``record`` (tried on ``before``, making ``after``) to the store."""
        if self.store is None:
            return
        provenance = {
            "spec_sha256": record.spec_sha256,
            "data_fingerprint": self.fingerprint,
            "script_sha256": hashlib.sha256(script.encode("utf-8")).hexdigest() if script else "",
            "seeds": record.extras.get("seeds", []),
            "torch_version": torch_version(),
            "device": ",".join(sorted(set(d for d in devices if d))),
        }
        profile = self.profile
        with contextlib.suppress(DiagnosticError):  # the architecture it was tried on
            profile = dataclasses.replace(profile, arch=profile_of(before, self.spec_path).arch)
        row = evidence_of(
            record,
            run=self.run,
            profile=profile,
            before=before,
            after=after,
            provenance=provenance,
        )
        try:
            self.store.add([row])
        except StoreError as exc:
            self._fail(exc)


def history_text(rows: Sequence[Evidence], where: str) -> str:
    """What ``improve history`` prints: the store's extent, then each move family by mean
    gain, with how often it was tried and kept, and the spread of its gains."""
    attempts = [r for r in rows if r.iteration > 0]
    if not attempts:
        return f"no refinement attempts stored yet ({where})"
    runs = {r.run for r in rows}
    datasets = sorted({r.profile.dataset for r in rows})
    priors = summarize(attempts, None)
    lines = [
        f"{len(attempts)} attempts from {len(runs)} run(s) on {', '.join(datasets)} ({where})",
        "",
        f"{'move':<34} {'tried':>5} {'kept':>4}  {'mean gain':>9}  {'spread':>7}",
    ]
    ordered = sorted(
        priors.values(),
        key=lambda p: (-(p.mean_gain if p.mean_gain is not None else -1.0), p.family),
    )
    for prior in ordered:
        gain = f"{prior.mean_gain:+.4f}" if prior.mean_gain is not None else "—"
        spread = f"{prior.spread:.4f}" if prior.spread is not None else "—"
        lines.append(f"{prior.family:<34} {prior.count:>5} {prior.kept:>4}  {gain:>9}  {spread:>7}")
    unnamed = sum(1 for r in attempts if not r.move)
    if unnamed:
        lines += ["", f"{unnamed} attempt(s) named no move (an LLM's or a replayed edit)"]
    return "\n".join(lines)
