"""``--git``: one commit per accepted change, touching only the spec file."""

from __future__ import annotations

import subprocess
from pathlib import Path


class GitError(Exception):
    """git is missing, or the spec is not inside a work tree: one line for the user."""


def git_root(path: Path) -> Path:
    """The work tree holding ``path``, or GitError."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=path.parent,
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        raise GitError("--git needs git, which is not installed") from None
    if out.returncode != 0:
        raise GitError(f"--git: {path} is not inside a git repository (run `git init` first)")
    return Path(out.stdout.strip())


def git_commit(spec_path: Path, message: str) -> str | None:
    """Commit the spec file alone; None on success, else git's complaint."""
    cwd = spec_path.parent
    name = spec_path.name
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", "--", name],
        cwd=cwd,
        capture_output=True,
        check=False,
    )
    if tracked.returncode != 0:
        added = subprocess.run(
            ["git", "add", "--", name], cwd=cwd, capture_output=True, text=True, check=False
        )
        if added.returncode != 0:
            return added.stderr.strip() or "git add failed"
    # `git commit -- PATH` commits that path alone, whatever else is staged.
    done = subprocess.run(
        ["git", "commit", "-q", "-m", message, "--", name],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return (done.stderr or done.stdout).strip() or "git commit failed"
    return None


def uncommitted_change(spec_path: Path) -> str | None:
    """What of the user's own is uncommitted in the spec (it is untracked, or differs from
    HEAD, staged or not), or None when it is clean: ``--git`` refuses to start then, since
    its first "improve: ..." commit would silently take the user's edits along."""
    cwd, name = spec_path.parent, spec_path.name
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", "--", name], cwd=cwd, capture_output=True
    )
    if tracked.returncode != 0:
        return f"{spec_path} is not committed yet"
    diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", name], cwd=cwd)
    if diff.returncode == 1:
        return f"{spec_path} has changes of yours that are not committed"
    if diff.returncode != 0:
        return f"{spec_path} has no commit to compare with (the repository has no commits)"
    return None
