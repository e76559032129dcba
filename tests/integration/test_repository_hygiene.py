"""Serving leaves the model repository exactly as built: no `__pycache__`, nothing new."""

from __future__ import annotations

import shutil
from pathlib import Path

from tritonize.client import TritonizeClient
from tritonize.server import LocalServer

from .conftest import CLASSIFIER, server_config


def test_serving_writes_no_bytecode_into_the_repository(
    classifier_repository: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "model_repository"
    shutil.copytree(classifier_repository, repository)
    files_before = sorted(p.relative_to(repository) for p in repository.rglob("*"))
    config = server_config(repository)
    with LocalServer(config) as server:
        with TritonizeClient(config.http_url, "http", api_key=config.api_key) as client:
            assert client.classify(CLASSIFIER, ["every step model has run"])[0].label
        server.stop()
    assert sorted(repository.rglob("__pycache__")) == []
    assert sorted(p.relative_to(repository) for p in repository.rglob("*")) == files_before
    assert config.log_path.parent == tmp_path and config.log_path.exists()  # not in /tmp
