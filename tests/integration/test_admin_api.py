"""Every API that is not inference, health, metadata or model config needs the key.

Each restricted category is tried without a key and with a wrong key, over HTTP and gRPC; the
server must refuse and go on serving. The open ones must stay open (clients need them).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tritonize.api_key import API_KEY_HEADER
from tritonize.client import TritonizeClient
from tritonize.server import LocalServer
from tritonize.server.local import RESTRICTED_APIS

from .conftest import EMBEDDER

# One call per restricted category: (HTTP method, path, body), and the gRPC client method.
HTTP_CALLS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "shared-memory": ("POST", "/v2/systemsharedmemory/region/intruder/register",
                      {"key": "/intruder", "offset": 0, "byte_size": 64}),
    "model-repository": ("POST", "/v2/repository/index", {}),
    "statistics": ("GET", "/v2/models/stats", None),
    "trace": ("GET", "/v2/trace/setting", None),
    "logging": ("POST", "/v2/logging", {"log_verbose_level": 3}),
}  # fmt: skip
GRPC_CALLS: dict[str, Callable[[grpcclient.InferenceServerClient, dict[str, str]], Any]] = {
    "shared-memory": lambda c, h: c.register_system_shared_memory(
        "intruder", "/intruder", 64, headers=h
    ),
    "model-repository": lambda c, h: c.get_model_repository_index(headers=h),
    "statistics": lambda c, h: c.get_inference_statistics(headers=h),
    "trace": lambda c, h: c.get_trace_settings(headers=h),
    "logging": lambda c, h: c.update_log_settings({"log_verbose_level": 3}, headers=h),
}
NO_KEY: dict[str, str] = {}
WRONG_KEY = {API_KEY_HEADER: "not-the-key"}


def http_call(
    url: str, method: str, path: str, body: Any, headers: dict[str, str]
) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{url}{path}", data=data, method=method,
                                     headers=headers)  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def grpc_headers(headers: dict[str, str]) -> dict[str, str]:
    return {f"triton-grpc-protocol-{k}": v for k, v in headers.items()}


def test_the_restricted_categories_are_the_admin_ones() -> None:
    assert set(RESTRICTED_APIS) == set(HTTP_CALLS) == set(GRPC_CALLS)


@pytest.mark.parametrize("headers", [NO_KEY, WRONG_KEY], ids=["no-key", "wrong-key"])
@pytest.mark.parametrize("category", sorted(HTTP_CALLS))
def test_http_refuses_admin_calls_without_the_key(
    server: LocalServer, category: str, headers: dict[str, str]
) -> None:
    method, path, body = HTTP_CALLS[category]
    status, text = http_call(server.config.http_url, method, path, body, headers)
    assert (status, json.loads(text)["error"]) == (
        403,
        f"This API is restricted, expecting header '{API_KEY_HEADER}'",
    )
    assert server.is_ready()


@pytest.mark.parametrize("headers", [NO_KEY, WRONG_KEY], ids=["no-key", "wrong-key"])
@pytest.mark.parametrize("category", sorted(GRPC_CALLS))
def test_grpc_refuses_admin_calls_without_the_key(
    server: LocalServer, category: str, headers: dict[str, str]
) -> None:
    with grpcclient.InferenceServerClient(server.config.grpc_url) as client:
        with pytest.raises(InferenceServerException) as refused:
            GRPC_CALLS[category](client, grpc_headers(headers))
        assert "This protocol is restricted, expecting header" in str(refused.value)
        assert client.is_server_ready()


def test_with_the_key_admin_calls_work_on_both_protocols(server: LocalServer) -> None:
    key = {API_KEY_HEADER: server.config.api_key}
    for category in ("model-repository", "statistics", "trace"):
        method, path, body = HTTP_CALLS[category]
        assert http_call(server.config.http_url, method, path, body, key)[0] == 200, category
    with grpcclient.InferenceServerClient(server.config.grpc_url) as client:
        assert client.get_model_repository_index(headers=grpc_headers(key)) is not None
        assert client.get_inference_statistics(EMBEDDER, headers=grpc_headers(key)) is not None
        assert client.get_log_settings(headers=grpc_headers(key)) is not None


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inference_health_metadata_and_config_stay_open(server: LocalServer, protocol: str) -> None:
    url = server.config.http_url if protocol == "http" else server.config.grpc_url
    with TritonizeClient(url, protocol) as anonymous:  # no key at all
        assert anonymous.is_server_ready()
        assert anonymous.metadata(EMBEDDER)["name"] == EMBEDDER
        assert anonymous.config(EMBEDDER)["name"] == EMBEDDER
        assert anonymous.embed(EMBEDDER, ["open door"]).shape[0] == 1
