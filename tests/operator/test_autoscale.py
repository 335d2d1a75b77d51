"""The autoscaler's pure core: the metrics parser, gateway discovery and the decision, on a fake
clock (every `now` is given), with hypothesis for the rules that must hold whatever the demand."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from relais_operator.autoscale import (
    Decision,
    MetricsError,
    Policy,
    Recommender,
    gateway_urls,
    parse_demand,
    total_demand,
)

INTERVAL = 5.0
WINDOW = 2.5 * INTERVAL  # as the loop sets it: the last 3 samples
POLICY = Policy(min_replicas=0, max_replicas=5, target_requests=8, scale_down_delay_s=60)

PAGE = r"""# HELP relais_gateway_model_inflight_requests Requests in flight per served model.
# TYPE relais_gateway_model_inflight_requests gauge
relais_gateway_model_inflight_requests{model="qwen2.5:7b"} 3.0
relais_gateway_model_inflight_requests{model="we \"quote\", and \\ slash"} 2
# HELP relais_gateway_waiting_requests Requests waiting per served model.
# TYPE relais_gateway_waiting_requests gauge
relais_gateway_waiting_requests{model="qwen2.5:7b"} 4 1700000000000
relais_gateway_waiting_requests{model="idle"} 0.0
relais_gateway_inflight_requests{endpoint="http://10.0.0.1:11434"} 3.0
relais_gateway_requests_total{route="chat",model="qwen2.5:7b",status="200"} 17.0
"""


def test_parser_sums_the_two_gauges_per_model() -> None:
    assert parse_demand(PAGE) == {
        "qwen2.5:7b": 7.0,
        'we "quote", and \\ slash': 2.0,
        "idle": 0.0,
    }


def test_parser_reads_a_gateway_with_no_model_yet() -> None:
    page = "# TYPE relais_gateway_model_inflight_requests gauge\n# TYPE x counter\nx 1\n"
    assert parse_demand(page) == {}


@pytest.mark.parametrize(
    "page",
    [
        "",  # not a gateway's page (a wrong port): missing data, not zero demand
        "# TYPE other gauge\nother 1\n",
        'relais_gateway_waiting_requests{model="a"} lots\n',
        'relais_gateway_waiting_requests{model="a"} -1\n',
        'relais_gateway_waiting_requests{model="a"} NaN\n',
        'relais_gateway_waiting_requests{endpoint="a"} 1\n',
        'relais_gateway_waiting_requests{model="a} 1\n',
    ],
)
def test_parser_refuses_what_is_not_a_gateway_page(page: str) -> None:
    with pytest.raises(MetricsError):
        parse_demand(page)


def test_demand_is_summed_over_gateways() -> None:
    assert total_demand([{"a": 1.0, "b": 2.0}, {"a": 3.0}]) == {"a": 4.0, "b": 2.0}


def _slice(service: str, endpoints: list[dict[str, Any]], port: str = "http") -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "relais",
            "name": f"{service}-abc",
            "labels": {"kubernetes.io/service-name": service},
        },
        "ports": [{"name": port, "port": 8000}],
        "endpoints": endpoints,
    }


def test_gateway_urls_are_the_ready_endpoints_of_the_service_on_port_http() -> None:
    slices = [
        _slice(
            "relais-gateway",
            [
                {"addresses": ["10.0.0.2"], "conditions": {"ready": True}},
                {"addresses": ["10.0.0.1"]},  # unset ready means ready
                {"addresses": ["10.0.0.3"], "conditions": {"ready": False}},
                {"addresses": ["10.0.0.4"], "conditions": {"ready": True, "terminating": True}},
                {"addresses": ["fd00::5"], "conditions": {"ready": True}},
            ],
        ),
        _slice("other", [{"addresses": ["10.0.9.9"]}]),  # KMock ignores labelSelector
        _slice("relais-gateway", [{"addresses": ["10.0.8.8"]}], port="grpc"),  # no such port
    ]
    assert gateway_urls(slices, "relais", "relais-gateway") == [
        "http://10.0.0.1:8000/metrics",
        "http://10.0.0.2:8000/metrics",
        "http://[fd00::5]:8000/metrics",
    ]
    assert gateway_urls(slices, "elsewhere", "relais-gateway") == []


def test_gateway_urls_prefer_the_management_port_named_metrics() -> None:
    both = _slice("relais-gateway-metrics", [{"addresses": ["10.0.0.1"]}])
    both["ports"] = [{"name": "http", "port": 8000}, {"name": "metrics", "port": 9090}]
    only = _slice("relais-gateway-metrics", [{"addresses": ["10.0.0.2"]}], port="metrics")
    assert gateway_urls([both, only], "relais", "relais-gateway-metrics") == [
        "http://10.0.0.1:9090/metrics",
        "http://10.0.0.2:8000/metrics",
    ]


def test_target_is_ceil_of_demand_over_target_within_bounds() -> None:
    policy = Policy(min_replicas=1, max_replicas=4, target_requests=8, scale_down_delay_s=0)
    assert [policy.target(d) for d in (0, 0.1, 8, 8.01, 16, 100)] == [1, 1, 1, 2, 2, 4]


class Clock:
    """Ticks of a fake loop: `tick(demand)` feeds one sample and returns the decision."""

    def __init__(self, policy: Policy = POLICY, current: int = 0, started_at: float = 0.0) -> None:
        self.policy, self.current, self.now = policy, current, started_at
        self.started_at = started_at
        self.rec = Recommender(first_seen=started_at, window_s=WINDOW)
        self.last: Decision | None = None

    def tick(self, demand: float, *, complete: bool = True, apply: bool = True) -> int:
        decision = self.rec.update(
            self.policy,
            self.current,
            demand,
            complete=complete,
            now=self.now,
            started_at=self.started_at,
        )
        self.now += INTERVAL
        self.last = decision
        if apply:
            self.current = decision.desired
        return decision.desired

    def run(self, demand: float, seconds: float, **kw: Any) -> list[int]:
        return [self.tick(demand, **kw) for _ in range(int(seconds / INTERVAL))]


def test_demand_is_averaged_over_three_ticks() -> None:
    clock = Clock()
    decision = clock.rec.update(POLICY, 0, 24, complete=True, now=0, started_at=0)
    assert decision.demand == 24
    decision = clock.rec.update(POLICY, 3, 0, complete=True, now=5, started_at=0)
    assert decision.demand == 12
    decision = clock.rec.update(POLICY, 3, 0, complete=True, now=10, started_at=0)
    assert decision.demand == 8
    decision = clock.rec.update(POLICY, 3, 0, complete=True, now=15.4, started_at=0)
    assert decision.demand == 0  # the 24 has left the window


def test_scales_up_at_once_and_down_only_after_the_delay() -> None:
    clock = Clock(started_at=0.0)
    clock.run(0, 60)  # past the start delay
    assert clock.tick(40) == 2  # avg (0 + 0 + 40) / 3 = 13.3 -> 2, the same tick
    assert clock.tick(40) == 4  # 26.7 -> 4
    assert clock.tick(40) == 5  # 40 -> 5, capped at maxReplicas
    down = clock.run(0, 120)
    first_down = next(i for i, value in enumerate(down) if value < 5)
    assert first_down * INTERVAL >= POLICY.scale_down_delay_s
    assert down[-1] == 0  # minReplicas 0: idle for the delay -> scaled to zero


def test_no_scale_down_within_the_delay_of_the_start() -> None:
    clock = Clock(current=3, started_at=1000.0)
    held = clock.run(0, 55)
    assert set(held) == {3}
    assert clock.run(0, 10)[-1] == 0


def test_missing_data_never_scales_down_but_may_scale_up() -> None:
    clock = Clock(current=2)
    clock.run(0, 55, complete=False)
    assert clock.current == 2
    assert clock.tick(100, complete=False) == 5  # what could be read calls for more
    assert set(clock.run(0, 60, complete=False)) == {5}
    # Data back: the window must first be all-complete and below for the whole delay.
    back = clock.run(0, 120)
    assert back[: int(POLICY.scale_down_delay_s / INTERVAL) - 1] == [5] * 11
    assert back[-1] == 0


def test_a_scale_up_by_the_gateway_is_not_scaled_away() -> None:
    clock = Clock()
    clock.run(0, 120)  # long idle at zero
    clock.current = 1  # the gateway woke the model for a request the last scrape did not see
    assert set(clock.run(0, 55)) == {1}
    assert clock.run(0, 10)[-1] == 0


def test_bounds_apply_at_once() -> None:
    policy = Policy(min_replicas=2, max_replicas=3, target_requests=8, scale_down_delay_s=300)
    assert Clock(policy, current=0).tick(0) == 2
    assert Clock(policy, current=7).tick(0) == 3


def test_scale_down_goes_to_the_highest_recommendation_of_the_window() -> None:
    policy = Policy(min_replicas=0, max_replicas=10, target_requests=1, scale_down_delay_s=30)
    clock = Clock(policy, current=10)
    clock.run(0, 40, apply=False)
    clock.run(4, 15, apply=False)  # recommendation 4 (once averaged in)
    assert clock.tick(0) == 4
    assert clock.run(0, 60)[-1] == 0


def test_a_changed_policy_restarts_the_window() -> None:
    clock = Clock(current=2)
    clock.run(0, 55)
    clock.policy = Policy(min_replicas=0, max_replicas=5, target_requests=4, scale_down_delay_s=60)
    assert set(clock.run(0, 55)) == {2}
    assert clock.run(0, 10)[-1] == 0


ticks = st.lists(
    st.tuples(st.floats(min_value=0, max_value=100), st.booleans()), min_size=1, max_size=60
)
policies = st.builds(
    lambda low, span, target, delay: Policy(low, low + span, target, delay),
    st.integers(0, 3),
    st.integers(0, 5),
    st.integers(1, 16),
    st.sampled_from([0.0, 10.0, 30.0, 300.0]),
)


@settings(max_examples=300, deadline=None)
@given(policies, st.integers(0, 10), ticks)
def test_invariants_hold_whatever_the_demand(
    policy: Policy, start: int, samples: list[tuple[float, bool]]
) -> None:
    clock = Clock(policy, current=start, started_at=0.0)
    since_down_blocker = 0.0  # the last time scale-down was not allowed (start, up, missing)
    for demand, complete in samples:
        before, now = clock.current, clock.now
        after = clock.tick(demand, complete=complete)
        assert policy.min_replicas <= after <= policy.max_replicas
        assert clock.last is not None
        if after > before:
            assert after == policy.target(clock.last.demand)
        if after < before and before <= policy.max_replicas:
            assert complete, "missing data scaled down"
            assert now - since_down_blocker >= policy.scale_down_delay_s
        if not complete or after > before:
            since_down_blocker = now


def test_parser_reads_the_real_gateways_page() -> None:
    """The contract with the gateway: its own /metrics text, as it renders it."""
    from prometheus_client import generate_latest
    from relais_gateway.edge.metrics import Metrics
    from relais_gateway.policy.admission import Admission
    from relais_gateway.routing.balancer import Balancer

    balancer, admission = Balancer(cooldown_s=1), Admission(10, 1, 1)
    metrics = Metrics(balancer, admission)
    assert parse_demand(generate_latest(metrics.registry).decode()) == {}  # no request yet
    balancer.inflight_by_model.update({"qwen": 3, 'a "b"': 1})
    balancer.inflight_by_replica["http://10.0.0.1:11434"] = 3
    admission.waiting["qwen"] = 2
    page = generate_latest(metrics.registry).decode()
    assert parse_demand(page) == {"qwen": 5.0, 'a "b"': 1.0}


def test_the_gateway_service_setting() -> None:
    from pydantic import ValidationError
    from relais_operator.settings import OperatorSettings

    assert OperatorSettings().gateway is None  # off by default
    assert OperatorSettings(gateway_service="relais/relais-gateway").gateway == (
        "relais",
        "relais-gateway",
    )
    assert OperatorSettings().autoscale_interval_s == 5
    for bad in ("relais-gateway", "/x", "a/", "a/b/c"):
        with pytest.raises(ValidationError, match="namespace/name"):
            OperatorSettings(gateway_service=bad)


def _body(name: str, spec: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


def test_demand_goes_to_the_resource_the_gateway_routes_to() -> None:
    from relais_operator.autoscale_loop import autoscaled, demand_of

    scaling = {"maxReplicas": 2}
    bodies = [
        _body("b", {"engine": "ollama", "model": "m", "autoscaling": scaling}),
        _body("a", {"engine": "ollama", "model": "m", "autoscaling": scaling}),  # same name
        _body(
            "c", {"engine": "ollama", "model": "x", "servedModelName": "n", "autoscaling": scaling}
        ),
        _body("fixed", {"engine": "ollama", "model": "m"}),  # no autoscaling: not ours
        _body("bad", {"engine": "ollama", "model": "has space", "autoscaling": scaling}),
    ]
    targets = autoscaled(bodies)
    assert [target.key for target in targets] == [
        ("default", "a"),
        ("default", "b"),
        ("default", "c"),
    ]
    demand = demand_of(targets, {"m": 7.0, "n": 2.0, "x": 100.0})
    # Two resources serving one name: the first (namespace/name order) gets it, as routed.
    assert demand == {("default", "a"): 7.0, ("default", "b"): 0.0, ("default", "c"): 2.0}
