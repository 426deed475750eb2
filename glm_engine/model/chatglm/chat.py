"""ChatGLM-6B's chat format: its prompt, its 2-D positions for a reply, and the clean-up of a reply.

From the reference (``modeling_chatglm.py``'s ``chat``/``stream_chat``; ``docs/glm-semantics.md``):

* **Prompt**: with no history the prompt is the query itself; otherwise
  ``"[Round {i}]\\n问：{query_i}\\n答：{response_i}\\n"`` for each past round ``i`` (from 0), then
  ``"[Round {n}]\\n问：{query}\\n答："``. The tokenizer appends ``[gMASK]`` and ``<sop>``.
* **Inputs** (:func:`chatglm_batch`): position ids run over the context, then hold the blank's index from ``<sop>``
  on; block position ids are 0 over the context, then 1 at ``<sop>`` and one more per generated token; the context
  attends bidirectionally. Generation stops at ``<eop>`` or at ``max_length`` tokens *including the prompt*.
* **Reply** (``process_response``): the decoded text stripped, ``[[训练时间]]`` replaced by ``2023年``, and ``, ! : ;
  ?`` next to a CJK character turned into their full-width forms.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import torch

from glm_engine.backends.base import ModelRunner
from glm_engine.errors import InputError
from glm_engine.generation.chat import ChatOptions, generate_replies
from glm_engine.generation.decode import Strategy, TokenCallback
from glm_engine.generation.masks import AlignedBatch, GenerationRow, align_left
from glm_engine.model.chatglm.config import ChatGLMConfig
from glm_engine.tokenizer.chatglm import ChatGLMTokenizer

TRAINING_TIME_PLACEHOLDER = ("[[训练时间]]", "2023年")
# process_response: half-width punctuation next to a CJK character -> full width.
FULL_WIDTH_PUNCTUATION = ((",", "，"), ("!", "！"), (":", "："), (";", "；"), (r"\?", "？"))
CJK = r"[\u4e00-\u9fff]"

History = list[tuple[str, str]]


def build_chat_prompt(query: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """The text ``chat()`` tokenizes for ``query`` after the ``(query, response)`` rounds of ``history``."""
    if not history:
        return query
    prompt = "".join(f"[Round {i}]\n问：{q}\n答：{r}\n" for i, (q, r) in enumerate(history))
    return prompt + f"[Round {len(history)}]\n问：{query}\n答："


def process_response(response: str) -> str:
    """The reference's clean-up of a decoded reply."""
    response = response.strip().replace(*TRAINING_TIME_PLACEHOLDER)
    for half, full in FULL_WIDTH_PUNCTUATION:
        response = re.sub(rf"({CJK}){half}", rf"\g<1>{full}", response)
        response = re.sub(rf"{half}({CJK})", rf"{full}\g<1>", response)
    return response


def rounds_of(messages: Sequence[Mapping[str, str]]) -> tuple[str, History]:
    """OpenAI-style messages as ChatGLM-6B's ``(query, history)``: alternating user/assistant turns ending with a
    user turn. ChatGLM-6B has no system prompt and no tools, so those are refused rather than dropped."""
    if not messages:
        raise InputError("messages is empty: give at least one {'role': 'user', 'content': ...}")
    turns: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
            raise InputError(f"message {index} must be a mapping with a string 'content'")
        role, expected = message.get("role"), ("user" if index % 2 == 0 else "assistant")
        if role == "system":
            raise InputError("ChatGLM-6B has no system prompt: put the instruction in the first user message")
        if role != expected:
            raise InputError(f"message {index} has role {role!r}; ChatGLM-6B takes user and assistant turns in turn")
        turns.append((role, message["content"]))
    if turns[-1][0] != "user":
        raise InputError("the last message must be the user's: the model replies to it")
    history = [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns) - 1, 2)]
    return turns[-1][1], history


def mask_position(ids: Sequence[int], config: ChatGLMConfig) -> int:
    """Where the blank is: the first ``[gMASK]`` if there is one, else the first ``[MASK]`` (the model's rule)."""
    for token in (config.gmask_token_id, config.mask_token_id):
        if token in ids:
            return list(ids).index(token)
    raise InputError("a ChatGLM prompt needs a [gMASK] or [MASK] token (the tokenizer appends [gMASK] <sop>)")


def block_positions(context: int, total: int, budget: int | None = None) -> torch.Tensor:
    """The block position row for a prompt of ``context`` tokens ending with ``<sop>``: 0 over the context, 1 at
    ``<sop>``, one more per generated token, and past ``budget`` generated tokens the last value held."""
    block = torch.zeros(total, dtype=torch.long)
    sop = context - 1
    budget = total - context if budget is None else budget
    block[sop : sop + budget + 1] = torch.arange(1, budget + 2)[: max(0, total - sop)]
    block[sop + budget + 1 :] = budget + 1
    return block


def chatglm_batch(
    prompts: Sequence[Sequence[int]], config: ChatGLMConfig, budgets: Sequence[int], pad_id: int
) -> AlignedBatch:
    """Left-aligned ids, 2-D positions ``[b, 2, total]`` and masks for prompts that end with ``<sop>``.

    Row 0 of the positions is GLM's rule without continuation: ``0 ..`` over the context, then the mask's index from
    ``<sop>`` on; row 1 (block positions) is 0 over the context, then 1 at ``<sop>`` and one more per generated
    token. Past a row's budget both stay at their last value, as :func:`align_left` does for GLM-130B.
    """
    rows = []
    for ids in prompts:
        if not ids or ids[-1] != config.bos_token_id or list(ids).index(config.bos_token_id) != len(ids) - 1:
            raise InputError("a ChatGLM prompt must end with its only <sop> (the tokenizer's build_inputs adds it)")
        rows.append(GenerationRow(list(ids), mask_position(ids, config), gmask=False))
    total = max(len(ids) for ids in prompts) + max(budgets)
    aligned = align_left(rows, total, pad_id, budgets)
    block = torch.zeros_like(aligned.position_ids)
    for i, budget in enumerate(budgets):
        block[i] = block_positions(aligned.context_length, total, budget)
    aligned.position_ids = torch.stack([aligned.position_ids, block], dim=1)
    return aligned


def generate_ids(
    runner: ModelRunner,
    config: ChatGLMConfig,
    prompts: Sequence[Sequence[int]],
    max_length: int,
    strategy: Strategy,
    on_token: TokenCallback | None = None,
) -> list[list[int]]:
    """Generated ids per prompt (ending with ``<eop>`` when the model produced it), at most ``max_length`` tokens
    with the prompt, as ``generate(max_length=...)`` counts them."""

    def build(ids: Sequence[Sequence[int]], budgets: Sequence[int]) -> AlignedBatch:
        return chatglm_batch(ids, config, budgets, config.pad_token_id)

    return generate_replies(runner, build, prompts, max_length, strategy, config.pad_token_id, on_token)


def reply(
    runner: ModelRunner,
    tokenizer: ChatGLMTokenizer,
    prompt_text: str,
    options: ChatOptions,
    generator: torch.Generator | None = None,
    on_text: Callable[[str], None] | None = None,
) -> str:
    """The processed reply to ``prompt_text`` (a built chat prompt, or any text to continue); ``on_text`` is called
    with the reply so far after every token, as ``stream_chat`` yields."""
    config: ChatGLMConfig = tokenizer.config
    prompt = tokenizer.build_inputs(prompt_text)
    generated: list[int] = []

    def stream(_step: int, tokens: list[list[int]], _parents: list[list[int]]) -> None:
        token = tokens[0][0]
        if token < 0 or token in config.end_token_ids:
            return
        generated.append(token)
        if on_text is not None:
            on_text(process_response(tokenizer.decode(generated)))

    strategy = options.build_strategy(config.end_token_ids, generator)
    generate_ids(runner, config, [prompt], options.length_limit(len(prompt)), strategy, stream)
    return process_response(tokenizer.decode(generated))
