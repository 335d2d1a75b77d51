"""Prometheus metrics: requests by model and status, latency, time to first token, tokens, load.

Each app owns its registry (tests run several apps in one process). In-flight gauges are read
from the balancer's counters at scrape time, so the hot path pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from relais_gateway.policy.admission import Admission
from relais_gateway.routing.balancer import Balancer

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _InflightCollector(Collector):
    """In-flight and waiting requests, and routing decisions, read from their counters."""

    def __init__(self, balancer: Balancer, admission: Admission) -> None:
        self._balancer = balancer
        self._admission = admission

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        by_replica = GaugeMetricFamily(
            "relais_gateway_inflight_requests",
            "Requests in flight to each engine replica (endpoint).",
            labels=["endpoint"],
        )
        for endpoint, count in sorted(self._balancer.inflight_by_replica.items()):
            by_replica.add_metric([endpoint], count)
        by_model = GaugeMetricFamily(
            "relais_gateway_model_inflight_requests",
            "Requests in flight per served model (the autoscaling signal).",
            labels=["model"],
        )
        for model, count in sorted(self._balancer.inflight_by_model.items()):
            by_model.add_metric([model], count)
        waiting = GaugeMetricFamily(
            "relais_gateway_waiting_requests",
            "Requests waiting per served model, for a concurrency slot or for a replica to start"
            " (with in-flight requests, the autoscaling signal).",
            labels=["model"],
        )
        for model, count in sorted(self._admission.waiting.items()):
            waiting.add_metric([model], count)
        decisions = CounterMetricFamily(
            "relais_gateway_routing_decisions",
            "Replica choices by routing strategy, and whether the first choice was taken"
            " (PrefixHash: the prefix's own replica on the ring, not one past its load bound).",
            labels=["strategy", "first_choice"],
        )
        for (strategy, first), count in sorted(self._balancer.decisions.items()):
            decisions.add_metric([strategy, first], count)
        yield by_replica
        yield by_model
        yield waiting
        yield decisions


class Metrics:
    """The gateway's metric families, registered in their own registry."""

    def __init__(self, balancer: Balancer, admission: Admission) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "relais_gateway_requests",
            "Requests answered, by route, model, HTTP status and API key name.",
            ["route", "model", "status", "key"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "relais_gateway_request_duration_seconds",
            "Time from request to the end of the answer (streams included).",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "relais_gateway_time_to_first_token_seconds",
            "Time from request to the first generated text sent to the client.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "relais_gateway_tokens",
            "Tokens processed, by API key name, model and kind (prompt or completion), as the"
            " engine reports.",
            ["key", "model", "kind"],
            registry=self.registry,
        )
        self.capped = Counter(
            "relais_gateway_capped_requests",
            "Requests that asked for more output tokens than the model's maxTokens, and got it.",
            ["model"],
            registry=self.registry,
        )
        self.upstream_failures = Counter(
            "relais_gateway_upstream_failures",
            "Failed calls to engine replicas, by endpoint (each may eject the endpoint).",
            ["endpoint"],
            registry=self.registry,
        )
        self.wait = Histogram(
            "relais_gateway_wait_seconds",
            "Time requests waited before reaching an engine (for a slot or a replica).",
            ["model"],
            buckets=(*LATENCY_BUCKETS, 600),
            registry=self.registry,
        )
        self.cold_starts = Counter(
            "relais_gateway_cold_starts",
            "Times the gateway asked for a first replica of a model scaled to zero.",
            ["model"],
            registry=self.registry,
        )
        self.auth_reloads = Counter(
            "relais_gateway_auth_reloads",
            "Reloads of changed API keys, by result (ok, or error: the old keys stay).",
            ["result"],
            registry=self.registry,
        )
        self.auth_reload_ok = Gauge(
            "relais_gateway_auth_reload_ok",
            "1 when the keys in force are the auth file's content; 0 when its last edit is bad.",
            registry=self.registry,
        )
        self.auth_reload_ok.set(1)
        self.registry.register(_InflightCollector(balancer, admission))
        # `.labels()` hashes and locks on every call; the hot path looks its children up here.
        self._request_children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self._token_children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def observe_request(
        self, route: str, model: str, status: str, seconds: float, key: str = "-"
    ) -> None:
        """Count one answered request (`key`: the API key's configured name) and its duration."""
        labels = (route, model, status, key)
        children = self._request_children.get(labels)
        if children is None:
            children = (self.requests.labels(*labels), self.latency.labels(route, model))
            self._request_children[labels] = children
        children[0].inc()
        children[1].observe(seconds)

    def auth_reloaded(self, ok: bool) -> None:
        self.auth_reloads.labels("ok" if ok else "error").inc()
        self.auth_reload_ok.set(1 if ok else 0)

    def observe_wait(self, model: str, seconds: float) -> None:
        self.wait.labels(model).observe(seconds)

    def observe_ttft(self, model: str, seconds: float) -> None:
        self.ttft.labels(model).observe(seconds)

    def count_tokens(self, key: str, model: str, prompt: int, completion: int) -> None:
        """Count the tokens of one answer (engine numbers, sanitised: never negative)."""
        children = self._token_children.get((key, model))
        if children is None:
            children = (
                self.tokens.labels(key, model, "prompt"),
                self.tokens.labels(key, model, "completion"),
            )
            self._token_children[(key, model)] = children
        if prompt > 0:
            children[0].inc(prompt)
        if completion > 0:
            children[1].inc(completion)
