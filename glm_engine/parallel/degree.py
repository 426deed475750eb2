"""Whether a tensor-parallel degree fits a model and a node, checked before anything heavy happens.

The wrong TP degree for the GPU count was the reference stack's most common user problem (glm130b.md section 7,
problem 7); here it is a one-line error that lists the degrees that would work.
"""

from __future__ import annotations

from glm_engine.backends.base import Backend
from glm_engine.config import GLMConfig
from glm_engine.errors import ParallelError


def check_tp_degree(config: GLMConfig, tp: int, model: str = "the model") -> None:
    """Raise ParallelError unless ``tp`` splits the heads, vocab rows and GeGLU units of ``config`` evenly."""
    valid = config.valid_tp_degrees(limit=max(64, tp))
    if tp in valid:
        return
    axes = (
        ("attention heads", config.num_attention_heads),
        ("vocab rows", config.vocab_size),
        ("GeGLU units", config.inner_hidden_size),
    )
    if tp < 1:
        why = "it must be at least 1"
    else:
        why = ", ".join(f"{n} {name}" for name, n in axes if n % tp) + f" do not divide by {tp}"
    raise ParallelError(
        f"tensor-parallel degree {tp} does not fit {model} ({why}); valid degrees: {', '.join(map(str, valid))}"
    )


def check_device_count(backend: Backend, ranks_per_node: int) -> None:
    """Raise ParallelError when a node would start more ranks than ``backend`` has devices (the CPU has no limit)."""
    if backend.device_type == "cpu":
        return
    available = len(backend.devices())
    if ranks_per_node > available:
        raise ParallelError(
            f"{ranks_per_node} ranks per node need {ranks_per_node} {backend.name} devices, but this node has "
            f"{available}; lower --tp (or --nproc-per-node) or run across nodes with torchrun"
        )
