"""The GLM decoder graph, written once against the op interface for every family (``docs/architecture.md``).

embedding (vocab-parallel) -> per layer :func:`~glm_engine.model.block.decoder_block` -> final norm -> logits through
the output projection (the tied embedding or a separate matrix), gathered along the vocabulary. What differs between
families is read from their description (``Family.parts``), never tested by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from glm_engine.backends.base import RunnerCapabilities
from glm_engine.errors import InputError
from glm_engine.model.block import decoder_block, norm, rotations_for
from glm_engine.model.kv_cache import KVCache
from glm_engine.model.registry import family_of
from glm_engine.model.weights import ModelWeights, ReadRequest
from glm_engine.ops.interface import DecodeStepper, ModelConfig, OpTable
from glm_engine.parallel.communicator import Communicator
from glm_engine.parallel.vocab import vocab_parallel_embedding
from glm_engine.quant.spec import QuantSpec


class DecoderModel:
    """A loaded model bound to one backend's op table; implements the ``ModelRunner`` interface.

    ``weights`` are this rank's shards when ``comm`` spans several ranks (default: one process, full weights).
    """

    def __init__(
        self, config: ModelConfig, weights: ModelWeights, ops: OpTable, comm: Communicator | None = None
    ) -> None:
        self.config = config
        self.family = family_of(config)
        self.parts = self.family.parts(config)
        self.weights = weights
        self.ops = ops
        self.comm = comm if comm is not None else Communicator()
        self.local_heads = config.num_attention_heads // self.comm.world_size
        # key/value heads on this rank: a share of the groups, or one group repeated when TP exceeds their count
        kv_heads = self.parts.kv_heads or config.num_attention_heads
        self.local_kv_heads = max(1, kv_heads // self.comm.world_size)
        self.device = ops.device
        self.dtype = ops.dtype
        self.cos, self.sin = self.family.rotary_tables(config, ops.dtype, ops.device)
        self.cuda_graphs: bool | None = None  # decode steps as device graphs: None = the backend's default
        self.capabilities = RunnerCapabilities(kv_cache=True, tensor_parallel=self.comm.world_size, op_level=True)

    @classmethod
    def from_state_dict(
        cls,
        config: ModelConfig,
        state_dict: Mapping[str, Any],
        ops: OpTable,
        comm: Communicator | None = None,
        source: str = "state dict",
        output_quant: QuantSpec | None = None,
    ) -> DecoderModel:
        """A model from a whole (TP=1) state dict under the family's names (tests, tools, random weights): validated,
        cut to ``comm``'s rank by the family's split rules, converted for ``ops``."""
        family = family_of(config)
        comm = comm if comm is not None else Communicator()
        reader = family.state_dict_reader(state_dict, config, source)
        tensors = reader.read(ReadRequest(comm.rank, comm.world_size, ops.dtype, ops.device))
        layout = family.weight_layout(config)
        weights = ModelWeights.assemble(
            layout, tensors, ops.dtype, ops.device, ops.prepare_quantized, output_quant, reader.unused_keys
        )
        return cls(config, weights, ops, comm)

    def decode_stepper(self, steps: int | None = None, requested: bool | None = None) -> DecodeStepper:
        return self.ops.decode_stepper(self, steps, requested)

    def new_cache(self, batch_size: int, max_length: int) -> KVCache:
        c = self.config
        return KVCache(c.num_layers, batch_size, self.local_kv_heads, max_length, c.head_dim, self.dtype, self.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        blocked: torch.Tensor,
        cache: KVCache | None = None,
        last_only: bool = False,
        logit_columns: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[b, s, vocab]`` (``[b, 1, vocab]`` with ``last_only``) for ``input_ids [b, s]``, on every rank.

        ``position_ids [b, s]`` or ``[b, 2, s]`` (the family's rows); ``blocked`` bool ``[b or 1, 1, s, cached + s]``,
        True = may not attend. With a cache, the new keys/values are appended after the cached ones. ``logit_columns``
        picks the columns whose logits are computed (``[b, len(columns), vocab]``).
        Differentiable when the weights require gradients (training the demo model); inference callers run it
        under ``torch.inference_mode()``.
        """
        rows = self.parts.position_rows
        expected = input_ids.shape if rows == 1 else (input_ids.shape[0], rows, input_ids.shape[1])
        if tuple(position_ids.shape) != tuple(expected):
            raise InputError(f"{self.family.title} position ids are {list(expected)}, got {tuple(position_ids.shape)}")
        if cache is None and input_ids.shape[1] > self.config.max_sequence_length:  # (a padded batch may be wider)
            raise InputError(
                f"{input_ids.shape[1]} tokens exceed the {self.config.max_sequence_length} positions "
                f"{self.family.title} was built for; shorten the input"
            )
        ops, w = self.ops, self.weights
        x = vocab_parallel_embedding(ops, input_ids, w.word_embeddings, self.comm)
        rotations = rotations_for(self, position_ids)
        for index, layer in enumerate(w.layers):
            x = decoder_block(self, index, layer, x, rotations, blocked, cache)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        if last_only:
            x = x[:, -1:]
        elif logit_columns is not None:  # only the columns whose next token is wanted (the serving core's)
            x = x[:, logit_columns]
        x = norm(self, x, w.final_layernorm_weight, w.final_layernorm_bias)
        return self.comm.all_gather(ops.linear(x, w.logits_weight, None))
