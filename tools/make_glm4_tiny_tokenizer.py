"""Train the tiny GLM-4-style tokenizer shipped in ``glm_engine/assets/glm4_tiny_tokenizer/`` (remote-code layout)
and ``glm_engine/assets/glm4_tiny_hf_tokenizer/`` (transformers' native layout) for tests and random-weight presets.

GLM-4's real tokenizer (151,329 byte-level BPE ranks) is large and not redistributable here; this one has the same
shape at 4000 ranks:

* **Ranks**: the 256 single bytes (rank = byte value), then 3744 merges learnt by byte-pair encoding on text already
  in this repository, read from git at ``CORPUS_COMMIT`` so the result never drifts: the README, ``docs/``, the
  example evaluation tasks (written for glm-engine; the classical poem lines they quote are public domain) and a few
  of the project's own Python files (for code). Text is pre-split with GLM-4's split pattern, as at encoding time.
  Ties between equally frequent pairs go to the smaller (left bytes, right bytes), so training is deterministic.
* **Remote layout**: ``tokenizer.model`` holds one ``base64(bytes) rank`` line per rank, as GLM-4's file does; the
  14 specials follow at 4000..4013 in the release's order, listed in ``tokenizer_config.json`` as added special
  tokens, with the glm-4-9b-chat chat template (its "ChatGLM" wording) so prompts render as that release renders
  them.
* **Native layout**: the same ranks as a ``tokenizer.json`` for the ``tokenizers`` package: byte-level BPE whose
  merges list every split of every token into two tokens, ordered by the token's rank (so merging lowest-index pairs
  first equals tiktoken's lowest-rank-first rule), ``ignore_merges`` (tiktoken takes a pre-split piece that is itself
  a rank as one token), GLM-4's split regex then byte-level mapping, the specials at the same ids, and a
  ``[gMASK] <sop>`` prefix when special tokens are added, as transformers' GLM converter writes it; and a
  ``generation_config.json`` with the three stop ids, as the -hf releases have.

The script checks that tiktoken and ``tokenizers`` give the same ids on the whole corpus and on mixed samples
before writing; files are written to temporary names and renamed into place.

Usage: ``python tools/make_glm4_tiny_tokenizer.py [--output-root DIR]``
"""

from __future__ import annotations

import argparse
import base64
import heapq
import itertools
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import regex

from glm_engine.tokenizer.glm4_tiktoken import GLM4_SPECIALS as SPECIALS  # the release's, in id order
from glm_engine.tokenizer.glm4_tiktoken import SPLIT_PATTERN

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT_ROOT = REPO_ROOT / "glm_engine" / "assets"
REMOTE_FOLDER = "glm4_tiny_tokenizer"
NATIVE_FOLDER = "glm4_tiny_hf_tokenizer"
# The commit whose files are the training text (so the ranks never change when the docs do).
CORPUS_COMMIT = "5e9ea657310075e04087df860050b026ff0a2253"
CORPUS_PATHS = (
    "README.md",
    "docs/README.md",
    "docs/architecture.md",
    "docs/backends.md",
    "docs/checkpoints.md",
    "docs/cli.md",
    "docs/evaluation.md",
    "docs/families.md",
    "docs/glm-semantics.md",
    "docs/python-api.md",
    "docs/quantization.md",
    "glm_engine/assets/eval_tasks/gen/blanks.jsonl",
    "glm_engine/assets/eval_tasks/gen/continuations.jsonl",
    "glm_engine/assets/eval_tasks/gen/lambada/last_words.jsonl",
    "glm_engine/assets/eval_tasks/lm/fortunes.txt",
    "glm_engine/assets/eval_tasks/lm/pile_like.jsonl",
    "glm_engine/assets/eval_tasks/mul/en/questions.jsonl",
    "glm_engine/assets/eval_tasks/mul/en/sayings.jsonl",
    "glm_engine/assets/eval_tasks/mul/zh/poems.jsonl",
    "glm_engine/generation/chat.py",
    "glm_engine/tokenizer/chatglm.py",
    "tools/make_test_tokenizer.py",
)
NUM_RANKS = 4000
# GLM-4's split pattern (tokenization_chatglm.py of the remote release).
# glm-4-9b-chat's chat_template (tokenizer_config.json), its first ("ChatGLM") wording. Tool texts kept as released.
GLM4_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for item in messages %}{% if item['tools'] is defined %}<|system|>\n"
    "你是一个名为 ChatGLM 的人工智能助手。"
    "你是基于智谱AI训练的语言模型 GLM-4 模型开发的，你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具"
    "{% set tools = item['tools'] %}{% for tool in tools %}{% if tool['type'] == 'function' %}\n\n"
    "## {{ tool['function']['name'] }}\n\n{{ tool['function'] | tojson(indent=4) }}\n"
    "在调用上述函数时，请使用 Json 格式表示调用的参数。{% elif tool['type'] == 'python' %}\n\n## python\n\n"
    "当你向 `python` 发送包含 Python 代码的消息时，该代码将会在一个有状态的 Jupyter notebook 环境中执行。\n"
    "`python` 返回代码执行的输出，或在执行 60 秒后返回超时。\n`/mnt/data` 将会持久化存储你的文件。在此会话中，"
    "`python` 无法访问互联网。不要使用 `python` 进行任何网络请求或者在线 API 调用，这些在线内容的访问将不会成功。"
    "{% elif tool['type'] == 'simple_browser' %}\n\n## simple_browser\n\n你可以使用 `simple_browser` 工具。"
    "该工具支持以下函数：\n`search(query: str, recency_days: int)`：使用搜索引擎进行查询并显示结果，"
    "可以使用 `recency_days` 参数控制搜索内容的时效性。\n`mclick(ids: list[int])`：获取一系列指定 id 的页面内容。"
    "每次调用时，须选择3-10个页面。选择多个角度的页面，同时尽可能选择可信任的信息来源。"
    "考虑到部分页面是无法加载的，你也可以多打开一些可能有用的页面而不用担心内容过多。\n"
    "`open_url(url: str)`：打开指定的 URL。\n\n使用 `【{引用 id}†{引用文本}】` 来引用内容。\n\n"
    "操作步骤：1. 使用 `search` 来获得信息列表; 2. 使用 `mclick` 来获取指定 ID 页面的内容; "
    "3. 根据获得的内容进行回复。在回复中应当引用信息来源。\n 如果用户提供了 URL，也可以用 `open_url` 直接打开页面。\n"
    "如果初次搜索结果没有找到合适的信息，也可以再次使用 `search` 进行搜索。{% elif tool['type'] == 'cogview' %}\n\n"
    "## cogview\n\n如果用户的请求中包含了对图像的描述，你可以使用 `cogview` 来生成图像并展示给用户。"
    "你需要向 `cogview` 发送图像描述，规则：\n- 发送给 `cogview` 的消息必须使用英语。"
    "用户的中文描述必须完全翻译为英语。\n"
    "- 应当尽可能详细地描述图像生成的需求，需求描述约 100 英文单词。\n"
    "- 保持用户原始描述的意图。不要虚构内容或者没见过的人物。\n"
    "- 如无特殊说明，所在地为中国，持有中国立场并遵循中国社会主义价值观。{% endif %}{% endfor %}{% endif %}"
    "{% if item['content'] %}<|{{ item['role'] }}|>{{ item['metadata'] }}\n{{ item['content'] }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
NOTICE = """\
The tokenizer files in this folder were made by tools/make_glm4_tiny_tokenizer.py: a 4000-rank byte-level BPE
trained on glm-engine's own documentation, example evaluation texts and source files (Apache-2.0, as glm-engine;
the classical Chinese poem lines quoted in the examples are public domain), laid out like GLM-4's tokenizer with
its 14 special tokens at ids 4000-4013. tokenizer_config.json carries the chat template of THUDM's glm-4-9b-chat
release so that prompts render as that release renders them.
"""
MIXED_SAMPLES = (
    "Hello, world! GLM-4 fills [MASK] blanks; 你好，世界！今天天气很好。",
    "def f(x):\n    return x ** 2  # squares\n\n\tindented\r\nline   with   runs     of spaces   \n\n\n",
    "emoji 😀🎉 and accents café naïve, numbers 1234567 3.14159, URLs https://example.com/a?b=c",
    "typed specials <|user|> [gMASK] <sop> stay as text in the ordinary encoding",
    "I'm sure they'll say it's fine; WE'VE DONE IT'S",
)


def read_corpus(commit: str) -> list[str]:
    """The training files' text at ``commit``, in ``CORPUS_PATHS`` order."""
    texts = []
    for path in CORPUS_PATHS:
        shown = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "show", f"{commit}:{path}"], capture_output=True, check=False
        )
        if shown.returncode != 0:
            raise SystemExit(f"cannot read {path} at {commit}: {shown.stderr.decode().strip()}")
        texts.append(shown.stdout.decode("utf-8"))
    return texts


def word_counts(texts: Iterable[str]) -> Counter[bytes]:
    """How often each pre-split piece (as UTF-8 bytes) occurs."""
    pattern = regex.compile(SPLIT_PATTERN)
    counts: Counter[bytes] = Counter()
    for text in texts:
        counts.update(piece.encode("utf-8") for piece in pattern.findall(text))
    return counts


class PairStats:
    """Pair counts over the corpus's words, updated in place as merges are applied.

    A heap of (-count, pair) entries finds the best pair; every count change pushes a fresh entry and stale ones are
    skipped when popped.
    """

    def __init__(self, counts: Counter[bytes]) -> None:
        words = sorted(counts)
        self.words = [[bytes([b]) for b in word] for word in words]
        self.freq = [counts[word] for word in words]
        self.pairs: Counter[tuple[bytes, bytes]] = Counter()
        self.where: dict[tuple[bytes, bytes], set[int]] = {}
        self.heap: list[tuple[int, tuple[bytes, bytes]]] = []
        for index, word in enumerate(self.words):
            self._add(index, word, +1)

    def _add(self, index: int, word: list[bytes], sign: int) -> None:
        touched = set()
        for pair in itertools.pairwise(word):
            self.pairs[pair] += sign * self.freq[index]
            touched.add(pair)
            if sign > 0:
                self.where.setdefault(pair, set()).add(index)
        for pair in touched:
            if self.pairs[pair] > 0:
                heapq.heappush(self.heap, (-self.pairs[pair], pair))

    def best(self) -> tuple[bytes, bytes] | None:
        """The most frequent pair (ties: smallest bytes), or None when no pair is left."""
        while self.heap:
            negative, pair = heapq.heappop(self.heap)
            if self.pairs.get(pair, 0) == -negative and -negative > 0:
                return pair
        return None

    def merge(self, pair: tuple[bytes, bytes]) -> None:
        """Join every occurrence of ``pair`` into one symbol and update the counts."""
        for index in sorted(self.where.pop(pair, set())):
            word = self.words[index]
            self._add(index, word, -1)
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            self.words[index] = merged
            self._add(index, merged, +1)


def train_ranks(counts: Counter[bytes], num_ranks: int) -> dict[bytes, int]:
    """Byte ranks 0..255, then one rank per new token in merge order, up to ``num_ranks``."""
    ranks = {bytes([b]): b for b in range(256)}
    stats = PairStats(counts)
    while len(ranks) < num_ranks:
        pair = stats.best()
        if pair is None:
            raise SystemExit(f"the corpus ran out of pairs at {len(ranks)} ranks; add text")
        stats.merge(pair)
        ranks.setdefault(pair[0] + pair[1], len(ranks))
    return ranks


def byte_to_unicode() -> dict[int, str]:
    """The byte-level alphabet: printable Latin-1 bytes stand for themselves, the rest map to 256 + n."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in kept:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def hf_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every split of every multi-byte token into two tokens, by the token's rank, then the parts' ranks."""
    merges = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return [(left, right) for *_, left, right in merges]


def native_tokenizer_json(ranks: dict[bytes, int]) -> str:
    """The ranks as a ``tokenizers`` byte-level BPE with GLM-4's pre-tokenization and specials."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    table = byte_to_unicode()

    def name(token: bytes) -> str:
        return "".join(table[b] for b in token)

    vocab = {name(token): rank for token, rank in ranks.items()}
    merges = [(name(left), name(right)) for left, right in hf_merges(ranks)]
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    first = len(ranks)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[gMASK]:0 <sop>:0 $A:0",
        pair="[gMASK]:0 <sop>:0 $A:0 $B:1",
        special_tokens=[("[gMASK]", first + SPECIALS.index("[gMASK]")), ("<sop>", first + SPECIALS.index("<sop>"))],
    )
    for offset, special in enumerate(SPECIALS):
        if tokenizer.token_to_id(special) != first + offset:
            raise SystemExit(f"{special} landed at {tokenizer.token_to_id(special)}, not {first + offset}")
    return tokenizer.to_str(pretty=False)


def tokenizer_config(first_special: int, native: bool) -> dict:
    """``tokenizer_config.json``: the specials as added tokens, eos/pad, padding side and the chat template."""
    added = {
        str(first_special + i): {
            "content": special,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, special in enumerate(SPECIALS)
    }
    config = {
        "added_tokens_decoder": added,
        "additional_special_tokens": list(SPECIALS),
        "chat_template": GLM4_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "do_lower_case": False,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 128000,
        "padding_side": "left",
        "remove_space": False,
        "tokenizer_class": "PreTrainedTokenizerFast" if native else "ChatGLM4Tokenizer",
    }
    if native:
        del config["additional_special_tokens"]  # the native folders name their specials in added_tokens_decoder
    return config


def generation_config(first_special: int) -> dict:
    """``generation_config.json`` of the native folders: the three stop ids and the pad id."""
    stops = [first_special + SPECIALS.index(name) for name in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    return {"eos_token_id": stops, "pad_token_id": first_special + SPECIALS.index("<|endoftext|>")}


def rank_file(ranks: dict[bytes, int]) -> str:
    return "".join(f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranks.items())


def verify(ranks: dict[bytes, int], tokenizer_json: str, texts: list[str]) -> None:
    """tiktoken over the ranks and ``tokenizers`` over the JSON give the same ids on every line, both with the
    specials split out and with them encoded as text."""
    import tiktoken
    from tokenizers import Tokenizer

    specials = {special: len(ranks) + i for i, special in enumerate(SPECIALS)}
    encoding = tiktoken.Encoding("glm4-tiny", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    native, plain = Tokenizer.from_str(tokenizer_json), Tokenizer.from_str(tokenizer_json)
    plain.encode_special_tokens = True
    for text in [*texts, *MIXED_SAMPLES]:
        for line in text.splitlines(keepends=True) or [text]:
            pairs = (
                (encoding.encode(line, allowed_special="all"), native.encode(line, add_special_tokens=False).ids),
                (encoding.encode_ordinary(line), plain.encode(line, add_special_tokens=False).ids),
            )
            for expected, got in pairs:
                if expected != got:
                    raise SystemExit(f"tiktoken and tokenizers disagree on {line!r}: {expected} vs {got}")


def write_atomically(data: str, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=output.name + ".", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-root", type=Path, default=DEFAULT_OUTPUT_ROOT)
    args = parser.parse_args(argv)

    texts = read_corpus(CORPUS_COMMIT)
    ranks = train_ranks(word_counts(texts), NUM_RANKS)
    tokenizer_json = native_tokenizer_json(ranks)
    verify(ranks, tokenizer_json, texts)

    remote, native = args.output_root / REMOTE_FOLDER, args.output_root / NATIVE_FOLDER
    files = {
        remote / "tokenizer.model": rank_file(ranks),
        remote / "tokenizer_config.json": json.dumps(tokenizer_config(len(ranks), False), ensure_ascii=False, indent=2),
        remote / "NOTICE": NOTICE,
        native / "tokenizer.json": tokenizer_json,
        native / "tokenizer_config.json": json.dumps(tokenizer_config(len(ranks), True), ensure_ascii=False, indent=2),
        native / "generation_config.json": json.dumps(generation_config(len(ranks)), indent=2),
        native / "NOTICE": NOTICE,
    }
    for path, data in files.items():
        write_atomically(data if data.endswith("\n") else data + "\n", path)
        print(
            f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path} ({path.stat().st_size} B)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
