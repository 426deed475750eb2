"""``POST /v1/completions``: text prompts continued as each family's ``generate`` does (GLM-130B: its blanks filled
with the reference's semantics, one generation per blank)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from glm_engine.errors import InputError
from glm_engine.server.async_engine import EngineFailure
from glm_engine.server.chat import token_budget
from glm_engine.server.generation import Generation, ServedModel, cut_at_stop, generate, held_back, run_all
from glm_engine.server.protocol import DEFAULT_COMPLETION_TOKENS, CompletionRequest
from glm_engine.server.sse import stream_events
from glm_engine.serving.sampling import SamplingParams, TokenChoice

DEFAULT_BEAM_SEED = 1234  # glm-engine run's: beam search samples its candidates unless deterministic
OnText = Callable[[str, list[TokenChoice]], Awaitable[None]]


async def complete_one(
    served: ServedModel, text: str, params: SamplingParams, request: Request, on_text: OnText | None = None
) -> tuple[str, int, list[TokenChoice], str]:
    """(completion text, prompt tokens, token choices, finish reason) of one prompt, round by round; ``on_text`` gets
    the text so far while a round continues the text (not while a blank is filled into the prompt)."""
    rounds = served.family.serving_completion(served.config, served.tokenizer, text)
    prompt = next(rounds)
    prompt_tokens = len(prompt.ids)
    choices: list[TokenChoice] = []
    while True:
        budget = token_budget(served, len(prompt.ids), params.max_tokens)
        round_params = dataclasses.replace(params, max_tokens=budget)

        async def on_token(gen: Generation, prompt: Any = prompt) -> None:
            if on_text is not None and prompt.continues_text:
                await on_text(prompt.text(gen.tokens), gen.choices)

        gen = await generate(served, prompt, round_params, request, on_token)
        choices += gen.choices
        try:
            prompt = rounds.send(gen.tokens)
        except StopIteration as done:
            completion, stopped = cut_at_stop(done.value, params.stop)
            return completion, prompt_tokens, choices, "stop" if stopped else gen.finish_reason


def completion_logprobs(served: ServedModel, choices: list[TokenChoice]) -> dict[str, Any]:
    tokens = [served.tokenizer.decode([c.token]) for c in choices]
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token)
    top = [{served.tokenizer.decode([t]): lp for t, lp in c.top} for c in choices]
    return {
        "tokens": tokens,
        "token_logprobs": [c.logprob for c in choices],
        "top_logprobs": top,
        "text_offset": offsets,
    }


async def beam_search(served: ServedModel, body: CompletionRequest, max_tokens: int) -> Any:
    """GLM-130B's beam search, one job per prompt outside the batch: the top ``n`` beams of each prompt."""
    if not served.family.blank_infilling:
        raise InputError(f"beam search is GLM-130B's blank filling; {served.family.title} samples or decodes greedily")
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for text in body.prompts:
        context = len(next(served.family.serving_completion(served.config, served.tokenizer, text)).ids)
        token_budget(served, context, max_tokens)
        options = {
            "sampling_strategy": "BeamSearchStrategy",
            "num_beams": body.num_beams,
            "length_penalty": body.length_penalty,
            "no_repeat_ngram_size": body.no_repeat_ngram_size,
            "out_seq_length": context + max_tokens,  # the reference counts the prompt
            "seed": DEFAULT_BEAM_SEED if body.seed is None else body.seed,
        }
        outputs = served.engine.submit_job(uuid.uuid4().hex, text, options)
        result = await outputs.get()
        if isinstance(result, EngineFailure):
            raise InputError(result.message)
        prompt_tokens += context
        for beam in range(body.n):
            answer = (text if body.echo else "") + result.texts[beam]
            choices.append({"index": len(choices), "text": answer, "finish_reason": "stop", "logprobs": None})
            completion_tokens += result.generated[beam]
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    usage["total_tokens"] = prompt_tokens + completion_tokens
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.name}
    return JSONResponse({**head, "object": "text_completion", "choices": choices, "usage": usage})


async def text_completion(served: ServedModel, body: CompletionRequest, request: Request) -> Any:
    body.check_supported()
    max_tokens = body.max_tokens or DEFAULT_COMPLETION_TOKENS
    if body.num_beams > 1:
        return await beam_search(served, body, max_tokens)
    jobs = [(p, body.sampling(max_tokens, body.logprobs, i)) for p in body.prompts for i in range(body.n)]
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.name}
    if body.stream:
        for text, params in jobs[:1]:  # refusals get their status before the stream starts
            first = next(served.family.serving_completion(served.config, served.tokenizer, text))
            served.engine.check(first.ids, params)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        produce = _streamer(served, body, jobs, request, head, include_usage)
        return StreamingResponse(stream_events(produce), media_type="text/event-stream")
    results = await run_all([complete_one(served, text, params, request) for text, params in jobs])
    choices = []
    for index, ((prompt_text, _), (text, _, token_choices, reason)) in enumerate(zip(jobs, results, strict=True)):
        logprobs = completion_logprobs(served, token_choices) if body.logprobs is not None else None
        choice = {"index": index, "text": (prompt_text if body.echo else "") + text, "finish_reason": reason}
        choices.append({**choice, "logprobs": logprobs})
    usage = _usage(results)
    served.metrics.prompt_tokens.inc(usage["prompt_tokens"])
    return JSONResponse({**head, "object": "text_completion", "choices": choices, "usage": usage})


def _usage(results: list[tuple[str, int, list[TokenChoice], str]]) -> dict[str, int]:
    prompt = sum(r[1] for r in results)
    completion = sum(len(r[2]) for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _streamer(
    served: ServedModel,
    body: CompletionRequest,
    jobs: list[tuple[str, SamplingParams]],
    request: Request,
    head: dict[str, Any],
    include_usage: bool,
) -> Callable:
    """Text deltas per choice as they come (a blank's text only once it is filled in), then its finish reason."""

    def chunk(index: int, text: str, reason: str | None = None) -> dict[str, Any]:
        choice = {"index": index, "text": text, "finish_reason": reason, "logprobs": None}
        return {**head, "object": "text_completion", "choices": [choice]}

    async def produce(emit: Callable[[dict[str, Any]], None]) -> None:
        async def one(index: int, prompt_text: str, params: SamplingParams) -> tuple[str, int, list, str]:
            sent = 0
            if body.echo:
                emit(chunk(index, prompt_text))

            async def on_text(text: str, _choices: list[TokenChoice]) -> None:
                nonlocal sent
                text, _ = cut_at_stop(text, params.stop)
                ready = len(text) - held_back(text, params.stop)
                if ready > sent:
                    emit(chunk(index, text[sent:ready]))
                    sent = ready

            result = await complete_one(served, prompt_text, params, request, on_text)
            text, _, _, reason = result
            emit(chunk(index, text[sent:], reason))
            return result

        results = await run_all([one(i, text, params) for i, (text, params) in enumerate(jobs)])
        usage = _usage(results)
        served.metrics.prompt_tokens.inc(usage["prompt_tokens"])
        if include_usage:
            emit({**head, "object": "text_completion", "choices": [], "usage": usage})

    return produce
