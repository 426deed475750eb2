"""The Python API's argument checks: a wrong type or an empty batch is an ``InputError`` naming the argument, before
any tokenizer or kernel sees it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from glm_engine.errors import InputError
from glm_engine.tokenizer.text_input import is_valid_text


def check_prompts(prompts: Any) -> list[str]:
    """``prompts`` (a string or a sequence of them) as a non-empty list of valid strings."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, (bytes, bytearray)) or not isinstance(prompts, Sequence):
        raise InputError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
    if not prompts:
        raise InputError("no prompts given")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            hint = ": decode bytes first" if isinstance(prompt, (bytes, bytearray)) else ""
            raise InputError(f"prompts[{i}] must be a string, got {type(prompt).__name__}{hint}")
        if not is_valid_text(prompt):
            raise InputError(f"prompts[{i}] is not valid Unicode text (it holds a lone surrogate)")
    return list(prompts)


def index_tensor(name: str, value: Any, dims: int | tuple[int, ...]) -> torch.Tensor:
    """``value`` (an integer tensor, or nested lists of ints) as a long tensor of ``dims`` dimensions, none empty."""
    if isinstance(value, (list, tuple)):
        try:
            value = torch.tensor(value)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name} must be integers of equal-length rows: {exc}") from None
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{name} must be a tensor of integers, got {type(value).__name__}")
    if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
        raise InputError(f"{name} must hold integers, got {value.dtype}")
    wanted = (dims,) if isinstance(dims, int) else dims
    if value.dim() not in wanted:
        raise InputError(f"{name} must have {' or '.join(map(str, wanted))} dimensions, got {tuple(value.shape)}")
    if value.numel() == 0:
        raise InputError(f"{name} is empty: {tuple(value.shape)}")
    return value.long()


def mask_tensor(name: str, value: Any) -> torch.Tensor:
    """``value`` as a bool mask tensor (True = blocked), refusing other dtypes rather than guessing their meaning."""
    if not isinstance(value, torch.Tensor) or value.dtype != torch.bool:
        got = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
        raise InputError(f"{name} must be bool (True = blocked), got {got}")
    return value
