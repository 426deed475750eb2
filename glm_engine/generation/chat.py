"""ChatGLM-6B's generation: its 2-D model inputs, its chat prompt and defaults, and the reply loop.

From the reference (``modeling_chatglm.py``'s ``chat``/``stream_chat``, run by transformers' ``generate``):

* **Prompt** (``chat``): with no history the prompt is the query itself; otherwise
  ``"[Round {i}]\\n问：{query_i}\\n答：{response_i}\\n"`` for each past round ``i`` (from 0), then
  ``"[Round {n}]\\n问：{query}\\n答："``. The tokenizer appends ``[gMASK]`` and ``<sop>``.
* **Inputs**: :func:`chatglm_batch` (the 2-D positions and the prefix-bidirectional mask of
  :mod:`glm_engine.model.chatglm`); generation stops at ``<eop>`` (``eos_token_id``) or at ``max_length`` tokens
  *including the prompt*.
* **Defaults**: ``max_length`` 2048, ``do_sample`` True, ``top_p`` 0.7, ``temperature`` 0.95, ``num_beams`` 1, and
  transformers' own ``top_k`` 50, applied as temperature, then top-k, then top-p. Scores holding NaN or inf are
  replaced by zeros with 5e4 at id 5 (``InvalidScoreLogitsProcessor``).
* **Reply** (``process_response``): the decoded text stripped, ``[[训练时间]]`` replaced by ``2023年``, and ``, ! : ;
  ?`` next to a CJK character turned into their full-width forms.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from glm_engine.backends.base import ModelRunner
from glm_engine.errors import InputError
from glm_engine.generation.decode import Strategy, decode_aligned
from glm_engine.generation.masks import AlignedBatch, GenerationRow, align_left
from glm_engine.generation.strategies import BaseStrategy, GreedyStrategy
from glm_engine.model.chatglm_config import ChatGLMConfig
from glm_engine.tokenizer.chatglm import ChatGLMTokenizer

# chat()/stream_chat() defaults, and transformers' GenerationConfig default top_k that sampling also applies.
DEFAULT_MAX_LENGTH = 2048
DEFAULT_TOP_P = 0.7
DEFAULT_TEMPERATURE = 0.95
DEFAULT_TOP_K = 50
# InvalidScoreLogitsProcessor: NaN/inf scores become 0 with this score at this id.
INVALID_SCORE_TOKEN = 5
INVALID_SCORE_VALUE = 5e4
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


def mask_position(ids: Sequence[int], config: ChatGLMConfig) -> int:
    """Where the blank is: the first ``[gMASK]`` if there is one, else the first ``[MASK]`` (the model's rule)."""
    for token in (config.gmask_token_id, config.mask_token_id):
        if token in ids:
            return list(ids).index(token)
    raise InputError("a ChatGLM prompt needs a [gMASK] or [MASK] token (the tokenizer appends [gMASK] <sop>)")


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
    sop = aligned.context_length - 1  # every row's <sop> sits in the last prompt column
    for i, budget in enumerate(budgets):
        block[i, sop : sop + budget + 1] = torch.arange(1, budget + 2)
        block[i, sop + budget + 1 :] = budget + 1
    aligned.position_ids = torch.stack([aligned.position_ids, block], dim=1)
    return aligned


class InvalidScoreGuard:
    """Wraps a strategy: logits with NaN or inf are replaced as the reference's ``InvalidScoreLogitsProcessor``
    does, so a numerically broken step yields id 5 instead of sampling from garbage."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.num_beams = strategy.num_beams

    @property
    def is_done(self) -> bool:
        return self.strategy.is_done

    def start(self, contexts: Sequence[Sequence[int]]) -> None:
        self.strategy.start(contexts)

    def finish(self, row: int) -> None:
        self.strategy.finish(row)

    def step(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bad = ~torch.isfinite(logits).all(dim=-1, keepdim=True)
        if bad.any():
            replacement = torch.zeros_like(logits)
            replacement[..., INVALID_SCORE_TOKEN] = INVALID_SCORE_VALUE
            logits = torch.where(bad, replacement, logits)
        return self.strategy.step(logits)

    def finalize(self) -> list[list[list[int]]]:
        return self.strategy.finalize()


@dataclass(frozen=True)
class ChatOptions:
    """How to generate a reply; defaults are ``chat()``'s. ``max_length`` counts the prompt, as in the reference;
    ``max_new_tokens``, when set, takes precedence and counts only the reply (transformers' rule)."""

    max_length: int = DEFAULT_MAX_LENGTH
    max_new_tokens: int | None = None
    do_sample: bool = True
    top_p: float = DEFAULT_TOP_P
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = DEFAULT_TOP_K
    seed: int = 1234

    def __post_init__(self) -> None:
        checks = [
            (self.max_length > 0, "max_length must be > 0"),
            (self.max_new_tokens is None or self.max_new_tokens > 0, "max_new_tokens must be > 0"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.top_k >= 0, "top_k must be >= 0 (0 = off)"),
            (0.0 <= self.top_p <= 1.0, "top_p must be in [0, 1] (0 = off)"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def length_limit(self, prompt_length: int) -> int:
        """Tokens allowed in total (prompt included) for a prompt of ``prompt_length`` tokens."""
        return self.max_length if self.max_new_tokens is None else prompt_length + self.max_new_tokens

    def build_strategy(self, config: ChatGLMConfig, generator: torch.Generator | None = None) -> Strategy:
        """Sampling (temperature, top-k, top-p; on the CPU, so a seed gives the same tokens on every device) or
        greedy, guarded against invalid scores."""
        if not self.do_sample:
            return InvalidScoreGuard(GreedyStrategy(config.end_token_ids))
        generator = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        sampler = BaseStrategy(self.temperature, self.top_k, self.top_p, config.end_token_ids, generator=generator)
        return InvalidScoreGuard(sampler)


def generate_ids(
    runner: ModelRunner,
    config: ChatGLMConfig,
    prompts: Sequence[Sequence[int]],
    max_length: int,
    strategy: Strategy,
    on_token: Callable[[int, list[list[int]], list[list[int]]], None] | None = None,
) -> list[list[int]]:
    """Generated ids per prompt (ending with ``<eop>`` when the model produced it), at most ``max_length`` tokens
    with the prompt, as ``generate(max_length=...)`` counts them."""
    limit = min(max_length, config.max_sequence_length)
    budgets = [limit - len(ids) for ids in prompts]
    if min(budgets) < 1:
        longest = max(len(ids) for ids in prompts)
        raise InputError(
            f"the prompt has {longest} tokens, which leaves no room below max_length {limit}; "
            "shorten it, clear the chat history or raise --max-length (at most the model's "
            f"{config.max_sequence_length})"
        )
    batch = chatglm_batch(prompts, config, budgets, config.pad_token_id)
    beams = decode_aligned(runner, batch, [list(p) for p in prompts], budgets, strategy, config.pad_token_id, on_token)
    return [row[0] for row in beams]


def chat(
    runner: ModelRunner,
    tokenizer: ChatGLMTokenizer,
    query: str,
    history: Sequence[tuple[str, str]] = (),
    options: ChatOptions | None = None,
    generator: torch.Generator | None = None,
    on_text: Callable[[str], None] | None = None,
) -> tuple[str, History]:
    """One round of ``chat()``: the processed reply and the history with this round appended.

    ``on_text(reply_so_far)`` is called after every token, as ``stream_chat`` yields. Pass one ``generator`` to
    several calls to continue a single random stream (``options.seed`` is then unused).
    """
    if not isinstance(query, str):
        raise InputError(f"query must be a str, got {type(query).__name__}")
    options = options or ChatOptions()
    config: ChatGLMConfig = runner.config  # type: ignore[assignment]
    prompt = tokenizer.build_inputs(build_chat_prompt(query, history))
    generated: list[int] = []

    def stream(_step: int, tokens: list[list[int]], _parents: list[list[int]]) -> None:
        token = tokens[0][0]
        if token < 0 or token in config.end_token_ids:
            return
        generated.append(token)
        if on_text is not None:
            on_text(process_response(tokenizer.decode(generated)))

    strategy = options.build_strategy(config, generator)
    generate_ids(runner, config, [prompt], options.length_limit(len(prompt)), strategy, stream)
    response = process_response(tokenizer.decode(generated))
    return response, [*history, (query, response)]
