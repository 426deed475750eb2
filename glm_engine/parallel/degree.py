"""Whether a tensor-parallel degree fits a model and a node, checked before anything heavy happens.

The wrong TP degree for the GPU count was the reference stack's most common user problem
(``docs/tensor-parallelism.md``); here it is a one-line error that lists the degrees that would work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from glm_engine.backends.base import Backend
from glm_engine.errors import ParallelError
from glm_engine.model.config_checks import even_split_degrees


def check_tp_axes(axes: Mapping[str, int], tp: int, model: str = "the model") -> None:
    """Raise ParallelError unless ``tp`` divides every one of ``axes`` (a model's ``tp_axes()``: heads, vocab rows,
    MLP units ...), listing the degrees that would work."""
    valid = even_split_degrees(tuple(axes.values()), limit=max(64, tp))
    if tp in valid:
        return
    if tp < 1:
        why = "it must be at least 1"
    else:
        why = ", ".join(f"{n} {name}" for name, n in axes.items() if n % tp) + f" do not divide by {tp}"
    raise ParallelError(
        f"tensor-parallel degree {tp} does not fit {model} ({why}); valid degrees: {', '.join(map(str, valid))}"
    )


def check_tp_degree(config: Any, tp: int, model: str = "the model") -> None:
    """:func:`check_tp_axes` for a model config of any family (its ``tp_axes()``), then the config's own
    ``tp_problem`` (grouped key/value heads)."""
    check_tp_axes(config.tp_axes(), tp, model)
    problem = config.tp_problem(tp)
    if problem is not None:
        valid = ", ".join(map(str, config.valid_tp_degrees(max(64, tp))))
        raise ParallelError(f"tensor-parallel degree {tp} does not fit {model} ({problem}); valid degrees: {valid}")


def check_device_count(backend: Backend, ranks_per_node: int) -> None:
    """Raise ParallelError when a node would start more ranks than ``backend`` has devices (the CPU has no limit)."""
    if backend.device_type == "cpu":
        return
    available = backend.device_count()  # counted without a context on any device (the launcher uses none)
    if ranks_per_node > available:
        raise ParallelError(
            f"{ranks_per_node} ranks per node need {ranks_per_node} {backend.name} devices, but this node has "
            f"{available}; lower --tp (or --nproc-per-node) or run across nodes with torchrun"
        )
