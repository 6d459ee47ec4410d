"""GET /metrics: Prometheus text of one ingress replica.

Counted where the client's view is (the ingress): requests by route and status, errors by type,
generated tokens, retries after a replica died, latency and time-to-first-token histograms (a
stream's first token as the ingress relayed it; a /v1/generate request's as its replica's runtime
timed it), and requests in flight. Each model replica's own service numbers (queue depth, slots in use, tokens/s)
come back with every response it sends and are shown per replica, as last reported; a replica
not heard from for REPLICA_TTL_S is dropped (it died or was scaled away).
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401 - re-exported for the ingress
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # no *_created series (the ingress process holds only these metrics)

REPLICA_TTL_S = 60.0
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# replica stats (Runtime.stats() keys) shown as gauges: key -> (metric name, help)
REPLICA_GAUGES = {
    "queue_depth": ("t5rt_queue_depth", "requests waiting in a replica's runtime queue (as last reported)"),
    "slots_in_use": ("t5rt_slots_in_use", "decode slots a replica's runtime has in use (as last reported)"),
    "tokens_per_s": ("t5rt_replica_tokens_per_second", "a replica's generated tokens/s over its last 10 s"),
}


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("t5rt_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.errors = Counter("t5rt_errors", "HTTP requests answered with an error", ["type"], registry=r)
        self.tokens = Counter("t5rt_generated_tokens", "tokens generated (all returned sequences)", registry=r)
        self.retries = Counter("t5rt_retries", "requests re-sent after their model replica died", registry=r)
        self.latency = Histogram("t5rt_request_latency_seconds", "time from request to full response",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("t5rt_time_to_first_token_seconds",
                              "time from request to its first generated token", buckets=LATENCY_BUCKETS,
                              registry=r)
        self.in_flight = Gauge("t5rt_requests_in_flight", "generate requests this ingress is serving", registry=r)
        self.replica = {k: Gauge(name, help_, ["replica"], registry=r) for k, (name, help_) in REPLICA_GAUGES.items()}
        self._seen: dict[str, float] = {}

    def answered(self, route: str, status: int, seconds: float, error_type: str | None = None) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if error_type is not None:
            self.errors.labels(error_type).inc()

    def replica_stats(self, replica: str, stats: dict[str, Any]) -> None:
        """A model replica's Runtime.stats() snapshot, as it came back with a response."""
        now = time.monotonic()
        self._seen[replica] = now
        for key, gauge in self.replica.items():
            v = stats.get(key)
            if isinstance(v, (int, float)):
                gauge.labels(replica).set(v)
        for old in [k for k, t in self._seen.items() if now - t > REPLICA_TTL_S]:
            del self._seen[old]
            for gauge in self.replica.values():
                try:
                    gauge.remove(old)
                except KeyError:
                    pass

    def text(self) -> bytes:
        return generate_latest(self.registry)
