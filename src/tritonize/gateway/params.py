"""OpenAI request bodies, checked and turned into what a tritonize model reads.

Every refusal is a 400 naming the field. Parameters that the models cannot honour are refused
when they ask for something (a non-zero penalty, log probabilities, tools) and accepted when
they hold their neutral value, so that clients sending defaults explicitly still work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tritonize.triton_models.generation import MAX_STOP_WORD_CHARS, MAX_STOP_WORDS

from .errors import ApiError, bad_request

UINT64_MAX = 2**64 - 1

# Fields read from both generation endpoints.
_GENERATION_FIELDS = {
    "model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "top_k", "seed",
    "stop", "n", "user",
}  # fmt: skip
# Accepted only at their neutral value: field -> the values that ask for nothing.
_NEUTRAL_COMPLETION: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logit_bias": ({},),
    "logprobs": (0,),
    "suffix": ("",),
}
_NEUTRAL_CHAT: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logit_bias": ({},),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "tools": ([],),
    "tool_choice": ("none",),
    "parallel_tool_calls": (False, True),
    "response_format": ({"type": "text"},),
    "store": (False,),
}
_COMPLETION_ONLY = {"prompt", "echo", "best_of"}
_CHAT_ONLY = {"messages", "max_completion_tokens"}
_EMBEDDING_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}


@dataclass(frozen=True)
class GenerationRequest:
    """One /v1/completions or /v1/chat/completions request, checked."""

    model: str
    prompt: str | None  # completions: the prompt; chat: rendered later from `messages`
    messages: list[Any] | None
    max_tokens: int | None  # None: as many as the context window leaves
    max_tokens_field: str  # the name the client used, for error messages
    temperature: float | None
    top_p: float | None
    top_k: int | None
    seed: int | None
    stop: tuple[str, ...]
    n: int
    stream: bool
    include_usage: bool
    echo: bool

    def fields(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        """The generator's request tensors (TensorRT-LLM's names) for `prompt`."""
        values: dict[str, Any] = {"text_input": prompt, "max_tokens": max_tokens, "stream": True}
        optional = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
        }
        values.update({name: value for name, value in optional.items() if value is not None})
        if self.stop:
            values["stop_words"] = list(self.stop)
        if self.echo:
            values["exclude_input_in_output"] = False
        return values


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    texts: list[str]
    encoding_format: str  # "float" or "base64"
    dimensions: int | None


def parse_generation(body: Any, chat: bool) -> GenerationRequest:
    """A completions (`chat=False`) or chat completions body, checked field by field."""
    body = _object(body)
    neutral = _NEUTRAL_CHAT if chat else _NEUTRAL_COMPLETION
    own = _CHAT_ONLY if chat else _COMPLETION_ONLY
    _refuse_unknown(body, _GENERATION_FIELDS | own | set(neutral))
    _refuse_non_neutral(body, neutral)
    model = _model(body)
    if chat:
        prompt, messages = None, _messages(body.get("messages"))
    else:
        prompt, messages = _prompt(body.get("prompt")), None
    max_field = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else ("max_tokens")
    )
    n = _integer(body, "n", 1, None) or 1
    best_of = _integer(body, "best_of", 1, None)
    if best_of is not None and best_of != n:
        raise bad_request("best_of", f"`best_of` = {best_of}: only `best_of` equal to `n` ({n})")
    stream = _boolean(body, "stream") or False
    return GenerationRequest(
        model=model,
        prompt=prompt,
        messages=messages,
        max_tokens=_integer(body, max_field, 1, None),
        max_tokens_field=max_field,
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_top_p(body),
        top_k=_integer(body, "top_k", 0, None),
        seed=_integer(body, "seed", 0, UINT64_MAX),
        stop=_stop(body.get("stop")),
        n=n,
        stream=stream,
        include_usage=_include_usage(body.get("stream_options"), stream),
        echo=_boolean(body, "echo") or False,
    )


def parse_embedding(body: Any) -> EmbeddingRequest:
    body = _object(body)
    _refuse_unknown(body, _EMBEDDING_FIELDS)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise bad_request(
            "encoding_format", f"`encoding_format` = {encoding!r}: expected 'float' or 'base64'"
        )
    return EmbeddingRequest(
        model=_model(body),
        texts=_texts(body.get("input")),
        encoding_format=encoding,
        dimensions=_integer(body, "dimensions", 1, None),
    )


# -- fields ------------------------------------------------------------------------------------


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _refuse_unknown(body: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise bad_request(
            unknown[0],
            f"unknown field(s) {', '.join(f'`{name}`' for name in unknown)}: "
            f"allowed are {', '.join(sorted(known))}",
        )


def _refuse_non_neutral(body: dict[str, Any], neutral: dict[str, tuple[Any, ...]]) -> None:
    for name, values in neutral.items():
        value = body.get(name)
        if value is not None and not any(_same(value, v) for v in values):
            allowed = " or ".join(repr(v) for v in values)
            raise bad_request(
                name, f"`{name}` = {value!r} is not supported by this server: send {allowed}"
            )


def _same(value: Any, neutral: Any) -> bool:
    """Equal, without counting True as 1 or False as 0."""
    if isinstance(value, bool) or isinstance(neutral, bool):
        return type(value) is type(neutral) and value == neutral
    return bool(value == neutral)


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model", "`model` is missing: expected the name of a served model")
    return model


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, list):
        raise bad_request(
            "prompt", f"`prompt` holds {len(value)} prompts: send one per request (or use `n`)"
        )
    if not isinstance(value, str):
        raise bad_request("prompt", "`prompt` must be a string (token ids are not accepted)")
    return value


def _messages(value: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise bad_request("messages", "`messages` must be a non-empty list of {role, content}")
    return value


def _texts(value: Any) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise bad_request("input", "`input` must be a string or a non-empty list of strings")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise bad_request(
                "input", f"`input[{index}]` is {type(text).__name__}: expected a string "
                "(token ids are not accepted)"
            )  # fmt: skip
        if not text.strip():
            raise bad_request("input", f"`input[{index}]` is empty: expected a text")
    return texts


def _stop(value: Any) -> tuple[str, ...]:
    words = [value] if isinstance(value, str) else value
    if value is None:
        return ()
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise bad_request("stop", "`stop` must be a string or a list of strings")
    if len(words) > MAX_STOP_WORDS:
        raise bad_request("stop", f"`stop` has {len(words)} words: at most {MAX_STOP_WORDS}")
    for word in words:
        if len(word) > MAX_STOP_WORD_CHARS:
            raise bad_request(
                "stop", f"a `stop` word is {len(word)} characters: at most {MAX_STOP_WORD_CHARS}"
            )
    return tuple(words)


def _include_usage(value: Any, stream: bool) -> bool:
    if value is None:
        return False
    if not stream:
        raise bad_request("stream_options", "`stream_options` is only allowed with `stream`")
    if not isinstance(value, dict) or set(value) - {"include_usage"}:
        raise bad_request("stream_options", "`stream_options` takes only `include_usage`")
    include = value.get("include_usage", False)
    if not isinstance(include, bool):
        raise bad_request("stream_options", "`stream_options.include_usage` must be a boolean")
    return include


def _top_p(body: dict[str, Any]) -> float | None:
    value = _number(body, "top_p", 0.0, 1.0)
    if value == 0:
        raise bad_request("top_p", "`top_p` = 0: expected a value in (0, 1]")
    return value


def _boolean(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad_request(name, f"`{name}` = {value!r}: expected true or false")
    return value


def _integer(body: dict[str, Any], name: str, low: int, high: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(name, f"`{name}` = {value!r}: expected an integer")
    if value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise bad_request(name, f"`{name}` = {value}: expected {allowed}")
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(name, f"`{name}` = {value!r}: expected a number")
    if not low <= value <= high:
        raise bad_request(name, f"`{name}` = {value}: expected {low:g}..{high:g}")
    return float(value)
