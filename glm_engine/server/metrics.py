"""The server's Prometheus metrics (``GET /metrics``), in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from glm_engine.serving.core import CoreStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServerMetrics:
    """Requests by endpoint and status, the queue and batch, KV blocks, token counts and latency histograms."""

    def __init__(self, stats: Callable[[], CoreStats]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "glm_engine_requests",
            "Finished HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter("glm_engine_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("glm_engine_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram(
            "glm_engine_time_to_first_token_seconds",
            "Request received to first token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "glm_engine_inter_token_latency_seconds",
            "Between two tokens of a request",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        gauges = {
            "glm_engine_queue_depth": ("Requests waiting for the running batch", lambda s: s.waiting),
            "glm_engine_running_sequences": ("Sequences in the running batch", lambda s: s.running),
            "glm_engine_kv_blocks_used": ("KV-cache blocks held by sequences", lambda s: s.blocks_used),
            "glm_engine_kv_blocks_free": ("KV-cache blocks free", lambda s: s.blocks_free),
            "glm_engine_preemptions": ("Sequences preempted so far (recomputed later)", lambda s: s.preemptions),
        }
        for name, (doc, read) in gauges.items():
            Gauge(name, doc, registry=r).set_function(lambda read=read: read(stats()))

    def render(self) -> bytes:
        return generate_latest(self.registry)
