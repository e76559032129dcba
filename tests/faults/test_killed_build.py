"""A `tritonize build` killed with SIGKILL at any moment leaves the repository as it was.

Each test starts a real build in a child process, kills it for real (SIGKILL) at a named moment
(`TRITONIZE_PAUSE_AT` holds the build there) or while it exports, then checks that the
repository is byte for byte what it was, that `check` passes and that the next build works.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from integration.conftest import server_config

from tritonize.client import TritonizeClient
from tritonize.repository.checker import check_repository
from tritonize.server import LocalServer

NAME = "sentiment"  # the ensemble that `classifier_repository` holds


def snapshot(repository: Path) -> dict[str, str]:
    """Every entry under `repository`: directories by name, files by content hash."""
    entries = {}
    for path in sorted(repository.rglob("*")):
        key = str(path.relative_to(repository))
        if path.is_dir():
            entries[key] = "dir"
        else:
            entries[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


def leftovers(repository: Path) -> list[str]:
    """Staging directories anywhere near the repository: inside it or beside it."""
    inside = [p.name for p in repository.glob(".*staging*")]
    beside = [p.name for p in repository.parent.glob(f".{repository.name}*")]
    return sorted(inside + beside)


def build_command(repository: Path, checkpoint: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "tritonize.cli", "build",
        "--task", "classification", "--name", NAME, "--model", str(checkpoint),
        "--output", str(repository), "--max-batch-size", "8", "--max-seq-len", "64",
        *extra,
    ]  # fmt: skip


def start_build(
    command: list[str], cwd: Path, pause_at: str | None = None
) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("TRITONIZE_PAUSE_AT", None)
    if pause_at is not None:
        env["TRITONIZE_PAUSE_AT"] = pause_at
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def wait_for_pause(process: subprocess.Popen[str], point: str, timeout_s: float = 180) -> None:
    """Read the build's progress until it says it is held at `point`."""
    assert process.stderr is not None
    deadline = time.monotonic() + timeout_s
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.strip() == f"paused at {point}":
            return
        assert time.monotonic() < deadline, f"never reached {point}: {''.join(seen)[-2000:]}"
    pytest.fail(f"the build ended before {point}: {''.join(seen)[-2000:]}")


def wait_for_staging(repository: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not leftovers(repository):
        assert process.poll() is None, "the build ended before it staged anything"
        assert time.monotonic() < deadline, "the build staged nothing within 120 s"
        time.sleep(0.02)


@pytest.fixture
def repository(classifier_repository: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model_repository"
    shutil.copytree(classifier_repository, copy)
    return copy


@pytest.fixture
def empty_cwd(tmp_path: Path) -> Iterator[Path]:
    """An empty working directory for the build: it must stay empty."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    yield cwd
    assert list(cwd.iterdir()) == [], "a build wrote into the current directory"


def test_build_killed_while_exporting_leaves_the_repository_as_it_was(
    repository: Path, classifier_dir: Path, empty_cwd: Path
) -> None:
    before = snapshot(repository)
    process = start_build(build_command(repository, classifier_dir, "--overwrite"), empty_cwd)
    wait_for_staging(repository, process)
    kill(process)

    check_repository(repository)  # rolls back what the dead build left
    assert snapshot(repository) == before
    assert leftovers(repository) == []


# Moments before the install's renames are committed: the repository must come back as it was.
BEFORE_COMMIT = ["staging", "staged", "journal-written", "half-installed", "installed"]
# Moments at which the repository already holds some of the new build's renames.
MID_INSTALL = {"half-installed", "installed"}


@pytest.mark.parametrize("point", BEFORE_COMMIT)
def test_build_killed_before_commit_is_rolled_back_by_check(
    repository: Path, classifier_dir: Path, empty_cwd: Path, point: str
) -> None:
    before = snapshot(repository)
    process = start_build(
        build_command(repository, classifier_dir, "--overwrite"), empty_cwd, pause_at=point
    )
    wait_for_pause(process, point)
    kill(process)
    if point in MID_INSTALL:  # the kill really did land between renames
        assert snapshot(repository) != before

    check_repository(repository)
    assert snapshot(repository) == before
    assert leftovers(repository) == []


def test_build_killed_after_commit_keeps_the_new_build(
    repository: Path, classifier_dir: Path, empty_cwd: Path
) -> None:
    before = snapshot(repository)
    process = start_build(
        build_command(repository, classifier_dir, "--overwrite"), empty_cwd, pause_at="committed"
    )
    wait_for_pause(process, "committed")
    kill(process)

    check_repository(repository, hashes=True)  # whole and sealed: the new build
    assert snapshot(repository) != before
    assert leftovers(repository) == []


def test_next_build_rolls_back_a_killed_install_and_succeeds(
    repository: Path, classifier_dir: Path, empty_cwd: Path
) -> None:
    command = build_command(repository, classifier_dir, "--overwrite")
    process = start_build(command, empty_cwd, pause_at="half-installed")
    wait_for_pause(process, "half-installed")
    kill(process)

    rebuilt = start_build(command, empty_cwd)
    _, errors = rebuilt.communicate(timeout=300)
    assert rebuilt.returncode == 0, errors[-3000:]
    assert "rolled back the install that a dead build left" in errors
    check_repository(repository, hashes=True)
    assert leftovers(repository) == []


def test_serve_rolls_back_a_killed_install_and_starts(
    repository: Path, classifier_dir: Path, empty_cwd: Path
) -> None:
    before = snapshot(repository)
    command = build_command(repository, classifier_dir, "--overwrite")
    process = start_build(command, empty_cwd, pause_at="half-installed")
    wait_for_pause(process, "half-installed")
    kill(process)

    config = server_config(repository)
    client = TritonizeClient(config.http_url, "http", api_key=config.api_key)
    with LocalServer(config), client:
        assert client.classify(NAME, ["served after a killed build"])[0].label
    assert snapshot(repository) == before
    assert leftovers(repository) == []


def test_a_generation_build_writes_only_its_output(
    tiny_decoder: Callable[[str], Path], tmp_path: Path, empty_cwd: Path
) -> None:
    output = tmp_path / "generation_repository"
    command = [
        sys.executable, "-m", "tritonize.cli", "build", "--task", "generation",
        "--name", "tiny-llama", "--model", str(tiny_decoder("llama-decoder")),
        "--output", str(output), "--max-seq-len", "64", "--max-batch-size", "4",
    ]  # fmt: skip
    build = start_build(command, empty_cwd)
    _, errors = build.communicate(timeout=600)
    assert build.returncode == 0, errors[-3000:]
    assert sorted(p.name for p in output.iterdir()) == ["tiny-llama", "tiny-llama.v1"]
    assert leftovers(output) == []


def test_check_leaves_a_living_build_alone(
    repository: Path, classifier_dir: Path, empty_cwd: Path
) -> None:
    command = build_command(repository, classifier_dir, "--overwrite")
    process = start_build(command, empty_cwd, pause_at="staged")
    wait_for_pause(process, "staged")
    staged = leftovers(repository)
    check_repository(repository)
    assert leftovers(repository) == staged != []  # its owner is alive: not touched
    kill(process)
    check_repository(repository)
    assert leftovers(repository) == []
