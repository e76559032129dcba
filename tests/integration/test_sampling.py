"""Request sampling on a real tritonserver: when asked, each model's accepted requests land as
JSON lines of their texts; refused ones do not; when not asked, no text is kept anywhere, even
with the variables set in the environment `serve` was started from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tritonize.client import TritonizeClient
from tritonize.errors import InferenceError
from tritonize.server import LocalServer
from tritonize.triton_models.sampling import Sampling

from .conftest import CLASSIFIER, EMBEDDER, GENERATOR, server_config


def traffic(server: LocalServer, marker: str) -> None:
    config = server.config
    with TritonizeClient(config.http_url, "http", api_key=config.api_key) as client:
        client.embed(EMBEDDER, [f"{marker} embed one", f"{marker} embed two"])
        client.classify(CLASSIFIER, [f"{marker} classify"])
        "".join(client.generate(GENERATOR, f"{marker} prompt", max_tokens=4))
        with pytest.raises(InferenceError, match="is empty"):
            client.embed(EMBEDDER, [""])


def records(directory: Path) -> dict[str, list[dict]]:
    """Each model's sampled requests, by the model named in the record."""
    found: dict[str, list[dict]] = {}
    for path in directory.glob("*.jsonl*"):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            found.setdefault(record["model"], []).append(record)
    return found


@pytest.fixture(scope="module")
def sampling_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    samples = tmp_path_factory.mktemp("sampling") / "samples"
    with LocalServer(server_config(repository, sampling=Sampling(1.0, samples))) as server:
        traffic(server, "SAMPLED-7f3a")
    yield samples  # the server has stopped: its files are closed


def test_each_model_keeps_its_accepted_requests(sampling_server: Path) -> None:
    kept = records(sampling_server)
    assert [r["inputs"] for r in kept[EMBEDDER]] == [
        {"TEXT": ["SAMPLED-7f3a embed one", "SAMPLED-7f3a embed two"]}
    ]  # the refused empty text is not among them
    assert [r["inputs"] for r in kept[CLASSIFIER]] == [{"TEXT": ["SAMPLED-7f3a classify"]}]
    assert [r["inputs"] for r in kept[GENERATOR]] == [{"text_input": ["SAMPLED-7f3a prompt"]}]
    assert sampling_server.stat().st_mode & 0o777 == 0o700


def test_nothing_is_kept_when_sampling_is_off(
    repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = tmp_path / "samples"
    for variable, value in Sampling(1.0, samples).environment().items():
        monkeypatch.setenv(variable, value)  # inherited, but not asked for by this server
    config = server_config(repository)
    with LocalServer(config) as server:
        traffic(server, "UNSAMPLED-91c2")
    assert not samples.exists()
    assert "UNSAMPLED-91c2" not in config.log_path.read_text(errors="replace")
