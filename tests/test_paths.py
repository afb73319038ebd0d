"""Paths and folders as a new user meets them: a spec's relative data folder, a refine run
given to `improve predict`, the README's first command on a clean checkout, `--git` and the
user's own edits."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from improve_dsl.journal import RunDir
from improve_dsl.predict import PredictError, model_dir
from improve_dsl.render import render_script
from improve_dsl.validate import load, load_text, resolve_root

ROOT = Path(__file__).resolve().parent.parent
DIGITS = (ROOT / "specs" / "digits.imp").read_text()
IMPROVE = [sys.executable, "-m", "improve_dsl.cli"]


def improve(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return subprocess.run(
        [*IMPROVE, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def image_folder(root: Path) -> Path:
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            pixels = np.full((12, 12, 3), 40 * i + (100 if label == "dog" else 0), np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


# ---------------------------------------------------------------- a spec's data folder


def test_a_relative_root_is_read_from_the_specs_folder() -> None:
    assert resolve_root("fm3", "sub/y.imp") == os.path.join("sub", "fm3")
    assert resolve_root("../data", "a/b/y.imp") == os.path.join("a", "data")
    assert resolve_root("fm3", "y.imp") == "fm3"  # the spec is in the working folder
    assert resolve_root("/srv/data", "sub/y.imp") == "/srv/data"
    assert resolve_root("fm3", "<spec>") == "fm3"
    text = DIGITS.replace("source = digits()", 'source = image_folder(root = "imgs")')
    spec = load_text(text, "projects/cats/spec.imp")
    assert spec.data.source["root"] == os.path.join("projects", "cats", "imgs")
    assert "DATA_ROOT = 'projects/cats/imgs'" in render_script(spec).replace('"', "'")


def test_init_then_check_from_another_folder(tmp_path: Path) -> None:
    image_folder(tmp_path / "fm3")
    made = improve("init", "--data", "fm3", "-o", "sub/y.imp", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert 'root = "../fm3"' in (tmp_path / "sub" / "y.imp").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    checked = improve("check", "../sub/y.imp", cwd=elsewhere)
    assert checked.returncode == 0, checked.stderr
    assert load(tmp_path / "sub" / "y.imp").data.source["root"] == str(tmp_path / "fm3")


def test_plain_check_reports_a_missing_data_folder_and_where_it_looked(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    text = DIGITS.replace("source = digits()", 'source = image_folder(root = "pics")')
    (tmp_path / "sub" / "y.imp").write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if 'root = "pics"' in t)
    checked = improve("check", "sub/y.imp", cwd=tmp_path)
    assert checked.returncode == 2
    err = checked.stderr
    assert err.startswith(f"sub/y.imp:{line}:3: error: the image folder 'sub/pics' does not exist")
    assert f"(looked in {tmp_path / 'sub' / 'pics'})" in err
    assert 'root = "pics" is read from the spec\'s folder (sub)' in err


# ---------------------------------------------------------------- predict and a refine run


def test_predict_names_the_paths_it_looked_for_in_a_refine_run(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "spec.improve" / "r1", DIGITS)
    run.write_state({"version": 1})
    with pytest.raises(PredictError) as caught:
        model_dir(run.path)
    message = str(caught.value)
    assert str(run.path / "test" / "model.pt") in message
    assert f"improve run {run.best_spec} --out DIR" in message
    with pytest.raises(PredictError, match=str(tmp_path / "plain" / "model.pt")):
        (tmp_path / "plain").mkdir()
        model_dir(tmp_path / "plain")


@pytest.mark.slow
def test_predict_accepts_a_refine_run_directory(tmp_path: Path) -> None:
    spec = tmp_path / "d.imp"
    spec.write_text(DIGITS.replace("epochs = 4", "epochs = 2"))
    done = improve("refine", str(spec), "--iters", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run_path,) = [p for p in (tmp_path / "d.improve").iterdir() if (p / "state.json").exists()]
    from sklearn.datasets import load_digits

    image = tmp_path / "seven.png"
    pixels = load_digits().images[7] * (255 / 16)
    Image.fromarray(pixels.astype(np.uint8)).save(image)
    predicted = improve("predict", str(run_path), str(image), cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.startswith(f"{image}: ")


# ---------------------------------------------------------------- --git and the user's edits


def test_git_refuses_a_spec_with_the_users_uncommitted_edits(tmp_path: Path) -> None:
    git("init", "-q", cwd=tmp_path)
    git("config", "user.email", "t@example.com", cwd=tmp_path)
    git("config", "user.name", "Tester", cwd=tmp_path)
    spec = tmp_path / "d.imp"
    spec.write_text(DIGITS)
    refused = improve("refine", "d.imp", "--iters", "1", "--git", cwd=tmp_path)
    assert refused.returncode == 2
    assert "d.imp is not committed yet" in refused.stderr
    git("add", "d.imp", cwd=tmp_path)
    git("commit", "-q", "-m", "start", cwd=tmp_path)
    spec.write_text(DIGITS.replace("epochs = 4", "epochs = 6"))  # the user's own edit
    refused = improve("refine", "d.imp", "--iters", "1", "--git", cwd=tmp_path)
    assert refused.returncode == 2
    assert "d.imp has changes of yours that are not committed" in refused.stderr
    assert "git add d.imp && git commit" in refused.stderr
    assert not (tmp_path / "d.improve").exists()  # nothing was started
    assert git("log", "--format=%s", cwd=tmp_path).split("\n")[0] == "start"


# ---------------------------------------------------------------- the README's first command


@pytest.mark.slow
def test_the_quickstart_leaves_git_status_clean(tmp_path: Path) -> None:
    """The README's first command (after its install step, with 1 iteration instead of 5)
    on a fresh clone of the repository: it must change no tracked file."""
    first = (ROOT / "README.md").read_text().split("```sh\n", 1)[1].splitlines()[0]
    command = first.split("pip install -e . && ", 1)[1]
    assert command.startswith("cp specs/digits.imp ") and "--iters 5" in command
    command = command.replace("--iters 5", "--iters 1").replace(
        ".venv/bin/improve", " ".join(IMPROVE)
    )
    clone = tmp_path / "clone"
    clone.mkdir()
    git("init", "-q", cwd=clone)
    for name in git("ls-files", cwd=ROOT).splitlines():
        target = clone / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, target)
    git("add", "-A", cwd=clone)
    git("-c", "user.email=t@e", "-c", "user.name=t", "commit", "-q", "-m", "c", cwd=clone)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    done = subprocess.run(
        ["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "improve report my_digits.improve/" in done.stdout
    assert git("status", "--porcelain", cwd=clone) == ""
    assert (clone / "my_digits.imp").is_file() and (clone / "my_digits.improve").is_dir()
