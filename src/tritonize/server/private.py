"""Files only this user may touch: the per-user directory, the server log, the backend copy.

The temp dir is shared by every local user. Anything placed there that tritonserver executes
(the Python backend stub) or writes to (its log) must live in a directory that this user owns,
that nobody else can write to, and that is not a symlink planted by someone else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from tritonize.errors import ServerError
from tritonize.processes import is_alive


def private_root() -> Path:
    """`$TMPDIR/tritonize-<uid>`, the default home of logs and backend copies."""
    return Path(tempfile.gettempdir()) / f"tritonize-{os.getuid()}"


def ensure_private_dir(path: Path) -> Path:
    """Create `path` mode 0700, or accept it only if it is a directory this user alone controls."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise ServerError(f"private directory {path} is a symlink: remove it, or set TMPDIR")
    if not stat.S_ISDIR(info.st_mode):
        raise ServerError(f"private directory {path} is not a directory: remove it, or set TMPDIR")
    if info.st_uid != os.getuid():
        raise ServerError(
            f"private directory {path} belongs to uid {info.st_uid}, not to this user "
            f"(uid {os.getuid()}): remove it, or set TMPDIR"
        )
    if info.st_mode & 0o077:
        raise ServerError(
            f"private directory {path} is open to other users (mode {stat.S_IMODE(info.st_mode):o},"
            " allowed 700): `chmod 700` it, or remove it"
        )
    return path


def open_log(path: Path) -> int:
    """Open (truncate) a log for writing without following a symlink; returns the descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except OSError as exc:
        reason = "it is a symlink" if os.path.islink(path) else exc.strerror
        raise ServerError(f"cannot open the server log {path}: {reason}") from None


def fresh_copy(sources: list[Path], parent: Path, name: str) -> Path:
    """Copy `sources` into a new `parent/<name>-<pid>-<random>/python` (never reused)."""
    root = Path(tempfile.mkdtemp(prefix=f"{name}-{os.getpid()}-", dir=ensure_private_dir(parent)))
    target = root / "python"
    target.mkdir()
    for source in sources:
        shutil.copy2(source, target / source.name)
    return root


def remove_tree(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def remove_orphan_copies(parent: Path, name: str) -> int:
    """Remove `parent/<name>-<pid>-*` copies whose owner process is dead (it was killed)."""
    removed = 0
    for copy in parent.glob(f"{name}-*-*") if parent.is_dir() else []:
        owner = copy.name.split("-")[1]
        if owner.isdigit() and not is_alive(int(owner)):
            shutil.rmtree(copy, ignore_errors=True)
            removed += 1
    return removed
