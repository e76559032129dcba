"""OpenAI's response and chunk objects, as plain dicts."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import numpy as np


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def finish_reason(
    input_tokens: int, output_tokens: int, max_tokens: int, context_window: int
) -> str:
    """ "length" when the completion used all of max_tokens or filled the context window."""
    if output_tokens >= max_tokens or input_tokens + output_tokens >= context_window > 0:
        return "length"
    return "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    chat: bool, ident: str, model: str, texts: list[str], reasons: list[str], counts: dict[str, int]
) -> dict[str, Any]:
    """A whole (not streamed) completion or chat completion with one choice per text."""
    if chat:
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text},
             "finish_reason": reason, "logprobs": None}
            for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
        ]  # fmt: skip
    else:
        choices = [
            {"index": i, "text": text, "finish_reason": reason, "logprobs": None}
            for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
        ]
    return {
        "id": ident,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": counts,
    }


def chunk(
    chat: bool, ident: str, model: str, index: int | None, text: str | None,
    reason: str | None = None, counts: dict[str, int] | None = None, first: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One streamed chunk: a choice's text (`index`), or (index None) the usage-only chunk."""
    choices: list[dict[str, Any]] = []
    if index is not None and chat:
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        choices = [{"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}]
    elif index is not None:
        choices = [{"index": index, "text": text or "", "finish_reason": reason, "logprobs": None}]
    return {
        "id": ident,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": counts,
    }


class ChunkWriter:
    """The chunks of one stream as server-sent events, equal to `event(chunk(...))` with one
    `created` for the whole stream (as OpenAI sends it).

    A stream's chunks share their id, object, created and model: those are encoded once, and
    each token only costs encoding its text, not a whole object."""

    def __init__(self, chat: bool, ident: str, model: str) -> None:
        self.chat = chat
        self._empty = chunk(chat, ident, model, None, None)
        shared = {k: v for k, v in self._empty.items() if k not in ("choices", "usage")}
        # chunk() puts "choices" and "usage" last: the head is the object up to them.
        head = json.dumps(shared, ensure_ascii=False).removesuffix("}")
        self._head = f'data: {head}, "choices": ['.encode()

    def text(self, index: int, text: str, reason: str | None, first: bool = False) -> bytes:
        content = json.dumps(text, ensure_ascii=False)
        finish = "null" if reason is None else json.dumps(reason)
        if self.chat:
            role = '"role": "assistant", ' if first else ""
            body = f'"delta": {{{role}"content": {content}}}'
        else:
            body = f'"text": {content}'
        choice = f'{{"index": {index}, {body}, "finish_reason": {finish}, "logprobs": null}}'
        return self._head + choice.encode() + b'], "usage": null}\n\n'

    def usage(self, counts: dict[str, int]) -> bytes:
        """The last chunk, with usage and no choices (`stream_options.include_usage`)."""
        return event(dict(self._empty, usage=counts))


def event(data: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


def embeddings(model: str, vectors: np.ndarray, encoding: str) -> dict[str, Any]:
    """The embeddings list; base64 is the little-endian float32 bytes, as OpenAI sends them."""
    data = []
    for index, vector in enumerate(vectors):
        row = np.ascontiguousarray(vector, dtype="<f4")
        value: Any = (
            base64.b64encode(row.tobytes()).decode() if encoding == "base64" else (row.tolist())
        )
        data.append({"object": "embedding", "index": index, "embedding": value})
    # The ensembles report no token counts: usage is zero rather than a guess.
    return {"object": "list", "data": data, "model": model, "usage": usage(0, 0)}


def model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "tritonize"}
