"""Running the adapter agent in-process for a test, and writing what it reads.

`running(settings)` starts `adapter_agent.run` as a task and yields its URL; `write_file`
replaces the adapters file atomically (as a ConfigMap update does); `make_adapter` writes a
directory the fake vLLM accepts as an adapter; `wait_for` polls `/adapters` until a predicate
holds. Shared by the fake-engine and real-engine agent tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from relais_operator import adapter_agent
from relais_operator.adapter_agent import AgentSettings

from tests.fakes.servers import free_port

Report = dict[str, dict[str, str]]  # name -> {"state", "message"}


def settings_for(tmp: Path, engine_url: str, **overrides: Any) -> AgentSettings:
    """An agent for tests: a file and a cache under `tmp`, a free port, a 0.2 s interval."""
    (tmp / "cache").mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "adapters_file": tmp / "adapters.json",
        "engine_url": engine_url,
        "agent_host": "127.0.0.1",
        "agent_port": free_port(),
        "cache_path": tmp / "cache",
        "agent_interval_s": 0.2,
        **overrides,
    }
    return AgentSettings(**values)


def write_file(path: Path, adapters: list[dict[str, Any]]) -> None:
    """The operator's `adapters.json`, replaced at once (never seen half-written)."""
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps({"adapters": adapters}))
    os.replace(partial, path)


def make_adapter(directory: Path) -> Path:
    """A directory the fake vLLM takes for an adapter (it reads only adapter_config.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    return directory


@contextlib.asynccontextmanager
async def running(settings: AgentSettings) -> AsyncIterator[str]:
    """The agent as a task in this loop until the block ends; yields its base URL."""
    stop = asyncio.Event()
    task = asyncio.create_task(adapter_agent.run(settings, stop))
    url = f"http://127.0.0.1:{settings.agent_port}"
    try:
        await wait_for(url, lambda _: True, what="the agent to answer")
        yield url
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


async def report(url: str) -> Report:
    """`GET /adapters` as name -> {state, message}."""
    async with aiohttp.ClientSession() as http, http.get(url + "/adapters") as got:
        assert got.status == 200
        body = await got.json()
    return {a["name"]: {"state": a["state"], "message": a["message"]} for a in body["adapters"]}


async def wait_for(
    url: str, check: Callable[[Report], bool], *, what: str = "", timeout_s: float = 20
) -> Report:
    """Poll `/adapters` until `check` holds; fail with the last report otherwise."""
    deadline = time.monotonic() + timeout_s
    last: Report | str = "no answer"
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            last = await report(url)
            if check(last):
                return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or 'the agent'}; last report: {last}")


def states(expected: dict[str, str]) -> Callable[[Report], bool]:
    """A check: these adapters are in these states (others may be anything)."""
    return lambda got: all(got.get(n, {}).get("state") == s for n, s in expected.items())
