"""GLM-130B's tokenizer (icetk 0.0.7 text side + SAT 0.2.12 specials) on plain ``sentencepiece``.

Semantics reproduced (see ``docs/glm-semantics.md#tokenizer-and-vocabulary``):

* ``encode``: SentencePiece ids plus ``layout.text_offset`` (icetk reserves the ids below it for images). icetk's
  default ``ignore_linebreak=True`` passes ``\\n`` to SentencePiece's normalizer, which folds it into a space; only
  ``ignore_linebreak=False`` turns it into the ``<n>`` piece first.
* ``decode``: like SAT's ``_IceTokenizer.detokenize``: split on special ids, render each as ``"[" + name + "]"``
  (``[[MASK]]``, ``[sop]``; eos as ``[</s>]``), decode each text run with SentencePiece after subtracting the offset
  and replace ``<n>`` with ``\\n``. Ids that are neither text nor special (image ids, embedding padding rows, -1
  fill) would crash the reference; here they render as ``<unk:ID>``.

icetk itself is not used: it pins an old protobuf and downloads the model at run time
(docs/glm-semantics.md#tokenizer-and-vocabulary).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from glm_engine.errors import TokenizerError
from glm_engine.model.glm130b.vocab import VocabLayout
from glm_engine.tokenizer.text_input import check_ids, check_text

MODEL_FILENAME = "ice_text.model"
# icetk's cache directory; expanded with the current $HOME each time it is used.
ICETK_CACHE_DIR = "~/.icetk_models"
# Small bilingual model laid out like icetk's text model; built by tools/make_test_tokenizer.py.
BUILTIN_TOKENIZER_PATH = Path(__file__).resolve().parent.parent / "assets" / "test_tokenizer" / MODEL_FILENAME
# How prompts name blanks (reference generate.py): split on these, tokenize each segment on its own.
MASK_PATTERN = re.compile(r"(\[[sg]?MASK\])")
# SAT names eos (SentencePiece's "</s>") like this when it renders it.
EOS_NAME = "</s>"
LINEBREAK_PIECE = "<n>"


class GLMTokenizer:
    """Text ids with icetk's offset, GLM special ids from a :class:`VocabLayout`, SAT-style rendering."""

    def __init__(self, model_path: str | Path, layout: VocabLayout) -> None:
        self.model_path = Path(model_path)
        self.layout = layout
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        except Exception as exc:  # sentencepiece raises OSError or RuntimeError depending on the failure
            raise TokenizerError(
                f"cannot load SentencePiece tokenizer model {self.model_path}: {exc}. "
                f"Is it a valid {MODEL_FILENAME} (icetk's text model)?"
            ) from exc
        self._num_pieces = self._sp.get_piece_size()
        sp_eos = self._sp.eos_id()
        if sp_eos >= 0 and sp_eos + layout.text_offset != layout.eos:
            raise TokenizerError(
                f"tokenizer model {self.model_path} has </s> at piece {sp_eos}, i.e. id {sp_eos + layout.text_offset} "
                f"with text_offset {layout.text_offset}, but the vocab layout says eos is {layout.eos}"
            )
        self._special_names = {token_id: name for name, token_id in layout.special_tokens.items()}
        self._special_names.setdefault(layout.eos, EOS_NAME)

    def __repr__(self) -> str:
        return f"GLMTokenizer({str(self.model_path)!r}, {self._num_pieces} text pieces, offset {self.text_offset})"

    @property
    def text_offset(self) -> int:
        """Id of SentencePiece piece 0."""
        return self.layout.text_offset

    @property
    def num_text_pieces(self) -> int:
        """Number of SentencePiece pieces (icetk's ``num_text_tokens``; 130000 for GLM-130B)."""
        return self._num_pieces

    @property
    def text_id_range(self) -> range:
        """Ids that map to SentencePiece pieces; special ids inside it (eos) still render as specials."""
        return range(self.text_offset, self.text_offset + self._num_pieces)

    @property
    def special_ids(self) -> dict[int, str]:
        """Ids that :meth:`decode` renders as ``[name]``: the layout's specials plus eos (``</s>``)."""
        return dict(self._special_names)

    def is_special(self, token_id: int) -> bool:
        """Whether ``token_id`` is a special token (including eos), rendered ``[name]`` by :meth:`decode`."""
        return int(token_id) in self._special_names

    def is_text(self, token_id: int) -> bool:
        """Whether ``token_id`` decodes to text: inside :attr:`text_id_range` and not special."""
        token_id = int(token_id)
        return token_id in self.text_id_range and token_id not in self._special_names

    def id_to_piece(self, token_id: int) -> str:
        """The SentencePiece piece of a text id, ``[name]`` for a special id, ``<unk:ID>`` for anything else."""
        token_id = int(token_id)
        if token_id in self._special_names:
            return f"[{self._special_names[token_id]}]"
        if token_id in self.text_id_range:
            return self._sp.id_to_piece(token_id - self.text_offset)
        return f"<unk:{token_id}>"

    def encode(self, text: str, *, ignore_linebreak: bool = True) -> list[int]:
        """Token ids of plain text (no mask parsing), icetk's ``encode``: ``\\n`` becomes ``<n>`` only if asked."""
        check_text(text)
        if not ignore_linebreak:
            text = text.replace("\n", LINEBREAK_PIECE)
        return [piece + self.text_offset for piece in self._sp.encode(text)]

    def tokenize_prompt(self, text: str) -> list[int]:
        """Ids of a prompt whose ``[MASK]``/``[sMASK]``/``[gMASK]`` become mask ids; each text segment is encoded
        on its own (its own dummy prefix; empty segments give nothing). Adding gMASK/eos is the caller's job."""
        check_text(text, "prompt")
        mask_ids = self.layout.mask_ids
        ids: list[int] = []
        for i, part in enumerate(MASK_PATTERN.split(text)):
            if i % 2:
                ids.append(mask_ids[part])
            else:
                ids.extend(self.encode(part))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``: text runs decoded as icetk does, specials as ``[name]``, other ids as ``<unk:ID>``."""
        out: list[str] = []
        run: list[int] = []
        lo, hi = self.text_id_range.start, self.text_id_range.stop
        for token_id in check_ids(ids):
            if token_id in self._special_names:
                out.append(self._decode_run(run))
                out.append(f"[{self._special_names[token_id]}]")
            elif lo <= token_id < hi:
                run.append(token_id - lo)
            else:
                out.append(self._decode_run(run))
                out.append(f"<unk:{token_id}>")
        out.append(self._decode_run(run))
        return "".join(out)

    def _decode_run(self, run: list[int]) -> str:
        """Decode and clear a run of SentencePiece ids (icetk: decode, then ``<n>`` -> newline)."""
        if not run:
            return ""
        text = self._sp.decode(run).replace(LINEBREAK_PIECE, "\n")
        run.clear()
        return text


def icetk_cache_model_path() -> Path:
    """Where icetk keeps ``ice_text.model``, under the current ``$HOME``."""
    return Path(os.path.expanduser(ICETK_CACHE_DIR)) / MODEL_FILENAME


def find_tokenizer_model(path: str | Path | None, checkpoint: str | Path | None = None) -> Path:
    """Resolve ``path`` (a model file, or a directory holding ``ice_text.model``) to a file; without a path, look
    beside the checkpoint first, then in icetk's cache."""
    if path is None:
        candidates = [icetk_cache_model_path()]
        if checkpoint is not None:
            candidates.insert(0, Path(checkpoint).expanduser() / MODEL_FILENAME)
    else:
        given = Path(os.path.expanduser(str(path)))
        candidates = [given / MODEL_FILENAME] if given.is_dir() else [given]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise TokenizerError(
        f"tokenizer model {MODEL_FILENAME} not found; looked in: {looked}. "
        f"Pass --tokenizer PATH (the file or a directory containing {MODEL_FILENAME}) or copy {MODEL_FILENAME} "
        f"into {ICETK_CACHE_DIR}/. glm-engine never downloads it."
    )


def load_tokenizer(path: str | Path | None, layout: VocabLayout, checkpoint: str | Path | None = None) -> GLMTokenizer:
    """Load the tokenizer from a file or a directory containing ``ice_text.model``; with no path, from beside the
    checkpoint if it has one, else from icetk's cache dir."""
    return GLMTokenizer(find_tokenizer_model(path, checkpoint), layout)


def builtin_tokenizer(layout: VocabLayout | None = None) -> GLMTokenizer:
    """The packaged small test tokenizer (4000 pieces); GLM-130B's layout unless another is given."""
    return GLMTokenizer(BUILTIN_TOKENIZER_PATH, layout if layout is not None else VocabLayout())
