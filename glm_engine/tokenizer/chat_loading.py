"""Finding and loading a GLM release's chat tokenizer from local files; glm-engine never downloads anything.

``release`` says which tokenizer a folder holds (a family knows it from its config, see :data:`RELEASES`):

* ``"chatglm2"``, ``"chatglm3"``: ``tokenizer.model`` (SentencePiece) and, when present, ``tokenizer_config.json``
  (its added tokens);
* ``"glm4"``: GLM-4's remote-code folder: ``tokenizer.model`` (tiktoken ranks as text), ``tokenizer_config.json``
  (added tokens, chat template), ``config.json``'s ``eos_token_id`` list as the stop ids;
* ``"hf"``: a transformers-native folder: ``tokenizer.json``, ``tokenizer_config.json``, the stop ids from
  ``generation_config.json`` or ``config.json``.

The packages each needs (sentencepiece for ChatGLM2/3; tiktoken and jinja2 for GLM-4; tokenizers and jinja2 for
native folders) are imported only when that release is loaded, and a missing one is a
:class:`MissingDependencyError` naming it.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from glm_engine.errors import InputError, MissingDependencyError, TokenizerError
from glm_engine.tokenizer.chat_tokenizer import ChatTokenizer

ASSETS = Path(__file__).resolve().parent.parent / "assets"
# Small stand-ins for tests and random-weight presets (tools/make_test_tokenizer.py, make_glm4_tiny_tokenizer.py):
# the 4000-piece SentencePiece model for ChatGLM2/3 (specials from 4000) and 4000-rank GLM-4 folders (specials
# 4000..4013) in the remote and the native layout, with the same ids.
# Files beside the main one that a tokenizer reads (what an export copies with it; config.json is the model's).
COMPANION_FILES = ("tokenizer_config.json", "chat_template.jinja", "generation_config.json", "special_tokens_map.json")
TINY_SENTENCEPIECE_MODEL = ASSETS / "test_tokenizer" / "ice_text.model"
TINY_GLM4_TOKENIZER = ASSETS / "glm4_tiny_tokenizer"
TINY_GLM4_HF_TOKENIZER = ASSETS / "glm4_tiny_hf_tokenizer"

TOKENIZER_MODEL = "tokenizer.model"
TOKENIZER_JSON = "tokenizer.json"
REMOTE_TOKENIZER_CODE = "tokenization_chatglm.py"
# Strings whose presence tells the releases apart (chatglm.cpp's convert.py uses the same two signs).
CHATGLM3_SIGN = "<|observation|>"
# The first bytes of a SentencePiece model (a protobuf: field 1, length-delimited).
SENTENCEPIECE_MAGIC = b"\n"
# release -> (module, class, the packages its module needs, the file a folder must hold)
RELEASES: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "chatglm2": ("glm_engine.tokenizer.chatglm2", "ChatGLM2Tokenizer", ("sentencepiece",), TOKENIZER_MODEL),
    "chatglm3": ("glm_engine.tokenizer.chatglm2", "ChatGLM3Tokenizer", ("sentencepiece",), TOKENIZER_MODEL),
    "glm4": ("glm_engine.tokenizer.glm4_tiktoken", "GLM4TiktokenTokenizer", ("tiktoken", "jinja2"), TOKENIZER_MODEL),
    "hf": ("glm_engine.tokenizer.hf_json", "HFJsonTokenizer", ("tokenizers", "jinja2"), TOKENIZER_JSON),
}


def _tokenizer_class(release: str) -> type[ChatTokenizer]:
    module_name, class_name, packages, _ = RELEASES[release]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name in packages:
            raise MissingDependencyError(
                f"the {release} tokenizer needs the '{exc.name}' package: pip install {exc.name}"
            ) from exc
        raise
    return getattr(module, class_name)


def _locate(path: Path, release: str) -> tuple[Path, Path]:
    """(the tokenizer file, its folder) for ``path`` (a folder or the file itself)."""
    wanted = RELEASES[release][3]
    file = path / wanted if path.is_dir() else path
    if not file.is_file():
        raise TokenizerError(
            f"no {wanted} at {file}: the {release} tokenizer reads the release's own {wanted} "
            "(glm-engine never downloads files; copy the model folder from its release, with its tokenizer files)"
        )
    return file, file.parent


def load_chat_tokenizer(folder_or_file: str | Path, release: str) -> ChatTokenizer:
    """The chat tokenizer of ``release`` from a model folder (or the tokenizer file itself)."""
    if release not in RELEASES:
        raise InputError(f"unknown tokenizer release {release!r}; use one of {sorted(RELEASES)}")
    file, folder = _locate(Path(folder_or_file), release)
    tokenizer = _tokenizer_class(release).from_files(file, folder)
    # by the names the release gives them (the tiny presets' SentencePiece model is ice_text.model on disk)
    tokenizer.files = {RELEASES[release][3]: file}
    tokenizer.files.update({name: folder / name for name in COMPANION_FILES if (folder / name).is_file()})
    return tokenizer


def _is_rank_file(path: Path) -> bool:
    """Whether ``tokenizer.model`` is GLM-4's text rank file rather than a SentencePiece protobuf."""
    with path.open("rb") as f:
        head = f.read(256)
    first_line = head.split(b"\n", 1)[0].split()
    return not head.startswith(SENTENCEPIECE_MAGIC) and len(first_line) == 2 and first_line[1].isdigit()


def detect_release(folder: str | Path) -> str:
    """Which release's tokenizer a model folder holds, from its files alone (no remote code is run):

    * ``tokenizer.model`` as text ranks: ``"glm4"``;
    * a SentencePiece ``tokenizer.model``: ``"chatglm3"`` when ``tokenization_chatglm.py`` or
      ``tokenizer_config.json`` mentions ``<|observation|>`` (ChatGLM3's role tokens), ``"chatglm2"`` when the
      tokenizer code is there without it;
    * only a ``tokenizer.json``: ``"hf"``.

    A folder that fits none of these is a :class:`TokenizerError` saying what was looked for.
    """
    folder = Path(folder)
    model = folder / TOKENIZER_MODEL
    if model.is_file():
        if _is_rank_file(model):
            return "glm4"
        code, config = folder / REMOTE_TOKENIZER_CODE, folder / "tokenizer_config.json"
        texts = [path.read_text(encoding="utf-8", errors="replace") for path in (code, config) if path.is_file()]
        if any(CHATGLM3_SIGN in text for text in texts):
            return "chatglm3"
        if code.is_file():
            return "chatglm2"
        raise TokenizerError(
            f"{folder} has a SentencePiece {TOKENIZER_MODEL} but no {REMOTE_TOKENIZER_CODE}, so ChatGLM2 and ChatGLM3 "
            "cannot be told apart; restore that file from the release or name the release"
        )
    if (folder / TOKENIZER_JSON).is_file():
        return "hf"
    raise TokenizerError(
        f"{folder} holds neither {TOKENIZER_MODEL} nor {TOKENIZER_JSON}: it is not a ChatGLM2/3, GLM-4 or native GLM "
        "folder with its tokenizer (glm-engine never downloads files; copy them from the release)"
    )
