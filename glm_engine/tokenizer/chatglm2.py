"""ChatGLM2-6B's and ChatGLM3-6B's tokenizers (``tokenization_chatglm.py`` + ``tokenizer.model``) on plain
``sentencepiece``, without transformers.

Semantics reproduced from the releases' remote code (ChatGLM2-6B's 2023-08 revision, ChatGLM3-6B's 2023-12 one):

* **Ids**: SentencePiece's pieces keep their ids; the specials follow the last piece in the release's order
  (ChatGLM2: ``[MASK] [gMASK] [sMASK] sop eop``, so 64789..64793 over the 64789-piece model; ChatGLM3 adds
  ``<|system|> <|user|> <|assistant|> <|observation|>``, 64794..64797). eos and bos are SentencePiece's; the pad id is
  its unk id (0).
* **Encoding** (``tokenizer.encode``/``tokenizer(text)``): SentencePiece pieces of the text, each turned into an id
  *by name*, so a piece spelled exactly like a special (``sop``, ``eop``) gets the special's id. Typed special strings
  are ordinary text, unless the folder's ``tokenizer_config.json`` lists them as added tokens (later hub revisions
  of ChatGLM3 do): transformers cuts those out first and maps them to their ids. With special tokens added, the
  ids start with ``[gMASK] sop``.
* **Decoding**: each id becomes its token name (a special's name in ChatGLM3; nothing for ChatGLM2's specials and for
  eos, bos and pad; nothing for ids past the vocabulary, which ChatGLM2's own code would raise on), and SentencePiece
  joins the names (``DecodePieces``), so ChatGLM3's role tokens appear in the text as ``<|user|>``.
  ``skip_special_tokens`` leaves them out (the reference keeps them: they are not transformers special tokens there).
* **Chat**: ChatGLM2 tokenizes its round prompt with ``tokenizer(prompt)``; ChatGLM3 builds ``[gMASK] sop``, then
  per turn ``[<|role|>] + sp.encode(metadata + "\\n") + sp.encode(content)`` (two separate encodes, each with
  SentencePiece's dummy prefix), then ``<|assistant|>`` (``build_chat_input``). Its content never passes through
  the added-token cut, so it is already plain: ``plain_content`` changes nothing there. In ChatGLM2's prompt it
  encodes by piece id instead of by name, so a piece spelled like ``sop`` cannot become the special.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from glm_engine.errors import TokenizerError
from glm_engine.generation.chat_messages import chatglm2_prompt, chatglm3_turns
from glm_engine.generation.tool_calls import clean_reply_text, parse_chatglm3_reply
from glm_engine.tokenizer.added_tokens import AddedToken, AddedTokenSplitter, added_tokens, read_tokenizer_config
from glm_engine.tokenizer.chat_tokenizer import ChatReply, ChatTokenizer, Message, Tool
from glm_engine.tokenizer.text_input import CHAT_PROMPT, check_ids, check_text

CHATGLM2_SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
CHATGLM3_ROLES = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
CHATGLM3_SPECIALS = (*CHATGLM2_SPECIALS, *CHATGLM3_ROLES)
# build_inputs_with_special_tokens: the prefix of every model input.
PREFIX = ("[gMASK]", "sop")


class SentencePieceGLMTokenizer(ChatTokenizer):
    """What ChatGLM2 and ChatGLM3 share: the SentencePiece model, specials after its pieces, encode and decode."""

    specials: tuple[str, ...] = CHATGLM2_SPECIALS
    release: str = "ChatGLM2"
    # Whether decode writes a special's name (ChatGLM3) or nothing (ChatGLM2).
    names_specials: bool = False

    def __init__(self, model_path: str | Path, added: Iterable[AddedToken] = ()) -> None:
        self.model_path = Path(model_path)
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        except Exception as exc:  # sentencepiece raises OSError or RuntimeError depending on the failure
            raise TokenizerError(
                f"cannot load SentencePiece model {self.model_path}: {exc}. Is it the release's tokenizer.model?"
            ) from exc
        self._num_pieces = self._sp.get_piece_size()
        self.special_ids = {name: self._num_pieces + i for i, name in enumerate(self.specials)}
        self._special_names = {token_id: name for name, token_id in self.special_ids.items()}
        self.name = f"{self.release} SentencePiece ({self.model_path.name})"
        self.vocab_size = self._num_pieces + len(self.specials)
        self.eos_id = self._sp.eos_id()
        self.bos_id = self._sp.bos_id()
        self.pad_id = self._sp.unk_id()
        self.stop_ids = self._stop_ids()
        added = list(added)
        for token in added:
            if self.special_ids.get(token.content, token.id) != token.id:
                raise TokenizerError(
                    f"tokenizer_config.json puts {token.content} at id {token.id}, but {self.model_path.name} has "
                    f"{self._num_pieces} pieces, so it is {self.special_ids[token.content]}: the two files come from "
                    "different releases"
                )
        self._splitter = AddedTokenSplitter(added)

    @classmethod
    def from_files(cls, file: Path, folder: Path) -> SentencePieceGLMTokenizer:
        """``file`` is ``tokenizer.model``; the folder's ``tokenizer_config.json`` may add tokens."""
        return cls(file, added_tokens(read_tokenizer_config(folder)))

    def _stop_ids(self) -> tuple[int, ...]:
        return (self.eos_id,)

    @property
    def prefix(self) -> list[int]:
        return [self.special_ids[name] for name in PREFIX]

    def _ids_by_name(self, text: str) -> list[int]:
        """SentencePiece pieces of ``text`` turned into ids by name, as ``_convert_token_to_id`` does."""
        pieces = self._sp.encode(text, out_type=str) if text else []
        return [self.special_ids.get(piece, self._sp.piece_to_id(piece)) for piece in pieces]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.prefix if add_special_tokens else []
        for part in self._splitter.split(check_text(text)):
            ids.extend([part.id] if isinstance(part, AddedToken) else self._ids_by_name(part))
        return ids

    def _token_name(self, token_id: int, skip_special_tokens: bool) -> str:
        if token_id in self._special_names:
            return self._special_names[token_id] if self.names_specials and not skip_special_tokens else ""
        if token_id in (self.eos_id, self.bos_id, self.pad_id) or not 0 <= token_id < self._num_pieces:
            return ""
        return self._sp.id_to_piece(token_id)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        names = [self._token_name(token_id, skip_special_tokens) for token_id in check_ids(ids)]
        return self._sp.decode_pieces(names) if names else ""


class ChatGLM2Tokenizer(SentencePieceGLMTokenizer):
    """ChatGLM2-6B: round prompts (``[Round N]`` / ``问：`` / ``答：``), no system role, no tools, stop at eos."""

    def apply_chat_template(
        self,
        messages: Sequence[Message],
        tools: Sequence[Tool] | None = None,
        add_generation_prompt: bool = True,
        plain_content: bool = False,
    ) -> list[int]:
        """``tokenizer(build_prompt(query, history))``; the prompt always ends with ``答：``, ChatGLM2's cue to
        answer, so ``add_generation_prompt`` has nothing to add or leave out."""
        prompt = check_text(chatglm2_prompt(messages, tools), CHAT_PROMPT)
        if plain_content:
            return self.prefix + (self._sp.encode(prompt) if prompt else [])
        return self.encode(prompt)

    def parse_reply(self, ids: Sequence[int], tools: Sequence[Tool] | None = None) -> ChatReply:
        """``process_response``: the decoded text, stripped, with the training-time placeholder filled in."""
        return ChatReply(content=clean_reply_text(self.decode(ids)))


class ChatGLM3Tokenizer(SentencePieceGLMTokenizer):
    """ChatGLM3-6B: role tokens, metadata lines, tools in the system turn; stop at eos, ``<|user|>`` or
    ``<|observation|>`` (``chat()``'s list)."""

    specials = CHATGLM3_SPECIALS
    release = "ChatGLM3"
    names_specials = True

    def _stop_ids(self) -> tuple[int, ...]:
        return (self.eos_id, self.special_ids["<|user|>"], self.special_ids["<|observation|>"])

    def apply_chat_template(
        self,
        messages: Sequence[Message],
        tools: Sequence[Tool] | None = None,
        add_generation_prompt: bool = True,
        plain_content: bool = False,
    ) -> list[int]:
        """``build_chat_input``: the prefix, each turn as role token + metadata line + content, then
        ``<|assistant|>``. Content is always encoded as plain SentencePiece text (see the module docstring)."""
        ids = self.prefix
        for turn in chatglm3_turns(messages, tools):
            check_text(turn.metadata + turn.content, f"the {turn.role} turn")
            ids.append(self.special_ids[f"<|{turn.role}|>"])
            ids.extend(self._sp.encode(turn.metadata + "\n"))
            ids.extend(self._sp.encode(turn.content) if turn.content else [])
        if add_generation_prompt:
            ids.append(self.special_ids["<|assistant|>"])
        return ids

    def parse_reply(self, ids: Sequence[int], tools: Sequence[Tool] | None = None) -> ChatReply:
        """``process_response`` on the decoded reply, with ``tool_call(...)`` parsed safely when tools were
        offered."""
        return parse_chatglm3_reply(self.decode(ids), tools)
