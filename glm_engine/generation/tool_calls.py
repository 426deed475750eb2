"""Tool calls in the GLM releases' own notations: writing past calls into a prompt, reading new ones from a reply.

* **ChatGLM3** (``modeling_chatglm.py`` ``process_response``, OpenAI demo ``utils.py``): a call is an assistant turn
  whose metadata line is the tool's name and whose body is a fenced block ```` ```python ```` /
  ``tool_call(city="北京")`` / ```` ``` ````. The reference drops the first and last line of the body and ``eval``\\ s
  the rest with a local ``tool_call(**kwargs)``; here the call is parsed with ``ast`` and only literal arguments are
  accepted, never evaluated. Calls are written the same way, values as Python literals with double-quoted strings,
  as ChatGLM3's prompt documentation shows them.
* **GLM-4** (THUDM/GLM-4 ``basic_demo/glm_server.py``): the reply's first line is a tool's name and the rest a JSON
  object; it is a call only when tools were offered, that name is one of them and the JSON parses.

Plain replies get the ChatGLM line's ``process_response`` treatment: surrounding whitespace stripped and the
training-time placeholder ``[[训练时间]]`` replaced by ``2023年``. Model output never raises here: whatever does not
parse as a call stays text.
"""

from __future__ import annotations

import ast
import json
import keyword
from collections.abc import Mapping, Sequence
from typing import Any

from glm_engine.errors import InputError
from glm_engine.tokenizer.chat_tokenizer import ChatReply, Tool, ToolCall

# process_response of ChatGLM2/3: the placeholder their training data left for the cut-off year.
TRAINING_TIME_PLACEHOLDER = "[[训练时间]]"
TRAINING_TIME = "2023年"
# The ChatGLM3 role token a reply may hold between its turns (split on it as process_response does).
CHATGLM3_ASSISTANT = "<|assistant|>"


def clean_reply_text(text: str) -> str:
    """``process_response``'s treatment of a plain reply: strip, then the training-time placeholder."""
    return text.strip().replace(TRAINING_TIME_PLACEHOLDER, TRAINING_TIME)


def tool_names(tools: Sequence[Tool] | None) -> set[str]:
    """Names of the function tools offered (entries in OpenAI's form or bare function dicts)."""
    names = set()
    for tool in tools or ():
        function = tool.get("function", tool) if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


def _python_literal(value: Any) -> str:
    """A JSON value as Python source: strings double-quoted (JSON escapes are valid Python escapes)."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float, str)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_python_literal(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(str(key), ensure_ascii=False)}: {_python_literal(item)}" for key, item in value.items())
        return "{" + ", ".join(items) + "}"
    raise InputError(f"tool call argument {value!r} is not a JSON value")


def parse_arguments(arguments: Any, where: str) -> dict[str, Any]:
    """A tool call's ``arguments`` (a JSON object as a string, or already a dict) as a dict."""
    if isinstance(arguments, Mapping):
        return dict(arguments)
    if not isinstance(arguments, str):
        raise InputError(f"{where}: arguments must be a JSON object as a string, got {type(arguments).__name__}")
    try:
        parsed = json.loads(arguments or "{}", parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise InputError(f"{where}: arguments are not valid JSON ({exc}); pass the JSON object as a string") from exc
    if not isinstance(parsed, dict):
        raise InputError(f"{where}: arguments must be a JSON object, got {type(parsed).__name__}")
    return parsed


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def chatglm3_call_body(call: ToolCall, where: str) -> str:
    """The body of ChatGLM3's assistant turn for ``call``: a fenced ``tool_call(name=value, ...)``."""
    arguments = parse_arguments(call.arguments, where)
    bad = [name for name in arguments if not name.isidentifier() or keyword.iskeyword(name)]
    if bad:
        raise InputError(f"{where}: ChatGLM3 passes arguments as Python keywords; {bad} cannot be keyword names")
    rendered = ", ".join(f"{name}={_python_literal(value)}" for name, value in arguments.items())
    return f"```python\ntool_call({rendered})\n```"


def _literal_kwargs(code: str) -> dict[str, Any] | None:
    """The keyword arguments of a ``tool_call(...)`` expression whose arguments are all literals, else None."""
    try:
        tree = ast.parse(code.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "tool_call"):
        return None
    if call.args:
        return None
    kwargs: dict[str, Any] = {}
    for item in call.keywords:
        try:
            value = ast.literal_eval(item.value)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            return None
        if item.arg is not None:
            kwargs[item.arg] = value
        elif isinstance(value, dict) and all(isinstance(key, str) for key in value):
            kwargs.update(value)
        else:
            return None
    return kwargs


def _chatglm3_call(metadata: str, body: str) -> ToolCall | None:
    """A ChatGLM3 call from its metadata and body (the fence lines dropped), or None when it does not parse."""
    lines = body.strip().split("\n")
    kwargs = _literal_kwargs("\n".join(lines[1:-1])) if len(lines) >= 3 else None
    if kwargs is None:
        return None
    try:
        arguments = json.dumps(kwargs, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return None  # a literal JSON cannot hold (bytes, a set, a complex number, nan)
    return ToolCall(name=metadata.strip(), arguments=arguments)


def parse_chatglm3_reply(text: str, tools: Sequence[Tool] | None) -> ChatReply:
    """A decoded ChatGLM3 reply: each ``<|assistant|>`` turn in it is ``metadata\\nbody``; a turn with metadata is
    a tool call when tools were offered (a malformed one turns the whole reply into plain text), else its metadata
    is kept beside the text. Several turns are all kept (the reference returns only the last)."""
    texts, calls, metadata_seen = [], [], ""
    for turn in text.split(CHATGLM3_ASSISTANT):
        metadata, body = turn.split("\n", 1) if "\n" in turn else ("", turn)
        if not metadata.strip():
            texts.append(clean_reply_text(body))
        elif tools:
            call = _chatglm3_call(metadata, body)
            if call is None:
                return ChatReply(content=text.strip())
            calls.append(call)
        else:
            metadata_seen = metadata.strip()
            texts.append(body.strip())
    return ChatReply(content="\n".join(t for t in texts if t), tool_calls=calls, metadata=metadata_seen)


def _glm4_call(turn: str, names: set[str]) -> ToolCall | None:
    """GLM-4's rule: at least two lines, the second starts with ``{``, the first is an offered tool's name, and the
    rest is a JSON object."""
    lines = turn.strip().split("\n")
    if len(lines) < 2 or not lines[1].startswith("{") or lines[0].strip() not in names:
        return None
    try:
        arguments = json.loads("\n".join(lines[1:]).strip(), parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(name=lines[0].strip(), arguments=json.dumps(arguments, ensure_ascii=False))


def parse_glm4_reply(turns: Sequence[str], tools: Sequence[Tool] | None) -> ChatReply:
    """A GLM-4 reply given as the decoded text of each of its assistant turns (split at ``<|assistant|>``)."""
    names = tool_names(tools)
    texts, calls = [], []
    for turn in turns:
        call = _glm4_call(turn, names) if names else None
        if call is None:
            texts.append(turn.strip())
        else:
            calls.append(call)
    return ChatReply(content="\n".join(t for t in texts if t), tool_calls=calls)
