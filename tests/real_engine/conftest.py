"""Session fixtures for the real-engine tests: two real vLLM servers and a gateway before them.

Both servers start once per test session, at the same time (each takes minutes to load here),
from the operator's own command line (see `tests/real_engine/vllm.py`). Without `.venv-vllm`
the tests skip with the reason, and fail instead under `make test` (RELAIS_REQUIRE_REAL_MODEL=1),
which installs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes import servers
from tests.real_engine import vllm

MAX_TOKENS = 16  # what most tests ask for: few tokens keep the session short
GATEWAY_MAX_TOKENS = 32  # the deployment's requestLimits.maxTokens (tool calls need a few more)
LORA_ADAPTER = "tiny-lora"  # declared on the chat deployment of the session's gateway


@pytest.fixture(scope="session")
def vllm_servers() -> Iterator[dict[str, vllm.VllmServer]]:
    """The chat (Gemma) and the embedding (MiniLM) vLLM servers, by served model name."""
    vllm.require()
    with vllm.running(vllm.CHAT_SPEC, vllm.EMBED_SPEC) as (chat, embed):
        yield {
            vllm.CHAT_SPEC["servedModelName"]: chat,
            vllm.EMBED_SPEC["servedModelName"]: embed,
        }


def _deployment(spec: dict[str, Any], url: str) -> dict[str, Any]:
    name = spec["servedModelName"]
    return {"name": name, "engine": "vllm", "servedModelName": name, "endpoints": [url]}


@pytest.fixture(scope="session")
def gateway_url(vllm_servers: dict[str, vllm.VllmServer]) -> Iterator[str]:
    """A real gateway process with a static config: both real servers as `engine: vllm`."""
    chat = _deployment(vllm.CHAT_SPEC, vllm_servers[vllm.CHAT_SPEC["servedModelName"]].url)
    chat["requestLimits"] = {"maxTokens": GATEWAY_MAX_TOKENS}
    # The adapter the LoRA tests load (test_adapter_agent_real_vllm.py); until then, requests
    # for it wait and then get 503 adapter_loading, and no other test names it.
    chat["adapters"] = [{"name": LORA_ADAPTER}]
    embed = _deployment(vllm.EMBED_SPEC, vllm_servers[vllm.EMBED_SPEC["servedModelName"]].url)
    config = {"deployments": [chat, embed], "auth": {"disabled": True}}
    with servers.gateway(config) as url:
        yield url
