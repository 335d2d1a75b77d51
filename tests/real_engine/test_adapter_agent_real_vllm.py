"""The adapter agent against real vLLM (CPU): a generated LoRA loaded, served, unloaded.

The session's chat server runs with LoRA on (vllm.py `with_lora`, the operator's flags for
`lora:`); the agent, in-process, reads an adapters file as the operator's ConfigMap would hold
it and drives vLLM's own LoRA API. The official `openai` client then asks for the adapter by
name. The same agent is tested against the fake in tests/agent/.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from relais_operator.adapter_agent import AgentSettings

from tests.agent.helpers import running, settings_for, states, wait_for, write_file
from tests.real_engine import lora, vllm

pytestmark = [pytest.mark.real_engine, pytest.mark.timeout(1500)]

CHAT = str(vllm.CHAT_SPEC["servedModelName"])
ADAPTER = "tiny-lora"
SOURCE = "adapters/tiny-lora"


@pytest.fixture
def chat_url(vllm_servers: dict[str, vllm.VllmServer]) -> Iterator[str]:
    """The session's chat server, left with no LoRA loaded for the tests after this one."""
    url = vllm_servers[CHAT].url
    yield url
    for name in engine_loras(url):
        request = urllib.request.Request(
            url + "/v1/unload_lora_adapter",
            data=json.dumps({"lora_name": name}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=30).close()


@pytest.fixture
def settings(tmp_path: Path, chat_url: str) -> AgentSettings:
    settings = settings_for(tmp_path, chat_url)
    lora.write_adapter(settings.cache_path / SOURCE)
    return settings


def models(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url + "/v1/models", timeout=30) as response:
        data: list[dict[str, Any]] = json.loads(response.read())["data"]
        return data


def engine_loras(url: str) -> dict[str, dict[str, Any]]:
    return {card["id"]: card for card in models(url) if card["parent"] is not None}


async def test_agent_loads_an_adapter_that_openai_clients_then_call_by_name(
    settings: AgentSettings, chat_url: str
) -> None:
    write_file(settings.adapters_file, [{"name": ADAPTER, "source": SOURCE, "revision": None}])
    client = openai.AsyncOpenAI(base_url=chat_url + "/v1", api_key="unused", timeout=300)
    async with running(settings) as url:
        await wait_for(url, states({ADAPTER: "Ready"}), timeout_s=120)
        card = engine_loras(chat_url)[ADAPTER]
        assert card["parent"] == CHAT
        assert card["root"] == str(settings.cache_path / SOURCE)

        answer = await client.chat.completions.create(
            model=ADAPTER, messages=[{"role": "user", "content": "Say hello."}], max_tokens=4
        )
        assert answer.model == ADAPTER
        assert answer.usage is not None
        assert 0 < answer.usage.completion_tokens <= 4
        stream = await client.chat.completions.create(
            model=ADAPTER,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=4,
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
        assert chunks
        assert {chunk.model for chunk in chunks} == {ADAPTER}

        write_file(settings.adapters_file, [])  # removed from the resource: unloaded
        await wait_for(url, lambda got: got == {}, timeout_s=60)
        for _ in range(600):
            if ADAPTER not in engine_loras(chat_url):
                break
            await asyncio.sleep(0.05)
        assert ADAPTER not in engine_loras(chat_url)
    with pytest.raises(openai.NotFoundError, match=f"The model `{ADAPTER}` does not exist"):
        await client.chat.completions.create(
            model=ADAPTER, messages=[{"role": "user", "content": "Say hello."}], max_tokens=4
        )


async def test_a_missing_adapter_fails_with_vllms_message_beside_a_ready_one(
    settings: AgentSettings,
) -> None:
    declared = [
        {"name": ADAPTER, "source": SOURCE, "revision": None},
        {"name": "missing", "source": "adapters/not-there", "revision": None},
    ]
    write_file(settings.adapters_file, declared)
    async with running(settings) as url:
        got = await wait_for(url, states({ADAPTER: "Ready", "missing": "Failed"}), timeout_s=120)
    # vLLM names the path, except under /tmp, /home... (its sanitizer): pytest's tmp is there.
    assert got["missing"]["message"] == "Loading lora missing failed: No adapter found for <path>"
