"""Triton's own answers over HTTP: health, the repository index, configs and statistics."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any

from tritonize.api_key import API_KEY_HEADER
from tritonize.client import host_port
from tritonize.errors import TritonizeError


class Unreachable(TritonizeError):
    """Nothing answered at the address (refused, timed out, not HTTP)."""


class Refused(TritonizeError):
    """Triton answered with an HTTP error."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class TritonHttp:
    """Plain JSON calls to one Triton HTTP endpoint; the key goes with the restricted ones."""

    url: str
    api_key: str | None = None
    timeout_s: float = 10.0

    @property
    def base(self) -> str:
        return f"http://{host_port(self.url)}"

    def get(self, path: str) -> Any:
        return self._call(urllib.request.Request(f"{self.base}{path}"))

    def post(self, path: str, keyed: bool = False) -> Any:
        headers = {API_KEY_HEADER: self.api_key} if keyed and self.api_key else {}
        request = urllib.request.Request(f"{self.base}{path}", data=b"{}", headers=headers)
        return self._call(request)

    def get_keyed(self, path: str) -> Any:
        headers = {API_KEY_HEADER: self.api_key} if self.api_key else {}
        return self._call(urllib.request.Request(f"{self.base}{path}", headers=headers))

    def status(self, path: str) -> int:
        """The HTTP status of a GET (health endpoints answer with an empty body)."""
        try:
            self._call(urllib.request.Request(f"{self.base}{path}"))
        except Refused as exc:
            return exc.status
        return 200

    def _call(self, request: urllib.request.Request) -> Any:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise Refused(exc.code, _error_text(exc)) from None
        except (OSError, HTTPException) as exc:
            raise Unreachable(f"{request.full_url}: {exc}") from None
        try:
            return json.loads(body) if body.strip() else None
        except ValueError as exc:
            raise Unreachable(f"{request.full_url} answered, but not Triton's JSON") from exc


def _error_text(error: urllib.error.HTTPError) -> str:
    body = error.read()
    try:
        return str(json.loads(body).get("error", error.reason))
    except (ValueError, AttributeError):
        return f"HTTP {error.code} {error.reason}"


def repository_index(http: TritonHttp) -> list[dict[str, str]]:
    """Every model in the repository with its state and, when unavailable, the reason."""
    index = http.post("/v2/repository/index", keyed=True)
    return list(index or [])


def model_config(http: TritonHttp, model: str) -> dict[str, Any]:
    return dict(http.get(f"/v2/models/{model}/config") or {})


def statistics(http: TritonHttp) -> dict[str, Any]:
    return dict(http.get_keyed("/v2/models/stats") or {})


def is_model_ready(http: TritonHttp, model: str) -> bool:
    return http.status(f"/v2/models/{model}/ready") == 200


def step_models(config: dict[str, Any]) -> list[str]:
    """The models an ensemble's config calls."""
    steps = config.get("ensemble_scheduling", {}).get("step", [])
    return [step["model_name"] for step in steps]


def instance_count(config: dict[str, Any]) -> int:
    return sum(int(group.get("count", 1)) for group in config.get("instance_group", []))


def queue_bound(config: dict[str, Any]) -> int:
    """The model's max_queue_size (0: unbounded)."""
    policy = config.get("dynamic_batching", {}).get("default_queue_policy", {})
    return int(policy.get("max_queue_size", 0) or 0)
