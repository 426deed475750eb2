"""Train the small bilingual SentencePiece model shipped as ``glm_engine/assets/test_tokenizer/ice_text.model``.

The model stands in for icetk's ``ice_text.model`` (130,000 pieces, not redistributable here) in tests and demos.
It is laid out like icetk's text model so that the same +20000 offset and special ids apply:

* id 0 ``<unk>``, 1 ``<s>``, 2 ``</s>`` (so eos maps to 20002), 3 ``<pad>`` (icetk's README: ``icetk[20000] ==
  '<unk>'``, ``icetk[20003] == '<pad>'``), then ``<n>`` as a user-defined piece at id 4 (icetk turns ``\\n`` into
  ``<n>`` when ``ignore_linebreak=False`` and back in ``decode``; its exact id in icetk's model is an inference).
* unigram model, ``nmt_nfkc`` normalizer, dummy prefix and whitespace folding (SentencePiece defaults, so ``\\n`` is
  folded to a space when encoding, as icetk's README shows), no byte fallback, full character coverage.

Corpus (bilingual, offline):

1. ``SEED_TEXT`` below: English and Chinese sentences written for this project (same licence as glm-engine).
2. PostgreSQL 15's Simplified Chinese message catalogs: every English ``msgid`` and Chinese ``msgstr`` of the
   ``*-15.mo`` files listed in ``CATALOGS`` under ``/usr/share/locale/zh_CN/LC_MESSAGES``. They come from the Debian
   packages ``postgresql-15``, ``postgresql-client-15`` and ``libpq5`` (version 15.18-0+deb12u1 produced the
   committed model) and are under the PostgreSQL Licence (a permissive BSD/MIT-style licence). Without installing
   PostgreSQL: ``apt-get download postgresql-15 postgresql-client-15 libpq5``, ``dpkg-deb -x`` each into DIR, then
   pass ``--catalog-dir DIR/usr/share/locale/zh_CN/LC_MESSAGES``.

Deterministic: fixed corpus order, fixed seed, one thread. The script prints the corpus SHA-256 and warns when it
differs from ``CORPUS_SHA256`` (other catalog versions give a similar but not byte-identical model). It writes the
model to a temporary name next to the output and renames it only on success.

Usage: ``python tools/make_test_tokenizer.py [--catalog-dir DIR] [--output PATH]``
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import struct
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "glm_engine" / "assets" / "test_tokenizer" / "ice_text.model"
DEFAULT_CATALOG_DIR = Path("/usr/share/locale/zh_CN/LC_MESSAGES")
CATALOGS = (
    "initdb-15.mo",
    "libpq5-15.mo",
    "pg_amcheck-15.mo",
    "pg_archivecleanup-15.mo",
    "pg_config-15.mo",
    "pg_controldata-15.mo",
    "pg_ctl-15.mo",
    "pg_dump-15.mo",
    "pg_resetwal-15.mo",
    "pg_rewind-15.mo",
    "pg_test_timing-15.mo",
    "pg_upgrade-15.mo",
    "pg_verifybackup-15.mo",
    "pgscripts-15.mo",
    "plpgsql-15.mo",
    "postgres-15.mo",
    "psql-15.mo",
)
# SHA-256 of the assembled corpus that produced the committed model (Debian postgresql-15 15.18-0+deb12u1).
CORPUS_SHA256 = "6557df8aaf3619b760f1cc179f21d13cd8b9946bb063b2c4b7177271d06617dc"
VOCAB_SIZE = 4000
SEED = 20000
TRAINER_OPTIONS = {
    "model_type": "unigram",
    "vocab_size": VOCAB_SIZE,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": 3,
    "unk_piece": "<unk>",
    "bos_piece": "<s>",
    "eos_piece": "</s>",
    "pad_piece": "<pad>",
    "user_defined_symbols": ["<n>"],
    "normalization_rule_name": "nmt_nfkc",
    "add_dummy_prefix": True,
    "remove_extra_whitespaces": True,
    "byte_fallback": False,
    "character_coverage": 1.0,
    "input_sentence_size": 0,
    "shuffle_input_sentence": False,
    "max_sentence_length": 8192,
    "num_threads": 1,
    "minloglevel": 2,
}

SEED_TEXT = """\
Hello World! This is a small tokenizer for testing the GLM inference engine.
The quick brown fox jumps over the lazy dog.
A language model predicts the next token from the tokens before it.
GLM fills in blanks: a [MASK] token marks a short span and [gMASK] asks for a long continuation.
The tokenizer maps every SentencePiece id to the same id plus an offset of twenty thousand.
Tsinghua University is in Beijing, the capital of China.
Today the weather is good, so we will go for a walk in the park.
Please answer the question below in one sentence.
The model was trained on English and Chinese text, about four hundred billion tokens in all.
Numbers such as 1, 2, 3, 10, 100, 2048 and 130 billion appear in the documentation.
What is the meaning of life? Forty-two, according to a famous novel.
Machine learning, deep learning, neural networks, attention, transformers and inference.
Write a short poem about the moon, the sea, the mountains and the wind.
The engine loads the checkpoint, builds the model, and generates text one token at a time.
你好，世界！这是一个用来测试 GLM 推理引擎的小型分词器。
今天天气很好，我们一起去公园散步吧。
清华大学位于中国的首都北京。
语言模型根据前面的词预测下一个词。
请用一句话回答下面的问题。
这个模型在中文和英文文本上进行了训练，共有四千亿个词元。
机器学习、深度学习、神经网络、注意力机制和大规模预训练模型。
中国的首都是北京，上海是中国最大的城市之一。
我喜欢读书、写字、听音乐和看电影。
春天来了，花开了，小鸟在树上唱歌。
他说：“明天见！”她笑着点了点头。
人工智能正在改变我们的生活和工作方式。
一二三四五六七八九十，百千万亿。
山高水长，月明星稀，风清云淡。
请写一首关于月亮、大海、高山和风的短诗。
这里是 icetk 的测试文本。
GLM 是一个开源的中英双语预训练语言模型。
引擎加载检查点，构建模型，然后逐个生成词元。
"""


def read_mo(path: Path) -> list[tuple[str, str]]:
    """Return the (msgid, msgstr) pairs of a GNU gettext ``.mo`` file, in file order, header entry skipped."""
    data = path.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic == 0x950412DE else ">"
    if struct.unpack(endian + "I", data[:4])[0] != 0x950412DE:
        raise ValueError(f"{path} is not a gettext .mo file")
    _, count, orig_off, trans_off = struct.unpack(endian + "4I", data[4:20])
    pairs = []
    for i in range(count):
        olen, opos = struct.unpack(endian + "2I", data[orig_off + 8 * i : orig_off + 8 * i + 8])
        tlen, tpos = struct.unpack(endian + "2I", data[trans_off + 8 * i : trans_off + 8 * i + 8])
        msgid = data[opos : opos + olen].decode("utf-8")
        msgstr = data[tpos : tpos + tlen].decode("utf-8")
        if msgid:
            pairs.append((msgid, msgstr))
    return pairs


def build_corpus(catalog_dir: Path) -> list[str]:
    """Seed text, then each catalog's msgid/msgstr lines (plural forms split on NUL), blank lines dropped."""
    missing = [name for name in CATALOGS if not (catalog_dir / name).is_file()]
    if missing:
        raise SystemExit(
            f"missing PostgreSQL 15 zh_CN catalogs in {catalog_dir}: {', '.join(missing)}. Install the Debian packages "
            "postgresql-15, postgresql-client-15 and libpq5, or extract them with dpkg-deb -x and pass --catalog-dir."
        )
    lines = SEED_TEXT.splitlines()
    for name in CATALOGS:
        for msgid, msgstr in read_mo(catalog_dir / name):
            for text in (*msgid.split("\0"), *msgstr.split("\0")):
                lines.extend(text.splitlines())
    return [line.strip() for line in lines if line.strip()]


def train(lines: list[str]) -> bytes:
    """Train the model on ``lines`` with the fixed options and return the serialized model."""
    spm.set_random_generator_seed(SEED)
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=writer, **TRAINER_OPTIONS)
    return writer.getvalue()


def check(model: bytes) -> None:
    """Fail unless the reserved pieces sit at icetk's ids."""
    sp = spm.SentencePieceProcessor(model_proto=model)
    expected = {0: "<unk>", 1: "<s>", 2: "</s>", 3: "<pad>", 4: "<n>"}
    got = {i: sp.id_to_piece(i) for i in expected}
    if got != expected or sp.get_piece_size() != VOCAB_SIZE:
        raise SystemExit(f"unexpected layout {got}, {sp.get_piece_size()} pieces")


def write_atomically(data: bytes, output: Path) -> None:
    """Write ``data`` to a temporary file beside ``output`` and rename it into place."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=output.name + ".", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog-dir", type=Path, default=DEFAULT_CATALOG_DIR)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    lines = build_corpus(args.catalog_dir)
    digest = hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
    print(f"corpus: {len(lines)} lines, {sum(map(len, lines))} characters, sha256 {digest}")
    if digest != CORPUS_SHA256:
        print("warning: corpus differs from the one that produced the committed model", file=sys.stderr)
    model = train(lines)
    check(model)
    write_atomically(model, args.output)
    print(f"wrote {args.output} ({len(model)} bytes, {VOCAB_SIZE} pieces)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
