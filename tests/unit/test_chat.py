"""Chat prompts rendered by tritonize.chat equal transformers' `apply_chat_template` for real
template styles, and a generation build stores the checkpoint's template (or none)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import pytest

from tritonize.chat import ChatTemplateError, render_chat, template_from_parameter
from tritonize.repository.configs import from_text
from tritonize.spec import BuildSpec, Task

BOS, EOS = "<s>", "</s>"

# Real-world template styles, as their checkpoints ship them (one line or several).
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
# Zephyr's template spans lines: trim_blocks and lstrip_blocks decide its whitespace.
ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""
# Vicuna style, hand-indented: lstrip_blocks removes the indentation before each block tag.
VICUNA = """{% if messages[0]['role'] == 'system' %}
    {% set system = messages[0]['content'] %}
    {% set turns = messages[1:] %}
{% else %}
    {% set system = 'A chat between a curious user and an assistant.' %}
    {% set turns = messages %}
{% endif %}
{{ system }}

{% for message in turns %}
    {% if message['role'] == 'user' %}
USER: {{ message['content'] }}
    {% elif message['role'] == 'assistant' %}
ASSISTANT: {{ message['content'] }}{{ eos_token }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
ASSISTANT:
{% endif %}"""
# Mistral-instruct style: roles must alternate, a system turn is refused.
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)
# Llama-3.1 style machinery: namespace, tojson, loop controls, strftime_now, `tools`,
# `{% generation %}`, reasoning fields and whitespace control.
TOOLING = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%Y") %}
{%- endif %}
{%- set ns = namespace(system='', turns=0) %}
{%- for message in messages %}
    {%- if message.role == 'system' %}
        {%- set ns.system = message.content %}
        {%- continue %}
    {%- endif %}
    {%- set ns.turns = ns.turns + 1 %}
    {%- if ns.turns > 2 %}{% break %}{% endif %}
<|{{ message.role }}|>{{ {'text': message.content, 'n': ns.turns} | tojson }}
    {%- if message.thinking is defined %}<think>{{ message.thinking }}</think>{% endif %}
    {%- if message.role == 'assistant' %}
        {%- generation %}{{ eos_token }}{% endgeneration %}
    {%- endif %}
{%- endfor %}
{{- '\nyear=' + date_string + ' system=' + ns.system | tojson }}
{{- ' tools=' + (tools is none) | string }}
{%- if add_generation_prompt %}<|assistant|>{% endif %}"""
TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "zephyr": ZEPHYR, "vicuna": VICUNA,
             "mistral": MISTRAL, "tooling": TOOLING}  # fmt: skip

UNICODE = "Grüße aus 東京 🌸 — naïve «quotes» \"double\" 'single' <b>&amp;</b> \\n مرحبا"
CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "one user turn": [{"role": "user", "content": "Hello!"}],
    "system": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    "multi-turn": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "  Tell me a joke.  "},
    ],
    "unicode": [
        {"role": "system", "content": UNICODE},
        {"role": "user", "content": UNICODE},
        {"role": "assistant", "content": "✓ " + UNICODE},
        {"role": "user", "content": "encore\n\ttab"},
    ],
    "ends on an assistant turn": [
        {"role": "user", "content": "Finish this:"},
        {"role": "assistant", "content": "Once upon a time", "name": None},
    ],
    "assistant reasoning": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning": "two and two"},
        {"role": "user", "content": "3+3?"},
    ],
}


def reference(template: str, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    """transformers' rendering with a real fast tokenizer whose bos/eos are BOS/EOS."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {BOS: 0, EOS: 1, "<unk>": 2}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
        bos_token=BOS, eos_token=EOS, unk_token="<unk>",
    )  # fmt: skip
    tokenizer.chat_template = template
    prompt = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert isinstance(prompt, str)
    return prompt


def stored(template: str) -> dict[str, Any]:
    return {"template": template, "bos_token": BOS, "eos_token": EOS, "unk_token": "<unk>"}


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("style", TEMPLATES)
def test_rendering_equals_transformers(
    style: str, conversation: str, add_generation_prompt: bool
) -> None:
    template, messages = TEMPLATES[style], CONVERSATIONS[conversation]
    try:
        expected = reference(template, messages, add_generation_prompt)
    except jinja2.TemplateError as refused:  # the template itself refuses this conversation
        with pytest.raises(ChatTemplateError) as raised:
            render_chat(stored(template), messages, add_generation_prompt)
        assert str(refused) in str(raised.value)
        return
    assert render_chat(stored(template), messages, add_generation_prompt) == expected


def test_every_style_renders_some_conversations() -> None:
    """The comparison above is not vacuous: each style accepts most conversations."""
    for style, template in TEMPLATES.items():
        rendered = [
            render_chat(stored(template), messages)
            for name, messages in CONVERSATIONS.items()
            if not (style == "mistral" and "system" in {m["role"] for m in messages})
        ]
        assert len(rendered) >= 3 and all(rendered), style


def test_a_template_refusing_a_role_raises_chat_template_error() -> None:
    with pytest.raises(ChatTemplateError, match="Only user and assistant roles are supported!"):
        render_chat(stored(MISTRAL), [{"role": "user", "content": "hi"},
                                      {"role": "tool", "content": "42"}])  # fmt: skip


def test_a_template_failing_at_runtime_or_compile_time_raises_chat_template_error() -> None:
    with pytest.raises(ChatTemplateError, match="refused the messages"):
        render_chat(stored("{{ messages[0]['content'] + 1 }}"), [{"role": "u", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render_chat(stored("{% for m in messages %}"), [{"role": "u", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="sandbox|unsafe|underscore"):  # the sandbox holds
        render_chat(stored("{{ messages.__class__.__mro__ }}{% set ns = namespace(_x=1) %}"),
                    [{"role": "u", "content": "x"}])  # fmt: skip


@pytest.mark.parametrize(
    ("messages", "named"),
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"role": "user", "content": "a"}, "b"], r"messages\[1\]` must be an object"),
        ([{"role": "user", "content": "a"}, {"role": "user"}], r"messages\[1\]\.content"),
        ([{"content": "a"}], r"messages\[0\]\.role"),
        ([{"role": "user", "content": [{"type": "text", "text": "a"}]}], r"\.content.*list"),
    ],
)
def test_malformed_messages_name_the_index(messages: Any, named: str) -> None:
    with pytest.raises(ChatTemplateError, match=named):
        render_chat(stored(CHATML), messages)


def test_a_template_without_source_is_refused() -> None:
    with pytest.raises(ChatTemplateError, match="`template`"):
        render_chat({"bos_token": BOS}, [{"role": "user", "content": "a"}])


@pytest.fixture(scope="module")
def built(
    tiny_decoder: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], dict[str, str]]:
    """Builds a tiny decoder's repository once; returns its generator's string parameters."""
    from tritonize.repository.writer import build_repository

    def build(family: str) -> dict[str, str]:
        output = tmp_path_factory.mktemp(family)
        spec = BuildSpec(name="chat", task=Task.GENERATION, model=tiny_decoder(family),
                         output=output, max_seq_len=32, max_batch_size=2)  # fmt: skip
        build_repository(spec)
        config = from_text((output / "chat" / "config.pbtxt").read_text())
        return {key: value.string_value for key, value in config.parameters.items()}

    return build


def test_a_checkpoint_with_a_template_stores_it_in_the_config(
    built: Callable[[str], dict[str, str]], tiny_decoder: Callable[[str], Path]
) -> None:
    from transformers import AutoTokenizer

    checkpoint = AutoTokenizer.from_pretrained(tiny_decoder("llama-decoder"))
    template = template_from_parameter(built("llama-decoder")["chat_template"])
    assert template["template"] == checkpoint.chat_template
    assert (template["bos_token"], template["eos_token"]) == ("<s>", "</s>")
    messages = CONVERSATIONS["unicode"]
    expected = checkpoint.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_chat(template, messages) == expected


def test_a_checkpoint_without_a_template_stores_none(
    built: Callable[[str], dict[str, str]],
) -> None:
    parameters = built("gpt2-decoder")
    assert "chat_template" not in parameters
    assert json.loads(parameters["end_ids"])  # the rest of the config is there
