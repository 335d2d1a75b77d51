"""The routing benchmark's pure parts: seeded traces, metric parsing, the figures it reports."""

from __future__ import annotations

import math

from relais_gateway.config import StaticDeployment
from relais_gateway.routing.prefix import chat_prefix

from benchmarks.routing import (
    Outcome,
    Run,
    Session,
    Shape,
    Turn,
    agreement,
    gateway_config,
    inflight,
    load_excess,
    model_for,
    percentile,
    prefix_decisions,
    rose,
    share_above,
    traces,
)

SHAPE = Shape.quick()


def test_traces_are_deterministic_per_seed() -> None:
    assert traces(SHAPE, 1) == traces(SHAPE, 1)
    assert traces(SHAPE, 1) != traces(SHAPE, 2)


def test_multi_turn_resends_the_conversation_and_arrives_in_order() -> None:
    multi = traces(SHAPE, 3)[0]
    assert multi.requests == SHAPE.conversations * SHAPE.turns
    starts = [s.start_s for s in multi.sessions]
    assert starts == sorted(starts)
    assert starts[0] > 0
    for session in multi.sessions:
        assert len(session.turns) == SHAPE.turns
        assert session.turns[0].think_s == 0.0
        assert all(t.think_s > 0 for t in session.turns[1:])
    assert 1 < len({s.system for s in multi.sessions}) <= SHAPE.system_prompts  # shared


def test_each_turn_sends_the_earlier_turns_with_their_answers() -> None:
    session = Session(0.0, "be brief", (Turn(0.0, "q0"), Turn(1.0, "q1"), Turn(1.0, "q2")))
    first = session.messages([])
    assert first == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q0"}]
    third = session.messages(["a0", "a1"])
    assert third[:2] == first
    assert [(m["role"], m["content"]) for m in third[2:]] == [
        ("assistant", "a0"), ("user", "q1"), ("assistant", "a1"), ("user", "q2"),
    ]  # fmt: skip
    assert Session(0.0, "", (Turn(0.0, "q"),)).messages([]) == [{"role": "user", "content": "q"}]


def test_uniform_shares_nothing_and_hot_shares_one_system_prompt() -> None:
    _, uniform, hot = traces(SHAPE, 4)
    prefixes = {chat_prefix(s.messages([]), 100) for s in uniform.sessions}
    assert len(prefixes) == uniform.requests == SHAPE.single_requests
    assert {s.system for s in uniform.sessions} == {""}
    systems = {s.system for s in hot.sessions}
    assert len(systems) == 1
    assert len(next(iter(systems)).split()) == SHAPE.hot_system_words
    assert len({s.turns[0].user for s in hot.sessions}) == hot.requests


def test_round_robin_names_each_engine_in_turn() -> None:
    pick = model_for("round-robin", 3)
    assert [pick(n) for n in range(4)] == ["sim-rr-0", "sim-rr-1", "sim-rr-2", "sim-rr-0"]
    assert model_for("PrefixHash", 3)(5) == "sim-ph"
    assert model_for("LeastLoad", 3)(5) == "sim-ll"


def test_gateway_config_is_a_valid_static_config() -> None:
    config = gateway_config(["http://e0", "http://e1"], 100)
    deployments = [StaticDeployment.model_validate(d) for d in config["deployments"]]
    assert [d.name for d in deployments] == ["sim-ph", "sim-ll", "sim-rr-0", "sim-rr-1"]
    assert deployments[0].routing.strategy == "PrefixHash"
    assert deployments[0].routing.prefix_char_length == 100
    assert deployments[3].endpoints == ["http://e1"]


METRICS = """\
relais_gateway_inflight_requests{endpoint="http://e0"} 3.0
relais_gateway_inflight_requests{endpoint="http://e1"} 1.0
relais_gateway_routing_decisions_total{strategy="PrefixHash",first_choice="false"} 2.0
relais_gateway_routing_decisions_total{first_choice="true",strategy="PrefixHash"} 8.0
relais_gateway_routing_decisions_total{strategy="LeastLoad",first_choice="true"} 5.0
relais_gateway_routing_decisions_created{strategy="LeastLoad",first_choice="true"} 1.7e9
"""


def test_gauges_and_decisions_are_read_from_metrics_text() -> None:
    assert inflight(METRICS, ["http://e0", "http://e1", "http://e2"]) == [3, 1, 0]
    assert prefix_decisions(METRICS) == {"false": 2.0, "true": 8.0}


def test_load_excess_is_max_minus_load_factor_times_mean() -> None:
    assert load_excess([3, 1, 0, 0], 1.25) == 3 - 1.25
    assert load_excess([0, 0], 1.25) is None
    assert load_excess([3, 1, 0, 0], 1.25, among=[1]) == 1 - 1.25
    assert load_excess([3, 1, 0, 0], 1.25, among=[]) is None
    assert rose([0, 2, 1], [1, 2, 0]) == [0]
    assert share_above([0.5, 1.5, 2.0, 1.0], 1.0) == 0.5


def test_run_figures() -> None:
    run = Run(seconds=2.0, hit_tokens=3, miss_tokens=1)
    run.outcomes = [Outcome(f"r{i}", session=i % 2, ttft_s=i / 10, tokens=4) for i in range(4)]
    run.outcomes.append(Outcome("bad", session=9, error="HTTP 502"))
    run.served_by = {"r0": 0, "r1": 1, "r2": 0, "r3": 0}
    assert (run.rps, run.tokens_per_s, run.hit_rate, run.errors) == (2.0, 8.0, 0.75, 1)
    assert run.ttft(0.5) == 0.2
    assert run.sticky == 0.5  # session 0: r0 then r2 on engine 0; session 1: r1 (1) then r3 (0)
    assert math.isnan(Run().max_excess)
    assert math.isnan(percentile([], 0.5))


def test_agreement_compares_a_and_b_requests_by_prefix() -> None:
    served = {"a-0": 0, "b-0": 0, "a-1": 1, "b-1": 2}
    assert agreement(served, 2) == 0.5
    assert agreement({}, 1) == 0.0
