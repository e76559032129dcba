"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with an HTTP status."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An answer the gateway gives instead of a result."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind or _KINDS.get(status, "server_error")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


_KINDS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    503: "service_unavailable",
    504: "timeout",
}


def bad_request(param: str, message: str) -> ApiError:
    """The client's mistake, naming the field."""
    return ApiError(400, message, param=param)


def unknown_model(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or is not ready",
        param="model",
        code="model_not_found",
    )


def triton_unreachable(url: str, detail: str) -> ApiError:
    return ApiError(503, f"Triton at {url} is unreachable: {detail}", code="triton_unavailable")
