"""The operator's Prometheus metrics, served at /metrics on RELAIS_OPERATOR_METRICS_PORT.

The handlers time each reconcile (`reconciling`), kube.py counts API errors (`api_error`), the
autoscaler's loop reports what it decided and what it could not read, and the resources' phases
and replicas are read at scrape time from the status the operator last wrote (`watch_statuses`).
Labels stay bounded: a resource's namespace, name and served model, a phase, a verb, an HTTP
code; never a pod name.
kopf's own watch calls go through kopf's client and are not counted here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from relais_operator.spec import InvalidSpecError

log = logging.getLogger(__name__)

# The phases status.py writes; each is exported, at 0 when no resource is in it.
PHASES = ("Pending", "Loading", "Ready", "Degraded", "ScaledToZero", "Failed", "Invalid")
RESULTS = ("ok", "invalid", "retry", "failed", "error")
_VERBS = {"GET": "get", "POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}
Key = tuple[str, str]

REGISTRY = CollectorRegistry()
RECONCILES = Counter(
    "relais_operator_reconciles",
    "Reconciles of LLMDeployments by result: ok; invalid (InvalidSpec, reported, not retried);"
    " retry (kopf retries it: an API error or a child being deleted); failed (not retried);"
    " error (an unexpected exception, retried).",
    ["result"],
    registry=REGISTRY,
)
for _result in RESULTS:  # every result exists from the start, so rates and alerts see a 0
    RECONCILES.labels(_result)
RECONCILE_SECONDS = Histogram(
    "relais_operator_reconcile_duration_seconds",
    "Time one reconcile took, parse to status write.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
API_ERRORS = Counter(
    "relais_operator_kube_api_errors",
    "Failed Kubernetes API calls of the operator's client, by verb and HTTP code ('network' for"
    " a connection error or timeout). 404 on get and 409 on create are part of apply.",
    ["verb", "code"],
    registry=REGISTRY,
)
DESIRED = Gauge(
    "relais_operator_autoscaler_desired_replicas",
    "Replicas the autoscaler wants for an LLMDeployment, as of its last tick.",
    ["namespace", "name"],
    registry=REGISTRY,
)
CURRENT = Gauge(
    "relais_operator_autoscaler_current_replicas",
    "spec.replicas of an autoscaled LLMDeployment when the autoscaler last read it.",
    ["namespace", "name"],
    registry=REGISTRY,
)
DEMAND = Gauge(
    "relais_operator_autoscaler_demand",
    "In-flight plus waiting requests the autoscaler read for an LLMDeployment (averaged).",
    ["namespace", "name"],
    registry=REGISTRY,
)
SCALE_UPS = Counter(
    "relais_operator_autoscaler_scale_ups",
    "Scale-ups the autoscaler wrote, per LLMDeployment.",
    ["namespace", "name"],
    registry=REGISTRY,
)
SCALE_DOWNS = Counter(
    "relais_operator_autoscaler_scale_downs",
    "Scale-downs the autoscaler wrote, per LLMDeployment.",
    ["namespace", "name"],
    registry=REGISTRY,
)
GATEWAY_READ_FAILURES = Counter(
    "relais_operator_autoscaler_gateway_read_failures",
    "Gateway /metrics pages the autoscaler could not read (no scale-down on those ticks).",
    registry=REGISTRY,
)
GATEWAYS = Gauge(
    "relais_operator_autoscaler_gateways",
    "Ready gateway endpoints the autoscaler found at its last tick.",
    registry=REGISTRY,
)


# --- hooks --------------------------------------------------------------------------------------


def result_of(error: BaseException | None) -> str:
    """How a reconcile ended, as the `result` label says it.

    handlers.py raises kopf.PermanentError from an InvalidSpecError (`from None` hides it from
    the log, yet it stays the exception's __context__), so that is how "invalid" is told apart.
    """
    if error is None:
        return "ok"
    if isinstance(error, kopf.TemporaryError):
        return "retry"
    if isinstance(error, kopf.PermanentError):
        invalid = isinstance(error.__context__, InvalidSpecError)
        return "invalid" if invalid else "failed"
    return "error"


@contextmanager
def reconciling() -> Iterator[None]:
    """Time the enclosed reconcile and count it by result (the exception goes on)."""
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        yield
    except BaseException as exc:  # a cancelled reconcile (shutdown) is not an "ok" one
        error = exc
        raise
    finally:
        RECONCILE_SECONDS.observe(time.perf_counter() - started)
        RECONCILES.labels(result_of(error)).inc()


def api_error(method: str, code: int | str) -> None:
    """Count one failed API call (`code`: the HTTP status, or 'network')."""
    API_ERRORS.labels(_VERBS.get(method.upper(), method.lower()), str(code)).inc()


def autoscaled(key: Key, current: int, desired: int, demand: float) -> None:
    """What the autoscaler read and wanted for one resource this tick."""
    CURRENT.labels(*key).set(current)
    DESIRED.labels(*key).set(desired)
    DEMAND.labels(*key).set(demand)


def scaled(key: Key, *, up: bool) -> None:
    (SCALE_UPS if up else SCALE_DOWNS).labels(*key).inc()


def forget(key: Key) -> None:
    """Drop the series of a resource that is no longer autoscaled (deleted, or policy removed)."""
    for family in (CURRENT, DESIRED, DEMAND, SCALE_UPS, SCALE_DOWNS):
        with contextlib.suppress(KeyError):  # never had a sample of this family
            family.remove(*key)


# --- resources by phase, read at scrape time ---------------------------------------------------


class _StatusCollector(Collector):
    """LLMDeployments by phase, and each one's replicas, from the statuses the operator last
    wrote (memo.written): what `kubectl get llmd` shows, as series."""

    def __init__(self) -> None:
        self.written: Mapping[Key, Mapping[str, Any]] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        written = list(self.written.items())
        yield _phases(shown for _, shown in written)
        replicas = GaugeMetricFamily(
            "relais_operator_replicas",
            "Replicas an LLMDeployment's StatefulSet runs (status.replicas), by served model.",
            labels=["namespace", "name", "model"],
        )
        ready = GaugeMetricFamily(
            "relais_operator_ready_replicas",
            "Ready replicas of an LLMDeployment (status.readyReplicas), by served model.",
            labels=["namespace", "name", "model"],
        )
        for (namespace, name), shown in written:
            if "servedModelName" not in shown:
                continue  # an invalid spec: no workload, nothing to count
            labels = [namespace, name, str(shown["servedModelName"])]
            replicas.add_metric(labels, float(shown.get("replicas") or 0))
            ready.add_metric(labels, float(shown.get("readyReplicas") or 0))
        yield replicas
        yield ready


def _phases(statuses: Iterable[Mapping[str, Any]]) -> GaugeMetricFamily:
    counts = dict.fromkeys(PHASES, 0)
    for shown in statuses:
        phase = str(shown.get("phase") or "Pending")
        counts[phase] = counts.get(phase, 0) + 1
    family = GaugeMetricFamily(
        "relais_operator_llmdeployments",
        "LLMDeployments by status.phase, as this operator last wrote it.",
        labels=["phase"],
    )
    for phase, count in counts.items():
        family.add_metric([phase], count)
    return family


_STATUS = _StatusCollector()
REGISTRY.register(_STATUS)


def watch_statuses(written: Mapping[Key, Mapping[str, Any]]) -> None:
    """Export the statuses in `written` (the handlers' memo, kept up to date) at each scrape."""
    _STATUS.written = written


# --- the endpoint ------------------------------------------------------------------------------


async def _metrics(_: web.Request) -> web.Response:
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def serve(host: str, port: int) -> web.AppRunner | None:
    """Serve /metrics on host:port in this event loop; None when port is 0 or cannot be bound
    (logged: the operator goes on reconciling without its metrics)."""
    if not port:
        return None
    app = web.Application()
    app.router.add_get("/metrics", _metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        log.error("metrics: cannot listen on %s:%d (%s); serving none", host, port, exc)
        await runner.cleanup()
        return None
    log.info("metrics: serving /metrics on %s:%d", host, port)
    return runner
