"""``POST /v1/chat/completions``: OpenAI-style messages (and tools) through the family's chat format."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from glm_engine.errors import InputError
from glm_engine.model.family import ServingPrompt
from glm_engine.server.generation import Generation, ServedModel, cut_at_stop, generate, held_back, run_all
from glm_engine.server.protocol import ChatCompletionRequest
from glm_engine.server.sse import stream_events
from glm_engine.serving.sampling import TokenChoice


def token_budget(served: ServedModel, prompt_length: int, asked: int | None) -> int:
    """``asked`` tokens, or what the context has left; an error with the numbers when the prompt leaves no room."""
    room = min(served.max_positions, served.kv_capacity) - prompt_length
    if asked is None and room >= 1:
        return room
    if room < 1 or asked > room:
        wanted = f" plus {asked} requested tokens" if asked is not None else ""
        limit = f"the model's context is {served.max_positions} tokens"
        if served.kv_capacity < served.max_positions:
            limit += f" and the KV cache holds {served.kv_capacity}"
        raise InputError(f"the prompt has {prompt_length} tokens{wanted}; {limit}")
    return asked


def chat_logprobs(served: ServedModel, choices: list[TokenChoice]) -> dict[str, Any]:
    def entry(token: int, logprob: float) -> dict[str, Any]:
        text = served.tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    content = []
    for c in choices:
        content.append({**entry(c.token, c.logprob or 0.0), "top_logprobs": [entry(t, lp) for t, lp in c.top]})
    return {"content": content}


def tool_calls(reply: Any) -> list[dict[str, Any]]:
    return [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": c.name, "arguments": c.arguments},
        }
        for c in reply.tool_calls
    ]


def message_of(prompt: ServingPrompt, gen: Generation, stops: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    """The assistant message of a finished generation and its finish reason."""
    reply = prompt.reply(gen.tokens)
    content, stopped = cut_at_stop(reply.content, stops)
    calls = tool_calls(reply)
    message: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None}
    if calls:
        message["tool_calls"] = calls
    reason = "tool_calls" if calls else ("stop" if stopped else gen.finish_reason)
    return message, reason


async def chat_completion(served: ServedModel, body: ChatCompletionRequest, request: Request) -> Any:
    body.check_supported()
    tools = body.active_tools()
    prompt = served.family.serving_chat(served.config, served.tokenizer, body.messages, tools, True)
    max_tokens = token_budget(served, len(prompt.ids), body.max_completion_tokens or body.max_tokens)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    params = [body.sampling(max_tokens, logprobs, i) for i in range(body.n)]
    stops = params[0].stop
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.name}
    served.metrics.prompt_tokens.inc(len(prompt.ids) * body.n)
    if body.stream:
        served.engine.check(prompt.ids, params[0])  # refusals get their status before the stream starts
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        produce = _streamer(served, prompt, params, request, head, bool(tools), include_usage)
        return StreamingResponse(stream_events(produce), media_type="text/event-stream")
    generations = await run_all([generate(served, prompt, p, request) for p in params])
    choices = []
    for index, gen in enumerate(generations):
        message, reason = message_of(prompt, gen, stops)
        choice = {"index": index, "message": message, "finish_reason": reason, "logprobs": None}
        if logprobs is not None:
            choice["logprobs"] = chat_logprobs(served, gen.choices)
        choices.append(choice)
    completion = sum(len(gen.tokens) for gen in generations)
    usage = {"prompt_tokens": len(prompt.ids), "completion_tokens": completion}
    usage["total_tokens"] = usage["prompt_tokens"] + completion
    return JSONResponse({**head, "object": "chat.completion", "choices": choices, "usage": usage})


def _streamer(
    served: ServedModel,
    prompt: ServingPrompt,
    params: list[Any],
    request: Request,
    head: dict[str, Any],
    buffered: bool,
    include_usage: bool,
) -> Callable:
    """The producer of a streamed chat: a role chunk, content deltas (held back near a possible stop string; all at
    the end when tools may be called, so a call is never streamed as text), a final chunk per choice."""
    stops = params[0].stop

    def chunk(index: int, delta: dict[str, Any], reason: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "finish_reason": reason, "logprobs": logprobs}
        return {**head, "object": "chat.completion.chunk", "choices": [choice]}

    async def produce(emit: Callable[[dict[str, Any]], None]) -> None:
        sent = [0] * len(params)
        totals = [0] * len(params)

        async def one(index: int) -> None:
            emit(chunk(index, {"role": "assistant", "content": ""}))

            async def on_token(gen: Generation) -> None:
                totals[index] = len(gen.tokens)
                if buffered:
                    return
                text, _ = cut_at_stop(prompt.reply(gen.tokens).content, stops)  # as the whole reply reads
                ready = len(text) - held_back(text, stops)
                if ready > sent[index]:
                    logprobs = chat_logprobs(served, gen.choices[-1:]) if params[index].logprobs is not None else None
                    emit(chunk(index, {"content": text[sent[index] : ready]}, logprobs=logprobs))
                    sent[index] = ready

            gen = await generate(served, prompt, params[index], request, on_token)
            message, reason = message_of(prompt, gen, stops)
            rest = (message["content"] or "")[sent[index] :]
            if rest:
                emit(chunk(index, {"content": rest}))
            if "tool_calls" in message:
                calls = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
                emit(chunk(index, {"tool_calls": calls}))
            emit(chunk(index, {}, reason))

        await run_all([one(index) for index in range(len(params))])
        if include_usage:
            completion = sum(totals)
            usage = {"prompt_tokens": len(prompt.ids), "completion_tokens": completion}
            usage["total_tokens"] = usage["prompt_tokens"] + completion
            emit({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})

    return produce
