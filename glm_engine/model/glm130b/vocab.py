"""Where text and special tokens live in a GLM vocabulary.

GLM-130B (icetk) reserves ids 0..19999 for image tokens, maps SentencePiece piece ``i`` to ``i + 20000`` and appends
the specials at 150000..150007; ``eos`` is SentencePiece's ``</s>`` (id 2, so 20002). Other GLM models use other
ids, so every id is a field of a :class:`VocabLayout` carried by the model config, never a literal in the code.
Source: ``docs/glm-semantics.md#tokenizer-and-vocabulary`` (icetk 0.0.7 ``ice_tokenizer.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from glm_engine.errors import ConfigError


@dataclass(frozen=True)
class VocabLayout:
    """Ids of the GLM special tokens and the offset of the text pieces; defaults are GLM-130B's."""

    text_offset: int = 20000
    mask: int = 150000
    gmask: int = 150001
    smask: int = 150002
    eod: int = 150003
    sop: int = 150004
    eop: int = 150005
    enc: int = 150006
    dblock: int = 150007
    eos: int = 20002
    pad: int = 0

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token names, as icetk renders them, mapped to their ids (in icetk's order)."""
        return {
            "[MASK]": self.mask,
            "[gMASK]": self.gmask,
            "[sMASK]": self.smask,
            "eod": self.eod,
            "sop": self.sop,
            "eop": self.eop,
            "ENC": self.enc,
            "dBLOCK": self.dblock,
        }

    @property
    def mask_ids(self) -> dict[str, int]:
        """The three blank tokens a prompt may contain, by their written form."""
        return {"[MASK]": self.mask, "[sMASK]": self.smask, "[gMASK]": self.gmask}

    @property
    def end_tokens(self) -> tuple[int, int]:
        """Tokens that end a generated span: ``eop`` and ``eos`` (reference generate.py)."""
        return (self.eop, self.eos)

    def max_id(self) -> int:
        return max(getattr(self, f.name) for f in fields(self) if f.name != "text_offset")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VocabLayout:
        if not isinstance(data, dict):
            raise ConfigError(f"vocab_layout must be a JSON object of token ids, got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"vocab_layout has unknown keys {unknown}; known keys are {sorted(known)}")
        bad = {k: v for k, v in data.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0}
        if bad:
            raise ConfigError(f"vocab_layout ids must be non-negative integers, got {bad}")
        return cls(**data)
