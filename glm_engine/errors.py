"""Typed errors a user can hit; each message says what went wrong and what to do.

The CLI prints these as one line without a traceback; anything else is a bug.
"""

from __future__ import annotations


class GlmEngineError(Exception):
    """Base class of every error a user can cause and fix."""


class ConfigError(GlmEngineError, ValueError):
    """A model config is inconsistent (e.g. heads do not divide the hidden size) or unknown."""


class CheckpointError(GlmEngineError):
    """A checkpoint is missing, unreadable, or does not match the model config."""


class TokenizerError(GlmEngineError):
    """The tokenizer model file is missing or unusable."""


class InputError(GlmEngineError, ValueError):
    """A prompt or generation request is invalid (too long, empty, bad options)."""


class TaskError(GlmEngineError, ValueError):
    """An evaluation task cannot run: a bad task YAML (unknown key, wrong type), a missing data folder or file, a
    bad jsonl line (the message names file:line), or a metric or task module that does not exist."""


class BackendError(GlmEngineError):
    """A backend is unknown, unavailable here, or cannot run the requested op/dtype/format."""


class ParallelError(GlmEngineError):
    """Tensor parallelism cannot run as asked: a TP degree that does not divide the model, more ranks than devices,
    a launch environment that does not match ``--tp``, or a rank that failed (the message names it)."""


class CollectiveError(ParallelError):
    """A collective failed on this rank, most often because another rank stopped: the other rank's error is the
    cause, and the launcher reports that one first."""


class MissingDependencyError(GlmEngineError):
    """An optional package a feature needs is not installed; the message names what to install."""


class NumericalError(GlmEngineError):
    """A computation produced NaN or infinity (damaged weights, an overflow): refused rather than turned into text."""


class OutputError(GlmEngineError):
    """An output cannot be written: the path is taken, another process is writing it, or space ran out (the message
    names the file and the space it needed)."""
