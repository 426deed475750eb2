"""OpenAI-style conversations mapped onto each GLM release's own chat format.

Callers speak OpenAI's message format (roles ``system``/``user``/``assistant``/``tool``, assistant ``tool_calls``,
an OpenAI ``tools`` list); the native role name ``observation`` and a message's ``metadata`` are accepted too. Each
release reads a conversation differently:

* **ChatGLM2** has no roles, only rounds: ``[Round i]\\n\\n问：{q}\\n\\n答：{a}\\n\\n`` per past round (``i`` from 1),
  then ``[Round n+1]\\n\\n问：{query}\\n\\n答：`` (full-width colons). No system prompt, no tools.
* **ChatGLM3** (``build_chat_input``): turns of (role, metadata, content); tools are function dicts appended to a
  system turn as ``content + "\\n" + json.dumps(functions, indent=4, ensure_ascii=False)`` (without a system
  message, the one ChatGLM3's prompt documentation and OpenAI demo use is added); a past call is an assistant turn
  with the tool's name as metadata; a tool's result is an ``observation`` turn.
* **GLM-4** templates that read tools from a message (glm-4-9b-chat's): tools go into a system message's ``tools``
  key (the conversation's first system message, or a new empty one in front, as GLM-4's OpenAI demo adds it), a past
  call is ``{"role": "assistant", "metadata": name, "content": arguments}``, a result ``{"role": "observation"}``.
  Templates that read a top-level ``tools`` variable (transformers' convention) get the conversation as given.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from glm_engine.errors import InputError
from glm_engine.generation.tool_calls import chatglm3_call_body, parse_arguments
from glm_engine.tokenizer.chat_tokenizer import Message, Tool, ToolCall

# Role names accepted from callers and the native role each becomes.
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "observation",
    "observation": "observation",
}
# ChatGLM3's system message for tools when the conversation has none (its PROMPT.md and OpenAI demo).
CHATGLM3_TOOL_SYSTEM_PROMPT = (
    "Answer the following questions as best as you can. You have access to the following tools:"
)
# ChatGLM2's prompt pieces (tokenization_chatglm.py build_prompt).
CHATGLM2_ROUND = "[Round {index}]\n\n问：{query}\n\n答：{response}\n\n"
CHATGLM2_QUERY = "[Round {index}]\n\n问：{query}\n\n答："


@dataclass(frozen=True)
class Turn:
    """One turn in a release's native form: its role (``system``/``user``/``assistant``/``observation``), the
    metadata line (a tool's name for a call) and the content."""

    role: str
    content: str
    metadata: str = ""


def role_of(message: Message, index: int) -> str:
    """The native role of ``messages[index]``; an unknown role is an InputError listing the accepted ones."""
    if not isinstance(message, Mapping):
        raise InputError(f"messages[{index}] must be a dict with 'role' and 'content', got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLE_ALIASES:
        raise InputError(f"messages[{index}] has role {role!r}; use one of {sorted(ROLE_ALIASES)}")
    return ROLE_ALIASES[role]


def text_of(message: Message, index: int) -> str:
    """A message's content as text: a string, None (empty), or OpenAI's list of ``{"type": "text"}`` parts."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and all(isinstance(p, Mapping) and p.get("type") == "text" for p in content):
        return "".join(str(part.get("text", "")) for part in content)
    raise InputError(f"messages[{index}].content must be text (a string or text parts); GLM chat takes no media")


def tool_calls_of(message: Message, index: int) -> list[ToolCall]:
    """An assistant message's ``tool_calls`` (OpenAI form), arguments kept as the JSON string given."""
    calls = []
    for number, entry in enumerate(message.get("tool_calls") or ()):
        where = f"messages[{index}].tool_calls[{number}]"
        function = entry.get("function") if isinstance(entry, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str) or not function["name"]:
            raise InputError(f"{where} must be {{'type': 'function', 'function': {{'name': ..., 'arguments': ...}}}}")
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(parse_arguments(arguments, where), ensure_ascii=False)
        parse_arguments(arguments, where)
        calls.append(ToolCall(name=function["name"], arguments=arguments))
    return calls


def function_specs(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """The function dicts of an OpenAI tools list (bare function dicts, ChatGLM3's own form, pass through)."""
    functions = []
    for index, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, Mapping) else None
        kind = tool.get("type", "function") if isinstance(tool, Mapping) else None
        if kind != "function" or not isinstance(function, Mapping) or "name" not in function:
            raise InputError(f"tools[{index}] must be {{'type': 'function', 'function': {{'name': ..., ...}}}}")
        functions.append(dict(function))
    return functions


def chatglm2_prompt(messages: Sequence[Message], tools: Sequence[Tool] | None) -> str:
    """ChatGLM2's ``build_prompt`` text: alternating user/assistant messages ending with the user's query."""
    if tools:
        raise InputError("ChatGLM2 has no tool calling; drop the tools or use ChatGLM3 / GLM-4")
    pairs: list[tuple[str, str]] = []
    query: str | None = None
    for index, message in enumerate(messages):
        role = role_of(message, index)
        if role == "system":
            raise InputError("ChatGLM2 has no system role; put the instruction into the first user message instead")
        if role == "observation" or message.get("tool_calls"):
            raise InputError(f"messages[{index}]: ChatGLM2 has no tool calling (no tool results or tool calls)")
        expected = "user" if query is None else "assistant"
        if role != expected:
            raise InputError(
                f"messages[{index}] is a {role} message where ChatGLM2 expects {expected}: "
                "its conversation alternates user and assistant and ends with the user"
            )
        if role == "user":
            query = text_of(message, index)
        else:
            pairs.append((query or "", text_of(message, index)))
            query = None
    if query is None:
        raise InputError("the conversation must end with a user message (ChatGLM2 answers the last question)")
    rounds = "".join(CHATGLM2_ROUND.format(index=i, query=q, response=a) for i, (q, a) in enumerate(pairs, 1))
    return rounds + CHATGLM2_QUERY.format(index=len(pairs) + 1, query=query)


def _assistant_turns(message: Message, index: int, render_call: Callable[[ToolCall, str], str]) -> list[Turn]:
    """An assistant message as turns: its text (when it has any, or no calls), then one turn per tool call with the
    tool's name as metadata and ``render_call(call, where)`` as content."""
    text = text_of(message, index)
    calls = tool_calls_of(message, index)
    turns = [Turn("assistant", text, str(message.get("metadata") or ""))] if text or not calls else []
    for number, call in enumerate(calls):
        turns.append(Turn("assistant", render_call(call, f"messages[{index}].tool_calls[{number}]"), call.name))
    return turns


def chatglm3_turns(messages: Sequence[Message], tools: Sequence[Tool] | None) -> list[Turn]:
    """ChatGLM3's turns for ``build_chat_input``, tools folded into the first system turn."""
    turns: list[Turn] = []
    for index, message in enumerate(messages):
        role = role_of(message, index)
        if role == "assistant":
            turns.extend(_assistant_turns(message, index, chatglm3_call_body))
        else:
            turns.append(Turn(role, text_of(message, index), str(message.get("metadata") or "")))
    if tools:
        listing = json.dumps(function_specs(tools), indent=4, ensure_ascii=False)
        first = next((i for i, turn in enumerate(turns) if turn.role == "system"), None)
        if first is None:
            turns.insert(0, Turn("system", CHATGLM3_TOOL_SYSTEM_PROMPT + "\n" + listing))
        else:
            turns[first] = Turn("system", turns[first].content + "\n" + listing, turns[first].metadata)
    return turns


def glm4_native_messages(messages: Sequence[Message], tools: Sequence[Tool] | None) -> list[dict[str, Any]]:
    """The messages glm-4-9b-chat's template reads: native roles, calls as metadata turns, tools in a system
    message."""
    native: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        role = role_of(message, index)
        if role == "assistant":
            for turn in _assistant_turns(message, index, lambda call, where: call.arguments):
                native.append({"role": "assistant", "metadata": turn.metadata, "content": turn.content})
        else:
            entry: dict[str, Any] = {"role": role, "content": text_of(message, index)}
            if message.get("metadata"):
                entry["metadata"] = str(message["metadata"])
            native.append(entry)
    if tools:
        for index, tool in enumerate(tools):
            if not isinstance(tool, Mapping) or "type" not in tool:
                raise InputError(f"tools[{index}] must be an OpenAI tool: {{'type': 'function', 'function': ...}}")
        first = next((i for i, m in enumerate(native) if m["role"] == "system"), None)
        if first is None:
            native.insert(0, {"role": "system", "content": "", "tools": [dict(t) for t in tools]})
        else:
            native[first]["tools"] = [dict(t) for t in tools]
    return native


def openai_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The conversation as given (checked roles, plain dict copies), for templates written for OpenAI's format."""
    for index, message in enumerate(messages):
        role_of(message, index)
    return [dict(message) for message in messages]
