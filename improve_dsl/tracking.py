"""MLflow tracking: ``improve run --mlflow`` and ``improve refine --mlflow``.

The tracking server is MLflow's own choice (``MLFLOW_TRACKING_URI``; without it MLflow's
default local store); the experiment is ``MLFLOW_EXPERIMENT_NAME`` or the pipeline's name.

- ``improve run``/``evaluate``: one run; the spec's fields (defaults filled in) as params,
  each epoch's metrics as they arrive, the score, and the spec, script, metrics and log as
  artifacts.
- ``improve refine``: a parent run for the refinement and a nested run per attempt, with the
  attempt's spec fields as params, its per-epoch metrics, its status, block, move, expert and
  rationale as tags, and its spec and script as artifacts; the parent gets each attempt's
  score and the best so far by iteration, the once-only test score at the end, and the best
  spec and journal. It hooks into the loop as a ``Reporter``, so the loop knows nothing of
  MLflow. A resumed refinement finds its parent by the run folder's tag and continues it,
  logging only the attempts MLflow has not seen.

Tracking must never cost a training run: once logging fails, it stops with one message and
the work goes on. Needs the ``mlflow`` extra: ``pip install 'improve-dsl[mlflow]'``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import registry
from .fmt import literal
from .ir import Op, Spec
from .journal import Record
from .refine.reporting import Reporter, RunInfo, Summary

RUN_DIR_TAG = "improve.run_dir"
ITERATION_TAG = "improve.iteration"
TAG_LIMIT = 5000  # MLflow keeps tag values up to 8,000 characters
PARAM_LIMIT = 6000
# The MLflow run status of an attempt's nested run, for each attempt status.
MLFLOW_STATUS = {
    "accepted": "FINISHED",
    "rejected": "FINISHED",
    "invalid": "FAILED",
    "failed": "FAILED",
    "pruned": "KILLED",
    "cached": "FINISHED",
}


class TrackingUnavailable(Exception):
    """MLflow is not installed, or its tracking store cannot be used."""


# ---------------------------------------------------------------- the spec as params


def spec_params(spec: Spec) -> dict[str, str]:
    """Every field of every block, defaults filled in: ``train.optimizer = sgd``,
    ``train.optimizer.lr = 0.1``, ``augment.ops = [random_crop(padding = 4)]``..."""
    params = {"pipeline.name": spec.pipeline.name}
    for block in registry.BLOCKS:
        values = getattr(spec, block.name)
        for fld in block.fields:
            value = getattr(values, fld.name)
            key = f"{block.name}.{fld.name}"
            if isinstance(value, Op):
                params[key] = value.name
                for name, param in value.params.items():
                    params[f"{key}.{name}"] = literal(param)
            elif isinstance(value, tuple) and all(isinstance(v, Op) for v in value):
                params[key] = "[" + ", ".join(_op_text(v) for v in value) + "]"
            else:
                params[key] = literal(value)
    return {k: v[:PARAM_LIMIT] for k, v in params.items()}


def _op_text(op: Op) -> str:
    args = ", ".join(f"{k} = {literal(v)}" for k, v in op.params.items())
    return f"{op.name}({args})"


def _spec_params_of(text: str, path: str) -> dict[str, str]:
    from .diagnostics import DiagnosticError
    from .validate import load_text

    try:
        return spec_params(load_text(text, path))
    except DiagnosticError:
        return {}  # an invalid attempt's spec: its tags say why


def _epoch_metrics(history: Sequence[Mapping[str, Any]]) -> list[tuple[str, float, int]]:
    """(name, value, epoch) of every number in the epoch events."""
    found = []
    for event in history:
        epoch = event.get("epoch")
        if event.get("event") != "epoch" or not isinstance(epoch, int):
            continue
        for key, value in event.items():
            if key not in ("event", "epoch", "epochs") and _is_number(value):
                found.append((key, float(value), epoch))
    return found


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------- the store


class Tracker:
    """An MLflow client and the experiment runs go to."""

    def __init__(self, client: Any, experiment_id: str) -> None:
        self.client = client
        self.experiment_id = experiment_id

    def create_run(self, name: str, tags: Mapping[str, str], parent: str | None = None) -> str:
        all_tags = {"mlflow.runName": name, **tags}
        if parent is not None:
            all_tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.experiment_id, tags=all_tags)
        return str(run.info.run_id)

    def log(
        self,
        run_id: str,
        *,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        metrics: Sequence[tuple[str, float, int]] = (),
    ) -> None:
        """Params, tags and (name, value, step) metrics in as few requests as MLflow allows."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        batch_metrics = [Metric(k, v, now, step) for k, v, step in metrics]
        batch_params = [Param(k, v) for k, v in (params or {}).items()]
        batch_tags = [RunTag(k, v[:TAG_LIMIT]) for k, v in (tags or {}).items()]
        # MLflow takes at most 1000 metrics, 100 params and 100 tags per batch.
        while batch_metrics or batch_params or batch_tags:
            self.client.log_batch(
                run_id,
                metrics=batch_metrics[:1000],
                params=batch_params[:100],
                tags=batch_tags[:100],
            )
            batch_metrics, batch_params = batch_metrics[1000:], batch_params[100:]
            batch_tags = batch_tags[100:]

    def artifacts(self, run_id: str, files: Sequence[Path], folder: str | None = None) -> None:
        for file in files:
            if file.is_file():
                self.client.log_artifact(run_id, str(file), folder)

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def find(self, filter_string: str) -> list[Any]:
        return list(self.client.search_runs([self.experiment_id], filter_string=filter_string))


def connect(pipeline_name: str) -> Tracker:
    """A tracker on MLflow's configured store (``MLFLOW_TRACKING_URI``), in the experiment
    ``MLFLOW_EXPERIMENT_NAME`` or else one named after the pipeline, created when missing."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise TrackingUnavailable(
            "--mlflow needs MLflow: pip install 'improve-dsl[mlflow]'"
        ) from None
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or pipeline_name
    try:
        client = MlflowClient()
        experiment = client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment is not None else client.create_experiment(name)
        )
    except Exception as exc:  # MLflow's errors have no common base worth naming here
        uri = os.environ.get("MLFLOW_TRACKING_URI", "MLflow's default store")
        raise TrackingUnavailable(f"cannot use the MLflow store {uri}: {_first(exc)}") from None
    return Tracker(client, str(experiment_id))


def _first(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


# ---------------------------------------------------------------- improve run / evaluate


class TrainingRun:
    """One ``improve run`` (or ``evaluate``) logged as one MLflow run."""

    def __init__(self, tracker: Tracker, spec: Spec, spec_path: Path, split: str) -> None:
        self.tracker = tracker
        self.run_id = tracker.create_run(
            f"{spec.pipeline.name} ({'test' if split == 'test' else 'validation'})",
            {"improve.spec": str(spec_path), "improve.split": split},
        )
        tracker.log(self.run_id, params=spec_params(spec))

    def on_event(self, event: Mapping[str, Any]) -> None:
        """An event of the training script: epochs become metrics as they arrive."""
        self.tracker.log(self.run_id, metrics=_epoch_metrics([event]))

    def finish(self, out_dir: Path, metric_name: str, metric: float | None, ok: bool) -> None:
        """The score (``final_`` + its name: the curves keep the plain names) and the files."""
        metrics = [(f"final_{metric_name}", metric, 0)] if metric is not None else []
        self.tracker.log(self.run_id, metrics=metrics)
        names = ("spec.imp", "train.py", "metrics.json", "log")
        self.tracker.artifacts(self.run_id, [out_dir / n for n in names])
        self.tracker.end(self.run_id, "FINISHED" if ok else "FAILED")

    def interrupted(self) -> None:
        self.tracker.end(self.run_id, "KILLED")


# ---------------------------------------------------------------- improve refine


class MlflowReporter:
    """Logs a refinement as it happens: a parent run, one nested run per attempt."""

    def __init__(self, tracker: Tracker, warn: Callable[[str], None]) -> None:
        self.tracker = tracker
        self.warn = warn
        self.parent: str | None = None
        self.run_dir = Path(".")
        self.metric_name = "val_accuracy"
        self.logged: set[int] = set()
        self.best: float | None = None
        self.broken = False
        self.done = False

    def _safely(self, action: Callable[[], None]) -> None:
        if self.broken:
            return
        try:
            action()
        except Exception as exc:  # the store went away: stop logging, keep refining
            self.broken = True
            self.warn(f"MLflow logging stopped: {_first(exc)}")

    # ------------------------------------------------------------ Reporter

    def run_started(self, info: RunInfo, records: Sequence[Record]) -> None:
        self._safely(lambda: self._start(info, records))

    def attempt_started(self, iteration: int, block: str, expert: str, note: str) -> None:
        pass

    def progress(self, iteration: int, seed: int | None, event: dict[str, Any]) -> None:
        pass

    def attempt_finished(self, record: Record) -> None:
        self._safely(lambda: self._attempt(record))

    def message(self, text: str) -> None:
        pass

    def finished(self, summary: Summary) -> None:
        self._safely(lambda: self._finish(summary))

    def close(self) -> None:
        if self.parent is not None and not self.done:  # interrupted: resumable later
            self._safely(lambda: self.tracker.end(str(self.parent), "KILLED"))

    # ------------------------------------------------------------ the work

    def _start(self, info: RunInfo, records: Sequence[Record]) -> None:
        self.run_dir = Path(info.run_dir).resolve()
        self.metric_name = info.metric_name
        tracker = self.tracker
        found = tracker.find(f"tags.`{RUN_DIR_TAG}` = '{_quoted(str(self.run_dir))}'")
        if found:  # a resumed refinement: the same parent run, running again
            self.parent = str(found[0].info.run_id)
            tracker.client.update_run(self.parent, status="RUNNING")
            children = tracker.find(f"tags.`mlflow.parentRunId` = '{self.parent}'")
            self.logged = {
                int(run.data.tags[ITERATION_TAG])
                for run in children
                if run.data.tags.get(ITERATION_TAG, "").isdigit()
            }
        else:
            self.parent = tracker.create_run(
                f"refine {Path(info.spec_path).stem} {self.run_dir.name}",
                {RUN_DIR_TAG: str(self.run_dir), "improve.spec": info.spec_path},
            )
            start = self.run_dir / "start.imp"
            params = {
                "refine.expert": info.expert,
                "refine.iters": str(info.iters),
                "refine.select": info.selector,
                "refine.strategy": info.strategy,
                "refine.seeds": str(info.seeds),
            }
            if start.is_file():
                params.update(_spec_params_of(start.read_text(encoding="utf-8"), info.spec_path))
            tracker.log(self.parent, params=params)
            tracker.artifacts(self.parent, [start])
        for record in records:
            self._best(record)
            if record.iteration not in self.logged:
                self._attempt(record)

    def _best(self, record: Record) -> None:
        if record.status == "accepted" and record.metric is not None:
            self.best = record.metric

    def _attempt(self, record: Record) -> None:
        assert self.parent is not None
        tracker = self.tracker
        where = record.extras.get("candidate", f"candidates/{record.iteration}")
        folder = self.run_dir / str(where)
        tags = {
            ITERATION_TAG: str(record.iteration),
            "improve.block": record.block,
            "improve.status": record.status,
            "improve.expert": record.expert,
            "improve.rationale": record.rationale,
            "improve.move": record.move,
            "improve.spec_sha256": record.spec_sha256,
        }
        if record.extras.get("reason"):
            tags["improve.reason"] = str(record.extras["reason"])
        if record.diff:
            tags["improve.diff"] = record.diff
        child = tracker.create_run(f"#{record.iteration} {record.block}", tags, self.parent)
        spec_file = folder / "spec.imp"
        params = {}
        if spec_file.is_file():
            params = _spec_params_of(spec_file.read_text(encoding="utf-8"), str(spec_file))
        metrics = _candidate_metrics(folder)
        if record.metric is not None:  # the score decided on (mean over seeds)
            metrics.append((f"final_{self.metric_name}", record.metric, 0))
        metrics += [("seconds", record.seconds, 0), ("cost_usd", record.cost_usd, 0)]
        tags = {k: v for k, v in tags.items() if v}
        tracker.log(child, params=params, tags=tags, metrics=metrics)
        tracker.artifacts(child, [spec_file, folder / "train.py"])
        tracker.end(child, MLFLOW_STATUS[record.status])
        self.logged.add(record.iteration)
        self._best(record)
        on_parent = []
        if record.metric is not None:
            on_parent.append((self.metric_name, record.metric, record.iteration))
        if self.best is not None:
            on_parent.append((f"best_{self.metric_name}", self.best, record.iteration))
        tracker.log(self.parent, metrics=on_parent)

    def _finish(self, summary: Summary) -> None:
        assert self.parent is not None
        metrics = []
        if summary.test_metric_name is not None and summary.test_metric is not None:
            metrics.append((summary.test_metric_name, summary.test_metric, 0))
        tags = {
            "improve.stopped": summary.stopped,
            "improve.best_iteration": str(summary.best_iteration),
        }
        self.tracker.log(self.parent, metrics=metrics, tags=tags)
        names = ("best.imp", "journal.jsonl", "final.json")
        self.tracker.artifacts(self.parent, [self.run_dir / n for n in names])
        self.tracker.end(self.parent, "FINISHED")
        self.done = True


def _candidate_metrics(folder: Path) -> list[tuple[str, float, int]]:
    """Per-epoch metrics of an attempt's runs; with several seeds, named ``seed_N/...``."""
    try:
        runs = json.loads((folder / "result.json").read_text(encoding="utf-8")).get("runs") or []
    except (OSError, ValueError, AttributeError):
        return []
    found = []
    for run in runs:
        prefix = f"seed_{run.get('seed')}/" if len(runs) > 1 else ""
        found += [(prefix + k, v, e) for k, v, e in _epoch_metrics(run.get("history") or [])]
    return found


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


class Reporters:
    """Sends the loop's events to several reporters (the view, then MLflow)."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = reporters

    def run_started(self, info: RunInfo, records: Sequence[Record]) -> None:
        for reporter in self.reporters:
            reporter.run_started(info, records)

    def attempt_started(self, iteration: int, block: str, expert: str, note: str) -> None:
        for reporter in self.reporters:
            reporter.attempt_started(iteration, block, expert, note)

    def progress(self, iteration: int, seed: int | None, event: dict[str, Any]) -> None:
        for reporter in self.reporters:
            reporter.progress(iteration, seed, event)

    def attempt_finished(self, record: Record) -> None:
        for reporter in self.reporters:
            reporter.attempt_finished(record)

    def message(self, text: str) -> None:
        for reporter in self.reporters:
            reporter.message(text)

    def finished(self, summary: Summary) -> None:
        for reporter in self.reporters:
            reporter.finished(summary)

    def close(self) -> None:
        for reporter in self.reporters:
            reporter.close()


def with_mlflow(view: Reporter, tracker: Tracker) -> Reporter:
    """The view's reporter, and MLflow after it; MLflow's warnings go to the view."""
    return Reporters(view, MlflowReporter(tracker, view.message))
