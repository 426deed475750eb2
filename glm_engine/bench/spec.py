"""Bench specs: test names (``pp512``, ``tg128``, ``pg512,128``), parameter lists, and their Cartesian product.

Every parameter takes a list, given comma-separated and/or by repeating the flag, as llama-bench does; the plan is
the product of all lists. ``pg`` takes two lengths, so in a comma-separated list the number after ``pg<N>`` is its
generation length: ``pp512,tg128,pg512,128`` is three tests.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from enum import Enum

from glm_engine.errors import InputError
from glm_engine.quant.spec import QuantSpec

_TEST = re.compile(r"^(pp|tg|pg)(\d+)$")


class Kind(str, Enum):
    PREFILL = "pp"
    GENERATE = "tg"
    COMBINED = "pg"


@dataclass(frozen=True)
class TestSpec:
    """One test: ``n_prompt`` tokens prefilled in one forward, then ``n_gen`` single-token decode steps."""

    __test__ = False  # not a pytest class, despite the name

    kind: Kind
    n_prompt: int
    n_gen: int

    @property
    def name(self) -> str:
        if self.kind is Kind.PREFILL:
            return f"pp{self.n_prompt}"
        if self.kind is Kind.GENERATE:
            return f"tg{self.n_gen}"
        return f"pp{self.n_prompt}+tg{self.n_gen}"


def split_values(values: Iterable[str] | None) -> list[str]:
    """Repeated flags and comma-separated lists as one flat list of stripped, non-empty items."""
    return [item.strip() for value in values or () for item in str(value).split(",") if item.strip()]


def parse_tests(values: Iterable[str] | None) -> list[TestSpec]:
    """``pp<N>``, ``tg<N>`` and ``pg<N>,<M>`` (also ``pg<N>:<M>``) with N, M >= 1, in the given order, each once."""
    items = split_values(values)
    tests: list[TestSpec] = []
    i = 0
    while i < len(items):
        item = items[i].replace(":", ",")
        head, _, tail = item.partition(",")
        match = _TEST.match(head)
        if match is None:
            raise InputError(f"unknown test {items[i]!r}; write pp<N> (prefill), tg<N> (generate) or pg<N>,<M>")
        kind, n = Kind(match.group(1)), int(match.group(2))
        if n < 1:
            raise InputError(f"test {items[i]!r}: lengths must be at least 1")
        if kind is not Kind.COMBINED:
            tests.append(TestSpec(kind, n if kind is Kind.PREFILL else 0, n if kind is Kind.GENERATE else 0))
            i += 1
            continue
        if not tail:  # the generation length is the next comma-separated item
            if i + 1 >= len(items) or not items[i + 1].isdigit():
                raise InputError(f"test {items[i]!r} needs a generation length too: pg<N>,<M> (e.g. pg512,128)")
            tail, i = items[i + 1], i + 1
        if not tail.isdigit() or int(tail) < 1:
            raise InputError(f"test {items[i]!r}: the generation length of pg<N>,<M> must be an integer >= 1")
        tests.append(TestSpec(kind, n, int(tail)))
        i += 1
    if not tests:
        raise InputError("no tests given; e.g. --test pp128,tg32")
    return list(dict.fromkeys(tests))  # a test given twice runs once


def parse_ints(values: Iterable[str] | None, flag: str, minimum: int) -> list[int]:
    """A list of integers >= ``minimum`` (duplicates dropped, order kept)."""
    out: list[int] = []
    for item in split_values(values):
        if not re.fullmatch(r"\d+", item) or int(item) < minimum:
            raise InputError(f"{flag} takes integers >= {minimum}, got {item!r}")
        if int(item) not in out:
            out.append(int(item))
    return out


@dataclass(frozen=True)
class QuantChoice:
    """Weight format of one point: ``bits`` 0 for floating point, else 4 or 8 with a scheme and group size."""

    bits: int = 0
    group_size: int | None = None
    output: bool = False  # the output projection quantized too (--quant-output)

    @property
    def name(self) -> str:
        if not self.bits:
            return "none"
        scheme = "rowwise" if self.group_size is None else f"g{self.group_size}"
        return f"int{self.bits}-{scheme}" + ("+out" if self.output else "")

    def load_args(self) -> dict[str, object]:
        """The quantization keywords of ``glm_engine.load`` / ``load_chatglm``."""
        if not self.bits:
            return {}
        return {
            "quant": f"int{self.bits}",
            "quant_scheme": "rowwise" if self.group_size is None else "groupwise",
            "quant_group_size": self.group_size,
            "quant_output": self.output,
        }


_BOOL = {"on": True, "yes": True, "true": True, "1": True, "off": False, "no": False, "false": False, "0": False}


def parse_quant(
    quants: Sequence[str], schemes: Sequence[str], group_sizes: Sequence[str], outputs: Sequence[str]
) -> list[QuantChoice]:
    """The product of ``--quant`` (none, int8, int4), ``--quant-scheme``, ``--quant-group-size`` and
    ``--quant-output`` (off/on); floating point ignores the rest and rowwise ignores group sizes, so no duplicate
    points. Every quantized combination is checked with the engine's own rules (``QuantSpec.parse``)."""
    names = split_values(quants) or ["none"]
    scheme_names = split_values(schemes) or ["rowwise"]
    sizes = [int(s) for s in parse_ints(group_sizes, "--quant-group-size", 1)] or [None]
    output_words = split_values(outputs) or ["off"]
    unknown = [w for w in output_words if w.lower() not in _BOOL]
    if unknown:
        raise InputError(f"--quant-output takes off/on, got {', '.join(unknown)}")
    output_flags = list(dict.fromkeys(_BOOL[w.lower()] for w in output_words))
    choices: list[QuantChoice] = []
    for name, scheme, size, output in itertools.product(names, scheme_names, sizes, output_flags):
        if name.lower() in ("none", "off", "fp"):
            choice = QuantChoice()
        else:
            spec = QuantSpec.parse(name, scheme, size if scheme == "groupwise" else None)
            choice = QuantChoice(spec.bits, spec.group_size, output)
        if choice not in choices:
            choices.append(choice)
    return choices


@dataclass(frozen=True)
class Point:
    """One row of the plan: where and how the model runs, and which test at which cache depth."""

    backend: str
    dtype: str
    quant: QuantChoice
    tp: int
    batch: int
    depth: int
    test: TestSpec

    @property
    def load_key(self) -> tuple[str, str, QuantChoice, int]:
        """Points with the same key share one loaded model."""
        return (self.backend, self.dtype, self.quant, self.tp)

    @property
    def label(self) -> str:
        """``pp512 @ d0``-style name of the test, as llama-bench prints it."""
        return f"{self.test.name} @ d{self.depth}"

    def tokens_needed(self) -> int:
        """Sequence positions the point uses (the cache it needs)."""
        return context_length(self) + self.test.n_gen


# A tg test at depth 0 decodes after a one-token prompt (untimed), as llama-bench's generation tests start after BOS.
MIN_CONTEXT = 1


def context_length(point: Point) -> int:
    """Tokens in the cache when the first decode step runs: the depth, the timed prompt, or ``MIN_CONTEXT``."""
    return max(point.depth + point.test.n_prompt, MIN_CONTEXT)


def expand(
    backends: Sequence[str],
    dtypes: Sequence[str],
    quants: Sequence[QuantChoice],
    tps: Sequence[int],
    batches: Sequence[int],
    depths: Sequence[int],
    tests: Sequence[TestSpec],
) -> list[Point]:
    """The Cartesian product, grouped so points sharing a loaded model are adjacent (backends outermost, in the
    order given: the first backend is what ratios compare against)."""
    return [
        Point(backend, dtype, quant, tp, batch, depth, test)
        for backend, dtype, quant, tp in itertools.product(backends, dtypes, quants, tps)
        for batch, depth, test in itertools.product(batches, depths, tests)
    ]


def point_to_json(point: Point) -> dict[str, object]:
    """A point as plain JSON values, for the ranks of a TP group and the baseline's interpreter."""
    data = asdict(point)
    data["test"]["kind"] = point.test.kind.value
    return data


def point_from_json(data: dict) -> Point:
    test = data["test"]
    return Point(
        data["backend"],
        data["dtype"],
        QuantChoice(**data["quant"]),
        int(data["tp"]),
        int(data["batch"]),
        int(data["depth"]),
        TestSpec(Kind(test["kind"]), int(test["n_prompt"]), int(test["n_gen"])),
    )
