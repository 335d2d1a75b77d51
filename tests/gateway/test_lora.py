"""LoRA adapters in the gateway, pure: names and aliases, clashes, the Kubernetes and static
sources, which replicas hold an adapter, and adapter-affine replica choice (no I/O)."""

from __future__ import annotations

import collections
import logging
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from relais_api import Routing
from relais_gateway.config import StaticDeployment
from relais_gateway.routing.adapters import AdapterTracker, View, loaded_adapters
from relais_gateway.routing.balancer import ADAPTER_SLACK, Affinity, Balancer, homes
from relais_gateway.routing.kubernetes import build_backends
from relais_gateway.routing.registry import Adapter, Backend, MemorySource, backend_from_static

PREFIX = Routing(strategy="PrefixHash", prefix_char_length=100, load_factor=1.25)
LEAST = Routing(strategy="LeastLoad")
REPLICAS = tuple(f"http://10.0.0.{i}:8000" for i in range(1, 5))
ADAPTERS = tuple(f"bot-{i}" for i in range(8))


def base(model: str = "qwen", *adapters: str, engine: str = "vllm") -> Backend:
    return Backend(
        name=model,
        engine=engine,
        model=model,
        replicas=REPLICAS,
        adapters=tuple(Adapter(a) for a in adapters),
    )


# ---------------------------------------------------------------- names


def test_an_adapter_resolves_by_name_and_alias_and_the_engine_gets_its_name() -> None:
    source = MemorySource([base("qwen", "support-bot", "sql")])
    for asked in ("support-bot", "qwen_support-bot"):
        view = source.resolve(asked)
        assert view is not None
        assert view.model == asked  # answers name the model as the client did
        assert view.upstream_model == "support-bot"  # the engine gets the adapter's name
        assert view.label == "support-bot"  # one metrics label for both names
        assert view.parent == view.base_model == "qwen"
        assert view.replicas == REPLICAS
    plain = source.resolve("qwen")
    assert plain is not None
    assert plain.adapter is None
    assert plain.label == "qwen"
    assert source.resolve("qwen_nope") is None
    assert source.resolve("nope") is None
    assert [b.model for b in source.backends()] == ["qwen"]  # adapters are not backends


def test_clashes_are_logged_and_the_served_model_wins(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "relais_gateway.routing.registry")
    source = MemorySource(
        [
            base("alpha", "beta", "shared", "own"),  # `beta` is another deployment's name
            base("beta", "shared", "x"),  # `shared` is alpha's adapter already
            base("alpha_own"),  # a served name equal to alpha's alias of `own`
        ]
    )
    served = source.resolve("beta")
    assert served is not None
    assert served.adapter is None
    shared = source.resolve("shared")
    assert shared is not None
    assert shared.parent == "alpha"
    assert source.resolve("beta_shared") is None  # beta's `shared` is not routed at all
    own = source.resolve("own")
    assert own is not None
    assert own.parent == "alpha"
    alias = source.resolve("alpha_own")
    assert alias is not None
    assert alias.adapter is None
    alpha = source.resolve("alpha")
    assert alpha is not None
    assert [a.name for a in alpha.adapters] == ["shared", "own"]
    text = caplog.text
    assert "'beta' of 'alpha' has the name of a served model" in text
    assert "'shared' of 'beta' has the name of another adapter" in text
    assert "alias 'alpha_own'" in text
    caplog.clear()
    source.replace(source.backends())  # the same view again: nothing new to say
    assert "has the name" not in caplog.text


def test_static_adapters_are_strict() -> None:
    entry: dict[str, Any] = {"name": "q", "engine": "vllm", "servedModelName": "qwen"}
    deployment = StaticDeployment.model_validate({**entry, "adapters": [{"name": "sql"}]})
    backend = backend_from_static(deployment)
    assert backend.adapters == (Adapter("sql"),)
    for bad in (
        [{"name": "sql", "source": "hf://a/b"}],  # names only: the engine already serves them
        [{"name": "SQL"}],
        [{"name": "sql"}, {"name": "sql"}],
        [{"name": "qwen"}],
    ):
        with pytest.raises(ValidationError):
            StaticDeployment.model_validate({**entry, "adapters": bad})


def llmd(name: str, adapters: list[dict[str, Any]], status: list[Any] | None = None) -> Any:
    return {
        "metadata": {"name": name, "namespace": "models"},
        "spec": {
            "engine": "vllm",
            "model": "Qwen/Qwen2.5-7B-Instruct",
            "servedModelName": name,
            "adapters": adapters,
            "lora": {},
        },
        "status": {"adapters": status or []},
    }


def test_kubernetes_source_builds_adapters_from_spec_and_status() -> None:
    obj = llmd(
        "qwen",
        [{"name": "support-bot", "source": "hf://acme/support"}, {"name": "sql", "source": "a/b"}],
        [
            {"name": "sql", "state": "Failed", "message": "no adapter_config.json"},
            {"name": "support-bot", "state": "Ready", "readyReplicas": 2},
            {"name": "gone", "state": "Ready"},  # no longer in the spec: ignored
            {"state": "bogus"},  # unreadable: ignored
        ],
    )
    (backend,) = build_backends([obj], [])
    assert backend.adapters == (
        Adapter("support-bot", "Ready"),
        Adapter("sql", "Failed", "no adapter_config.json"),
    )
    source = MemorySource([backend])
    view = source.resolve("qwen_sql")
    assert view is not None
    assert view.adapter == Adapter("sql", "Failed", "no adapter_config.json")
    assert source.resolve("gone") is None


# ---------------------------------------------------------------- which replicas hold it


def test_loaded_adapters_are_the_models_with_a_parent() -> None:
    body = {
        "object": "list",
        "data": [
            {"id": "qwen", "parent": None, "root": "Qwen/Qwen2.5-7B-Instruct"},
            {"id": "sql", "parent": "qwen", "root": "/data/adapters/sql"},
            {"id": "x"},
        ],
    }
    assert loaded_adapters(orjson.dumps(body)) == {"sql"}
    with pytest.raises(ValueError, match="no `data` list"):
        loaded_adapters(b'{"data": 1}')


def test_holders_come_from_the_polled_views_for_vllm_only() -> None:
    now = [100.0]
    source = MemorySource([base("qwen", "sql"), base("llama", "tldr", engine="tgi")])
    tracker = AdapterTracker(source, interval_s=2.0, clock=lambda: now[0])
    sql, tldr = source.resolve("sql"), source.resolve("llama_tldr")
    assert sql is not None
    assert tldr is not None
    assert tracker.holders(tldr) == REPLICAS  # loaded at start: every ready replica
    assert tracker.holders(sql) == ()  # nothing polled yet
    tracker._views = {
        REPLICAS[0]: View(frozenset({"sql"}), 99.0),
        REPLICAS[1]: View(frozenset(), 99.0),
        REPLICAS[2]: View(frozenset({"sql"}), 90.0),  # stopped answering 10 s ago
    }
    assert tracker.holders(sql) == (REPLICAS[0],)
    tracker.missing(REPLICAS[0], "sql")  # its 404: not a holder until it lists it again
    assert tracker.holders(sql) == ()
    plain = source.resolve("qwen")
    assert plain is not None
    assert tracker.holders(plain) == REPLICAS


# ---------------------------------------------------------------- adapter-affine choice


def affinity(adapter: str, pool: tuple[str, ...] = REPLICAS) -> Affinity:
    return Affinity(adapter, ADAPTERS, pool)


def test_homes_spread_evenly_and_do_not_depend_on_order() -> None:
    table = homes(ADAPTERS, REPLICAS)
    assert collections.Counter(order[0] for order in table.values()) == dict.fromkeys(REPLICAS, 2)
    assert all(sorted(order) == sorted(REPLICAS) for order in table.values())
    assert homes(ADAPTERS[::-1], REPLICAS[::-1]) == table
    three = homes(ADAPTERS, REPLICAS[:3])
    assert max(collections.Counter(o[0] for o in three.values()).values()) == 3
    assert homes(ADAPTERS, ()) == {}


def test_an_adapter_goes_to_its_home_from_every_gateway() -> None:
    one, two = Balancer(10), Balancer(10)
    table = homes(ADAPTERS, REPLICAS)
    for adapter in ADAPTERS:
        for i in range(20):  # whatever the conversation
            prefix = f"user:question {i}"
            a = one.pick(REPLICAS, prefix=prefix, policy=PREFIX, affinity=affinity(adapter))
            b = two.pick(REPLICAS[::-1], prefix=prefix, policy=PREFIX, affinity=affinity(adapter))
            assert a == b == table[adapter][0]
    assert one.decisions["PrefixHash", "true"] == 8 * 20


def test_only_replicas_holding_the_adapter_are_chosen() -> None:
    balancer = Balancer(10)
    home = homes(ADAPTERS, REPLICAS)["bot-0"][0]
    holders = tuple(r for r in REPLICAS if r != home)  # its home has not loaded it yet
    for i in range(50):
        for policy in (PREFIX, LEAST):
            picked = balancer.pick(
                holders, prefix=f"p{i}", policy=policy, affinity=affinity("bot-0")
            )
            assert picked in holders


def test_past_the_bound_it_spills_where_the_adapter_was_active_and_keeps_conversations() -> None:
    balancer = Balancer(10)
    home = homes(ADAPTERS, REPLICAS)["bot-0"][0]
    balancer.inflight_by_replica = {home: 10}  # far above its bound
    first = balancer.pick(REPLICAS, prefix="conv-a", policy=PREFIX, affinity=affinity("bot-0"))
    assert first not in (None, home)
    for i in range(30):  # other conversations follow it where the adapter is now active
        picked = balancer.pick(REPLICAS, prefix=f"c{i}", policy=PREFIX, affinity=affinity("bot-0"))
        assert picked == first
    balancer.inflight_by_replica = {home: 0}
    back = balancer.pick(REPLICAS, prefix="conv-a", policy=PREFIX, affinity=affinity("bot-0"))
    assert back == home  # its home again as soon as it has room


def test_bounded_load_holds_for_a_hot_adapter() -> None:
    balancer = Balancer(10)
    picks = []
    for i in range(40):  # 40 concurrent requests for one adapter, none finishing
        replica = balancer.pick(REPLICAS, prefix=f"p{i}", policy=PREFIX, affinity=affinity("bot-3"))
        assert replica is not None
        balancer.begin_replica(replica)
        picks.append(replica)
        loads = [balancer.inflight_by_replica.get(r, 0) for r in REPLICAS]
        bound = ADAPTER_SLACK * PREFIX.load_factor * sum(loads) / len(REPLICAS)
        assert max(loads) <= bound + 1
    assert len(set(picks)) >= 2  # it spread


def test_least_load_with_adapters_is_plain_least_load() -> None:
    balancer = Balancer(10)
    balancer.inflight_by_replica = {REPLICAS[0]: 3, REPLICAS[1]: 0, REPLICAS[2]: 2, REPLICAS[3]: 1}
    picked = balancer.pick(REPLICAS, prefix="x", policy=LEAST, affinity=affinity("bot-0"))
    assert picked == REPLICAS[1]
