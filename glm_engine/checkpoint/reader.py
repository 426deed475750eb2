"""One view of any checkpoint (SAT at any TP degree, native sharded safetensors), validated from metadata, then read
one source shard at a time.

``Checkpoint.rank_state_dict(rank, tp, ...)`` builds one tensor-parallel rank's weights for *any* valid TP degree
from the source shards (re-sharding at load time, ``docs/checkpoints.md``). Host RAM holds at most one
memory-mapped source shard plus that rank's weights (row 3); quantizing while loading maps the rank's sources together
and completes one linear at a time instead. Quantized sources are dequantized exactly as the
reference's kernels do (``half(q) * scale``) before re-sharding, so they run at any TP degree too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from glm_engine.checkpoint import hf, layout, native, sat
from glm_engine.errors import CheckpointError
from glm_engine.model.glm130b.config import CONFIG_FILE_NAME, GLMConfig
from glm_engine.model.glm130b.weights import is_quantized_key, parameter_shapes, split_of
from glm_engine.model.head_fingerprint import check_stored_head_count
from glm_engine.model.weights import ReadRequest
from glm_engine.parallel.degree import check_tp_degree
from glm_engine.parallel.sharding import ShardBuilder, Split
from glm_engine.quant.reference import dequantize
from glm_engine.quant.sharding import QuantShardBuilder, target_row_group
from glm_engine.quant.spec import QuantSpec
from glm_engine.quant.weight import QuantizedWeight

Progress = Callable[[int, int], None]


@dataclass
class Checkpoint:
    """A checkpoint folder: format, config, source TP degree, quantization, and its shard files."""

    path: Path
    format: str  # "sat" | "native"
    config: GLMConfig
    source_tp: int
    bits: int | None  # 4, 8, or None for floating-point weights
    files: list[Path]
    infos: list[dict[str, layout.TensorInfo]]  # per source shard
    unused_keys: list[str] = field(default_factory=list)
    iteration: str = ""  # SAT: the tag in ``latest``

    def describe(self) -> str:
        quant = f", {self.quant_spec.describe()} weights" if self.quant_spec else ""
        return f"{self.format} checkpoint {self.path} (TP={self.source_tp}{quant})"

    @property
    def description(self) -> str:
        return self.describe()

    @property
    def stored_quant(self) -> QuantSpec | None:
        return self.quant_spec

    def read(
        self, request: ReadRequest, keys: list[str] | None = None, progress: Progress | None = None
    ) -> dict[str, torch.Tensor | QuantizedWeight]:
        """The ``WeightReader`` view of :meth:`rank_state_dict` (the output projection is the tied embedding, so
        ``request.output_quant`` has nothing to quantize here)."""
        r = request
        return self.rank_state_dict(r.rank, r.tp, r.dtype, r.device, progress, keys, r.quant, r.keep_quantized)

    @contextmanager
    def open_shard(self, rank: int) -> Iterator[Mapping[str, torch.Tensor]]:
        """Source shard ``rank``, memory-mapped; released when the block ends."""
        if self.format == "sat":
            shard = sat.read_sat_shard(self.files[rank])
        else:
            shard, _ = native.open_native(self.path)
        try:
            yield shard
        finally:
            del shard

    def dtype_of(self, key: str) -> torch.dtype:
        """The stored dtype of ``key`` (fp16 for a quantized weight, which dequantizes to fp16)."""
        dtype = self.infos[0][key].dtype
        return torch.float16 if dtype == torch.int8 else dtype

    def floating(self, shard: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
        """``key`` of an open shard as floating point: quantized linears dequantized like the reference."""
        if self.bits is not None and is_quantized_key(key):
            return dequantize(shard[key], shard[key + layout.SCALE_SUFFIX], self.bits, torch.float16)
        return shard[key]

    @property
    def quant_spec(self) -> QuantSpec | None:
        """The stored quantization (rowwise, or groupwise with its block size), None for floating point."""
        if self.bits is None:
            return None
        key = next(k for k in self.infos[0] if is_quantized_key(k))
        groups = self.scale_groups(key)
        columns = parameter_shapes(self.config, self.source_tp)[key][1]
        return QuantSpec(self.bits, None if groups == 1 else columns // groups)

    def rank_state_dict(
        self,
        rank: int,
        tp: int,
        dtype: torch.dtype | None,
        device: torch.device | str = "cpu",
        progress: Progress | None = None,
        keys: list[str] | None = None,
        quant: QuantSpec | None = None,
        keep_quantized: bool = True,
    ) -> dict[str, torch.Tensor | QuantizedWeight]:
        """Rank ``rank`` of TP degree ``tp``: the model weights (or just ``keys``) in ``dtype`` (None: each tensor's
        own, for conversions) on ``device``, read one source shard at a time.

        A quantized checkpoint's linears come back as QuantizedWeight (re-sharded exactly), or dequantized to
        ``dtype`` without ``keep_quantized``. With ``quant``, floating-point linears are quantized on this rank's
        shard (as the reference quantizes each rank's local weight) as soon as each is complete; when the rank draws
        on several source shards, every source is mapped at once and the keys are completed one after another (see
        ``_reads``), so the rank holds one floating-point linear at a time instead of all of them.
        """
        check_tp_degree(self.config, tp, str(self.path))
        if quant is not None and self.bits is not None:
            raise CheckpointError(
                f"{self.describe()} is already quantized; quantizing it again would compound the rounding. Load it "
                "as it is, or quantize its FP16 original"
            )
        source_shapes = parameter_shapes(self.config, self.source_tp)
        builders: dict[str, ShardBuilder | QuantShardBuilder] = {}
        for key in source_shapes if keys is None else keys:
            quantized_source = self.bits is not None and is_quantized_key(key)
            if quantized_source and keep_quantized:
                groups = self.scale_groups(key)
                builders[key] = QuantShardBuilder(
                    key, split_of(key), source_shapes[key], groups, self.bits, self.source_tp, rank, tp, device
                )
            else:
                quantize_later = quant is not None and is_quantized_key(key)
                build_dtype = self.dtype_of(key) if quantize_later or dtype is None else dtype
                builders[key] = ShardBuilder(
                    key, split_of(key), source_shapes[key], self.source_tp, rank, tp, build_dtype, device
                )
        plan = [(s, [k for k, b in builders.items() if b.needs(s)]) for s in range(self.source_tp)]
        last_source = {key: s for s, ks in plan for key in ks}
        total = sum(len(ks) for _, ks in plan)
        out: dict[str, torch.Tensor | QuantizedWeight] = {}
        key_major = quant is not None and sum(1 for _, needed in plan if needed) > 1
        for done, (source_rank, key, shard) in enumerate(self._reads(plan, list(builders), key_major), start=1):
            builder = builders[key]
            if isinstance(builder, QuantShardBuilder):
                builder.add(source_rank, shard[key], shard[key + layout.SCALE_SUFFIX])
            else:
                builder.add(source_rank, self.floating(shard, key))
            if last_source[key] == source_rank:
                out[key] = self._finish(builders.pop(key), key, dtype, quant)
            if progress is not None:
                progress(done, total)
        return {key: out[key] for key in (source_shapes if keys is None else keys)}

    def _reads(
        self, plan: list[tuple[int, list[str]]], order: list[str], key_major: bool
    ) -> Iterator[tuple[int, str, Mapping[str, torch.Tensor]]]:
        """``(source rank, key, open shard)`` in reading order. Source-major maps one shard at a time, so a key
        spread over several sources is complete only at its last one. Key-major maps every needed source at once
        (address space, not RAM: pages are read on touch and stay reclaimable page cache) and completes each key in
        ``order`` from all its sources before the next."""
        if not key_major:
            for source_rank, needed in plan:
                if not needed:
                    continue
                with self.open_shard(source_rank) as shard:
                    if isinstance(shard, native.LazySafetensors):
                        needed = shard.keys_by_file(needed)
                    for key in needed:
                        yield source_rank, key, shard
            return
        sources: dict[str, list[int]] = {}
        for source_rank, needed in plan:
            for key in needed:
                sources.setdefault(key, []).append(source_rank)
        with ExitStack() as stack:
            shards = {s: stack.enter_context(self.open_shard(s)) for s, needed in plan if needed}
            for key in order:
                for source_rank in sources[key]:
                    yield source_rank, key, shards[source_rank]

    def _finish(
        self, builder: ShardBuilder | QuantShardBuilder, key: str, dtype: torch.dtype | None, quant: QuantSpec | None
    ) -> torch.Tensor | QuantizedWeight:
        result = builder.finish()
        if quant is not None and is_quantized_key(key):
            return QuantizedWeight.quantize(result, quant.bits, quant.group_size)
        if isinstance(result, torch.Tensor) and dtype is not None and result.dtype != dtype:
            return result.to(dtype)
        return result

    def runtime_quant_specs(self, tp: int) -> list[QuantSpec]:
        """The formats the stored linears take at TP ``tp``: re-sharding keeps column-parallel weights' scales, but a
        row-parallel weight merged from several source ranks gets one scale per source slice (groupwise)."""
        if self.bits is None:
            return []
        specs: list[QuantSpec] = []
        for key, shape in parameter_shapes(self.config, self.source_tp).items():
            if not key.startswith("transformer.layers.0.") or not is_quantized_key(key):
                continue  # every layer is quantized alike
            columns = shape[1]
            groups = self.scale_groups(key)
            group: int | None = columns // groups
            if split_of(key) is Split.ROW:
                width = columns * self.source_tp // tp
                group = target_row_group(columns, group, self.source_tp, tp)
                group = None if group == width else group
            elif groups == 1:
                group = None
            if (spec := QuantSpec(self.bits, group)) not in specs:
                specs.append(spec)
        return specs

    def scale_groups(self, key: str) -> int:
        """Scale columns of a quantized weight in the source (1: the reference's rowwise; more: groupwise)."""
        shape = self.infos[0][key + layout.SCALE_SUFFIX].shape
        return shape[1] if len(shape) == 2 else 1


def open_checkpoint(path: str | Path, config: GLMConfig | None = None) -> Checkpoint:
    """Recognise, describe and validate a checkpoint folder from metadata alone (no tensor data is read).

    ``config`` overrides the checkpoint's own; a SAT folder without ``config.json`` matching a preset's shapes
    (the GLM-130B release) needs none.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a file; pass the folder that holds it")
    if hf.model_type(path) is not None:
        raise CheckpointError(
            f"{path} is a Hugging Face {hf.model_type(path)!r} checkpoint, not GLM-130B's SAT or native format: "
            "load it with glm_engine.load() or `glm-engine run/chat --checkpoint`"
        )
    if native.is_native_checkpoint(path):
        return _open_native(path, config)
    if sat.is_sat_checkpoint(path):
        return _open_sat(path, config)
    raise CheckpointError(
        f"{path} is not a checkpoint: expected config.json with {native.WEIGHTS_FILE_NAME} or "
        f"{native.INDEX_FILE_NAME} (native), or a 'latest' file and an iteration folder (SAT)"
    )


def _open_native(path: Path, config: GLMConfig | None) -> Checkpoint:
    config = config or native.read_native_config(path)
    weights, metadata = native.open_native(path)
    infos = weights.infos()
    bits = layout.detect_quantization(infos, config, 1, str(path))
    group_size = layout.detect_group_size(infos, config, 1) if bits else None
    unused = layout.validate(infos, config, 1, bits, str(path), group_size)
    check_stored_head_count(metadata, config.num_attention_heads, str(path))
    files = sorted({weights.file_of(k) for k in weights})
    return Checkpoint(path, "native", config, 1, bits, files, [infos], unused)


def _open_sat(path: Path, config: GLMConfig | None) -> Checkpoint:
    tag = sat.sat_tag(path)
    files = sat.sat_shards(path)
    infos = []
    for file in files:
        shard = sat.read_sat_shard(file)  # memory-mapped: only the pickled metadata is read here
        infos.append(layout.infos_of(shard))
        del shard
    tp = len(files)
    if config is None:
        config = _sat_config(path, infos[0], tp)
    bits = layout.detect_quantization(infos[0], config, tp, str(files[0]))
    group_size = layout.detect_group_size(infos[0], config, tp) if bits else None
    unused: set[str] = set()
    for file, info in zip(files, infos):
        file_bits = layout.detect_quantization(info, config, tp, str(file))
        if file_bits != bits:
            described = {None: "not quantized", 4: "INT4", 8: "INT8"}
            raise CheckpointError(f"{file} is {described[file_bits]} but {files[0]} is {described[bits]}")
        unused.update(layout.validate(info, config, tp, bits, str(file), group_size))
    return Checkpoint(path, "sat", config, tp, bits, files, infos, sorted(unused), tag)


def _sat_config(path: Path, infos: Mapping[str, layout.TensorInfo], tp: int) -> GLMConfig:
    config_path = path / CONFIG_FILE_NAME
    if config_path.is_file():
        return GLMConfig.from_json_file(config_path)
    inferred = layout.infer_config(infos, tp)
    if inferred is None:
        raise CheckpointError(
            f"SAT checkpoint {path} has no {CONFIG_FILE_NAME} next to '{sat.LATEST_FILE_NAME}' and its shapes "
            "match no preset; pass --config PRESET (e.g. --config glm-130b) or a config.json"
        )
    return inferred
