"""High-level calls over tritonclient HTTP and gRPC (binary tensors), one API for both.

>>> with TritonizeClient("127.0.0.1:8000") as client:
...     vectors = client.embed("minilm", ["first sentence", "second sentence"])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException

from tritonize.errors import InferenceError
from tritonize.server.local import API_KEY_HEADER
from tritonize.triton_models.common import EMBEDDING, LABEL, PROBABILITIES, SCORE, TEXT, TRUNCATED


class Protocol(StrEnum):
    HTTP = "http"
    GRPC = "grpc"


DEFAULT_URLS = {Protocol.HTTP: "127.0.0.1:8000", Protocol.GRPC: "127.0.0.1:8001"}


@dataclass(frozen=True)
class Classification:
    label: str
    score: float
    probabilities: np.ndarray
    truncated: bool


class TritonizeClient:
    """A Triton client for tritonize ensembles; errors become `InferenceError`."""

    def __init__(
        self,
        url: str | None = None,
        protocol: Protocol | str = Protocol.HTTP,
        timeout_s: float = 60.0,
        api_key: str | None = None,
    ) -> None:
        self.protocol = Protocol(protocol)
        self.url = url or DEFAULT_URLS[self.protocol]
        self.api_key = api_key
        if self.protocol is Protocol.HTTP:
            import tritonclient.http as module

            kwargs: dict[str, Any] = {"network_timeout": timeout_s, "connection_timeout": timeout_s}
        else:
            import tritonclient.grpc as module  # type: ignore[no-redef]

            kwargs = {}
        self._module: Any = module
        self._timeout_s = timeout_s
        self._client: Any = module.InferenceServerClient(self.url, **kwargs)
        self._outputs: dict[str, list[str]] = {}

    # -- inference ---------------------------------------------------------------------------
    def infer(self, model: str, texts: Sequence[str | bytes]) -> dict[str, np.ndarray]:
        """Send `texts` as TEXT [B, 1]; return every output of `model` by name."""
        if not texts:
            raise InferenceError("`texts` is empty: expected at least one text")
        data = np.array([[t.encode() if isinstance(t, str) else t] for t in texts], dtype=object)
        request = self._module.InferInput(TEXT, list(data.shape), "BYTES")
        request.set_data_from_numpy(data)
        outputs = [self._requested_output(name) for name in self.output_names(model)]
        result = self._call(
            model, "infer", model, [request], outputs=outputs, **self._infer_timeout()
        )
        return {name: result.as_numpy(name) for name in self.output_names(model)}

    def embed(self, model: str, texts: Sequence[str | bytes]) -> np.ndarray:
        """L2-normalised embeddings, FP32 [B, hidden]."""
        return self.infer(model, texts)[EMBEDDING]

    def classify(self, model: str, texts: Sequence[str | bytes]) -> list[Classification]:
        out = self.infer(model, texts)
        return [
            Classification(
                label=out[LABEL][i, 0].decode(),
                score=float(out[SCORE][i, 0]),
                probabilities=out[PROBABILITIES][i],
                truncated=bool(out[TRUNCATED][i, 0]),
            )
            for i in range(len(texts))
        ]

    # -- server and models -------------------------------------------------------------------
    def is_server_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready())
        except Exception:  # unreachable counts as not ready
            return False

    def is_model_ready(self, model: str) -> bool:
        try:
            return bool(self._client.is_model_ready(model))
        except Exception:  # unreachable counts as not ready
            return False

    def metadata(self, model: str) -> dict[str, Any]:
        """Model metadata (name, versions, inputs, outputs) as a dict."""
        extra = {"as_json": True} if self.protocol is Protocol.GRPC else {}
        return dict(self._call(model, "get_model_metadata", model, **extra))

    def config(self, model: str) -> dict[str, Any]:
        extra = {"as_json": True} if self.protocol is Protocol.GRPC else {}
        config = self._call(model, "get_model_config", model, **extra)
        return dict(config.get("config", config))

    def output_names(self, model: str) -> list[str]:
        if model not in self._outputs:
            self._outputs[model] = [o["name"] for o in self.metadata(model)["outputs"]]
        return self._outputs[model]

    def load_model(self, model: str) -> None:
        """Model-repository API: needs the server's API key."""
        self._call(model, "load_model", model, headers=self._key_headers())

    def unload_model(self, model: str) -> None:
        self._call(model, "unload_model", model, headers=self._key_headers())

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TritonizeClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers -----------------------------------------------------------------------------
    def _requested_output(self, name: str) -> Any:
        if self.protocol is Protocol.HTTP:
            return self._module.InferRequestedOutput(name, binary_data=True)
        return self._module.InferRequestedOutput(name)

    def _infer_timeout(self) -> dict[str, Any]:
        if self.protocol is Protocol.GRPC:
            return {"client_timeout": self._timeout_s}
        return {}

    def _key_headers(self) -> dict[str, str] | None:
        if self.api_key is None:
            return None
        if self.protocol is Protocol.GRPC:
            return {f"triton-grpc-protocol-{API_KEY_HEADER}": self.api_key}
        return {API_KEY_HEADER: self.api_key}

    def _call(self, model: str, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(*args, **kwargs)
        except InferenceServerException as exc:
            raise InferenceError(f"model `{model}` at {self.url}: {exc.message()}") from exc
        except (ConnectionError, OSError) as exc:
            raise InferenceError(
                f"cannot reach Triton at {self.url} ({self.protocol.value}): {exc}"
            ) from exc
