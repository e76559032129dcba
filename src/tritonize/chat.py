"""Chat templates rendered as transformers' `apply_chat_template(..., tokenize=False)` does.

A generation model built from a checkpoint with a chat template carries it in its config as
string parameter `chat_template`: JSON of {"template": Jinja source, "bos_token": ...,
"eos_token": ..., and the checkpoint's other named special tokens}. This module needs only
jinja2, so a gateway can render prompts without torch or transformers.

The Jinja environment copies transformers 5's (`utils/chat_template_utils.py`): a sandbox,
`trim_blocks`/`lstrip_blocks`, loop controls, `raise_exception`, a `tojson` that does not
escape HTML, `strftime_now`, and the `{% generation %}` tag (rendered as its body).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tritonize.errors import TritonizeError

PARAMETER = "chat_template"  # the config.pbtxt string parameter holding the JSON
TEMPLATE_KEY = "template"
# Names a message's reasoning may come under; transformers fills the first two from any.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(TritonizeError):
    """A chat template raised or failed to compile, or the messages are malformed."""


def render_chat(
    template: Mapping[str, Any], messages: list[dict[str, Any]], add_generation_prompt: bool = True
) -> str:
    """The prompt `template` makes of `messages`; every string entry of `template` other than
    the source itself (bos_token, eos_token, ...) is a template variable, as transformers
    passes the tokenizer's special tokens."""
    source = template.get(TEMPLATE_KEY) if isinstance(template, Mapping) else None
    if not isinstance(source, str) or not source:
        raise ChatTemplateError(
            f"chat template: `{TEMPLATE_KEY}` must be a non-empty Jinja string, got "
            f"{type(source).__name__}"
        )
    variables = {k: v for k, v in template.items() if k != TEMPLATE_KEY and isinstance(v, str)}
    compiled = _compile(source)
    try:
        return compiled.render(
            messages=_checked_messages(messages),
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except ChatTemplateError:
        raise
    except Exception as exc:  # the template is code from the checkpoint: it may raise anything
        raise ChatTemplateError(f"the chat template refused the messages: {exc}") from exc


def template_from_parameter(text: str) -> dict[str, Any]:
    """The template dict stored in a config's `chat_template` parameter."""
    try:
        template = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ChatTemplateError(f"`{PARAMETER}` parameter is not JSON: {exc}") from exc
    if not isinstance(template, dict) or not isinstance(template.get(TEMPLATE_KEY), str):
        raise ChatTemplateError(
            f"`{PARAMETER}` parameter must be a JSON object with a string `{TEMPLATE_KEY}`"
        )
    return template


def _checked_messages(messages: Any) -> list[dict[str, Any]]:
    """Fresh copies of `messages` as transformers hands them to the template: keys whose value
    is None dropped, reasoning aliased under `thinking` and `reasoning_content`."""
    if not isinstance(messages, list) or not messages:
        raise ChatTemplateError("`messages` must be a non-empty list of {role, content} objects")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ChatTemplateError(
                f"`messages[{index}]` must be an object with string `role` and `content`, "
                f"got {type(message).__name__}"
            )
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                got = "nothing" if message.get(key) is None else type(message[key]).__name__
                raise ChatTemplateError(f"`messages[{index}].{key}` must be a string, got {got}")
        plain = {key: value for key, value in message.items() if value is not None}
        checked.append(_alias_reasoning(plain))
    return checked


def _alias_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


@lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    try:
        return _environment().from_string(source)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the chat template does not compile: {exc}") from exc


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    environment.globals["dict"] = _TemplateDict()
    environment.globals["namespace"] = _TemplateNamespace
    return environment


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the chat template refused the messages: {message}")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters, which changes the prompt.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` without attribute access to the type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """A namespace that refuses underscore-prefixed attributes (CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        # Jinja's signature trick: `namespace(self=...)` still works
        self, args = args[0], args[1:]
        attributes = dict(*args, **kwargs)
        for name in attributes:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attributes)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes, got {name!r}"
            )


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks;
    a prompt only needs its body."""

    tags = {"generation"}  # noqa: RUF012 (Jinja declares it a set)

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_body")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()
