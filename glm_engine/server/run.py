"""Serve an app with uvicorn on one loaded model, and shut down gracefully: on SIGTERM the server stops admitting (new
requests get 503), lets in-flight requests finish for up to ``shutdown_timeout`` seconds, cancels what is left (freeing
its blocks) and exits 0. SIGINT (Ctrl-C) drains the same way and exits as an interrupted program does."""

from __future__ import annotations

import functools
import math
import re
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import uvicorn

from glm_engine.errors import InputError
from glm_engine.server.app import create_app
from glm_engine.server.async_engine import AsyncEngine
from glm_engine.server.generation import ServedModel
from glm_engine.server.metrics import ServerMetrics
from glm_engine.serving.core import EngineCore
from glm_engine.serving.lockstep import follow, run_job
from glm_engine.serving.scheduler import SchedulerLimits

MEMINFO = Path("/proc/meminfo")
MAX_PORT = 65535  # TCP ports are 16 bits
UNITS = {"": 1, "B": 1}
for _power, _letter in enumerate("KMGT", start=1):
    UNITS.update({_letter: 1024**_power, f"{_letter}B": 1024**_power, f"{_letter}IB": 1024**_power})


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    kv_cache_memory: str = "0.25"
    max_queue: int = 64
    api_key: str | None = None
    shutdown_timeout: float = 30.0
    max_request_bytes: int = 1 << 20
    limits: SchedulerLimits = field(default_factory=SchedulerLimits)

    def __post_init__(self) -> None:
        """Refuse what the server could only fail on (or silently bend) after the model has loaded."""
        parse_kv_cache_memory(self.kv_cache_memory)
        checks = [
            (0 <= self.port <= MAX_PORT, f"--port must be in 0-{MAX_PORT} (0: any free port), got {self.port}"),
            (self.max_queue >= 0, f"--max-queue must be at least 0, got {self.max_queue}"),
            (self.max_request_bytes >= 1, f"--max-request-bytes must be at least 1, got {self.max_request_bytes}"),
            (
                0 <= self.shutdown_timeout < math.inf,
                f"--shutdown-timeout takes seconds >= 0, got {self.shutdown_timeout}",
            ),
            (self.api_key is None or self.api_key.strip() != "", "--api-key is empty; give a key or leave it out"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)


def free_device_bytes(device: torch.device) -> int:
    """Free memory where the KV cache goes: the GPU's or NPU's (``mem_get_info``), else the host's
    ``MemAvailable``."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "npu":
        return int(torch.npu.mem_get_info(device)[0])  # torch_npu mirrors torch.cuda's memory API
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    raise InputError("cannot tell the free memory here: give --kv-cache-memory as a size, e.g. 2GiB")


def parse_kv_cache_memory(spec: str) -> tuple[float | None, int | None]:
    """``--kv-cache-memory`` as ``(fraction, None)`` for a fraction in (0, 1) of the free memory, or ``(None, bytes)``
    for a size (``2GiB``, ``0.5GiB``, ``512MiB``, whole bytes); anything else is an InputError."""
    text = spec.strip().upper()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Z]*)", text)
    if match is None or match.group(2) not in UNITS:
        raise InputError(f"--kv-cache-memory {spec!r}: give a size such as 2GiB or 512MiB, or a fraction such as 0.3")
    value, unit = float(match.group(1)), match.group(2)
    if not unit and 0 < value < 1:
        return value, None
    if not unit and not value.is_integer():
        raise InputError(f"--kv-cache-memory {spec!r}: a fraction is below 1; a size needs a unit (1.5GiB)")
    size = int(value * UNITS[unit])
    if size < 1:
        raise InputError(f"--kv-cache-memory {spec!r} is empty; give a size or a fraction in (0, 1)")
    return None, size


def kv_cache_bytes(spec: str, device: torch.device) -> int:
    """``--kv-cache-memory`` in bytes: a size, or a fraction of the free memory where the cache goes."""
    fraction, size = parse_kv_cache_memory(spec)
    return int(fraction * free_device_bytes(device)) if fraction is not None else int(size or 0)


def check_can_listen(host: str, port: int) -> None:
    """An InputError, before the model loads, when the server could not listen on ``host:port``: a host that names no
    address, an address that is not this machine's, a port in use. The probe binds as uvicorn does
    (``SO_REUSEADDR``), then lets go."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(
            f"--host {host!r} is no address here ({exc}); give an IP address such as 127.0.0.1 or 0.0.0.0, or a "
            "host name that resolves"
        ) from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise InputError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or --host, or stop "
                "what listens there"
            ) from None


class DrainingServer(uvicorn.Server):
    """uvicorn's server that tells the engine to stop admitting as soon as a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, engine: AsyncEngine) -> None:
        super().__init__(config)
        self.engine = engine

    def handle_exit(self, sig: int, frame: object) -> None:
        self.engine.draining = True
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:  # a drained shutdown is a success: exit 0 rather than re-raise the signal
            self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


def new_core(engine: Any, options: ServeOptions, comm: Any = None) -> EngineCore:
    """This rank's serving core; under TP every rank takes rank 0's KV budget, so all hold the same blocks."""
    runner = engine.runner
    budget = kv_cache_bytes(options.kv_cache_memory, runner.device) if comm is None or comm.is_leader else 0
    if comm is not None and comm.world_size > 1:
        budget = comm.broadcast_object(budget)
    return EngineCore(runner, budget, options.limits, detokenize=lambda ids: engine.tokenizer.decode(list(ids)))


def serve(engine: Any, name: str, options: ServeOptions, comm: Any = None) -> None:
    """Serve the loaded ``engine`` (a ``glm_engine.Engine``) until a shutdown signal; under TP this is rank 0, the
    other ranks run :func:`follow_rank`."""
    runner = engine.runner
    jobs = functools.partial(run_job, engine)
    async_engine = AsyncEngine(new_core(engine, options, comm), options.max_queue, comm, jobs)
    metrics = ServerMetrics(lambda: async_engine.stats)
    tokenizer, banned = engine.tokenizer, engine.banned_tokens
    served = ServedModel(name, runner.family, runner.config, tokenizer, banned, async_engine, metrics)
    app = create_app(served, options.api_key, options.max_request_bytes)
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        log_level="info",
        timeout_graceful_shutdown=max(int(options.shutdown_timeout), 1),
    )
    server = DrainingServer(config, async_engine)
    async_engine.start()
    try:
        server.run()
    finally:
        async_engine.cancel_all()
        async_engine.stop()


def follow_rank(engine: Any, options: ServeOptions, comm: Any) -> None:
    """A rank other than 0: the same core, stepped as rank 0 says, until rank 0 stops. Shutdown signals are rank 0's
    to handle (a launcher may pass them to every rank): this rank ends when rank 0 has drained."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    follow(new_core(engine, options, comm), comm, engine)
