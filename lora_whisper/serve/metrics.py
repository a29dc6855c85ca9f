"""The server's Prometheus metrics (``GET /metrics``): request counts and latency, queue and batch sizes, adapter
cache traffic. The routes count requests; the scheduler observes queue waits, batch sizes and adapter loads."""

from __future__ import annotations


class Metrics:
    """Prometheus metrics on a registry of their own (several apps can live in one process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        p = "lora_whisper_"
        self.requests = Counter(
            p + "requests", "HTTP requests by endpoint, status and model", ["endpoint", "status", "model"], registry=r
        )
        self.audio_seconds = Counter(p + "audio_seconds", "Seconds of audio transcribed", registry=r)
        lat = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160)
        self.latency = Histogram(
            p + "request_latency_seconds", "Request latency, upload to response", buckets=lat, registry=r
        )
        self.queue_wait = Histogram(
            p + "queue_wait_seconds", "Time a request waited in the queue", buckets=lat, registry=r
        )
        self.batch_size = Histogram(
            p + "batch_size", "Requests per engine call", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.queue_depth = Gauge(p + "queue_depth", "Requests waiting in the queue", registry=r)
        self.adapter_loads = Counter(p + "adapter_loads", "Adapters loaded into memory", registry=r)
        self.adapter_swaps = Counter(p + "adapter_swaps", "Switches of the active adapter between groups", registry=r)
        self.adapter_evictions = Counter(p + "adapter_evictions", "Adapters evicted from memory (LRU)", registry=r)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text format."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
