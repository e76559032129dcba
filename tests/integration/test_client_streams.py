"""The client's gRPC stream ends when the caller is done with it, whatever the server does."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator

import pytest

from helpers import FIXTURES
from tritonize.client import TritonizeClient
from tritonize.errors import InferenceError
from tritonize.server import LocalServer

from .conftest import server_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mute_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    repository = tmp_path_factory.mktemp("mute") / "repository"
    shutil.copytree(FIXTURES / "mute", repository / "mute")
    server = LocalServer(server_config(repository))
    server.start(timeout_s=120)
    yield server
    server.stop()


def test_a_stream_the_server_never_answers_times_out(mute_server: LocalServer) -> None:
    """Before: the timeout raised, then `stop_stream()` waited for the server's final response."""
    outcome: list[str] = []

    def generate() -> None:
        with TritonizeClient(mute_server.config.grpc_url, "grpc", timeout_s=2) as client:
            try:
                "".join(client.generate("mute", "hello", max_tokens=4, stream=True))
                outcome.append("answered")
            except InferenceError as exc:
                outcome.append(str(exc))

    started = time.monotonic()
    caller = threading.Thread(target=generate, daemon=True)
    caller.start()
    caller.join(15)
    took = time.monotonic() - started
    assert not caller.is_alive(), "the client waited on a stream the server never answered"
    assert outcome and "no response within 2 s" in outcome[0]
    assert took < 10, f"the client took {took:.1f} s to give up after a 2 s timeout"
