"""No request that could still be retried is lost when replicas die under load (issue #11).

Three fake Ollama replicas behind the gateway, 16 non-streamed and 4 streamed clients; one
replica is killed with SIGKILL, restarted on the same address, then a second one is killed.
Every failure before the first byte reached the client must have been retried on another
replica: no request may end in an HTTP error. A stream that already had bytes when its replica
died may end with an in-band error event (the documented behaviour); any such stream must have
received data first.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import time
from typing import Any

import aiohttp
import pytest

from tests.fakes.process import FakeEngine
from tests.fakes.servers import free_port
from tests.gateway.conftest import OLLAMA_MODEL, GatewayFactory, deployment

pytestmark = pytest.mark.timeout(180)

RUN_S = 10.0
KILL_AT, RESTART_AT, KILL_SECOND_AT = 2.5, 5.0, 7.0
# Engines that take a while before their first byte, so requests are caught in flight by a kill.
SLOW: dict[str, Any] = {"delay_ms": 60, "first_token_delay_ms": 60, "token_delay_ms": 2}


async def _client(
    session: aiohttp.ClientSession,
    url: str,
    n: int,
    stream: bool,
    until: float,
    outcomes: collections.Counter[str],
) -> None:
    body = {
        "model": OLLAMA_MODEL,
        "messages": [{"role": "user", "content": f"client {n}"}],  # prefixes spread replicas
        "stream": stream,
    }
    while time.monotonic() < until:
        try:
            async with session.post(url + "/v1/chat/completions", json=body) as response:
                if response.status != 200:
                    outcomes[f"HTTP {response.status}"] += 1
                    continue
                if not stream:
                    data = await response.json()
                    outcomes["ok" if data["choices"][0]["message"]["content"] else "empty"] += 1
                    continue
                got_data, broke = False, False
                async for line in response.content:
                    if line.startswith(b"data: {"):
                        if b'"error"' in line:
                            broke = True
                        else:
                            got_data = True
                if broke:
                    outcomes["broken after data" if got_data else "broken before data"] += 1
                else:
                    outcomes["ok"] += 1
        except (aiohttp.ClientError, json.JSONDecodeError) as exc:
            outcomes[f"client error {type(exc).__name__}"] += 1


async def test_killed_replicas_cost_no_retryable_request(start_gateway: GatewayFactory) -> None:
    ports = [free_port() for _ in range(3)]
    fakes = [FakeEngine("ollama", port=port, **SLOW) for port in ports]
    for fake in fakes:
        await asyncio.to_thread(fake.start)
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        server = start_gateway(
            [deployment("q", "ollama", OLLAMA_MODEL, urls)], eject_cooldown_s=1.0
        )
        outcomes: collections.Counter[str] = collections.Counter()
        until = time.monotonic() + RUN_S
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=60)
        ) as session:
            clients = [
                asyncio.create_task(_client(session, server.url, n, n >= 16, until, outcomes))
                for n in range(20)
            ]
            await asyncio.sleep(KILL_AT)
            os.kill(fakes[0].pid, signal.SIGKILL)
            await asyncio.sleep(RESTART_AT - KILL_AT)
            await asyncio.to_thread(fakes[0].stop)  # reap the killed process
            fakes[0] = FakeEngine("ollama", port=ports[0], **SLOW)
            await asyncio.to_thread(fakes[0].start)
            await asyncio.sleep(KILL_SECOND_AT - RESTART_AT)
            os.kill(fakes[1].pid, signal.SIGKILL)
            await asyncio.gather(*clients)
    finally:
        for fake in fakes:
            await asyncio.to_thread(fake.stop)
    lost = {k: v for k, v in outcomes.items() if k not in ("ok", "broken after data")}
    assert outcomes["ok"] > 100, outcomes
    assert lost == {}, outcomes
    print(dict(outcomes))  # shown with -s: how many streams broke after their first bytes
