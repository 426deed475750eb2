"""ChatGLM-6B's tokenizer (``tokenization_chatglm.py``) on plain ``sentencepiece``, without transformers.

Semantics reproduced from the reference (``THUDM/chatglm-6b`` final revision, run under transformers 4.27-4.33):

* **Ids**: SentencePiece piece ``i`` is id ``i + num_image_tokens``. The slim revision (2023-04-06 on, vocab 130528,
  ``tokenizer_config.json`` ``"num_image_tokens": 0``) uses the piece ids as they are; the first release (vocab
  150528) put 20000 image ids in front, as icetk does. The specials are pieces of ChatGLM's own ``ice_text.model``:
  ``[MASK]`` 130000, ``[gMASK]`` 130001, ``[sMASK]`` 130002, ``<sop>`` 130004 (bos), ``<eop>`` 130005 (eos);
  ``<unk>`` 0, ``</s>`` 2, ``<pad>`` 3. The config carries those ids; a model file that holds the pieces must agree.
* **Encoding** (``SPTokenizer._preprocess``): ``\\n`` becomes ``<n>``, a tab ``<|tab|>``, and every run of 2..80
  spaces ``<|blank_n|>`` (longest runs first), then SentencePiece with its dummy prefix. Before that, transformers'
  ``tokenize`` splits the text on the special-token strings it knows (``<sop>``, ``<eop>``, ``<unk>``, ``<pad>``,
  ``[MASK]``), strips the whitespace next to each, and encodes each piece of text on its own.
* **Model input** (``build_inputs_with_special_tokens``): the ids, then ``[gMASK]`` and ``<sop>``, always.
* **Decoding** (``_decode``): pad ids are dropped, special pieces (control symbols) render as nothing, text pieces
  are decoded and ``<n>``, ``<|tab|>``, ``<|blank_n|>`` turned back; then transformers' default
  ``clean_up_tokenization`` removes the space before ``. , ! ?`` and English contractions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from glm_engine.errors import TokenizerError
from glm_engine.model.chatglm.config import ChatGLMConfig
from glm_engine.tokenizer.cleanup import clean_up_tokenization
from glm_engine.tokenizer.text_input import check_ids, check_text

LINEBREAK_PIECE = "<n>"
TAB_PIECE = "<|tab|>"
MAX_BLANK_LENGTH = 80  # SPTokenizer's max_blank_length
# Piece names of the specials in ChatGLM's ice_text.model, by config field.
SPECIAL_PIECES = {
    "mask_token_id": "[MASK]",
    "gmask_token_id": "[gMASK]",
    "bos_token_id": "<sop>",
    "eos_token_id": "<eop>",
    "pad_token_id": "<pad>",
}
# Strings transformers' tokenize() keeps whole (the tokenizer's special-token attributes: bos, eos, unk, pad, mask;
# gmask_token and end_token are not among transformers' special attributes, so "[gMASK]" goes to SentencePiece).
NO_SPLIT_TOKENS = ("<sop>", "<eop>", "<unk>", "<pad>", "[MASK]")
_NO_SPLIT_PATTERN = re.compile("(" + "|".join(re.escape(t) for t in NO_SPLIT_TOKENS) + ")")


def blank_piece(length: int) -> str:
    return f"<|blank_{length}|>"


def preprocess(text: str) -> str:
    """``SPTokenizer._preprocess``: linebreaks, tabs and runs of 2..80 spaces become ChatGLM's pieces."""
    text = text.replace("\n", LINEBREAK_PIECE).replace("\t", TAB_PIECE)
    for length in range(MAX_BLANK_LENGTH, 1, -1):
        text = text.replace(" " * length, blank_piece(length))
    return text


def postprocess(text: str) -> str:
    """``SPTokenizer.postprocess``: the inverse of :func:`preprocess` on decoded text."""
    text = text.replace(LINEBREAK_PIECE, "\n").replace(TAB_PIECE, "\t")
    for length in range(2, MAX_BLANK_LENGTH + 1):
        text = text.replace(blank_piece(length), " " * length)
    return text


class ChatGLMTokenizer:
    """Text to ids and back as ChatGLM-6B's tokenizer does, with the special ids of a :class:`ChatGLMConfig`."""

    def __init__(self, model_path: str | Path, config: ChatGLMConfig) -> None:
        self.model_path = Path(model_path)
        self.config = config
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        except Exception as exc:  # sentencepiece raises OSError or RuntimeError depending on the failure
            raise TokenizerError(
                f"cannot load SentencePiece model {self.model_path}: {exc}. Is it ChatGLM-6B's ice_text.model?"
            ) from exc
        self.offset = config.num_image_tokens
        self._num_pieces = self._sp.get_piece_size()
        self._specials: dict[str, int] = {piece: getattr(config, name) for name, piece in SPECIAL_PIECES.items()}
        self._specials["<unk>"] = self._sp.unk_id() + self.offset
        if self._sp.eos_id() >= 0:
            self._specials["</s>"] = self._sp.eos_id() + self.offset
        for piece, token_id in self._specials.items():
            held = self._sp.piece_to_id(piece)
            if held != self._sp.unk_id() and held + self.offset != token_id:
                raise TokenizerError(
                    f"{self.model_path} holds {piece} at id {held + self.offset} but the model config says "
                    f"{token_id}: the tokenizer and config.json come from different ChatGLM revisions"
                )
        self._special_ids = set(self._specials.values()) - {self._specials["<unk>"]}

    def __repr__(self) -> str:
        return f"ChatGLMTokenizer({str(self.model_path)!r}, {self._num_pieces} pieces, offset {self.offset})"

    @property
    def vocab_size(self) -> int:
        """How many ids its text pieces take: the image-token offset plus the SentencePiece pieces (the special
        tokens take the ids the model config names, checked against the config on their own)."""
        return self.offset + self._num_pieces

    @property
    def special_ids(self) -> dict[str, int]:
        """Special piece names and their ids."""
        return dict(self._specials)

    def _encode_text(self, text: str) -> list[int]:
        return [piece + self.offset for piece in self._sp.encode(preprocess(text))] if text else []

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` as the reference's ``tokenizer.encode(text, add_special_tokens=False)`` gives them."""
        parts = _NO_SPLIT_PATTERN.split(check_text(text))
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(self._specials[part])
                continue
            if i > 0:
                part = part.lstrip()  # transformers strips the whitespace around a special token
            if i < len(parts) - 1:
                part = part.rstrip()
            ids.extend(self._encode_text(part))
        return ids

    def build_inputs(self, text: str) -> list[int]:
        """The model input for a prompt: its ids, ``[gMASK]``, ``<sop>`` (the final revision always adds both)."""
        return self.encode(text) + [self.config.gmask_token_id, self.config.bos_token_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``: pads and specials dropped, image ids skipped, ChatGLM's whitespace pieces restored."""
        pieces: list[int] = []
        for token_id in check_ids(ids):
            if token_id == self.config.pad_token_id or token_id in self._special_ids:
                continue
            piece = token_id - self.offset
            if 0 <= piece < self._num_pieces:
                pieces.append(piece)
        return clean_up_tokenization(postprocess(self._sp.decode(pieces)))
