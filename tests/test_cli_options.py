"""`improve refine`'s command line becomes RefineOptions in one place (RefineOptions.from_args)."""

from __future__ import annotations

from pathlib import Path

from improve_dsl.cli import build_parser
from improve_dsl.refine.options import RefineOptions


def test_flags_not_given_take_the_defaults_and_are_not_overrides() -> None:
    args = build_parser().parse_args(["refine", "spec.imp"])
    assert RefineOptions.from_args(args) == RefineOptions()
    assert {k: v for k, v in RefineOptions.given_flags(args).items() if v is not None} == {}


def test_every_flag_reaches_its_option() -> None:
    argv = [
        "refine",
        "spec.imp",
        "--iters",
        "3",
        "--expert",
        "heuristic",
        "--base-url",
        "http://x/v1",
        "--grammar",
        "gbnf",
        "--select",
        "diagnose",
        "--strategy",
        "all-at-once",
        "--zero-shot",
        "--seeds",
        "2",
        "--min-delta",
        "0.01",
        "--parallel",
        "2",
        "--timeout",
        "9",
        "--budget-minutes",
        "4",
        "--max-cost",
        "0.5",
        "--no-prune",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-test",
        "--run-dir",
        "R",
        "--resume",
        "S",
        "--git",
        "--expert-seed",
        "7",
        "--ray-address",
        "h:1",
    ]
    options = RefineOptions.from_args(build_parser().parse_args(argv))
    assert options == RefineOptions(
        iters=3,
        expert="heuristic",
        base_url="http://x/v1",
        grammar="gbnf",
        select="diagnose",
        strategy="all-at-once",
        zero_shot=True,
        seeds=2,
        min_delta=0.01,
        parallel=2,
        timeout=9.0,
        budget_minutes=4.0,
        max_cost=0.5,
        prune=False,
        device="cpu",
        threads=1,
        test=False,
        run_dir=Path("R"),
        resume=Path("S"),
        git=True,
        expert_seed=7,
        executor="ray",  # --ray-address implies it
        ray_address="h:1",
    )


def test_a_resumed_run_is_overridden_only_by_the_flags_given() -> None:
    args = build_parser().parse_args(["refine", "--resume", "R", "--iters", "5", "--no-test"])
    given = {k: v for k, v in RefineOptions.given_flags(args).items() if v is not None}
    assert given == {"iters": 5, "test": False}
