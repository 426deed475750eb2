"""Decoding strategies with the reference's semantics (docs/glm-semantics.md#generation-strategies).

Both take logits ``[batch, beams_so_far, vocab]`` per step and return the next tokens and, for each new beam, the
beam it continues (so the caller can reorder its KV cache). Beams hold only generated tokens; the prompt is given to
:meth:`start` because the length penalty and the n-gram bans look at it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Filler for removed logits: the fp16 minimum, as the reference uses (not -inf).
FILTER_VALUE = -65504.0


def top_k_top_p_filter(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """SAT's ``top_k_logits`` per row: top-k first (ties with the k-th value survive), then nucleus.

    Nucleus keeps the smallest prefix of the sorted distribution whose mass exceeds ``top_p``, including the token
    that crosses it. Works on ``[rows, vocab]``; returns a new tensor. This is the reference formulation, kept as the
    oracle that :func:`sampling_candidates` (what sampling uses) is tested against.
    """
    logits = logits.clone()
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits[logits < kth] = FILTER_VALUE
    if top_p > 0.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        remove = cumulative > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        logits.scatter_(-1, sorted_idx, sorted_logits.masked_fill(remove, FILTER_VALUE))
    return logits


def sampling_candidates(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Ids that survive :func:`top_k_top_p_filter` for one row ``[vocab]``, without sorting the whole vocabulary.

    The nucleus lies inside the top-k tokens as soon as their mass exceeds ``top_p``, so it grows ``k`` until it
    does; the surviving set is exactly the reference's.
    """
    vocab = logits.shape[-1]
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, vocab)).values[-1]
        if top_p <= 0.0:
            return (logits >= kth).nonzero().flatten()
        logits = logits.masked_fill(logits < kth, FILTER_VALUE)
    if top_p <= 0.0:
        return torch.arange(vocab)
    log_total = torch.logsumexp(logits, dim=-1)
    for k in (256, 4096, vocab):  # a flat distribution falls through to one full sort
        if k >= vocab:
            values, ids = torch.sort(logits, descending=True)
        else:
            values, ids = torch.topk(logits, k)
        cumulative = torch.cumsum((values - log_total).exp(), dim=-1)
        if cumulative[-1] > top_p or k >= vocab:
            break
    remove = cumulative > top_p
    remove[1:] = remove[:-1].clone()
    remove[0] = False
    return ids[~remove]


class BaseStrategy:
    """Sampling with temperature, top-k and top-p; a row ends at its first end token (which is kept)."""

    def __init__(
        self,
        temperature: float = 1.0,
        top_k: int = 200,
        top_p: float = 0.0,
        end_tokens: Sequence[int] = (),
        invalid_slices: Sequence[slice | int] = (),
        generator: torch.Generator | None = None,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if top_k < 0 or not 0.0 <= top_p <= 1.0:
            raise ValueError(f"need top_k >= 0 and 0 <= top_p <= 1, got top_k={top_k}, top_p={top_p}")
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.end_tokens = tuple(end_tokens)
        self.invalid_slices = tuple(invalid_slices)
        self.generator = generator
        self.num_beams = 1
        self._done: list[bool] = []
        self._tokens: list[list[int]] = []

    def start(self, contexts: Sequence[Sequence[int]]) -> None:
        self._done = [False] * len(contexts)
        self._tokens = [[] for _ in contexts]

    @property
    def is_done(self) -> bool:
        return all(self._done)

    def finish(self, row: int) -> None:
        """Stop ``row`` (its length budget is spent)."""
        self._done[row] = True

    def step(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample one token per row from ``logits [b, 1, vocab]``; finished rows get -1."""
        logits = logits[:, 0].float() / self.temperature
        for invalid in self.invalid_slices:
            logits[..., invalid] = FILTER_VALUE
        pred = [-1] * logits.shape[0]
        for row in range(logits.shape[0]):
            if self._done[row]:
                continue
            token = self._choose(logits[row])
            pred[row] = token
            self._tokens[row].append(token)
            if token in self.end_tokens:
                self._done[row] = True
        tokens = torch.tensor(pred, dtype=torch.long).unsqueeze(1)
        return tokens, torch.zeros_like(tokens)

    def _choose(self, logits: torch.Tensor) -> int:
        """One token from a row's filtered logits ``[vocab]``: the reference's top-k/top-p sample."""
        candidates = sampling_candidates(logits, self.top_k, self.top_p)
        probs = F.softmax(logits[candidates], dim=-1)
        return int(candidates[torch.multinomial(probs, 1, generator=self.generator)])

    def finalize(self) -> list[list[list[int]]]:
        """Per row, one beam: the generated tokens including a final end token."""
        return [[tokens] for tokens in self._tokens]


def beam_candidates_per_step(num_beams: int, end_tokens: int) -> int:
    """Tokens a beam step draws: per beam, one more than the end tokens, so beams that end cannot starve the others
    (the reference's rule); the model must have at least this many tokens to choose from."""
    return (max(1, end_tokens) + 1) * num_beams


class BeamSearchStrategy:
    """GLM-130B's beam search: length penalty on the full length, n-gram bans on generated n-grams, min length."""

    def __init__(
        self,
        num_beams: int,
        length_penalty: float = 1.0,
        consider_end: bool = True,
        end_tokens: Sequence[int] = (),
        invalid_slices: Sequence[slice | int] = (),
        no_repeat_ngram_size: int = 0,
        min_gen_length: int = 0,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        context_tile: int = 0,
    ) -> None:
        """``context_tile`` > 0 counts the context as the reference's evaluation collate pads it: the longest context
        of the batch rounded up to a multiple of ``context_tile`` (32 there), in the length penalty and the stop
        test; 0 (``glm-engine run``) counts each row's own context."""
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        if no_repeat_ngram_size == 1:
            raise ValueError("no_repeat_ngram_size 1 would ban every generated token; use 0 (off) or >= 2")
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.consider_end = consider_end
        self.end_tokens = tuple(end_tokens)
        self.invalid_slices = tuple(invalid_slices)
        self.ngram = no_repeat_ngram_size
        self.min_gen_length = min_gen_length
        self.deterministic = deterministic
        self.generator = generator
        if context_tile < 0:
            raise ValueError(f"context_tile must be >= 0, got {context_tile}")
        self.context_tile = context_tile

    def start(self, contexts: Sequence[Sequence[int]]) -> None:
        batch = len(contexts)
        self._contexts = [list(c) for c in contexts]
        if self.context_tile and contexts:
            tile = self.context_tile
            padded = -(-max(len(c) for c in contexts) // tile) * tile
            self._context_lengths = [padded] * batch
        else:
            self._context_lengths = [len(c) for c in contexts]
        self._beams: list[list[list[int]]] = [[[]] for _ in range(batch)]  # generated tokens per beam
        self._scores = torch.zeros(batch, 1)  # cumulative log-probs of the running beams
        self._bans: list[list[dict[tuple[int, ...], tuple[int, ...]]]] = [[{}] for _ in range(batch)]
        self._end_beams: list[list[list[int]]] = [[] for _ in range(batch)]
        self._end_scores: list[list[float]] = [[] for _ in range(batch)]
        self._done = [False] * batch
        self._length_generated = 0

    @property
    def is_done(self) -> bool:
        return all(self._done)

    def _penalized(self, score: float, length: int) -> float:
        return score / ((5.0 + length) / 6) ** self.length_penalty  # OpenNMT/GNMT; length includes the prompt

    def _add_end_beam(self, row: int, score: float, beam: list[int]) -> None:
        """Insert before equal scores, keep the best ``num_beams`` (reference ``_add_end_beams``)."""
        penalized = self._penalized(score, self._context_lengths[row] + len(beam))
        scores = self._end_scores[row]
        at = next((i for i, s in enumerate(scores) if penalized >= s), len(scores))
        scores.insert(at, penalized)
        self._end_beams[row].insert(at, beam)
        del scores[self.num_beams :], self._end_beams[row][self.num_beams :]

    def finish(self, row: int) -> None:
        """End ``row`` now (length budget spent): its running beams become candidates if ``consider_end``."""
        if self._done[row]:
            return
        if self.consider_end:
            for beam, score in zip(self._beams[row], self._scores[row].tolist()):
                self._add_end_beam(row, score, beam)
        self._done[row] = True

    def _sequence(self, row: int, beam: int) -> list[int]:
        return self._contexts[row] + self._beams[row][beam]

    def step(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One beam step on ``logits [b, beams_so_far, vocab]``; returns tokens and parents, ``[b, num_beams]``."""
        batch, beams_so_far, vocab = logits.shape
        logits = logits.float().clone()
        for invalid in self.invalid_slices:
            logits[..., invalid] = FILTER_VALUE
        if self.min_gen_length > self._length_generated:
            logits[..., list(self.end_tokens)] = FILTER_VALUE
        if self.ngram > 0:
            for row in range(batch):
                for beam in range(beams_so_far):
                    seq = self._sequence(row, beam)
                    if len(seq) > self.ngram:
                        banned = self._bans[row][beam].get(tuple(seq[-(self.ngram - 1) :]), ())
                        logits[row, beam, list(banned)] = FILTER_VALUE
        scores = F.log_softmax(logits, dim=-1) + self._scores[..., None]
        scores = scores.view(batch, beams_so_far * vocab)
        probs = F.softmax(scores, dim=-1)
        num_candidates = beam_candidates_per_step(self.num_beams, len(self.end_tokens))
        if self.deterministic:
            candidates = torch.topk(probs, num_candidates, dim=-1).indices
        else:
            candidates = torch.multinomial(probs, num_candidates, replacement=False, generator=self.generator)
        candidate_scores = scores.gather(1, candidates)
        candidate_scores, order = torch.sort(candidate_scores, descending=True, dim=1)
        candidates = candidates.gather(1, order)

        tokens = torch.zeros(batch, self.num_beams, dtype=torch.long)
        parents = torch.zeros(batch, self.num_beams, dtype=torch.long)
        new_scores = torch.zeros(batch, self.num_beams)
        for row in range(batch):
            kept_beams, kept_bans = [], []
            for flat, score in zip(candidates[row].tolist(), candidate_scores[row].tolist()):
                parent, token = divmod(flat, vocab)
                beam = self._beams[row][parent] + [token]
                if not self._done[row] and token in self.end_tokens:
                    self._add_end_beam(row, score, beam)
                    continue
                if len(kept_beams) == self.num_beams:
                    break
                slot = len(kept_beams)
                tokens[row, slot], parents[row, slot], new_scores[row, slot] = token, parent, score
                kept_beams.append(beam)
                bans = dict(self._bans[row][parent])
                if self.ngram > 0:
                    prefix = tuple(self._sequence(row, parent)[-(self.ngram - 1) :])
                    bans[prefix] = bans.get(prefix, ()) + (token,)
                kept_bans.append(bans)
            self._beams[row], self._bans[row] = kept_beams, kept_bans
        self._scores = new_scores
        self._length_generated += 1
        for row in range(batch):
            length = self._context_lengths[row] + self._length_generated  # the reference's seq_len + 1
            if (
                not self._done[row]
                and len(self._end_beams[row]) == self.num_beams
                and self._end_scores[row][-1] >= self._penalized(float(self._scores[row].max()), length)
            ):
                self._done[row] = True
        return tokens, parents

    def finalize(self) -> list[list[list[int]]]:
        """Per row, beams best first (generated tokens, an end token included when the beam ended on one)."""
        for row in range(len(self._done)):
            self.finish(row)
        return [ends if ends else [beams[0]] for ends, beams in zip(self._end_beams, self._beams)]


class GreedyStrategy(BaseStrategy):
    """Argmax decoding, as transformers' ``generate(do_sample=False, num_beams=1)``: the first index among equal
    maxima; a row ends at its first end token (which is kept)."""

    def __init__(self, end_tokens: Sequence[int] = (), invalid_slices: Sequence[slice | int] = ()) -> None:
        super().__init__(end_tokens=end_tokens, invalid_slices=invalid_slices)

    def _choose(self, logits: torch.Tensor) -> int:
        return int(logits.argmax())
