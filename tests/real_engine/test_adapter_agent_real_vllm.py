"""The adapter agent against real vLLM (CPU): a generated LoRA loaded, served, unloaded.

The session's chat server runs with LoRA on (vllm.py `with_lora`, the operator's flags for
`lora:`); the agent, in-process, reads an adapters file as the operator's ConfigMap would hold
it and drives vLLM's own LoRA API. The official `openai` client then asks for the adapter by
name. The first scenario runs unchanged against the fake (tests/agent/scenarios.py).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from relais_operator.adapter_agent import AgentSettings

from tests.agent.helpers import running, settings_for, states, wait_for, write_file
from tests.agent.scenarios import engine_loras, load_call_unload
from tests.real_engine import lora, vllm
from tests.real_engine.conftest import LORA_ADAPTER

pytestmark = [pytest.mark.real_engine, pytest.mark.timeout(1500)]

CHAT = str(vllm.CHAT_SPEC["servedModelName"])
ADAPTER = LORA_ADAPTER
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


async def test_agent_loads_an_adapter_that_openai_clients_then_call_by_name(
    settings: AgentSettings,
) -> None:
    await load_call_unload(settings, ADAPTER, SOURCE, CHAT, timeout_s=120)


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
    # vLLM names the path, except under /tmp, /home... (its sanitizer, and pytest's tmp is
    # there): the agent puts back the path it asked for.
    where = settings.cache_path / "adapters/not-there"
    assert got["missing"]["message"] == f"Loading lora missing failed: No adapter found for {where}"


async def test_the_gateway_serves_a_loaded_adapter_by_both_names_and_routes_by_what_vllm_holds(
    settings: AgentSettings, gateway_url: str
) -> None:
    """Real vLLM, real agent, real gateway (static config declaring the adapter): the gateway
    learns from vLLM's /v1/models that the adapter is loaded, lists it with its parent, and
    the `openai` client calls it by its name and by `<base>_<name>`; once the agent unloads it,
    the gateway holds requests and then answers 503 adapter_loading with Retry-After."""
    write_file(settings.adapters_file, [{"name": ADAPTER, "source": SOURCE, "revision": None}])
    client = openai.AsyncOpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0)
    async with running(settings) as url:
        await wait_for(url, states({ADAPTER: "Ready"}), timeout_s=120)
        listed = {m.id: m for m in (await client.models.list()).data}
        assert (listed[ADAPTER].model_extra or {})["parent"] == CHAT
        for name in (ADAPTER, f"{CHAT}_{ADAPTER}"):
            # The gateway holds the request (up to 10 s) until its poll of vLLM's /v1/models
            # (every 2 s) shows the adapter loaded.
            answer = await client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
            assert answer.model == name
            assert answer.usage is not None
            assert 0 < answer.usage.completion_tokens <= 4

        write_file(settings.adapters_file, [])
        await wait_for(url, lambda got: got == {}, timeout_s=120)
    assert ADAPTER not in engine_loras(settings.engine_url)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(
            model=ADAPTER, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
    assert caught.value.status_code == 503
    assert caught.value.response.headers["retry-after"]
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "adapter_loading"
    await client.close()
