"""Install staged models into a repository so that a build killed at any moment changes nothing.

A build stages its models in a directory beside the repository (`.<repository>.staging-*`):
Triton tries to load every directory inside a repository, hidden ones included, so nothing may
be staged in it. The staged files then move in by renames (atomic on one file system), after a
journal that says what each rename replaces. A build that dies mid-way leaves its staging
directory and journal behind; the next `build`, `check` or `serve` rolls the repository back
from them and removes the directory. A living build holds a lock on its staging directory, so
only the leftovers of dead builds are touched.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from tritonize.errors import RepositoryError
from tritonize.progress import note

STAGING_INFIX = ".staging-"
_JOURNAL = "journal.json"
_COMMITTED = "committed"  # present once every rename is done: nothing to roll back
_BACKUP = "backup"  # what the renames replaced, by model
PAUSE_VARIABLE = "TRITONIZE_PAUSE_AT"


@dataclass(frozen=True)
class Move:
    """One entry of a staged model (`config.pbtxt`, `golden.json`, `<version>/`) to install."""

    model: str
    item: str
    replaces: bool  # the repository already holds this entry
    creates_model: bool  # the model directory is new


def pause_point(name: str) -> None:
    """Hold the build here when `TRITONIZE_PAUSE_AT=name`: fault tests kill it at this moment."""
    if os.environ.get(PAUSE_VARIABLE) == name:
        print(f"paused at {name}", file=sys.stderr, flush=True)
        while True:
            time.sleep(60)


@contextmanager
def staging_directory(repository: Path) -> Iterator[Path]:
    """A private directory beside `repository`, locked while this build lives, then removed;
    and `repository` itself where the build created it and installed nothing into it."""
    created = _create(repository)
    try:
        with repository_lock(repository):
            for message in recover(repository, locked=True):
                note(message)
            path = _create_staging(repository)
            held = _lock(path, wait=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            os.close(held)
    finally:
        _remove_if_unused(created)


def install(
    staging: Path,
    repository: Path,
    models: list[str],
    guard: Callable[[], object],
    check: Callable[[Path], object],
) -> None:
    """Move `staging/repository/<model>` entries into `repository`; run `check` on the result.

    `guard` runs first under the repository's lock (it raises to refuse). On any failure
    after that, the repository is rolled back before the error propagates.
    """
    with repository_lock(repository):
        guard()
        moves = _plan(staging / "repository", repository, models)
        _write_journal(staging, repository, moves)
        pause_point("journal-written")
        try:
            for index, move in enumerate(moves):
                _apply(staging, repository, move)
                if index == len(moves) // 2:
                    pause_point("half-installed")
            pause_point("installed")
            check(repository)
        except BaseException:
            _roll_back(staging, repository, moves)
            raise
        (staging / _COMMITTED).touch()
        pause_point("committed")


def recover(repository: Path, locked: bool = False) -> list[str]:
    """Roll back the installs of dead builds and remove their staging; say what was done."""
    if not repository.is_dir():
        return []
    if not locked:
        with repository_lock(repository):
            return recover(repository, locked=True)
    done = _remove_staging_inside(repository)
    for staging in sorted(repository.parent.glob(_staging_prefix(repository) + "*")):
        held = _try_lock(staging)
        if held is None:
            continue  # a living build owns it
        try:
            done.append(_recover_one(staging, repository))
        finally:
            os.close(held)
    return done


@contextmanager
def repository_lock(repository: Path) -> Iterator[None]:
    """Exclusive hold on `repository` (a lock on the directory itself, nothing written)."""
    held = _lock(repository, wait=True)
    try:
        yield
    finally:
        os.close(held)


def _remove_staging_inside(repository: Path) -> list[str]:
    """Earlier releases staged inside the repository, where Triton refuses the directory."""
    done = []
    for staging in sorted(repository.glob(STAGING_INFIX + "*")):
        shutil.rmtree(staging, ignore_errors=True)
        done.append(f"removed `{staging}`, the staging of an earlier build")
    return done


def _recover_one(staging: Path, repository: Path) -> str:
    journal = staging / _JOURNAL
    if journal.exists() and not (staging / _COMMITTED).exists():
        moves = [Move(**entry) for entry in json.loads(journal.read_text())["moves"]]
        _roll_back(staging, repository, moves)
        message = f"rolled back the install that a dead build left in `{repository}`"
    else:
        message = f"removed `{staging.name}`, left by a dead build"
    shutil.rmtree(staging, ignore_errors=True)
    return message


def _plan(stage: Path, repository: Path, models: list[str]) -> list[Move]:
    moves = []
    for model in models:
        creates = not (repository / model).exists()
        for item in sorted(p.name for p in (stage / model).iterdir()):
            replaces = os.path.lexists(repository / model / item)
            moves.append(Move(model, item, replaces, creates))
    return moves


def _write_journal(staging: Path, repository: Path, moves: list[Move]) -> None:
    record = {"repository": str(repository.resolve()), "moves": [asdict(m) for m in moves]}
    partial = staging / (_JOURNAL + ".partial")
    partial.write_text(json.dumps(record, indent=2))
    os.replace(partial, staging / _JOURNAL)  # a journal is whole or absent


def _apply(staging: Path, repository: Path, move: Move) -> None:
    target = repository / move.model / move.item
    target.parent.mkdir(exist_ok=True)
    if move.replaces:
        backup = staging / _BACKUP / move.model / move.item
        backup.parent.mkdir(parents=True, exist_ok=True)
        os.rename(target, backup)
    os.rename(staging / "repository" / move.model / move.item, target)


def _roll_back(staging: Path, repository: Path, moves: list[Move]) -> None:
    """Undo `moves` whatever point they reached: every rename is all or nothing."""
    for move in reversed(moves):
        target = repository / move.model / move.item
        backup = staging / _BACKUP / move.model / move.item
        if os.path.lexists(backup):
            _remove(target)
            os.rename(backup, target)
        elif not move.replaces:
            _remove(target)
        # else: the entry was never moved aside, so the original is still in place
        model_dir = repository / move.model
        if move.creates_model and model_dir.is_dir() and not any(model_dir.iterdir()):
            model_dir.rmdir()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _create(repository: Path) -> list[Path]:
    """Make `repository` and any missing parents; the directories made, outermost first."""
    if repository.exists() and not repository.is_dir():
        raise RepositoryError([f"`{repository}` is a file: expected a directory to build into"])
    missing = [d for d in (repository, *repository.parents) if not d.exists()][::-1]
    try:
        repository.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RepositoryError([f"cannot create `{repository}`: {exc.strerror}"]) from None
    return missing


def _remove_if_unused(created: list[Path]) -> None:
    """Remove the directories a build made, innermost first, while empty; none while another
    build stages beside the repository (it will install there)."""
    if not created or any(created[-1].parent.glob(_staging_prefix(created[-1]) + "*")):
        return
    for directory in reversed(created):
        try:
            directory.rmdir()  # refuses a directory that is not empty
        except OSError:
            return


def _create_staging(repository: Path) -> Path:
    try:
        return Path(tempfile.mkdtemp(dir=repository.parent, prefix=_staging_prefix(repository)))
    except OSError as exc:
        raise RepositoryError(
            [f"cannot stage beside `{repository}`: {exc.strerror} (its parent must be writable)"]
        ) from None


def _staging_prefix(repository: Path) -> str:
    return f".{repository.name}{STAGING_INFIX}"


def _lock(path: Path, wait: bool) -> int:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _try_lock(path: Path) -> int | None:
    try:
        return _lock(path, wait=False)
    except (BlockingIOError, FileNotFoundError):
        return None
