"""The fake vLLM's LoRA adapters: run-time loading, serving, and the GPU slot model.

The wire answers (statuses, bodies) are held to real vLLM's in test_vllm_transcripts.py; these
tests hold the behaviour around them: what a loaded adapter serves, start-time `lora_modules`,
and the slot model the routing benchmark counts (`max_loras`, `lora_load_ms`, `loads`).
"""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.fakes import lora, vllm
from tests.fakes.process import FakeEngine, switch_flags

BASE = "base-model"
LOAD_MS = 300


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Three adapter directories (the fake reads only their adapter_config.json)."""
    paths = {}
    for name in ("a", "b", "c"):
        path = tmp_path_factory.mktemp(f"adapter-{name}")
        (path / "adapter_config.json").write_text('{"peft_type": "LORA"}')
        paths[name] = str(path)
    return paths


@pytest.fixture(scope="module")
def slotted(adapters: dict[str, str]) -> Iterator[FakeEngine]:
    """Two slots, a 300 ms load, adapter `a` present from the start."""
    fake = FakeEngine(
        "vllm", models=[BASE], max_loras=2, lora_load_ms=LOAD_MS, lora_modules={"a": adapters["a"]}
    )
    with fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh(slotted: FakeEngine) -> None:
    slotted.reset_sync()


async def post(fake: FakeEngine, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(fake.url + path, json=body) as got:
        if got.content_type == "application/json":
            return got.status, await got.json()
        return got.status, await got.text()


async def chat(fake: FakeEngine, model: str) -> tuple[int, float]:
    """Status and seconds to the first streamed byte of a chat request for `model`."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    started = time.perf_counter()
    async with (
        aiohttp.ClientSession() as http,
        http.post(fake.url + "/v1/chat/completions", json=body) as got,
    ):
        await got.content.readany()
        first = time.perf_counter() - started
        await got.read()
        return got.status, first


async def test_start_time_modules_are_listed_with_parent_but_not_in_a_slot(
    slotted: FakeEngine, adapters: dict[str, str]
) -> None:
    client = openai.AsyncOpenAI(base_url=slotted.url + "/v1", api_key="x")
    cards = {card.id: card.model_dump() for card in (await client.models.list()).data}
    assert cards["a"]["root"] == adapters["a"]
    assert cards["a"]["parent"] == BASE
    assert cards[BASE]["parent"] is None
    assert await slotted.lora() == {"loads": 0, "active": [], "adapters": {"a": adapters["a"]}}


async def test_a_loaded_adapter_answers_as_itself_and_an_unloaded_one_is_a_404(
    slotted: FakeEngine, adapters: dict[str, str]
) -> None:
    assert (await post(slotted, "/v1/load_lora_adapter", lora_body("b", adapters)))[0] == 200
    client = openai.AsyncOpenAI(base_url=slotted.url + "/v1", api_key="x")
    answer = await client.chat.completions.create(
        model="b", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert answer.model == "b"
    status, text = await post(slotted, "/v1/unload_lora_adapter", {"lora_name": "b"})
    assert (status, text) == (200, "Success: LoRA adapter 'b' removed successfully.")
    with pytest.raises(openai.NotFoundError, match="The model `b` does not exist"):
        await client.chat.completions.create(
            model="b", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )


def lora_body(name: str, adapters: dict[str, str]) -> dict[str, str]:
    return {"lora_name": name, "lora_path": adapters[name]}


async def test_a_request_outside_the_slots_pays_the_load_and_evicts_the_oldest(
    slotted: FakeEngine, adapters: dict[str, str]
) -> None:
    for name in ("b", "c"):  # loading through the API brings each into a slot
        assert (await post(slotted, "/v1/load_lora_adapter", lora_body(name, adapters)))[0] == 200
    assert (await slotted.lora())["active"] == ["b", "c"]
    status, warm = await chat(slotted, "c")
    assert status == 200
    assert warm < LOAD_MS / 1000
    status, cold = await chat(slotted, "a")  # a start-time module: not in a slot yet
    assert status == 200
    assert cold >= LOAD_MS / 1000
    state = await slotted.lora()
    assert state["loads"] == 3
    assert state["active"] == ["c", "a"]  # b was the least recently used
    _, base = await chat(slotted, BASE)  # the base model needs no slot
    assert base < LOAD_MS / 1000
    assert (await slotted.lora())["loads"] == 3


async def test_concurrent_requests_for_a_cold_adapter_share_one_load(slotted: FakeEngine) -> None:
    results = await asyncio.gather(*(chat(slotted, "a") for _ in range(4)))
    assert [status for status, _ in results] == [200] * 4
    assert (await slotted.lora())["loads"] == 1


async def test_reset_returns_to_the_start_time_adapters(
    slotted: FakeEngine, adapters: dict[str, str]
) -> None:
    await post(slotted, "/v1/load_lora_adapter", lora_body("b", adapters))
    await post(slotted, "/v1/unload_lora_adapter", {"lora_name": "a"})
    await slotted.reset()
    assert await slotted.lora() == {"loads": 0, "active": [], "adapters": {"a": adapters["a"]}}


async def test_in_process_app_exposes_the_counter(adapters: dict[str, str]) -> None:
    options = lora.LoraOptions(max_loras=1, lora_modules={"a": adapters["a"], "b": adapters["b"]})
    app = vllm.create_app(lora_options=options)
    async with TestClient(TestServer(app)) as client:
        for model in ("a", "b", "a"):
            body = {"model": model, "prompt": "x", "max_tokens": 1}
            assert (await client.post("/v1/completions", json=body)).status == 200
    assert lora.lora_state(app).loads == 3  # one slot: every switch is a load
    assert list(lora.lora_state(app).slots) == ["a"]


def test_cli_flags_for_lora_options() -> None:
    flags = switch_flags({"max_loras": 2, "lora_load_ms": 50.0, "lora_modules": {"a": "/x"}})
    assert flags == ["--max-loras", "2", "--lora-load-ms", "50.0", "--lora-modules", "a=/x"]
    assert lora.parse_modules(["a=/x", "b=/y/z"]) == {"a": "/x", "b": "/y/z"}
    with pytest.raises(ValueError, match="name=path"):
        lora.parse_modules(["a"])
    with pytest.raises(ValueError, match="max_loras"):
        lora.LoraOptions(max_loras=0)


def test_has_adapter_reads_the_peft_config(tmp_path: pathlib.Path) -> None:
    assert not lora.has_adapter(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text("{}")
    assert lora.has_adapter(str(tmp_path))
