"""The backend registry: built-ins, third-party plugins from entry points, and ``--backend auto``.

Third-party packages register a backend by exposing a :class:`~glm_engine.backends.base.Backend` subclass (or a
zero-argument factory returning an instance) in the entry-point group ``glm_engine.backends``. A plugin that fails to
import is listed as unavailable with the error, never breaking the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points

import torch

from glm_engine.backends.base import Backend, BackendKind, OpLevelBackend, Verdict
from glm_engine.errors import BackendError
from glm_engine.ops.interface import Op, OpTable

ENTRY_POINT_GROUP = "glm_engine.backends"

# Built-in backends as "module:class", imported on first use so a vendor problem in one never breaks the others.
BUILTIN_BACKENDS: dict[str, str] = {
    "cpu": "glm_engine.backends.cpu:CpuBackend",
    "cuda": "glm_engine.backends.cuda:CudaBackend",
    "rocm_dcu": "glm_engine.backends.rocm_dcu:RocmDcuBackend",
    "ascend": "glm_engine.backends.ascend:AscendBackend",
    "tensorrt": "glm_engine.backends.tensorrt:TensorRTBackend",
    "onnxruntime": "glm_engine.backends.onnxruntime:OnnxRuntimeBackend",
}

BackendFactory = Callable[[], Backend]


class BrokenBackend(Backend):
    """Stands in for a backend whose module or plugin failed to load, so listings can show why."""

    kind = BackendKind.OP_LEVEL
    device_type = "cpu"
    dist_backend = "gloo"

    def __init__(self, name: str, error: str) -> None:
        self.name = name
        self._error = error

    def availability(self) -> Verdict:
        return Verdict(False, self._error)

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        return ()


def _import_object(spec: str) -> object:
    module_name, _, attr = spec.partition(":")
    return getattr(import_module(module_name), attr)


def _instantiate(name: str, target: object) -> Backend:
    backend = target() if callable(target) else target
    if not isinstance(backend, Backend):
        raise TypeError(f"{target!r} did not produce a glm_engine Backend")
    if backend.name != name:
        raise TypeError(f"backend registered as {name!r} calls itself {backend.name!r}")
    return backend


@dataclass
class _Entry:
    name: str
    load: Callable[[], object]
    source: str  # "built-in" or the distribution that provides the plugin


class BackendRegistry:
    """Name -> backend, instantiated lazily and cached."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._instances: dict[str, Backend] = {}
        self._plugins_loaded = False

    def register(self, name: str, target: type[Backend] | BackendFactory | Backend, source: str = "user") -> None:
        """Register (or replace) a backend under ``name``."""
        self._entries[name] = _Entry(name, lambda: target, source)
        self._instances.pop(name, None)

    def _register_builtins(self) -> None:
        for name, spec in BUILTIN_BACKENDS.items():
            if name not in self._entries:
                self._entries[name] = _Entry(name, lambda spec=spec: _import_object(spec), "built-in")

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in self._entries and self._entries[ep.name].source == "built-in":
                continue  # built-ins cannot be shadowed silently
            dist = getattr(ep.dist, "name", None) or ep.value
            self._entries[ep.name] = _Entry(ep.name, ep.load, f"plugin {dist}")

    def names(self) -> list[str]:
        self._register_builtins()
        self._load_plugins()
        return list(self._entries)

    def source(self, name: str) -> str:
        self.names()
        return self._entries[name].source

    def get(self, name: str) -> Backend:
        """The backend called ``name``; a backend that fails to import comes back as a BrokenBackend."""
        if name in self._instances:
            return self._instances[name]
        known = self.names()
        if name not in self._entries:
            raise BackendError(f"unknown backend {name!r}; known backends: {', '.join(known)} (or 'auto')")
        entry = self._entries[name]
        try:
            backend = _instantiate(name, entry.load())
        except Exception as exc:  # a plugin or vendor module may fail in any way; report, don't crash
            backend = BrokenBackend(name, f"{entry.source} failed to load: {type(exc).__name__}: {exc}")
        self._instances[name] = backend
        return backend

    def all(self) -> list[Backend]:
        return [self.get(name) for name in self.names()]

    def auto(self) -> tuple[Backend, str]:
        """The available op-level backend with the highest priority, and a sentence saying why it was picked."""
        candidates = [b for b in self.all() if b.kind is BackendKind.OP_LEVEL]
        skipped: list[str] = []
        ranked = sorted(candidates, key=lambda b: -b.priority)
        for backend in ranked:
            verdict = backend.availability()
            if verdict:
                why = f"picked {backend.name}, the highest-priority backend available here"
                if skipped:
                    why += f" (not available: {', '.join(skipped)}; `glm-engine backends` says why)"
                return backend, why
            skipped.append(backend.name)
        raise BackendError("no backend is available here; `glm-engine backends` says why for each")

    def resolve(self, name: str) -> tuple[Backend, str]:
        """``auto`` or a name -> an available backend, or a BackendError saying why not."""
        if name == "auto":
            return self.auto()
        backend = self.get(name)
        verdict = backend.availability()
        if not verdict:
            raise BackendError(f"backend {name!r} is not available here: {verdict.reason}")
        return backend, f"using {name} as requested"


REGISTRY = BackendRegistry()


def get_backend(name: str) -> Backend:
    return REGISTRY.get(name)


def op_table_for(
    backend: Backend, dtype: torch.dtype, device_index: int = 0, required: Iterable[Op] | None = None
) -> OpTable:
    """The op table of an op-level backend, after checking that the ops a model needs (``required``; default:
    every op) support ``dtype``."""
    if not isinstance(backend, OpLevelBackend):
        raise BackendError(f"{backend.name} is a {backend.kind.value} backend: it runs exported graphs, not ops")
    needed = list(Op) if required is None else sorted(required, key=list(Op).index)
    refused = [f"{op.value}: {v.reason}" for op in needed if not (v := backend.supports(op, dtype))]
    if refused:
        raise BackendError(f"{backend.name} cannot run this model: " + "; ".join(refused))
    return backend.op_table(dtype, device_index)
