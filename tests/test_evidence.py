"""The evidence store (real SQLite, real processes) and what refinement reads back from it:
the heuristic's priors, the LLM prompt's "on similar datasets" section, `improve history`."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ImproveCall
from openai_server import OpenAIServer, Reply, chat_completion

from improve_dsl.evidence import Evidence, Profile, Store, StoreError, default_path
from improve_dsl.refine.experts.base import Context
from improve_dsl.refine.experts.heuristic.expert import HeuristicExpert
from improve_dsl.refine.experts.llm.expert import OpenAIExpert
from improve_dsl.refine.memory import (
    BASE_RATE,
    field_changes,
    load_priors,
    move_family,
    profile_of,
)

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = "specs/digits.imp"
SPEC = (ROOT / SPEC_PATH).read_text(encoding="utf-8")
DIGITS = Profile("digits", 8, 1, 10, 1437, "mlp")
CIFAR = Profile("cifar10", 32, 3, 10, 45000, "resnet")


def row(
    run: str, iteration: int, move: str, status: str, gain: float, profile: Profile
) -> Evidence:
    return Evidence(
        run=run,
        iteration=iteration,
        profile=profile,
        block=move.split(".")[0],
        move=move,
        edit={"fields": {"epochs": [4, 8]}, "ops": {}},
        status=status,
        metric=0.9,
        incumbent_metric=0.9 - gain,
        gain=gain,
        noise=0.01,
        margin=0.01,
        cost_ratio=1.5,
        expert="heuristic",
        provenance={"spec_sha256": "ab", "torch_version": "2.x", "device": "cpu"},
    )


# ---------------------------------------------------------------- the store


def test_the_store_lives_in_the_tests_own_data_folder(tmp_path: Path) -> None:
    # conftest points $XDG_DATA_HOME at a folder of this test: the user's store is never touched
    assert str(default_path()).startswith(str(Path(tmp_path).parent.parent))
    assert default_path().name == "evidence.sqlite"
    assert not str(default_path()).startswith(str(Path.home() / ".local"))


def test_rows_round_trip_and_a_resumed_attempt_is_not_counted_twice(tmp_path: Path) -> None:
    store = Store(tmp_path / "e.sqlite")
    first = [row("/r", 1, "train.recipe", "accepted", 0.05, DIGITS)]
    assert store.add(first) == 1
    assert store.add([*first, row("/r", 2, "train.lr:up*2", "rejected", -0.01, DIGITS)]) == 1
    rows = store.rows()
    assert [(r.iteration, r.move, r.status) for r in rows] == [
        (1, "train.recipe", "accepted"),
        (2, "train.lr:up*2", "rejected"),
    ]
    assert rows[0].profile == DIGITS
    assert rows[0].edit == {"fields": {"epochs": [4, 8]}, "ops": {}}
    assert rows[0].provenance["device"] == "cpu"
    assert store.rows(dataset="cifar10") == []
    assert store.rows(exclude_run="/r") == []
    mode = sqlite3.connect(tmp_path / "e.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from improve_dsl.evidence import Evidence, Profile, Store
    store, name, count = Store(Path(sys.argv[1])), sys.argv[2], int(sys.argv[3])
    profile = Profile("digits", 8, 1, 10, 1437, "mlp")
    print("ready", flush=True)
    sys.stdin.readline()  # all writers start together
    for i in range(count):
        store.add([Evidence(name, i, profile, "train", "train.recipe", {}, "accepted",
                            0.9, 0.8, 0.1, 0.01, 0.01, 1.0, "heuristic", {})])
    """
)


def test_refines_writing_side_by_side_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    writers, per_writer = 6, 40
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), f"/run/{n}", str(per_writer)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(writers)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.close()
    assert [proc.wait(timeout=120) for proc in procs] == [0] * writers
    rows = Store(path).rows()
    assert len(rows) == writers * per_writer
    assert {(r.run, r.iteration) for r in rows} == {
        (f"/run/{n}", i) for n in range(writers) for i in range(per_writer)
    }


def test_a_corrupt_or_foreign_database_is_one_clear_line(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError) as caught:
        Store(corrupt).rows()
    assert "unusable" in str(caught.value) and "\n" not in str(caught.value)
    foreign = tmp_path / "foreign.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE songs (title TEXT)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not an improve evidence store"):
        Store(foreign).add([row("/r", 1, "train.recipe", "accepted", 0.05, DIGITS)])
    # and the foreign database is left as it was
    tables = sqlite3.connect(foreign).execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == [("songs",)]


# ---------------------------------------------------------------- typed edits, priors


def test_an_edit_is_recorded_as_field_deltas_and_op_changes() -> None:
    before = SPEC
    after = SPEC.replace("epochs = 4", "epochs = 9").replace("sgd(lr = 0.01,", "sgd(lr = 0.05,")
    assert field_changes(before, after, "train")["fields"] == {
        "epochs": [4.0, 9.0],
        "optimizer.lr": [0.01, 0.05],
    }
    augmented = SPEC.replace("ops = []", "ops = [random_crop(padding = 1), cutout(size = 2)]")
    edit = field_changes(SPEC, augmented, "augment")
    assert edit["ops"] == {"ops": {"added": ["cutout", "random_crop"], "removed": []}}
    assert field_changes(SPEC, SPEC, "train") == {"fields": {}, "ops": {}}


def test_priors_are_shrunk_when_thin_and_weighted_by_similarity(tmp_path: Path) -> None:
    store = Store(tmp_path / "e.sqlite")
    rows = [row("/a", i, "train.lr:up*2", "rejected", -0.02, DIGITS) for i in range(1, 9)]
    rows += [row("/a", 10 + i, "model.width@mlp:up*2", "accepted", 0.03, DIGITS) for i in range(6)]
    rows.append(row("/b", 1, "augment.cutout", "rejected", -0.01, DIGITS))
    # what failed on big colour images says little about 8x8 digits
    rows += [row("/c", i, "model.recipe@mlp", "rejected", -0.05, CIFAR) for i in range(1, 20)]
    store.add(rows)
    priors, problem = load_priors(store, DIGITS)
    assert problem is None
    assert move_family("train.lr:up*1.41") == "train.lr:up"
    assert priors.factor("train.lr:up*1.41") < 0.5  # kept failing here: tried late
    assert priors.factor("model.width@mlp:up*4") > 2.0  # kept paying: tried early
    assert 0.7 < priors.factor("augment.cutout") < 1.0  # one attempt: barely moved
    assert priors.factor("model.recipe@mlp") > 0.5  # evidence from dissimilar data is weak
    assert priors.factor("never.seen") == 1.0
    own, _ = load_priors(store, DIGITS, exclude_run=Path("/a"))
    assert own.factor("train.lr:up*2") == 1.0  # a run's own attempts are not its prior
    assert BASE_RATE > 0


def _context(**fields: object) -> Context:
    base: dict[str, object] = dict(
        spec_text=SPEC,
        spec_path=SPEC_PATH,
        blocks=(),
        profile="digits",
        metric_name="val_accuracy",
        incumbent_metric=0.5,
        curves=[],
        history=[],
    )
    base.update(fields)
    return Context(**base)  # type: ignore[arg-type]


def test_the_offline_expert_tries_late_what_kept_failing_on_similar_data(
    tmp_path: Path,
) -> None:
    blocks = ("augment", "model", "train")
    plain = HeuristicExpert().ranked(_context(), blocks)
    first = plain[0].move.id
    store = Store(tmp_path / "e.sqlite")
    store.add([row("/a", i, first, "rejected", -0.03, DIGITS) for i in range(1, 13)])
    priors, _ = load_priors(store, profile_of(SPEC, SPEC_PATH))
    informed = HeuristicExpert().ranked(_context(**priors.for_context()), blocks)
    assert informed[0].move.id != first
    assert [r.move.id for r in informed].index(first) > 0
    assert {r.move.id for r in informed} == {r.move.id for r in plain}  # reordered, not dropped


def test_the_llm_prompt_gets_a_short_section_on_similar_datasets(tmp_path: Path) -> None:
    store = Store(tmp_path / "e.sqlite")
    rows = [row("/a", 1 + i, f"train.field{i}", "accepted", 0.01 * i, DIGITS) for i in range(20)]
    rows += [row("/a", 100 + i, "train.recipe", "accepted", 0.05, DIGITS) for i in range(5)]
    store.add(rows)
    priors, _ = load_priors(store, DIGITS)
    with OpenAIServer() as server:
        server.push(Reply(chat_completion("```imp\ntrain {\n  epochs = 9\n}\n```")))
        expert = OpenAIExpert(
            "m", base_url=server.url, api_key="k", grammar_mode="none", timeout=2.0
        )
        expert.propose(_context(blocks=("train",), **priors.for_context()))
        content = server.requests[0].body["messages"][1]["content"]
    section = content.split("## On similar datasets", 1)[1].split("## Budget", 1)[0]
    lines = [line for line in section.splitlines()[1:] if line.strip()]
    assert lines[0] == "- train.recipe: kept 5 of 5, gain +0.050 ± 0.000"
    assert len(lines) == 8  # bounded, whatever the store holds
    with OpenAIServer() as server:  # no evidence, no section
        server.push(Reply(chat_completion("```imp\ntrain {\n  epochs = 9\n}\n```")))
        expert = OpenAIExpert(
            "m", base_url=server.url, api_key="k", grammar_mode="none", timeout=2.0
        )
        expert.propose(_context(blocks=("train",)))
        assert "On similar datasets" not in server.requests[0].body["messages"][1]["content"]


# ---------------------------------------------------------------- refine and history


@pytest.mark.slow
def test_refine_records_its_attempts_and_warns_once_on_a_corrupt_store(
    tmp_path: Path, improve: ImproveCall, _evidence_store: Path
) -> None:
    spec = tmp_path / "digits.imp"
    spec.write_text(SPEC)
    result = improve("refine", str(spec), "--iters", "0", "--no-test", "-q")
    assert result.returncode == 0, result.stderr
    (baseline,) = Store().rows()
    assert baseline.iteration == 0 and baseline.status == "accepted"
    assert baseline.profile == Profile("digits", 8, 1, 10, baseline.profile.train_size, "mlp")
    manifest = baseline.provenance
    assert set(manifest) == {
        "spec_sha256",
        "data_fingerprint",
        "script_sha256",
        "seeds",
        "torch_version",
        "device",
    }
    assert manifest["device"] == "cpu" and manifest["seeds"] == [0]
    assert len(manifest["script_sha256"]) == 64 and manifest["torch_version"]

    default_path().write_bytes(b"garbage" * 500)
    spec2 = tmp_path / "again.imp"
    spec2.write_text(SPEC.replace("seed = 0", "seed = 1"))
    result = improve("refine", str(spec2), "--iters", "0", "--no-test")
    assert result.returncode == 0
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "evidence" in line]
    assert len(warnings) == 1 and "going on without history" in warnings[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a real refine; the fast tier's is the resumed run's below
def test_no_history_neither_reads_nor_writes_the_store(
    tmp_path: Path, improve: ImproveCall
) -> None:
    spec = tmp_path / "digits.imp"
    spec.write_text(SPEC)
    result = improve("refine", str(spec), "--iters", "0", "--no-test", "-q", "--no-history")
    assert result.returncode == 0, result.stderr
    assert not default_path().exists()


def test_history_lists_moves_by_effect_with_counts_and_spread(improve: ImproveCall) -> None:
    assert "no refinement attempts stored yet" in improve("history").stdout
    store = Store()
    store.add(
        [
            row("/a", 1, "train.recipe", "accepted", 0.06, DIGITS),
            row("/a", 2, "train.recipe", "accepted", 0.04, DIGITS),
            row("/a", 3, "augment.cutout", "rejected", -0.02, DIGITS),
            row("/b", 1, "model.width@resnet:up*2", "accepted", 0.01, CIFAR),
        ]
    )
    result = improve("history")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("4 attempts from 2 run(s) on cifar10, digits")
    table = [line.split() for line in lines[3:]]
    assert table == [
        ["train.recipe", "2", "2", "+0.0500", "0.0141"],
        ["model.width@resnet:up", "1", "1", "+0.0100", "—"],
        ["augment.cutout", "1", "0", "-0.0200", "—"],
    ]
    only = improve("history", "--dataset", "cifar10").stdout
    assert "model.width@resnet:up" in only and "train.recipe" not in only
    default_path().write_bytes(b"not sqlite" * 300)
    broken = improve("history")
    assert broken.returncode == 2 and len(broken.stderr.splitlines()) == 1
    assert "evidence store" in broken.stderr and "Traceback" not in broken.stderr


def test_a_resumed_run_stores_what_a_kill_kept_from_the_store_and_nothing_twice(
    tmp_path: Path, improve: ImproveCall
) -> None:
    spec = tmp_path / "digits.imp"
    spec.write_text(SPEC)
    assert improve("refine", str(spec), "--iters", "0", "--no-test", "-q").returncode == 0
    (run,) = [p for p in (tmp_path / "digits.improve").iterdir() if (p / "state.json").exists()]
    assert len(Store().rows()) == 1
    db = sqlite3.connect(default_path())
    db.execute("DELETE FROM attempts")  # as if killed between the journal and the store
    db.commit()
    db.close()
    resumed = improve("refine", "--resume", str(run), "--iters", "0", "-q")
    assert resumed.returncode == 0, resumed.stderr
    again = improve("refine", "--resume", str(run), "--iters", "0", "-q")
    assert again.returncode == 0, again.stderr
    (baseline,) = Store().rows()
    assert baseline.iteration == 0 and baseline.run == str(run.resolve())
    assert len(baseline.provenance["script_sha256"]) == 64
