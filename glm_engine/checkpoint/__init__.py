"""Checkpoints: the reference's SAT format at any TP degree and the native safetensors format, read through one
validated view (``open_checkpoint``), re-sharded at load time, and converted between formats and TP degrees."""

from __future__ import annotations

from glm_engine.checkpoint.native import save_native
from glm_engine.checkpoint.reader import Checkpoint, open_checkpoint

__all__ = ["Checkpoint", "open_checkpoint", "save_native"]
