"""A real Prometheus scrapes a real gateway (fake engines behind it), the fake vLLM engines and
the real operator (against KMock, autoscaling from that gateway) while a short load runs; then
every PromQL expression of every dashboard panel and every alert is evaluated by it.

Each expression must parse and return data, at the end of the load or a few seconds later
(gauges such as waiting requests are up during the load; scale-downs come after it). A panel
that cannot have data here says why in its description ("relais: no data in tests: <why>"),
and then must indeed have none (a stale excuse fails). A panel reading series that a parallel
change adds ("relais: pending: <selector>: ...") may be empty only while Prometheus has no
series for that selector at all.
Alerts are checked on their signal (the expression without its final threshold); the few whose
inputs cannot exist here are listed, with the reason, in ALERTS_WITHOUT_DATA. Firing and not
firing are promtool's unit tests (test_rules.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pathlib
import random
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import kmock
import pytest
import yaml
from relais_operator.settings import OperatorSettings

from tests.fakes.process import FakeEngine
from tests.fakes.servers import GatewayProcess, free_port, gateway_process
from tests.observability.prom import (
    RULES,
    Expression,
    Prometheus,
    alert_rules,
    panel_expressions,
    prometheus,
    signal,
)
from tests.operator.conftest import LLMD_PATH, NS, Api, Operator, eventually, llmd
from tests.operator.test_autoscaling import SLICES_PATH, endpoint_slice

pytestmark = pytest.mark.timeout(240)

LOAD_S = 20.0
WORKERS = 8
VLLM_MODEL = "tiny-vllm"
OLLAMA_MODEL = "tiny-ollama"
BROKEN_MODEL = "broken"  # its only engine answers 500 (healthy otherwise): 5xx and ejections
GATEWAY_SERVICE = "relais-gateway-metrics"
KEYS = {"team-a": "sk-test-team-a-0123456789", "team-b": "sk-test-team-b-0123456789"}
ALERTS_WITHOUT_DATA = {
    "RelaisColdStartTimedOut": "cold starts need the Kubernetes source and a model at zero"
    " replicas (tests/sim); the static gateway here answers 503 at once",
}


def gateway_config(vllm: list[str], ollama: str, broken: str, auth: Any) -> dict[str, Any]:
    limits = {"maxTokens": 64, "maxConcurrentRequests": 2}  # so requests wait at the gateway
    return {
        "deployments": [
            {"name": "tiny-vllm", "engine": "vllm", "servedModelName": VLLM_MODEL,
             "endpoints": vllm, "requestLimits": limits},
            {"name": "tiny-ollama", "engine": "ollama", "servedModelName": OLLAMA_MODEL,
             "model": "qwen2.5:0.5b", "endpoints": [ollama], "requestLimits": limits},
            {"name": "broken", "engine": "vllm", "servedModelName": BROKEN_MODEL,
             "model": VLLM_MODEL, "endpoints": [broken]},
        ],
        "auth": auth,
    }  # fmt: skip


def valid_auth() -> dict[str, Any]:
    return {"keys": [{"name": name, "key": key} for name, key in KEYS.items()]}


@contextlib.contextmanager
def engines() -> Iterator[tuple[list[FakeEngine], FakeEngine, FakeEngine]]:
    with (
        FakeEngine("vllm", models=[VLLM_MODEL], first_token_delay_ms=150, tokens=6) as first,
        FakeEngine("vllm", models=[VLLM_MODEL], first_token_delay_ms=150, tokens=6) as second,
        FakeEngine("ollama", first_token_delay_ms=50) as ollama,
        FakeEngine("vllm", models=[VLLM_MODEL], status=500) as broken,
    ):
        yield [first, second], ollama, broken


def autoscaled_vllm() -> dict[str, Any]:
    return {
        "engine": "vllm",
        "model": "Qwen/Qwen2.5-0.5B-Instruct",
        "servedModelName": VLLM_MODEL,
        "gpu": {"count": 0},
        "replicas": 0,
        "autoscaling": {
            "minReplicas": 0,
            "maxReplicas": 3,
            "targetRequests": 2,
            "scaleDownDelaySeconds": 0,
        },
    }


def invalid_vllm() -> dict[str, Any]:
    # A flag the operator sets itself: Ready=False, reason InvalidSpec.
    return {
        "engine": "vllm",
        "model": "Qwen/Qwen2.5-0.5B-Instruct",
        "gpu": {"count": 0},
        "args": ["--served-model-name", "mine"],
    }


@pytest.fixture
async def operator_metrics(
    api: Api, server: kmock.KubernetesEmulator, kubeconfig: pathlib.Path
) -> AsyncIterator[int]:
    """The real operator (metrics on a free port) against KMock; yields the metrics port."""
    del kubeconfig
    server.resources["discovery.k8s.io/v1/endpointslices"] = kmock.ResourceInfo(
        kind="EndpointSlice",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "delete"},
    )
    port = free_port()
    settings = OperatorSettings(
        liveness_port=0,
        metrics_host="127.0.0.1",
        metrics_port=port,
        gateway_service=f"{NS}/{GATEWAY_SERVICE}",
        autoscale_interval_s=0.5,
    )
    runner = Operator(settings)
    await runner.start()
    try:
        yield port
    finally:
        await runner.stop()


async def publish_gateway(api: Api, gateway_port: int) -> None:
    """The gateway in its metrics Service's EndpointSlices, beside one that cannot be read."""
    await api.create(SLICES_PATH, endpoint_slice("gw-live", gateway_port, GATEWAY_SERVICE))
    await api.create(SLICES_PATH, endpoint_slice("gw-gone", free_port(), GATEWAY_SERVICE))


# ------------------------------------------------------------------ load


def requests_mix() -> Iterator[tuple[str, dict[str, Any], str]]:
    """(key, body, path) in a fixed mix: mostly good traffic, and every error the panels show."""
    good = KEYS["team-a"], KEYS["team-b"]
    messages = [{"role": "user", "content": "Hello there"}]
    mix: list[tuple[str, dict[str, Any], str]] = [
        (good[0], {"model": VLLM_MODEL, "messages": messages, "stream": True}, "chat"),
        (good[1], {"model": VLLM_MODEL, "messages": messages}, "chat"),
        (good[0], {"model": VLLM_MODEL, "messages": messages, "stream": True}, "chat"),
        (good[1], {"model": OLLAMA_MODEL, "messages": messages, "stream": True}, "chat"),
        (good[0], {"model": BROKEN_MODEL, "messages": messages}, "chat"),  # 5xx
        ("sk-wrong-key-0123456789", {"model": VLLM_MODEL, "messages": messages}, "chat"),  # 401
        (good[1], {"model": "no-such-model", "messages": messages}, "chat"),  # 404
        (good[0], {"model": VLLM_MODEL, "messages": messages, "max_tokens": 9999}, "chat"),
    ]
    return itertools.cycle(mix)


async def worker(session: aiohttp.ClientSession, url: str, stop_at: float, seed: int) -> int:
    loop = asyncio.get_running_loop()
    sent = 0
    mix = requests_mix()
    for _ in range(seed):
        next(mix)
    while loop.time() < stop_at:
        key, body, _ = next(mix)
        headers = {"Authorization": f"Bearer {key}"}
        async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
            await resp.read()
        sent += 1
        await asyncio.sleep(random.uniform(0, 0.05))
    return sent


async def load(url: str, seconds: float) -> int:
    stop_at = asyncio.get_running_loop().time() + seconds
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        sent = await asyncio.gather(*(worker(session, url, stop_at, i) for i in range(WORKERS)))
    return sum(sent)


async def break_key_reload(gateway: GatewayProcess, after_s: float) -> None:
    """Halfway through, an edit that is not valid auth: the gateway keeps its keys (reload_ok 0)."""
    await asyncio.sleep(after_s)
    config = yaml.safe_load(gateway.config.read_text())
    config["auth"] = {"keys": "not a list"}
    gateway.config.write_text(yaml.safe_dump(config))


# ------------------------------------------------------------------ checks


def has_data(answer: dict[str, Any]) -> bool:
    return bool(answer.get("data", {}).get("result"))


def query_at(prom: Prometheus, promql: str, times: tuple[float, ...]) -> dict[str, Any]:
    """The first answer with data among `times`, else the last answer."""
    for at in times:
        answer = prom.query(promql, at)
        if answer.get("status") != "success" or has_data(answer):
            return answer
    return answer


def check_panel(prom: Prometheus, expression: Expression, times: tuple[float, ...]) -> str | None:
    """None when the panel's expression behaves as its description says; else the complaint."""
    answer = query_at(prom, expression.promql(), times)
    if answer.get("status") != "success":
        return f"{expression.where}: does not evaluate: {answer.get('error')}"
    reason, pending = expression.no_data_reason, expression.pending_selector
    if reason is not None:
        if has_data(answer):
            return f"{expression.where}: says 'no data in tests' ({reason[:60]}...) but has data"
        return None
    if pending is not None and not has_data(prom.query(f"count({pending})")):
        return None  # the selector's series do not exist yet: allowed, and reported
    if not has_data(answer):
        return f"{expression.where}: no data for {expression.promql()}"
    return None


def pending_absent(prom: Prometheus) -> list[str]:
    selectors = {e.pending_selector for e in panel_expressions() if e.pending_selector}
    return sorted(s for s in selectors if not has_data(prom.query(f"count({s})")))


def check_alert(prom: Prometheus, rule: dict[str, Any], times: tuple[float, ...]) -> list[str]:
    name, expr = rule["alert"], rule["expr"]
    complaints = []
    answer = prom.query(expr)
    if answer.get("status") != "success":
        complaints.append(f"alert {name}: does not evaluate: {answer.get('error')}")
    if name in ALERTS_WITHOUT_DATA:
        return complaints
    if not has_data(query_at(prom, signal(expr), times)):
        complaints.append(f"alert {name}: its signal has no data: {signal(expr)}")
    return complaints


async def scaled_down(prom: Prometheus) -> None:
    """Once the load is over and every gateway can be read, the autoscaler scales down."""

    async def check() -> bool:
        return has_data(prom.query("relais_operator_autoscaler_scale_downs_total > 0"))

    await eventually(check, within=30, what="a scale-down seen by Prometheus")


async def rules_evaluated(prom: Prometheus) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        groups = prom.api("/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        done = rules and all(rule.get("lastEvaluation", "").startswith("2") for rule in rules)
        return rules if done else None

    found: list[dict[str, Any]] = await eventually(check, within=30, what="rules evaluated")
    return found


async def test_every_panel_and_alert_has_data_in_a_real_prometheus(
    api: Api, operator_metrics: int
) -> None:
    with engines() as (vllm, ollama, broken):
        config = gateway_config([fake.url for fake in vllm], ollama.url, broken.url, valid_auth())
        # The load's wrong keys feed the 4xx panels: no throttling of the test's address.
        env = {**os.environ, "RELAIS_GATEWAY_AUTH_FAILURES_PER_MINUTE": "100000"}
        with gateway_process(config, env=env) as gateway:
            gateway_port = int(gateway.url.rsplit(":", 1)[1])
            await publish_gateway(api, gateway_port)
            await api.create(LLMD_PATH, llmd("tiny-vllm", autoscaled_vllm()))
            await api.create(LLMD_PATH, llmd("bad", invalid_vllm()))
            targets = {
                "relais-gateway": [f"127.0.0.1:{gateway_port}"],
                "relais-operator": [f"127.0.0.1:{operator_metrics}"],
                "engines": [fake.url.removeprefix("http://") for fake in vllm],
            }
            with prometheus(targets, [RULES]) as prom:
                breaker = asyncio.create_task(break_key_reload(gateway, LOAD_S / 2))
                sent = await load(gateway.url, LOAD_S)
                loaded = time.time() - 1.5  # a scrape within the load
                await breaker
                await api.delete(f"{SLICES_PATH}/gw-gone")  # whole readings: scale-downs
                await scaled_down(prom)
                await asyncio.sleep(3)  # a few samples of the new counter, for increase()
                times = (loaded, time.time())
                complaints = [
                    c for e in panel_expressions() if (c := check_panel(prom, e, times)) is not None
                ]
                for rule in alert_rules():
                    complaints += check_alert(prom, rule, times)
                evaluated = await rules_evaluated(prom)
                reload_ok = prom.query("relais_gateway_auth_reload_ok")["data"]["result"]
                absent = pending_absent(prom)
    assert sent > 100, f"only {sent} requests in {LOAD_S} s"
    assert not complaints, "\n".join(complaints)
    assert {rule["name"] for rule in evaluated} == {rule["alert"] for rule in alert_rules()}
    assert all(rule["health"] == "ok" for rule in evaluated), evaluated
    assert [float(sample["value"][1]) for sample in reload_ok] == [0.0]  # the bad edit showed
    if absent:  # said in the test report, not hidden: the gateway's per-key series are pending
        print(f"pending gateway series absent, their panels allowed to be empty: {absent}")
