"""The adapter agent in-process against the fake vLLM (a subprocess speaking vLLM's LoRA API).

The fake's LoRA answers are held to real vLLM's (tests/fakes/test_vllm_transcripts.py); the
scenarios of tests/agent/scenarios.py also run against real vLLM
(tests/real_engine/test_adapter_agent_real_vllm.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from relais_operator.adapter_agent import AgentSettings

from tests.agent.helpers import make_adapter, report, running, settings_for, states, wait_for
from tests.agent.helpers import write_file as write
from tests.agent.scenarios import load_call_unload
from tests.fakes.process import FakeEngine

BASE = "base-model"


@pytest.fixture
async def fake() -> AsyncIterator[FakeEngine]:
    async with FakeEngine("vllm", models=[BASE]) as engine:
        yield engine


@pytest.fixture
def settings(tmp_path: Path, fake: FakeEngine) -> AgentSettings:
    return settings_for(tmp_path, fake.url)


def adapter(settings: AgentSettings, name: str, source: str | None = None) -> dict[str, Any]:
    """A declared adapter whose files exist on the cache volume."""
    source = source or f"adapters/{name}"
    make_adapter(settings.cache_path / source)
    return {"name": name, "source": source, "revision": None}


async def engine_loras(fake: FakeEngine) -> dict[str, str]:
    adapters: dict[str, str] = (await fake.lora())["adapters"]
    return adapters


async def test_loads_the_declared_adapters_and_reports_them_ready(
    fake: FakeEngine, settings: AgentSettings
) -> None:
    write(settings.adapters_file, [adapter(settings, "a"), adapter(settings, "b")])
    async with running(settings) as url:
        got = await wait_for(url, states({"a": "Ready", "b": "Ready"}))
        assert list(got) == ["a", "b"]  # the file's order
    cache = settings.cache_path
    assert await engine_loras(fake) == {
        "a": str(cache / "adapters/a"),
        "b": str(cache / "adapters/b"),
    }


async def test_load_call_unload_as_on_real_vllm(fake: FakeEngine, settings: AgentSettings) -> None:
    make_adapter(settings.cache_path / "adapters/tiny-lora")
    await load_call_unload(settings, "tiny-lora", "adapters/tiny-lora", BASE)


async def test_unloads_a_removed_adapter_and_reloads_a_moved_one(
    fake: FakeEngine, settings: AgentSettings
) -> None:
    write(settings.adapters_file, [adapter(settings, "a"), adapter(settings, "b")])
    async with running(settings) as url:
        await wait_for(url, states({"a": "Ready", "b": "Ready"}))
        write(settings.adapters_file, [adapter(settings, "a", "adapters/a-v2")])
        await wait_for(url, lambda got: list(got) == ["a"] and got["a"]["state"] == "Ready")
        for _ in range(100):
            if await engine_loras(fake) == {"a": str(settings.cache_path / "adapters/a-v2")}:
                break
            await asyncio.sleep(0.05)
    assert await engine_loras(fake) == {"a": str(settings.cache_path / "adapters/a-v2")}
    paths = [r["path"] for r in await fake.requests()]
    assert paths.count("/v1/unload_lora_adapter") == 2  # b removed; a unloaded before its reload


async def test_a_missing_path_fails_with_the_engines_message_and_the_others_stay_ready(
    fake: FakeEngine, settings: AgentSettings
) -> None:
    missing = {"name": "broken", "source": "adapters/not-there", "revision": None}
    write(settings.adapters_file, [adapter(settings, "a"), missing])
    async with running(settings) as url:
        got = await wait_for(url, states({"a": "Ready", "broken": "Failed"}))
        # The fake sanitizes paths as vLLM does (tmp paths become <path>; /data/... stays);
        # the agent puts back the path it asked for.
        where = settings.cache_path / "adapters/not-there"
        assert (
            got["broken"]["message"] == f"Loading lora broken failed: No adapter found for {where}"
        )
        make_adapter(settings.cache_path / "adapters/not-there")  # fixed: the retry succeeds
        await wait_for(url, states({"a": "Ready", "broken": "Ready"}))


async def test_waits_for_an_engine_that_is_not_up_yet(tmp_path: Path) -> None:
    probe = FakeEngine("vllm", models=[BASE])
    port = urlsplit(probe.start()).port
    probe.stop()  # the port is free again: nothing answers there yet
    settings = settings_for(tmp_path, f"http://127.0.0.1:{port}")
    write(settings.adapters_file, [adapter(settings, "a")])
    async with running(settings) as url:
        got = await wait_for(url, states({"a": "Loading"}))
        assert got["a"]["message"].startswith("waiting for the engine")
        await asyncio.sleep(0.5)  # a few passes against a closed port change nothing
        assert (await report(url))["a"]["state"] == "Loading"
        async with FakeEngine("vllm", models=[BASE], port=port or 0) as late:
            await wait_for(url, states({"a": "Ready"}))
            assert list(await engine_loras(late)) == ["a"]


async def test_an_engine_that_restarts_gets_its_adapters_back(
    fake: FakeEngine, settings: AgentSettings
) -> None:
    write(settings.adapters_file, [adapter(settings, "a"), adapter(settings, "b")])
    port = urlsplit(fake.url).port or 0
    async with running(settings) as url:
        await wait_for(url, states({"a": "Ready", "b": "Ready"}))
        await asyncio.to_thread(fake.stop)
        async with FakeEngine("vllm", models=[BASE], port=port) as restarted:
            assert await engine_loras(restarted) == {}  # a new process holds nothing
            for _ in range(200):
                if set(await engine_loras(restarted)) == {"a", "b"}:
                    break
                await asyncio.sleep(0.05)
            assert set(await engine_loras(restarted)) == {"a", "b"}
            await wait_for(url, states({"a": "Ready", "b": "Ready"}))


async def test_a_configmap_update_swapping_the_data_symlink_is_picked_up(
    fake: FakeEngine, tmp_path: Path
) -> None:
    """A ConfigMap volume: adapters.json -> ..data/adapters.json, ..data -> ..<timestamp>/;
    an update writes a new timestamped directory and swaps the ..data symlink."""
    volume = tmp_path / "volume"
    volume.mkdir()
    settings = settings_for(tmp_path, fake.url, adapters_file=volume / "adapters.json")
    first, second = volume / "..2026_01", volume / "..2026_02"
    for directory, names in ((first, ["a"]), (second, ["a", "b"])):
        directory.mkdir()
        write(directory / "adapters.json", [adapter(settings, n) for n in names])
    (volume / "..data").symlink_to(first.name)
    (volume / "adapters.json").symlink_to("..data/adapters.json")
    async with running(settings) as url:
        await wait_for(url, lambda got: list(got) == ["a"] and got["a"]["state"] == "Ready")
        (volume / "..data_tmp").symlink_to(second.name)
        os.replace(volume / "..data_tmp", volume / "..data")  # the kubelet's atomic swap
        await wait_for(url, states({"a": "Ready", "b": "Ready"}))


async def test_hf_sources_wait_for_a_read_only_cache(
    fake: FakeEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    from tests.agent.test_plan import hf_cache

    hub = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    settings = settings_for(tmp_path, fake.url, cache_read_only=True)
    declared = [{"name": "hub", "source": "hf://org/adapter", "revision": "main"}]
    write(settings.adapters_file, declared)
    async with running(settings) as url:
        got = await wait_for(url, states({"hub": "Downloading"}))
        assert got["hub"]["message"] == "waiting for org/adapter@main in the shared cache"
        snapshot_dir = hf_cache(hub, "org/adapter")  # the operator's Job finished
        await wait_for(url, states({"hub": "Ready"}))
    assert await engine_loras(fake) == {"hub": str(snapshot_dir)}


async def test_a_failed_download_is_failed_with_its_reason(
    fake: FakeEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no network in tests
    settings = settings_for(tmp_path, fake.url)
    local = adapter(settings, "local")
    write(
        settings.adapters_file, [{"name": "hub", "source": "hf://org/x", "revision": None}, local]
    )
    async with running(settings) as url:
        got = await wait_for(url, states({"hub": "Failed", "local": "Ready"}))
        assert got["hub"]["message"].startswith("download of org/x@main failed: ")


async def test_healthz(settings: AgentSettings) -> None:
    import aiohttp

    write(settings.adapters_file, [])
    async with running(settings) as url, aiohttp.ClientSession() as http:
        async with http.get(url + "/healthz") as got:
            assert (got.status, await got.json()) == (200, {"status": "ok"})
        assert await report(url) == {}
