"""What every family's config shares: checks of sizes and JSON files, even tensor-parallel splits, and the
properties every config answers the same way (:class:`DecoderConfig`)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from glm_engine.errors import ConfigError

CONFIG_FILE_NAME = "config.json"


def positive_int(name: str, value: object) -> None:
    """A ConfigError unless ``value`` is an int above 0 (bools are refused: JSON true is not a size)."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def non_negative_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")


def number(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, got {value!r}")


def heads_divide_hidden(heads: int, hidden: int) -> None:
    if hidden % heads:
        raise ConfigError(f"num_attention_heads ({heads}) must divide hidden_size ({hidden})")


def even_split_degrees(axes: tuple[int, ...], limit: int = 64) -> list[int]:
    """Tensor-parallel degrees up to ``limit`` that divide every one of ``axes`` (heads, vocab rows, MLP units)."""
    divisor = math.gcd(*axes)
    return [t for t in range(1, limit + 1) if divisor % t == 0]


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON object from a UTF-8 file, or a ConfigError that says what is wrong with the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data


class DecoderConfig:
    """A mixin for a family's frozen config dataclass: the derived sizes and tensor-parallel questions every family
    answers the same way from ``num_attention_heads``, ``hidden_size``, ``vocab_size`` and ``inner_hidden_size``."""

    num_attention_heads: int
    hidden_size: int
    vocab_size: int
    inner_hidden_size: int
    mlp_units_name: ClassVar[str] = "MLP units"  # how TP messages name the MLP's split axis

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def tp_axes(self) -> dict[str, int]:
        """What tensor parallelism splits, by name: each must divide by the TP degree."""
        return {
            "attention heads": self.num_attention_heads,
            "vocab rows": self.vocab_size,
            self.mlp_units_name: self.inner_hidden_size,
        }

    def valid_tp_degrees(self, limit: int = 64) -> list[int]:
        """Tensor-parallel degrees up to ``limit`` that split every axis of :meth:`tp_axes` evenly (and pass
        :meth:`tp_problem`)."""
        return [t for t in even_split_degrees(tuple(self.tp_axes().values()), limit) if self.tp_problem(t) is None]

    def tp_problem(self, tp: int) -> str | None:
        """Why ``tp`` cannot split this model, beyond :meth:`tp_axes`' divisibility (e.g. key/value groups that
        neither divide by ``tp`` nor divide it); None when nothing else is in the way."""
        return None

    def with_overrides(self, **changes: Any) -> Any:
        return replace(self, **changes)  # type: ignore[type-var]
