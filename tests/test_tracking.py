"""MLflow tracking: `improve run --mlflow` and `improve refine --mlflow` log to a real local
MLflow store (SQLite in a temporary folder), read back through MLflow's own client.

Importing MLflow and creating its SQLite store take seconds, so only the spec-to-params
test is in the fast tier; the rest run with `-m slow`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from improve_dsl import registry
from improve_dsl.journal import RunDir
from improve_dsl.tracking import spec_params
from improve_dsl.validate import load_text

ROOT = Path(__file__).resolve().parent.parent
DIGITS = (ROOT / "specs" / "digits.imp").read_text(encoding="utf-8")
TINY = DIGITS.replace("epochs = 4", "epochs = 2")
CLI = "import sys; from improve_dsl.cli import main; sys.exit(main(sys.argv[1:]))"


def test_spec_params_name_every_field_with_defaults_filled() -> None:
    params = spec_params(load_text(DIGITS, "digits.imp"))
    for block in registry.BLOCKS:
        for fld in block.fields:
            assert f"{block.name}.{fld.name}" in params
    assert params["pipeline.name"] == "digits"
    assert params["train.optimizer"] == "sgd"
    assert params["train.optimizer.lr"] == "0.01"
    assert params["train.optimizer.nesterov"] == "false"
    assert params["train.ema"] == "none"  # not in the spec: the default
    assert params["train.precision"] == "auto"
    assert params["model.arch.width"] == "32"
    assert params["augment.ops"] == "[]"
    cropped = spec_params(load_text(DIGITS.replace("ops = []", "ops = [translate()]"), "d.imp"))
    assert cropped["augment.ops"] == "[translate(pixels = 2)]"


@pytest.mark.slow  # importing MLflow and trying its store takes seconds
def test_an_unusable_store_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    spec = tmp_path / "digits.imp"
    spec.write_text(TINY)
    (tmp_path / "a file").write_text("not a folder")
    uri = f"sqlite:///{tmp_path}/a file/mlflow.db"  # MLflow cannot make its folder
    done = _improve("run", str(spec), "--mlflow", cwd=tmp_path, MLFLOW_TRACKING_URI=uri)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"improve: error: cannot use the MLflow store {uri}: ")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "digits.improve").exists()  # nothing trained


def _improve(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MLFLOW_"))}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture
def store(tmp_path: Path) -> tuple[Any, dict[str, str]]:
    """A fresh SQLite-backed MLflow store in a temporary folder, and the environment naming it."""
    tracking = pytest.importorskip("mlflow.tracking", reason="the mlflow extra is not installed")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return tracking.MlflowClient(tracking_uri=uri), {"MLFLOW_TRACKING_URI": uri}


def _artifacts(client: Any, run_id: str) -> set[str]:
    return {item.path for item in client.list_artifacts(run_id)}


@pytest.mark.slow
def test_run_logs_params_epochs_and_artifacts(
    tmp_path: Path, store: tuple[Any, dict[str, str]]
) -> None:
    client, env = store
    spec = tmp_path / "digits.imp"
    spec.write_text(TINY)
    out = tmp_path / "run"
    done = _improve("run", str(spec), "--mlflow", "--out", str(out), cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    experiment = client.get_experiment_by_name("digits")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2"
    assert run.data.params["model.arch"] == "mlp"
    metrics = json.loads((out / "metrics.json").read_text())
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]  # one per epoch
    assert run.data.metrics["final_val_accuracy"] == pytest.approx(metrics["val_accuracy"])
    assert _artifacts(client, run.info.run_id) >= {"spec.imp", "train.py", "metrics.json", "log"}


@pytest.mark.slow
def test_refine_logs_a_parent_and_a_nested_run_per_attempt_and_resumes_it(
    tmp_path: Path, store: tuple[Any, dict[str, str]]
) -> None:
    client, env = store
    spec = tmp_path / "digits.imp"
    spec.write_text(TINY)
    done = _improve("refine", str(spec), "--iters", "2", "--mlflow", cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    [folder] = [p for p in (tmp_path / "digits.improve").iterdir() if (p / "state.json").exists()]
    run = RunDir(folder)
    records = run.records()
    experiment = client.get_experiment_by_name("digits")

    def runs() -> tuple[Any, list[Any]]:
        [parent] = client.search_runs(
            [experiment.experiment_id], f"tags.`improve.run_dir` = '{folder.resolve()}'"
        )
        children = client.search_runs(
            [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )
        return parent, sorted(children, key=lambda r: int(r.data.tags["improve.iteration"]))

    parent, children = runs()
    assert parent.info.status == "FINISHED"
    assert parent.data.params["refine.expert"] == "heuristic"
    assert parent.data.params["train.epochs"] == "2"  # the starting spec
    final = json.loads(run.final_path.read_text())
    assert parent.data.metrics["test_accuracy"] == pytest.approx(final["test_metric"])
    assert _artifacts(client, parent.info.run_id) >= {"start.imp", "best.imp", "journal.jsonl"}
    scores = client.get_metric_history(parent.info.run_id, "val_accuracy")
    assert {m.step: m.value for m in scores} == {
        r.iteration: pytest.approx(r.metric) for r in records if r.metric is not None
    }

    assert [int(c.data.tags["improve.iteration"]) for c in children] == [0, 1, 2]
    for child, record in zip(children, records, strict=True):
        tags = child.data.tags
        assert tags["improve.status"] == record.status
        assert tags["improve.block"] == record.block
        assert tags.get("improve.rationale", "") == record.rationale[:5000]
        candidate = run.candidate_dir(record.iteration)
        if (candidate / "spec.imp").exists():
            text = (candidate / "spec.imp").read_text()
            assert child.data.params == spec_params(load_text(text, str(spec)))
            assert _artifacts(client, child.info.run_id) >= {"spec.imp", "train.py"}
        if record.metric is not None:
            assert child.data.metrics["final_val_accuracy"] == pytest.approx(record.metric)
            epochs = client.get_metric_history(child.info.run_id, "train_loss")
            assert sorted(m.step for m in epochs) == list(range(1, len(epochs) + 1))
            assert epochs, "per-epoch metrics"
    assert children[0].data.tags["improve.block"] == "baseline"

    # Resuming with more iterations continues the same parent run.
    done = _improve(
        "refine", "--resume", str(folder), "--iters", "3", "--mlflow", cwd=tmp_path, **env
    )
    assert done.returncode == 0, done.stderr
    resumed, children = runs()
    assert resumed.info.run_id == parent.info.run_id
    assert resumed.info.status == "FINISHED"
    assert [int(c.data.tags["improve.iteration"]) for c in children] == [0, 1, 2, 3]
