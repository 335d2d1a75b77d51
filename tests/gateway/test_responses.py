"""Stateful Responses across replicas and gateways (issue #17), with the official `openai` SDK.

Three fake vLLM replicas keep responses in memory, as vLLM does; two gateway processes share
nothing. Every turn of a conversation must reach the replica that made the first one, whichever
gateway it goes through.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from relais_gateway.dialects.responses import replica_token

from tests.fakes import servers
from tests.fakes.process import FakeEngine

MODEL = "assistant"
ENGINE_MODEL = "org/model"


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[FakeEngine]]:
    engines = [FakeEngine("vllm", models=[ENGINE_MODEL]) for _ in range(3)]
    for engine in engines:
        engine.__enter__()
    yield engines
    for engine in engines:
        engine.__exit__(None, None, None)


def _config(urls: list[str]) -> dict[str, object]:
    return {
        "deployments": [
            {
                "name": "a",
                "engine": "vllm",
                "servedModelName": MODEL,
                "model": ENGINE_MODEL,
                "endpoints": urls,
                "routing": {"strategy": "LeastLoad"},
            }
        ],
        "auth": {"keys": [{"name": "k", "key": "sk-k"}]},
    }


@pytest.fixture(scope="module")
def gateways(replicas: list[FakeEngine]) -> Iterator[list[str]]:
    config = _config([r.url for r in replicas])
    with servers.gateway(config) as first, servers.gateway(config) as second:
        yield [first, second]


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-k", max_retries=0)


def _served_by(replicas: list[FakeEngine]) -> list[int]:
    """How many /v1/responses requests each replica received."""
    return [
        sum(1 for r in engine.requests_sync() if r["path"].startswith("/v1/responses"))
        for engine in replicas
    ]


def test_five_turns_over_two_gateways_stay_on_the_first_replica(
    replicas: list[FakeEngine], gateways: list[str]
) -> None:
    for engine in replicas:
        engine.reset_sync()
    clients = [_client(url) for url in gateways]
    first = clients[0].responses.create(model=MODEL, input="hello")
    assert first.model == MODEL
    previous = first.id
    for turn in range(2, 6):
        client = clients[turn % 2]  # alternate gateways: nothing is shared between them
        answer = client.responses.create(
            model=MODEL, input=f"turn {turn}", previous_response_id=previous
        )
        assert answer.output_text == f"turn {turn}"  # the replica held the previous turns
        assert answer.previous_response_id == previous
        previous = answer.id
    counts = _served_by(replicas)
    assert sorted(counts) == [0, 0, 5]  # every turn on one replica
    streamed = clients[1].responses.create(
        model=MODEL, input="more", previous_response_id=previous, stream=True
    )
    events = list(streamed)
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "turn 6"
    assert sorted(_served_by(replicas)) == [0, 0, 6]


def test_retrieve_input_items_cancel_delete(gateways: list[str]) -> None:
    made = _client(gateways[0]).responses.create(model=MODEL, input="keep me", background=True)
    other = _client(gateways[1])
    assert other.responses.retrieve(made.id).id == made.id
    items = other.responses.input_items.list(made.id)
    assert items.data
    assert other.responses.cancel(made.id).status == "cancelled"
    other.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(made.id)


def test_unknown_tokens_and_vanished_replicas_are_404(
    replicas: list[FakeEngine], gateways: list[str]
) -> None:
    client = _client(gateways[0])
    made = client.responses.create(model=MODEL, input="x")
    engine_id, _, token = made.id.rpartition(".r")
    assert engine_id.startswith("resp_")
    forged = f"{engine_id}.r{'0' * 12}"  # a token that names no replica: no address is reachable
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model=MODEL, input="y", previous_response_id=forged)
    assert caught.value.code == "response_not_found"
    bare = httpx.get(
        gateways[0] + f"/v1/responses/{engine_id}", headers={"Authorization": "Bearer sk-k"}
    )
    assert bare.status_code == 404
    # The replica that made it leaves: the client is told so, not another replica's "not found".
    holder = next(r for r in replicas if replica_token(r.url) == token)
    with servers.gateway(_config([r.url for r in replicas if r is not holder])) as shrunk:
        with pytest.raises(openai.NotFoundError) as gone:
            _client(shrunk).responses.retrieve(made.id)
        assert "replica that created it is gone" in gone.value.message
