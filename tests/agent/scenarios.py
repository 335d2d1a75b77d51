"""Agent scenarios run unchanged against the fake vLLM (tests/agent) and real vLLM
(tests/real_engine): the same client expectations hold for both engines."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import openai
import pytest
from relais_operator.adapter_agent import AgentSettings

from tests.agent.helpers import running, states, wait_for, write_file

PROMPT: list[Any] = [{"role": "user", "content": "Say hello."}]


def engine_loras(engine_url: str) -> dict[str, dict[str, Any]]:
    """The LoRA cards of the engine's `/v1/models`, by name."""
    with urllib.request.urlopen(engine_url + "/v1/models", timeout=30) as response:
        cards: list[dict[str, Any]] = json.loads(response.read())["data"]
    return {card["id"]: card for card in cards if card["parent"] is not None}


async def until_unloaded(engine_url: str, name: str, timeout_s: float = 30) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if name not in engine_loras(engine_url):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} is still loaded: {engine_loras(engine_url)}")


async def load_call_unload(
    settings: AgentSettings, name: str, source: str, base: str, timeout_s: float = 20
) -> None:
    """Declared -> Ready, listed with `parent` and `root`, answered as itself by the `openai`
    client (plain and streamed); removed from the file -> unloaded, and then vLLM's 404."""
    engine = settings.engine_url
    write_file(settings.adapters_file, [{"name": name, "source": source, "revision": None}])
    client = openai.AsyncOpenAI(base_url=engine + "/v1", api_key="unused", timeout=300)
    async with running(settings) as url:
        await wait_for(url, states({name: "Ready"}), timeout_s=timeout_s)
        card = engine_loras(engine)[name]
        assert (card["parent"], card["root"]) == (base, str(settings.cache_path / source))

        answer = await client.chat.completions.create(model=name, messages=PROMPT, max_tokens=4)
        assert answer.model == name
        assert answer.usage is not None
        assert 0 < answer.usage.completion_tokens <= 4
        stream = await client.chat.completions.create(
            model=name, messages=PROMPT, max_tokens=4, stream=True
        )
        chunks = [chunk async for chunk in stream]
        assert chunks
        assert {chunk.model for chunk in chunks} == {name}

        write_file(settings.adapters_file, [])  # removed from the resource: unloaded
        await wait_for(url, lambda got: got == {}, timeout_s=timeout_s)
        await until_unloaded(engine, name)
    with pytest.raises(openai.NotFoundError, match=f"The model `{name}` does not exist"):
        await client.chat.completions.create(model=name, messages=PROMPT, max_tokens=4)
