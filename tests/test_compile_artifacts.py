"""The driver's shelf of torch.compile cache artifacts (executors/compile_artifacts.py): what
it ships with a task, what it keeps of what comes back. The round trip through a real script
and a real Ray cluster is in tests/test_training.py and tests/test_ray.py (slow tier)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from improve_dsl.executors.compile_artifacts import ArtifactShelf


def artifact(content: bytes) -> tuple[str, bytes]:
    """A name as the script writes it (the content's sha256) and the content."""
    return hashlib.sha256(content).hexdigest()[:32] + ".bin", content


def stock(shelf: ArtifactShelf, count: int) -> list[str]:
    """``count`` artifacts of 100 bytes added one by one, each older than the next; their
    names, oldest first."""
    assert shelf.folder is not None
    names = []
    for index in range(count):
        name, data = artifact(bytes([index]) * 100)
        shelf.add({name: data})
        os.utime(shelf.folder / name, (1000 + index, 1000 + index))
        names.append(name)
    return names


def test_what_comes_back_is_shipped_with_the_next_task(tmp_path: Path) -> None:
    shelf = ArtifactShelf(tmp_path / "shelf")
    assert shelf.bundle() == {} and shelf.version == 0
    name, data = artifact(b"graph one")
    assert shelf.add({name: data}) == 1
    assert shelf.bundle() == {name: data}
    assert shelf.version == 1
    # The same artifact again (another seed of the same candidate) changes nothing.
    assert shelf.add({name: data}) == 0
    assert shelf.version == 1
    # A later executor (another refine run) finds it on disk.
    assert ArtifactShelf(tmp_path / "shelf").bundle() == {name: data}


def test_names_a_script_does_not_write_are_not_stored(tmp_path: Path) -> None:
    shelf = ArtifactShelf(tmp_path / "shelf")
    assert shelf.add({"../escape.bin": b"x", "model.pt": b"x", "ABC.bin": b"x"}) == 0
    assert not (tmp_path / "escape.bin").exists()
    assert not (tmp_path / "shelf").exists() or not list((tmp_path / "shelf").iterdir())


def test_the_newest_are_shipped_up_to_the_limit(tmp_path: Path) -> None:
    shelf = ArtifactShelf(tmp_path / "shelf", ship_limit=250)
    names = stock(shelf, 3)
    assert list(shelf.bundle()) == [names[2], names[1]]  # 200 bytes; a third would pass 250


def test_the_oldest_go_when_the_shelf_is_full(tmp_path: Path) -> None:
    shelf = ArtifactShelf(tmp_path / "shelf", keep_limit=250)
    names = stock(shelf, 3)
    shelf.add(dict([artifact(b"\xff" * 100)]))
    kept = sorted(path.name for path in (tmp_path / "shelf").iterdir())
    assert names[0] not in kept and names[1] not in kept and len(kept) == 2


def test_no_cache_folder_keeps_and_ships_nothing(tmp_path: Path) -> None:
    shelf = ArtifactShelf(None)
    assert shelf.add(dict([artifact(b"graph")])) == 0
    assert shelf.bundle() == {}


def test_an_unwritable_shelf_costs_compiles_not_the_run(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    shelf = ArtifactShelf(blocker / "shelf")
    assert shelf.add(dict([artifact(b"graph")])) == 0
    assert shelf.bundle() == {}
