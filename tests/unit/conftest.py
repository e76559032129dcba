"""Fixtures shared by the unit tests of builds, rollouts and canaries."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tritonize.repository.writer import build_repository
from tritonize.spec import BuildSpec

NAME = "sentiment"


@pytest.fixture(scope="module")
def two_builds(
    tmp_path_factory: pytest.TempPathFactory, classifier_repository: Path, classifier_dir: Path
) -> Path:
    """The tiny classifier's build 1 (serving) and build 2 beside it (read-only)."""
    repository = tmp_path_factory.mktemp("builds") / "repository"
    shutil.copytree(classifier_repository, repository, symlinks=True)
    build_repository(
        BuildSpec(name=NAME, task="classification", model=classifier_dir, output=repository,
                  max_batch_size=8, max_seq_len=64, version=2)
    )  # fmt: skip
    return repository


@pytest.fixture
def repository(two_builds: Path, tmp_path: Path) -> Path:
    """A copy of `two_builds` to change."""
    copy = tmp_path / "repository"
    shutil.copytree(two_builds, copy, symlinks=True)
    return copy
