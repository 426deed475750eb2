"""Jinja chat templates rendered exactly as transformers' ``apply_chat_template`` renders them.

A release's ``chat_template`` is written for transformers' environment, and the prompt ids depend on its details:

* a sandboxed, immutable environment with ``trim_blocks`` and ``lstrip_blocks`` (a newline right after a block tag
  is dropped: GLM-4's tool list renders ``# 可用工具\\n## name``, not ``\\n\\n## name``) and the ``loopcontrols``
  extension (``break``/``continue``); ``{% generation %}`` blocks render their body;
* a ``tojson`` filter that is plain ``json.dumps`` with ``ensure_ascii=False`` and the keys in their given order
  (Jinja's own escapes non-ASCII and sorts keys), with ``indent``, ``separators`` and ``sort_keys`` options;
* globals ``raise_exception(message)``, ``strftime_now(format)``, a ``dict`` constructor and a ``namespace`` that
  refuses underscore-prefixed names;
* the variables ``messages`` (keys whose value is None dropped), ``tools``, ``documents``, ``add_generation_prompt``
  and the tokenizer's named special tokens (``bos_token``, ``eos_token``, ...).

The rendered text is then tokenized without the tokenizer's own prefix (the template writes it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from glm_engine.errors import InputError, TokenizerError
from glm_engine.generation.chat_messages import glm4_native_messages, openai_messages

# Named special tokens a tokenizer config may set; apply_chat_template passes each set one to the template.
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text for training masks; it renders its body."""

    tags = {"generation"}  # noqa: RUF012 - jinja2's Extension API declares tags as a class attribute

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _GuardedNamespace(jinja2.utils.Namespace):
    """Jinja's ``namespace`` without underscore-prefixed attributes (they would reach Python internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attributes = dict(*rest, **kwargs)
        for name in attributes:
            _GuardedNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attributes)

    def __setitem__(self, name: str, value: Any) -> None:
        _GuardedNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set the attribute {name!r}")


def _dict(*args: Any, **kwargs: Any) -> dict[Any, Any]:
    return dict(*args, **kwargs)


@lru_cache(maxsize=16)
def compile_chat_template(source: str) -> jinja2.Template:
    """The template compiled in transformers' environment; a template Jinja cannot parse is a TokenizerError."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _dict
    env.globals["namespace"] = _GuardedNamespace
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise TokenizerError(
            f"the folder's chat_template is not valid Jinja (line {exc.lineno}: {exc.message}); restore "
            "tokenizer_config.json or chat_template.jinja from the release"
        ) from exc


def template_reads_message_tools(source: str) -> bool:
    """Whether the template reads tools from a message (``item['tools']``, ``message.tools``), as glm-4-9b-chat's
    does, instead of from the top-level ``tools`` variable (transformers' convention)."""
    env = ImmutableSandboxedEnvironment(extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    try:
        tree = env.parse(source)
    except jinja2.exceptions.TemplateSyntaxError:
        return False
    by_key = any(
        isinstance(node.arg, jinja2.nodes.Const) and node.arg.value == "tools"
        for node in tree.find_all(jinja2.nodes.Getitem)
    )
    return by_key or any(node.attr == "tools" for node in tree.find_all(jinja2.nodes.Getattr))


def select_chat_template(setting: Any, has_tools: bool, source: str) -> str:
    """The template text of a ``chat_template`` setting: a string, or named templates as a list of
    ``{"name", "template"}`` (``tool_use`` when tools are given and it exists, else ``default``)."""
    if isinstance(setting, str):
        return setting
    if isinstance(setting, Sequence):
        named = {entry.get("name"): entry.get("template") for entry in setting if isinstance(entry, Mapping)}
        for name in ("tool_use", "default") if has_tools else ("default",):
            if isinstance(named.get(name), str):
                return named[name]
    raise TokenizerError(f"{source} has no usable chat_template; restore it from the release")


def render_chat_template(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    variables: Mapping[str, Any] | None = None,
) -> str:
    """The prompt text ``source`` renders for ``messages`` (keys set to None dropped, as transformers does).

    A ``raise_exception`` from the template (it refuses the conversation) is an :class:`InputError` carrying the
    template's message; other template failures are too, since they come from what the messages hold.
    """
    cleaned = [{key: value for key, value in message.items() if value is not None} for message in messages]
    context = dict(variables or {})
    context.update(
        messages=cleaned,
        tools=list(tools) if tools is not None else None,
        documents=None,
        add_generation_prompt=add_generation_prompt,
    )
    try:
        return compile_chat_template(source).render(**context)
    except jinja2.exceptions.TemplateError as exc:
        raise InputError(f"the chat template refused this conversation: {exc}") from exc
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise InputError(f"the chat template cannot render this conversation: {exc}") from exc


def template_conversation(
    source: str, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and ``tools`` variable for a GLM-4 template: OpenAI's form for a template that reads ``tools``
    itself, glm-4-9b-chat's native form (tools inside a system message) for one that does not."""
    if template_reads_message_tools(source):
        return glm4_native_messages(messages, tools), None
    return openai_messages(messages), [dict(tool) for tool in tools] if tools else None
